"""Retro-hunt: a threat-intelligence feed that comes to list an indicator an incident already holds has the
incident analysed again, without waiting for its next alert.

An incident's indicators are otherwise looked up again only when its next event comes: one that has gone
quiet would keep calling an address harmless that a feed now lists as a botnet's. When a feed's content
changes, the indicators of the incidents seen lately are looked up in it, in one query; each incident
naming one the feed lists gets a timer (``RECHECK``), whose handler (``handlers.recheck_intel``) analyses
it again and publishes the new version at once if a verdict changed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from services.analyzer import intel
from services.analyzer.metrics import RETRO_HUNTS
from shared import timers
from shared.db import Conn

log = logging.getLogger(__name__)

RECHECK = "intel-recheck"  # the timers' kind
# Incidents whose analysis changed this recently are hunted in; at most this many of their indicators.
HUNT_WINDOW = timedelta(days=30)
HUNT_INDICATORS = 200_000

_RECENT_INDICATORS = """
    SELECT DISTINCT i.kind, i.value FROM analyzer_indicators i
    JOIN analyzer_incidents a ON a.incident_id = i.incident_id
    WHERE a.updated_at > now() - $1::interval AND a.snapshot IS NOT NULL AND NOT i.internal
    LIMIT $2"""
_INCIDENTS_NAMING = """
    SELECT DISTINCT i.incident_id FROM analyzer_indicators i
    JOIN unnest($1::text[], $2::text[]) AS listed(kind, value) ON listed.kind = i.kind AND listed.value = i.value
    JOIN analyzer_incidents a ON a.incident_id = i.incident_id
    WHERE a.updated_at > now() - $3::interval AND a.snapshot IS NOT NULL"""


async def lock_incident(conn: Conn, incident_id: str) -> None:
    """The row an analysis locks first (``repository.get``): taken before the recheck's timer."""
    await conn.execute("SELECT 1 FROM analyzer_incidents WHERE incident_id = $1 FOR UPDATE", incident_id)


async def hunt(conn: Conn, *, source: str, service: str) -> list[str]:
    """Set a recheck for each incident seen lately that names an indicator the feed ``source`` lists now.

    Run in the transaction that loaded the feed, after it: the timers are set only if the load commits.
    ``service``: the analyzer's name, whose timer poller fires the rechecks. Returns the incidents, in order.
    """
    rows = await conn.fetch(_RECENT_INDICATORS, HUNT_WINDOW, HUNT_INDICATORS)
    found = await intel.lookup(conn, [(row["kind"], row["value"]) for row in rows])
    listed = [key for key, matches in found.items() if any(match.source == source for match in matches)]
    if not listed:
        return []
    named = await conn.fetch(_INCIDENTS_NAMING, [k for k, _ in listed], [v for _, v in listed], HUNT_WINDOW)
    incidents = sorted(row["incident_id"] for row in named)
    now = await conn.fetchval("SELECT now()")
    await timers.schedule_many(conn, service=service, kind=RECHECK, due=dict.fromkeys(incidents, now))
    RETRO_HUNTS.inc(len(incidents))
    log.info("intel feed %s lists indicators of %d incident(s): analysing them again", source, len(incidents))
    return incidents
