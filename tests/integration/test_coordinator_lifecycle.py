"""The coordinator's lifecycle and operators' commands over its API, against the real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from services.coordinator import api, domain, escalation, notifications, schedules, tasks
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from shared import cloudevents
from shared.consumer import HandlerContext, Inbound, write_context
from shared.effects import EffectRunner
from shared.effects.domain import verify_signature
from shared.events import (
    AcknowledgeIncident,
    AddNote,
    AlertSummary,
    Analysis,
    Assignment,
    AssignRole,
    ChangeOffered,
    ChangeState,
    CommandArgs,
    CommandRejected,
    EditIncident,
    EventBase,
    Impact,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEdit,
    IncidentEscalated,
    IncidentStateChanged,
    IncidentType,
    IncidentUpdated,
    NoteArgs,
    ResponseStepChanged,
    Severity,
    SeverityRecommendation,
    StateCommand,
    StepChange,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import T0, analysis, snapshot
from tests.helpers import eventually, serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

INCIDENT = "inc-life"
SECRET = "a-signing-secret-of-some-length"


async def feed(pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator, event: EventBase) -> None:
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="coordinator", names=names)
        await coordinator.handle(ctx, [Inbound[Any](event_id=event.id, item=event, record=None)])
        await write_context(conn, ctx)


def step(state: str, phase: str = "recovery", *, subject: str = INCIDENT, **fields: Any) -> ResponseStepChanged:
    """A response step's change: the rebuild of web-1 by default, or what ``fields`` say instead."""
    change = StepChange.model_validate(
        {
            "step_id": f"{subject}:reimage:ab",
            "plan_id": "p",
            "step": "reimage",
            "phase": phase,
            "name": "Rebuild host",
            "item": "web-1",
            "connector": "webhook",
            "action": "reimage_host",
            "from_state": None,
            "state": state,
            "actor": "responder",
            "on_failure": "continue",
            **fields,
        }
    )
    return ResponseStepChanged(source="/vigil/responder", subject=subject, data=change)


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
    retried = await client.post(
        "/resolve", json={"actor": "alice", "resolution": "false_positive"}, headers={"Idempotency-Key": "k"}
    )
    again = await client.post(
        "/resolve", json={"actor": "alice", "resolution": "false_positive"}, headers={"Idempotency-Key": "k"}
    )
    # The same request again (its Idempotency-Key) gets the first answer back, the refusal, and changes
    # nothing: no second refusal is recorded (the count below).
    assert (retried.status_code, again.status_code) == (409, 409) and again.json() == retried.json()
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
    assert len(rejected) == 4
    # Each move says whether the lifecycle counts its state as an end: the responder and the detector go by it.
    moves = [e.data for e in await emitted(pool) if isinstance(e, IncidentStateChanged)]
    assert [(m.to_state.value, m.ended) for m in moves] == [
        ("detected", False),
        ("acknowledged", False),
        ("contained", False),
        ("recovered", False),
        ("resolved", True),
        ("acknowledged", False),
    ]


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
    # Later pages (a new commander, the next step of the chain) say what the person set, and why.
    await post(client, "/assign", {"person": "zoe@example.com", "role": "commander"})
    paged = [e for e in await emitted(pool) if isinstance(e, IncidentEscalated)][-1]
    assert (paged.data.severity, paged.data.severity_reason) == ("SEV3", "set by alice: one test host only")


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


NOTIFY = """
channels:
  webhook: {url: "URL", secret_env: HOOK_SECRET}
people:
  alice@example.com: {}
  bob@example.com: {}
  carol@example.com: {}
routes:
  default: {default: [webhook]}
"""


async def test_the_commander_is_paged_once_through_a_signed_webhook_and_hears_of_each_move(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    received: list[dict[str, Any]] = []
    keys: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        signed = verify_signature(
            SECRET.encode(), headers.get("x-vigil-timestamp"), headers.get("x-vigil-signature"), body, now=time.time()
        )
        if signed:
            keys.append(headers["idempotency-key"])
            received.append(json.loads(body))
        writer.write(f"HTTP/1.1 {200 if signed else 401} X\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/page"
    notices = notifications.parse_notifications(
        NOTIFY.replace("URL", url), source="test", base_dir=Path("."), environ={"HOOK_SECRET": SECRET}
    )
    coordinator = Coordinator(load_oncall(), notices=notices)
    detected = IncidentDetected(source="/vigil/detector", subject="inc-page", data=snapshot())
    await feed(pool, names, coordinator, detected)
    await feed(pool, names, coordinator, detected)  # redelivered: the same page, not a second one
    ack = AcknowledgeIncident(source="/t", subject="inc-page", data=CommandArgs(actor="alice@example.com"))
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="coordinator", names=names)
        await coordinator.apply_command(ctx, ack)
    runner = EffectRunner(
        "coordinator",
        pool,
        names,
        notifications.effect_kinds(notices, on_outcome=coordinator.on_notice_outcome),
        poll_s=0.05,
    )
    counted_before = {kind: notices_counted("webhook", kind) for kind in ("escalation", "state_changed")}
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _truthy(len(received) >= 2))
        # Each delivery is counted by channel, kind and outcome once its outcome is recorded.
        await eventually(
            lambda: _truthy(all(notices_counted("webhook", kind) == n + 1 for kind, n in counted_before.items()))
        )
        await asyncio.sleep(0.3)  # nothing more arrives
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()
        await server.wait_closed()
    assert [r["kind"] for r in received] == ["escalation", "state_changed"]
    # Acknowledged: status-update reminders are due at the SEV1 cadence; new analysis is an update.
    due = await pool.fetchval(
        "SELECT due_at - now() FROM timers WHERE kind = 'status-update' AND subject = 'inc-page' AND fired_at IS NULL"
    )
    assert timedelta(minutes=29) < due <= timedelta(minutes=30)
    commander = received[0]["recipient"]
    assert received[0]["conversation"] == "inc-page" and received[1]["recipient"] == commander
    assert len(set(keys)) == 2 and keys[0].startswith("inc-page:escalation:step-0:webhook:")


async def _truthy(value: bool) -> bool:
    return value


def notices_counted(channel: str, kind: str, outcome: str = "succeeded") -> float:
    labels = {"channel": channel, "kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("vigil_coordinator_notifications_total", labels) or 0.0


def unreachable_pager() -> Coordinator:
    """A coordinator whose notices go to a webhook nobody listens on (the effects are what is checked)."""
    notices = notifications.parse_notifications(
        NOTIFY.replace("URL", "http://127.0.0.1:9/page"),
        source="test",
        base_dir=Path("."),
        environ={"HOOK_SECRET": SECRET},
    )
    return Coordinator(load_oncall(), notices=notices)


async def test_the_commander_is_asked_once_per_step_of_a_plan_and_again_for_what_a_later_plan_adds(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = unreachable_pager()

    def waiting(item: str, plan_id: str) -> ResponseStepChanged:
        return step(
            "awaiting_approval",
            "containment",
            subject="inc-ask",
            step_id=f"inc-ask:block:{item}",
            plan_id=plan_id,
            step="block",
            name="Block address",
            item=item,
            connector="blocklist",
            action="block",
            actor="policy",
        )

    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject="inc-ask", data=snapshot()))
    await feed(pool, names, coordinator, waiting("203.0.113.7", "plan-1"))
    await feed(pool, names, coordinator, waiting("203.0.113.8", "plan-1"))  # the same step of the same plan
    await feed(pool, names, coordinator, waiting("198.51.100.9", "plan-2"))  # a later plan adds an address
    asked = await pool.fetch(
        "SELECT key FROM effects WHERE subject = 'inc-ask' AND key LIKE 'inc-ask:approval_requested:%' ORDER BY id"
    )
    assert len(asked) == 2, [r["key"] for r in asked]


async def test_an_acknowledged_incident_gets_status_reminders_and_updates_in_its_conversation(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = unreachable_pager()
    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject="inc-r", data=snapshot()))
    ack = AcknowledgeIncident(source="/t", subject="inc-r", data=CommandArgs(actor="alice@example.com"))
    await feed(pool, names, coordinator, ack)
    analysis = Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV1,
        title="t",
        indicators=[],
        affected_hosts=[],
        affected_users=[],
        alert_count=1,
        summary="reverse shell from 203.0.113.7",
    )
    for _ in range(2):  # the same analysis twice: one update
        await feed(pool, names, coordinator, IncidentAnalyzed(source="/vigil/analyzer", subject="inc-r", data=analysis))
    # A playbook's notify step: its message reaches the commander in the incident's conversation.
    message = StepChange(
        step_id="inc-r:notify-stakeholders",
        plan_id="p",
        step="notify-stakeholders",
        phase="communication",
        name="Notify stakeholders",
        connector="notify",
        action="message",
        from_state="planned",
        state="succeeded",
        actor="responder",
        on_failure="continue",
        sent={"channel": "incident", "action": "message", "params": {"text": "SEV1 compromise: web-1"}},
    )
    await feed(pool, names, coordinator, ResponseStepChanged(source="/vigil/responder", subject="inc-r", data=message))
    poller = TimerPoller(
        service="coordinator",
        pool=pool,
        names=names,
        handlers=coordinator.timer_handlers,
        locks=coordinator.timer_locks,
    )
    for _ in range(2):
        await pool.execute("UPDATE timers SET due_at = now() WHERE kind = 'status-update' AND fired_at IS NULL")
        assert await poller.fire_due() == 1
    kinds = [
        notifications.parse_key(k).kind + ":" + notifications.parse_key(k).discriminator.split(":")[0]
        for k in await pool.fetchval("SELECT array_agg(key ORDER BY id) FROM effects WHERE subject = 'inc-r'")
    ]
    assert kinds == [
        "escalation:step-0",
        "state_changed:detected->acknowledged",
        f"update:analysis-{domain.analysis_digest(domain.analysis_brief(analysis))}",
        "update:notify-inc-r",
        "reminder:status-1",
        "reminder:status-2",
    ]


async def test_a_reopened_incident_gets_its_status_reminders_again_numbered_on(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = unreachable_pager()
    poller = TimerPoller(
        service="coordinator",
        pool=pool,
        names=names,
        handlers=coordinator.timer_handlers,
        locks=coordinator.timer_locks,
    )

    async def reminded() -> None:
        await pool.execute("UPDATE timers SET due_at = now() WHERE kind = 'status-update' AND fired_at IS NULL")
        assert await poller.fire_due() == 1

    def move(to_state: str, **extra: str) -> ChangeState:
        return ChangeState(
            source="/t", subject="inc-back", data=StateCommand(actor="alice", to_state=to_state, **extra)
        )

    await feed(
        pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject="inc-back", data=snapshot())
    )
    await feed(pool, names, coordinator, move("acknowledged"))
    await reminded()
    await feed(pool, names, coordinator, move("resolved", resolution="fixed"))
    pending = "SELECT count(*) FROM timers WHERE kind = 'status-update' AND fired_at IS NULL AND cancelled_at IS NULL"
    assert await pool.fetchval(pending) == 0
    await feed(pool, names, coordinator, move("acknowledged", note="it came back"))  # reopened
    assert await pool.fetchval(pending) == 1
    await reminded()
    keys = await pool.fetchval("SELECT array_agg(key ORDER BY id) FROM effects WHERE subject = 'inc-back'")
    reminders = [parsed.discriminator for k in keys if (parsed := notifications.parse_key(k)).kind == "reminder"]
    assert reminders == ["status-1", "status-2"]


async def test_a_status_update_reaches_the_people_on_the_incident_and_its_stakeholders_and_moves_the_reminder(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    notices = notifications.parse_notifications(
        NOTIFY.replace("URL", "http://127.0.0.1:9/page") + "groups:\n  leadership: {members: [carol@example.com]}\n",
        source="test",
        base_dir=Path("."),
        environ={"HOOK_SECRET": SECRET},
    )
    shipped = escalation.DEFAULT_ESCALATION.read_text().replace(
        "stakeholders: {}", "stakeholders: {SEV1: [leadership]}"
    )
    coordinator = Coordinator(load_oncall(), notices=notices, escalation_=escalation.parse_escalation(shipped))
    subject = "inc-status"
    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject=subject, data=snapshot()))
    acknowledged = ChangeState(source="/t", subject=subject, data=StateCommand(actor="alice", to_state="acknowledged"))
    await feed(pool, names, coordinator, acknowledged)
    assign = AssignRole(
        source="/t", subject=subject, data=Assignment(actor="alice", person="bob@example.com", role="scribe")
    )
    await feed(pool, names, coordinator, assign)
    reminder = """SELECT due_at FROM timers
                  WHERE kind = 'status-update' AND subject = $1 AND fired_at IS NULL AND cancelled_at IS NULL"""
    due_before = await pool.fetchval(reminder, subject)

    def note(text: str, *, status_update: bool) -> AddNote:
        return AddNote(
            source="/t", subject=subject, data=NoteArgs(actor="dana", note=text, status_update=status_update)
        )

    await feed(pool, names, coordinator, note("looking at the bastion's logs", status_update=False))
    update = note("bastion-01 is isolated; the stolen key is revoked", status_update=True)
    for _ in range(2):  # delivered twice: heard once
        await feed(pool, names, coordinator, update)
    sent = [
        notifications.parse_key(key)
        for key in await pool.fetchval("SELECT array_agg(key ORDER BY id) FROM effects WHERE subject = $1", subject)
    ]
    told = sorted(k.recipient for k in sent if k.kind == "status_update")
    commander = await pool.fetchval("SELECT commander FROM coordinator_incidents WHERE incident_id = $1", subject)
    # Once each: the commander, the scribe, and the members of the group leadership (no address of its own).
    assert told == sorted({commander, "bob@example.com", "carol@example.com"})
    saying = "SELECT count(*) FROM effects WHERE subject = $1 AND payload::text LIKE $2"
    assert await pool.fetchval(saying, subject, "%the stolen key is revoked%") == len(told)
    # The note alone told nobody; the next reminder is counted from the update.
    assert await pool.fetchval(saying, subject, "%the bastion's logs%") == 0
    assert await pool.fetchval(reminder, subject) > due_before


async def test_two_coordinators_given_the_same_incident_at_once_page_once(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    notices = notifications.parse_notifications(
        NOTIFY.replace("URL", "http://127.0.0.1:9/page"),
        source="test",
        base_dir=Path("."),
        environ={"HOOK_SECRET": SECRET},
    )
    first, second = Coordinator(load_oncall(), notices=notices), Coordinator(load_oncall(), notices=notices)
    detected = IncidentDetected(source="/vigil/detector", subject="inc-twice", data=snapshot())
    # Both replicas read the same event (a rebalance redelivered it) and handle it at the same moment.
    await asyncio.gather(*(feed(pool, names, c, detected) for c in (first, second, first)))
    keys = await pool.fetchval("SELECT array_agg(key) FROM effects WHERE subject = 'inc-twice'")
    assert len(keys) == 1 and ":escalation:step-0:webhook:" in keys[0]
    escalated = [e for e in await emitted(pool) if isinstance(e, IncidentEscalated) and e.subject == "inc-twice"]
    assert len(escalated) == 1


TWO_ACKNOWLEDGEMENTS = (
    "policies: [{name: two, acknowledgements: 2, steps: [{notify: on_call}, {notify: next_on_call, after: 5m}], "
    "fallback: {after: 5m, notify: [leads]}}]"
)


async def test_a_policy_that_asks_for_two_acknowledgements_keeps_paging_until_a_second_person_answers(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall(), escalation_=escalation.parse_escalation(TWO_ACKNOWLEDGEMENTS))
    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject="inc-2", data=snapshot()))

    async def ack(actor: str) -> None:
        command = AcknowledgeIncident(source="/t", subject="inc-2", data=CommandArgs(actor=actor))
        await feed(pool, names, coordinator, command)

    async def state() -> tuple[str, list[str]]:
        row = await pool.fetchrow("SELECT state, acks FROM coordinator_incidents WHERE incident_id = 'inc-2'")
        assert row is not None
        return row["state"], row["acks"]

    await ack("alice@example.com")
    await ack("alice@example.com")  # the same person twice counts once
    assert await state() == ("detected", ["alice@example.com"])
    pending = "SELECT count(*) FROM timers WHERE kind = 'ack-deadline' AND fired_at IS NULL AND cancelled_at IS NULL"
    assert await pool.fetchval(pending) == 1  # the chain goes on
    await ack("bob@example.com")
    assert (await state())[0] == "acknowledged"
    assert await pool.fetchval(pending) == 0


async def test_no_other_command_stops_the_paging_before_as_many_people_as_the_policy_wants_are_on_it(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall(), escalation_=escalation.parse_escalation(TWO_ACKNOWLEDGEMENTS))
    pending = (
        "SELECT count(*) FROM timers WHERE kind = 'ack-deadline' AND subject = $1"
        " AND fired_at IS NULL AND cancelled_at IS NULL"
    )

    async def command(incident: str, actor: str, to_state: str | None = None) -> tuple[str, list[str]]:
        if to_state is None:
            sent: AcknowledgeIncident | ChangeState = AcknowledgeIncident(
                source="/t", subject=incident, data=CommandArgs(actor=actor)
            )
        else:
            sent = ChangeState(source="/t", subject=incident, data=StateCommand(actor=actor, to_state=to_state))
        await feed(pool, names, coordinator, sent)
        row = await pool.fetchrow("SELECT state, acks FROM coordinator_incidents WHERE incident_id = $1", incident)
        assert row is not None
        return row["state"], row["acks"]

    for incident in ("inc-cs", "inc-tr"):
        await feed(
            pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject=incident, data=snapshot())
        )
    # The generic state change is an acknowledgement like any other: one person's is not enough.
    assert await command("inc-cs", "alice", "acknowledged") == ("detected", ["alice"])
    assert await pool.fetchval(pending, "inc-cs") == 1
    # Triage moves it on and counts its actor, but the paging goes on until a second person is on it.
    assert await command("inc-tr", "alice", "triaged") == ("triaged", ["alice"])
    assert await command("inc-tr", "alice") == ("triaged", ["alice"])
    assert await pool.fetchval(pending, "inc-tr") == 1
    assert await command("inc-tr", "bob") == ("acknowledged", ["alice", "bob"])
    assert await pool.fetchval(pending, "inc-tr") == 0


async def test_a_second_acknowledgement_counts_after_the_first_person_moved_the_incident_on(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    """Triaged and investigated by one person: a second person's acknowledgement still counts, and stops the paging."""
    coordinator = Coordinator(load_oncall(), escalation_=escalation.parse_escalation(TWO_ACKNOWLEDGEMENTS))
    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject="inc-on", data=snapshot()))
    pending = (
        "SELECT count(*) FROM timers WHERE kind = 'ack-deadline' AND subject = 'inc-on'"
        " AND fired_at IS NULL AND cancelled_at IS NULL"
    )
    for to_state in ("triaged", "investigating"):
        moved = ChangeState(source="/t", subject="inc-on", data=StateCommand(actor="alice", to_state=to_state))
        await feed(pool, names, coordinator, moved)
    row = await pool.fetchrow("SELECT state, acks FROM coordinator_incidents WHERE incident_id = 'inc-on'")
    assert row is not None and (row["state"], row["acks"]) == ("investigating", ["alice"])
    assert await pool.fetchval(pending) == 1  # one person on it: the chain goes on
    for actor in ("alice", "bob"):
        await feed(
            pool, names, coordinator, AcknowledgeIncident(source="/t", subject="inc-on", data=CommandArgs(actor=actor))
        )
    row = await pool.fetchrow("SELECT state, acks FROM coordinator_incidents WHERE incident_id = 'inc-on'")
    assert row is not None and (row["state"], row["acks"]) == ("investigating", ["alice", "bob"])
    assert await pool.fetchval(pending) == 0
    rejected = [e for e in await emitted(pool) if isinstance(e, CommandRejected) and e.subject == "inc-on"]
    assert rejected == []
    # Enough people on it: a further acknowledgement is a move the lifecycle refuses, as before.
    await feed(
        pool, names, coordinator, AcknowledgeIncident(source="/t", subject="inc-on", data=CommandArgs(actor="carol"))
    )
    rejected = [e for e in await emitted(pool) if isinstance(e, CommandRejected) and e.subject == "inc-on"]
    assert len(rejected) == 1


async def test_an_impact_recommendation_raises_the_severity_unless_a_person_set_it(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall())
    for incident in ("inc-imp", "inc-held"):
        detected = IncidentDetected(source="/vigil/detector", subject=incident, data=snapshot(severity=Severity.SEV3))
        await feed(pool, names, coordinator, detected)
    held = EditIncident(
        source="/t", subject="inc-held", data=IncidentEdit(actor="alice", reason="a test box", severity=Severity.SEV4)
    )
    await feed(pool, names, coordinator, held)
    recommended = analysis(
        severity=Severity.SEV3,
        affected_hosts=["db-1"],
        summary="db-1 touched",
        severity_recommendation=SeverityRecommendation(severity=Severity.SEV1, reasons=["db-1 is a crown jewel"]),
    )
    for incident in ("inc-imp", "inc-held"):
        await feed(
            pool, names, coordinator, IncidentAnalyzed(source="/vigil/analyzer", subject=incident, data=recommended)
        )
    rows = await pool.fetch("SELECT incident_id, severity FROM coordinator_incidents WHERE incident_id LIKE 'inc-%'")
    severities = {r["incident_id"]: r["severity"] for r in rows}
    assert (severities["inc-imp"], severities["inc-held"]) == ("SEV1", "SEV4")
    events = await emitted(pool)
    raised = [e for e in events if isinstance(e, IncidentEscalated) and e.subject == "inc-imp"][-1]
    assert raised.data.reason == "severity raised from SEV3 to SEV1 by impact: db-1 is a crown jewel"
    [offer] = [e for e in events if isinstance(e, ChangeOffered) and e.subject == "inc-held"]
    assert (offer.data.by, offer.data.offered) == ("analyzer", "SEV1")


async def test_tasks_a_raised_severity_adds_to_a_phase_begun_already_are_due_from_now(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall())
    sev3 = snapshot(type=IncidentType.SECURITY_BREACH, severity=Severity.SEV3)
    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject="inc-up", data=sev3))
    await feed(
        pool, names, coordinator, AcknowledgeIncident(source="/t", subject="inc-up", data=CommandArgs(actor="al"))
    )
    investigate = ChangeState(source="/t", subject="inc-up", data=StateCommand(actor="al", to_state="investigating"))
    await feed(pool, names, coordinator, investigate)
    # The detector raises it to SEV2 while it is investigated: the runbook adds SEV2's investigation tasks.
    sev2 = sev3.model_copy(update={"severity": Severity.SEV2})
    raised = IncidentUpdated(source="/vigil/detector", subject="inc-up", time=datetime.now(UTC), data=sev2)
    await feed(pool, names, coordinator, raised)
    rows = await pool.fetch(
        "SELECT template_id, due_at FROM coordinator_tasks WHERE incident_id = 'inc-up' AND phase = 'investigation'"
    )
    added = {r["template_id"]: r["due_at"] for r in rows if r["template_id"] in ("attribution", "hunt-similar")}
    assert set(added) == {"attribution", "hunt-similar"}
    assert all(due is not None and due > raised.time for due in added.values())
    timers = await pool.fetchval(
        "SELECT count(*) FROM timers WHERE kind = 'task_due' AND fired_at IS NULL AND cancelled_at IS NULL"
    )
    assert timers >= 2


async def test_tasks_a_raised_severity_adds_go_to_who_holds_their_role_already(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall())
    sev3 = snapshot(type=IncidentType.SECURITY_BREACH, severity=Severity.SEV3)
    await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject="inc-roles", data=sev3))
    for role, person in (("scribe", "sam@example.com"), ("communications", "cara@example.com")):
        assign = AssignRole(source="/t", subject="inc-roles", data=Assignment(actor="al", person=person, role=role))
        await feed(pool, names, coordinator, assign)
    sev2 = sev3.model_copy(update={"severity": Severity.SEV2})
    await feed(pool, names, coordinator, IncidentUpdated(source="/vigil/detector", subject="inc-roles", data=sev2))
    owners = {
        r["template_id"]: (r["owner"], r["owner_role"])
        for r in await pool.fetch(
            "SELECT template_id, owner, owner_role FROM coordinator_tasks WHERE incident_id = $1", "inc-roles"
        )
    }
    assert owners["keep-timeline"] == ("sam@example.com", "scribe")
    assert owners["first-update"] == ("cara@example.com", "communications")


# Incidents of the payments services (or of billing, as an analysis finds it) want two people on them, and page the
# next one after a minute; the others after an hour.
PAYMENTS_POLICIES = (
    "policies:\n"
    "  - {name: payments, when: {services: ['payments-*', 'billing']}, acknowledgements: 2,\n"
    "     steps: [{notify: on_call}, {notify: next_on_call, after: 1m}], fallback: {after: 1m, notify: [leads]}}\n"
    "  - {name: default, steps: [{notify: on_call}, {notify: next_on_call, after: 60m}],\n"
    "     fallback: {after: 60m, notify: [leads]}}\n"
)


def service_alert(key: str, service: str | None) -> AlertSummary:
    """An Alertmanager alert about ``service`` (its `service` label), or about none."""
    labels = {"service": service} if service else {}
    return AlertSummary(key=key, source="alertmanager", title="Errors", severity="high", time=T0, labels=labels)


async def test_an_incident_goes_to_the_schedule_and_policy_of_the_services_its_alerts_and_analysis_name(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    """A route and a policy on `services` match the `service` label of the incident's alerts, then its analysis'."""
    payments = schedules.Route("operations", types=frozenset(), severities=frozenset(), services=("payments-*",))
    oncall = replace(load_oncall(), routes=(payments, *load_oncall().routes))
    coordinator = Coordinator(oncall, escalation_=escalation.parse_escalation(PAYMENTS_POLICIES))
    labelled, plain = service_alert("am:1", "payments-api"), service_alert("am:2", None)
    for incident, alerts in (("inc-pay", [labelled]), ("inc-web", [plain]), ("inc-bill", [plain])):
        detected = IncidentDetected(source="/vigil/detector", subject=incident, data=snapshot(new_alerts=alerts))
        await feed(pool, names, coordinator, detected)
    rows = {
        r["incident_id"]: r
        for r in await pool.fetch("SELECT incident_id, rotation, commander, services FROM coordinator_incidents")
    }
    assert (rows["inc-pay"]["rotation"], rows["inc-pay"]["services"]) == ("operations", ["payments-api"])
    assert rows["inc-pay"]["commander"] in ("dave@example.com", "erin@example.com")
    assert (rows["inc-web"]["rotation"], rows["inc-web"]["services"]) == ("security", [])

    async def acknowledged_by(incident: str, actor: str) -> str:
        command = AcknowledgeIncident(source="/t", subject=incident, data=CommandArgs(actor=actor))
        await feed(pool, names, coordinator, command)
        return str(await pool.fetchval("SELECT state FROM coordinator_incidents WHERE incident_id = $1", incident))

    # The payments policy wants two people on it; the default one.
    assert await acknowledged_by("inc-pay", "dave@example.com") == "detected"
    assert await acknowledged_by("inc-web", "alice@example.com") == "acknowledged"
    # A service the analysis finds later chooses the policy from then on.
    found = analysis(summary="billing touched", impact=Impact(business_services=["billing"]))
    await feed(pool, names, coordinator, IncidentAnalyzed(source="/vigil/analyzer", subject="inc-bill", data=found))
    assert await pool.fetchval("SELECT services FROM coordinator_incidents WHERE incident_id = 'inc-bill'") == [
        "billing"
    ]
    assert await acknowledged_by("inc-bill", "alice@example.com") == "detected"


async def test_a_severity_raised_by_alerts_that_name_a_service_is_paged_by_that_services_policy(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall(), escalation_=escalation.parse_escalation(PAYMENTS_POLICIES))
    detected = IncidentDetected(source="/vigil/detector", subject="inc-up", data=snapshot(severity=Severity.SEV3))
    await feed(pool, names, coordinator, detected)
    labelled = AlertSummary(
        key="am:9",
        source="alertmanager",
        title="Errors",
        severity="critical",
        time=T0,
        labels={"service": "payments-db"},
    )
    raised = snapshot(severity=Severity.SEV1, new_alerts=[labelled])
    await feed(pool, names, coordinator, IncidentUpdated(source="/vigil/detector", subject="inc-up", data=raised))
    due = await pool.fetchval(
        """SELECT due_at - now() FROM timers WHERE kind = 'ack-deadline' AND subject = 'inc-up'
           AND fired_at IS NULL AND cancelled_at IS NULL"""
    )
    assert due is not None and due <= timedelta(minutes=1), due  # the payments policy's wait, not the default's
