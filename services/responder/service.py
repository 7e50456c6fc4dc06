"""Composition of the responder service."""

from __future__ import annotations

from pathlib import Path

from services.responder.domain import Playbook, parse_playbooks
from services.responder.handlers import Responder
from shared.consumer import decode_cloudevent
from shared.service import ServiceSpec
from shared.settings import VigilSettings
from shared.topics import ANALYSES

DEFAULT_PLAYBOOKS = Path(__file__).with_name("playbooks.yaml")


def load_playbooks(path: Path = DEFAULT_PLAYBOOKS) -> list[Playbook]:
    return parse_playbooks(path.read_text())


def spec(settings: VigilSettings) -> ServiceSpec:
    responder = Responder(load_playbooks())
    return ServiceSpec(name="responder", consumes=(ANALYSES,), decoder=decode_cloudevent, handler=responder.handle)
