"""After each action, a check proves its effect: validated, or failed and escalated to the commander.

Against the real Postgres, a real HTTP far side (which answers the actions and a check URL) and
real programs: for each connector one check that passes and one that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.responder import blocklist, domain
from services.responder.approvals import parse_policy
from services.responder.connectors import load_connectors, parse_connectors_config
from services.responder.guardrails import parse_guardrails
from services.responder.handlers import Execution, Responder
from shared import cloudevents
from shared.consumer import HandlerContext
from shared.effects import EffectRunner
from shared.effects.domain import verify_signature
from shared.events import (
    Analysis,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentType,
    Indicator,
    ResponseStepValidated,
    Severity,
)
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import eventually
from tests.integration.test_response_execution import GUARDRAILS, SECRET, _inbound, handle, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

PLAYBOOKS = """
playbooks:
  - id: contain
    title: Contain an intrusion
    match: {types: [system_compromise]}
    steps:
      - id: isolate
        name: Isolate host
        phase: containment
        response: immediate
        for_each: affected_hosts
        connector: webhook
        action: isolate_host
        params: {host: {value: "{{ item }}", type: hostname}}
        on_failure: continue
      - id: quarantine
        name: Quarantine host
        phase: containment
        response: immediate
        for_each: affected_hosts
        connector: webhook
        action: quarantine
        params: {host: {value: "{{ item }}", type: hostname}}
        on_failure: continue
      - id: mark
        name: Mark host
        phase: containment
        response: immediate
        for_each: affected_hosts
        connector: command
        action: mark
        params: {host: {value: "{{ item }}", type: hostname}}
        on_failure: continue
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


@dataclass
class FarSide:
    """Answers each action with whether it worked, and a check URL with whether the rule is in place."""

    isolated: set[str] = field(default_factory=set)  # the hosts whose isolation works
    quarantined: set[str] = field(default_factory=set)  # the hosts the check URL reports quarantined
    checks: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, path, _ = (await reader.readline()).decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        signed = verify_signature(
            SECRET.encode(), headers.get("x-vigil-timestamp"), headers.get("x-vigil-signature"), body, now=time.time()
        )
        status, answer = 401, {}
        if signed and method == "POST":
            host = json.loads(body)["params"]["host"]
            status, answer = 200, {"isolated": host in self.isolated, "host": host}
        elif signed and method == "GET" and path.startswith("/check/"):
            host = path.removeprefix("/check/")
            self.checks.append(host)
            status, answer = (200, {"quarantined": True}) if host in self.quarantined else (404, {"error": "no rule"})
        content = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(content)}\r\n"
            "connection: close\r\n\r\n".encode()
            + content
        )
        await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def far_side() -> AsyncIterator[FarSide]:
    far = FarSide()
    server = await asyncio.start_server(far.handle, "127.0.0.1", 0)
    far.port = server.sockets[0].getsockname()[1]
    try:
        yield far
    finally:
        server.close()
        await server.wait_closed()


def responder_with_checks(pool: asyncpg.Pool, far: FarSide, marks: Path) -> Responder:
    config = parse_connectors_config(
        json.dumps(
            {
                "webhook": {
                    "secret_env": "HOOK_SECRET",
                    "actions": {
                        "isolate_host": {"url": f"{far.base}/hooks", "expect": {"isolated": True}},
                        "quarantine": {
                            "url": f"{far.base}/hooks",
                            "check": {"url": f"{far.base}/check/{{host}}", "expect": {"quarantined": True}},
                        },
                    },
                },
                "command": {
                    "actions": {
                        # The action marks only web-1; the check looks for the host's mark.
                        "mark": {
                            "argv": ["/usr/bin/touch", f"{marks}/web-1"],
                            "verify": ["/usr/bin/test", "-e", f"{marks}/{{host}}"],
                        }
                    }
                },
            }
        )
    )
    connectors = load_connectors(config, pool=pool, environ={"HOOK_SECRET": SECRET})
    execution = Execution(
        policy=parse_policy("rules: [{name: all, mode: auto}]"),
        guardrails=parse_guardrails(GUARDRAILS),
        connectors=connectors,
    )
    return Responder(domain.parse_playbooks(PLAYBOOKS), execution)


def runner(responder: Responder, pool: asyncpg.Pool, names: TopicNames, *, checks: bool = True) -> EffectRunner:
    kinds = [
        k
        for c in responder.execution.connectors.values()
        for k in c.effect_kinds(responder.on_effect_outcome)
        if checks or not k.name.endswith((".validate", ".verify"))
    ]
    return EffectRunner("responder", pool, names, kinds, poll_s=0.05, backoff_base_s=0.05, backoff_cap_s=0.1)


async def emitted(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'responder' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


async def validations(pool: asyncpg.Pool, incident: str) -> dict[str, tuple[str | None, str]]:
    rows = await pool.fetch(
        "SELECT step, item, validation, validation_reason FROM responder_steps WHERE incident_id = $1", incident
    )
    return {f"{r['step']} {r['item']}": (r["validation"], r["validation_reason"]) for r in rows}


async def settled(pool: asyncpg.Pool, incident: str) -> bool:
    return all(v not in (None, "pending") for v, _ in (await validations(pool, incident)).values())


async def test_each_connector_checks_its_effect_and_a_failed_check_is_escalated_to_the_commander(
    pool: asyncpg.Pool, names: TopicNames, tmp_path: Path
) -> None:
    data = Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV2,
        title="intrusion",
        indicators=[Indicator(kind="ipv4", value="203.0.113.7"), Indicator(kind="ipv4", value="203.0.113.8")],
        affected_hosts=["web-1", "web-2"],
        affected_users=[],
        alert_count=2,
        summary="",
    )
    async with far_side() as far:
        far.isolated = {"web-1"}
        far.quarantined = {"web-1"}
        responder = responder_with_checks(pool, far, tmp_path)
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-v", data=data))
        # The actions run; their checks wait (no runner for them yet), so that one block can be undone first.
        async with running(runner(responder, pool, names, checks=False)):
            await eventually(lambda: _done(pool, "inc-v"))
        async with pool.acquire() as conn:
            assert await blocklist.remove(
                conn, kind="ip", value="203.0.113.8", step_id=await _block_of(pool, "203.0.113.8")
            )
        async with running(runner(responder, pool, names)):
            await eventually(lambda: settled(pool, "inc-v"), timeout=60)
    found = await validations(pool, "inc-v")
    assert {step: outcome for step, (outcome, _) in found.items()} == {
        "isolate web-1": "validated",
        "isolate web-2": "failed",  # the far side answered 2xx, but not with what was expected
        "quarantine web-1": "validated",
        "quarantine web-2": "failed",  # the check URL never reported the rule
        "mark web-1": "validated",
        "mark web-2": "failed",  # the program's own check exited non-zero
        "block 203.0.113.7": "validated",
        "block 203.0.113.8": "failed",  # gone from the served list
    }
    assert 'does not hold {"isolated": true}' in found["isolate web-2"][1]
    assert (
        "not confirmed after 3 attempt(s)" in found["quarantine web-2"][1]
        and "HTTP 404" in found["quarantine web-2"][1]
    )
    assert "/usr/bin/test exited with 1" in found["mark web-2"][1]
    assert "203.0.113.8 is missing from the served ip list" in found["block 203.0.113.8"][1]
    assert far.checks.count("web-1") == 1 and far.checks.count("web-2") == 3

    checks = [e for e in await emitted(pool) if isinstance(e, ResponseStepValidated)]
    assert sorted((e.data.step, e.data.item, e.data.outcome) for e in checks) == sorted(
        (step.split()[0], step.split()[1], outcome) for step, (outcome, _) in found.items()
    )
    # The coordinator pages the commander for every failed check, and for nothing else.
    coordinator = Coordinator(load_oncall())
    pages: list[IncidentEscalated] = []
    for event in [IncidentDetected(source="/vigil/detector", subject="inc-v", data=snapshot()), *checks]:
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="coordinator", names=names)
            await coordinator.handle(ctx, [_inbound(event)])
            pages += [e for e in ctx.emitted if isinstance(e, IncidentEscalated)]
    reasons = sorted(p.data.reason for p in pages[1:])
    assert len(reasons) == 4
    assert reasons[0].startswith("response step 'Block address: 203.0.113.8': its effect is not confirmed:")
    assert all("web-1" not in r and "203.0.113.7" not in r for r in reasons)


async def _done(pool: asyncpg.Pool, incident: str) -> bool:
    states = await pool.fetch("SELECT state FROM responder_steps WHERE incident_id = $1", incident)
    return all(r["state"] in ("succeeded", "failed") for r in states)


async def _block_of(pool: asyncpg.Pool, address: str) -> str:
    step_id: str = await pool.fetchval("SELECT id FROM responder_steps WHERE step = 'block' AND item = $1", address)
    return step_id
