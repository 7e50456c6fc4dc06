"""The analyzer's table: what it has gathered so far about each incident."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from services.analyzer.domain import Gathered, Published
from shared.db import Conn
from shared.events import IncidentAnalyzed, IncidentSnapshot, Indicator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kept:
    """What the analyzer keeps of an incident, read (and locked) once at the start of an analysis."""

    gathered: Gathered | None  # None: nothing gathered yet
    published: Published  # what was last published of its analysis
    now: datetime  # the transaction's time, which publication intervals are measured against


async def get(conn: Conn, *, incident_id: str) -> Kept:
    """The incident's row, locked until commit: what was gathered and what was published, in one round trip."""
    row = await conn.fetchrow(
        """SELECT alert_count, hosts, users, indicators, resources, published_digest, published_urgent, published_at,
                  pending_event IS NOT NULL AS pending, now() AS now
           FROM analyzer_incidents WHERE incident_id = $1 FOR UPDATE""",
        incident_id,
    )
    if row is None:  # nothing published either: the time is not compared with anything
        return Kept(None, Published(), datetime.now(UTC))
    gathered = Gathered(
        alert_count=row["alert_count"],
        hosts=list(row["hosts"]),
        users=list(row["users"]),
        indicators=[Indicator.model_validate(i) for i in row["indicators"]],
        resources=list(row["resources"]),
    )
    published = Published(row["published_digest"], row["published_urgent"], row["published_at"], row["pending"])
    return Kept(gathered, published, row["now"])


async def save(conn: Conn, *, incident_id: str, gathered: Gathered, snapshot: IncidentSnapshot | None) -> None:
    """Keep what was gathered, and the incident as ``snapshot`` (its latest event) describes it, without its
    alerts; None keeps the snapshot kept before."""
    await conn.execute(
        """INSERT INTO analyzer_incidents (incident_id, alert_count, hosts, users, indicators, resources, snapshot)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (incident_id) DO UPDATE SET alert_count = EXCLUDED.alert_count,
               hosts = EXCLUDED.hosts, users = EXCLUDED.users, indicators = EXCLUDED.indicators,
               resources = EXCLUDED.resources, snapshot = coalesce(EXCLUDED.snapshot, analyzer_incidents.snapshot),
               updated_at = now()""",
        incident_id,
        gathered.alert_count,
        gathered.hosts,
        gathered.users,
        [i.model_dump() for i in gathered.indicators],
        gathered.resources,
        None if snapshot is None else snapshot.model_dump(mode="json", exclude=_ALERTS_OF_A_BATCH),
    )


# What a snapshot says of its batch's alerts: not kept, as an analysis again adds no alert.
_ALERTS_OF_A_BATCH = {"new_alerts", "part", "parts"}


async def last_snapshot(conn: Conn, *, incident_id: str) -> IncidentSnapshot | None:
    """The incident as its latest event described it, with no new alerts; None before any (or before Vigil kept it)."""
    kept = await conn.fetchval("SELECT snapshot FROM analyzer_incidents WHERE incident_id = $1", incident_id)
    if kept is None:
        return None
    try:
        return IncidentSnapshot.model_validate(kept)
    except ValidationError as exc:  # kept by a version of Vigil that described incidents otherwise
        log.warning(
            "incident %s: its kept snapshot is not read (%s); analysed again with its next event", incident_id, exc
        )
        return None


async def forget_snapshot(conn: Conn, *, incident_id: str) -> None:
    """The incident is analysed again only with an event of its own (it was merged into another)."""
    await conn.execute("UPDATE analyzer_incidents SET snapshot = NULL WHERE incident_id = $1", incident_id)


async def mark_published(conn: Conn, *, incident_id: str, digest: str, urgent: str) -> None:
    """The analysis with these digests is published now; any version waiting for the timer is superseded."""
    await conn.execute(
        """UPDATE analyzer_incidents SET published_digest = $2, published_urgent = $3, published_at = now(),
               pending_event = NULL
           WHERE incident_id = $1""",
        incident_id,
        digest,
        urgent,
    )


async def set_pending(conn: Conn, *, incident_id: str, event: IncidentAnalyzed | None) -> None:
    """Keep the version to publish when the incident's timer fires (None: nothing waits any more)."""
    await conn.execute(
        "UPDATE analyzer_incidents SET pending_event = $2 WHERE incident_id = $1",
        incident_id,
        event.model_dump(mode="json") if event is not None else None,
    )


async def take_due(conn: Conn, *, interval: timedelta, limit: int = 100) -> list[IncidentAnalyzed]:
    """The versions whose incident's interval has ended, removed from waiting, their rows locked until commit.

    Rows a consumer holds are skipped, not waited for: it is publishing or deferring that incident itself.
    """
    rows = await conn.fetch(
        """SELECT incident_id, pending_event FROM analyzer_incidents
           WHERE pending_event IS NOT NULL AND published_at <= now() - $1::interval
           ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
        interval,
        limit,
    )
    if rows:
        await conn.execute(
            "UPDATE analyzer_incidents SET pending_event = NULL WHERE incident_id = ANY($1::text[])",
            [r["incident_id"] for r in rows],
        )
    return [IncidentAnalyzed.model_validate(r["pending_event"]) for r in rows]
