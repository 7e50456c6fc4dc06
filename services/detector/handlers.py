"""The detector's handlers: raw alerts become incidents; resolved incidents stop collecting alerts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from pydantic import ValidationError

from services.detector import domain, repository
from services.detector.metrics import ALERTS, INCIDENTS_OPENED
from shared.alerts import ALERT_ADAPTER, Alert
from shared.consumer import HandlerContext, Inbound, decode_cloudevent
from shared.errors import InvalidMessage, validation_reason
from shared.events import IncidentDetected, IncidentState, IncidentStateChanged, IncidentUpdated, new_id
from shared.logs import event_ids
from shared.topics import ALERTS_RAW

log = logging.getLogger(__name__)
SOURCE = "/vigil/detector"
# Each retry follows another replica's commit of some of the same alerts: a few are plenty.
STORE_ATTEMPTS = 3


def decode(record: Any) -> tuple[str, Alert | Any]:
    """Raw alerts are validated against the native schema; everything else is a CloudEvent."""
    if not record.topic.endswith(ALERTS_RAW.name):
        return decode_cloudevent(record)
    if not record.value:
        ALERTS.labels("invalid").inc()
        raise InvalidMessage("empty alert")
    if b"\\u0000" in record.value:
        ALERTS.labels("invalid").inc()
        raise InvalidMessage("alert contains a NUL character (\\u0000), which Postgres text cannot store")
    try:
        alert = ALERT_ADAPTER.validate_json(record.value)
    except ValidationError as exc:
        ALERTS.labels("invalid").inc()
        raise InvalidMessage(f"alert does not match the Vigil alert schema: {validation_reason(exc)}") from exc
    return f"alert:{alert.key}", alert


class Detector:
    def __init__(self, *, correlation_window: timedelta) -> None:
        self.window = correlation_window

    async def handle(self, ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        alerts = [inbound.item for inbound in batch if isinstance(inbound.item, Alert)]
        if alerts:
            await self.handle_alerts(ctx, alerts)
        for inbound in batch:
            event = inbound.item
            if isinstance(event, IncidentStateChanged) and event.data.to_state is IncidentState.RESOLVED:
                await repository.close_incident(ctx.conn, incident_id=event.subject)

    async def handle_alerts(self, ctx: HandlerContext, alerts: list[Alert]) -> None:
        repeats, changes = await self._store(ctx, alerts)
        if repeats:
            ALERTS.labels("repeat").inc(len(repeats))
            log.info("%d alert(s) stored before and sent again: counted as repeats, no incident changed", len(repeats))
        ALERTS.labels("accepted").inc(len(alerts) - len(repeats))
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
        repeats = await repository.count_repeats(ctx.conn, keys=[a.key for a in alerts])
        fresh = [a for a in alerts if a.key not in repeats] if repeats else alerts
        if not fresh:
            return repeats, []
        keys = {domain.correlation_key(a) for a in fresh}
        open_incidents = await repository.get_open_by_keys(ctx.conn, keys=keys)
        changes = domain.correlate(fresh, open_incidents, window=self.window, new_id=new_id)
        await repository.upsert_incidents(ctx.conn, incidents=[c.incident for c in changes])
        await repository.insert_alerts(ctx.conn, alerts=[(a, c.incident.id) for c in changes for a in c.alerts])
        return repeats, changes
