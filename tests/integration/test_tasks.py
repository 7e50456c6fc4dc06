"""Incident tasks against the real Postgres: made once, completed, fired when overdue, over the API and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.coordinator import tasks
from services.coordinator.tasks_api import tasks_router
from shared import timers
from shared.consumer import HandlerContext
from shared.events import IncidentType, ResolutionSuggested, ResolutionSuggestion, Severity
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

TEMPLATES = tasks.parse_templates(
    """
phases:
  triage:
    - {id: confirm, title: Confirm it, owner: commander, due: {SEV1: 15m, SEV2: 1h}, required: true}
    - {id: timeline, title: Keep the timeline, owner: scribe, min_severity: SEV2}
  containment:
    - {id: isolate, title: Isolate hosts, owner: responder, types: [system_compromise], due: 30m, required: true}
  recovery:
    - {id: restore, title: Restore hosts, owner: group:sre, due: 1d, due_from: phase, required: true}
"""
)


async def make(
    pool: asyncpg.Pool,
    incident_id: str,
    *,
    severity: Severity = Severity.SEV1,
    now: datetime | None = None,
    templates: list[tasks.TaskTemplate] = TEMPLATES,
) -> list[tasks.Task]:
    async with pool.acquire() as conn, conn.transaction():
        return await tasks.create_tasks(
            conn,
            templates,
            incident_id=incident_id,
            incident_type=IncidentType.SYSTEM_COMPROMISE,
            severity=severity,
            commander="alice",
            now=now or datetime.now(UTC),
        )


async def pending_timers(pool: asyncpg.Pool) -> dict[str, datetime]:
    rows = await pool.fetch(
        """SELECT subject, due_at FROM timers WHERE service = 'coordinator' AND kind = $1
           AND fired_at IS NULL AND cancelled_at IS NULL""",
        tasks.TASK_DUE,
    )
    return {r["subject"]: r["due_at"] for r in rows}


async def test_an_incidents_tasks_are_made_once_with_owners_and_a_timer_per_deadline(pool: asyncpg.Pool) -> None:
    now = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    made = await make(pool, "inc-1", now=now)
    assert [(t.template_id, t.phase, t.owner, t.owner_role, t.state) for t in made] == [
        ("confirm", "triage", "alice", "commander", "open"),
        ("timeline", "triage", "scribe", "scribe", "open"),
        ("isolate", "containment", "responder", "responder", "open"),
        ("restore", "recovery", "group:sre", None, "open"),
    ]
    by_template = {t.template_id: t for t in made}
    assert by_template["confirm"].due_at == now + timedelta(minutes=15)
    assert by_template["timeline"].due_at is None
    assert by_template["restore"].due_at is None and by_template["restore"].due_after_s == 86400
    assert await pending_timers(pool) == {
        str(by_template["confirm"].id): now + timedelta(minutes=15),
        str(by_template["isolate"].id): now + timedelta(minutes=30),
    }

    # The same incident again (a redelivered detection, a restart): nothing new, no timer moved.
    assert await make(pool, "inc-1", now=now + timedelta(hours=1)) == []
    async with pool.acquire() as conn:
        listed = await tasks.list_tasks(conn, "inc-1")
    assert listed == made
    assert len(await pending_timers(pool)) == 2
    # A raised severity adds the tasks it brings, and only those.
    smaller = await make(pool, "inc-2", severity=Severity.SEV3, now=now)
    assert [t.template_id for t in smaller] == ["confirm", "isolate", "restore"]
    assert [t.template_id for t in await make(pool, "inc-2", severity=Severity.SEV2, now=now)] == ["timeline"]

    # The recovery phase starts: its task due from then gets its deadline and timer, once.
    started = now + timedelta(days=1)
    async with pool.acquire() as conn, conn.transaction():
        timed = await tasks.start_phase(conn, incident_id="inc-1", phase="recovery", now=started)
        again = await tasks.start_phase(conn, incident_id="inc-1", phase="recovery", now=started + timedelta(hours=1))
    assert [(t.template_id, t.due_at) for t in timed] == [("restore", started + timedelta(days=1))]
    assert again == []
    assert (await pending_timers(pool))[str(by_template["restore"].id)] == started + timedelta(days=1)

    # A new scribe takes the scribe's open tasks; the commander's stay with the commander.
    async with pool.acquire() as conn, conn.transaction():
        moved = await tasks.assign_role(conn, incident_id="inc-1", role="scribe", person="sam")
    assert [(t.template_id, t.owner) for t in moved] == [("timeline", "sam")]


async def test_completing_a_task_records_who_and_cancels_its_deadline(pool: asyncpg.Pool) -> None:
    made = {t.template_id: t for t in await make(pool, "inc-3")}
    confirm = made["confirm"]
    async with pool.acquire() as conn, conn.transaction():
        done = await tasks.complete(conn, confirm.id, actor="bob", note="real: two hosts beacon out")
    assert (done.state, done.done_by, done.note) == ("done", "bob", "real: two hosts beacon out")
    assert done.done_at is not None
    assert str(confirm.id) not in await pending_timers(pool)
    assert str(made["isolate"].id) in await pending_timers(pool)

    async with pool.acquire() as conn:
        with pytest.raises(tasks.TaskNotOpen, match=rf"task {confirm.id} is done already \(by bob at "):
            await tasks.complete(conn, confirm.id, actor="carol", note="")
        with pytest.raises(tasks.TaskNotFound, match="no task 999999"):
            await tasks.complete(conn, 999999, actor="carol", note="")
        # Cancelled tasks are closed too, and their deadlines go with them.
        cancelled = await tasks.cancel_open(
            conn, incident_id="inc-3", actor="alice", note="false positive", phases=["containment"]
        )
        assert [t.template_id for t in cancelled] == ["isolate"]
        with pytest.raises(tasks.TaskNotOpen, match="is cancelled already"):
            await tasks.complete(conn, made["isolate"].id, actor="carol", note="")
        listed = await tasks.list_tasks(conn, "inc-3")
    assert await pending_timers(pool) == {}
    now = datetime.now(UTC)
    assert [(p.phase, p.done, p.total) for p in tasks.progress(listed, now=now).phases] == [
        ("triage", 1, 2),
        ("recovery", 0, 1),
    ]


async def test_an_overdue_task_is_escalated_once_by_the_timer_poller(pool: asyncpg.Pool, names: TopicNames) -> None:
    # Made two hours ago: both deadlines have passed.
    made = {t.template_id: t for t in await make(pool, "inc-4", now=datetime.now(UTC) - timedelta(hours=2))}
    async with pool.acquire() as conn:
        late = await tasks.overdue(conn, now=datetime.now(UTC))
    assert [t.template_id for t in late] == ["confirm", "isolate"]
    async with pool.acquire() as conn, conn.transaction():
        await tasks.complete(conn, made["isolate"].id, actor="bob", note="isolated")

    escalated: list[tasks.OverdueTask] = []

    async def on_task_due(ctx: HandlerContext, timer: timers.Timer) -> None:
        if (overdue := await tasks.on_task_due(ctx, timer)) is not None:
            escalated.append(overdue)

    poller = TimerPoller(
        service="coordinator",
        pool=pool,
        names=names,
        handlers={tasks.TASK_DUE: on_task_due},
        locks={tasks.TASK_DUE: tasks.lock_task},
    )
    assert await poller.fire_due() == 1  # the completed task's timer was cancelled
    assert [(o.task.template_id, o.task.owner) for o in escalated] == [("confirm", "alice")]
    overdue = escalated[0]
    assert overdue.task.escalated_at is not None
    assert overdue.reason.startswith(f"triage required task {made['confirm'].id} 'Confirm it' (owner alice) was due")
    assert await poller.fire_due() == 0
    assert await pending_timers(pool) == {}

    # A timer that fires for a task closed meanwhile escalates nothing.
    async with pool.acquire() as conn, conn.transaction():
        await timers.schedule(
            conn,
            service="coordinator",
            kind=tasks.TASK_DUE,
            subject=str(made["isolate"].id),
            due_at=datetime.now(UTC) - timedelta(seconds=1),
        )
    assert await poller.fire_due() == 1
    assert len(escalated) == 1
    async with pool.acquire() as conn:
        assert [t.template_id for t in await tasks.overdue(conn, now=datetime.now(UTC))] == ["confirm"]


async def vigil_cli(*args: str, coordinator_url: str, code: int = 0) -> str:
    """Run the `vigil` command against a coordinator API; return its output (stdout, then stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")),
        *args,
        env={**os.environ, "VIGIL_COORDINATOR_URL": coordinator_url, "VIGIL_ACTOR": "carol", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == code, (out + err).decode()
    return (out + err).decode()


async def test_operators_list_tasks_and_mark_them_done_over_the_api_and_the_cli(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    made = {t.template_id: t for t in await make(pool, "inc-5", now=datetime.now(UTC) - timedelta(minutes=20))}
    await pool.execute(
        """INSERT INTO coordinator_incidents (incident_id, state, severity, type, title, commander, rotation,
               escalation, detected_at)
           VALUES ('inc-6', 'detected', 'SEV4', 'unknown', 't', 'alice', 'security', '{}', now())"""
    )

    async def suggest_when_done(ctx: HandlerContext, task: tasks.Task) -> None:
        ctx.emit(
            ResolutionSuggested(
                source="/vigil/coordinator",
                subject=task.incident_id,
                data=ResolutionSuggestion(commander="alice", reason=f"{task.title} done"),
            )
        )

    runtime = Runtime(service="coordinator", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, [tasks_router(runtime, TEMPLATES, on_done=suggest_when_done)])
    async with serve_app(app, name="coordinator-api") as base, httpx.AsyncClient(base_url=base) as client:
        listed = (await client.get("/api/v1/incidents/inc-5/tasks")).json()
        assert [(t["template_id"], t["overdue"]) for t in listed["tasks"]] == [
            ("confirm", True),  # 15 minutes at SEV1, made 20 minutes ago
            ("timeline", False),
            ("isolate", False),
            ("restore", False),
        ]
        assert listed["progress"]["overdue"] == 1
        assert [(p["phase"], p["done"], p["total"]) for p in listed["progress"]["phases"]] == [
            ("triage", 0, 2),
            ("containment", 0, 1),
            ("recovery", 0, 1),
        ]
        # An incident known here without tasks has none; one unknown is not found.
        assert (await client.get("/api/v1/incidents/inc-6/tasks")).json()["tasks"] == []
        unknown = await client.get("/api/v1/incidents/nope/tasks")
        assert unknown.status_code == 404 and unknown.json()["detail"] == "no incident nope"

        confirm = made["confirm"].id
        body = {"actor": "bob", "note": "checked"}
        done = await client.post(f"/api/v1/tasks/{confirm}/done", json=body, headers={"Idempotency-Key": "k1"})
        assert done.status_code == 200
        assert (done.json()["state"], done.json()["done_by"], done.json()["overdue"]) == ("done", "bob", False)
        # The same request retried is answered, not refused; another request is refused.
        again = await client.post(f"/api/v1/tasks/{confirm}/done", json=body, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 200 and again.json()["done_by"] == "bob"
        refused = await client.post(f"/api/v1/tasks/{confirm}/done", json={"actor": "carol"})
        assert refused.status_code == 409 and "is done already (by bob" in refused.json()["detail"]
        missing = await client.post("/api/v1/tasks/999999/done", json=body)
        assert missing.status_code == 404
        anonymous = await client.post(f"/api/v1/tasks/{made['isolate'].id}/done", json={"actor": ""})
        assert anonymous.status_code == 422

        chosen = (await client.get("/api/v1/tasks/templates", params={"type": "data_leak", "severity": "SEV3"})).json()
        assert [t["id"] for t in chosen] == ["confirm", "restore"]

        # The same through the CLI, as an operator types it.
        listed_by_cli = json.loads(await vigil_cli("tasks", "list", "inc-5", "--json", coordinator_url=base))
        assert [t["state"] for t in listed_by_cli["tasks"]] == ["done", "open", "open", "open"]
        table = await vigil_cli("tasks", "list", "inc-5", coordinator_url=base)
        assert "1 of 4 task(s) done" in table and "Isolate hosts *" in table and "when the phase starts" in table
        isolate = made["isolate"].id
        said = await vigil_cli("tasks", "done", str(isolate), "--note", "both hosts", coordinator_url=base)
        assert f"task {isolate} Isolate hosts (containment) is done by carol" in said
        refused_by_cli = await vigil_cli("tasks", "done", str(isolate), coordinator_url=base, code=1)
        assert f"task {isolate} is done already (by carol" in refused_by_cli and "(409)" in refused_by_cli

    async with pool.acquire() as conn:
        stored = {t.template_id: t for t in await tasks.list_tasks(conn, "inc-5")}
    assert (stored["isolate"].done_by, stored["isolate"].note) == ("carol", "both hosts")
    # The hook's events went to the outbox with each completion, once each.
    suggested = await pool.fetch("SELECT key FROM outbox WHERE service = 'coordinator'")
    assert len(suggested) == 2


async def test_the_cli_checks_a_templates_file(tmp_path: Path) -> None:
    shipped = await vigil_cli("tasks", "validate", str(tasks.DEFAULT_TEMPLATES), coordinator_url="http://unused")
    assert "task template(s), valid" in shipped and "post_mortem:" in shipped
    broken = tmp_path / "tasks.yaml"
    broken.write_text("phases:\n  triage:\n    - {id: a, title: A, owner: boss}\n")
    said = await vigil_cli("tasks", "validate", str(broken), coordinator_url="http://unused", code=1)
    assert ":3:" in said and "phases.triage.0.owner" in said and "an owner is a role" in said
