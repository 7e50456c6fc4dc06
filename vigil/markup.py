"""Text from tools, people and Vigil's APIs, shown by the CLI as written.

Rich reads square brackets as markup: ``[ssh]`` would be taken for a style and ``[/etc/passwd]`` for a
closing tag, which stops a command with a MarkupError. Every such text is escaped where it meets markup.
"""

from __future__ import annotations

from rich.markup import escape as _escape_markup


def escape(text: object) -> str:
    """The text as rich prints it verbatim; a missing value (None) as nothing."""
    return "" if text is None else _escape_markup(str(text))
