"""Composition of the responder service."""

from __future__ import annotations

from services.responder.domain import load_playbooks
from services.responder.handlers import Responder
from shared.consumer import decode_cloudevent
from shared.service import ServiceSpec
from shared.settings import VigilSettings
from shared.topics import ANALYSES


def spec(settings: VigilSettings) -> ServiceSpec:
    responder = Responder(load_playbooks())
    return ServiceSpec(name="responder", consumes=(ANALYSES,), decoder=decode_cloudevent, handler=responder.handle)
