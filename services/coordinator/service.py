"""Composition of the coordinator service."""

from __future__ import annotations

from pathlib import Path

from services.coordinator import api
from services.coordinator.domain import OnCall, parse_oncall
from services.coordinator.handlers import SERVICE, Coordinator
from shared.consumer import decode_cloudevent
from shared.service import Runtime, ServiceSpec
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import COMMANDS, INCIDENTS, RESPONSES

DEFAULT_ONCALL = Path(__file__).with_name("oncall.yaml")


def load_oncall(path: Path = DEFAULT_ONCALL) -> OnCall:
    return parse_oncall(path.read_text())


def spec(settings: VigilSettings) -> ServiceSpec:
    coordinator = Coordinator(load_oncall())

    async def fire_timers(runtime: Runtime) -> None:
        poller = TimerPoller(
            service=SERVICE, pool=runtime.pool, names=runtime.names, handlers=coordinator.timer_handlers
        )
        await poller.run()

    return ServiceSpec(
        name=SERVICE,
        consumes=(INCIDENTS, COMMANDS, RESPONSES),
        decoder=decode_cloudevent,
        handler=coordinator.handle,
        routers=lambda runtime: api.routers(runtime, coordinator),
        background=(fire_timers,),
    )
