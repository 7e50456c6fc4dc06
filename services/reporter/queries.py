"""Pure building of the incident and alert queries: filters, sorting and opaque keyset cursors.

A cursor names the sort it belongs to and the last row's (sort value, id): the next page starts
strictly after it, so pages neither skip nor repeat rows while new incidents arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

# The analyzer's own reading of an indicator (a pure function): the filter must find what it stored.
from services.analyzer.intel import classify

IncidentSort = Literal["created_at", "updated_at", "severity", "alert_count"]
Order = Literal["asc", "desc"]
INCIDENT_SORTS: tuple[IncidentSort, ...] = ("created_at", "updated_at", "severity", "alert_count")
# Every sort column and how its cursor value is read back (alerts go by time).
_SORT_VALUES: dict[str, type] = {
    "created_at": datetime,
    "updated_at": datetime,
    "severity": str,
    "alert_count": int,
    "time": datetime,
}
# Postgres' integer, the alert count's column: a larger number in a cursor could not be compared with it.
_INT_RANGE = range(-(2**31), 2**31)
_NOT_OURS = "the cursor is not one this API gave out"
_REVERSED: dict[str, Order] = {"asc": "desc", "desc": "asc"}
# An incident whose detection the reporter has taken: a row made before it, by an edit, command or analysis
# read first from another topic, has no severity or type yet and a creation time that is only its row's.
DETECTED = "detected_at IS NOT NULL"


def as_utc(moment: datetime) -> datetime:
    """A time that says no zone is UTC, as the CLI and the web view read it: never the server's local zone,
    which is what Postgres' driver and ``datetime.timestamp`` would take it in."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# A period's bound as the APIs take it (`since=2026-10-01` is that day in UTC).
UtcTime = Annotated[datetime, AfterValidator(as_utc)]


class BadCursor(ValueError):
    """A cursor that was not made by this API for this sort."""


def encode_cursor(sort: str, order: str, value: Any, row_id: str) -> str:
    raw = json.dumps([sort, order, value.isoformat() if isinstance(value, datetime) else value, row_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, sort: str, order: str) -> tuple[Any, str]:
    """The (value, id) a page starts after; BadCursor if it is not one of ours, or of another sort.

    Whatever it holds is checked to be a value the query can compare: a crafted cursor is refused here,
    never an error of the database (a 500) or of the query's building.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_sort, made_order, value, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor(_NOT_OURS) from exc
    if (made_sort, made_order) != (sort, order):
        raise BadCursor(f"the cursor belongs to sort={made_sort}&order={made_order}, not sort={sort}&order={order}")
    try:
        return _sort_value(_SORT_VALUES[sort], value), _text(row_id)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadCursor(_NOT_OURS) from exc


def _sort_value(kind: type, value: Any) -> Any:
    """A cursor's sort value as the query compares it; TypeError, ValueError or OverflowError if it cannot be."""
    if kind is datetime:
        moment = datetime.fromisoformat(_text(value))
        if moment.tzinfo is None:  # ours always say their zone
            raise ValueError("a time without a zone")
        return moment.astimezone(UTC)  # OverflowError past the years a datetime holds
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in _INT_RANGE:
            raise TypeError("not a count")
        return value
    return _text(value)


def _text(value: Any) -> str:
    """A string Postgres text holds: no NUL, no lone surrogate (JSON may carry both)."""
    if not isinstance(value, str) or "\x00" in value:
        raise TypeError("not text")
    value.encode()  # UnicodeEncodeError (a ValueError) on a lone surrogate
    return value


@dataclass(frozen=True)
class IncidentFilter:
    """What the incident list may be narrowed by; every field optional."""

    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    commander: str | None = None
    source: str | None = None
    service: str | None = None
    asset: str | None = None
    indicator: str | None = None
    text: str | None = None
    id_prefix: str | None = None  # the short ids the CLI prints


@dataclass
class Query:
    """SQL with its numbered parameters, built a condition at a time."""

    conditions: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def where(self, condition: str) -> None:
        self.conditions.append(condition)

    @property
    def where_clause(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "true"


def incident_query(
    columns: str,
    filters: IncidentFilter,
    *,
    sort: IncidentSort = "created_at",
    order: Order = "desc",
    after: tuple[Any, str] | None = None,
    limit: int = 100,
) -> tuple[str, list[Any]]:
    """The SQL listing incidents that match, in order, from after the cursor; one more than ``limit``."""
    q = Query()
    q.where(DETECTED)
    for column, values in (("state", filters.states), ("severity", filters.severities), ("type", filters.types)):
        if values:
            q.where(f"{column} = ANY({q.arg(list(values))}::text[])")
    if filters.since is not None:
        q.where(f"created_at >= {q.arg(filters.since)}")
    if filters.until is not None:
        q.where(f"created_at < {q.arg(filters.until)}")
    if filters.commander:
        q.where(f"commander = {q.arg(filters.commander)}")
    if filters.id_prefix:
        q.where(f"starts_with(id, {q.arg(filters.id_prefix)})")
    # Arrays by containment, which their GIN index answers.
    for column, value in (("sources", filters.source), ("services", filters.service)):
        if value:
            q.where(f"{column} @> ARRAY[{q.arg(value)}::text]")
    if filters.asset:
        q.where(host_condition(q, filters.asset))
    if filters.indicator:
        q.where(f"indicators && {q.arg(indicator_forms(filters.indicator))}::text[]")
    if filters.text:
        q.where(f"search @@ websearch_to_tsquery('english', {q.arg(filters.text)})")
    # The sort column comes from a Literal, never from input as such.
    if sort not in INCIDENT_SORTS or order not in ("asc", "desc"):
        raise ValueError(f"cannot sort by {sort} {order}")
    # Severity is text whose least value is the most severe (SEV1): its "desc", highest first, is the text's asc.
    direction = _REVERSED[order] if sort == "severity" else order
    if after is not None:
        value, row_id = after
        op = "<" if direction == "desc" else ">"
        q.where(f"({sort}, id) {op} ({q.arg(value)}, {q.arg(row_id)})")
    sql = (
        f"SELECT {columns} FROM reporter_incidents WHERE {q.where_clause} "
        f"ORDER BY {sort} {direction}, id {direction} LIMIT {q.arg(limit + 1)}"
    )
    return sql, q.args


def host_condition(q: Query, asset: str) -> str:
    """Hosts are kept as the alerts spelled them (``DESKTOP-7QK2M``) and matched in any case.

    No index holds the hosts in lower case: the full-text document does (its ``simple`` part lower-cases
    every host's words), so its GIN index finds the candidates and the comparison of whole names keeps
    those that match. A name without a word to search for (``---``) is found by the hosts' own index.
    """
    value = q.arg(asset)
    return (
        f"(search @@ plainto_tsquery('simple', {value}) OR hosts @> ARRAY[{value}::text]) "
        f"AND EXISTS (SELECT FROM unnest(hosts) AS host WHERE lower(host) = lower({value}))"
    )


def indicator_forms(value: str) -> list[str]:
    """The forms an indicator filter matches: as given, and as the analyzer stores indicators (canonical:
    hashes and names in lower case, addresses as Python writes them, defanging undone)."""
    try:
        _, canonical = classify(value.strip())
    except ValueError:  # not a kind of indicator threat intelligence knows: only as given
        return [value]
    return list(dict.fromkeys([value, canonical]))


SuppressedChoice = Literal["include", "exclude", "only"]


@dataclass(frozen=True)
class AlertFilter:
    incident_id: str | None = None
    source: str | None = None
    status: Literal["firing", "resolved"] | None = None
    since: datetime | None = None
    until: datetime | None = None
    # The alerts held back from incidents (silenced, in maintenance, inhibited): with the others, or not, or alone.
    suppressed: SuppressedChoice = "include"


# Every alert occurrence, as one relation: an incident's alerts (`place`: the incident) and the alerts
# held back from incidents (`place`: the held-back occurrence; never an incident id, a UUID). Postgres
# pushes the filters into both and merges their indexes in order; a filter false for one skips it.
ALERT_OCCURRENCES = """(
    SELECT key, incident_id, body, time, repeats, last_seen_at, resolved_at, incident_id AS place,
           false AS suppressed, NULL::jsonb AS suppression
    FROM reporter_alerts
    UNION ALL
    SELECT key, NULL::text, body, time, repeats, last_seen_at, resolved_at, occurrence,
           true, jsonb_build_object('kind', kind, 'id', suppressed_by, 'name', name, 'reason', reason)
    FROM reporter_suppressed_alerts
) alerts"""


def alert_query(
    columns: str, filters: AlertFilter, *, after: tuple[Any, str] | None, limit: int
) -> tuple[str, list[Any]]:
    """The alert history, suppressed alerts included unless left out, newest first, from after the cursor;
    one more than ``limit``."""
    q = Query()
    if filters.incident_id:
        q.where(f"incident_id = {q.arg(filters.incident_id)}")
    if filters.source:
        q.where(f"body->>'source' = {q.arg(filters.source)}")
    if filters.status == "firing":
        q.where("resolved_at IS NULL")
    elif filters.status == "resolved":
        q.where("resolved_at IS NOT NULL")
    if filters.since is not None:
        q.where(f"time >= {q.arg(filters.since)}")
    if filters.until is not None:
        q.where(f"time < {q.arg(filters.until)}")
    if filters.suppressed == "exclude":
        q.where("NOT suppressed")
    elif filters.suppressed == "only":
        q.where("suppressed")
    if after is not None:
        # An alert is one (key, place) occurrence: the cursor's id is `<place>/<key>`.
        value, row_id = after
        place, _, key = row_id.partition("/")
        q.where(f"(time, key, place) < ({q.arg(value)}, {q.arg(key)}, {q.arg(place)})")
    sql = (
        f"SELECT {columns} FROM {ALERT_OCCURRENCES} WHERE {q.where_clause} "
        f"ORDER BY time DESC, key DESC, place DESC LIMIT {q.arg(limit + 1)}"
    )
    return sql, q.args
