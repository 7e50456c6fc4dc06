"""Composition of the reporter service."""

from __future__ import annotations

from services.reporter import api
from services.reporter.handlers import decode, handle
from services.reporter.metrics import refresh_gauges
from services.reporter.stream import StreamAggregations
from shared.service import BackgroundTask, ServiceSpec
from shared.settings import VigilSettings
from shared.topics import ALERTS_SUPPRESSED, ANALYSES, COMMANDS, COORDINATION, EFFECTS, INCIDENTS, RESPONSES

REPORTER_LINGER_MS = 500


def spec(settings: VigilSettings) -> ServiceSpec:
    # The windowed stream aggregations run beside the consume loop, in the same process and event loop.
    stream = StreamAggregations(settings) if settings.stream_enabled else None
    background: tuple[BackgroundTask, ...] = (refresh_gauges,) if stream is None else (refresh_gauges, stream.run)
    return ServiceSpec(
        name="reporter",
        consumes=(INCIDENTS, ALERTS_SUPPRESSED, ANALYSES, RESPONSES, COORDINATION, EFFECTS, COMMANDS),
        decoder=decode,
        handler=handle,
        routers=lambda runtime: api.routers(runtime, stream.view if stream is not None else None),
        background=background,
        # The read model may trail by half a second; a batch costs a few statements whatever its size.
        linger_ms=REPORTER_LINGER_MS,
    )
