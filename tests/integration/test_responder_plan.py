"""The responder plans from the incident's facts: steps expanded per item, parameters rendered and checked."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY

from services.responder import domain
from services.responder.approvals import parse_policy
from services.responder.connectors import ConnectorsConfig, load_connectors
from services.responder.guardrails import RateLimiter, load_guardrails
from services.responder.handlers import Execution, Responder
from shared.consumer import HandlerContext
from shared.events import Analysis, IncidentAnalyzed, IncidentType, Indicator, ResponsePlanned, Severity
from shared.topics import TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PLAYBOOKS = """
playbooks:
  - id: contain
    title: Contain an intrusion
    match: {types: [system_compromise]}
    steps:
      - id: block-ip
        name: Block attacker address
        phase: containment
        response: immediate
        for_each: external_ips
        connector: blocklist
        action: block
        params:
          address: {value: "{{ item }}", type: ip}
          reason: {value: "incident {{ incident.id }}"}
      - id: sinkhole
        name: Sinkhole domain
        phase: containment
        response: immediate
        for_each: domains
        connector: command
        action: sinkhole
        params: {domain: {value: "{{ item }}"}}
"""


async def test_analysis_plans_one_block_per_external_ip_and_refuses_a_hostile_argument(
    pool: asyncpg.Pool, names: TopicNames, rate_limiter: RateLimiter
) -> None:
    execution = Execution(
        policy=parse_policy("rules: [{name: all, mode: auto}]"),
        guardrails=load_guardrails(),
        connectors=load_connectors(ConnectorsConfig(), pool=pool),
        dry_run=True,
        rate_limiter=rate_limiter,
    )
    responder = Responder(domain.parse_playbooks(PLAYBOOKS), execution)
    hostile = "--exec=/bin/sh"
    analysis = Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV2,
        title="intrusion",
        indicators=[
            Indicator(kind="ipv4", value="203.0.113.5"),
            Indicator(kind="ipv4", value="10.1.2.3"),
            Indicator(kind="ipv4", value="198.51.100.9"),
            Indicator(kind="domain", value="evil.example"),
            Indicator(kind="domain", value=hostile),
        ],
        affected_hosts=["web-1"],
        affected_users=[],
        alert_count=3,
        summary="",
    )

    def steps_counted(state: str) -> float:
        return REGISTRY.get_sample_value("vigil_responder_steps_total", {"state": state}) or 0.0

    before = {o: steps_counted(o) for o in ("planned", "refused", "skipped", "simulated", "succeeded")}
    event = IncidentAnalyzed(source="/vigil/analyzer", subject="inc-1", data=analysis)
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="responder", names=names)
        await responder.plan(ctx, event)
        emitted = list(ctx.emitted)

    [planned] = [e for e in emitted if isinstance(e, ResponsePlanned)]
    assert [a.id for a in planned.data.actions] == ["block-ip#0", "block-ip#1", "sinkhole#0"]
    assert [a.name for a in planned.data.actions][:2] == [
        "Block attacker address: 203.0.113.5",
        "Block attacker address: 198.51.100.9",
    ]
    assert not any(hostile in a.name for a in planned.data.actions)

    raw = await pool.fetchval(
        "SELECT actions FROM responder_plans WHERE incident_id = 'inc-1' AND superseded_at IS NULL"
    )
    steps: list[dict[str, Any]] = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    by_id = {s["id"]: s for s in steps}
    assert by_id["block-ip#0"]["params"] == {"address": "203.0.113.5", "reason": "incident inc-1"}
    assert by_id["block-ip#1"]["params"] == {"address": "198.51.100.9", "reason": "incident inc-1"}
    assert not any(s["params"].get("address") == "10.1.2.3" for s in steps)
    assert by_id["sinkhole#0"]["params"] == {"domain": "evil.example"}
    assert by_id["sinkhole#1"]["status"] == "refused"
    assert by_id["sinkhole#1"]["params"] == {}
    assert "would read as an option" in by_id["sinkhole#1"]["reason"]
    # In this dry run the blocks are simulated; the sinkhole's program is not configured here.
    after = {o: steps_counted(o) - n for o, n in before.items()}
    assert after == {"planned": 3, "refused": 2, "skipped": 0, "simulated": 2, "succeeded": 0}
    digest = hashlib.sha256(b"203.0.113.5").hexdigest()[:10]
    assert planned.data.actions[0].step_id == f"inc-1:block-ip:{digest}"
    assert planned.data.actions[0].params == {"address": "203.0.113.5", "reason": "incident inc-1"}
