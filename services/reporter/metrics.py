"""The reporter's incident gauges, refreshed from the read model."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from services.reporter import repository
from shared.errors import is_retriable
from shared.service import Runtime

log = logging.getLogger(__name__)

INCIDENTS = Gauge("vigil_incidents", "Incidents by severity, type and state.", ["severity", "type", "state"])


async def refresh_gauges(runtime: Runtime, interval_s: float = 5.0) -> None:
    """Keep the incident gauges within a few seconds of the read model."""
    while True:
        try:
            async with runtime.pool.acquire() as conn:
                counts = await repository.count_by_labels(conn)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("incident gauges not refreshed: %r", exc)
        else:
            INCIDENTS.clear()
            for severity, incident_type, state, n in counts:
                INCIDENTS.labels(severity, incident_type, state).set(n)
        await asyncio.sleep(interval_s)
