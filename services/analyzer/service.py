"""Composition of the analyzer service."""

from __future__ import annotations

from services.analyzer.handlers import handle
from shared.consumer import decode_cloudevent
from shared.service import ServiceSpec
from shared.settings import VigilSettings
from shared.topics import INCIDENTS


def spec(settings: VigilSettings) -> ServiceSpec:
    return ServiceSpec(name="analyzer", consumes=(INCIDENTS,), decoder=decode_cloudevent, handler=handle)
