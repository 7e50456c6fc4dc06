"""What the security-tool adapters share: numbers, identities, times, ATT&CK ids and bounded walks. Pure.

These read a tool's record defensively: every helper takes any JSON value and returns None (or an
empty list) rather than raising, except ``time_of``, which raises ``Rejected`` with the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from services.detector.adapters.base import Rejected, dig, parse_time, stable_id, techniques_in, text

# Alert.id holds at most this many characters; a longer native id is replaced by its digest.
MAX_ID = 200
# A walk over a record stops after this many nodes: records are bounded, junk may be deep.
MAX_NODES = 20_000

# MITRE ATT&CK Enterprise tactics by name (https://attack.mitre.org/tactics/enterprise/), the key
# being the name lower-cased with everything but letters removed, so that "Defense Evasion",
# "DefenseEvasion", "defense-evasion" and Sigma's "attack.defense_evasion" all find TA0005.
TACTICS = {
    "reconnaissance": "TA0043",
    "resourcedevelopment": "TA0042",
    "initialaccess": "TA0001",
    "execution": "TA0002",
    "persistence": "TA0003",
    "privilegeescalation": "TA0004",
    "defenseevasion": "TA0005",
    "credentialaccess": "TA0006",
    "discovery": "TA0007",
    "lateralmovement": "TA0008",
    "collection": "TA0009",
    "commandandcontrol": "TA0011",
    "exfiltration": "TA0010",
    "impact": "TA0040",
}


def number(value: Any) -> float | None:
    """A finite number from a JSON number or numeric text; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            result = float(value)
        elif isinstance(value, str):
            result = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def identity(*parts: Any) -> str | None:
    """The tool's own id for an alert (parts joined by "/"), or its digest when longer than an id may be."""
    found = [t for p in parts if (t := text(p)) is not None]
    if not found:
        return None
    joined = "/".join(found)
    return joined if len(joined) <= MAX_ID else stable_id(joined)


def time_of(payload: Any, *paths: str, what: str) -> datetime:
    """The time at the first of ``paths`` that holds a value; Rejected when none does or it is no time."""
    for path in paths:
        value = dig(payload, path)
        if value is None or value == "":
            continue
        if isinstance(value, str) and (rfc2822 := _rfc2822(value)) is not None:
            value = rfc2822.isoformat()
        return parse_time(value, field_name=path)
    raise Rejected(f"{what} has no time ({' or '.join(paths)})", code="missing_fields")


def _rfc2822(value: str) -> datetime | None:
    # "Fri, 19 Aug 2016 08:06:57 +0900" (Hayabusa --RFC-2822, e-mail style dates).
    if not re.match(r"^[A-Z][a-z]{2}, \d", value.strip()):
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def tactic_id(name: Any) -> str | None:
    """The ATT&CK tactic id for a tactic's name, in any of its usual spellings; None when unknown."""
    if not isinstance(name, str):
        return None
    key = re.sub(r"[^a-z]", "", name.lower().removeprefix("attack."))
    return TACTICS.get(key)


def attack_ids(values: Iterable[Any]) -> list[str]:
    """ATT&CK technique and tactic ids in the values: ids as written (T1059.001, TA0002), tactics by name."""
    strings = [v for v in values if isinstance(v, str)]
    found = set(techniques_in(strings))
    found.update(t for v in strings if (t := tactic_id(v)) is not None)
    return sorted(found)


def strings(value: Any) -> list[str]:
    """The non-empty texts in a scalar or a list of scalars (a list in a list is not looked into)."""
    items = value if isinstance(value, list) else [value]
    return [t for item in items if (t := text(item)) is not None]


def nodes(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair in a JSON structure, depth first, bounded; list items have key None."""
    stack: list[tuple[str | None, Any]] = [(None, value)]
    seen = 0
    while stack and seen < MAX_NODES:
        key, current = stack.pop()
        seen += 1
        yield key, current
        if isinstance(current, Mapping):
            stack.extend((str(k), v) for k, v in reversed(list(current.items())))
        elif isinstance(current, list):
            stack.extend((None, v) for v in reversed(current))


def values_under(value: Any, *keys: str) -> list[Any]:
    """Every scalar stored under one of ``keys`` anywhere in the structure (lists under them flattened)."""
    wanted = set(keys)
    found: list[Any] = []
    for key, current in nodes(value):
        if key in wanted:
            found.extend(current if isinstance(current, list) else [current])
    return [v for v in found if not isinstance(v, dict | list)]


def lines(*items: tuple[str | None, Any]) -> str:
    """The items that hold text, one per line, each after its label ("file: /tmp/x"), or alone without one."""
    found = [(label, t) for label, value in items if (t := text(value)) is not None]
    return "\n".join(f"{label}: {t}" if label else t for label, t in found)


def listed(value: Any) -> list[Any]:
    """The value when it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def mapping(value: Any) -> Mapping[str, Any]:
    """The value when it is an object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def slug(value: Any, *, default: str) -> str:
    """A short, stable, lower-case name for a product (used in an alert's source)."""
    found = text(value)
    cleaned = re.sub(r"[^a-z0-9]+", "-", found.lower()).strip("-")[:60] if found else ""
    return cleaned or default
