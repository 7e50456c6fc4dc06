"""After containment the responder watches the incident's new alerts for what it contained.

Alerts that keep naming a blocked address or an isolated host make the containment ineffective,
with the evidence, and the coordinator pages the commander; a quiet period confirms it. The new
alerts come over the real broker into the responder's consume loop; Postgres is real.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest

from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.responder import domain
from services.responder.approvals import parse_policy
from services.responder.connectors import load_connectors, parse_connectors_config
from services.responder.guardrails import parse_guardrails
from services.responder.handlers import Execution, Responder
from services.responder.monitor import Watch
from shared import cloudevents
from shared.consumer import HandlerContext, decode_cloudevent
from shared.events import (
    AlertSummary,
    Analysis,
    ContainmentConfirmed,
    ContainmentIneffective,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentType,
    IncidentUpdated,
    Indicator,
    Severity,
)
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import consume_loop, eventually, produce
from tests.integration.test_response_execution import GUARDRAILS, _inbound, handle, runner_for, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

PLAYBOOK = """
playbooks:
  - id: contain
    title: Contain a compromised host
    match: {types: [system_compromise]}
    steps:
      - id: isolate
        name: Isolate host
        phase: containment
        response: immediate
        for_each: affected_hosts
        connector: command
        action: isolate
        params: {host: {value: "{{ item }}", type: hostname}}
      - id: block
        name: Block address
        phase: containment
        response: immediate
        for_each: external_ips
        connector: blocklist
        action: block
        params: {address: {value: "{{ item }}", type: ip}}
        lease: 1h
        undo: {connector: blocklist, action: unblock, params: {address: {value: "{{ item }}", type: ip}}}
      - id: collect
        name: Collect evidence
        phase: investigation
        response: tactical
        connector: notify
        action: task
        params: {text: {value: "collect"}}
"""


def watching_responder(pool: asyncpg.Pool, period: timedelta) -> Responder:
    config = parse_connectors_config(json.dumps({"command": {"actions": {"isolate": {"argv": ["/bin/true"]}}}}))
    execution = Execution(
        policy=parse_policy("rules: [{name: all, mode: auto}]"),
        guardrails=parse_guardrails(GUARDRAILS),
        connectors=load_connectors(config, pool=pool, environ={}),
        watch=Watch(period=period, threshold=2),
    )
    return Responder(domain.parse_playbooks(PLAYBOOK), execution)


def compromise(incident: str) -> IncidentAnalyzed:
    data = Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV2,
        title="beaconing",
        indicators=[Indicator(kind="ipv4", value="203.0.113.7")],
        affected_hosts=["web-1"],
        affected_users=[],
        alert_count=1,
        summary="",
    )
    return IncidentAnalyzed(source="/t", subject=incident, data=data)


def alert(key: str, *, at: datetime, host: str = "db-9", src_ip: str | None = None) -> AlertSummary:
    return AlertSummary(
        key=key, source="suricata", title=f"beacon {key}", severity="high", time=at, host=host, src_ip=src_ip
    )


async def contained(pool: asyncpg.Pool, names: TopicNames, responder: Responder, incident: str) -> datetime:
    """Run the plan's actions; return when the watch after containment started."""
    await handle(pool, names, responder, compromise(incident))
    async with running(runner_for(responder, VigilSettings(), pool, names)):
        started = await eventually(
            lambda: pool.fetchval("SELECT started_at FROM responder_monitors WHERE incident_id = $1", incident)
        )
    watched = await pool.fetchval("SELECT entities FROM responder_monitors WHERE incident_id = $1", incident)
    assert watched == [{"kind": "host", "value": "web-1"}, {"kind": "ip", "value": "203.0.113.7"}]
    return started  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def responder_consuming(settings: VigilSettings, pool: asyncpg.Pool, responder: Responder) -> AsyncIterator[None]:
    async with consume_loop(
        settings,
        pool,
        service="responder",
        topics=[TopicNames(settings.topic_prefix)(INCIDENTS)],
        decoder=decode_cloudevent,
        handler=responder.handle,
    ):
        yield


async def publish(settings: VigilSettings, names: TopicNames, incident: str, *alerts: AlertSummary) -> None:
    event = IncidentUpdated(source="/vigil/detector", subject=incident, data=snapshot(new_alerts=list(alerts)))
    record = cloudevents.encode(event)
    await produce(settings, names(INCIDENTS), [(record.key, record.value, record.headers)])


async def emitted(pool: asyncpg.Pool, kind: type[EventBase]) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'responder' ORDER BY id")
    events = [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]
    return [e for e in events if isinstance(e, kind)]


async def coordinate(pool: asyncpg.Pool, names: TopicNames, incident: str, event: EventBase) -> list[EventBase]:
    coordinator = Coordinator(load_oncall())
    out: list[EventBase] = []
    for each in (IncidentDetected(source="/vigil/detector", subject=incident, data=snapshot()), event):
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="coordinator", names=names)
            await coordinator.handle(ctx, [_inbound(each)])
            out += ctx.emitted
    return out


async def test_alerts_that_keep_naming_contained_entities_make_containment_ineffective_and_page_the_commander(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = watching_responder(pool, timedelta(hours=1))
    started = await contained(pool, names, responder, "inc-m")
    after = started + timedelta(seconds=1)
    async with responder_consuming(settings, pool, responder):
        # Before containment, or about something else: no evidence.
        await publish(
            settings,
            names,
            "inc-m",
            alert("old", at=started - timedelta(minutes=5), src_ip="203.0.113.7"),
            alert("other", at=after, src_ip="198.51.100.20"),
        )
        await publish(settings, names, "inc-m", alert("blocked", at=after, src_ip="203.0.113.7"))
        await publish(settings, names, "inc-m", alert("isolated", at=after, host="WEB-1"))
        state = await eventually(
            lambda: pool.fetchval(
                "SELECT state FROM responder_monitors WHERE incident_id = 'inc-m' AND state <> 'watching'"
            )
        )
    assert state == "ineffective"
    [verdict] = await emitted(pool, ContainmentIneffective)
    assert isinstance(verdict, ContainmentIneffective)
    assert [(e.alert_key, e.kind, e.value) for e in verdict.data.evidence] == [
        ("blocked", "ip", "203.0.113.7"),
        ("isolated", "host", "web-1"),
    ]
    assert verdict.data.matched == 2 and verdict.data.threshold == 2
    assert await emitted(pool, ContainmentConfirmed) == []

    pages = [e for e in await coordinate(pool, names, "inc-m", verdict) if isinstance(e, IncidentEscalated)]
    assert pages[-1].data.reason.startswith("containment ineffective: 2 alert(s) on contained entities")
    assert "beacon blocked (ip 203.0.113.7" in pages[-1].data.reason
    assert await pool.fetchval("SELECT containment FROM coordinator_incidents WHERE incident_id = 'inc-m'") == (
        "ineffective"
    )


async def test_a_quiet_watch_confirms_the_containment(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = watching_responder(pool, timedelta(seconds=2))
    started = await contained(pool, names, responder, "inc-q")
    async with responder_consuming(settings, pool, responder):
        # One alert on the blocked address: below the threshold of two.
        await publish(settings, names, "inc-q", alert("once", at=started + timedelta(seconds=1), src_ip="203.0.113.7"))
        await eventually(
            lambda: pool.fetchval(
                "SELECT jsonb_array_length(evidence) = 1 FROM responder_monitors WHERE incident_id = 'inc-q'"
            )
        )
    poller = TimerPoller(
        service="responder", pool=pool, names=names, handlers=responder.timer_handlers, locks=responder.timer_locks
    )

    async def fired() -> int:
        return await poller.fire_due()

    await eventually(fired)
    [verdict] = await emitted(pool, ContainmentConfirmed)
    assert isinstance(verdict, ContainmentConfirmed)
    assert verdict.data.matched == 1 and verdict.data.ended_at >= started + timedelta(seconds=2)
    assert await emitted(pool, ContainmentIneffective) == []
    # A new plan with the same entities does not start another watch.
    await handle(pool, names, responder, compromise("inc-q"))
    assert await pool.fetchval("SELECT count(*) FROM responder_monitors WHERE incident_id = 'inc-q'") == 1

    out = await coordinate(pool, names, "inc-q", verdict)
    assert not [e for e in out if isinstance(e, IncidentEscalated)][1:]
    assert await pool.fetchval("SELECT containment FROM coordinator_incidents WHERE incident_id = 'inc-q'") == (
        "confirmed"
    )
