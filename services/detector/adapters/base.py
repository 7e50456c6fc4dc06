"""What every format adapter is, and the small pure helpers they share: the one place for both. No I/O here.

An adapter turns one record of a tool's own format into Vigil's normalised ``Alert``s, keeping
the original record as evidence (``Alert.raw``). It recognises its format from the payload's own
shape (``matches``, cheap, never raising) and either parses it or raises ``Rejected`` with a
machine-readable code and a reason a person can act on. A record that is valid but not an alert
(a Suricata flow event, an osquery snapshot) is accounted for in ``Parsed.skipped`` with a reason,
never silently dropped.

The helpers read a tool's record defensively: each takes any JSON value and returns None (or an
empty value) rather than raising, except those that raise ``Rejected`` with the reason
(``build_alert``, ``parse_time``, ``time_of``, ``json_object``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from shared.addresses import Address, parse_address
from shared.alerts import MAX_FUTURE, Alert, AlertSeverity
from shared.errors import InvalidMessage, validation_reason

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED_TEXT = {"title": 500, "description": 20_000}
_OPTIONAL_TEXT = {"host": 255, "user": 255, "rule": 500, "category": 500, "resource": 1000, "url": 2000}
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


class Rejected(InvalidMessage):
    """The record cannot become an alert; ``code`` says why in one word, ``reason`` in a sentence."""


@dataclass(frozen=True)
class Parsed:
    """What one record held: the alerts it raised and what it carried that is not an alert."""

    format: str
    alerts: list[Alert] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Adapter(Protocol):
    """One tool's format."""

    name: str
    description: str

    def matches(self, payload: Any) -> bool:
        """Return True when the payload has this format's shape; cheap, and never raises."""
        ...

    def parse(self, payload: Any) -> Parsed:
        """Return the alerts in the payload, or raise Rejected."""
        ...


# ---- building an alert ---------------------------------------------------------------------------


def build_alert(**fields: Any) -> Alert:
    """Validate the normalised fields into an Alert, cutting free text to the schema's limits."""
    # _clean, inline: this runs for every alert and every one of its text fields.
    for name, limit in _OPTIONAL_TEXT.items():
        if isinstance(value := fields.get(name), str):
            fields[name] = value.replace("\x00", "").strip()[:limit] or None
    for name, limit in _REQUIRED_TEXT.items():
        if isinstance(value := fields.get(name), str):
            fields[name] = value.replace("\x00", "").strip()[:limit]
    if not fields.get("title"):
        raise Rejected("the record has no title, rule or message to name the alert by", code="missing_fields")
    fields["tags"] = [_clean(str(t))[:200] for t in fields.get("tags") or ()][:100]
    fields["techniques"] = sorted({t for t in fields.get("techniques") or () if t})[:100]
    labels = fields.get("labels") or {}
    if len(labels) > 200 or (labels and max(map(len, labels)) > 200):
        labels = {k[:200]: v for k, v in list(labels.items())[:200]}
    fields["labels"] = labels  # validation copies it: the caller's dict is never the alert's
    for name in ("src_ip", "dst_ip"):
        # An address object validates at once; the same text would be parsed again.
        if isinstance(value := fields.get(name), str) and (address := _address(value)) is not None:
            fields[name] = address
    try:
        return Alert.model_validate(fields)
    except ValidationError as exc:
        raise Rejected(
            f"the record does not make a valid alert: {validation_reason(exc)}", code="invalid_fields"
        ) from exc


def _clean(text: str) -> str:
    # Postgres text cannot hold NUL; other control characters are kept as the tool wrote them.
    return text.replace("\x00", "").strip()


# ---- times ---------------------------------------------------------------------------------------


def parse_time(value: Any, *, field_name: str = "time", now: datetime | None = None) -> datetime:
    """Parse an RFC 3339 / ISO 8601 string or a Unix time (s, ms, µs or ns) into an aware UTC datetime.

    Naive times are taken as UTC. Times before 1970 or more than a day ahead are rejected.
    """
    parsed: datetime | None = None
    if isinstance(value, str):  # the commonest, first
        if stripped := value.strip():
            # A number has no colon, and every time of day has one: no need to try the pattern then.
            numeric = ":" not in stripped and _NUMERIC.fullmatch(stripped)
            parsed = _from_epoch(float(stripped)) if numeric else _from_iso(stripped)
    elif isinstance(value, bool):
        parsed = None
    elif isinstance(value, int | float):
        # An integer beyond a float's range is no time (JSON allows any number of digits).
        parsed = _from_epoch(float(value)) if not isinstance(value, int) or abs(value) < 10**300 else None
    if parsed is None:
        raise Rejected(f"{field_name} {value!r} is not a timestamp", code="bad_timestamp")
    now = now or datetime.now(UTC)
    if parsed < EPOCH or parsed > now + MAX_FUTURE:
        raise Rejected(f"{field_name} {value!r} is before 1970 or in the future", code="bad_timestamp")
    return parsed


def _from_epoch(seconds: float) -> datetime | None:
    if not math.isfinite(seconds):
        return None
    # Pick the unit that lands in a plausible era: seconds, milliseconds, microseconds or nanoseconds.
    for divisor in (1, 1e3, 1e6, 1e9):
        scaled = seconds / divisor
        if scaled < 1e10:
            try:
                return datetime.fromtimestamp(scaled, UTC)
            except (OverflowError, OSError, ValueError):
                return None
    return None


def _from_iso(text: str) -> datetime | None:
    # Most tools write what fromisoformat reads as it is (it reads "Z", "+0100" and 9 fractional
    # digits, cut to 6, as the cleaning below does): the cleaning is for the rest.
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        cleaned = text.replace(" ", "T", 1) if _SPACED_DATE.match(text) else text
        cleaned = _SPACED_OFFSET.sub(r"\1", cleaned)  # "… +09:00" (Hayabusa)
        cleaned = _ZULU.sub("+00:00", cleaned)
        cleaned = _BASIC_OFFSET.sub(r"\1:\2", cleaned)  # +0100 -> +01:00
        # Python takes at most 6 fractional digits; Go and Falco write 9.
        cleaned = _LONG_FRACTION.sub(r"\1", cleaned)
        try:
            parsed = datetime.fromisoformat(cleaned)
        except ValueError:
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_NUMERIC = re.compile(r"-?\d+(\.\d+)?")
_SPACED_DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d")
_SPACED_OFFSET = re.compile(r"\s+([+-]\d{2}:?\d{2}|Z)$")
_ZULU = re.compile(r"Z$")
_BASIC_OFFSET = re.compile(r"([+-]\d{2})(\d{2})$")
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")


def utc_now() -> datetime:
    """The current time: the clock of an adapter that stamps a record saying no time of its own on its reading."""
    return datetime.now(UTC)


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


# ---- values --------------------------------------------------------------------------------------


def json_object(payload: Any, what: str) -> Mapping[str, Any]:
    """The payload when it is a JSON object; Rejected, saying what it should have been, when it is not."""
    if not isinstance(payload, dict):
        raise Rejected(f"{what} is a JSON object, not a {type(payload).__name__}", code="invalid_fields")
    return payload


def text(value: Any) -> str | None:
    """A non-empty string from a scalar, or None."""
    if type(value) is str:  # the commonest by far: no conversion, no other checks
        return value.strip() or None
    if value is None or isinstance(value, dict | list):
        return None
    result = str(value).strip()
    return result or None


def first(*values: Any) -> str | None:
    """The first value that makes non-empty text."""
    for value in values:
        if type(value) is str:  # text(), inline for the commonest values: text or nothing
            if stripped := value.strip():
                return stripped
        elif value is not None and (found := text(value)) is not None:
            return found
    return None


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


def strings(value: Any) -> list[str]:
    """The non-empty texts in a scalar or a list of scalars (a list in a list is not looked into)."""
    if type(value) is str:  # the commonest: one text
        return [found] if (found := value.strip()) else []
    items = value if isinstance(value, list) else [value]
    # text(), inline for text items: an empty one is dropped as text() would drop it.
    return [t for item in items if (t := item.strip() if type(item) is str else text(item))]


def listed(value: Any) -> list[Any]:
    """The value when it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def mapping(value: Any) -> Mapping[str, Any]:
    """The value when it is an object, else an empty one."""
    return value if isinstance(value, dict) else {}


def dig(payload: Any, path: str) -> Any:
    """``dig(d, "a.b.c")`` is ``d["a"]["b"]["c"]``, or None anywhere along the way; a dotted key wins."""
    if isinstance(payload, dict) and path in payload:
        return payload[path]
    current = payload
    for part in path.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def ip_or_none(value: Any) -> str | None:
    """An address as text if it is one (0.0.0.0 and unspecified addresses are not), else None."""
    if not isinstance(value, str) or not value:
        return None
    return _address_text(value)


@functools.lru_cache(maxsize=65_536)
def _address_text(value: str) -> str | None:
    address = _address(value)
    return None if address is None else str(address)


@functools.lru_cache(maxsize=65_536)
def _address(value: str) -> Address | None:
    # Tools write addresses in brackets or with spaces around: the same ones recur, so remember them.
    try:
        address = parse_address(value.strip().strip("[]"))
    except ValueError:
        return None
    return None if address.is_unspecified else address


# ---- severities ----------------------------------------------------------------------------------


def band(value: float, bands: Iterable[tuple[float, str, AlertSeverity]]) -> tuple[str, AlertSeverity]:
    """The name and severity of the first band, lowest first, whose highest value ``value`` does not pass.

    Bands are given by their highest value, included (Wazuh's "12-14", Elastic's "22-47"); the caller
    has checked that the value is on the scale, which the last band closes.
    """
    for highest, name, severity in bands:
        if value <= highest:
            return name, severity
    raise ValueError(f"{value:g} is above the highest band")


# ---- identities ----------------------------------------------------------------------------------


def stable_id(*parts: Any) -> str:
    """A short id derived from the parts: the same record gives the same id (deduplication)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return digest[:32]


def identity(*parts: Any) -> str | None:
    """The tool's own id for an alert (parts joined by "/"), or its digest when longer than an id may be."""
    found = [t for p in parts if (t := text(p)) is not None]
    if not found:
        return None
    return short_id("/".join(found))


def short_id(candidate: str) -> str:
    """The id as it is when an alert id can hold it, else its digest."""
    return candidate if len(candidate) <= MAX_ID else stable_id(candidate)


# ---- ATT&CK --------------------------------------------------------------------------------------


def techniques_in(values: Iterable[Any]) -> list[str]:
    """ATT&CK technique and tactic ids found in the values (T1059, T1059.001, TA0002)."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, str):
            found.update(_ids_remembered(value) if len(value) <= _REMEMBERED else _ids_in(value))
    return sorted(found)


def tactic_id(name: Any) -> str | None:
    """The ATT&CK tactic id for a tactic's name, in any of its usual spellings; None when unknown."""
    if not isinstance(name, str):
        return None
    return _tactic_remembered(name) if len(name) <= _REMEMBERED else _tactic(name)


def attack_ids(values: Iterable[Any]) -> list[str]:
    """ATT&CK technique and tactic ids in the values: ids as written (T1059.001, TA0002), tactics by name."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, str):
            found.update(_attack_remembered(value) if len(value) <= _REMEMBERED else _attack_in(value))
    return sorted(found)


_ATTACK_ID = re.compile(r"\b(T[Aa]?\d{4}(?:\.\d{3})?)\b")
_NOT_LETTER = re.compile(r"[^a-z]")
# Ids and tactic names are short and the same few recur in every record of a rule: what a short
# value holds is remembered (a long one, a description, is read each time and not kept).
_REMEMBERED = 100


def _ids_in(value: str) -> tuple[str, ...]:
    return tuple(m.upper() for m in _ATTACK_ID.findall(value))


def _tactic(name: str) -> str | None:
    return TACTICS.get(_NOT_LETTER.sub("", name.lower().removeprefix("attack.")))


def _attack_in(value: str) -> tuple[str, ...]:
    tactic = _tactic(value)
    return _ids_in(value) if tactic is None else (*_ids_in(value), tactic)


_ids_remembered = functools.lru_cache(maxsize=4096)(_ids_in)
_tactic_remembered = functools.lru_cache(maxsize=4096)(_tactic)
_attack_remembered = functools.lru_cache(maxsize=4096)(_attack_in)


# ---- labels, text and walks ----------------------------------------------------------------------


def string_labels(values: Mapping[str, Any] | None, *, prefix: str = "") -> dict[str, str]:
    """Flatten a mapping of scalars into text labels (nested values as compact JSON, cut to 500 chars)."""
    labels: dict[str, str] = {}
    for key, value in (values or {}).items():
        if value is None:
            continue
        rendered = value if isinstance(value, str) else compact_json(value)
        # _clean, inline: a record holds a label per field, and this runs for every one of them.
        labels[f"{prefix}{key}"] = rendered.replace("\x00", "").strip()[:500]
    return labels


def compact_json(value: Any) -> str:
    """A value as compact JSON text (characters beyond ASCII as they are)."""
    try:
        return orjson.dumps(value, default=str).decode()
    except (orjson.JSONEncodeError, TypeError):  # an integer beyond 64 bits, which JSON allows
        return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def lines(*items: tuple[str | None, Any]) -> str:
    """The items that hold text, one per line, each after its label ("file: /tmp/x"), or alone without one."""
    found = [(label, t) for label, value in items if (t := text(value)) is not None]
    return "\n".join(f"{label}: {t}" if label else t for label, t in found)


def slug(value: Any, *, default: str) -> str:
    """A short, stable, lower-case name for a product (used in an alert's source)."""
    found = text(value)
    cleaned = re.sub(r"[^a-z0-9]+", "-", found.lower()).strip("-")[:60] if found else ""
    return cleaned or default


def nodes(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair in a JSON structure, depth first, bounded; list items have key None."""
    stack: list[tuple[str | None, Any]] = [(None, value)]
    seen = 0
    while stack and seen < MAX_NODES:
        key, current = stack.pop()
        seen += 1
        yield key, current
        if isinstance(current, dict):
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
