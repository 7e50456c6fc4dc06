"""The detector's handlers: raw alerts become incidents; resolved incidents stop collecting alerts."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from services.detector import adapters, domain, repository
from services.detector.adapters import FORMAT_HEADER, Parsed, Rejected
from services.detector.adapters.base import stable_id
from services.detector.metrics import ALERTS, INCIDENTS_OPENED, RECORDS
from shared.alerts import Alert
from shared.consumer import HandlerContext, Inbound, decode_cloudevent
from shared.events import IncidentDetected, IncidentState, IncidentStateChanged, IncidentUpdated, new_id
from shared.logs import event_ids
from shared.topics import ALERTS_RAW

log = logging.getLogger(__name__)
SOURCE = "/vigil/detector"
# Each retry follows another replica's commit of some of the same alerts: a few are plenty.
STORE_ATTEMPTS = 3


def decode(record: Any) -> tuple[str, Parsed | Any]:
    """Raw records are read by the adapter of their format; everything else is a CloudEvent."""
    if not record.topic.endswith(ALERTS_RAW.name):
        return decode_cloudevent(record)
    named = next((value for name, value in record.headers or () if name == FORMAT_HEADER), None)
    format_name = named.decode("utf-8", "replace") if named else None
    try:
        parsed = adapters.parse_record(record.value, format_name=format_name)
    except Rejected as exc:
        RECORDS.labels(format_name if format_name in adapters.FORMATS else "unknown", exc.code).inc()
        ALERTS.labels("invalid").inc()
        raise
    RECORDS.labels(parsed.format, "alerts" if parsed.alerts else "not_alert").inc()
    # A redelivered record is a no-op; the same alert sent again in a new record is a repeat.
    return f"raw:{stable_id(record.topic, record.partition, record.offset, record.value)}", parsed


class Detector:
    def __init__(self, *, correlation_window: timedelta) -> None:
        self.window = correlation_window

    async def handle(self, ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        alerts = [alert for inbound in batch if isinstance(inbound.item, Parsed) for alert in inbound.item.alerts]
        if alerts:
            await self.handle_alerts(ctx, alerts)
        for inbound in batch:
            event = inbound.item
            if isinstance(event, IncidentStateChanged) and event.data.to_state is IncidentState.RESOLVED:
                await repository.close_incident(ctx.conn, incident_id=event.subject)

    async def handle_alerts(self, ctx: HandlerContext, alerts: list[Alert]) -> None:
        repeats, changes = await self._store(ctx, alerts)
        stored = sum(len(c.alerts) for c in changes)
        if stored < len(alerts):  # every other sighting was counted on an alert stored before
            ALERTS.labels("repeat").inc(len(alerts) - stored)
            log.info(
                "%d sighting(s) of %d alert(s) stored before: counted as repeats, no incident changed",
                len(alerts) - stored,
                len(repeats),
            )
        ALERTS.labels("accepted").inc(stored)
        for change in changes:
            parts = domain.snapshots(change)
            event_class = IncidentDetected if change.created else IncidentUpdated
            first = event_class(source=SOURCE, subject=change.incident.id, data=parts[0])
            ctx.emit(first)
            for snapshot in parts[1:]:
                # The rest of the batch's alerts, after the first part: same key, same partition, in order.
                ctx.emit(IncidentUpdated(source=SOURCE, subject=first.subject, correlationid=first.id, data=snapshot))
            if change.created:
                INCIDENTS_OPENED.labels(change.incident.type.value, change.incident.severity.value).inc()
                log.info(
                    "incident %s opened: %s %s",
                    change.incident.id,
                    change.incident.severity.value,
                    change.incident.type.value,
                    extra=event_ids(first),
                )

    async def _store(self, ctx: HandlerContext, alerts: list[Alert]) -> tuple[set[str], list[domain.IncidentChange]]:
        """Store the alerts in a savepoint, again if another replica stored some of them meanwhile."""
        attempt = 1
        while True:
            try:
                async with ctx.conn.transaction():
                    return await self._store_once(ctx, alerts)
            except asyncpg.UniqueViolationError as exc:
                # Another replica committed one of these alerts between our look-up and our COPY:
                # looked up again, it is a repeat.
                if exc.constraint_name != "detector_alerts_pkey" or attempt == STORE_ATTEMPTS:
                    raise
                attempt += 1
                log.info("alerts stored meanwhile by another detector; looking again (%s)", exc.detail)

    async def _store_once(
        self, ctx: HandlerContext, alerts: list[Alert]
    ) -> tuple[set[str], list[domain.IncidentChange]]:
        """Count the alerts stored before as repeats; correlate and store the others."""
        # An alert's processed id expires long before its source stops re-sending it (an
        # Alertmanager fingerprint lives for weeks): a stored key is a repeat, not a new alert.
        sightings = Counter(a.key for a in alerts)
        repeats = await repository.count_repeats(ctx.conn, sightings=sightings)
        first_sightings: dict[str, Alert] = {}
        for alert in alerts:
            if alert.key not in repeats:
                first_sightings.setdefault(alert.key, alert)
        fresh = list(first_sightings.values())
        if not fresh:
            return repeats, []
        keys = {domain.correlation_key(a) for a in fresh}
        open_incidents = await repository.get_open_by_keys(ctx.conn, keys=keys)
        changes = domain.correlate(fresh, open_incidents, window=self.window, new_id=new_id)
        await repository.upsert_incidents(ctx.conn, incidents=[c.incident for c in changes])
        await repository.insert_alerts(ctx.conn, alerts=[(a, c.incident.id) for c in changes for a in c.alerts])
        # The same alert twice in one batch: stored once, the other sightings counted on it.
        again = {key: n - 1 for key, n in sightings.items() if n > 1 and key not in repeats}
        if again:
            await repository.count_repeats(ctx.conn, sightings=again)
            repeats |= again.keys()
        return repeats, changes
