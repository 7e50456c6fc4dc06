"""The reporter's read model: incidents, their alerts and their timeline."""

from __future__ import annotations

from typing import Any

from shared.db import Conn
from shared.events import AlertsChange, EventBase, IncidentSnapshot
from shared.timeline import TimelineEntry


async def add_timeline(conn: Conn, *, event: EventBase, entry: TimelineEntry) -> None:
    await conn.execute(
        """INSERT INTO reporter_timeline (event_id, incident_id, time, type, actor, summary, data)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
        event.id,
        event.subject,
        event.time,
        getattr(event, "type"),  # noqa: B009
        entry.actor,
        entry.summary,
        getattr(event, "data").model_dump(mode="json"),  # noqa: B009
    )


async def ensure_incident(conn: Conn, *, incident_id: str) -> None:
    """Events of one incident arrive on several topics, in any order: make the row exist first."""
    await conn.execute("INSERT INTO reporter_incidents (id) VALUES ($1) ON CONFLICT DO NOTHING", incident_id)


async def incident_exists(conn: Conn, *, incident_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM reporter_incidents WHERE id = $1", incident_id))


async def apply_snapshot(conn: Conn, *, incident_id: str, snapshot: IncidentSnapshot, detected: bool, at: Any) -> None:
    """Update the incident from one incident event and store the alerts it carries."""
    await ensure_incident(conn, incident_id=incident_id)
    # Hosts and users accumulate, in the order first seen: a snapshot may list only the first of
    # thousands of users, and its alerts name the rest.
    hosts = list(dict.fromkeys([*snapshot.hosts, *(a.host for a in snapshot.new_alerts if a.host)]))
    users = list(dict.fromkeys([*snapshot.users, *(a.user for a in snapshot.new_alerts if a.user)]))
    await conn.execute(
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
               classification_reason = $8, severity_reason = $9,
               detected_at = CASE WHEN $10 THEN $11 ELSE detected_at END,
               created_at = CASE WHEN $10 THEN $12 ELSE created_at END, updated_at = now()
           WHERE id = $1""",
        incident_id,
        snapshot.title,
        snapshot.type.value,
        snapshot.severity.value,
        snapshot.alert_count,
        hosts,
        users,
        snapshot.classification_reason,
        snapshot.severity_reason,
        detected,
        at,
        snapshot.first_seen,
    )
    if snapshot.new_alerts:
        await conn.executemany(
            """INSERT INTO reporter_alerts (key, incident_id, body, time) VALUES ($1, $2, $3, $4)
               ON CONFLICT DO NOTHING""",
            [(a.key, incident_id, a.model_dump(mode="json"), a.time) for a in snapshot.new_alerts],
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


async def apply_edits(conn: Conn, *, incident_id: str, changes: dict[str, str]) -> None:
    """A person's edits of severity, type or title; marked, so that snapshots no longer change them."""
    await ensure_incident(conn, incident_id=incident_id)
    await conn.execute(
        """UPDATE reporter_incidents
           SET severity = coalesce($2, severity), type = coalesce($3, type), title = coalesce($4, title),
               edited = ARRAY(SELECT DISTINCT unnest(edited || $5::text[])), updated_at = now()
           WHERE id = $1""",
        incident_id,
        changes.get("severity"),
        changes.get("type"),
        changes.get("title"),
        list(changes),
    )


async def set_fields(conn: Conn, *, incident_id: str, **fields: Any) -> None:
    """Set some columns of an incident, creating its row if no event of it came before."""
    # Column names come from the handlers' keyword arguments, never from input.
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(2, len(fields) + 2))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in fields)
    await conn.execute(
        f"""INSERT INTO reporter_incidents (id, {columns}) VALUES ($1, {placeholders})
            ON CONFLICT (id) DO UPDATE SET {updates}, updated_at = now()""",
        incident_id,
        *fields.values(),
    )


INCIDENT_COLUMNS = """id, title, type, severity, state, alert_count, commander, hosts, users,
    classification_reason, severity_reason, created_at, detected_at, acknowledged_at, resolved_at, updated_at"""


async def list_incidents(conn: Conn, *, state: str | None, severity: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""SELECT {INCIDENT_COLUMNS} FROM reporter_incidents
            WHERE title IS NOT NULL AND ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR severity = $2)
            ORDER BY created_at DESC LIMIT $3""",
        state,
        severity,
        limit,
    )
    return [dict(r) for r in rows]


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
    return [
        {
            **r["body"],
            "status": "resolved" if r["resolved_at"] else "firing",
            "repeats": r["repeats"],
            "last_seen": r["last_seen_at"] or r["body"]["time"],
            "resolved_at": r["resolved_at"],
        }
        for r in rows
    ]


async def list_timeline(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT event_id, time, type, actor, summary FROM reporter_timeline
           WHERE incident_id = $1 ORDER BY time, event_id""",
        incident_id,
    )
    return [dict(r) for r in rows]


async def count_by_labels(conn: Conn) -> list[tuple[str, str, str, int]]:
    rows = await conn.fetch(
        """SELECT severity, type, state, count(*) AS n FROM reporter_incidents
           WHERE severity IS NOT NULL GROUP BY severity, type, state"""
    )
    return [(r["severity"], r["type"], r["state"], r["n"]) for r in rows]
