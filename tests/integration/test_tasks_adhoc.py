"""Tasks operators add to an incident (the post-mortem's follow-ups), against the real Postgres and broker.

An added task must behave as a runbook task does: listed, done, timed and paged when overdue, counted by
the `tasks_done` guard when required, announced to the reporter; and only a commander may add one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.coordinator import api, tasks
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.coordinator.tasks_api import tasks_router
from services.reporter import handlers as reporter
from shared import audit, cloudevents, identity
from shared.consumer import HandlerContext, Inbound, write_context
from shared.events import EventBase, IncidentDetected, IncidentEscalated, TasksCreated
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

# Positions: confirm 0, isolate 1, hold 2. No post-mortem task is required: `close` waits only for what is added.
TEMPLATES = tasks.parse_templates(
    """
phases:
  triage:
    - {id: confirm, title: Confirm it, owner: commander, due: 15m, required: true}
  containment:
    - {id: isolate, title: Isolate hosts, owner: responder, due: 30m}
  post_mortem:
    - {id: hold, title: Hold the post-mortem, owner: commander, due: 5d, due_from: phase}
"""
)
INCIDENT = "inc-adhoc"  # a SEV1 system compromise, commander from the on-call schedule


@dataclass
class Served:
    client: httpx.AsyncClient
    base: str
    coordinator: Coordinator
    tokens: dict[str, str]  # by role; each token's principal is `<role>-person`

    async def add(
        self, body: dict[str, Any], *, role: str = "commander", incident: str = INCIDENT, key: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post(f"/api/v1/incidents/{incident}/tasks", json=body, headers=headers)

    async def call(self, path: str, body: dict[str, Any] | None = None, *, role: str = "commander") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        if body is None:
            return await self.client.get(path, headers=headers)
        return await self.client.post(path, json={"actor": "ignored", **body}, headers=headers)

    async def listed(self, incident: str = INCIDENT) -> list[dict[str, Any]]:
        answer = await self.call(f"/api/v1/incidents/{incident}/tasks", role="viewer")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["tasks"])


async def detect(pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator, subject: str) -> None:
    event = IncidentDetected(source="/vigil/detector", subject=subject, data=snapshot())
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="coordinator", names=names)
        await coordinator.handle(ctx, [Inbound[Any](event_id=event.id, item=event, record=None)])
        await write_context(conn, ctx)


async def emitted(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'coordinator' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


@pytest.fixture
async def served(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[Served]:
    """The coordinator's command and task routes as the service composes them, with authentication on."""
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    coordinator = Coordinator(load_oncall(), templates=TEMPLATES)
    await detect(pool, names, coordinator, INCIDENT)
    made: dict[str, str] = {}
    async with pool.acquire() as conn:
        for role in ("viewer", "responder", "commander"):
            token = await identity.create_token(conn, name=f"{role}-person", role=role, created_by="test")
            made[role] = token.text
    runtime = Runtime(service="coordinator", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(
        runtime,
        [*api.routers(runtime, coordinator), tasks_router(runtime, TEMPLATES, on_done=coordinator.on_task_done)],
    )
    async with serve_app(app, name="coordinator-api") as base, httpx.AsyncClient(base_url=base) as client:
        yield Served(client=client, base=base, coordinator=coordinator, tokens=made)


async def test_a_commander_adds_a_task_listed_after_its_phase_announced_audited_and_made_once(
    served: Served, pool: asyncpg.Pool, names: TopicNames
) -> None:
    follow_up = {
        "actor": "mallory",  # the token's principal acts, not a name in the body
        "title": "Rotate the [ssh] deploy keys",
        "description": "Agreed at the post-mortem: every key the attacker could read.",
        "owner": "bob@example.com",
        "due": "14d",
        "required": True,
    }
    # Adding changes what the incident's lifecycle waits for: the commander's permission, not a responder's.
    for role in ("viewer", "responder"):
        refused = await served.add(follow_up, role=role)
        assert refused.status_code == 403, (role, refused.text)

    before = datetime.now(UTC)
    first = await served.add(follow_up, key="k1")
    assert first.status_code == 201, first.text
    added = first.json()
    assert added["template_id"].startswith(tasks.ADHOC_PREFIX)
    assert (added["phase"], added["title"], added["owner"], added["owner_role"]) == (
        "post_mortem",
        "Rotate the [ssh] deploy keys",
        "bob@example.com",
        None,
    )
    assert (added["required"], added["state"], added["overdue"], added["due_after_s"]) == (True, "open", False, None)
    due = datetime.fromisoformat(added["due_at"])
    assert before + timedelta(days=14) <= due <= datetime.now(UTC) + timedelta(days=14)

    # The same request again is answered alike and adds nothing; another key is another task.
    again = await served.add(follow_up, key="k1")
    assert (again.status_code, again.json()) == (201, added)
    containment = await served.add({"title": "Block the second C2 address", "phase": "containment"}, key="k2")
    assert containment.status_code == 201, containment.text
    # Default owner: the incident's commander, as its role (a new commander takes it over).
    commander = await pool.fetchval("SELECT commander FROM coordinator_incidents WHERE incident_id = $1", INCIDENT)
    assert (containment.json()["owner"], containment.json()["owner_role"]) == (commander, "commander")
    assert containment.json()["due_at"] is None

    # Listed as the runbook's tasks are, each after its phase's templates and before the next phase's.
    listed = await served.listed()
    kinds = [("adhoc" if t["template_id"].startswith(tasks.ADHOC_PREFIX) else t["template_id"]) for t in listed]
    assert list(zip(kinds, [t["phase"] for t in listed], strict=True)) == [
        ("confirm", "triage"),
        ("isolate", "containment"),
        ("adhoc", "containment"),
        ("hold", "post_mortem"),
        ("adhoc", "post_mortem"),
    ]
    assert [t["id"] for t in listed if t["template_id"].startswith("adhoc-")] == [
        containment.json()["id"],
        added["id"],
    ]
    assert listed[-1] == added

    # Its deadline is a timer, as a runbook task's is.
    timer = await pool.fetchval(
        "SELECT due_at FROM timers WHERE service = 'coordinator' AND kind = $1 AND subject = $2 AND fired_at IS NULL",
        tasks.TASK_DUE,
        str(added["id"]),
    )
    assert timer == due

    # Announced with the event runbook tasks are announced with, once per task; the reporter keeps it.
    announced = [e for e in await emitted(pool) if isinstance(e, TasksCreated)]
    assert [[t.task_id for t in e.data.tasks] for e in announced[1:]] == [[added["id"]], [containment.json()["id"]]]
    opened = announced[1].data.tasks[0]
    assert (opened.title, opened.owner, opened.required, opened.due_at) == (
        follow_up["title"],
        "bob@example.com",
        True,
        due,
    )
    async with pool.acquire() as conn, conn.transaction():
        await reporter.on_tasks_created(HandlerContext(conn=conn, service="reporter", names=names), announced[1])
    kept = await pool.fetchrow(
        "SELECT phase, title, owner, required, state FROM reporter_tasks WHERE task_id = $1", added["id"]
    )
    assert kept is not None
    assert dict(kept) == {
        "phase": "post_mortem",
        "title": follow_up["title"],
        "owner": "bob@example.com",
        "required": True,
        "state": "open",
    }

    # On the audit trail, by the token's principal, chained.
    entries = await pool.fetch("SELECT principal, target, detail FROM audit_log WHERE action = 'task.add' ORDER BY id")
    assert [(e["principal"], e["target"]) for e in entries] == [
        ("commander-person", str(added["id"])),
        ("commander-person", str(containment.json()["id"])),
    ]
    assert entries[0]["detail"]["incident"] == INCIDENT and entries[0]["detail"]["required"] is True
    async with pool.acquire() as conn:
        assert (await audit.verify_chain(conn)).problem is None


async def test_what_an_added_task_may_be_and_which_incidents_take_one(
    served: Served, pool: asyncpg.Pool, names: TopicNames
) -> None:
    unknown = await served.add({"title": "x"}, incident="nope")
    assert (unknown.status_code, unknown.json()["detail"]) == (404, "no incident nope")

    for body in (
        {"title": ""},
        {"title": "   "},
        {"title": "x" * 201},
        {"title": "x", "phase": "aftermath"},
        {"title": "x", "owner": "boss of everyone"},
        {"title": "x", "due": "fortnight"},
        {"title": "x", "due": "0d"},
        {"title": "x", "due": "2030-01-01T09:00:00"},  # no offset: whose 09:00?
        {"title": "x", "description": "d" * 4001},
    ):
        refused = await served.add(body)
        assert refused.status_code == 422, (body, refused.text)
    passed = await served.add({"title": "x", "due": "2020-01-01T09:00:00Z"}, key="past")
    assert passed.status_code == 422 and "has passed already" in passed.json()["detail"][0]["msg"]
    assert (await served.add({"title": "x", "due": "2020-01-01T09:00:00Z"}, key="past")).json() == passed.json()

    at = await served.add({"title": "Send the regulator the report", "due": "2099-03-01T09:00:00+01:00"})
    assert at.status_code == 201 and datetime.fromisoformat(at.json()["due_at"]) == datetime(2099, 3, 1, 8, tzinfo=UTC)
    # A role is whoever holds it now, and stays the role's.
    role = await served.add({"title": "Publish the timeline", "owner": "scribe", "phase": "closure"})
    assert (role.json()["owner"], role.json()["owner_role"], role.json()["position"]) == ("scribe", "scribe", 1)
    assert await pool.fetchval("SELECT count(*) FROM coordinator_tasks WHERE incident_id = $1", INCIDENT) == 5

    # An incident merged into another takes no task; a resolved one does (its post-mortem comes after).
    await detect(pool, names, served.coordinator, "inc-gone")
    await pool.execute("UPDATE coordinator_incidents SET merged_into = $2 WHERE incident_id = $1", "inc-gone", INCIDENT)
    merged = await served.add({"title": "x"}, incident="inc-gone")
    assert (merged.status_code, merged.json()["detail"]) == (
        409,
        f"incident inc-gone was merged into {INCIDENT}: add the task there",
    )


async def test_a_required_post_mortem_task_added_after_resolution_holds_close_until_done(
    served: Served, pool: asyncpg.Pool
) -> None:
    resolved = await served.call(f"/api/v1/incidents/{INCIDENT}/resolve", {"resolution": "fixed"})
    assert resolved.status_code == 200, resolved.text
    # Without added tasks the post-mortem's runbook tasks (none required here) would let it close.
    follow_up = await served.add({"title": "Add an alert for outbound shells", "required": True, "due": "10d"})
    assert follow_up.status_code == 201, follow_up.text
    optional = await served.add({"title": "Write the blog post"})
    assert optional.status_code == 201

    refused = await served.call(f"/api/v1/incidents/{INCIDENT}/state", {"to_state": "closed"})
    assert refused.status_code == 409
    assert "1 of 1 required post-mortem task(s) are not done (vigil tasks list)" in refused.json()["detail"]

    # A responder marks it done, as any task; the commander may then close the incident.
    done = await served.call(f"/api/v1/tasks/{follow_up.json()['id']}/done", {"note": "rule 4711"}, role="responder")
    assert done.status_code == 200 and done.json()["done_by"] == "responder-person"
    assert (
        await pool.fetchval(
            """SELECT count(*) FROM timers WHERE subject = $1 AND kind = $2
               AND cancelled_at IS NULL AND fired_at IS NULL""",
            str(follow_up.json()["id"]),
            tasks.TASK_DUE,
        )
        == 0
    )
    closed = await served.call(f"/api/v1/incidents/{INCIDENT}/state", {"to_state": "closed"})
    assert closed.status_code == 200 and closed.json()["state"] == "closed", closed.text

    # A closed incident takes no more: reopen it first.
    late = await served.add({"title": "One more thing"}, key="late")
    assert (late.status_code, late.json()["detail"]) == (409, f"incident {INCIDENT} is closed: reopen it to add a task")
    assert (await served.add({"title": "One more thing"}, key="late")).status_code == 409


async def _paged_when_overdue(pool: asyncpg.Pool, poller: TimerPoller, task_id: int) -> list[IncidentEscalated]:
    """As if the task's deadline had passed: its timer fires; return the pages that sent."""
    await pool.execute(
        "UPDATE timers SET due_at = now() WHERE kind = $1 AND subject = $2 AND fired_at IS NULL",
        tasks.TASK_DUE,
        str(task_id),
    )
    await pool.execute("UPDATE coordinator_tasks SET due_at = now() - interval '1 second' WHERE id = $1", task_id)
    paged_before = len([e for e in await emitted(pool) if isinstance(e, IncidentEscalated)])
    assert await poller.fire_due() == 1
    return [e for e in await emitted(pool) if isinstance(e, IncidentEscalated)][paged_before:]


async def test_an_overdue_added_task_pages_the_commander_once(
    served: Served, pool: asyncpg.Pool, names: TopicNames
) -> None:
    added = await served.add({"title": "Image the second host", "phase": "containment", "due": "1h"})
    assert added.status_code == 201, added.text
    task_id = added.json()["id"]
    poller = TimerPoller(
        service="coordinator",
        pool=pool,
        names=names,
        handlers=served.coordinator.timer_handlers,
        locks=served.coordinator.timer_locks,
    )
    paged = await _paged_when_overdue(pool, poller, task_id)
    assert len(paged) == 1
    assert paged[0].data.reason.startswith(f"containment task {task_id} 'Image the second host' (owner ")
    assert await poller.fire_due() == 0
    listed = {t["id"]: t for t in await served.listed()}
    assert listed[task_id]["overdue"] is True and listed[task_id]["escalated_at"] is not None


async def vigil_cli(*args: str, base: str, token: str, code: int = 0) -> str:
    """Run the `vigil` command against the coordinator's API with a token; return stdout then stderr."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")),
        *args,
        env={**os.environ, "VIGIL_COORDINATOR_URL": base, "VIGIL_API_TOKEN": token, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == code, (out + err).decode()
    return (out + err).decode()


async def test_operators_add_a_follow_up_with_the_cli_and_mark_it_done(served: Served) -> None:
    commander = served.tokens["commander"]
    said = await vigil_cli(
        "tasks",
        "add",
        INCIDENT,
        "Patch [CVE-2026-1234] on web-01",
        "--owner",
        "group:sre",
        "--due",
        "14d",
        "--required",
        "--description",
        "From the post-mortem",
        base=served.base,
        token=commander,
    )
    [added] = [t for t in await served.listed() if t["template_id"].startswith(tasks.ADHOC_PREFIX)]
    assert (added["phase"], added["owner"], added["required"], added["description"]) == (
        "post_mortem",
        "group:sre",
        True,
        "From the post-mortem",
    )
    assert f"task {added['id']} Patch [CVE-2026-1234] on web-01 * (post_mortem) added to incident {INCIDENT}" in said
    assert f"owner group:sre, due {added['due_at'][:10]}" in said

    as_json = json.loads(
        await vigil_cli(
            "tasks", "add", INCIDENT, "Tell legal", "--phase", "closure", "--json", base=served.base, token=commander
        )
    )
    assert (as_json["phase"], as_json["required"], as_json["due_at"]) == ("closure", False, None)

    table = await vigil_cli("tasks", "list", INCIDENT, base=served.base, token=commander)
    assert "Patch [CVE-2026-1234] on web-01 *" in table and "Tell legal" in table
    done = await vigil_cli("tasks", "done", str(added["id"]), "--note", "patched", base=served.base, token=commander)
    assert f"task {added['id']} Patch [CVE-2026-1234] on web-01 (post_mortem) is done by commander-person" in done

    # What is wrong is said before anything is sent; what the coordinator refuses, with its reason.
    bad_due = await vigil_cli("tasks", "add", INCIDENT, "x", "--due", "soon", base=served.base, token=commander, code=1)
    assert "due is a duration from now" in bad_due
    bad_phase = await vigil_cli(
        "tasks", "add", INCIDENT, "x", "--phase", "later", base=served.base, token=commander, code=1
    )
    assert "no phase 'later'; one of triage, containment" in bad_phase
    viewer = await vigil_cli("tasks", "add", INCIDENT, "x", base=served.base, token=served.tokens["viewer"], code=1)
    assert "(403)" in viewer


async def test_an_overdue_post_mortem_follow_up_of_a_resolved_incident_pages_its_commander(
    served: Served, pool: asyncpg.Pool, names: TopicNames
) -> None:
    resolved = await served.call(f"/api/v1/incidents/{INCIDENT}/resolve", {"resolution": "fixed"})
    assert resolved.status_code == 200, resolved.text
    added = await served.add({"title": "Add an alert for outbound shells", "due": "1h"})
    assert added.status_code == 201, added.text
    task_id = added.json()["id"]
    poller = TimerPoller(
        service="coordinator",
        pool=pool,
        names=names,
        handlers=served.coordinator.timer_handlers,
        locks=served.coordinator.timer_locks,
    )
    paged = await _paged_when_overdue(pool, poller, task_id)
    assert len(paged) == 1 and paged[0].data.reason.startswith(f"post_mortem task {task_id} ")
