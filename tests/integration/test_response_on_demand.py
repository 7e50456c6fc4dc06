"""A playbook step run on demand ("contain now"): beside the plan, through the policy, guardrails and lease."""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg
import httpx
import pytest

from services.responder import api
from shared.events import (
    ApproveStep,
    CommandRejected,
    IncidentAnalyzed,
    IncidentState,
    IncidentType,
    RunStep,
    Severity,
    StepRun,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.helpers import eventually, serve_app
from tests.integration.test_response_execution import (
    analysis,
    answer,
    fetch_one,
    handle,
    moved,
    receiver,
    responder_for,
    runner_for,
    running,
    states,
    vigil_cli,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

AUTO = "rules: [{name: all, mode: auto}]"


def run(incident: str, step: str, *, item: str | None = None, lease: str | None = None) -> RunStep:
    data = StepRun(step=step, item=item, lease=lease, actor="carol", role="commander", note="seen in the proxy logs")
    return RunStep(source="/test", subject=incident, data=data)


def rejections(emitted: Sequence[object]) -> list[str]:
    return [e.data.reason for e in emitted if isinstance(e, CommandRejected)]


async def test_a_step_run_on_demand_acts_at_once_beside_the_plan_and_holds_for_the_lease_asked(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy=AUTO)
        # The plan's isolate is sent and its block waits for it: a step asked for does not wait.
        await handle(
            pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-d", data=analysis(Severity.SEV2))
        )
        asked = run("inc-d", "contain.block", item="203.0.113.50", lease="4h")
        for _ in range(2):  # delivered twice: one step
            assert rejections(await handle(pool, names, responder, asked)) == []
        steps = {r["id"]: r for r in await pool.fetch("SELECT * FROM responder_steps WHERE incident_id = 'inc-d'")}
        [demanded] = [r for r in steps.values() if r["plan_id"].startswith("on-demand:")]
        assert (demanded["item"], demanded["state"], demanded["lease_s"]) == ("203.0.113.50", "running", 4 * 3600)
        assert demanded["params"] == {"address": "203.0.113.50"}
        assert (await states(pool, "inc-d"))["block 203.0.113.7"] == "planned"  # the plan's order stands
        first = await fetch_one(
            pool, "SELECT actor, reason FROM responder_step_log WHERE step_id = $1 ORDER BY id LIMIT 1", demanded["id"]
        )
        assert (first["actor"], first["reason"]) == ("carol", "run on demand by carol: seen in the proxy logs")

        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _state(pool, demanded["id"], "succeeded"))
        lease = await fetch_one(
            pool, "SELECT state, duration_s FROM responder_leases WHERE step_id = $1", demanded["id"]
        )
        assert (lease["state"], lease["duration_s"]) == ("active", 4 * 3600)
        # A revised plan (another address) keeps it: it is no plan's step.
        later = analysis(Severity.SEV2, ips=["203.0.113.7", "203.0.113.8"])
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-d", data=later))
        assert await pool.fetchval("SELECT state FROM responder_steps WHERE id = $1", demanded["id"]) == "succeeded"
        # One that now names the address it holds does not block it again: its own lease would lift the block.
        named = analysis(Severity.SEV2, ips=["203.0.113.7", "203.0.113.8", "203.0.113.50"])
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-d", data=named))
        blocks = await pool.fetch(
            """SELECT plan_id, state, reason FROM responder_steps
               WHERE incident_id = 'inc-d' AND step = 'block' AND item = '203.0.113.50'"""
        )
        planned = [r for r in blocks if not r["plan_id"].startswith("on-demand:")]
        assert [(r["state"], r["reason"]) for r in planned] == [
            ("skipped", f"step {demanded['id']} does this already (its lease is active)")
        ]


async def test_a_step_run_on_demand_waits_for_the_approvals_the_policy_asks_and_a_revision_keeps_it_waiting(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far)  # SEV2: two people, a commander and a security lead
        await handle(
            pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-w", data=analysis(Severity.SEV2))
        )
        await handle(pool, names, responder, run("inc-w", "contain.isolate", item="db-7"))
        [row] = await pool.fetch("SELECT * FROM responder_steps WHERE incident_id = 'inc-w' AND item = 'db-7'")
        assert (row["state"], row["approvals_required"]) == ("awaiting_approval", 2)
        await handle(
            pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-w", data=analysis(Severity.SEV2))
        )
        assert await pool.fetchval("SELECT state FROM responder_steps WHERE id = $1", row["id"]) == "awaiting_approval"
        # An answer to every waiting item of the plan's isolate is none to a request someone made.
        await handle(pool, names, responder, answer(ApproveStep, "inc-w:isolate", "alice", role="commander"))
        assert await pool.fetchval("SELECT approvals FROM responder_steps WHERE id = $1", row["id"]) == []
        await handle(pool, names, responder, answer(ApproveStep, row["id"], "alice", role="commander"))
        await handle(pool, names, responder, answer(ApproveStep, row["id"], "bob", role="security-lead"))
        assert await pool.fetchval("SELECT state FROM responder_steps WHERE id = $1", row["id"]) == "running"


async def test_a_step_that_cannot_run_on_demand_is_refused_with_why(pool: asyncpg.Pool, names: TopicNames) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy=AUTO)
    before = await handle(pool, names, responder, run("inc-r", "contain.block", item="203.0.113.9"))
    assert rejections(before) == [
        "no analysis of incident inc-r is stored yet (the next comes with its next alerts): its severity and "
        "assets decide who must approve a step"
    ]
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-r", data=analysis(Severity.SEV2)))
    cases = {
        ("contain.block", "10.1.2.3", None): "10.1.2.3 is not an external address",
        ("contain.block", "not an address", None): "item 'not an address' is refused: ",
        ("contain.block", None, None): "step block acts on each of the incident's external_ips: name one",
        ("contain.tell", "203.0.113.9", None): "step tell acts on no item",
        ("contain.isolate", "web-2", "1h"): "step contain.isolate is not reversible",
        ("contain.block", "203.0.113.9", "90d"): "a lease is from 1 minute to 30 days",
        ("contain.nope", None, None): "playbook contain has no step 'nope'; its steps: tell, isolate, block",
        ("other.block", None, None): "no playbook 'other'; there are: contain",
        # The plan's block of this address waits for the isolate: a second would act twice on one target.
        ("contain.block", "203.0.113.7", None): "step inc-r:block:",
    }
    for (step, item, lease), expected in cases.items():
        [reason] = rejections(await handle(pool, names, responder, run("inc-r", step, item=item, lease=lease)))
        assert reason.startswith(expected) or expected in reason, (step, reason)
    assert (
        "does this already (planned): answer or change that one"
        in rejections(await handle(pool, names, responder, run("inc-r", "contain.block", item="203.0.113.7")))[0]
    )
    # A command on the topic says who asks and in which role: one that may not run steps is refused.
    viewer = run("inc-r", "contain.block", item="203.0.113.9")
    viewer = viewer.model_copy(update={"data": viewer.data.model_copy(update={"role": "responder"})})
    assert rejections(await handle(pool, names, responder, viewer)) == [
        "role 'responder' may not run steps; commander may"
    ]
    # The guardrails judge it as any step: an address never to block is refused when it is sent.
    await handle(pool, names, responder, run("inc-r", "contain.block", item="198.51.100.4"))
    refused = await fetch_one(pool, "SELECT state, reason FROM responder_steps WHERE item = '198.51.100.4'")
    assert refused["state"] == "refused" and "198.51.100.0/24" in refused["reason"]
    # An ended incident is acted on no more.
    await handle(pool, names, responder, moved("inc-r", IncidentState.RESOLVED, ended=True))
    [ended] = rejections(await handle(pool, names, responder, run("inc-r", "contain.block", item="203.0.113.9")))
    assert ended == "incident inc-r is resolved: reopen it to act on it"
    assert await pool.fetchval("SELECT count(*) FROM responder_steps WHERE item = '203.0.113.9'") == 0
    refusals = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'step.run' AND outcome = 'refused'")
    assert refusals == len(cases) + 4


async def test_an_analysis_no_playbook_matches_plans_nothing_and_its_steps_can_still_be_run_and_watched(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with receiver() as far:
        responder = responder_for(pool, far, policy=AUTO)
        leak = analysis(Severity.SEV2).model_copy(update={"type": IncidentType.DATA_LEAK})
        emitted = await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-u", data=leak))
        assert emitted == [] and await states(pool, "inc-u") == {}
        asked = run("inc-u", "contain.block", item="203.0.113.60")
        assert rejections(await handle(pool, names, responder, asked)) == []
        assert await states(pool, "inc-u") == {"block 203.0.113.60": "running"}
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _watched(pool, "inc-u"))
    # Contained on demand, watched as a plan's containment is: its alerts naming the address say it did not hold.
    entities = await pool.fetchval("SELECT entities FROM responder_monitors WHERE incident_id = 'inc-u'")
    assert entities == [{"kind": "ip", "value": "203.0.113.60"}]


async def _watched(pool: asyncpg.Pool, incident: str) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM responder_monitors WHERE incident_id = $1", incident))


async def test_operators_run_a_step_over_the_api_and_the_cli(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = responder_for(pool, None, policy=AUTO, dry_run=True)
    await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-c", data=analysis(Severity.SEV2)))
    runtime = Runtime(service="responder", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, api.routers(runtime, responder))
    async with serve_app(app, name="responder-api") as base, httpx.AsyncClient(base_url=base) as client:
        listed = (await client.get("/api/v1/playbooks/steps")).json()
        assert [(s["ref"], s["item"], s["lease"]) for s in listed] == [
            ("contain.tell", None, None),
            ("contain.isolate", "affected_hosts", None),
            ("contain.block", "external_ips", "1h"),
        ]
        body = {"step": "contain.block", "item": "203.0.113.70", "actor": "carol"}
        made = await client.post("/api/v1/incidents/inc-c/actions", json=body, headers={"Idempotency-Key": "r1"})
        assert made.status_code == 201, made.text
        assert (made.json()["item"], made.json()["state"]) == ("203.0.113.70", "simulated")
        again = await client.post("/api/v1/incidents/inc-c/actions", json=body, headers={"Idempotency-Key": "r1"})
        assert again.status_code == 201 and again.json()["id"] == made.json()["id"]  # retried: one step
        wrong = await client.post("/api/v1/incidents/inc-c/actions", json={**body, "item": "10.0.0.1"})
        assert wrong.status_code == 409 and "not an external address" in wrong.json()["detail"]

        printed = await vigil_cli(
            "actions", "run", "inc-c", "contain.block", "--item", "203.0.113.71", "--json", responder_url=base
        )
        assert json.loads(printed)["item"] == "203.0.113.71"
        refused = await vigil_cli("actions", "run", "inc-c", "contain.tell", "--item", "x", responder_url=base, code=1)
        assert "step tell acts on no item; run it without one (409)" in refused
        catalogue = await vigil_cli("actions", "steps", responder_url=base)
        assert "contain.block" in catalogue and "external_ips" in catalogue
    assert await pool.fetchval("SELECT count(*) FROM responder_steps WHERE plan_id LIKE 'on-demand:%'") == 2
    commands = [
        dict(r["headers"]).get("ce_type")
        for r in await pool.fetch("SELECT headers FROM outbox WHERE service = 'responder'")
    ]
    assert commands.count("vigil.command.run_step.v1") == 2


async def _state(pool: asyncpg.Pool, step_id: str, state: str) -> bool:
    return bool(await pool.fetchval("SELECT state = $2 FROM responder_steps WHERE id = $1", step_id, state))
