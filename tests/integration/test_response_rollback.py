"""A whole response rolled back on command: undone in reverse order of execution, each undo recorded
and checked, a failed undo escalated; resolving as a false positive offers the rollback.

Against the real Postgres, a real signed-webhook far side and Vigil's own block lists.
"""

from __future__ import annotations

import json

import asyncpg
import httpx
import pytest

from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.responder import api, blocklist, domain
from services.responder.approvals import parse_policy
from services.responder.connectors import load_connectors, parse_connectors_config
from services.responder.guardrails import parse_guardrails
from services.responder.handlers import Execution, Responder
from shared import cloudevents
from shared.consumer import HandlerContext
from shared.events import (
    Analysis,
    CommandArgs,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentType,
    Indicator,
    ResolveIncident,
    ResponseLeaseChanged,
    ResponseStepsChanged,
    RollbackOffered,
    Severity,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
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
  - id: breach
    title: Stop an intrusion
    match: {types: [security_breach]}
    steps:
      - id: disable
        name: Disable account
        phase: containment
        response: immediate
        for_each: affected_users
        connector: webhook
        action: disable_account
        params: {user: {value: "{{ item }}"}}
        lease: 1h
        undo: {connector: webhook, action: enable_account, params: {user: {value: "{{ item }}"}}}
      - id: block-ip
        name: Block address
        phase: containment
        response: immediate
        for_each: external_ips
        connector: blocklist
        action: block
        params: {address: {value: "{{ item }}", type: ip}}
        lease: 1h
        undo: {connector: blocklist, action: unblock, params: {address: {value: "{{ item }}", type: ip}}}
      - id: block-domain
        name: Block domain
        phase: containment
        response: immediate
        for_each: domains
        connector: blocklist
        action: block
        params: {domain: {value: "{{ item }}", type: domain}}
        lease: 1h
        undo: {connector: blocklist, action: unblock, params: {domain: {value: "{{ item }}", type: domain}}}
      - id: tell
        name: Tell the team
        phase: communication
        response: immediate
        connector: notify
        action: message
        params: {text: {value: "contained"}}
"""


def breach(incident: str) -> IncidentAnalyzed:
    data = Analysis(
        type=IncidentType.SECURITY_BREACH,
        severity=Severity.SEV2,
        title="credential stuffing",
        indicators=[Indicator(kind="ipv4", value="203.0.113.7"), Indicator(kind="domain", value="evil.example")],
        affected_hosts=[],
        affected_users=["bob"],
        alert_count=3,
        summary="",
    )
    return IncidentAnalyzed(source="/t", subject=incident, data=data)


def rollback_responder(pool: asyncpg.Pool, url: str) -> Responder:
    config = parse_connectors_config(json.dumps({"webhook": {"url": url, "secret_env": "HOOK_SECRET"}}))
    execution = Execution(
        policy=parse_policy("rules: [{name: all, mode: auto}]"),
        guardrails=parse_guardrails(GUARDRAILS),
        connectors=load_connectors(config, pool=pool, environ={"HOOK_SECRET": SECRET}),
    )
    return Responder(domain.parse_playbooks(PLAYBOOK), execution)


async def outbox(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'responder' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


async def coordinate(pool: asyncpg.Pool, names: TopicNames, events: list[EventBase]) -> list[EventBase]:
    coordinator = Coordinator(load_oncall())
    out: list[EventBase] = []
    for event in events:
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="coordinator", names=names)
            await coordinator.handle(ctx, [_inbound(event)])
            out += ctx.emitted
    return out


async def leases_in(pool: asyncpg.Pool, incident: str, *states: str) -> bool:
    rows = await pool.fetch("SELECT state FROM responder_leases WHERE incident_id = $1", incident)
    return len(rows) == 3 and {r["state"] for r in rows} <= set(states)


async def test_a_rollback_undoes_in_reverse_order_checks_each_undo_and_escalates_the_one_that_failed(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = rollback_responder(pool, far.url)
        await handle(pool, names, responder, breach("inc-rb"))
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: leases_in(pool, "inc-rb", "active"))
        steps = {
            r["step"]: r["id"]
            for r in await pool.fetch("SELECT id, step FROM responder_steps WHERE incident_id = 'inc-rb'")
        }
        far.answer = 400  # the identity provider now refuses to enable the account again

        runtime = Runtime(service="responder", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
        async with serve_app(build_app(runtime, api.routers(runtime, responder)), name="responder-api") as base:
            out = await vigil_cli("response", "rollback", "inc-rb", "--reason", "false positive", responder_url=base)
            assert out.index(steps["block-domain"]) < out.index(steps["block-ip"]) < out.index(steps["disable"])
            again = await vigil_cli("response", "rollback", "inc-rb", responder_url=base, code=1)
            assert "is being rolled back already" in again
            async with running(runner_for(responder, settings, pool, names)):
                await eventually(
                    lambda: pool.fetchval(
                        "SELECT state <> 'running' FROM responder_rollbacks WHERE incident_id = 'inc-rb'"
                    )
                )
                await eventually(
                    lambda: pool.fetchval(
                        """SELECT bool_and(undo_validation IS NOT NULL AND undo_validation <> 'pending')
                           FROM responder_leases WHERE incident_id = 'inc-rb' AND state = 'reverted'"""
                    )
                )
        rollback = await pool.fetchrow("SELECT * FROM responder_rollbacks WHERE incident_id = 'inc-rb'")
        far.answer = 200  # fixed: a second rollback undoes what the first could not
        async with serve_app(build_app(runtime, api.routers(runtime, responder)), name="responder-api") as base:
            async with httpx.AsyncClient(base_url=base) as client:
                ask = {"actor": "carol", "reason": "again"}
                once = {"Idempotency-Key": "rollback-again"}
                second = await client.post("/api/v1/incidents/inc-rb/rollback", json=ask, headers=once)
                assert second.status_code == 200, second.text
                assert second.json()["steps"] == [steps["disable"]]
                # Its answer lost, the client asks again with its key: the same rollback, not a refusal.
                retried = await client.post("/api/v1/incidents/inc-rb/rollback", json=ask, headers=once)
                assert (retried.status_code, retried.json()) == (200, second.json())
            async with running(runner_for(responder, settings, pool, names)):
                await eventually(lambda: _lease_is(pool, steps["disable"], "reverted"))
            nothing = await vigil_cli("response", "rollback", "inc-rb", responder_url=base, code=1)
            assert "no reversible action in force to roll back" in nothing
    assert rollback is not None
    assert rollback["state"] == "done_with_failures" and rollback["requested_by"] == "carol"
    assert list(rollback["steps"]) == [steps["block-domain"], steps["block-ip"], steps["disable"]]
    assert list(rollback["failed"]) == [steps["disable"]]
    # One undo at a time, last executed first: each went out after the one before it had its outcome.
    undos = await pool.fetch(
        """SELECT g.step_id, g.at FROM responder_lease_log g JOIN responder_steps s ON s.id = g.step_id
           WHERE s.incident_id = 'inc-rb' AND g.change IN ('reverted', 'revert_failed') ORDER BY g.id"""
    )
    assert [u["step_id"] for u in undos][:3] == list(rollback["steps"])
    leases = {r["step_id"]: r for r in await pool.fetch("SELECT * FROM responder_leases WHERE incident_id = 'inc-rb'")}
    assert {s: leases[steps[s]]["state"] for s in steps if s != "tell"} == {
        "disable": "reverted",
        "block-ip": "reverted",
        "block-domain": "reverted",
    }
    assert leases[steps["block-ip"]]["undo_validation"] == "validated"
    assert leases[steps["block-domain"]]["undo_validation"] == "validated"
    async with pool.acquire() as conn:
        assert await blocklist.list_active(conn, kind="ip") == []
        assert await blocklist.list_active(conn, kind="domain") == []
    logged = await pool.fetch(
        "SELECT actor, change, reason FROM responder_lease_log WHERE step_id = $1 ORDER BY id", steps["disable"]
    )
    assert [(r["actor"], r["change"]) for r in logged] == [
        ("responder", "created"),
        ("carol", "rolled_back"),
        ("responder", "revert_failed"),
        ("carol", "rolled_back"),
        ("responder", "reverted"),
    ]
    assert logged[1]["reason"] == "rollback by carol: false positive"
    assert "HTTP 400" in logged[2]["reason"]

    # The failed undo reaches the commander; the ones that worked do not page anyone.
    events = [e for e in await outbox(pool) if isinstance(e, ResponseLeaseChanged)]
    detected = IncidentDetected(source="/vigil/detector", subject="inc-rb", data=snapshot())
    pages = [e for e in await coordinate(pool, names, [detected, *events]) if isinstance(e, IncidentEscalated)]
    assert [p.data.reason for p in pages[1:]] == [
        f"the undo of 'Disable account: bob' failed; the action is still in force: {logged[2]['reason']}"
    ]


async def test_resolving_as_a_false_positive_offers_to_roll_back_what_is_still_in_force(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = rollback_responder(pool, far.url)
        await handle(pool, names, responder, breach("inc-fp"))
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: leases_in(pool, "inc-fp", "active"))
    responded = [e for e in await outbox(pool) if isinstance(e, ResponseStepsChanged | ResponseLeaseChanged)]
    resolve = ResolveIncident(
        source="/t", subject="inc-fp", data=CommandArgs(actor="alice", resolution="false_positive", note="a pentest")
    )
    detected = IncidentDetected(source="/vigil/detector", subject="inc-fp", data=snapshot())
    out = await coordinate(pool, names, [detected, *responded, resolve])
    [offer] = [e for e in out if isinstance(e, RollbackOffered)]
    assert isinstance(offer, RollbackOffered)
    assert offer.data.command == "vigil response rollback inc-fp" and len(offer.data.leases) == 3
    assert offer.data.reason == "resolved as a false positive with 3 action(s) still in force"
    # Resolved as fixed, nothing is offered.
    refixed = await coordinate(
        pool, names, [ResolveIncident(source="/t", subject="inc-fp", data=CommandArgs(actor="a", resolution="fixed"))]
    )
    assert not [e for e in refixed if isinstance(e, RollbackOffered)]


async def _lease_is(pool: asyncpg.Pool, step_id: str, state: str) -> bool:
    return bool(await pool.fetchval("SELECT state = $2 FROM responder_leases WHERE step_id = $1", step_id, state))
