"""Composition of the coordinator service."""

from __future__ import annotations

from pathlib import Path

from services.coordinator import api, tasks
from services.coordinator.handlers import SERVICE, Coordinator
from services.coordinator.lifecycle import load_lifecycle
from services.coordinator.schedules import DEFAULT_ONCALL, OnCallConfig
from services.coordinator.schedules import load_oncall as load_schedules
from services.coordinator.tasks_api import tasks_router
from shared.consumer import decode_cloudevent
from shared.service import Runtime, ServiceSpec
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import COMMANDS, INCIDENTS, RESPONSES


def load_oncall(path: Path = DEFAULT_ONCALL) -> OnCallConfig:
    return load_schedules(path)


def spec(settings: VigilSettings) -> ServiceSpec:
    templates = tasks.load_templates()
    coordinator = Coordinator(load_oncall(settings.oncall_file or DEFAULT_ONCALL), load_lifecycle(), templates)

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
        routers=lambda runtime: [
            *api.routers(runtime, coordinator),
            api.oncall_router(runtime, lambda: coordinator.oncall),
            tasks_router(runtime, templates, on_done=coordinator.on_task_done),
        ],
        background=(fire_timers,),
    )
