"""Composition of the responder service."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from services.responder import api
from services.responder.approvals import DEFAULT_APPROVALS, load_policy
from services.responder.blocklist import IpNetwork
from services.responder.connectors import (
    DEFAULT_CONNECTORS,
    ConnectorsConfigError,
    load_connectors,
    load_connectors_config,
)
from services.responder.domain import Playbook, parse_playbooks
from services.responder.guardrails import DEFAULT_GUARDRAILS, RateLimiter, load_guardrails
from services.responder.handlers import SERVICE, Execution, Responder, effect_kinds
from services.responder.leases import RepeatOffenders
from services.responder.monitor import Watch
from services.responder.playbook import duration_seconds
from shared.consumer import decode_cloudevent
from shared.effects import EffectKind
from shared.service import Runtime, ServiceSpec
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import ANALYSES, COMMANDS, COORDINATION, INCIDENTS

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


def repeat_offenders(settings: VigilSettings) -> RepeatOffenders:
    """The lease ladder for repeat offenders, from the settings; a bad value stops the responder, saying why."""
    try:
        durations = tuple(duration_seconds(d.strip()) for d in settings.responder_repeat_durations.split(","))
        window = timedelta(seconds=duration_seconds(settings.responder_repeat_window))
        return RepeatOffenders(window=window, durations=durations)
    except ValueError as exc:
        raise ValueError(f"VIGIL_RESPONDER_REPEAT_*: {exc}") from exc


def spec(settings: VigilSettings) -> ServiceSpec:
    # Every file is read now: a broken one stops the responder, with its reason, before it consumes.
    connectors_config = load_connectors_config(settings.responder_connectors or DEFAULT_CONNECTORS)
    execution = Execution(
        policy=load_policy(settings.responder_approvals or DEFAULT_APPROVALS),
        guardrails=load_guardrails(settings.responder_guardrails or DEFAULT_GUARDRAILS),
        connectors={},
        own_addresses=own_addresses(settings),
        dry_run=settings.responder_dry_run,
        repeat_offenders=repeat_offenders(settings),
        watch=Watch(
            period=timedelta(seconds=duration_seconds(settings.responder_monitor_period)),
            threshold=settings.responder_monitor_alerts,
        ),
    )
    playbooks = load_playbooks()
    responder = Responder(playbooks, execution)

    def effects(runtime: Runtime) -> Sequence[EffectKind]:
        # Connectors need the pool (the block lists live in Postgres): set up before consuming starts.
        connectors = load_connectors(connectors_config, pool=runtime.pool)
        named = {
            c for p in playbooks for s in p.steps for c in (s.connector, s.undo.connector if s.undo else None) if c
        }
        if unknown := sorted(named - connectors.keys() - {"notify", "manual"}):
            raise ConnectorsConfigError([f"playbooks name connectors nobody provides: {', '.join(unknown)}"])
        limiter = RateLimiter(runtime.settings.database_url)
        runtime.closers.append(("the rate limiter's connection", limiter.close))
        responder.execution = replace(execution, connectors=connectors, rate_limiter=limiter)
        return effect_kinds(responder, runtime.pool)

    async def fire_timers(runtime: Runtime) -> None:
        poller = TimerPoller(
            service=SERVICE,
            pool=runtime.pool,
            names=runtime.names,
            handlers=responder.timer_handlers,
            locks=responder.timer_locks,
        )
        await poller.run()

    return ServiceSpec(
        name=SERVICE,
        # The incidents' new alerts: the watch after containment looks for the contained entities in them.
        # Incident state changes: no action starts on an ended incident until it is reopened.
        consumes=(ANALYSES, COMMANDS, INCIDENTS, COORDINATION),
        decoder=decode_cloudevent,
        handler=responder.handle,
        routers=lambda runtime: api.routers(runtime, responder),
        background=(fire_timers,),
        effects=effects,
    )
