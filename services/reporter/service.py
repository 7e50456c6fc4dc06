"""Composition of the reporter service."""

from __future__ import annotations

from services.reporter import api
from services.reporter.handlers import handle
from services.reporter.metrics import refresh_gauges
from shared.consumer import decode_cloudevent
from shared.service import ServiceSpec
from shared.settings import VigilSettings
from shared.topics import ANALYSES, COMMANDS, COORDINATION, EFFECTS, INCIDENTS, RESPONSES


def spec(settings: VigilSettings) -> ServiceSpec:
    return ServiceSpec(
        name="reporter",
        consumes=(INCIDENTS, ANALYSES, RESPONSES, COORDINATION, EFFECTS, COMMANDS),
        decoder=decode_cloudevent,
        handler=handle,
        routers=api.routers,
        background=(refresh_gauges,),
    )
