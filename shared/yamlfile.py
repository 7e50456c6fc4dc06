"""Configuration files in YAML, validated by a pydantic model, each problem located by its line.

The same rule as the responder's playbooks: `source:line:column: where: why`, where a missing
field points at the mapping that lacks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class YamlFileError(ValueError):
    """A file that cannot be used; `problems` are `source:line:column: where: why`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def node_at(node: yaml.Node, loc: Sequence[int | str]) -> yaml.Node:
    """Return the deepest YAML node on an error's path (a missing field points at its parent).

    pydantic names a mapping's refused key `[key]` after the key: that points at the key itself.
    """
    key: yaml.Node | None = None
    for part in loc:
        if part == "[key]" and key is not None:
            return key
        found: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            key, found = next(((k, v) for k, v in node.value if k.value == part), (None, None))
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            key, found = None, node.value[part]
        if found is None:
            break
        node = found
    return node


def validate_yaml(document: str, model: type[M], *, source: str, raises: type[YamlFileError] = YamlFileError) -> M:
    """Parse a YAML document into ``model``; raise ``raises`` (a YamlFileError) naming every problem's line."""
    try:
        data = yaml.safe_load(document)
        root = yaml.compose(document, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise raises([f"{source}:{where}: not YAML: {exc.problem}"]) from exc
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (a NUL, a control character)
        line = document.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise raises([f"{source}:{line}: not YAML: character #x{code:04x}: {exc.reason}"]) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [part for part in error["loc"] if isinstance(part, int | str)]
            mark = node_at(root, loc).start_mark if root is not None else None
            where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
            path = ".".join(str(part) for part in loc if part != "[key]") or "(file)"
            problems.append(f"{source}:{where}: {path}: {error['msg']}")
        raise raises(problems) from exc
