"""When an open incident's new alerts go out: at once, or held until its update interval ends.

At a high rate every batch touches most open incidents, and each event it publishes is read, recorded
and analysed by every service downstream. An incident's alerts that come within the interval since its
last event wait in Postgres (``detector_held_alerts``) and go out together, in the order they came, in
one event: when the interval ends (``publish_due``, the detector's sweep), with the incident's next alerts
after it, or as soon as something else is to be said of it (``publish_held_of``: its stored alerts
repeated or resolved, a merge or detach, its end), so that its events stay in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from services.detector import domain, repository
from services.detector.metrics import INCIDENT_UPDATES
from shared.consumer import HandlerContext
from shared.events import AlertSummary, IncidentUpdated

SOURCE = "/vigil/detector"
# How often incidents whose interval has ended are looked for, at most: an interval ends at most this late.
SWEEP_S = 0.5
SWEEP_BATCH = 100


def summaries_json(summaries: list[AlertSummary]) -> bytes:
    """The summaries as a JSON list, as they wait in Postgres."""
    return b"[" + b",".join(s.__pydantic_serializer__.to_json(s) for s in summaries) + b"]"


def emit_held(ctx: HandlerContext, incident: domain.IncidentState, summaries: list[AlertSummary]) -> None:
    """One event (in bounded parts): the incident as it stands, and the alerts it held, in order."""
    if not summaries:
        return
    parts = domain.held_snapshots(incident, summaries)
    first = IncidentUpdated(source=SOURCE, subject=incident.id, data=parts[0])
    ctx.emit(first)
    for snapshot in parts[1:]:
        ctx.emit(IncidentUpdated(source=SOURCE, subject=incident.id, correlationid=first.id, data=snapshot))


async def publish_held_of(ctx: HandlerContext, incident_ids: Sequence[str]) -> None:
    """Publish now whatever these incidents hold: something else is to be said of them."""
    for incident, summaries in await repository.take_held(ctx.conn, incident_ids=incident_ids):
        emit_held(ctx, incident, summaries)


async def publish_due(ctx: HandlerContext, *, interval: timedelta, limit: int) -> int:
    """Publish what the incidents whose interval has ended hold (at most ``limit`` of them); how many."""
    due = await repository.take_held(ctx.conn, interval=interval, limit=limit)
    for incident, summaries in due:
        emit_held(ctx, incident, summaries)
    if due:
        INCIDENT_UPDATES.labels("published_later").inc(len(due))
    return len(due)
