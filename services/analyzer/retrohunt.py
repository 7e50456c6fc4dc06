"""Retro-hunt: a threat-intelligence feed that comes to list an indicator an incident already holds has the
incident analysed again, without waiting for its next alert.

An incident's indicators are otherwise looked up again only when its next event comes: one that has gone
quiet would keep calling an address harmless that a feed now lists as a botnet's. When a feed is loaded,
the indicators of the incidents whose last alert is recent are looked up in it, in one query; each incident
naming one the feed lists gets a timer (``RECHECK``) carrying what it names, whose handler
(``handlers.recheck_intel``) looks those up again and publishes the new version at once if a verdict
changed. An incident merged into another is never hunted: its alerts are the survivor's.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from services.analyzer import intel
from services.analyzer.forensic import INDICATOR_KINDS
from services.analyzer.metrics import RETRO_HUNTS
from shared import timers
from shared.db import Conn

log = logging.getLogger(__name__)

RECHECK = "intel-recheck"  # the timers' kind
# Incidents whose last alert is this recent are hunted in; at most this many of their indicators, and at
# most this many of an incident's are carried by its timer to be looked up again.
HUNT_WINDOW = timedelta(days=7)
HUNT_INDICATORS = 200_000
NAMED_PER_INCIDENT = 500

# Through each recent incident's own indicators (their key starts with the incident's id).
_RECENT_INDICATORS = """
    SELECT i.incident_id, i.kind, i.value
    FROM analyzer_incidents a JOIN analyzer_indicators i ON i.incident_id = a.incident_id
    WHERE a.snapshot IS NOT NULL AND (a.snapshot ->> 'last_seen')::timestamptz > now() - $1::interval
      AND i.kind = ANY($2::text[]) AND NOT i.internal
    LIMIT $3"""


async def lock_incident(conn: Conn, incident_id: str) -> None:
    """The row an analysis locks (``repository.get``): taken before the recheck's timer."""
    await conn.execute("SELECT 1 FROM analyzer_incidents WHERE incident_id = $1 FOR UPDATE", incident_id)


async def hunt(conn: Conn, *, source: str, service: str) -> list[str]:
    """Set a recheck for each recent incident that names an indicator the feed ``source`` lists now.

    Run in the transaction that loaded the feed, after it: the timers are set only if the load commits.
    ``service``: the analyzer's name, whose timer poller fires the rechecks. Returns the incidents, in order.
    """
    rows = await conn.fetch(_RECENT_INDICATORS, HUNT_WINDOW, sorted(INDICATOR_KINDS), HUNT_INDICATORS)
    if len(rows) == HUNT_INDICATORS:
        log.warning("retro-hunt for feed %s: only the first %d indicators looked at", source, HUNT_INDICATORS)
    found = await intel.lookup(conn, sorted({(row["kind"], row["value"]) for row in rows}))
    listed = {key for key, matches in found.items() if any(match.source == source for match in matches)}
    named: dict[str, list[list[str]]] = {}
    for row in rows:
        if (row["kind"], row["value"]) in listed:
            named.setdefault(row["incident_id"], []).append([row["kind"], row["value"]])
    now = await conn.fetchval("SELECT now()")
    for incident_id, keys in sorted(named.items()):
        payload = {"named": sorted(keys)[:NAMED_PER_INCIDENT]}
        await timers.schedule(conn, service=service, kind=RECHECK, subject=incident_id, due_at=now, payload=payload)
    if named:
        RETRO_HUNTS.inc(len(named))
        log.info("intel feed %s lists indicators of %d incident(s): analysing them again", source, len(named))
    return sorted(named)
