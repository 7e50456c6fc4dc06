"""The shared consume loop against the real broker and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from aiokafka.errors import KafkaTimeoutError

from shared import cloudevents
from shared.consumer import DeadLetterGuard, HandlerContext, Inbound, decode_cloudevent, dispatch_each
from shared.db import connect
from shared.errors import DeadLetterLimitExceeded, InvalidMessage
from shared.events import CommandArgs, Event, EventBase, IncidentDetected, ResolveIncident
from shared.kafka import group_id, make_producer
from shared.outbox import NOTIFY_CHANNEL, OutboxRelay
from shared.settings import VigilSettings
from shared.topics import COMMANDS, EVENTS_DLQ, INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import committed, consume_loop, eventually, produce, read_all, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def record_of(event: EventBase) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    encoded = cloudevents.encode(event)
    return encoded.key, encoded.value, encoded.headers


def detected(subject: str = "inc-1") -> IncidentDetected:
    return IncidentDetected(source="/vigil/detector", subject=subject, data=snapshot())


async def make_handled_table(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE handled (event_id text NOT NULL, subject text NOT NULL)")


async def record_effect(ctx: HandlerContext, event: IncidentDetected) -> None:
    await ctx.conn.execute("INSERT INTO handled VALUES ($1, $2)", event.id, event.subject)


async def count(pool: asyncpg.Pool, sql: str) -> int:
    return int(await pool.fetchval(sql))


async def test_redelivered_events_are_handled_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    first, second = detected("inc-1"), detected("inc-2")
    topic = names(INCIDENTS)
    await produce(settings, topic, [record_of(first), record_of(first), record_of(second)])
    handler = dispatch_each({IncidentDetected: record_effect})

    async with consume_loop(settings, pool, service="t1", topics=[topic], decoder=decode_cloudevent, handler=handler):
        await eventually(lambda: committed(settings, group_id(settings, "t1"), topic), timeout=30)
        assert await committed(settings, group_id(settings, "t1"), topic) == 3

    # A second group member replaying the partition from the start changes nothing.
    await produce(settings, topic, [record_of(first)])
    async with consume_loop(settings, pool, service="t1", topics=[topic], decoder=decode_cloudevent, handler=handler):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t1"), topic), 4))

    assert await count(pool, "SELECT count(*) FROM handled") == 2
    assert await count(pool, "SELECT count(*) FROM processed_events WHERE service = 't1'") == 2


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_invalid_input_is_dead_lettered_and_does_not_block_the_partition(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    garbage = (b"inc-x", b"\x00not an event", [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.detected.v1")])
    good = detected("inc-after")
    await produce(settings, topic, [garbage, record_of(good)])
    handler = dispatch_each({IncidentDetected: record_effect})

    async with consume_loop(settings, pool, service="t2", topics=[topic], decoder=decode_cloudevent, handler=handler):
        await eventually(lambda: count(pool, "SELECT count(*) FROM handled"))
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t2"), topic), 2))

    dead = await read_all(settings, names(EVENTS_DLQ), expect=1)
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert dead[0].value == b"\x00not an event"  # original bytes, untouched
    assert dead[0].key == b"inc-x"
    assert headers["vigil_dlq_reason"].startswith(b"body is not JSON")
    assert headers["vigil_dlq_service"] == b"t2"
    assert headers["vigil_dlq_topic"] == topic.encode()
    assert headers["vigil_dlq_offset"] == b"0"
    assert headers["ce_type"] == b"vigil.incident.detected.v1"  # original headers kept
    assert await pool.fetchval("SELECT subject FROM handled") == "inc-after"


async def test_a_record_the_decoder_fails_on_is_dead_lettered_with_the_failure_not_retried_for_ever(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    # A header without a value, as Kafka allows, on a record a decoder's defect fails on.
    odd = (b"inc-x", b"odd", [("ce_specversion", b"1.0"), ("ce_note", None)])
    good = detected("inc-after")
    await produce(settings, topic, [odd, record_of(good)])

    def decoder(record: Any) -> tuple[str, Event]:
        if record.value == b"odd":
            raise AttributeError("'NoneType' object has no attribute 'decode'")
        return decode_cloudevent(record)

    handler = dispatch_each({IncidentDetected: record_effect})
    async with consume_loop(settings, pool, service="t9", topics=[topic], decoder=decoder, handler=handler):
        await eventually(lambda: count(pool, "SELECT count(*) FROM handled"))
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t9"), topic), 2))

    dead = await read_all(settings, names(EVENTS_DLQ), expect=1)
    headers = dict(dead[0].headers)
    assert (
        headers["vigil_dlq_reason"]
        == b"could not be decoded: AttributeError: 'NoneType' object has no attribute 'decode'"
    )
    assert headers["vigil_dlq_code"] == b"undecodable"
    assert ("ce_note", None) in dead[0].headers  # original headers kept, the empty one too
    assert await pool.fetchval("SELECT subject FROM handled") == "inc-after"


async def test_handler_rejection_dead_letters_only_that_event(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)

    async def picky(ctx: HandlerContext, event: IncidentDetected) -> None:
        await record_effect(ctx, event)
        ctx.emit(ResolveIncident(source="/test", data=CommandArgs(actor="picky"), **event.caused_by()))
        if event.subject == "inc-bad":
            raise InvalidMessage("incident inc-bad is not acceptable")

    await produce(settings, topic, [record_of(detected("inc-ok")), record_of(detected("inc-bad"))])
    async with consume_loop(
        settings,
        pool,
        service="t3",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=dispatch_each({IncidentDetected: picky}),
    ):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t3"), topic), 2))

    # The rejected event's own writes and events were rolled back with its savepoint; the other stayed.
    assert [r["subject"] for r in await pool.fetch("SELECT subject FROM handled")] == ["inc-ok"]
    assert [r["key"] for r in await pool.fetch("SELECT key FROM outbox")] == [b"inc-ok"]
    # Not recorded as processed: were the dead letter lost, redelivery would reject it again.
    processed = await pool.fetchval("SELECT count(*) FROM processed_events WHERE service = 't3'")
    assert processed == 1
    dead = await read_all(settings, names(EVENTS_DLQ), expect=1)
    assert dict(dead[0].headers)["vigil_dlq_reason"] == b"incident inc-bad is not acceptable"


async def test_a_record_the_handler_fails_on_is_dead_lettered_with_the_failure_and_the_rest_handled(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    subjects = [f"inc-{n}" for n in range(9)]
    await produce(settings, topic, [record_of(detected(subject)) for subject in subjects])
    handled_in: list[list[str]] = []

    async def fails_on_inc_5(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        handled_in.append([inbound.item.subject for inbound in batch])
        for inbound in batch:
            await record_effect(ctx, inbound.item)
            if inbound.item.subject == "inc-5":
                # What no retry mends: a value Postgres cannot index, a defect in the handler.
                raise asyncpg.ProgramLimitExceededError("index row size 3064 exceeds btree version 4 maximum 2704")

    async with consume_loop(
        settings, pool, service="t4", topics=[topic], decoder=decode_cloudevent, handler=fails_on_inc_5, linger_ms=300
    ):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t4"), topic), 9))

    # Every other record handled once, in order; the one that fails is in no committed transaction.
    rows = await pool.fetch("SELECT subject FROM handled")
    assert sorted(r["subject"] for r in rows) == sorted(s for s in subjects if s != "inc-5")
    processed = await pool.fetchval("SELECT count(*) FROM processed_events WHERE service = 't4'")
    assert processed == 8  # the failed one is not taken for handled: replayed after a fix, it is handled
    dead = await read_all(settings, names(EVENTS_DLQ), expect=1)
    headers = dict(dead[0].headers)
    assert headers["vigil_dlq_code"] == b"handler_failed"
    assert headers["vigil_dlq_reason"] == (
        b"the handler failed on it: ProgramLimitExceededError: index row size 3064 exceeds btree version 4 maximum 2704"
    )
    assert dead[0].key == b"inc-5"
    assert ["inc-5"] in handled_in  # found alone, by halving the batch


async def test_a_record_dead_lettered_alone_is_not_again_when_a_later_part_of_its_batch_is_retried(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    subjects = [f"inc-{n}" for n in range(8)]
    await produce(settings, topic, [record_of(detected(subject)) for subject in subjects])
    conflicts = 0

    async def fails_on_inc_1(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        nonlocal conflicts
        for inbound in batch:
            await record_effect(ctx, inbound.item)
            if inbound.item.subject == "inc-1":
                raise asyncpg.ProgramLimitExceededError("index row size 3064 exceeds btree version 4 maximum 2704")
            if inbound.item.subject == "inc-6" and len(batch) < 8 and not conflicts:
                conflicts += 1  # a part after inc-1's meets a conflict: the batch is fetched again
                raise asyncpg.SerializationError("could not serialize access")

    async with consume_loop(
        settings, pool, service="t4c", topics=[topic], decoder=decode_cloudevent, handler=fails_on_inc_1, linger_ms=300
    ):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t4c"), topic), 8))

    assert conflicts == 1
    handled = sorted(r["subject"] for r in await pool.fetch("SELECT subject FROM handled"))
    assert handled == [s for s in subjects if s != "inc-1"]
    dead = await read_all(settings, names(EVENTS_DLQ), expect=2, timeout=5)
    assert [r.key for r in dead] == [b"inc-1"]  # once, though its batch was fetched again
    verdicts = await pool.fetchval("SELECT verdicts FROM consumer_guards WHERE service = 't4c'")
    assert verdicts == "01000000"  # each record judged once


async def test_a_handler_failing_on_every_record_stops_at_the_dead_letter_limit(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    await produce(settings, topic, [record_of(detected(f"inc-{n}")) for n in range(12)])

    async def crash(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        await ctx.conn.execute("INSERT INTO handled VALUES ('x', 'written before the crash')")
        raise RuntimeError("bug in handler")

    async with consume_loop(
        settings,
        pool,
        service="t4b",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=crash,
        guard=DeadLetterGuard(ratio=0.5, window=10),
        crashes_with=DeadLetterLimitExceeded,
    ) as (_loop, task):
        with pytest.raises(DeadLetterLimitExceeded):
            await asyncio.wait_for(task, 30)

    assert await count(pool, "SELECT count(*) FROM handled") == 0  # each attempt rolled back
    assert await count(pool, "SELECT count(*) FROM processed_events") == 0
    # Each failing record dead-lettered alone until the window of ten is more than half dead letters: the
    # tenth stops the consumer, uncommitted, and it and the rest wait for the fix.
    assert await committed(settings, group_id(settings, "t4b"), topic) == 9
    dead = await read_all(settings, names(EVENTS_DLQ), expect=9)
    assert [r.key for r in dead] == [f"inc-{n}".encode() for n in range(9)]

    handler = dispatch_each({IncidentDetected: record_effect})
    async with consume_loop(settings, pool, service="t4b", topics=[topic], decoder=decode_cloudevent, handler=handler):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t4b"), topic), 12))
    handled = sorted(r["subject"] for r in await pool.fetch("SELECT subject FROM handled"))
    assert handled == ["inc-10", "inc-11", "inc-9"]


async def test_retriable_failure_is_retried_without_commit(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    await produce(settings, topic, [record_of(detected("inc-1")), record_of(detected("inc-2"))])
    attempts = 0

    async def flaky(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        nonlocal attempts
        attempts += 1
        for inbound in batch:
            await record_effect(ctx, inbound.item)
        if attempts == 1:
            raise asyncpg.SerializationError("could not serialize access")

    async with consume_loop(settings, pool, service="t5", topics=[topic], decoder=decode_cloudevent, handler=flaky):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t5"), topic), 2))

    assert attempts >= 2
    assert sorted(r["subject"] for r in await pool.fetch("SELECT subject FROM handled")) == ["inc-1", "inc-2"]


async def test_batches_retried_over_every_partition_leave_no_record_behind_and_handle_none_twice(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    # Spread over every partition, in batches smaller than the topic: each retry must go back to the first
    # record of every partition its batch took, and no further, while the other partitions go on.
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    producer = make_producer(settings, client_id="test-producer")
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        for i in range(60):
            encoded = cloudevents.encode(detected(f"inc-{i}"))
            await producer.send_and_wait(
                topic,
                key=encoded.key,
                value=encoded.value,
                headers=encoded.headers,
                partition=partitions[i % len(partitions)],
            )
    finally:
        await producer.stop()
    calls = 0

    async def every_third_fails(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        nonlocal calls
        calls += 1
        for inbound in batch:
            await record_effect(ctx, inbound.item)
        if calls % 3 == 1:
            raise asyncpg.SerializationError("could not serialize access")

    async with consume_loop(
        settings,
        pool,
        service="t-spread",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=every_third_fails,
        batch_size=7,
    ):
        await eventually(lambda: _equals(count(pool, "SELECT count(*) FROM handled"), 60), timeout=60)
        group = group_id(settings, "t-spread")

        async def all_committed() -> bool:
            offsets = [await committed(settings, group, topic, partition) for partition in partitions]
            return offsets == [60 // len(partitions)] * len(partitions)

        await eventually(all_committed)

    assert calls > 3  # some batches failed and were retried
    rows = await pool.fetch("SELECT subject, count(*) AS n FROM handled GROUP BY subject")
    assert {r["subject"] for r in rows} == {f"inc-{i}" for i in range(60)}
    assert {r["n"] for r in rows} == {1}


async def test_dead_letter_limit_stops_the_consumer(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = names(COMMANDS)
    await produce(settings, topic, [(b"k", b"junk", []) for _ in range(12)])
    guard = DeadLetterGuard(ratio=0.5, window=10)
    async with consume_loop(
        settings,
        pool,
        service="t6",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=dispatch_each({}),
        guard=guard,
        crashes_with=DeadLetterLimitExceeded,
    ) as (_loop, task):
        with pytest.raises(DeadLetterLimitExceeded):
            await asyncio.wait_for(task, 30)
    assert await committed(settings, group_id(settings, "t6"), topic) is None


async def test_a_batch_run_again_because_its_dead_letters_failed_is_judged_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    # Four dead letters in ten: under the limit of half, however often the batch is run (judged again on each
    # run, a window of 16 would hold ten of them after the second retry).
    guard = DeadLetterGuard(ratio=0.5, window=16)
    async with consume_loop(
        settings,
        pool,
        service="t11",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=dispatch_each({IncidentDetected: record_effect}),
        guard=guard,
    ) as (loop, _task):
        send = loop.producer.send
        failures = 0

        async def failing_twice(topic_name: str, **kwargs: Any) -> Any:
            nonlocal failures
            if topic_name == names(EVENTS_DLQ) and failures < 2:  # the dead-letter topic not there for a while
                failures += 1
                raise KafkaTimeoutError("dead-letter topic unavailable")
            return await send(topic_name, **kwargs)

        loop.producer.send = failing_twice  # type: ignore[method-assign]
        junk = [(b"k", b"junk", [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.detected.v1")])] * 4
        await produce(settings, topic, [*junk, *(record_of(detected(f"inc-{n}")) for n in range(6))])
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t11"), topic), 10))
    assert failures == 2
    assert await count(pool, "SELECT count(*) FROM handled") == 6
    assert loop.guard.dead == 4


async def test_events_the_service_does_not_handle_are_skipped_but_committed(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = names(COMMANDS)
    command = ResolveIncident(source="/test", subject="inc-1", data=CommandArgs(actor="alice"))
    await produce(settings, topic, [record_of(command)])
    async with consume_loop(
        settings, pool, service="t7", topics=[topic], decoder=decode_cloudevent, handler=dispatch_each({})
    ):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t7"), topic), 1))


async def test_a_lingering_loop_handles_what_came_within_its_linger_as_one_batch(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)
    batches: list[list[str]] = []

    async def remember(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        batches.append([inbound.item.subject for inbound in batch])

    async with consume_loop(
        settings,
        pool,
        service="t-linger",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=remember,
        linger_ms=20_000,
        batch_size=2,
    ):
        # A full batch goes at once, whatever the linger: the group has joined once it is handled.
        await produce(settings, topic, [record_of(detected("warm-1")), record_of(detected("warm-2"))])
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t-linger"), topic), 2))
        await produce(settings, topic, [record_of(detected("first"))])
        await asyncio.sleep(1.0)  # long after a poll found it, well within the linger
        await produce(settings, topic, [record_of(detected("second"))])
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t-linger"), topic), 4))
    assert batches == [["warm-1", "warm-2"], ["first", "second"]]


async def test_a_run_of_one_type_goes_whole_to_its_run_handler_then_each_event_to_its_own(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    seen: list[tuple[str, Any]] = []

    async def run(ctx: HandlerContext, events: Sequence[EventBase]) -> None:
        seen.append(("run", [e.subject for e in events]))

    async def each(ctx: HandlerContext, event: EventBase) -> None:
        seen.append(("each", event.subject))

    resolve = ResolveIncident(source="/test", subject="c", data=CommandArgs(actor="someone"))
    events: list[Event] = [detected("a"), detected("b"), resolve, detected("d")]
    handler = dispatch_each({IncidentDetected: each, ResolveIncident: each}, runs={IncidentDetected: run})
    async with pool.acquire() as conn, conn.transaction():
        await handler(
            HandlerContext(conn=conn, service="t-runs", names=names), [Inbound(e.id, e, None) for e in events]
        )
    assert seen == [
        ("run", ["a", "b"]),
        ("each", "a"),
        ("each", "b"),
        ("each", "c"),
        ("run", ["d"]),
        ("each", "d"),
    ]


async def test_a_leading_relay_in_the_process_is_woken_by_the_commit_without_a_notification(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = names(INCIDENTS)
    await produce(settings, topic, [record_of(detected("inc-wake"))])

    async def resolve(ctx: HandlerContext, event: IncidentDetected) -> None:
        ctx.emit(ResolveIncident(source="/test", data=CommandArgs(actor="waker"), **event.caused_by()))

    producer = make_producer(settings, client_id="t-wake-relay")
    await producer.start()
    # Its idle wait far longer than the test: only a wake publishes in time.
    relay = OutboxRelay(
        service="t-wake", pool=pool, producer=producer, connect=lambda: connect(settings.database_url), idle_wait_s=600
    )
    notified: list[str] = []
    listener = await connect(settings.database_url)
    await listener.add_listener(NOTIFY_CHANNEL, lambda _c, _p, _ch, payload: notified.append(payload))
    try:
        async with running(relay.run()):
            await eventually(lambda: _true(relay.leading))
            async with consume_loop(
                settings,
                pool,
                service="t-wake",
                topics=[topic],
                decoder=decode_cloudevent,
                handler=dispatch_each({IncidentDetected: resolve}),
            ) as (loop, _task):
                loop.relay = relay
                published = await read_all(settings, names(COMMANDS), expect=1)
        assert [r.key for r in published] == [b"inc-wake"]
        assert "t-wake" not in notified
    finally:
        await listener.close()
        await producer.stop()


async def _true(value: bool) -> bool:
    return value


async def test_an_event_whose_audit_entry_cannot_be_written_is_dead_lettered_not_a_crash_at_every_restart(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await make_handled_table(pool)
    topic = names(INCIDENTS)

    async def audited(ctx: HandlerContext, event: IncidentDetected) -> None:
        await record_effect(ctx, event)
        # What the event names is who acted: a blank one cannot be an audit entry's principal.
        actor = " " if event.subject == "inc-blank" else "alice"
        ctx.audit("incident.acknowledge", event.subject, principal=actor)

    await produce(settings, topic, [record_of(detected("inc-blank")), record_of(detected("inc-ok"))])
    async with consume_loop(
        settings,
        pool,
        service="t-audit",
        topics=[topic],
        decoder=decode_cloudevent,
        handler=dispatch_each({IncidentDetected: audited}),
    ):
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t-audit"), topic), 2))

    assert [r["subject"] for r in await pool.fetch("SELECT subject FROM handled")] == ["inc-ok"]
    assert [r["target"] for r in await pool.fetch("SELECT target FROM audit_log WHERE service = 't-audit'")] == [
        "inc-ok"
    ]
    dead = await read_all(settings, names(EVENTS_DLQ), expect=1)
    headers = dict(dead[0].headers)
    assert headers["vigil_dlq_code"] == b"unauditable"
    assert headers["vigil_dlq_reason"] == b"cannot be audited: an audit entry needs a principal"


async def test_a_record_whose_headers_would_make_its_dead_letter_too_large_is_dead_lettered_without_them(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    topic = names(INCIDENTS)
    # Within 1 MiB by a few hundred bytes: with Vigil's own headers its dead letter would be over the size
    # Apache Kafka takes by default (message.max.bytes), refused for good at every restart.
    value = b"not json " * (500 * 1024 // 9)
    ce = record_of(detected())[2]
    room = 1024 * 1024 - len(value) - sum(len(n) + len(v) for n, v in ce) - 700
    headers = [("trace", b"t" * room), *ce]
    await produce(settings, topic, [(b"inc-big", value, headers)])
    async with consume_loop(settings, pool, service="t-big-headers", topics=[topic], decoder=decode_cloudevent,
                            handler=dispatch_each({})):  # fmt: skip
        await eventually(lambda: _equals(committed(settings, group_id(settings, "t-big-headers"), topic), 1))
    [dead] = await read_all(settings, names(EVENTS_DLQ), expect=1)
    kept = dict(dead.headers)
    assert kept["vigil_dlq_headers_dropped"].startswith(f"{len(headers)} headers, ".encode())
    assert "trace" not in kept and kept["vigil_dlq_reason"].startswith(b"body is not JSON")
    assert dead.value == value and dead.key == b"inc-big"
