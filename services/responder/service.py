"""Composition of the responder service."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from services.responder import api
from services.responder.blocklist import IpNetwork
from services.responder.domain import Playbook, parse_playbooks
from services.responder.guardrails import DEFAULT_GUARDRAILS, load_guardrails
from services.responder.handlers import Responder
from shared.consumer import decode_cloudevent
from shared.service import ServiceSpec
from shared.settings import VigilSettings
from shared.topics import ANALYSES

DEFAULT_PLAYBOOKS = Path(__file__).with_name("playbooks.yaml")


def load_playbooks(path: Path = DEFAULT_PLAYBOOKS) -> list[Playbook]:
    return parse_playbooks(path.read_text())


def own_addresses(settings: VigilSettings) -> list[IpNetwork]:
    """The addresses Vigil runs on (its bind address and this host's), which no action may block."""
    found: set[IpNetwork] = set()
    for host in {settings.http_host, socket.gethostname()}:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:  # a name this host cannot resolve adds nothing; the own networks still apply
            continue
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if not address.is_unspecified:
                found.add(ipaddress.ip_network(address))
    return sorted(found, key=lambda n: (n.version, n))


def spec(settings: VigilSettings, guardrails_path: Path = DEFAULT_GUARDRAILS) -> ServiceSpec:
    load_guardrails(guardrails_path)  # now: a broken file stops the responder before it consumes anything
    responder = Responder(load_playbooks())
    return ServiceSpec(
        name="responder",
        consumes=(ANALYSES,),
        decoder=decode_cloudevent,
        handler=responder.handle,
        routers=api.routers,
    )
