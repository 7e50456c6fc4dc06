"""The detector's tables: open incidents and the alerts attached to them, repeated and resolved."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.detector.domain import IncidentState
from shared.alerts import Alert, AlertSeverity
from shared.db import Conn
from shared.events import IncidentType, Severity


async def get_open_by_keys(conn: Conn, *, keys: Iterable[str]) -> dict[str, IncidentState]:
    """Return the newest open incident for each key (the one alerts may join), locked until commit."""
    rows = await conn.fetch(
        """SELECT * FROM detector_incidents WHERE id IN (
               SELECT DISTINCT ON (correlation_key) id FROM detector_incidents
               WHERE correlation_key = ANY($1::text[]) AND NOT closed
               ORDER BY correlation_key, last_seen DESC)
           FOR UPDATE""",
        list(keys),
    )
    return {row["correlation_key"]: _from_row(row) for row in rows}


def _from_row(row: asyncpg.Record) -> IncidentState:
    return IncidentState(
        id=row["id"],
        correlation_key=row["correlation_key"],
        title=row["title"],
        type=IncidentType(row["type"]),
        severity=Severity(row["severity"]),
        classification_reason=row["classification_reason"],
        severity_reason=row["severity_reason"],
        alert_count=row["alert_count"],
        max_alert_severity=AlertSeverity(row["max_alert_severity"]),
        type_votes=row["type_votes"],
        hosts=tuple(row["hosts"]),
        users=tuple(row["users"]),
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        lead_kind=row["lead_kind"],
        lead_severity_reason=row["lead_severity_reason"],
        critical_asset=row["critical_asset"],
    )


async def upsert_incidents(conn: Conn, *, incidents: Sequence[IncidentState]) -> None:
    await conn.executemany(
        """INSERT INTO detector_incidents (id, correlation_key, title, type, severity, classification_reason,
               severity_reason, alert_count, max_alert_severity, type_votes, hosts, users, first_seen, last_seen,
               lead_kind, lead_severity_reason, critical_asset)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
           ON CONFLICT (id) DO UPDATE SET
               title = EXCLUDED.title, type = EXCLUDED.type, severity = EXCLUDED.severity,
               classification_reason = EXCLUDED.classification_reason,
               severity_reason = EXCLUDED.severity_reason, alert_count = EXCLUDED.alert_count,
               max_alert_severity = EXCLUDED.max_alert_severity, type_votes = EXCLUDED.type_votes,
               hosts = EXCLUDED.hosts, users = EXCLUDED.users, first_seen = EXCLUDED.first_seen,
               last_seen = EXCLUDED.last_seen, lead_kind = EXCLUDED.lead_kind,
               lead_severity_reason = EXCLUDED.lead_severity_reason, critical_asset = EXCLUDED.critical_asset,
               updated_at = now()""",
        [
            (
                i.id,
                i.correlation_key,
                i.title,
                i.type.value,
                i.severity.value,
                i.classification_reason,
                i.severity_reason,
                i.alert_count,
                i.max_alert_severity.value,
                i.type_votes,
                list(i.hosts),
                list(i.users),
                i.first_seen,
                i.last_seen,
                i.lead_kind,
                i.lead_severity_reason,
                i.critical_asset,
            )
            for i in incidents
        ],
    )


@dataclass(frozen=True)
class StoredAlert:
    """A stored alert a batch repeated or resolved, as it stands after the update."""

    key: str
    incident_id: str
    repeats: int
    last_seen_at: datetime
    resolved_at: datetime | None


async def count_repeats(conn: Conn, *, sightings: Mapping[str, int]) -> dict[str, StoredAlert]:
    """Count more sightings on the alerts already stored under these keys; return those found.

    A sighting is of the alert firing: one that had ended fires again.
    """
    rows = await conn.fetch(
        """UPDATE detector_alerts SET repeats = repeats + c.n, last_seen_at = now(), resolved_at = NULL
           FROM unnest($1::text[], $2::int[]) AS c(key, n)
           WHERE detector_alerts.key = c.key AND NOT detector_alerts.retired
           RETURNING detector_alerts.key, incident_id, repeats, last_seen_at, resolved_at""",
        list(sightings),
        list(sightings.values()),
    )
    return {row["key"]: StoredAlert(**row) for row in rows}


async def resolve_alerts(conn: Conn, *, resolutions: Mapping[str, datetime]) -> dict[str, StoredAlert]:
    """Mark the stored alerts under these keys resolved at the given times; return those found."""
    rows = await conn.fetch(
        """UPDATE detector_alerts SET resolved_at = c.at
           FROM unnest($1::text[], $2::timestamptz[]) AS c(key, at)
           WHERE detector_alerts.key = c.key AND NOT detector_alerts.retired
           RETURNING detector_alerts.key, incident_id, repeats,
                     COALESCE(last_seen_at, received_at) AS last_seen_at, resolved_at""",
        list(resolutions),
        list(resolutions.values()),
    )
    return {row["key"]: StoredAlert(**row) for row in rows}


@dataclass(frozen=True)
class AlertTally:
    """An incident's alerts, how many still fire, and whether the incident still collects alerts."""

    type: IncidentType | None  # None: a type this version does not know
    closed: bool
    alerts: int
    firing: int


async def tally_alerts(conn: Conn, *, incident_ids: Iterable[str]) -> dict[str, AlertTally]:
    """Return each incident's alert counts, after this transaction's updates."""
    rows = await conn.fetch(
        """SELECT i.id, i.type, i.closed, count(a.key) AS alerts,
                  count(a.key) FILTER (WHERE a.resolved_at IS NULL) AS firing
           FROM detector_incidents i LEFT JOIN detector_alerts a ON a.incident_id = i.id
           WHERE i.id = ANY($1::text[]) GROUP BY i.id""",
        list(incident_ids),
    )
    return {
        row["id"]: AlertTally(
            type=IncidentType(row["type"]) if row["type"] in IncidentType._value2member_map_ else None,
            closed=row["closed"],
            alerts=row["alerts"],
            firing=row["firing"],
        )
        for row in rows
    }


async def insert_alerts(conn: Conn, *, alerts: Sequence[tuple[Alert, str, str | None]]) -> None:
    """Store new alerts with the incident each joined and the rule that typed each, by COPY: one round trip."""
    await conn.copy_records_to_table(
        "detector_alerts",
        records=[
            (
                a.key,
                incident_id,
                a.source,
                a.title,
                a.severity.value,
                a.time,
                a.host,
                a.user,
                a.src_ip,
                a.dst_ip,
                a.model_dump_json().encode(),
                type_rule,
            )
            for a, incident_id, type_rule in alerts
        ],
        columns=[
            "key",
            "incident_id",
            "source",
            "title",
            "severity",
            "time",
            "host",
            "user",
            "src_ip",
            "dst_ip",
            "body",
            "type_rule",
        ],
    )


async def close_incident(conn: Conn, *, incident_id: str) -> None:
    """Stop attaching alerts to an incident that ended; its alerts retire, so one firing again is new."""
    await conn.execute("UPDATE detector_incidents SET closed = true, updated_at = now() WHERE id = $1", incident_id)
    await conn.execute("UPDATE detector_alerts SET retired = true WHERE incident_id = $1 AND NOT retired", incident_id)
