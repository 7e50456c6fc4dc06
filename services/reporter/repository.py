"""The reporter's read model: incidents, their alerts and their timeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from services.reporter.aggregates import IncidentTimes
from services.reporter.measures import MILESTONES
from services.reporter.queries import (
    DETECTED,
    AlertFilter,
    IncidentFilter,
    IncidentSort,
    Order,
    alert_query,
    incident_query,
)
from services.reporter.reports import FOLLOW_UP_PHASES, ComplianceData, ExportKind, IncidentBundle
from services.reporter.timeline import HistoryEvent, ModelData, on_timeline
from shared import audit
from shared.db import Conn
from shared.events import (
    AlertsChange,
    EventBase,
    IncidentSnapshot,
    OpenedTask,
    ResponseLeaseChanged,
    SplitRecord,
    StepChange,
    SuppressedAlerts,
    SuppressedEnded,
    TaskDone,
    TasksDropped,
)
from shared.timeline import TimelineEntry


async def add_history(conn: Conn, *, events: Sequence[HistoryEvent], entries: Sequence[TimelineEntry]) -> None:
    """Keep events as history and put the lines of those about an incident on its timeline; an event kept
    before is left alone."""
    await conn.execute(
        """INSERT INTO reporter_history
               (event_id, incident_id, type, source, time, correlationid, causationid, data)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                $6::text[], $7::text[], $8::jsonb[])
           ON CONFLICT DO NOTHING""",
        [e.id for e in events],
        [e.subject for e in events],
        [e.type for e in events],
        [e.source for e in events],
        [e.time for e in events],
        [e.correlationid for e in events],
        [e.causationid for e in events],
        [e.data.json() if isinstance(e.data, ModelData) else dict(e.data) for e in events],
    )
    await conn.execute(
        """INSERT INTO reporter_timeline (event_id, incident_id, time, type, actor, summary)
           SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])
           ON CONFLICT (event_id) DO UPDATE SET actor = EXCLUDED.actor, summary = EXCLUDED.summary""",
        *_timeline_columns(events, entries),
    )


async def history_page(conn: Conn, *, after: str | None, limit: int) -> list[HistoryEvent]:
    """History in event-id order, a page at a time (to render the timeline again)."""
    rows = await conn.fetch(
        """SELECT event_id, type, source, incident_id, time, correlationid, causationid, data
           FROM reporter_history WHERE ($1::text IS NULL OR event_id > $1) ORDER BY event_id LIMIT $2""",
        after,
        limit,
    )
    return [_history(r) for r in rows]


async def list_history(conn: Conn, *, incident_id: str) -> list[HistoryEvent]:
    rows = await conn.fetch(
        """SELECT event_id, type, source, incident_id, time, correlationid, causationid, data
           FROM reporter_history WHERE incident_id = $1 ORDER BY time, event_id""",
        incident_id,
    )
    return [_history(r) for r in rows]


async def rebuild_timeline(conn: Conn, *, render: Callable[[HistoryEvent], TimelineEntry], page: int = 1000) -> int:
    """Render every incident's timeline again from history (after a renderer was added or changed)."""
    after, rendered = None, 0
    while events := await history_page(conn, after=after, limit=page):
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO reporter_timeline (event_id, incident_id, time, type, actor, summary)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                                        $6::text[])
                   ON CONFLICT (event_id) DO UPDATE SET actor = EXCLUDED.actor, summary = EXCLUDED.summary""",
                *_timeline_columns(events, [render(e) for e in events]),
            )
        rendered += len(events)
        after = events[-1].id
    return rendered


def _timeline_columns(events: Sequence[HistoryEvent], entries: Sequence[TimelineEntry]) -> list[list[Any]]:
    """The timeline's columns of the events about an incident (the others are history only)."""
    lines = [(e, entry) for e, entry in zip(events, entries, strict=True) if on_timeline(e)]
    events, entries = [e for e, _ in lines], [entry for _, entry in lines]
    return [
        [e.id for e in events],
        [e.subject for e in events],
        [e.time for e in events],
        [e.type for e in events],
        [entry.actor for entry in entries],
        [entry.summary for entry in entries],
    ]


def _history(row: Any) -> HistoryEvent:
    return HistoryEvent(
        id=row["event_id"],
        type=row["type"],
        source=row["source"],
        subject=row["incident_id"],
        time=row["time"],
        data=row["data"],
        correlationid=row["correlationid"],
        causationid=row["causationid"],
    )


async def ensure_incident(conn: Conn, *, incident_id: str) -> None:
    """Events of one incident arrive on several topics, in any order: make the row exist first."""
    await conn.execute("INSERT INTO reporter_incidents (id) VALUES ($1) ON CONFLICT DO NOTHING", incident_id)


async def ensure_incidents(conn: Conn, *, incident_ids: Iterable[str]) -> None:
    """``ensure_incident`` for a batch's incidents in one statement, in a fixed order (replicas never deadlock)."""
    await conn.execute(
        "INSERT INTO reporter_incidents (id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", sorted(incident_ids)
    )


async def incident_exists(conn: Conn, *, incident_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM reporter_incidents WHERE id = $1", incident_id))


RAW = {"raw", "raw_cut"}
# What a suppressed alert's row holds in columns of its own, not in its body.
SUPPRESSED_ROW = {"occurrence", "repeats"}


@dataclass(frozen=True)
class SnapshotChange:
    """One incident event's view of its incident, to apply to its row (which exists: ``handle``)."""

    incident_id: str
    snapshot: IncidentSnapshot
    detected: bool  # the incident's first event, IncidentDetected
    at: datetime


async def apply_snapshots(conn: Conn, *, changes: Sequence[SnapshotChange]) -> None:
    """Update each incident from its events, in their order, and store the alerts they carry: two pipelined
    round trips for a run of incident events, however many, and one update per incident however many of
    its events the run holds (folded as applying them in turn would leave the row)."""
    rows: dict[str, _SnapshotRow] = {}
    for change in changes:
        row = _snapshot_row(change)
        before = rows.get(change.incident_id)
        rows[change.incident_id] = _folded(before, row) if before is not None else row
    await conn.executemany(
        # A field a person edited keeps their value: the detector's later view is only offered to them.
        """UPDATE reporter_incidents
           SET title = CASE WHEN 'title' = ANY(edited) THEN title ELSE $2 END,
               type = CASE WHEN 'type' = ANY(edited) THEN type ELSE $3 END,
               severity = CASE WHEN 'severity' = ANY(edited) THEN severity ELSE $4 END,
               alert_count = GREATEST(alert_count, $5),
               hosts = ARRAY(SELECT h FROM unnest(hosts || $6::text[]) WITH ORDINALITY AS t(h, n)
                             GROUP BY h ORDER BY min(n)),
               users = ARRAY(SELECT u FROM unnest(users || $7::text[]) WITH ORDINALITY AS t(u, n)
                             GROUP BY u ORDER BY min(n)),
               classification_reason = CASE WHEN 'type' = ANY(edited) THEN classification_reason ELSE $8 END,
               severity_reason = CASE WHEN 'severity' = ANY(edited) THEN severity_reason ELSE $9 END,
               detected_at = CASE WHEN $10 THEN $11 ELSE detected_at END,
               created_at = CASE WHEN $10 THEN $15 ELSE created_at END,
               first_alert_at = LEAST(first_alert_at, $12),
               sources = ARRAY(SELECT DISTINCT unnest(sources || $13::text[])),
               rules = ARRAY(SELECT DISTINCT unnest(rules || $14::text[])),
               updated_at = now()
           WHERE id = $1""",
        list(rows.values()),
    )
    alerts = [(a, change.incident_id) for change in changes for a in change.snapshot.new_alerts]
    if alerts:
        await conn.execute(
            """INSERT INTO reporter_alerts (key, incident_id, body, time)
               SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])
               ON CONFLICT DO NOTHING""",
            [a.key for a, _ in alerts],
            [incident_id for _, incident_id in alerts],
            # The tool's raw record stays with the analyzer's evidence timeline: the reporter shows summaries.
            [a.model_dump_json(exclude=RAW).encode() for a, _ in alerts],
            [a.time for a, _ in alerts],
        )


class _SnapshotRow(NamedTuple):
    """One incident event as its row's update: the parameters of ``apply_snapshots``' statement, in order."""

    incident_id: str
    title: str
    type: str
    severity: str
    alert_count: int
    hosts: list[str]
    users: list[str]
    classification_reason: str
    severity_reason: str
    detected: bool
    detected_at: datetime
    first_seen: datetime
    sources: list[str]
    rules: list[str]
    created_at: datetime


def _snapshot_row(change: SnapshotChange) -> _SnapshotRow:
    snapshot = change.snapshot
    # Hosts and users accumulate, in the order first seen: a snapshot may list only the first of
    # thousands of users, and its alerts name the rest.
    hosts = list(dict.fromkeys([*snapshot.hosts, *(a.host for a in snapshot.new_alerts if a.host)]))
    users = list(dict.fromkeys([*snapshot.users, *(a.user for a in snapshot.new_alerts if a.user)]))
    return _SnapshotRow(
        change.incident_id,
        snapshot.title,
        snapshot.type.value,
        snapshot.severity.value,
        snapshot.alert_count,
        hosts,
        users,
        snapshot.classification_reason,
        snapshot.severity_reason,
        change.detected,
        change.at,
        snapshot.first_seen,
        sorted({a.source for a in snapshot.new_alerts}),
        sorted({a.rule for a in snapshot.new_alerts if a.rule}),
        snapshot.first_seen,
    )


def _folded(before: _SnapshotRow, after: _SnapshotRow) -> _SnapshotRow:
    """Two events of one incident, in that order, as one update that leaves the row as both in turn would."""
    detected = after if after.detected else before  # the last IncidentDetected sets when, if any did
    return after._replace(
        alert_count=max(before.alert_count, after.alert_count),
        hosts=list(dict.fromkeys([*before.hosts, *after.hosts])),
        users=list(dict.fromkeys([*before.users, *after.users])),
        detected=detected.detected,
        detected_at=detected.detected_at,
        created_at=detected.created_at,
        first_seen=min(before.first_seen, after.first_seen),
        sources=sorted({*before.sources, *after.sources}),
        rules=sorted({*before.rules, *after.rules}),
    )


async def apply_alert_changes(conn: Conn, *, incident_id: str, change: AlertsChange) -> None:
    """Record the repeats and resolutions of an incident's alerts.

    Repeats first: an alert in both fired again, then ended.
    """
    if change.repeated:
        await conn.execute(
            """UPDATE reporter_alerts SET repeats = GREATEST(reporter_alerts.repeats, c.repeats),
                   last_seen_at = GREATEST(reporter_alerts.last_seen_at, c.last_seen), resolved_at = NULL
               FROM unnest($2::text[], $3::int[], $4::timestamptz[]) AS c(key, repeats, last_seen)
               WHERE reporter_alerts.key = c.key AND reporter_alerts.incident_id = $1""",
            incident_id,
            [r.key for r in change.repeated],
            [r.repeats for r in change.repeated],
            [r.last_seen for r in change.repeated],
        )
    if change.resolved:
        await conn.execute(
            """UPDATE reporter_alerts SET resolved_at = c.resolved_at
               FROM unnest($2::text[], $3::timestamptz[]) AS c(key, resolved_at)
               WHERE reporter_alerts.key = c.key AND reporter_alerts.incident_id = $1""",
            incident_id,
            [r.key for r in change.resolved],
            [r.resolved_at for r in change.resolved],
        )


async def apply_edits(conn: Conn, *, incident_id: str, changes: dict[str, str], reason: str) -> None:
    """A person's edits of severity, type or title, with ``reason`` as the severity's or type's reason; marked,
    so that snapshots no longer change them (its row exists)."""
    await conn.execute(
        """UPDATE reporter_incidents
           SET severity = coalesce($2, severity), type = coalesce($3, type), title = coalesce($4, title),
               severity_reason = CASE WHEN $2::text IS NULL THEN severity_reason ELSE $6 END,
               classification_reason = CASE WHEN $3::text IS NULL THEN classification_reason ELSE $6 END,
               edited = ARRAY(SELECT DISTINCT unnest(edited || $5::text[])), updated_at = now()
           WHERE id = $1""",
        incident_id,
        changes.get("severity"),
        changes.get("type"),
        changes.get("title"),
        list(changes),
        reason,
    )


async def set_fields(conn: Conn, *, incident_id: str, **fields: Any) -> None:
    """Set some columns of an incident, creating its row if no event of it came before."""
    await set_fields_of(conn, list(fields), [(incident_id, *fields.values())])


async def set_fields_of(conn: Conn, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """Set the same columns of several incidents, in order, in one pipelined round trip; each row is the
    incident's id then the columns' values. A row is made for an incident no event of which came before."""
    # Column names come from the handlers' keyword arguments, never from input.
    names = ", ".join(columns)
    placeholders = ", ".join(f"${i}" for i in range(2, len(columns) + 2))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in columns)
    await conn.executemany(
        f"""INSERT INTO reporter_incidents (id, {names}) VALUES ($1, {placeholders})
            ON CONFLICT (id) DO UPDATE SET {updates}, updated_at = now()""",
        rows,
    )


async def apply_state(
    conn: Conn,
    *,
    incident_id: str,
    state: str,
    milestones: Sequence[str],
    at: datetime,
    resolution: str | None,
) -> None:
    """The incident's new state; each milestone keeps the first time it was reached, whatever the order (its row
    exists). An incident reopened (an open state after resolved or closed) is no longer resolved: its
    resolution and the times it ended go, and resolving it again sets them anew."""
    # Column names come from the milestones' fixed list, never from input.
    stamps = "".join(f", {m}_at = LEAST({m}_at, $3)" for m in milestones if m != "resolved")
    resolved = "LEAST(resolved_at, $3)" if "resolved" in milestones else "resolved_at"
    await conn.execute(
        f"""UPDATE reporter_incidents SET state = $2{stamps},
                resolved_at = CASE WHEN $2 IN ('resolved', 'closed') THEN {resolved} END,
                closed_at = CASE WHEN $2 = 'closed' THEN LEAST(closed_at, $3)
                                 WHEN $2 = 'resolved' THEN closed_at END,
                resolution = CASE WHEN $2 IN ('resolved', 'closed') THEN coalesce($4, resolution) END,
                updated_at = now()
            WHERE id = $1""",
        incident_id,
        state,
        at,
        resolution,
    )


EXECUTED = ("succeeded", "failed")


async def apply_steps(conn: Conn, *, changes: Sequence[tuple[str, StepChange, datetime]]) -> None:
    """Response steps as they stand (incident, change, time of the change): when each ran, whether it worked, who
    approved it. One pipelined round trip for all; the latest change of a step wins whatever the order."""
    await conn.executemany(
        """INSERT INTO reporter_actions AS a (step_id, incident_id, plan_id, name, phase, item, connector, action,
               state, dry_run, executed_at, succeeded, approved_by, approved_at, reason, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                   CASE WHEN $11::boolean THEN $14::timestamptz END, CASE WHEN $11 THEN $9 = 'succeeded' END,
                   CASE WHEN $9 = 'approved' THEN $12::text END, CASE WHEN $9 = 'approved' THEN $14 END, $13, $14)
           ON CONFLICT (step_id) DO UPDATE SET
               state = CASE WHEN EXCLUDED.updated_at >= a.updated_at THEN EXCLUDED.state ELSE a.state END,
               reason = CASE WHEN EXCLUDED.updated_at >= a.updated_at THEN EXCLUDED.reason ELSE a.reason END,
               updated_at = GREATEST(a.updated_at, EXCLUDED.updated_at),
               dry_run = a.dry_run OR EXCLUDED.dry_run,
               executed_at = coalesce(LEAST(a.executed_at, EXCLUDED.executed_at), a.executed_at, EXCLUDED.executed_at),
               succeeded = coalesce(EXCLUDED.succeeded, a.succeeded),
               approved_by = coalesce(a.approved_by, EXCLUDED.approved_by),
               approved_at = coalesce(a.approved_at, EXCLUDED.approved_at)""",
        [
            (
                change.step_id,
                incident_id,
                change.plan_id,
                change.name,
                change.phase,
                change.item,
                change.connector,
                change.action,
                change.state,
                change.dry_run,
                change.state in EXECUTED and not change.dry_run,
                change.actor,
                change.reason,
                at,
            )
            for incident_id, change, at in changes
        ],
    )


async def set_validated(conn: Conn, *, incident_id: str, step_id: str, validated: bool, at: datetime) -> None:
    """The latest validation of a step's action wins."""
    await conn.execute(
        """INSERT INTO reporter_validations AS v (step_id, incident_id, validated, at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (step_id) DO UPDATE SET validated = EXCLUDED.validated, at = EXCLUDED.at
           WHERE EXCLUDED.at >= v.at""",
        step_id,
        incident_id,
        validated,
        at,
    )


async def list_actions(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT a.step_id, plan_id, name, phase, item, connector, action, state, dry_run, executed_at, succeeded,
                  v.validated, approved_by, approved_at, reason, updated_at
           FROM reporter_actions a LEFT JOIN reporter_validations v USING (step_id)
           WHERE a.incident_id = $1 ORDER BY coalesce(executed_at, updated_at), a.step_id""",
        incident_id,
    )
    return [dict(r) for r in rows]


LEASE_CHANGED = ResponseLeaseChanged.model_fields["type"].default


async def list_leases(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    """The leases of the incident's reversible actions, each as its latest change left it, soonest end first."""
    rows = await conn.fetch(
        """SELECT * FROM (
               SELECT DISTINCT ON (data->>'step_id') data, time FROM reporter_history
               WHERE incident_id = $1 AND type = $2 AND data ? 'step_id'
               ORDER BY data->>'step_id', time DESC, event_id DESC) latest
           ORDER BY data->>'due_at' NULLS LAST, data->>'step_id'""",
        incident_id,
        LEASE_CHANGED,
    )
    return [{**r["data"], "changed_at": r["time"]} for r in rows]


INCIDENT_COLUMNS = """id, title, type, severity, state, resolution, alert_count, commander, hosts, users, sources,
    rules, services, indicators, classification_reason, severity_reason, created_at, first_alert_at, detected_at,
    acknowledged_at, contained_at, recovered_at, resolved_at, closed_at, updated_at, merged_into"""


async def list_incidents(
    conn: Conn,
    *,
    filters: IncidentFilter,
    sort: IncidentSort = "created_at",
    order: Order = "desc",
    after: tuple[Any, str] | None = None,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], tuple[Any, str] | None]:
    """A page of incidents that match, and where the next page starts (None on the last)."""
    sql, args = incident_query(INCIDENT_COLUMNS, filters, sort=sort, order=order, after=after, limit=limit)
    rows = [dict(r) for r in await conn.fetch(sql, *args)]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, (rows[-1][sort], rows[-1]["id"])


async def list_alert_history(
    conn: Conn, *, filters: AlertFilter, after: tuple[Any, str] | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], tuple[Any, str] | None]:
    """A page of the alert history, newest first, each with its incident (none when held back from
    incidents, then with what held it back), repeats and resolution."""
    sql, args = alert_query(
        "key, incident_id, body, time, repeats, last_seen_at, resolved_at, place, suppressed, suppression",
        filters,
        after=after,
        limit=limit,
    )
    rows = list(await conn.fetch(sql, *args))
    more = len(rows) > limit
    alerts = [
        {
            "incident_id": r["incident_id"],
            **_alert(r),
            "suppressed": r["suppressed"],
            "suppressed_by": r["suppression"],
        }
        for r in rows[:limit]
    ]
    last = rows[limit - 1] if more else None
    return alerts, ((last["time"], f"{last['place']}/{last['key']}") if last else None)


async def related(conn: Conn, *, incident_id: str, since: datetime, limit: int) -> dict[str, Any] | None:
    """What else names the incident's indicators, hosts and users since then (None: no such incident).

    ``incidents``: the others (each survivor, not what was merged into it) with what they share, the most
    shared first; ``held_back``: alerts about its hosts that silences, maintenance windows or inhibitions
    held back from every incident, seen since then (however long ago they first were), the latest first.
    """
    this = await conn.fetchrow(
        "SELECT hosts, users, indicators FROM reporter_incidents WHERE id = $1 AND title IS NOT NULL", incident_id
    )
    if this is None:
        return None
    hosts, users, indicators = list(this["hosts"]), list(this["users"]), list(this["indicators"])
    incidents = await conn.fetch(
        """SELECT * FROM (
               SELECT id, title, type, severity, state, commander, created_at,
                      ARRAY(SELECT unnest(indicators) INTERSECT SELECT unnest($2::text[]) ORDER BY 1) AS indicators,
                      ARRAY(SELECT unnest(hosts) INTERSECT SELECT unnest($3::text[]) ORDER BY 1) AS hosts,
                      ARRAY(SELECT unnest(users) INTERSECT SELECT unnest($4::text[]) ORDER BY 1) AS users
               FROM reporter_incidents
               WHERE id <> $1 AND merged_into IS NULL AND title IS NOT NULL AND created_at >= $5
                 AND (indicators && $2::text[] OR hosts && $3::text[] OR users && $4::text[])) AS found
           ORDER BY cardinality(indicators) + cardinality(hosts) + cardinality(users) DESC, created_at DESC, id
           LIMIT $6""",
        incident_id,
        indicators,
        hosts,
        users,
        since,
        limit,
    )
    held = await conn.fetch(
        """SELECT key, body, time, repeats, last_seen_at, resolved_at, kind, suppressed_by, name, reason
           FROM reporter_suppressed_alerts
           WHERE body->>'host' = ANY($1::text[]) AND last_seen_at >= $2
           ORDER BY last_seen_at DESC, key LIMIT $3""",
        hosts,
        since,
        limit,
    )
    return {
        "incident_id": incident_id,
        "since": since,
        "incidents": [
            {
                **{k: r[k] for k in ("id", "title", "type", "severity", "state", "commander", "created_at")},
                "shared": {"indicators": list(r["indicators"]), "hosts": list(r["hosts"]), "users": list(r["users"])},
            }
            for r in incidents
        ],
        "held_back": [
            {
                **r["body"],
                "key": r["key"],
                "time": r["time"],
                "repeats": r["repeats"],
                "last_seen_at": r["last_seen_at"],
                "resolved_at": r["resolved_at"],
                "suppressed_by": {
                    "kind": r["kind"],
                    "id": r["suppressed_by"],
                    "name": r["name"],
                    "reason": r["reason"],
                },
            }
            for r in held
        ],
    }


async def apply_suppressed(conn: Conn, *, alerts: SuppressedAlerts, at: datetime) -> None:
    """Record alerts held back from incidents, one row per occurrence; events may arrive in any order.

    The latest sighting (by the event's time) says what holds an alert back; repeats only grow.
    """
    by = alerts.suppressed_by
    latest = {a.occurrence: a for a in alerts.alerts}  # one row may be changed once per statement
    await conn.execute(
        """INSERT INTO reporter_suppressed_alerts AS s
               (occurrence, key, body, time, repeats, last_seen_at, kind, suppressed_by, name, reason)
           SELECT o, k, b, t, r, $6, $7, $8, $9, $10
           FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::int[]) AS n(o, k, b, t, r)
           ON CONFLICT (occurrence) DO UPDATE SET
               repeats = GREATEST(s.repeats, EXCLUDED.repeats),
               kind = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at THEN EXCLUDED.kind ELSE s.kind END,
               suppressed_by = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
                                    THEN EXCLUDED.suppressed_by ELSE s.suppressed_by END,
               name = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at THEN EXCLUDED.name ELSE s.name END,
               reason = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at THEN EXCLUDED.reason ELSE s.reason END,
               resolved_at = CASE WHEN EXCLUDED.last_seen_at > s.resolved_told_at THEN NULL ELSE s.resolved_at END,
               last_seen_at = GREATEST(s.last_seen_at, EXCLUDED.last_seen_at)""",
        list(latest),
        [a.key for a in latest.values()],
        [a.model_dump(mode="json", exclude=SUPPRESSED_ROW) for a in latest.values()],
        [a.time for a in latest.values()],
        [a.repeats for a in latest.values()],
        at,
        by.kind,
        by.id,
        by.name,
        by.reason,
    )


async def end_suppressed(conn: Conn, *, ended: SuppressedEnded, at: datetime) -> None:
    """Held-back alerts that ended; a sighting told later than the end makes the alert fire again."""
    await conn.execute(
        """UPDATE reporter_suppressed_alerts AS s SET resolved_at = e.resolved_at, resolved_told_at = $3
           FROM unnest($1::text[], $2::timestamptz[]) AS e(occurrence, resolved_at)
           WHERE s.occurrence = e.occurrence AND s.last_seen_at <= $3""",
        [e.occurrence for e in ended.alerts],
        [e.resolved_at for e in ended.alerts],
        at,
    )


async def ids_starting(conn: Conn, *, prefix: str, limit: int = 5) -> list[str]:
    """The ids of the incidents whose id starts with ``prefix`` (the short ids lists print), at most ``limit``."""
    rows = await conn.fetch(
        "SELECT id FROM reporter_incidents WHERE starts_with(id, $1) ORDER BY id LIMIT $2", prefix, limit
    )
    return [row["id"] for row in rows]


async def get_incident(conn: Conn, *, incident_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {INCIDENT_COLUMNS}, analysis, plan FROM reporter_incidents WHERE id = $1", incident_id
    )
    return dict(row) if row else None


async def list_alerts(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    """Return the incident's alerts as the detector summarised them, with their repeats and whether they ended."""
    rows = await conn.fetch(
        """SELECT body, repeats, last_seen_at, resolved_at FROM reporter_alerts
           WHERE incident_id = $1 ORDER BY time""",
        incident_id,
    )
    return [_alert(r) for r in rows]


def _alert(row: Any) -> dict[str, Any]:
    return {
        **row["body"],
        "status": "resolved" if row["resolved_at"] else "firing",
        "repeats": row["repeats"],
        "last_seen": row["last_seen_at"] or row["body"]["time"],
        "resolved_at": row["resolved_at"],
    }


async def list_timeline(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    """Return the incident's timeline, with the history of every incident merged into it (each entry says whose)."""
    rows = await conn.fetch(
        """WITH RECURSIVE merged(id) AS (
               SELECT $1::text
               UNION SELECT r.id FROM reporter_incidents r JOIN merged m ON r.merged_into = m.id)
           SELECT event_id, incident_id, time, type, actor, summary FROM reporter_timeline
           WHERE incident_id IN (SELECT id FROM merged) ORDER BY time, event_id""",
        incident_id,
    )
    return [dict(r) for r in rows]


async def list_merged(conn: Conn, *, incident_id: str) -> list[str]:
    """The incidents merged into this one (directly), oldest first."""
    rows = await conn.fetch(
        "SELECT id FROM reporter_incidents WHERE merged_into = $1 ORDER BY created_at, id", incident_id
    )
    return [r["id"] for r in rows]


async def title_of(conn: Conn, *, incident_id: str) -> str | None:
    title: str | None = await conn.fetchval("SELECT title FROM reporter_incidents WHERE id = $1", incident_id)
    return title


async def add_entry(conn: Conn, *, event: EventBase, incident_id: str, entry: TimelineEntry) -> None:
    """Put an event on another incident's timeline too (a merge on its survivor's, a split on the new incident's)."""
    await conn.execute(
        """INSERT INTO reporter_timeline (event_id, incident_id, time, type, actor, summary)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
        f"{event.id}@{incident_id}",
        incident_id,
        event.time,
        getattr(event, "type"),  # noqa: B009
        entry.actor,
        entry.summary,
    )


async def drop_alerts(conn: Conn, *, incident_id: str) -> None:
    """The incident's alerts are no longer its own (it was merged away)."""
    await conn.execute("DELETE FROM reporter_alerts WHERE incident_id = $1", incident_id)


async def apply_split(conn: Conn, *, incident_id: str, split: SplitRecord) -> None:
    """The detached alerts leave the incident; it is as restated: its title, type and severity (those a person
    did not edit), first alert, counts, and its hosts, users, sources and rules (over the parts)."""
    snapshot = split.incident
    hosts = list(dict.fromkeys([*snapshot.hosts, *(a.host for a in snapshot.new_alerts if a.host)]))
    users = list(dict.fromkeys([*snapshot.users, *(a.user for a in snapshot.new_alerts if a.user)]))
    if snapshot.part == 1:
        await conn.execute(
            "DELETE FROM reporter_alerts WHERE incident_id = $1 AND key = ANY($2::text[])",
            incident_id,
            split.detached,
        )
        # Restated: what it held before the split no longer counts; its sources and rules are those of the
        # alerts it keeps, as far as they are here, and the parts' alerts add theirs.
        await conn.execute(
            """UPDATE reporter_incidents SET alert_count = $2, hosts = '{}', users = '{}',
                   title = CASE WHEN 'title' = ANY(edited) THEN title ELSE $5 END,
                   type = CASE WHEN 'type' = ANY(edited) THEN type ELSE $6 END,
                   severity = CASE WHEN 'severity' = ANY(edited) THEN severity ELSE $7 END,
                   classification_reason = CASE WHEN 'type' = ANY(edited) THEN classification_reason ELSE $3 END,
                   severity_reason = CASE WHEN 'severity' = ANY(edited) THEN severity_reason ELSE $4 END,
                   first_alert_at = $8,
                   sources = ARRAY(SELECT DISTINCT body->>'source' FROM reporter_alerts
                                   WHERE incident_id = $1 AND body->>'source' IS NOT NULL),
                   rules = ARRAY(SELECT DISTINCT body->>'rule' FROM reporter_alerts
                                 WHERE incident_id = $1 AND body->>'rule' IS NOT NULL),
                   updated_at = now()
               WHERE id = $1""",
            incident_id,
            snapshot.alert_count,
            snapshot.classification_reason,
            snapshot.severity_reason,
            snapshot.title,
            snapshot.type.value,
            snapshot.severity.value,
            snapshot.first_seen,
        )
    await conn.execute(
        """UPDATE reporter_incidents
           SET hosts = ARRAY(SELECT h FROM unnest(hosts || $2::text[]) WITH ORDINALITY AS t(h, n)
                             GROUP BY h ORDER BY min(n)),
               users = ARRAY(SELECT u FROM unnest(users || $3::text[]) WITH ORDINALITY AS t(u, n)
                             GROUP BY u ORDER BY min(n)),
               sources = ARRAY(SELECT DISTINCT unnest(sources || $4::text[])),
               rules = ARRAY(SELECT DISTINCT unnest(rules || $5::text[])),
               updated_at = now()
           WHERE id = $1""",
        incident_id,
        hosts,
        users,
        sorted({a.source for a in snapshot.new_alerts}),
        sorted({a.rule for a in snapshot.new_alerts if a.rule}),
    )


async def count_by_labels(conn: Conn) -> list[tuple[str, str, str, int]]:
    rows = await conn.fetch(
        """SELECT severity, type, state, count(*) AS n FROM reporter_incidents
           WHERE severity IS NOT NULL GROUP BY severity, type, state"""
    )
    return [(r["severity"], r["type"], r["state"], r["n"]) for r in rows]


async def list_incident_times(
    conn: Conn, *, since: datetime | None = None, until: datetime | None = None, open_only: bool = False
) -> list[IncidentTimes]:
    """The incidents created in a period with their milestones and action counts, for the aggregates.

    An incident merged into another is not one of them: its alerts and its history are the survivor's."""
    rows = await conn.fetch(
        f"""SELECT i.id, severity, type, state, resolution, sources, rules, services, first_alert_at, detected_at,
                  acknowledged_at, contained_at, recovered_at, resolved_at,
                  coalesce(a.executed, 0) AS executed, coalesce(a.validated, 0) AS validated
           FROM reporter_incidents i
           LEFT JOIN (SELECT ra.incident_id, count(*) FILTER (WHERE executed_at IS NOT NULL) AS executed,
                             count(*) FILTER (WHERE executed_at IS NOT NULL AND v.validated) AS validated
                      FROM reporter_actions ra LEFT JOIN reporter_validations v USING (step_id)
                      GROUP BY ra.incident_id) a ON a.incident_id = i.id
           WHERE {DETECTED} AND merged_into IS NULL AND resolution IS DISTINCT FROM 'merged'
             AND ($1::timestamptz IS NULL OR created_at >= $1)
             AND ($2::timestamptz IS NULL OR created_at < $2)
             AND (NOT $3 OR state NOT IN ('resolved', 'closed'))""",
        since,
        until,
        open_only,
    )
    return [
        IncidentTimes(
            id=r["id"],
            severity=r["severity"],
            type=r["type"],
            state=r["state"],
            resolution=r["resolution"],
            milestones={name: r[f"{name}_at"] for name in MILESTONES},
            sources=tuple(r["sources"]),
            rules=tuple(r["rules"]),
            services=tuple(r["services"]),
            executed=r["executed"],
            validated=r["validated"],
        )
        for r in rows
    ]


async def incident_bundle(conn: Conn, *, incident_id: str) -> IncidentBundle | None:
    """Everything known of one incident, for its reports; None if there is no such incident."""
    incident = await get_incident(conn, incident_id=incident_id)
    if incident is None or incident.get("title") is None:
        return None
    return IncidentBundle(
        incident=incident,
        alerts=await list_alerts(conn, incident_id=incident_id),
        actions=await list_actions(conn, incident_id=incident_id),
        timeline=await list_timeline(conn, incident_id=incident_id),
        lessons=await list_lessons(conn, incident_id=incident_id),
        follow_ups=await list_follow_ups(conn, incident_id=incident_id),
        evidence=await list_evidence(conn, incident_id=incident_id),
    )


async def list_lessons(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    """The lessons people recorded for the post-mortem (`vigil note ID "..." --went-well|--went-badly`), in order."""
    # Those of the incidents merged into it too, as its timeline has them; a note the coordinator refused is none.
    rows = await conn.fetch(
        """WITH RECURSIVE merged(id) AS (
               SELECT $1::text
               UNION SELECT r.id FROM reporter_incidents r JOIN merged m ON r.merged_into = m.id)
           SELECT h.time, h.data->>'actor' AS actor, h.data->>'note' AS note, h.data->>'lesson' AS lesson
           FROM reporter_history h
           WHERE h.incident_id IN (SELECT id FROM merged) AND h.type = 'vigil.command.add_note.v1'
             AND h.data->>'lesson' IS NOT NULL
             AND NOT EXISTS (SELECT FROM reporter_history r
                             WHERE r.incident_id = h.incident_id AND r.type = 'vigil.command.rejected.v1'
                               AND r.data->>'command_id' = h.event_id)
           ORDER BY h.time, h.event_id""",
        incident_id,
    )
    return [dict(r) for r in rows]


async def list_evidence(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    """The incident's evidence register as its events told it (those of incidents merged into it too): each
    item as registered, who holds it now, how often it changed hands, and its latest check."""
    rows = await conn.fetch(
        """WITH RECURSIVE merged(id) AS (
               SELECT $1::text
               UNION SELECT r.id FROM reporter_incidents r JOIN merged m ON r.merged_into = m.id)
           SELECT time, data FROM reporter_history
           WHERE incident_id IN (SELECT id FROM merged) AND type = 'vigil.evidence.changed.v1'
           ORDER BY (data->>'entry')::bigint, event_id""",
        incident_id,
    )
    items: dict[int, dict[str, Any]] = {}
    for row in rows:
        d = row["data"]
        item = items.setdefault(
            d["item_id"],
            {"item_id": d["item_id"], "name": d["name"], "sha256": d["sha256"], "size_bytes": d.get("size_bytes"),
             "location": d["location"], "registered_by": None, "registered_at": None, "hand_overs": 0,
             "checked_at": None, "matched": None},
        )  # fmt: skip
        item["custodian"] = d["custodian"]
        if d["action"] == "registered":
            item["registered_by"], item["registered_at"] = d["actor"], row["time"]
        elif d["action"] == "transferred":
            item["hand_overs"] += 1
        else:
            item["checked_at"], item["matched"] = row["time"], d.get("verified")
    return sorted(items.values(), key=lambda i: i["item_id"])


async def list_follow_ups(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    """The incident's post-mortem tasks (its follow-ups), the open ones first, each by its due time."""
    rows = await conn.fetch(
        """SELECT title, owner, due_at, state, done_at, done_by FROM reporter_tasks
           WHERE incident_id = $1 AND phase = ANY($2::text[]) AND state <> 'cancelled' AND title IS NOT NULL
           ORDER BY state = 'done', due_at NULLS LAST, task_id""",
        incident_id,
        list(FOLLOW_UP_PHASES),
    )
    return [dict(r) for r in rows]


# What each export holds, for the incidents created in a period ($1 since, $2 until; either may be NULL).
EXPORT_QUERIES: dict[ExportKind, str] = {
    "incidents": f"""SELECT {INCIDENT_COLUMNS} FROM reporter_incidents
        WHERE {DETECTED} AND merged_into IS NULL AND resolution IS DISTINCT FROM 'merged'
          AND ($1::timestamptz IS NULL OR created_at >= $1)
          AND ($2::timestamptz IS NULL OR created_at < $2)
        ORDER BY created_at, id""",
    "actions": f"""SELECT a.incident_id, a.step_id, a.plan_id, a.name, a.phase, a.item, a.connector, a.action,
              a.state, a.dry_run, a.executed_at, a.succeeded, v.validated, a.approved_by, a.approved_at, a.reason,
              a.updated_at
        FROM reporter_actions a JOIN reporter_incidents i ON i.id = a.incident_id
        LEFT JOIN reporter_validations v ON v.step_id = a.step_id
        WHERE i.{DETECTED}
          AND ($1::timestamptz IS NULL OR i.created_at >= $1) AND ($2::timestamptz IS NULL OR i.created_at < $2)
        ORDER BY i.created_at, a.incident_id, coalesce(a.executed_at, a.updated_at), a.step_id""",
    "timelines": f"""SELECT t.incident_id, t.event_id, t.time, t.type, t.actor, t.summary
        FROM reporter_timeline t JOIN reporter_incidents i ON i.id = t.incident_id
        WHERE i.{DETECTED} AND ($1::timestamptz IS NULL OR i.created_at >= $1)
          AND ($2::timestamptz IS NULL OR i.created_at < $2)
        ORDER BY i.created_at, t.incident_id, t.time, t.event_id""",
}


async def list_incidents_created(conn: Conn, *, since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
    """Every incident created in a period, oldest first (for reports)."""
    return [dict(r) for r in await conn.fetch(EXPORT_QUERIES["incidents"], since, until)]


async def list_actions_of_incidents_created(
    conn: Conn, *, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """The actions of the incidents created in a period, with who approved them and whether they held."""
    return [dict(r) for r in await conn.fetch(EXPORT_QUERIES["actions"], since, until)]


async def export_rows(
    conn: Conn, *, kind: ExportKind, since: datetime | None, until: datetime | None, batch: int = 500
) -> AsyncIterator[list[dict[str, Any]]]:
    """The incidents, actions or timeline lines of the incidents created in a period, a batch at a time from
    a cursor: an export of everything (no period) is held in memory a batch at a time, never whole.

    Run inside a transaction (a cursor lives in one); a repeatable-read one makes the export one snapshot.
    """
    cursor = await conn.cursor(EXPORT_QUERIES[kind], since, until)
    while rows := await cursor.fetch(batch):
        yield [dict(r) for r in rows]


async def export_batches(
    pool: asyncpg.Pool, *, kind: ExportKind, since: datetime | None, until: datetime | None
) -> AsyncIterator[list[dict[str, Any]]]:
    """``export_rows`` on a connection of its own, in one snapshot, for as long as a response streams them.

    At most EXPORTS_AT_ONCE at a time (others wait their turn): a download holds its connection while the
    client reads, and the consumer and the API share the pool.
    """
    async with _exporting, pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        async for rows in export_rows(conn, kind=kind, since=since, until=until):
            yield rows


EXPORTS_AT_ONCE = 2
_exporting = asyncio.Semaphore(EXPORTS_AT_ONCE)


async def add_tasks(conn: Conn, *, incident_id: str, tasks: Sequence[OpenedTask], at: datetime) -> None:
    """The incident's runbook tasks made; one already known (done first, or sent again) keeps its done time."""
    await conn.executemany(
        """INSERT INTO reporter_tasks (task_id, incident_id, phase, title, owner, required, due_at, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (task_id) DO UPDATE SET phase = EXCLUDED.phase, title = EXCLUDED.title,
               owner = EXCLUDED.owner, required = EXCLUDED.required,
               due_at = coalesce(reporter_tasks.due_at, EXCLUDED.due_at), created_at = EXCLUDED.created_at""",
        [(t.task_id, incident_id, t.phase, t.title, t.owner, t.required, t.due_at, at) for t in tasks],
    )


async def task_done(conn: Conn, *, incident_id: str, done: TaskDone, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO reporter_tasks (task_id, incident_id, phase, title, required, state, done_at, done_by)
           VALUES ($1, $2, $3, $4, $5, 'done', $6, $7)
           ON CONFLICT (task_id) DO UPDATE
           SET state = 'done', done_at = EXCLUDED.done_at, done_by = EXCLUDED.done_by""",
        done.task_id,
        incident_id,
        done.phase,
        done.title,
        done.required,
        at,
        done.actor,
    )


async def tasks_cancelled(conn: Conn, *, incident_id: str, dropped: TasksDropped, at: datetime) -> None:
    await conn.executemany(
        """INSERT INTO reporter_tasks (task_id, incident_id, state, done_at, done_by)
           VALUES ($1, $2, 'cancelled', $3, $4)
           ON CONFLICT (task_id) DO UPDATE SET state = 'cancelled', done_at = EXCLUDED.done_at,
               done_by = EXCLUDED.done_by
           WHERE reporter_tasks.state = 'open'""",
        [(task_id, incident_id, at, dropped.actor) for task_id in dropped.task_ids],
    )


async def list_open_follow_ups(
    conn: Conn, *, since: datetime | None, until: datetime | None, phases: Sequence[str]
) -> list[dict[str, Any]]:
    """Tasks of these phases not done, of the incidents created in the period, the earliest due first."""
    rows = await conn.fetch(
        f"""SELECT t.incident_id, t.phase, t.title, t.owner, t.required, t.due_at, i.severity, i.state
           FROM reporter_tasks t JOIN reporter_incidents i ON i.id = t.incident_id
           WHERE t.state = 'open' AND t.title IS NOT NULL AND i.{DETECTED} AND t.phase = ANY($3::text[])
             AND ($1::timestamptz IS NULL OR i.created_at >= $1) AND ($2::timestamptz IS NULL OR i.created_at < $2)
           ORDER BY t.due_at NULLS LAST, t.incident_id, t.task_id""",
        since,
        until,
        list(phases),
    )
    return [dict(r) for r in rows]


async def compliance_data(conn: Conn, *, since: datetime | None, until: datetime | None) -> ComplianceData:
    chain = await audit.verify_chain(conn)
    return ComplianceData(
        since=since,
        until=until,
        incidents=await list_incidents_created(conn, since=since, until=until),
        times=await list_incident_times(conn, since=since, until=until),
        actions=await list_actions_of_incidents_created(conn, since=since, until=until),
        follow_ups=await list_open_follow_ups(conn, since=since, until=until, phases=FOLLOW_UP_PHASES),
        audit_entries=chain.entries,
        audit_problem=chain.problem.message if chain.problem else None,
    )
