"""The coordinator's lifecycle and operators' commands over its API, against the real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.coordinator import api, tasks
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from shared import cloudevents
from shared.consumer import HandlerContext, Inbound
from shared.events import (
    AddNote,
    ChangeOffered,
    CommandRejected,
    EventBase,
    IncidentDetected,
    IncidentEscalated,
    IncidentUpdated,
    ResponseStepChanged,
    Severity,
    StepChange,
)
from shared.outbox import write_events
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

INCIDENT = "inc-life"


async def feed(pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator, event: EventBase) -> None:
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="coordinator", names=names)
        await coordinator.handle(ctx, [Inbound[Any](event_id=event.id, item=event, record=None)])
        await write_events(conn, service="coordinator", names=names, events=ctx.emitted)


def step(state: str, phase: str = "recovery") -> ResponseStepChanged:
    change = StepChange(
        step_id=f"{INCIDENT}:reimage:ab",
        plan_id="p",
        step="reimage",
        phase=phase,
        name="Rebuild host",
        item="web-1",
        connector="webhook",
        action="reimage_host",
        from_state=None,
        state=state,  # type: ignore[arg-type]
        actor="responder",
        on_failure="continue",
    )
    return ResponseStepChanged(source="/vigil/responder", subject=INCIDENT, data=change)


async def emitted(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'coordinator' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


@pytest.fixture
async def client(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[httpx.AsyncClient]:
    coordinator = Coordinator(load_oncall())
    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject=INCIDENT, data=snapshot()))
    runtime = Runtime(service="coordinator", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, api.routers(runtime, coordinator))
    async with (
        serve_app(app, name="coordinator-api") as base,
        httpx.AsyncClient(base_url=f"{base}/api/v1/incidents/{INCIDENT}") as http,
    ):
        http.coordinator = coordinator  # type: ignore[attr-defined]
        yield http


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int = 200) -> Any:
    response = await client.post(path, json={"actor": "alice", **body})
    assert response.status_code == status, response.text
    return response.json()


async def test_an_incident_moves_through_its_lifecycle_with_guards_and_every_move_logged(
    client: httpx.AsyncClient, pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator: Coordinator = client.coordinator  # type: ignore[attr-defined]
    assert (await post(client, "/ack", {}))["state"] == "acknowledged"
    refused = await post(client, "/state", {"to_state": "recovered"}, status=409)
    assert refused["detail"].startswith("cannot go to recovered from acknowledged; allowed: ")
    assert (await post(client, "/state", {"to_state": "contained", "note": "host isolated"}))["state"] == "contained"

    # Recovery waits for the responder's recovery steps to end well.
    await feed(pool, names, coordinator, step("running"))
    waiting = await post(client, "/state", {"to_state": "recovered"}, status=409)
    assert "1 recovery response step(s) have not ended well" in waiting["detail"]
    await feed(pool, names, coordinator, step("succeeded"))
    assert (await post(client, "/state", {"to_state": "recovered"}))["state"] == "recovered"

    needs = await post(client, "/state", {"to_state": "resolved"}, status=409)
    assert needs["detail"] == "resolve needs a resolution: one of fixed, false_positive, duplicate, risk_accepted"
    resolved = await post(client, "/resolve", {"resolution": "false_positive", "note": "a scanner we run"})
    assert (resolved["state"], resolved["resolution"]) == ("resolved", "false_positive")
    assert (await post(client, "/state", {"to_state": "acknowledged", "note": "it came back"}))[
        "state"
    ] == "acknowledged"

    lifecycle = (await client.get("/lifecycle")).json()
    assert [(t["from_state"], t["to_state"], t["actor"]) for t in lifecycle["transitions"]] == [
        (None, "detected", "detector"),
        ("detected", "acknowledged", "alice"),
        ("acknowledged", "contained", "alice"),
        ("contained", "recovered", "alice"),
        ("recovered", "resolved", "alice"),
        ("resolved", "acknowledged", "alice"),
    ]
    assert lifecycle["transitions"][2]["reason"] == "host isolated"
    assert lifecycle["transitions"][4]["resolution"] == "false_positive"
    assert set(lifecycle["state_times"]) == {"detected", "acknowledged", "contained", "recovered", "resolved"}
    assert "resolve" in lifecycle["allowed"] and "triage" not in lifecycle["allowed"]
    # Refused moves are recorded too, with why.
    rejected = [e for e in await emitted(pool) if isinstance(e, CommandRejected)]
    assert len(rejected) == 3


async def test_a_person_sets_severity_then_the_detector_only_offers_its_view(
    client: httpx.AsyncClient, pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator: Coordinator = client.coordinator  # type: ignore[attr-defined]
    edited = await post(client, "/edit", {"severity": "SEV3", "reason": "one test host only"})
    assert edited["severity"] == "SEV3"
    assert (await post(client, "/edit", {"severity": "SEV3", "reason": "again"}, status=409))["detail"].startswith(
        "nothing to change"
    )
    raised = snapshot(severity=Severity.SEV1, severity_reason="reverse shell on 3 hosts")
    await feed(pool, names, coordinator, IncidentUpdated(source="/vigil/detector", subject=INCIDENT, data=raised))
    row = await pool.fetchrow("SELECT severity, edited_by FROM coordinator_incidents WHERE incident_id = $1", INCIDENT)
    assert row is not None and (row["severity"], row["edited_by"]) == ("SEV3", {"severity": "alice"})
    [offer] = [e for e in await emitted(pool) if isinstance(e, ChangeOffered)]
    assert (offer.data.field, offer.data.current, offer.data.offered) == ("severity", "SEV3", "SEV1")
    assert "set by alice" in offer.data.reason


async def test_assigning_a_commander_pages_them_and_notes_go_on_the_record(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    result = await post(client, "/assign", {"person": "zoe@example.com", "role": "commander", "note": "taking over"})
    assert result["commander"] == "zoe@example.com" and result["roles"]["commander"] == "zoe@example.com"
    scribe = await post(client, "/assign", {"person": "yan@example.com", "role": "scribe"})
    assert scribe["roles"] == {"commander": "zoe@example.com", "scribe": "yan@example.com"}
    assert (await post(client, "/assign", {"person": "yan@example.com", "role": "scribe"}, status=409))["detail"] == (
        "yan@example.com is the scribe already"
    )
    await post(client, "/notes", {"note": "attacker used a stolen VPN token"})
    events = await emitted(pool)
    paged = [e for e in events if isinstance(e, IncidentEscalated)]
    assert paged[-1].data.commander == "zoe@example.com"
    assert paged[-1].data.reason == "made incident commander by alice: taking over"
    assert [e.data.note for e in events if isinstance(e, AddNote)] == ["attacker used a stolen VPN token"]


async def test_tasks_are_created_on_detection_and_a_sev1_closes_only_after_its_post_mortem(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    created = await tasks.list_tasks(pool, INCIDENT)  # type: ignore[arg-type]
    assert created and {t.phase for t in created} >= {"triage", "containment", "post_mortem"}
    await post(client, "/resolve", {"resolution": "fixed"})
    refused = await post(client, "/state", {"to_state": "closed"}, status=409)
    assert "required post-mortem task(s) are not done (vigil tasks list)" in refused["detail"]
    async with pool.acquire() as conn:
        for task in created:
            if task.phase == "post_mortem" and task.required:
                await tasks.complete(conn, task.id, actor="alice", note="written up")
    assert (await post(client, "/state", {"to_state": "closed"}))["state"] == "closed"
