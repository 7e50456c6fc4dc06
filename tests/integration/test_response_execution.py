"""The responder executes its plans: approvals, the effects runner, guardrails, dry runs, revisions.

Against the real Postgres and a real HTTP receiver that verifies each request's signature and
counts idempotency keys; the blocklist connector writes Vigil's own lists.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.responder import api, blocklist, domain, guardrails, metrics, repository
from services.responder.approvals import parse_policy
from services.responder.connectors import load_connectors, parse_connectors_config
from services.responder.guardrails import RateLimiter, parse_guardrails
from services.responder.handlers import Execution, Responder, StepAnswerRefused, effect_kinds
from services.responder.steps import FINAL
from shared.consumer import HandlerContext, Inbound, write_context
from shared.effects import EffectRunner
from shared.effects import repository as effects_repository
from shared.effects.domain import verify_signature
from shared.events import (
    Analysis,
    ApproveStep,
    CommandRejected,
    DenyStep,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentMerged,
    IncidentState,
    IncidentStateChanged,
    IncidentType,
    Indicator,
    MergeRecord,
    ResponseStepChanged,
    ResponseStepsChanged,
    Severity,
    StateChange,
    StepAnswer,
    StepChange,
    StepChanges,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import eventually, serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SECRET = "a-signing-secret-of-some-length"

PLAYBOOKS = """
playbooks:
  - id: contain
    title: Contain an intrusion
    match: {types: [system_compromise]}
    steps:
      - id: tell
        name: Tell the team
        phase: communication
        response: immediate
        connector: notify
        action: message
        params: {text: {value: "containing {{ incident.id }}"}}
      - id: isolate
        name: Isolate host
        phase: containment
        response: immediate
        for_each: affected_hosts
        connector: webhook
        action: isolate_host
        params: {host: {value: "{{ item }}", type: hostname}}
        risk: high
        on_failure: stop
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
"""

POLICY = """
rules:
  - {name: low-risk, when: {risks: [low]}, mode: auto}
  - {name: sev1-containment, when: {severities: [SEV1], responses: [immediate]}, mode: approve,
     roles: [commander], timeout: 1s, on_timeout: proceed}
  - {name: low-severity, when: {severities: [SEV4]}, mode: approve, timeout: 1s, on_timeout: deny}
  - {name: default, mode: approve, approvals: 2, roles: [commander, security-lead]}
"""

GUARDRAILS = """
never_block: {networks: [10.0.0.0/8, 198.51.100.0/24], hosts: [dc-1]}
rate_limits: []
blast_radius: {per_step: 50, per_incident: 200}
"""


# ---- a far side that verifies signatures and acts once per idempotency key ----------------------


@dataclass
class Receiver:
    """An HTTP endpoint that checks each request's signature and acts once per Idempotency-Key."""

    keys: list[str] = field(default_factory=list)
    acted: collections.Counter[str] = field(default_factory=collections.Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    answer: int = 200
    hold: asyncio.Event | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _request_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if not verify_signature(
            SECRET.encode(), headers.get("x-vigil-timestamp"), headers.get("x-vigil-signature"), body, now=time.time()
        ):
            self.refused += 1
            status = 401
        else:
            key = headers["idempotency-key"]
            self.keys.append(key)
            if self.hold is not None:
                await self.hold.wait()
            if key not in self.acted:  # a repeat of a key is answered, not acted on again
                self.bodies.append(json.loads(body))
            self.acted[key] += 1
            status = self.answer
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    far = Receiver()
    server = await asyncio.start_server(far.handle, "127.0.0.1", 0)
    far.port = server.sockets[0].getsockname()[1]
    try:
        yield far
    finally:
        if far.hold is not None:
            far.hold.set()
        server.close()
        await server.wait_closed()


# ---- the responder, as the service composes it ------------------------------------------------


def responder_for(
    pool: asyncpg.Pool,
    far: Receiver | None = None,
    *,
    dry_run: bool = False,
    policy: str = POLICY,
    rails: str = GUARDRAILS,
    rate_limiter: RateLimiter | None = None,
) -> Responder:
    config = parse_connectors_config(
        json.dumps({"webhook": {"url": far.url, "secret_env": "HOOK_SECRET"}} if far else {})
    )
    connectors = load_connectors(config, pool=pool, environ={"HOOK_SECRET": SECRET})
    execution = Execution(
        policy=parse_policy(policy),
        guardrails=parse_guardrails(rails),
        connectors=connectors,
        dry_run=dry_run,
        rate_limiter=rate_limiter,
    )
    return Responder(domain.parse_playbooks(PLAYBOOKS), execution)


def runner_for(responder: Responder, settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> EffectRunner:
    kinds = effect_kinds(responder, pool)  # as the service runs them
    return EffectRunner("responder", pool, names, kinds, poll_s=0.05, backoff_base_s=0.05, backoff_cap_s=0.2)


@contextlib.asynccontextmanager
async def running(*runners: EffectRunner) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def analysis(
    severity: Severity = Severity.SEV1, hosts: Sequence[str] = ("web-1",), ips: Sequence[str] = ("203.0.113.7",)
) -> Analysis:
    return Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=severity,
        title="intrusion",
        indicators=[Indicator(kind="ipv4", value=ip) for ip in ips],
        affected_hosts=list(hosts),
        affected_users=[],
        alert_count=1,
        summary="",
    )


async def handle(pool: asyncpg.Pool, names: TopicNames, responder: Responder, event: EventBase) -> list[EventBase]:
    """Run one event through the responder's handlers in one transaction, as the consume loop does."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="responder", names=names)
        await responder.handle(ctx, [_inbound(event)])
        await write_context(conn, ctx)
        return list(ctx.emitted)


def _inbound(event: EventBase) -> Inbound[Any]:
    return Inbound(event_id=event.id, item=event, record=None)


async def fetch_one(pool: asyncpg.Pool, query: str, *args: Any) -> asyncpg.Record:
    row = await pool.fetchrow(query, *args)
    assert row is not None, query
    return row


async def states(pool: asyncpg.Pool, incident: str) -> dict[str, str]:
    rows = await pool.fetch("SELECT step, item, state FROM responder_steps WHERE incident_id = $1", incident)
    return {r["step"] + (f" {r['item']}" if r["item"] else ""): r["state"] for r in rows}


async def step_events(pool: asyncpg.Pool) -> list[ResponseStepsChanged]:
    from shared import cloudevents

    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'responder' ORDER BY id")
    events = [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]
    assert not any(isinstance(e, ResponseStepChanged) for e in events)  # a step's change goes out as v2
    return [e for e in events if isinstance(e, ResponseStepsChanged)]


async def step_changes(pool: asyncpg.Pool) -> list[StepChange]:
    """Every step change the responder published, in order."""
    return [change for event in await step_events(pool) for change in event.data.changes]


def answer(kind: type[ApproveStep] | type[DenyStep], step_id: str, actor: str, **data: str) -> ApproveStep | DenyStep:
    return kind(
        source="/test", subject=step_id.partition(":")[0], data=StepAnswer(step_id=step_id, actor=actor, **data)
    )


async def vigil_cli(*args: str, responder_url: str, code: int = 0) -> str:
    """Run the `vigil` command against a responder API; return its output (stdout, then stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")),
        *args,
        env={**os.environ, "VIGIL_RESPONDER_URL": responder_url, "VIGIL_ACTOR": "carol", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == code, (out + err).decode()
    return (out + err).decode()


def counted(state: str) -> float:
    return REGISTRY.get_sample_value("vigil_responder_steps_total", {"state": state}) or 0.0


def actions_ended() -> Counter[tuple[str, str]]:
    """vigil_responder_actions_total as it stands, by (connector, outcome)."""
    return Counter(
        {
            (sample.labels["connector"], sample.labels["outcome"]): sample.value
            for metric in REGISTRY.collect()
            if metric.name == "vigil_responder_actions"
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
    )


# ---- tests -------------------------------------------------------------------------------------


async def test_a_plan_waits_for_approval_then_runs_in_order_through_a_signed_webhook_and_the_blocklist(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    ended_before = actions_ended()
    async with receiver() as far:
        responder = responder_for(pool, far)
        event = IncidentAnalyzed(source="/test", subject="inc-1", data=analysis(Severity.SEV2))
        await handle(pool, names, responder, event)
        # The notice went at once; the isolation waits for two people; the block waits its turn.
        assert await states(pool, "inc-1") == {
            "tell": "succeeded",
            "isolate web-1": "awaiting_approval",
            "block 203.0.113.7": "planned",
        }
        isolate = "inc-1:isolate"  # every item of the step
        with pytest.raises(StepAnswerRefused, match="role 'intern' may not answer"):
            async with pool.acquire() as conn, conn.transaction():
                ctx = HandlerContext(conn=conn, service="responder", names=names)
                await responder.apply_answer(ctx, answer(ApproveStep, isolate, "eve", role="intern"))
        await handle(pool, names, responder, answer(ApproveStep, isolate, "alice", role="commander"))
        assert (await states(pool, "inc-1"))["isolate web-1"] == "awaiting_approval"  # one of two
        rejected = await handle(pool, names, responder, answer(ApproveStep, isolate, "alice", role="commander"))
        assert "no item of inc-1:isolate is awaiting" not in str(rejected)
        assert any("approved this step already" in e.data.reason for e in rejected if isinstance(e, CommandRejected))
        await handle(pool, names, responder, answer(ApproveStep, isolate, "bob", role="security-lead"))

        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _all_done(pool, "inc-1"))
        assert await states(pool, "inc-1") == {
            "tell": "succeeded",
            "isolate web-1": "succeeded",
            "block 203.0.113.7": "succeeded",
        }
        connectors = [r["connector"] for r in await pool.fetch("SELECT connector FROM responder_steps")]
        ended = actions_ended()
        ended.subtract(ended_before)
        assert +ended == Counter((connector, "succeeded") for connector in connectors)
        [sent] = far.bodies
        step = await fetch_one(pool, "SELECT * FROM responder_steps WHERE step = 'isolate'")
        assert far.keys == [step["id"]] and far.refused == 0
        assert sent["action"] == "isolate_host" and sent["params"] == {"host": "web-1"}
        assert [a["actor"] for a in step["approvals"]] == ["alice", "bob"]
        async with pool.acquire() as conn:
            assert await blocklist.list_active(conn, kind="ip") == ["203.0.113.7"]
        # The block is a lease: a durable timer ends it after an hour, when its undo is sent.
        lease = await fetch_one(pool, "SELECT * FROM responder_leases")
        assert lease["state"] == "active" and lease["target"] == "203.0.113.7" and lease["duration_s"] == 3600
        timer = await fetch_one(pool, "SELECT * FROM timers WHERE kind = 'lease_expiry'")
        assert timer["subject"] == lease["step_id"] and timer["due_at"] == lease["due_at"]
        assert await pool.fetchval("SELECT count(*) FROM effects WHERE key LIKE '%:undo'") == 0
        # Each action's effect is checked: the block is in the served list; the webhook has no check set up.
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _validation_is(pool, lease["step_id"], "validated"))
        assert step["validation"] == "unchecked" and "no check is configured" in step["validation_reason"]

        # Every change is on the timeline, with who caused it.
        log = [(c.step, c.state, c.actor) for c in await step_changes(pool)]
        assert ("isolate", "approved", "bob") in log
        assert log.index(("isolate", "succeeded", "responder")) < log.index(("block", "running", "responder"))


async def _all_done(pool: asyncpg.Pool, incident: str) -> bool:
    return all(s in FINAL for s in (await states(pool, incident)).values())


async def test_an_unanswered_approval_takes_the_policys_default_in_a_restarted_responder(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        first = responder_for(pool, far)
        await handle(
            pool, names, first, IncidentAnalyzed(source="/t", subject="inc-sev1", data=analysis(Severity.SEV1))
        )
        await handle(
            pool, names, first, IncidentAnalyzed(source="/t", subject="inc-sev4", data=analysis(Severity.SEV4))
        )
        assert (await states(pool, "inc-sev1"))["isolate web-1"] == "awaiting_approval"
        assert (await states(pool, "inc-sev4"))["isolate web-1"] == "awaiting_approval"
        del first  # the responder stops; its approval deadlines are timers in Postgres

        restarted = responder_for(pool, far)
        poller = TimerPoller(
            service="responder", pool=pool, names=names, handlers=restarted.timer_handlers, locks=restarted.timer_locks
        )
        await asyncio.sleep(1.1)
        assert await poller.fire_due() == 2
        async with running(runner_for(restarted, settings, pool, names)):
            await eventually(lambda: _all_done(pool, "inc-sev1"))
            await eventually(lambda: _all_done(pool, "inc-sev4"))
    # SEV1 containment proceeds unanswered; at SEV4 the step is denied, and the plan goes on.
    assert await states(pool, "inc-sev1") == {
        "tell": "succeeded",
        "isolate web-1": "succeeded",
        "block 203.0.113.7": "succeeded",
    }
    assert await states(pool, "inc-sev4") == {
        "tell": "succeeded",
        "isolate web-1": "denied",
        "block 203.0.113.7": "succeeded",
    }
    reasons = {
        r["step"]: (r["state"], r["reason"])
        for r in await pool.fetch("SELECT step, state, reason FROM responder_steps WHERE incident_id = 'inc-sev4'")
    }
    assert reasons["isolate"][1].startswith("no answer by") and reasons["isolate"][1].endswith("denied")
    timeouts = await pool.fetch("SELECT outcome FROM audit_log WHERE action = 'approval.timeout' ORDER BY id")
    assert sorted(r["outcome"] for r in timeouts) == ["denied", "proceeded"]
    log = await pool.fetch("SELECT actor, to_state FROM responder_step_log WHERE step_id LIKE 'inc-sev1:isolate:%'")
    assert ("timeout", "approved") in [(r["actor"], r["to_state"]) for r in log]


async def test_guardrails_and_the_kill_switch_refuse_with_their_reason(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
    # 198.51.100.0/24 is an own network here; dc-1 is a critical asset.
    data = analysis(Severity.SEV2, hosts=["dc-1"], ips=["198.51.100.4", "203.0.113.9"])
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-g", data=data))
    rows = {
        (r["step"], r["item"]): r for r in await pool.fetch("SELECT * FROM responder_steps WHERE incident_id = 'inc-g'")
    }
    isolate = rows[("isolate", "dc-1")]
    assert isolate["state"] == "refused" and "critical asset" in isolate["reason"]
    # The isolation was refused, not failed: the playbook goes on to the blocks.
    assert rows[("block", "198.51.100.4")]["state"] == "refused"
    assert "own network" in rows[("block", "198.51.100.4")]["reason"]
    assert rows[("block", "203.0.113.9")]["state"] == "running"
    actors = {r["actor"] for r in await pool.fetch("SELECT actor FROM responder_step_log WHERE to_state = 'refused'")}
    assert actors == {"guardrail:never_block"}
    audited = await pool.fetch(
        "SELECT principal, target, outcome, detail FROM audit_log WHERE action = 'step.refused_by_guardrail'"
    )
    assert {(r["principal"], r["outcome"]) for r in audited} == {("system:responder", "refused")}
    assert {r["target"] for r in audited} == {rows[("isolate", "dc-1")]["id"], rows[("block", "198.51.100.4")]["id"]}


async def test_a_step_due_while_responses_are_paused_is_held_and_runs_on_when_they_resume(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:  # its address only: the effects are enqueued, not run, here
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
    poller = TimerPoller(
        service="responder", pool=pool, names=names, handlers=responder.timer_handlers, locks=responder.timer_locks
    )
    async with pool.acquire() as conn:
        await guardrails.set_paused(conn, paused=True, reason="drill", changed_by="alice")
    paused = analysis(Severity.SEV2, hosts=["web-9"], ips=["203.0.113.90"])
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-p", data=paused))
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-p", data=paused))  # again
    held = await pool.fetch(
        "SELECT state, reason, held_at FROM responder_steps WHERE incident_id = 'inc-p' AND connector <> 'notify'"
    )
    assert held and all(r["state"] not in ("refused", "running") for r in held)
    assert any(r["held_at"] is not None and "responses are paused" in r["reason"] for r in held)
    assert await pool.fetchval("SELECT count(*) FROM effects WHERE subject = 'inc-p'") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'step.held'") == 1
    assert await poller.fire_due() == 0

    async with pool.acquire() as conn:
        await guardrails.set_paused(conn, paused=False, reason="drill over", changed_by="alice")
    assert await poller.fire_due() == 1
    ran = await pool.fetch(
        "SELECT state, held_at FROM responder_steps WHERE incident_id = 'inc-p' AND item IS NOT NULL"
    )
    assert "running" in {r["state"] for r in ran} and all(r["held_at"] is None for r in ran)
    assert await pool.fetchval("SELECT count(*) FROM effects WHERE subject = 'inc-p'") >= 1


async def test_an_action_queued_before_responses_were_paused_waits_for_the_resume(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """Dispatched, then paused before the runner took it: the kill switch holds it, uncounted, until resumed."""
    async with receiver() as far:
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-q", data=analysis()))
        queued = await pool.fetch("SELECT key FROM effects WHERE subject = 'inc-q' AND status = 'pending'")
        assert queued, "the plan's actions are enqueued"
        async with pool.acquire() as conn:
            await guardrails.set_paused(conn, paused=True, reason="drill", changed_by="alice")
        held = "SELECT bool_and(runs = 0 AND attempts = 0 AND not_before > now()) FROM effects WHERE subject = 'inc-q'"
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: pool.fetchval(held))
            assert far.keys == []  # nothing reached the far side
            async with pool.acquire() as conn:
                await guardrails.set_paused(conn, paused=False, reason="drill over", changed_by="alice")
            await eventually(lambda: _all_done(pool, "inc-q"), timeout=20)
        assert sorted(set(far.keys)) == sorted(r["key"] for r in queued)


async def test_a_for_each_step_past_the_blast_radius_is_refused_item_by_item(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    narrow = GUARDRAILS.replace("per_step: 50", "per_step: 2")
    async with receiver() as far:
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]", rails=narrow)
    # dc-1 is a critical asset: its isolation is refused, and the blocks come next.
    wide = analysis(Severity.SEV2, hosts=["dc-1"], ips=["203.0.113.7", "203.0.113.8", "203.0.113.9"])
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-wide", data=wide))
    blocks = await pool.fetch(
        "SELECT state, reason FROM responder_steps WHERE incident_id = 'inc-wide' AND step = 'block'"
    )
    # Each item is one target, but the step acts on three: every one of them is refused.
    assert [(r["state"], r["reason"]) for r in blocks] == [
        ("refused", "3 targets in one step; at most 2 are allowed")
    ] * 3
    assert (
        await pool.fetchval("SELECT count(*) FROM effects WHERE subject = 'inc-wide' AND kind LIKE 'blocklist%'") == 0
    )

    within = analysis(Severity.SEV2, hosts=["dc-1"], ips=["203.0.113.7", "203.0.113.8"])
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-two", data=within))
    blocks = await pool.fetch("SELECT state FROM responder_steps WHERE incident_id = 'inc-two' AND step = 'block'")
    assert [r["state"] for r in blocks] == ["running", "running"]


async def test_a_dry_run_is_simulated_with_what_it_would_send_and_never_succeeds(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, dry_run=True, policy="rules: [{name: all, mode: auto}]")
        before = {s: counted(s) for s in ("simulated", "succeeded")}
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-d", data=analysis()))
        assert set((await states(pool, "inc-d")).values()) == {"simulated"}
        assert await pool.fetchval("SELECT count(*) FROM effects") == 0
        assert far.keys == []
    isolate = await fetch_one(pool, "SELECT sent FROM responder_steps WHERE step = 'isolate'")
    assert isolate["sent"]["kind"] == "connector.webhook"
    assert isolate["sent"]["payload"]["body"]["params"] == {"host": "web-1"}
    assert counted("simulated") - before["simulated"] == 3
    assert counted("succeeded") == before["succeeded"]
    assert all(c.dry_run for c in await step_changes(pool) if c.state == "simulated")


async def test_a_revised_plan_adds_new_steps_and_never_runs_an_executed_one_again(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
        runner = runner_for(responder, settings, pool, names)
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-r", data=analysis()))
        async with running(runner):
            await eventually(lambda: _all_done(pool, "inc-r"))
        # More is known: a second host and a higher severity.
        revised = analysis(Severity.SEV1, hosts=["web-1", "web-2"])
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-r", data=revised))
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _all_done(pool, "inc-r"))
        # The same analysis again changes nothing.
        assert await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-r", data=revised)) == []
    assert await states(pool, "inc-r") == {
        "tell": "succeeded",
        "isolate web-1": "succeeded",
        "isolate web-2": "succeeded",
        "block 203.0.113.7": "succeeded",
    }
    assert sorted(b["params"]["host"] for b in far.bodies) == ["web-1", "web-2"]
    assert len(far.keys) == 2  # web-1 was isolated once, in the first plan
    plans = await pool.fetch("SELECT id, superseded_at FROM responder_plans WHERE incident_id = 'inc-r'")
    assert len(plans) == 2
    assert await pool.fetchval("SELECT count(DISTINCT plan_id) FROM responder_steps WHERE incident_id = 'inc-r'") == 1


CONDITIONAL = """
playbooks:
  - id: wipe
    title: Wipe what was compromised
    match: {types: [system_compromise]}
    steps:
      - id: wipe
        name: Wipe host
        phase: eradication
        response: immediate
        for_each: affected_hosts
        connector: webhook
        action: wipe
        params: {host: {value: "{{ item }}", type: hostname}}
        condition: "analysis.severity == 'SEV1'"
        approval: required
"""


async def test_a_step_the_revised_plan_would_not_run_is_skipped_though_it_waited_for_approval(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = Responder(domain.parse_playbooks(CONDITIONAL), responder_for(pool, None).execution)
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-w", data=analysis(Severity.SEV1)))
    assert await states(pool, "inc-w") == {"wipe web-1": "awaiting_approval"}
    # The incident is not as bad as it looked: the wipe's condition no longer holds.
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-w", data=analysis(Severity.SEV3)))
    row = await fetch_one(pool, "SELECT state, reason FROM responder_steps WHERE incident_id = 'inc-w'")
    assert row["state"] == "skipped" and "condition" in row["reason"]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM timers WHERE subject LIKE 'inc-w:%' AND fired_at IS NULL AND cancelled_at IS NULL"
        )
        == 0
    )


async def test_a_revision_leaves_a_step_waiting_on_the_same_terms_as_it_was(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = responder_for(pool)
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-w", data=analysis(Severity.SEV1)))
    asked = await _approval(pool, "web-1")
    # A second host, the same severity: web-1 waits as it did, its deadline counted from when it was asked.
    revised = analysis(Severity.SEV1, hosts=["web-1", "web-2"])
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-w", data=revised))
    assert await _approval(pool, "web-1") == asked
    assert (await states(pool, "inc-w"))["isolate web-2"] == "awaiting_approval"
    assert await pool.fetchval("SELECT count(*) FROM timers WHERE subject LIKE 'inc-w:isolate:%'") == 2


async def _approval(pool: asyncpg.Pool, host: str) -> tuple[Any, ...]:
    """A waiting isolation's terms, deadline and pending timer."""
    row = await pool.fetchrow(
        """SELECT s.state, s.policy_rule, s.approval_deadline, t.id AS timer, t.due_at
           FROM responder_steps s JOIN timers t ON t.subject = s.id AND t.fired_at IS NULL AND t.cancelled_at IS NULL
           WHERE s.incident_id = 'inc-w' AND s.step = 'isolate' AND s.item = $1""",
        host,
    )
    assert row is not None and row["state"] == "awaiting_approval"
    return tuple(row)


async def test_a_step_interrupted_after_the_far_side_acted_is_sent_again_with_its_key_and_acted_on_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        far.hold = asyncio.Event()
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-c", data=analysis(ips=())))
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _truthy(len(far.keys) == 1))
        # The runner stopped while the far side held the call; the far side then acted on it.
        far.hold.set()
        far.hold = None
        assert (await states(pool, "inc-c"))["isolate web-1"] == "running"
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _all_done(pool, "inc-c"))
    assert (await states(pool, "inc-c"))["isolate web-1"] == "succeeded"
    step_id = await pool.fetchval("SELECT id FROM responder_steps WHERE step = 'isolate'")
    assert far.keys == [step_id, step_id] and far.acted == {step_id: 2} and len(far.bodies) == 1
    succeeded = [c for c in await step_changes(pool) if c.step == "isolate" and c.state == "succeeded"]
    assert len(succeeded) == 1


async def _truthy(value: bool) -> bool:
    return value


async def test_an_answer_to_every_item_of_a_step_applies_to_all_or_is_rejected_changing_none(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = responder_for(pool, None)
    data = analysis(Severity.SEV2, hosts=["web-1", "web-2"])  # isolate: two items, two people each
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-both", data=data))
    _, last = await pool.fetch("SELECT id FROM responder_steps WHERE step = 'isolate' ORDER BY position, id")
    approved = answer(ApproveStep, last["id"], "alice", role="commander")
    assert not [e for e in await handle(pool, names, responder, approved) if isinstance(e, CommandRejected)]
    # Alice denies the whole step: she may deny the item answered first, not the last, which she has approved.
    denial = answer(DenyStep, "inc-both:isolate", "alice", role="commander", note="not now")
    rejected = [e for e in await handle(pool, names, responder, denial) if isinstance(e, CommandRejected)]
    assert len(rejected) == 1 and "alice has approved this step already" in rejected[0].data.reason
    assert await states(pool, "inc-both") == {
        "tell": "succeeded",
        "isolate web-1": "awaiting_approval",
        "isolate web-2": "awaiting_approval",
        "block 203.0.113.7": "planned",
    }


async def test_a_step_the_policy_makes_wait_as_it_is_planned_is_announced_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = responder_for(pool, None)
    counted = metrics.STEPS.labels("planned")._value.get()
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-one", data=analysis(Severity.SEV2)))
    # Every step entered planned, whether or not its event says so.
    planned = await pool.fetchval("SELECT count(*) FROM responder_step_log WHERE to_state = 'planned'")
    assert metrics.STEPS.labels("planned")._value.get() - counted == planned > 1
    changes: dict[str, list[tuple[str | None, str, str]]] = {}
    for c in await step_changes(pool):
        changes.setdefault(c.step, []).append((c.from_state, c.state, c.actor))
    # Isolating waits for two approvals from the start: one change, not planned and then waiting.
    assert changes["isolate"] == [(None, "awaiting_approval", "policy")]
    [waiting] = [c for c in await step_changes(pool) if c.step == "isolate"]
    assert waiting.reason.startswith("planned by ") and "; " in waiting.reason
    assert changes["block"] == [(None, "planned", "planner")]  # the policy lets it run: planned, as before
    # The step's own log keeps both changes.
    log = await pool.fetch(
        "SELECT from_state, to_state FROM responder_step_log WHERE step_id = $1 ORDER BY at, id",
        (await fetch_one(pool, "SELECT id FROM responder_steps WHERE step = 'isolate'"))["id"],
    )
    assert [(r["from_state"], r["to_state"]) for r in log] == [(None, "planned"), ("planned", "awaiting_approval")]


async def test_operators_list_and_answer_steps_over_the_api(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = responder_for(pool, None)
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-a", data=analysis(Severity.SEV2)))
    runtime = Runtime(service="responder", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, api.routers(runtime, responder))
    async with serve_app(app, name="responder-api") as base, httpx.AsyncClient(base_url=base) as client:
        listed = (await client.get("/api/v1/incidents/inc-a/actions")).json()
        assert [(s["step"], s["state"]) for s in listed] == [
            ("tell", "succeeded"),
            ("isolate", "awaiting_approval"),
            ("block", "planned"),
        ]
        isolate = listed[1]
        assert isolate["approver_roles"] == ["commander", "security-lead"] and isolate["approvals_required"] == 2
        assert [e["to_state"] for e in isolate["log"]] == ["planned", "awaiting_approval"]

        body = {"step_id": isolate["id"], "actor": "alice", "role": "commander"}
        refused = await client.post(f"/api/v1/steps/{isolate['id']}/deny", json=body)
        assert refused.status_code == 409 and "needs a reason" in refused.json()["detail"]
        body["note"] = "web-1 is the payment front end"
        denied = await client.post(f"/api/v1/steps/{isolate['id']}/deny", json=body, headers={"Idempotency-Key": "k1"})
        assert denied.status_code == 200 and denied.json()[0]["state"] == "denied"
        again = await client.post(f"/api/v1/steps/{isolate['id']}/deny", json=body, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 200  # the same request retried: answered, nothing changes
        late = await client.post(f"/api/v1/steps/{isolate['id']}/approve", json=body)
        assert late.status_code == 409 and "denied, not awaiting approval" in late.json()["detail"]

        # The same through the CLI, as an operator types it.
        listed_by_cli = await vigil_cli("actions", "list", "inc-a", "--json", responder_url=base)
        assert [s["state"] for s in json.loads(listed_by_cli)] == ["succeeded", "denied", "running"]
        refused_by_cli = await vigil_cli("approve", isolate["id"], "--role", "commander", responder_url=base, code=1)
        assert "denied, not awaiting approval (409)" in refused_by_cli
    # A denial is not a failure: the plan goes on (the block runs).
    assert await states(pool, "inc-a") == {
        "tell": "succeeded",
        "isolate web-1": "denied",
        "block 203.0.113.7": "running",
    }
    commands = [
        dict(r["headers"]).get("ce_type")
        for r in await pool.fetch("SELECT headers FROM outbox WHERE service = 'responder'")
    ]
    assert [c for c in commands if c and c.startswith("vigil.command.")] == ["vigil.command.deny_step.v1"]


async def test_a_failed_step_whose_playbook_escalates_pages_the_commander_again(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall())
    detected = IncidentDetected(source="/vigil/detector", subject="inc-e", data=snapshot())
    failed = StepChange(
        step_id="inc-e:isolate:ab",
        plan_id="p",
        step="isolate",
        name="Isolate host",
        item="web-1",
        connector="webhook",
        action="isolate_host",
        from_state="running",
        state="failed",
        actor="responder",
        reason="refused for good: HTTP 400",
        on_failure="escalate",
    )
    emitted: list[EventBase] = []
    for event in (
        detected,
        ResponseStepChanged(source="/vigil/responder", subject="inc-e", data=failed),
        # A failure the playbook lets pass is not escalated.
        ResponseStepChanged(
            source="/vigil/responder", subject="inc-e", data=failed.model_copy(update={"on_failure": "continue"})
        ),
    ):
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="coordinator", names=names)
            await coordinator.handle(ctx, [_inbound(event)])
            emitted += ctx.emitted
    escalations = [e for e in emitted if isinstance(e, IncidentEscalated)]
    assert [e.data.reason for e in escalations][1:] == [
        "response step 'Isolate host: web-1' failed: refused for good: HTTP 400"
    ]
    assert escalations[1].data.commander == escalations[0].data.commander


async def test_steps_of_one_run_read_their_incidents_as_one_at_a_time_would(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    """A run of step changes has its incidents read at once: what it pages is what the changes one by one page."""
    coordinator = Coordinator(load_oncall())

    def changes(incident: str) -> list[EventBase]:
        return [
            ResponseStepChanged(source="/vigil/responder", subject=incident, data=c) for c in run_of_changes(incident)
        ]

    def run_of_changes(incident: str) -> list[StepChange]:
        failed = StepChange(
            step_id=f"{incident}:isolate:a",
            plan_id="p",
            step="isolate",
            name="Isolate host",
            item="web-1",
            connector="webhook",
            action="isolate_host",
            from_state="running",
            state="failed",
            actor="responder",
            reason="refused for good: HTTP 400",
            on_failure="escalate",
        )
        later = failed.model_copy(update={"step_id": f"{incident}:isolate:b", "item": "web-2", "reason": "timed out"})
        waiting = failed.model_copy(
            update={"step_id": f"{incident}:block:c", "step": "block", "state": "awaiting_approval", "item": "1.2.3.4"}
        )
        return [failed, waiting, later, waiting]

    async def pages(incident: str, batches: list[list[EventBase]]) -> list[tuple[str, str, str]]:
        emitted: list[EventBase] = []
        detected = IncidentDetected(source="/vigil/detector", subject=incident, data=snapshot())
        every: list[list[EventBase]] = [[detected], *batches]
        for batch in every:
            async with pool.acquire() as conn, conn.transaction():
                ctx = HandlerContext(conn=conn, service="coordinator", names=names)
                await coordinator.handle(ctx, [_inbound(event) for event in batch])
                emitted += ctx.emitted
        return [(e.data.reason, e.data.commander, e.data.channel) for e in emitted if isinstance(e, IncidentEscalated)]

    one_run = await pages("inc-run", [changes("inc-run")])
    one_by_one = await pages("inc-each", [[event] for event in changes("inc-each")])
    # The responder publishes a cause's run of changes as one event: it pages the same.
    folded = StepChanges(changes=run_of_changes("inc-one"))
    one_event = await pages(
        "inc-one", [[ResponseStepsChanged(source="/vigil/responder", subject="inc-one", data=folded)]]
    )
    assert one_run == one_by_one == one_event
    assert [reason for reason, _commander, _channel in one_run][1:] == [
        "response step 'Isolate host: web-1' failed: refused for good: HTTP 400",
        "response step 'Isolate host: web-2' failed: timed out",
    ]


async def test_a_lease_is_extended_then_revoked_and_the_block_is_undone(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-l", data=analysis()))
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _all_done(pool, "inc-l"))
    block = await fetch_one(pool, "SELECT id FROM responder_steps WHERE incident_id = 'inc-l' AND step = 'block'")
    before = await pool.fetchval("SELECT due_at FROM responder_leases WHERE step_id = $1", block["id"])
    runtime = Runtime(service="responder", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    async with serve_app(build_app(runtime, api.routers(runtime, responder)), name="responder-api") as base:
        async with httpx.AsyncClient(base_url=base) as client:
            body = {"actor": "alice", "extend": "1h", "reason": "attack still going"}
            extended = await client.post(f"/api/v1/steps/{block['id']}/lease", json=body)
            assert extended.status_code == 200, extended.text
            isolate = await fetch_one(
                pool, "SELECT id FROM responder_steps WHERE incident_id = 'inc-l' AND step = 'isolate'"
            )
            refused = await client.post(f"/api/v1/steps/{isolate['id']}/lease", json={"actor": "a", "revoke": True})
            assert refused.status_code == 409 and "not a reversible step" in refused.json()["detail"]
        after = await pool.fetchval("SELECT due_at FROM responder_leases WHERE step_id = $1", block["id"])
        assert after - before == timedelta(hours=1)
        timer = await fetch_one(
            pool, "SELECT due_at FROM timers WHERE subject = $1 AND cancelled_at IS NULL", block["id"]
        )
        assert timer["due_at"] == after
        # The served list keeps the entry until the new end.
        listed = await fetch_one(pool, "SELECT expires_at FROM responder_blocklist WHERE step_id = $1", block["id"])
        assert listed["expires_at"] == after
        out = await vigil_cli("lease", "revoke", block["id"], "--reason", "contained", responder_url=base)
        assert "lease revoked" in out
    async with running(runner_for(responder, settings, pool, names)):
        await eventually(lambda: _state_is(pool, block["id"], "rolled_back"))
    async with pool.acquire() as conn:
        assert await blocklist.list_active(conn, kind="ip") == []
    log = [
        r["reason"] for r in await pool.fetch("SELECT reason FROM responder_step_log WHERE step_id = $1", block["id"])
    ]
    assert any(r.startswith("lease extended to") for r in log) and "lease revoked: undone now: contained" in log


async def _validation_is(pool: asyncpg.Pool, step_id: str, outcome: str) -> bool:
    found: str | None = await pool.fetchval("SELECT validation FROM responder_steps WHERE id = $1", step_id)
    return found == outcome


async def _state_is(pool: asyncpg.Pool, step_id: str, state: str) -> bool:
    found: str | None = await pool.fetchval("SELECT state FROM responder_steps WHERE id = $1", step_id)
    return found == state


def merged_into_inc_2(subject: str) -> IncidentMerged:
    """Dana merged the incident into inc-2."""
    record = MergeRecord(survivor="inc-2", merged=[subject], actor="dana", command_id="cmd-1", alerts=3)
    return IncidentMerged(source="/test", subject=subject, data=record)


async def test_a_merge_waits_for_an_approval_in_flight_and_never_cancels_the_step_it_started(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far)
        await handle(
            pool, names, responder, IncidentAnalyzed(source="/test", subject="inc-1", data=analysis(Severity.SEV2))
        )
        isolate = "inc-1:isolate"
        await handle(pool, names, responder, answer(ApproveStep, isolate, "alice", role="commander"))
        merged = merged_into_inc_2("inc-1")
        # The second approval starts the isolation; the merge arrives before that transaction commits.
        async with pool.acquire() as approving:
            approval = approving.transaction()
            await approval.start()
            ctx = HandlerContext(conn=approving, service="responder", names=names)
            await responder.apply_answer(ctx, answer(ApproveStep, isolate, "bob", role="security-lead"))
            await write_context(approving, ctx)
            merging = asyncio.create_task(handle(pool, names, responder, merged))
            await asyncio.sleep(0.5)  # the merge reads the steps as they are now, or waits its turn
            await approval.commit()
        await merging
        assert await states(pool, "inc-1") == {
            "tell": "succeeded",
            "isolate web-1": "running",  # started: it runs, its outcome, lease and undo are kept track of
            "block 203.0.113.7": "cancelled",
        }


async def test_an_incident_merged_away_cancels_its_steps_not_started_and_keeps_what_ran(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far)
        await handle(
            pool, names, responder, IncidentAnalyzed(source="/test", subject="inc-1", data=analysis(Severity.SEV2))
        )
        before = await states(pool, "inc-1")
        assert before == {"tell": "succeeded", "isolate web-1": "awaiting_approval", "block 203.0.113.7": "planned"}
        merged = merged_into_inc_2("inc-1")
        for _ in range(2):  # delivered twice: the second finds nothing left to cancel
            await handle(pool, names, responder, merged)
        assert await states(pool, "inc-1") == {
            "tell": "succeeded",
            "isolate web-1": "cancelled",
            "block 203.0.113.7": "cancelled",
        }
        cancelled = [c for c in await step_changes(pool) if c.state == "cancelled"]
        assert len(cancelled) == 2
        assert all(c.actor == "dana" and "merged into inc-2" in c.reason for c in cancelled)
        # An approval that comes late finds the step gone, and nothing runs.
        rejected = await handle(pool, names, responder, answer(ApproveStep, "inc-1:isolate", "alice", role="commander"))
        assert any(isinstance(e, CommandRejected) for e in rejected)
        assert far.keys == []


def moved(incident: str, to_state: IncidentState, *, ended: bool) -> IncidentStateChanged:
    """The coordinator's move of an incident, saying as it does whether its lifecycle counts the state an end."""
    change = StateChange(from_state=None, to_state=to_state, actor="alice", ended=ended)
    return IncidentStateChanged(source="/vigil/coordinator", subject=incident, data=change)


async def held(pool: asyncpg.Pool, incident: str) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT step, item, reason FROM responder_steps WHERE incident_id = $1 AND held_at IS NOT NULL", incident
    )
    return {r["step"] + (f" {r['item']}" if r["item"] else ""): r["reason"] for r in rows}


async def test_an_approval_timing_out_on_an_ended_incident_starts_nothing_until_it_is_reopened(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far)
        poller = TimerPoller(
            service="responder", pool=pool, names=names, handlers=responder.timer_handlers, locks=responder.timer_locks
        )
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-e", data=analysis()))
        assert (await states(pool, "inc-e"))["isolate web-1"] == "awaiting_approval"
        resolved = moved("inc-e", IncidentState.RESOLVED, ended=True)
        for _ in range(2):  # delivered twice
            await handle(pool, names, responder, resolved)
        # SEV1 containment proceeds unanswered, but not on a resolved incident: it is held where it stands.
        await asyncio.sleep(1.1)
        assert await poller.fire_due() == 1
        assert (await states(pool, "inc-e"))["isolate web-1"] == "approved"
        reason = (await held(pool, "inc-e"))["isolate web-1"]
        assert reason.startswith("held: the incident was resolved at ") and "reopen it" in reason
        assert await pool.fetchval("SELECT count(*) FROM effects WHERE subject = 'inc-e'") == 0
        assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'step.held'") == 1
        # Closed after resolving, it stays held; and a resume of paused responses does not run it on.
        await handle(pool, names, responder, moved("inc-e", IncidentState.CLOSED, ended=True))
        async with pool.acquire() as conn:
            assert "inc-e" not in await repository.held_incidents(conn)

        # Reopened: the step held runs on, and the plan after it.
        await handle(pool, names, responder, moved("inc-e", IncidentState.ACKNOWLEDGED, ended=False))
        assert await held(pool, "inc-e") == {}
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _all_done(pool, "inc-e"))
        assert await states(pool, "inc-e") == {
            "tell": "succeeded",
            "isolate web-1": "succeeded",
            "block 203.0.113.7": "succeeded",
        }
        assert len(far.acted) == 1


async def test_a_late_analysis_of_an_ended_incident_plans_its_steps_and_they_start_once_it_is_reopened(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
        sev2 = analysis(Severity.SEV2)
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-l", data=sev2))
        assert (await states(pool, "inc-l"))["isolate web-1"] == "running"  # sent before the incident ended
        await handle(pool, names, responder, moved("inc-l", IncidentState.RESOLVED, ended=True))
        # A feed came to list another address: the analysis is planned for, not acted on.
        later = analysis(Severity.SEV2, ips=["203.0.113.7", "203.0.113.8"])
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-l", data=later))
        async with running(runner_for(responder, settings, pool, names)):
            # What was sent before the end is seen through; what came after it waits.
            await eventually(lambda: _held_count(pool, "inc-l", 2))
            assert await states(pool, "inc-l") == {
                "tell": "succeeded",
                "isolate web-1": "succeeded",
                "block 203.0.113.7": "planned",
                "block 203.0.113.8": "planned",
            }
            assert await pool.fetchval("SELECT count(*) FROM effects WHERE subject = 'inc-l'") == 1
            await handle(pool, names, responder, moved("inc-l", IncidentState.INVESTIGATING, ended=False))
            await eventually(lambda: _all_done(pool, "inc-l"))
        assert set((await states(pool, "inc-l")).values()) == {"succeeded"}


async def test_a_step_the_kill_switch_held_waits_for_its_ended_incident_to_reopen_not_for_the_resume(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:  # its address only: the effects are enqueued, not run, here
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
    poller = TimerPoller(
        service="responder", pool=pool, names=names, handlers=responder.timer_handlers, locks=responder.timer_locks
    )

    async def pause(paused: bool) -> None:
        async with pool.acquire() as conn:
            await guardrails.set_paused(conn, paused=paused, reason="drill", changed_by="alice")

    def effects() -> Any:
        return pool.fetchval("SELECT count(*) FROM effects WHERE subject = 'inc-k'")

    await pause(True)
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-k", data=analysis(Severity.SEV2)))
    assert "responses are paused" in (await held(pool, "inc-k"))["isolate web-1"]
    await handle(pool, names, responder, moved("inc-k", IncidentState.RESOLVED, ended=True))
    assert (await held(pool, "inc-k"))["isolate web-1"].startswith("held: the incident was resolved")
    await pause(False)
    assert await poller.fire_due() == 1  # the resume runs on the incidents it held, not this one
    assert list(await held(pool, "inc-k")) == ["isolate web-1"] and await effects() == 0

    # Reopened while responses are paused again: held again, by the kill switch; the resume runs it.
    await pause(True)
    await handle(pool, names, responder, moved("inc-k", IncidentState.ACKNOWLEDGED, ended=False))
    assert "responses are paused" in (await held(pool, "inc-k"))["isolate web-1"]
    assert await effects() == 0
    await pause(False)
    assert await poller.fire_due() == 1
    assert await held(pool, "inc-k") == {}
    assert (await states(pool, "inc-k"))["isolate web-1"] == "running" and await effects() == 1


async def test_an_ended_incident_merged_away_cancels_its_held_steps(pool: asyncpg.Pool, names: TopicNames) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
    await handle(pool, names, responder, moved("inc-1", IncidentState.RESOLVED, ended=True))
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-1", data=analysis(Severity.SEV2)))
    assert list(await held(pool, "inc-1")) == ["isolate web-1"]
    await handle(pool, names, responder, merged_into_inc_2("inc-1"))
    assert await states(pool, "inc-1") == {
        "tell": "succeeded",
        "isolate web-1": "cancelled",
        "block 203.0.113.7": "cancelled",
    }
    assert await held(pool, "inc-1") == {}  # held where it stood: it stands cancelled now


async def _held_count(pool: asyncpg.Pool, incident: str, count: int) -> bool:
    return len(await held(pool, incident)) == count


async def test_a_rate_limit_counts_a_dispatch_another_transaction_has_not_committed(
    pool: asyncpg.Pool, names: TopicNames, rate_limiter: RateLimiter
) -> None:
    rails = GUARDRAILS.replace("rate_limits: []", "rate_limits: [{action: block, per: target, limit: 1, window: 1h}]")
    responder = responder_for(pool, policy="rules: [{name: all, mode: auto}]", rails=rails, rate_limiter=rate_limiter)
    blocks = [
        IncidentAnalyzed(source="/t", subject=incident, data=analysis(Severity.SEV2, ips=["203.0.113.77"]))
        for incident in ("inc-r1", "inc-r2")
    ]
    async with pool.acquire() as first, first.transaction():
        ctx = HandlerContext(conn=first, service="responder", names=names)
        await responder.handle(ctx, [_inbound(blocks[0])])
        await write_context(first, ctx)
        # Another replica handles the second incident meanwhile: it neither waits for this transaction
        # (which holds the first incident's lock), nor passes the limit this one's dispatch took.
        await asyncio.wait_for(handle(pool, names, responder, blocks[1]), timeout=30)
    rows = {
        r["incident_id"]: r
        for r in await pool.fetch("SELECT incident_id, state, reason FROM responder_steps WHERE item = '203.0.113.77'")
    }
    assert rows["inc-r1"]["state"] == "running"
    assert rows["inc-r2"]["state"] == "refused" and "the limit is 1" in rows["inc-r2"]["reason"]
    sent = "SELECT count(*) FROM effects WHERE key IN (SELECT id FROM responder_steps WHERE item = '203.0.113.77')"
    assert await pool.fetchval(sent) == 1


async def test_a_rate_limit_slot_of_a_dispatch_never_committed_lapses(
    pool: asyncpg.Pool, rate_limiter: RateLimiter
) -> None:
    limiter = rate_limiter
    limits = parse_guardrails(
        GUARDRAILS.replace("rate_limits: []", "rate_limits: [{action: block, per: action, limit: 1, window: 1h}]")
    ).rate_limits
    block = guardrails.Action(name="block", target_kind="ip", incident_id="inc-s")
    now = datetime.now(UTC)
    # Taken by a step whose transaction then rolled back: no such step was ever stored.
    assert (await limiter.take("inc-s:gone", block, ["203.0.113.1"], limits, now=now)).allowed
    # It counts while that transaction might still commit...
    refused = await limiter.take("inc-s:next", block, ["203.0.113.2"], limits, now=now + timedelta(minutes=1))
    assert refused.guardrail == "rate_limit"
    # ...the same step taking its slot again (its batch retried) is not counted against itself...
    assert (await limiter.take("inc-s:gone", block, ["203.0.113.1"], limits, now=now + timedelta(minutes=2))).allowed
    # ...and once no transaction could still commit it, it lapses, within the limit's window.
    later = now + timedelta(minutes=2) + guardrails.UNCONFIRMED + timedelta(seconds=1)
    assert (await limiter.take("inc-s:next", block, ["203.0.113.2"], limits, now=later)).allowed
    # A dry run counts without taking a slot.
    simulated = await limiter.take("inc-s:dry", block, ["203.0.113.3"], limits, now=later, reserve=False)
    assert simulated.guardrail == "rate_limit"
    assert await pool.fetchval("SELECT count(*) FROM responder_rate_slots WHERE step_id = 'inc-s:dry'") == 0


LEASED_WEBHOOK = """
playbooks:
  - id: firewall
    title: Block at the firewall
    match: {types: [system_compromise]}
    steps:
      - id: fw
        name: Firewall block
        phase: containment
        response: immediate
        for_each: external_ips
        connector: webhook
        action: block_ip
        params: {address: {value: "{{ item }}", type: ip}}
        lease: 1h
        undo: {connector: webhook, action: unblock_ip, params: {address: {value: "{{ item }}", type: ip}}}
"""


async def test_a_step_whose_action_gave_up_is_done_and_leased_when_an_operator_retries_its_effect(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        far.answer = 503  # the firewall is down
        base = responder_for(pool, far, policy="rules: [{name: all, mode: auto}]")
        responder = Responder(domain.parse_playbooks(LEASED_WEBHOOK), base.execution)
        data = analysis(Severity.SEV2, hosts=(), ips=["203.0.113.55"])
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-rt", data=data))
        step_id = await pool.fetchval("SELECT id FROM responder_steps WHERE incident_id = 'inc-rt'")
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _state_is(pool, step_id, "failed"))
            assert await pool.fetchval("SELECT count(*) FROM responder_leases") == 0
            # The firewall is fixed; the operator sends the action again, as `vigil effects retry` does.
            far.answer = 200
            effect_id = await pool.fetchval("SELECT id FROM effects WHERE key = $1", step_id)
            async with pool.acquire() as conn:
                assert await effects_repository.retry(conn, effect_id=effect_id) in ("parked", "failed")
            await eventually(lambda: _state_is(pool, step_id, "succeeded"))
    lease = await fetch_one(pool, "SELECT state, target FROM responder_leases WHERE step_id = $1", step_id)
    assert (lease["state"], lease["target"]) == ("active", "203.0.113.55")
    pending = "SELECT count(*) FROM timers WHERE kind = 'lease_expiry' AND fired_at IS NULL AND cancelled_at IS NULL"
    assert await pool.fetchval(pending) == 1
    reason = await pool.fetchval("SELECT reason FROM responder_steps WHERE id = $1", step_id)
    assert "after a retry of its effect" in reason
