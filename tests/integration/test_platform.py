"""The platform's promises under bad records, newer producers and rebalances, on the real broker and Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI, Header
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from shared import cloudevents, housekeeping
from shared.consumer import DeadLetterGuard, HandlerContext, Inbound, decode_cloudevent, dispatch_each
from shared.db import Conn, connect
from shared.embedded import EmbeddedBroker
from shared.errors import DeadLetterLimitExceeded
from shared.events import Analysis, IncidentAnalyzed, IncidentDetected, IncidentType, Severity
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay, list_parked, write_events
from shared.service import DatabaseProbe, Runtime, build_app
from shared.settings import KafkaSettings, VigilSettings
from shared.timers import (
    CANCEL_MANY,
    MAX_ATTEMPTS,
    SCHEDULE_MANY,
    Timer,
    TimerPoller,
    cancel_many,
    schedule,
    schedule_many,
)
from shared.topics import ANALYSES, EVENTS_DLQ, INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import committed, consume_loop, eventually, produce, read_all, running, serve_app
from vigil import cli as vigil_cli
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def analysed(subject: str, summary: str) -> IncidentAnalyzed:
    return IncidentAnalyzed(
        source="/vigil/analyzer",
        subject=subject,
        data=Analysis(
            type=IncidentType.DATA_LEAK,
            severity=Severity.SEV2,
            title="t",
            indicators=[],
            affected_hosts=[],
            affected_users=[],
            alert_count=1,
            summary=summary,
        ),
    )


def record_of(event: Any) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    encoded = cloudevents.encode(event)
    return encoded.key, encoded.value, encoded.headers


# ---- outbox ---------------------------------------------------------------------------------


async def test_an_oversize_event_is_parked_while_the_next_flows(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = analysed("inc-big", "x" * (2 * 1024 * 1024))  # beyond the producer's 1 MiB max_request_size
    after = analysed("inc-after", "fine")
    async with pool.acquire() as conn, conn.transaction():
        await write_events(conn, service="analyzer", names=names, events=[huge, after])

    producer = make_producer(settings, client_id="oversize")
    await producer.start()
    try:
        relay = OutboxRelay(
            service="analyzer", pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        report = await relay.publish_pending()
        assert (report.sent, report.parked) == (1, 1)
        assert (await relay.publish_pending()).sent == 0  # the parked row is not tried again by itself
    finally:
        await producer.stop()
    records = await read_all(settings, names(ANALYSES), expect=1)
    assert [cloudevents.decode(r.value, r.headers).id for r in records] == [after.id]
    parked = await list_parked(await pool.acquire(), service="analyzer")
    assert [(p.event_id, p.key) for p in parked] == [(huge.id, "inc-big")]
    assert parked[0].error is not None and "MessageSizeTooLarge" in parked[0].error
    assert REGISTRY.get_sample_value("vigil_outbox_parked_total", {"service": "analyzer"})

    # Operators see it and re-queue it.
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    shown = await asyncio.to_thread(CliRunner().invoke, cli, ["outbox", "parked", "--json"])
    assert shown.exit_code == 0, shown.output
    assert [row["event_id"] for row in json.loads(shown.output)] == [huge.id]
    retried = await asyncio.to_thread(CliRunner().invoke, cli, ["outbox", "retry", str(parked[0].id)])
    assert retried.exit_code == 0, retried.output
    assert await pool.fetchval("SELECT parked_at IS NULL AND attempts = 0 FROM outbox WHERE id = $1", parked[0].id)
    missing = await asyncio.to_thread(CliRunner().invoke, cli, ["outbox", "retry", "999999"])
    assert missing.exit_code == 1


async def test_the_outbox_backlog_shows_on_metrics_while_the_broker_hangs(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, tmp_path: Path
) -> None:
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        assert broker._process is not None
        own = settings.model_copy(update={"kafka": KafkaSettings(bootstrap_servers=broker.bootstrap_servers)})
        producer = make_producer(own, client_id="hung")
        await producer.start()
        async with pool.acquire() as conn, conn.transaction():
            await write_events(
                conn, service="reporter", names=names, events=[analysed("inc-h", f"h{n}") for n in range(7)]
            )
        os.kill(broker._process.pid, signal.SIGSTOP)  # what VigilOutboxStuck is for: publishing cannot go on
        relay = OutboxRelay(
            service="reporter", pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        task = asyncio.create_task(relay.run())
        try:

            async def backlog_shown() -> bool:
                return REGISTRY.get_sample_value("vigil_outbox_backlog", {"service": "reporter"}) == 7

            await eventually(backlog_shown, timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            os.kill(broker._process.pid, signal.SIGCONT)
            await producer.stop()


async def test_only_one_relay_publishes_and_a_standby_takes_over(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    producer = make_producer(settings, client_id="relays")
    await producer.start()
    relays = [
        OutboxRelay(
            service="analyzer",
            pool=pool,
            producer=producer,
            connect=lambda: connect(settings.database_url),
            standby_wait_s=0.1,
            idle_wait_s=0.1,
        )
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        events = [analysed("inc-1", f"s{n}") for n in range(10)]  # one key: one partition, in order
        async with pool.acquire() as conn, conn.transaction():
            await write_events(conn, service="analyzer", names=names, events=events)
        records = await read_all(settings, names(ANALYSES), expect=10)
        assert [cloudevents.decode(r.value, r.headers).id for r in records] == [e.id for e in events]
        await eventually(lambda: pool.fetchval("SELECT bool_and(sent_at IS NOT NULL) FROM outbox"))

        # The leader holds the lock on its own connection; no pooled connection is held meanwhile (the
        # check above just used one: asyncpg resets it on release, which may take a moment).
        async def all_idle() -> bool:
            return pool.get_size() == pool.get_idle_size()

        await eventually(all_idle, timeout=5)
        leader_pid = await pool.fetchval(
            """SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND objid = hashtext('outbox:analyzer')::oid"""
        )
        assert leader_pid is not None
        await pool.execute("SELECT pg_terminate_backend($1)", leader_pid)
        more = [analysed("inc-1", f"more {n}") for n in range(3)]
        async with pool.acquire() as conn, conn.transaction():
            await write_events(conn, service="analyzer", names=names, events=more)
        records = await read_all(settings, names(ANALYSES), expect=13)
        assert [cloudevents.decode(r.value, r.headers).id for r in records][10:] == [e.id for e in more]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            assert task.cancelled(), task.exception()
        await producer.stop()


async def test_a_stopping_relay_flushes_what_is_left_unless_another_replica_holds_the_lock(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    producer = make_producer(settings, client_id="flush")
    await producer.start()
    try:
        relay = OutboxRelay(
            service="analyzer", pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        late = analysed("inc-1", "late")
        held = await connect(settings.database_url)
        try:
            assert await held.fetchval("SELECT pg_try_advisory_lock(hashtext('outbox:analyzer'))")
            async with pool.acquire() as conn, conn.transaction():
                await write_events(conn, service="analyzer", names=names, events=[late])
            assert await relay.flush() == 0  # the replica that holds the lock publishes it
        finally:
            await held.close()
        more = [analysed("inc-1", f"later {n}") for n in range(3)]
        async with pool.acquire() as conn, conn.transaction():
            await write_events(conn, service="analyzer", names=names, events=more)
        assert await relay.flush() == 4
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await producer.stop()
    records = await read_all(settings, names(ANALYSES), expect=4)
    read = [cloudevents.decode(r.value, r.headers) for r in records]
    assert [e.id for e in read] == [e.id for e in (late, *more)]


# ---- timers ---------------------------------------------------------------------------------


async def test_a_poisoned_timer_is_parked_while_the_others_fire(pool: asyncpg.Pool, names: TopicNames) -> None:
    fired: list[str] = []

    async def ok(ctx: HandlerContext, timer: Timer) -> None:
        await ctx.conn.execute("INSERT INTO processed_events (service, event_id) VALUES ('t', $1)", timer.subject)
        fired.append(timer.subject)

    async def poisoned(ctx: HandlerContext, timer: Timer) -> None:
        await ctx.conn.execute("INSERT INTO processed_events (service, event_id) VALUES ('t', 'half-done')")
        raise ValueError("this payload can never be handled")

    past = datetime.now(UTC) - timedelta(seconds=1)
    async with pool.acquire() as conn, conn.transaction():
        await schedule(conn, service="svc", kind="poison", subject="p", due_at=past - timedelta(seconds=1))
        for n in range(3):
            await schedule(conn, service="svc", kind="ok", subject=f"ok-{n}", due_at=past)
        await schedule(conn, service="svc", kind="from-a-newer-version", subject="new", due_at=past)

    poller = TimerPoller(service="svc", pool=pool, names=names, handlers={"ok": ok, "poison": poisoned})
    assert await poller.fire_due() == 4
    assert sorted(fired) == ["ok-0", "ok-1", "ok-2"]
    # The poisoned one's writes rolled back with its savepoint; it waits for its next attempt.
    assert not await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = 'half-done'")
    row = await pool.fetchrow("SELECT attempts, last_error, due_at, fired_at FROM timers WHERE kind = 'poison'")
    assert row is not None
    assert row["attempts"] == 1 and "can never be handled" in row["last_error"] and row["fired_at"] is None
    for attempt in range(2, 6):
        await pool.execute("UPDATE timers SET due_at = now() - interval '1 second' WHERE kind = 'poison'")
        assert await poller.fire_due() == 1
        assert await pool.fetchval("SELECT attempts FROM timers WHERE kind = 'poison'") == attempt
    assert await pool.fetchval("SELECT parked_at IS NOT NULL FROM timers WHERE kind = 'poison'")
    await pool.execute("UPDATE timers SET due_at = now() - interval '1 second' WHERE kind = 'poison'")
    assert await poller.fire_due() == 0  # parked: no more attempts
    # A kind this process does not know stays pending for the replica that does.
    assert await pool.fetchval(
        "SELECT fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL FROM timers WHERE kind = $1",
        "from-a-newer-version",
    )
    assert REGISTRY.get_sample_value("vigil_timers_total", {"service": "svc", "kind": "poison", "outcome": "parked"})


async def test_a_poller_whose_due_timers_another_replica_holds_waits_for_them_without_spinning(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    async def never(ctx: HandlerContext, timer: Timer) -> None:
        raise AssertionError("held by the other replica: never fired here")

    async with pool.acquire() as conn:
        await schedule(conn, service="svc", kind="held", subject="s", due_at=datetime.now(UTC) - timedelta(seconds=1))
    passes = 0

    class Counting(TimerPoller):
        async def fire_due(self, limit: int = 100) -> int:
            nonlocal passes
            passes += 1
            return await super().fire_due(limit)

    poller = Counting(service="svc", pool=pool, names=names, handlers={"held": never}, interval_s=1.0)
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT id FROM timers WHERE kind = 'held' FOR UPDATE")  # the other replica's poll
        async with running(poller.run()):
            await asyncio.sleep(1.0)
    assert 1 <= passes <= 6  # a pass every quarter interval, not thousands


async def test_a_timer_whose_subject_is_locked_is_fired_after_the_lock_or_left_if_cancelled_under_it(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    fired: list[str] = []

    async def deadline(ctx: HandlerContext, timer: Timer) -> None:
        await lock_subject(ctx.conn, timer.subject)  # as the handler's own work does
        fired.append(timer.subject)

    async def lock_subject(conn: Conn, subject: str) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('subject:' || $1, 0))", subject)

    past = datetime.now(UTC) - timedelta(seconds=1)
    async with pool.acquire() as conn:
        for subject in ("answered", "late"):
            await schedule(conn, service="svc", kind="deadline", subject=subject, due_at=past)
    poller = TimerPoller(
        service="svc", pool=pool, names=names, handlers={"deadline": deadline}, locks={"deadline": lock_subject}
    )
    # Someone answers in time: they hold the subject's lock, then cancel its timer, as an approval does.
    async with pool.acquire() as answer, answer.transaction():
        await lock_subject(answer, "answered")
        polling = asyncio.create_task(poller.fire_due())
        await asyncio.sleep(0.5)  # the poller waits for the subject, holding no timer's row
        await cancel_many(answer, service="svc", kind="deadline", subjects=["answered"])
    # No deadlock: the poller finds the cancelled timer under the lock and leaves it; the other fires.
    assert await asyncio.wait_for(polling, timeout=30) == 1
    assert fired == ["late"]
    rows = {r["subject"]: r for r in await pool.fetch("SELECT subject, fired_at, cancelled_at FROM timers")}
    assert rows["answered"]["fired_at"] is None and rows["answered"]["cancelled_at"] is not None
    assert rows["late"]["fired_at"] is not None


async def test_a_timer_whose_subject_cannot_be_locked_is_counted_and_parked_while_the_others_fire(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    fired: list[str] = []

    async def deadline(ctx: HandlerContext, timer: Timer) -> None:
        fired.append(timer.subject)

    async def lock_task(conn: Conn, subject: str) -> None:
        # Cast by the server: one that is no number fails there, aborting what the transaction did so far.
        await conn.execute("SELECT 1 FROM timers WHERE id = $1::text::bigint FOR UPDATE", subject)

    past = datetime.now(UTC) - timedelta(seconds=1)
    async with pool.acquire() as conn:
        await schedule(conn, service="svc", kind="deadline", subject="not-a-task", due_at=past - timedelta(seconds=1))
        await schedule(conn, service="svc", kind="deadline", subject="7", due_at=past)
    poller = TimerPoller(
        service="svc", pool=pool, names=names, handlers={"deadline": deadline}, locks={"deadline": lock_task}
    )
    assert await poller.fire_due() == 1
    assert fired == ["7"]
    bad = "SELECT attempts, last_error, parked_at FROM timers WHERE subject = 'not-a-task'"
    row = await pool.fetchrow(bad)
    assert row is not None and row["attempts"] == 1 and "bigint" in row["last_error"]
    for _ in range(MAX_ATTEMPTS - 1):
        await pool.execute("UPDATE timers SET due_at = now() - interval '1 second' WHERE subject = 'not-a-task'")
        assert await poller.fire_due() == 0
    row = await pool.fetchrow(bad)
    assert row is not None and row["attempts"] == MAX_ATTEMPTS and row["parked_at"] is not None


# ---- events from newer producers ------------------------------------------------------------


async def test_an_event_with_unknown_fields_is_handled_and_an_unknown_type_skipped(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await pool.execute("CREATE TABLE handled (event_id text, title text)")
    newer = IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot(title="from a newer detector"))
    key, value, headers = record_of(newer)
    body = json.loads(value)
    body["merge_candidates"] = ["inc-7"]  # a field this version does not know
    unknown_type = [(n, b"vigil.incident.archived.v1" if n == "ce_type" else v) for n, v in headers]
    unknown_type = [(n, b"other-id" if n == "ce_id" else v) for n, v in unknown_type]
    topic = names(INCIDENTS)
    await produce(
        settings,
        topic,
        [(key, b"{}", unknown_type), (key, json.dumps(body).encode(), [*headers, ("ce_traceparent", b"00-1")])],
    )

    async def on_detected(ctx: HandlerContext, event: IncidentDetected) -> None:
        await ctx.conn.execute("INSERT INTO handled VALUES ($1, $2)", event.id, event.data.title)

    handler = dispatch_each({IncidentDetected: on_detected})
    async with consume_loop(
        settings, pool, service="t-compat", topics=[topic], decoder=decode_cloudevent, handler=handler
    ):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t-compat"), topic), 2))
    assert [tuple(r) for r in await pool.fetch("SELECT event_id, title FROM handled")] == [
        (newer.id, "from a newer detector")
    ]
    assert not await read_all(settings, names(EVENTS_DLQ), expect=1, timeout=2)
    skipped = REGISTRY.get_sample_value("vigil_events_handled_total", {"service": "t-compat", "outcome": "skipped"})
    assert skipped == 1


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


# ---- the dead-letter guard ------------------------------------------------------------------


async def test_a_restart_loop_cannot_drain_a_topic_into_the_dead_letter_queue(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = names(INCIDENTS)
    garbage = [(b"k", b"not an event", [("ce_specversion", b"1.0")]) for _ in range(60)]
    await produce(settings, topic, garbage)

    async def nothing(_ctx: HandlerContext, _batch: Sequence[Inbound[Any]]) -> None:
        return None

    for _restart in range(2):
        guard = DeadLetterGuard(ratio=0.5, window=20)
        async with consume_loop(
            settings,
            pool,
            service="t-guard",
            topics=[topic],
            decoder=decode_cloudevent,
            handler=nothing,
            guard=guard,
            crashes_with=DeadLetterLimitExceeded,
        ) as (_loop, task):
            with pytest.raises(DeadLetterLimitExceeded):
                await asyncio.wait_for(task, 30)
    # The first run trips on its first batch; every restart trips again at once, with nothing sent.
    assert not await read_all(settings, names(EVENTS_DLQ), expect=1, timeout=2)
    assert await committed(settings, group_id(settings, "t-guard"), topic) is None


async def test_the_guard_counts_each_rejection_once_and_remembers_across_restarts(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = names(INCIDENTS)
    good = [record_of(IncidentDetected(source="/x", subject=f"g{n}", data=snapshot())) for n in range(12)]
    bad = [(b"k", b"not an event", [("ce_specversion", b"1.0")]) for _ in range(8)]
    await produce(settings, topic, good + bad)

    async def nothing(_ctx: HandlerContext, _batch: Sequence[Inbound[Any]]) -> None:
        return None

    async with consume_loop(
        settings,
        pool,
        service="t-guard2",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=nothing,
        guard=DeadLetterGuard(ratio=0.5, window=20),
    ):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t-guard2"), topic), 20))
    assert await pool.fetchval("SELECT verdicts FROM consumer_guards WHERE service = 't-guard2'") == "0" * 12 + "1" * 8
    assert len(await read_all(settings, names(EVENTS_DLQ), expect=8)) == 8

    # After a restart, three more dead letters tip the remembered window over half.
    await produce(settings, topic, bad[:3])
    async with consume_loop(
        settings,
        pool,
        service="t-guard2",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=nothing,
        guard=DeadLetterGuard(ratio=0.5, window=20),
        crashes_with=DeadLetterLimitExceeded,
    ) as (_loop, task):
        with pytest.raises(DeadLetterLimitExceeded, match="11 of the last 20"):
            await asyncio.wait_for(task, 30)


# ---- rebalances -----------------------------------------------------------------------------


async def test_a_rebalance_waits_for_the_batch_in_hand(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = names(INCIDENTS)
    spans: list[tuple[str, int, float, float]] = []  # member, partition, start, end
    await pool.execute("CREATE TABLE handled (event_id text PRIMARY KEY)")

    def member_handler(member: str) -> Any:
        async def handle(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
            started = time.monotonic()
            await ctx.conn.executemany("INSERT INTO handled VALUES ($1)", [(i.event_id,) for i in batch])
            await asyncio.sleep(0.3)  # a slow batch: wide open to a rebalance
            ended = time.monotonic()
            for partition in {i.record.partition for i in batch}:
                spans.append((member, partition, started, ended))

        return handle

    stop = asyncio.Event()
    producing = asyncio.create_task(_trickle(settings, topic, stop))
    async with consume_loop(
        settings, pool, service="t-rebalance", topics=[topic], decoder=decode_cloudevent, handler=member_handler("a")
    ):
        await eventually(lambda: _any(spans))
        async with consume_loop(
            settings,
            pool,
            service="t-rebalance",
            topics=[topic],
            decoder=decode_cloudevent,
            handler=member_handler("b"),
        ):
            await eventually(lambda: _any([m for m, *_ in spans if m == "b"]), timeout=60)
            stop.set()
            produced = await producing
            await eventually(lambda: pool.fetchval("SELECT count(*) = $1 FROM handled", produced), timeout=60)

    # No partition was ever in the hands of two members at once.
    for a_member, partition, a_start, a_end in spans:
        for b_member, other, b_start, b_end in spans:
            if a_member != b_member and partition == other:
                assert a_end <= b_start or b_end <= a_start, f"partition {partition} handled by both at once"


async def _any(items: list[Any]) -> bool:
    return bool(items)


async def _trickle(settings: VigilSettings, topic: str, stop: asyncio.Event, most: int = 5000) -> int:
    """Publish events over all partitions until told to stop; return how many."""
    producer = make_producer(settings, client_id="trickle")
    await producer.start()
    sent = 0
    try:
        while not stop.is_set() and sent < most:
            for _ in range(12):
                event = IncidentDetected(source="/x", subject=f"inc-{sent}", data=snapshot())
                key, value, headers = record_of(event)
                await producer.send(topic, key=key, value=value, headers=headers)
                sent += 1
            await producer.flush()
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()
    return sent


# ---- readiness ------------------------------------------------------------------------------


async def test_readiness_answers_while_every_pooled_connection_is_busy(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    probe = DatabaseProbe(settings.database_url)
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=names, probe=probe)  # type: ignore[arg-type]
    app = build_app(runtime, [])
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vigil") as client:
            response = await asyncio.wait_for(client.get("/readyz"), 30)
        assert response.status_code == 200
        assert response.json()["checks"]["database"] is True
    finally:
        for conn in held:
            await pool.release(conn)
        await probe.close()


async def test_a_body_holding_nul_is_refused_before_any_route_and_any_other_reaches_its_route_whole(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    received: list[dict[str, Any]] = []
    router = APIRouter()

    @router.post("/api/v1/notes")
    async def note(body: dict[str, Any]) -> dict[str, str]:
        received.append(body)  # a route that passes text on, storing none of it itself
        return {"status": "ok"}

    runtime = Runtime(service="coordinator", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, [router])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vigil") as client:
        refused = await client.post("/api/v1/notes", json={"note": "x\u0000y"})
        passed = await client.post("/api/v1/notes", json={"note": "x" * 50_000})
    assert refused.status_code == 422 and "NUL character" in refused.json()["detail"]
    assert passed.status_code == 200
    assert received == [{"note": "x" * 50_000}]


async def test_a_request_postgres_undoes_for_a_deadlock_is_answered_503_to_be_sent_again(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    first, second = 7_340_001, 7_340_002  # advisory locks no other code takes
    router = APIRouter()

    @router.post("/api/v1/moves")
    async def move() -> dict[str, str]:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", first)
            await conn.execute("SELECT pg_advisory_xact_lock($1)", second)
        return {"status": "ok"}

    runtime = Runtime(service="responder", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, [router])
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vigil") as client,
        pool.acquire() as other,
        other.transaction(),
    ):
        await other.execute("SELECT pg_advisory_xact_lock($1)", second)
        request = asyncio.create_task(client.post("/api/v1/moves"))
        await asyncio.sleep(0.3)  # the request holds the first lock and waits for the second
        await other.execute("SELECT pg_advisory_xact_lock($1)", first)  # a deadlock: the request, waiting longer, goes
        response = await request
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1" and "send it again" in response.json()["detail"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vigil") as client:
        assert (await client.post("/api/v1/moves")).status_code == 200


async def test_the_cli_sends_a_request_undone_by_a_conflict_again_with_the_same_key() -> None:
    keys: list[str] = []
    app = FastAPI()

    @app.post("/api/v1/steps/x/approve")
    async def approve(idempotency_key: Annotated[str, Header()]) -> JSONResponse:
        keys.append(idempotency_key)
        if len(keys) == 1:  # the first time, a timer firing on the same incident made Postgres undo it
            return JSONResponse({"detail": "undone"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok"})

    async with serve_app(app, name="conflicted") as url:
        answer = await asyncio.to_thread(vigil_cli._request, "responder", url, "POST", "/api/v1/steps/x/approve", {})
    assert answer.status_code == 200
    assert len(keys) == 2 and keys[0] == keys[1]


# ---- housekeeping ---------------------------------------------------------------------------


async def test_pruning_finds_what_expired_through_an_index(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """INSERT INTO processed_events (service, event_id, processed_at)
           SELECT s, 'e' || n, now() - (n % 40) * interval '1 day'
           FROM generate_series(1, 40000) AS n, unnest(ARRAY['detector', 'reporter']) AS s"""
    )
    await pool.execute(
        """INSERT INTO outbox (service, topic, key, value, headers, event_id, sent_at)
           SELECT 'detector', 't', 'k', 'v', '[]', 'e' || n, now() - (n % 40) * interval '1 hour'
           FROM generate_series(1, 40000) AS n"""
    )
    await pool.execute("ANALYZE processed_events; ANALYZE outbox")
    ledger = await _plan(
        pool,
        "EXPLAIN DELETE FROM processed_events WHERE service = $1 AND processed_at < now() - $2::interval",
        "detector",
        timedelta(days=39),
    )
    sent = await _plan(
        pool,
        "EXPLAIN DELETE FROM outbox WHERE service = $1 AND sent_at < now() - $2::interval",
        "detector",
        timedelta(hours=39),
    )
    assert "processed_events_age" in ledger
    assert "outbox_sent" in sent


async def _plan(pool: asyncpg.Pool | Conn, sql: str, *args: Any) -> str:
    return "\n".join(r[0] for r in await pool.fetch(sql, *args))


async def test_each_ledger_is_kept_as_long_as_its_topics_keep_events(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """INSERT INTO processed_events (service, event_id, processed_at) VALUES
           ('coordinator', 'command', now() - interval '20 days'),
           ('detector', 'alert', now() - interval '20 days')"""
    )
    await housekeeping.prune(pool, service="coordinator")
    await housekeeping.prune(pool, service="detector")
    # Commands stay on their topic for 30 days: the coordinator still remembers its 20-day-old id.
    assert [r["event_id"] for r in await pool.fetch("SELECT event_id FROM processed_events")] == ["command"]


async def test_timers_scheduled_many_at_once_move_those_pending_and_set_the_others(pool: asyncpg.Pool) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    async with pool.acquire() as conn, conn.transaction():
        await schedule(conn, service="svc", kind="due", subject="a", due_at=soon)
        await schedule(conn, service="svc", kind="other", subject="b", due_at=soon)  # another kind: left alone
        await schedule_many(
            conn, service="svc", kind="due", due={"a": soon + timedelta(hours=1), "b": soon + timedelta(hours=2)}
        )
        await schedule_many(conn, service="svc", kind="due", due={})
    rows = await pool.fetch(
        """SELECT kind, subject, due_at FROM timers
           WHERE service = 'svc' AND fired_at IS NULL AND cancelled_at IS NULL ORDER BY kind, subject"""
    )
    assert [(r["kind"], r["subject"], r["due_at"]) for r in rows] == [
        ("due", "a", soon + timedelta(hours=1)),
        ("due", "b", soon + timedelta(hours=2)),
        ("other", "b", soon),
    ]
    # a's timer moved to its new time: one timer, not one cancelled and another set.
    assert await pool.fetchval("SELECT count(*) FROM timers WHERE service = 'svc' AND kind = 'due'") == 2


async def test_cancel_many_cancels_each_subjects_pending_timer_of_that_kind_only(pool: asyncpg.Pool) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=5)
    async with pool.acquire() as conn:
        await schedule_many(conn, service="svc", kind="due", due={"a": soon, "b": soon, "c": soon})
        await schedule(conn, service="svc", kind="other", subject="a", due_at=soon)  # another kind: left alone
        await schedule(conn, service="elsewhere", kind="due", subject="b", due_at=soon)  # another service's
        await conn.execute("UPDATE timers SET fired_at = now() WHERE service = 'svc' AND subject = 'c'")  # it fired
        await cancel_many(conn, service="svc", kind="due", subjects=["a", "b", "c", "never-set"])
        await cancel_many(conn, service="svc", kind="due", subjects=[])
    rows = await pool.fetch(
        """SELECT service, kind, subject, fired_at IS NOT NULL AS fired, cancelled_at IS NOT NULL AS cancelled
           FROM timers WHERE service IN ('svc', 'elsewhere') ORDER BY service, kind, subject"""
    )
    assert [tuple(r) for r in rows] == [
        ("elsewhere", "due", "b", False, False),
        ("svc", "due", "a", False, True),
        ("svc", "due", "b", False, True),
        ("svc", "due", "c", True, False),  # fired: what it did stands
        ("svc", "other", "a", False, False),
    ]


async def test_a_due_time_set_again_neither_moves_its_timer_nor_sets_a_fired_one_again(pool: asyncpg.Pool) -> None:
    due = datetime.now(UTC) - timedelta(minutes=1)
    async with pool.acquire() as conn:
        await schedule_many(conn, service="svc", kind="due", due={"step-1": due, "step-2": due})
        await conn.execute("UPDATE timers SET fired_at = now() WHERE subject = 'step-1'")  # it fired
        # Each later change of the steps restates the same due time; step-2's moves.
        await schedule_many(conn, service="svc", kind="due", due={"step-1": due, "step-2": due})
        await schedule_many(conn, service="svc", kind="due", due={"step-2": due + timedelta(hours=1)})
    rows = await pool.fetch(
        "SELECT subject, due_at, fired_at IS NOT NULL AS fired, cancelled_at IS NOT NULL AS cancelled FROM timers"
        " WHERE service = 'svc' ORDER BY subject, id"
    )
    assert [(r["subject"], r["due_at"], r["fired"], r["cancelled"]) for r in rows] == [
        ("step-1", due, True, False),
        ("step-2", due + timedelta(hours=1), False, False),  # moved
    ]


async def test_a_due_time_set_again_leaves_a_retrying_timer_to_its_backoff_and_one_fired_on_a_retry_fired(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    due = datetime.now(UTC) - timedelta(minutes=1)
    failing = True

    async def flaky(ctx: HandlerContext, timer: Timer) -> None:
        if failing:
            raise ValueError("the far side refused the undo")

    poller = TimerPoller(service="svc", pool=pool, names=names, handlers={"undo": flaky})
    async with pool.acquire() as conn:
        await schedule_many(conn, service="svc", kind="undo", due={"lease-1": due})
    assert await poller.fire_due() == 1  # failed: its next attempt waits for the backoff
    retry_at = await pool.fetchval("SELECT due_at FROM timers WHERE subject = 'lease-1'")
    assert retry_at > datetime.now(UTC)
    async with pool.acquire() as conn:
        await schedule_many(conn, service="svc", kind="undo", due={"lease-1": due})  # the step changed
    row = await pool.fetchrow("SELECT due_at, attempts FROM timers WHERE subject = 'lease-1' AND cancelled_at IS NULL")
    assert row is not None and (row["due_at"], row["attempts"]) == (retry_at, 1)  # its backoff and count kept
    assert await poller.fire_due() == 0

    failing = False
    await pool.execute("UPDATE timers SET due_at = now() - interval '1 second' WHERE subject = 'lease-1'")
    assert await poller.fire_due() == 1  # fired on its retry
    async with pool.acquire() as conn:
        await schedule_many(conn, service="svc", kind="undo", due={"lease-1": due})
    pending = await pool.fetchval("SELECT count(*) FROM timers WHERE subject = 'lease-1' AND fired_at IS NULL")
    assert pending == 0  # not set again to fire a second time


async def test_timers_set_many_at_once_read_each_subjects_timers_by_index_however_many_fired_before(
    pool: asyncpg.Pool,
) -> None:
    # Fired and cancelled timers stay until housekeeping prunes them: the check of what is set already
    # must not read them all on each call.
    await pool.execute(
        """INSERT INTO timers (service, kind, subject, due_at, fired_at)
           SELECT 'svc', 'due', 'step-' || n, now() - interval '1 hour', now() FROM generate_series(1, 20000) AS n"""
    )
    await pool.execute("ANALYZE timers")
    soon = datetime.now(UTC) + timedelta(minutes=5)
    plan = await _plan(pool, "EXPLAIN " + SCHEDULE_MANY, "svc", "due", ["step-1", "step-new"], [soon, soon])
    assert "Seq Scan on timers" not in plan, plan
    assert "timers_live_by_subject" in plan


def _walks_timers(plan: str) -> list[str]:
    """The plan's reads of the timers table that are not by one subject's key or by ids."""
    lines = plan.splitlines()
    walks = []
    for n, line in enumerate(lines):
        if "Scan" not in line or " on timers " not in line:
            continue
        condition = lines[n + 1] if n + 1 < len(lines) else ""
        by_key = "Index" in line and "Index Cond" in condition and "subject =" in condition
        by_ids = "Cond: (id = ANY" in condition  # its primary key's index, bitmap or not
        if not (by_key or by_ids):
            walks.append(f"{line.strip()} / {condition.strip()}")
    return walks


async def test_timers_set_or_cancelled_many_at_once_are_found_by_key_even_by_a_plan_made_on_a_small_table(
    pool: asyncpg.Pool,
) -> None:
    # A statement reused gets a generic plan, kept while the table grows: one made in a deployment's
    # first minutes must not read every timer of the kind for each subject once there are thousands.
    async with pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            await conn.execute("PREPARE set_many(text, text, text[], timestamptz[]) AS " + SCHEDULE_MANY)
            await conn.execute("PREPARE cancel_many(text, text, text[]) AS " + CANCEL_MANY)
            asked = "ARRAY['plan-1', 'plan-new']"
            await conn.execute(f"EXECUTE set_many('plan', 'due', {asked}, ARRAY[now(), now()])")
            await conn.execute(f"EXECUTE cancel_many('plan', 'due', {asked})")
            await conn.execute(
                """INSERT INTO timers (service, kind, subject, due_at)
                   SELECT 'plan', 'due', 'plan-' || n, now() + interval '1 hour' FROM generate_series(1, 5000) AS n"""
            )
            later = "ARRAY[now() + interval '2 hours', now()]"
            moving = await _plan(conn, f"EXPLAIN ANALYZE EXECUTE set_many('plan', 'due', {asked}, {later})")
            assert _walks_timers(moving) == [], moving
            cancelling = await _plan(conn, f"EXPLAIN ANALYZE EXECUTE cancel_many('plan', 'due', {asked})")
            assert _walks_timers(cancelling) == [], cancelling
        finally:
            await conn.execute("DEALLOCATE ALL")
            await conn.execute("RESET plan_cache_mode")
    moved = await pool.fetch(
        """SELECT subject, cancelled_at IS NOT NULL AS cancelled FROM timers
           WHERE service = 'plan' AND subject IN ('plan-1', 'plan-new') ORDER BY subject, id"""
    )
    # plan-1: the one set first, cancelled; then the 5,000's, moved to its new time and cancelled.
    # plan-new: set, cancelled, set again and cancelled.
    assert [(r["subject"], r["cancelled"]) for r in moved] == [
        ("plan-1", True),
        ("plan-1", True),
        ("plan-new", True),
        ("plan-new", True),
    ]


# What the poller does to a pending timer while another transaction sets or cancels it.
POLLER_CHANGES = {
    "retried": "UPDATE timers SET attempts = attempts + 1, last_error = 'boom', due_at = due_at + interval '1 minute'",
    "parked": "UPDATE timers SET attempts = 5, last_error = 'boom', parked_at = now()",
    "fired": "UPDATE timers SET fired_at = now()",
}


async def _while_the_poller_changes_it(pool: asyncpg.Pool, subject: str, change: str, then: Any) -> None:
    """Set a timer for ``subject``; hold a change of it by the poller open while ``then(conn)`` starts and
    waits for its row; commit the change; let ``then`` finish."""
    due = datetime.now(UTC) + timedelta(hours=1)
    async with pool.acquire() as conn:
        await schedule_many(conn, service="race", kind="due", due={subject: due})
    async with pool.acquire() as poller, pool.acquire() as other:
        changing = poller.transaction()
        await changing.start()
        await poller.execute(POLLER_CHANGES[change] + " WHERE service = 'race' AND subject = $1", subject)
        waiting = asyncio.create_task(then(other))
        await eventually(
            lambda: pool.fetchval(
                """SELECT count(*) > 0 FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
        )
        await changing.commit()
        await waiting


async def _timers_of(pool: asyncpg.Pool, subject: str) -> list[tuple[str, int, bool, bool]]:
    """Each of the subject's timers: fired, cancelled, parked or pending; its attempts; whether due later on."""
    rows = await pool.fetch(
        """SELECT CASE WHEN fired_at IS NOT NULL THEN 'fired' WHEN cancelled_at IS NOT NULL THEN 'cancelled'
                       WHEN parked_at IS NOT NULL THEN 'parked' ELSE 'pending' END AS state,
                  attempts, due_at > now() + interval '2 hours' AS moved, last_error IS NOT NULL AS erred
           FROM timers WHERE service = 'race' AND subject = $1 ORDER BY id""",
        subject,
    )
    return [(r["state"], r["attempts"], r["moved"], r["erred"]) for r in rows]


@pytest.mark.parametrize(
    ("change", "after"),
    [
        ("retried", [("cancelled", 1, False, True)]),
        ("parked", [("cancelled", 5, False, True)]),
        ("fired", [("fired", 0, False, False)]),  # what it did stands
    ],
)
async def test_timers_cancelled_many_at_once_while_the_poller_changes_one_are_cancelled_still(
    pool: asyncpg.Pool, change: str, after: list[tuple[str, int, bool, bool]]
) -> None:
    subject = f"cancel-{change}"

    async def cancel(conn: Conn) -> None:
        await cancel_many(conn, service="race", kind="due", subjects=[subject, "never-set"])

    await _while_the_poller_changes_it(pool, subject, change, cancel)
    assert await _timers_of(pool, subject) == after


@pytest.mark.parametrize(
    ("change", "after"),
    [
        # Moved to the new time as a timer set anew: its failures are forgotten, and a parked one is due again.
        ("retried", [("pending", 0, True, False)]),
        ("parked", [("pending", 0, True, False)]),
        ("fired", [("fired", 0, False, False), ("pending", 0, True, False)]),
    ],
)
async def test_timers_set_many_at_once_while_the_poller_changes_one_are_due_at_their_new_time(
    pool: asyncpg.Pool, change: str, after: list[tuple[str, int, bool, bool]]
) -> None:
    subject = f"set-{change}"

    async def move(conn: Conn) -> None:
        await schedule_many(conn, service="race", kind="due", due={subject: datetime.now(UTC) + timedelta(hours=3)})

    await _while_the_poller_changes_it(pool, subject, change, move)
    assert await _timers_of(pool, subject) == after


async def test_a_timer_set_while_another_transaction_fires_and_sets_it_again_is_moved(pool: asyncpg.Pool) -> None:
    due = datetime.now(UTC) + timedelta(hours=1)
    async with pool.acquire() as conn:
        await schedule(conn, service="svc", kind="refresh", subject="feed", due_at=due)
    async with pool.acquire() as poller, pool.acquire() as person:
        firing = poller.transaction()
        await firing.start()
        # The poller fires the timer and sets the next, as a handler that reschedules does.
        await poller.execute("UPDATE timers SET fired_at = now() WHERE kind = 'refresh' AND fired_at IS NULL")
        await schedule(poller, service="svc", kind="refresh", subject="feed", due_at=due + timedelta(hours=1))
        # A person asks for a refresh now: the statement waits for the poller's row.
        asked = asyncio.create_task(schedule(person, service="svc", kind="refresh", subject="feed", due_at=due))
        await eventually(
            lambda: pool.fetchval(
                """SELECT count(*) > 0 FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
        )
        await firing.commit()
        await asked
    pending = await pool.fetch(
        "SELECT due_at FROM timers WHERE kind = 'refresh' AND fired_at IS NULL AND cancelled_at IS NULL"
    )
    assert [r["due_at"] for r in pending] == [due]
