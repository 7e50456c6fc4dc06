"""The reporter keeps every event it consumes as history, known type or not, and derives the timeline,
the milestones and the actions from it: against the real broker and Postgres."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from services.detector.domain import summarise
from services.reporter import handlers as reporter
from services.reporter import repository
from services.reporter.queries import IncidentFilter
from services.reporter.timeline import render
from shared import cloudevents
from shared.consumer import HandlerContext, Inbound
from shared.db import create_pool, migrate, migration_files
from shared.events import (
    EventBase,
    FieldChange,
    IncidentDetected,
    IncidentEdited,
    IncidentEdits,
    IncidentState,
    IncidentStateChanged,
    IncidentUpdated,
    OpenedTask,
    ResponseStepChanged,
    ResponseStepsChanged,
    StateChange,
    StepChange,
    StepChanges,
    TaskCompleted,
    TaskDone,
    TasksCancelled,
    TasksCreated,
    TasksDropped,
    TasksOpened,
)
from shared.settings import VigilSettings
from shared.topics import COORDINATION, EVENTS_DLQ, INCIDENTS, RESPONSES, TopicNames
from tests.factories import T0, alert, snapshot
from tests.helpers import consume_loop, empty_database, eventually, produce, read_all

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

INCIDENT = "inc-history-1"


def _state(minutes: int, to_state: IncidentState, actor: str = "alice", **extra: str) -> IncidentStateChanged:
    return IncidentStateChanged(
        source="/vigil/coordinator",
        subject=INCIDENT,
        time=T0 + timedelta(minutes=minutes),
        data=StateChange(from_state=None, to_state=to_state, actor=actor, **extra),  # type: ignore[arg-type]
    )


def _step(minutes: int, state: str, actor: str, **extra: object) -> ResponseStepChanged:
    change = StepChange.model_validate(
        {
            "step_id": "s-1",
            "plan_id": "p-1",
            "step": "block",
            "phase": "containment",
            "name": "Block the address",
            "item": "203.0.113.9",
            "connector": "firewall",
            "action": "block_ip",
            "from_state": None,
            "state": state,
            "actor": actor,
            "on_failure": "stop",
            **extra,
        }
    )
    return ResponseStepChanged(
        source="/vigil/responder", subject=INCIDENT, time=T0 + timedelta(minutes=minutes), data=change
    )


def _record(event: EventBase) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    record = cloudevents.encode(event)
    return record.key, record.value, record.headers


def _unknown(minutes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """An event of a type a newer coordinator publishes and this version has no model for."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"merge-1"),
        ("ce_type", b"vigil.incident.archived.v1"),
        ("ce_source", b"/vigil/coordinator"),
        ("ce_subject", INCIDENT.encode()),
        ("ce_time", (T0 + timedelta(minutes=minutes)).isoformat().encode()),
    ]
    body = {"into": INCIDENT, "merged": "inc-history-2", "actor": "bob", "validated": True, "step_id": "s-1"}
    return INCIDENT.encode(), json.dumps(body).encode(), headers


async def test_every_event_lands_as_history_and_on_the_timeline(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    detected = IncidentDetected(
        source="/vigil/detector",
        subject=INCIDENT,
        time=T0 + timedelta(seconds=40),
        data=snapshot(
            alert_count=1,
            new_alerts=[
                {
                    "key": "k-1",
                    "source": "falco",
                    "title": "Reverse shell",
                    "severity": "critical",
                    "time": T0,
                    "rule": "reverse-shell",
                }
            ],
        ),
    )
    coordination = [
        _state(2, IncidentState.ACKNOWLEDGED),
        _state(30, IncidentState.CONTAINED),
        _state(45, IncidentState.RESOLVED, note="blocked and verified", resolution="fixed"),
    ]
    # One approval's changes as the responder publishes them now (one event), then one as an earlier one did.
    approved, running = _step(10, "approved", "alice").data, _step(10, "running", "responder").data
    steps: list[EventBase] = [
        ResponseStepsChanged(
            source="/vigil/responder",
            subject=INCIDENT,
            time=T0 + timedelta(minutes=10),
            data=StepChanges(changes=[approved, running]),
        ),
        _step(13, "succeeded", "responder", result={"blocked": True}),
    ]
    await produce(settings, names(INCIDENTS), [_record(detected), _record(detected)])  # the second: a redelivery
    await produce(settings, names(RESPONSES), [_record(e) for e in steps])
    await produce(settings, names(COORDINATION), [*(_record(e) for e in coordination), _unknown(50)])

    async with consume_loop(
        settings,
        pool,
        service="reporter",
        topics=[names(INCIDENTS), names(RESPONSES), names(COORDINATION)],
        decoder=reporter.decode,
        handler=reporter.handle,
    ):
        await eventually(lambda: pool.fetchval("SELECT count(*) = 7 FROM reporter_history"))
        await eventually(lambda: pool.fetchval("SELECT count(*) FROM reporter_actions WHERE state = 'succeeded'"))

    async with pool.acquire() as conn:
        history = await repository.list_history(conn, incident_id=INCIDENT)
        timeline = await repository.list_timeline(conn, incident_id=INCIDENT)
        incident = await repository.get_incident(conn, incident_id=INCIDENT)
        [action] = await repository.list_actions(conn, incident_id=INCIDENT)

    assert [h.type for h in history][-1] == "vigil.incident.archived.v1"
    assert history[-1].data["merged"] == "inc-history-2"
    assert [(t["actor"], t["summary"]) for t in timeline] == [(render(h).actor, render(h).summary) for h in history]
    lines = [(t["time"] - T0, t["actor"], t["summary"]) for t in timeline]
    assert lines[0][1:] == ("detector", lines[0][2]) and "detected: Reverse shell spawned" in lines[0][2]
    assert (timedelta(minutes=2), "alice", "state new -> acknowledged") in lines
    assert (timedelta(minutes=45), "alice", "state new -> resolved (fixed): blocked and verified") in lines
    assert (timedelta(minutes=13), "responder", "step 'Block the address: 203.0.113.9' succeeded") in lines
    assert (
        timedelta(minutes=10),
        "alice, responder",
        "2 steps changed: 1 approved ('Block the address: 203.0.113.9'); 1 running ('Block the address: 203.0.113.9')",
    ) in lines
    assert lines[-1] == (
        timedelta(minutes=50),
        "bob",
        "incident archived: into=inc-history-1, merged=inc-history-2, step_id=s-1, validated=True",
    )

    assert incident is not None
    assert (incident["state"], incident["resolution"]) == ("resolved", "fixed")
    assert (incident["sources"], incident["rules"]) == (["falco"], ["reverse-shell"])
    assert incident["first_alert_at"] == T0
    assert incident["detected_at"] == T0 + timedelta(seconds=40)
    assert incident["acknowledged_at"] == T0 + timedelta(minutes=2)
    assert incident["contained_at"] == T0 + timedelta(minutes=30)
    assert incident["resolved_at"] == T0 + timedelta(minutes=45)
    assert incident["recovered_at"] is None

    assert (action["approved_by"], action["approved_at"]) == ("alice", T0 + timedelta(minutes=10))
    assert (action["state"], action["executed_at"], action["succeeded"]) == (
        "succeeded",
        T0 + timedelta(minutes=13),
        True,
    )
    assert action["validated"] is True


async def test_an_unknown_event_postgres_cannot_store_is_dead_lettered_and_the_reporter_goes_on(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """A lone surrogate in its body, or a time before year 1 in UTC: refused with a reason, not a crash of
    the reporter at every restart on the same record."""

    def poison(event_id: str, body: bytes, time: str) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        key, _, headers = _unknown(0)
        headers = [(n, v) for n, v in headers if n not in ("ce_id", "ce_time")]
        return key, body, [*headers, ("ce_id", event_id.encode()), ("ce_time", time.encode())]

    after = _state(60, IncidentState.ACKNOWLEDGED)
    await produce(
        settings,
        names(COORDINATION),
        [
            poison("bad-text", b'{"reason": "bad \\ud800 text"}', "2026-11-24T09:00:00Z"),
            poison("bad-time", b'{"reason": "ok"}', "0001-01-01T00:00:00+01:00"),
            _record(after),
        ],
    )
    async with consume_loop(
        settings,
        pool,
        service="reporter",
        topics=[names(COORDINATION)],
        decoder=reporter.decode,
        handler=reporter.handle,
    ):
        await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM reporter_history"))

    assert await pool.fetchval("SELECT event_id FROM reporter_history") == after.id
    dead = await read_all(settings, names(EVENTS_DLQ), expect=2)
    reasons = {dict(d.headers)["ce_id"]: dict(d.headers)["vigil_dlq_reason"].decode() for d in dead}
    assert reasons.keys() == {b"bad-text", b"bad-time"}
    assert reasons[b"bad-text"].startswith("vigil.incident.archived.v1: body is not JSON")
    assert reasons[b"bad-time"] == "vigil.incident.archived.v1: time '0001-01-01T00:00:00+01:00' is out of range"


async def test_a_timeline_is_rendered_again_from_history(pool: asyncpg.Pool) -> None:
    event = _state(5, IncidentState.ACKNOWLEDGED, actor="dave")
    history = reporter.history_of(event)
    async with pool.acquire() as conn:
        await repository.add_history(conn, events=[history], entries=[render(history)])
        await conn.execute(
            "UPDATE reporter_timeline SET actor = 'someone', summary = 'stale' WHERE event_id = $1", event.id
        )
        rendered = await repository.rebuild_timeline(conn, render=render, page=1)
        [line] = await repository.list_timeline(conn, incident_id=INCIDENT)
    assert rendered == 1
    assert (line["actor"], line["summary"]) == ("dave", "state new -> acknowledged")


async def test_an_older_database_s_timeline_becomes_history(postgres_admin_url: str) -> None:
    """Upgrading: the lines the timeline held before history existed are kept, as history too."""
    async with empty_database(postgres_admin_url) as url:
        pool = await create_pool(url, max_size=1)
        try:
            async with pool.acquire() as conn:
                # The database as the version before history left it.
                await conn.execute(
                    "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                for version, name, sql in migration_files():
                    if version < 25:
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
                await conn.execute(
                    """INSERT INTO reporter_incidents (id, title, type, severity, created_at, detected_at)
                       VALUES ('inc-old', 'Old ransomware case', 'data_leak', 'SEV2', $1, $1)""",
                    T0,
                )
                await conn.execute(
                    """INSERT INTO reporter_alerts (key, incident_id, body, time)
                       VALUES ('k-1', 'inc-old', '{"source": "wazuh"}'::jsonb, $1)""",
                    T0,
                )
                await conn.execute(
                    """INSERT INTO reporter_timeline (event_id, incident_id, time, type, actor, summary, data)
                       VALUES ('e-old', 'inc-old', $1, 'vigil.note.added.v0', 'alice', 'note: call legal',
                               '{"note": "call legal"}'::jsonb)""",
                    T0,
                )
            applied = await migrate(pool)
            assert applied[0] == "0025_reporter_history.sql"
            async with pool.acquire() as conn:
                [kept] = await repository.list_history(conn, incident_id="inc-old")
                [line] = await repository.list_timeline(conn, incident_id="inc-old")
                incident = await repository.get_incident(conn, incident_id="inc-old")
                [found], _ = await repository.list_incidents(conn, filters=IncidentFilter(text="ransomware"))
        finally:
            await pool.close()
    assert (kept.id, kept.source, kept.data) == ("e-old", "/vigil/alice", {"note": "call legal"})
    assert (line["actor"], line["summary"]) == ("alice", "note: call legal")
    assert incident is not None
    assert (incident["first_alert_at"], incident["sources"]) == (T0, ["wazuh"])
    assert found["id"] == "inc-old"


async def test_post_mortem_tasks_not_done_are_the_open_follow_ups_whatever_the_order_of_their_events(
    pool: asyncpg.Pool,
) -> None:
    def made(*ids: int) -> TasksCreated:
        tasks = [
            OpenedTask(task_id=n, phase=phase, title=f"task {n}", owner="alice", required=n == 1, due_at=due)
            for n, phase, due in [(1, "post_mortem", T0 + timedelta(days=5)), (2, "post_mortem", None),
                                  (3, "post_mortem", T0 + timedelta(days=1)), (4, "triage", None)]
            if n in ids
        ]  # fmt: skip
        return TasksCreated(source="/vigil/coordinator", subject="inc-f", time=T0, data=TasksOpened(tasks=tasks))

    done = TaskCompleted(
        source="/vigil/coordinator",
        subject="inc-f",
        time=T0 + timedelta(hours=1),
        data=TaskDone(task_id=2, phase="post_mortem", title="task 2", actor="bob", required=False),
    )
    dropped = TasksCancelled(
        source="/vigil/coordinator",
        subject="inc-f",
        time=T0 + timedelta(hours=2),
        data=TasksDropped(task_ids=[3], actor="carol", reason="resolved as duplicate"),
    )
    detected = IncidentDetected(source="/vigil/detector", subject="inc-f", time=T0, data=snapshot())
    # Done and cancelled arrive before the tasks' creation, which must not reopen them.
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=TopicNames(""))
        await reporter.handle(ctx, [Inbound(event_id=e.id, item=e, record=None) for e in (detected, done, dropped)])
        await reporter.handle(ctx, [Inbound(event_id=e.id, item=e, record=None) for e in (made(1, 2, 3, 4),)])
        open_ones = await repository.list_open_follow_ups(conn, since=None, until=None, phases=("post_mortem",))
        states = {r["task_id"]: r["state"] for r in await conn.fetch("SELECT task_id, state FROM reporter_tasks")}
    assert [t["title"] for t in open_ones] == ["task 1"]
    assert open_ones[0]["owner"] == "alice" and open_ones[0]["due_at"] == T0 + timedelta(days=5)
    assert states == {1: "open", 2: "done", 3: "cancelled", 4: "open"}


async def test_runs_of_incident_events_apply_in_order_around_what_interrupts_them(pool: asyncpg.Pool) -> None:
    """Consecutive incident events are applied as one run: the result is that of applying them one by one."""
    first, second = summarise(alert(host="web-1")), summarise(alert(host="web-2", minutes=1))

    def event(kind: type[IncidentDetected] | type[IncidentUpdated], subject: str, minutes: int, **data: Any) -> Any:
        return kind(
            source="/vigil/detector", subject=subject, time=T0 + timedelta(minutes=minutes), data=snapshot(**data)
        )

    edited = IncidentEdited(
        source="/vigil/coordinator",
        subject="inc-a",
        time=T0 + timedelta(minutes=3),
        data=IncidentEdits(
            actor="alice", reason="clearer", changes={"title": FieldChange(before="a2", after="by hand")}
        ),
    )
    batch = [
        event(IncidentDetected, "inc-a", 0, title="a1", hosts=["web-1"], new_alerts=[first]),
        event(IncidentDetected, "inc-b", 1, title="b1", hosts=["db-1"]),
        event(IncidentUpdated, "inc-a", 2, title="a2", hosts=["web-2"], alert_count=2, new_alerts=[second]),
        edited,  # ends the run: applied after what came before it and before what follows
        event(IncidentUpdated, "inc-a", 4, title="a3", hosts=["web-2"], alert_count=2),
        event(IncidentUpdated, "inc-b", 5, title="b2", hosts=["db-2"], alert_count=3),
    ]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=TopicNames(""))
        await reporter.handle(ctx, [Inbound(event_id=e.id, item=e, record=None) for e in batch])
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM reporter_incidents")}
        alerts = await conn.fetch("SELECT key, incident_id FROM reporter_alerts ORDER BY time")
    a, b = rows["inc-a"], rows["inc-b"]
    assert a["title"] == "by hand" and a["hosts"] == ["web-1", "web-2"] and a["alert_count"] == 2
    assert a["detected_at"] == T0
    assert b["title"] == "b2" and b["hosts"] == ["db-1", "db-2"] and b["alert_count"] == 3
    assert b["detected_at"] == T0 + timedelta(minutes=1)
    assert [(r["key"], r["incident_id"]) for r in alerts] == [(first.key, "inc-a"), (second.key, "inc-a")]


async def test_a_severity_a_person_set_shows_their_reason_whatever_the_detector_says_after(pool: asyncpg.Pool) -> None:
    def detected(kind: type[IncidentDetected] | type[IncidentUpdated], minutes: int, **data: Any) -> Any:
        return kind(
            source="/vigil/detector", subject="inc-s", time=T0 + timedelta(minutes=minutes), data=snapshot(**data)
        )

    edited = IncidentEdited(
        source="/vigil/coordinator",
        subject="inc-s",
        time=T0 + timedelta(minutes=1),
        data=IncidentEdits(
            actor="alice", reason="one lab host", changes={"severity": FieldChange(before="SEV1", after="SEV3")}
        ),
    )
    later = "highest alert severity critical -> SEV1; 5 hosts affected (widespread) -> SEV1"
    batch = [detected(IncidentDetected, 0), edited, detected(IncidentUpdated, 2, severity_reason=later)]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=TopicNames(""))
        await reporter.handle(ctx, [Inbound(event_id=e.id, item=e, record=None) for e in batch])
        row = await conn.fetchrow("SELECT severity, severity_reason, classification_reason FROM reporter_incidents")
    assert row is not None
    assert (row["severity"], row["severity_reason"]) == ("SEV3", "set by alice: one lab host")
    assert row["classification_reason"] == "falco alert mentions 'reverse shell'"  # the type was not edited


async def test_a_reopened_incident_runs_its_clocks_again_and_a_merged_one_is_the_survivors(pool: asyncpg.Pool) -> None:
    def event(subject: str, minutes: int, to_state: IncidentState, **extra: str) -> IncidentStateChanged:
        return IncidentStateChanged(
            source="/vigil/coordinator",
            subject=subject,
            time=T0 + timedelta(minutes=minutes),
            data=StateChange(from_state=None, to_state=to_state, actor="alice", **extra),  # type: ignore[arg-type]
        )

    def detected(subject: str) -> IncidentDetected:
        return IncidentDetected(source="/vigil/detector", subject=subject, time=T0, data=snapshot(title=subject))

    batch: list[EventBase] = [
        detected("inc-kept"),
        detected("inc-dup"),
        event("inc-kept", 5, IncidentState.ACKNOWLEDGED),
        event("inc-kept", 60, IncidentState.RESOLVED, resolution="false_positive"),
        event("inc-kept", 90, IncidentState.ACKNOWLEDGED),  # reopened: it was not a false positive
        event("inc-dup", 360, IncidentState.RESOLVED, resolution="merged"),  # a duplicate, merged 6 h on
    ]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=TopicNames(""))
        await reporter.handle(ctx, [Inbound(event_id=e.id, item=e, record=None) for e in batch])
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM reporter_incidents")}
        times = await repository.list_incident_times(conn)
    kept, dup = rows["inc-kept"], rows["inc-dup"]
    assert (kept["state"], kept["resolution"], kept["resolved_at"]) == ("acknowledged", None, None)
    assert kept["acknowledged_at"] == T0 + timedelta(minutes=5)
    assert (dup["resolution"], dup["acknowledged_at"], dup["resolved_at"]) == (
        "merged",
        None,
        T0 + timedelta(minutes=360),
    )
    # The measures count the reopened incident as open, and the merged one not at all.
    assert [(t.id, t.ended, t.resolution) for t in times] == [("inc-kept", False, None)]

    resolved_again = event("inc-kept", 120, IncidentState.RESOLVED, resolution="fixed")
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=TopicNames(""))
        await reporter.handle(ctx, [Inbound(event_id=resolved_again.id, item=resolved_again, record=None)])
        again = await conn.fetchrow("SELECT resolution, resolved_at FROM reporter_incidents WHERE id = 'inc-kept'")
    assert again is not None and tuple(again) == ("fixed", T0 + timedelta(minutes=120))
