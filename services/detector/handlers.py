"""The detector's handlers: raw alerts become incidents; resolved incidents stop collecting alerts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

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
        keys = {domain.correlation_key(a) for a in alerts}
        open_incidents = await repository.get_open_by_keys(ctx.conn, keys=keys)
        changes = domain.correlate(alerts, open_incidents, window=self.window, new_id=new_id)
        await repository.upsert_incidents(ctx.conn, incidents=[c.incident for c in changes])
        await repository.insert_alerts(ctx.conn, alerts=[(a, c.incident.id) for c in changes for a in c.alerts])
        ALERTS.labels("accepted").inc(len(alerts))
        for change in changes:
            event_class = IncidentDetected if change.created else IncidentUpdated
            event = event_class(source=SOURCE, subject=change.incident.id, data=change.snapshot())
            ctx.emit(event)
            if change.created:
                INCIDENTS_OPENED.labels(change.incident.type.value, change.incident.severity.value).inc()
                log.info(
                    "incident %s opened: %s %s",
                    change.incident.id,
                    change.incident.severity.value,
                    change.incident.type.value,
                    extra=event_ids(event),
                )
