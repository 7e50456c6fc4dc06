"""Pure building of the incident and alert queries: filters, sorting and opaque keyset cursors.

A cursor names the sort it belongs to and the last row's (sort value, id): the next page starts
strictly after it, so pages neither skip nor repeat rows while new incidents arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

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


class BadCursor(ValueError):
    """A cursor that was not made by this API for this sort."""


def encode_cursor(sort: str, order: str, value: Any, row_id: str) -> str:
    raw = json.dumps([sort, order, value.isoformat() if isinstance(value, datetime) else value, row_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, sort: str, order: str) -> tuple[Any, str]:
    """The (value, id) a page starts after; BadCursor if it is not one of ours, or of another sort."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_sort, made_order, value, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("the cursor is not one this API gave out") from exc
    if (made_sort, made_order) != (sort, order):
        raise BadCursor(f"the cursor belongs to sort={made_sort}&order={made_order}, not sort={sort}&order={order}")
    kind = _SORT_VALUES[sort]
    try:
        if kind is datetime:
            value = datetime.fromisoformat(value)
        elif not isinstance(value, kind) or not isinstance(row_id, str):
            raise TypeError
    except (TypeError, ValueError) as exc:
        raise BadCursor("the cursor is not one this API gave out") from exc
    return value, row_id


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
    q.where("title IS NOT NULL")  # a row made by an early command or analysis, before its detection
    for column, values in (("state", filters.states), ("severity", filters.severities), ("type", filters.types)):
        if values:
            q.where(f"{column} = ANY({q.arg(list(values))}::text[])")
    if filters.since is not None:
        q.where(f"created_at >= {q.arg(filters.since)}")
    if filters.until is not None:
        q.where(f"created_at < {q.arg(filters.until)}")
    if filters.commander:
        q.where(f"commander = {q.arg(filters.commander)}")
    # Arrays by containment, which their GIN index answers.
    for column, value in (
        ("sources", filters.source),
        ("services", filters.service),
        ("hosts", filters.asset),
        ("indicators", filters.indicator),
    ):
        if value:
            q.where(f"{column} @> ARRAY[{q.arg(value)}::text]")
    if filters.text:
        q.where(f"search @@ websearch_to_tsquery('english', {q.arg(filters.text)})")
    # The sort column comes from a Literal, never from input as such.
    if sort not in INCIDENT_SORTS or order not in ("asc", "desc"):
        raise ValueError(f"cannot sort by {sort} {order}")
    if after is not None:
        value, row_id = after
        op = "<" if order == "desc" else ">"
        q.where(f"({sort}, id) {op} ({q.arg(value)}, {q.arg(row_id)})")
    sql = (
        f"SELECT {columns} FROM reporter_incidents WHERE {q.where_clause} "
        f"ORDER BY {sort} {order}, id {order} LIMIT {q.arg(limit + 1)}"
    )
    return sql, q.args


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
