"""Recovery steps with owners, due times, checks and states, tracked to done; the coordinator lets the
incident enter `recovered` only once every required recovery step has ended well.

Against the real Postgres and a real signed-webhook far side; operators use the API and the CLI.
"""

from __future__ import annotations

import json

import asyncpg
import pytest

from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.responder import api, domain
from services.responder.approvals import parse_policy
from services.responder.connectors import load_connectors, parse_connectors_config
from services.responder.guardrails import parse_guardrails
from services.responder.handlers import Execution, Responder
from shared import cloudevents
from shared.consumer import HandlerContext
from shared.events import (
    Analysis,
    ChangeState,
    CommandRejected,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentStateChanged,
    IncidentType,
    ResponseStepsChanged,
    ResponseStepValidated,
    Severity,
    StateCommand,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import eventually, serve_app
from tests.integration.test_response_execution import (
    GUARDRAILS,
    SECRET,
    _inbound,
    handle,
    receiver,
    runner_for,
    running,
    vigil_cli,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

PLAYBOOK = """
playbooks:
  - id: recover
    title: Recover a compromised system
    match: {types: [system_compromise]}
    steps:
      - id: reimage
        name: Rebuild host
        phase: recovery
        response: recovery
        for_each: affected_hosts
        connector: webhook
        action: reimage_host
        params: {host: {value: "{{ item }}", type: hostname}}
        recovery: system
      - id: restore-data
        name: Restore and verify data
        phase: recovery
        response: recovery
        connector: manual
        action: restore_data
        owner: dba-oncall
        due: 4h
        recovery: data
      - id: confirm-business
        name: Confirm business operations
        phase: recovery
        response: recovery
        connector: manual
        action: confirm_business
        owner: shop-owner
        recovery: business
        required: false
"""


async def test_required_recovery_steps_hold_the_incident_until_their_owners_have_done_them(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        config = parse_connectors_config(json.dumps({"webhook": {"url": far.url, "secret_env": "HOOK_SECRET"}}))
        responder = Responder(
            domain.parse_playbooks(PLAYBOOK),
            Execution(
                policy=parse_policy("rules: [{name: all, mode: auto}]"),
                guardrails=parse_guardrails(GUARDRAILS),
                connectors=load_connectors(config, pool=pool, environ={"HOOK_SECRET": SECRET}),
            ),
        )
        data = Analysis(
            type=IncidentType.SYSTEM_COMPROMISE,
            severity=Severity.SEV2,
            title="ransomware",
            indicators=[],
            affected_hosts=["file-1"],
            affected_users=[],
            alert_count=1,
            summary="",
        )
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-rc", data=data))
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _state_of(pool, "restore-data", "running"))
    coordinator = Coordinator(load_oncall())
    detected = IncidentDetected(source="/vigil/detector", subject="inc-rc", data=snapshot())
    moves = [_to("acknowledged"), _to("contained")]
    await coordinate(pool, names, coordinator, [detected, *moves, *await responded(pool)])
    [refused] = await coordinate(pool, names, coordinator, [_to("recovered")])
    assert isinstance(refused, CommandRejected)
    assert "1 recovery response step(s) have not ended well" in refused.data.reason

    # Four hours later the data is still not restored: the commander is told whose step is overdue.
    await pool.execute("UPDATE timers SET due_at = now() WHERE kind = 'response-step-due' AND fired_at IS NULL")
    poller = TimerPoller(
        service="coordinator",
        pool=pool,
        names=names,
        handlers=coordinator.timer_handlers,
        locks=coordinator.timer_locks,
    )
    assert await poller.fire_due() == 1
    pages = [e for e in await coordinator_outbox(pool) if isinstance(e, IncidentEscalated)]
    assert pages[-1].data.reason.startswith(
        "required response step 'Restore and verify data' (owner dba-oncall) is overdue: due "
    )

    runtime = Runtime(service="responder", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    restore = await pool.fetchval("SELECT id FROM responder_steps WHERE step = 'restore-data'")
    async with serve_app(build_app(runtime, api.routers(runtime, responder)), name="responder-api") as base:
        listed = await vigil_cli("recovery", "list", "inc-rc", responder_url=base)
        assert "dba-oncall" in listed and "data" in listed and "shop-owner" in listed
        steps = json.loads(await vigil_cli("recovery", "list", "inc-rc", "--json", responder_url=base))
        assert [(s["step"], s["recovery"], s["state"], s["required"]) for s in steps] == [
            ("reimage", "system", "succeeded", True),
            ("restore-data", "data", "running", True),
            ("confirm-business", "business", "planned", False),
        ]
        assert steps[1]["due_at"] is not None and steps[1]["reason"].startswith("handed to dba-oncall, due ")
        refused_cli = await vigil_cli("recovery", "done", steps[0]["id"], "--note", "x", responder_url=base, code=1)
        assert "is done by its connector (webhook), not by a person" in refused_cli
        await vigil_cli(
            "recovery", "done", restore, "--note", "restored from the 02:00 backup, checksums match", responder_url=base
        )
    done = await pool.fetchrow(
        "SELECT state, validation, validation_reason FROM responder_steps WHERE id = $1", restore
    )
    assert done is not None and (done["state"], done["validation"]) == ("succeeded", "validated")
    assert await _state_of(pool, "confirm-business", "running")  # handed to its owner now; not required

    [moved] = [
        e
        for e in await coordinate(pool, names, coordinator, [*await responded(pool), _to("recovered")])
        if isinstance(e, IncidentStateChanged | CommandRejected)
    ]
    assert isinstance(moved, IncidentStateChanged), moved
    assert moved.data.to_state.value == "recovered"
    log = await pool.fetch("SELECT actor, to_state FROM responder_step_log WHERE step_id = $1 ORDER BY id", restore)
    assert [(r["actor"], r["to_state"]) for r in log][-2:] == [("carol", "succeeded"), ("validation", "succeeded")]


def _to(state: str) -> ChangeState:
    return ChangeState(source="/t", subject="inc-rc", data=StateCommand(actor="alice", to_state=state))


async def _state_of(pool: asyncpg.Pool, step: str, state: str) -> bool:
    return bool(await pool.fetchval("SELECT state = $2 FROM responder_steps WHERE step = $1", step, state))


async def responded(pool: asyncpg.Pool) -> list[EventBase]:
    """The responder's step events not yet handed to the coordinator."""
    rows = await pool.fetch(
        "UPDATE outbox SET sent_at = now() WHERE service = 'responder' AND sent_at IS NULL RETURNING id, value, headers"
    )
    events = [
        cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]])
        for r in sorted(rows, key=lambda r: r["id"])
    ]
    return [e for e in events if isinstance(e, ResponseStepsChanged | ResponseStepValidated)]


async def coordinate(
    pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator, events: list[EventBase]
) -> list[EventBase]:
    out: list[EventBase] = []
    for event in events:
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="coordinator", names=names)
            await coordinator.handle(ctx, [_inbound(event)])
            out += ctx.emitted
    return out


async def coordinator_outbox(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'coordinator' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]
