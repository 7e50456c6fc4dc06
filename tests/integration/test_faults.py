"""Faults injected into the real Postgres while the consume loop runs: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.detector.handlers import Detector, decode
from shared.consumer import HandlerContext, Inbound, decode_cloudevent, dispatch_each
from shared.db import connect
from shared.errors import is_retriable
from shared.events import IncidentDetected
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay, write_events
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, INCIDENTS, TopicNames
from tests.factories import alert_dict, snapshot
from tests.helpers import committed, consume_loop, eventually, produce, read_all

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def test_lost_database_connections_are_retried_without_loss_or_duplicates(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    raw = names(ALERTS_RAW)
    detector = Detector(correlation_window=timedelta(minutes=30))
    admin = await asyncpg.connect(settings.database_url)
    killer = await asyncpg.connect(settings.database_url)  # the handler's own: the test polls on admin meanwhile
    waves = [[alert_dict(host=f"host-{n % 7}") for n in range(200)] for _ in range(3)]
    total = 0
    faults = 0

    async def handle_then_lose_the_connection(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        # The worst moment: the handler's writes are done, the transaction is not committed.
        nonlocal faults
        await detector.handle(ctx, batch)
        if faults < len(waves):
            faults += 1
            await killer.execute("SELECT pg_terminate_backend($1)", ctx.conn.get_server_pid())

    async def all_stored() -> bool:
        return bool(await admin.fetchval("SELECT count(*) FROM detector_alerts") == total)

    try:
        async with consume_loop(
            settings, pool, service="detector", topics=[raw], decoder=decode, handler=handle_then_lose_the_connection
        ) as (_loop, task):
            for wave in waves:
                await produce(settings, raw, [(None, json.dumps(a).encode(), []) for a in wave])
                total += len(wave)
                await eventually(all_stored, timeout=60)
                assert not task.done(), "the loop gave up instead of retrying"
            await eventually(lambda: _equals(_committed_total(settings, raw), total), timeout=30)
    finally:
        await admin.close()
        await killer.close()
    assert faults == len(waves)
    retried = REGISTRY.get_sample_value("vigil_events_handled_total", {"service": "detector", "outcome": "retry"})
    assert retried is not None and retried >= len(waves)

    # Each alert stored once, each incident counted right, every alert's id in the ledger once.
    check = await asyncpg.connect(settings.database_url)
    try:
        assert await check.fetchval("SELECT count(DISTINCT key) FROM detector_alerts") == total
        assert await check.fetchval("SELECT sum(alert_count) FROM detector_incidents") == total
        assert await check.fetchval("SELECT count(*) FROM processed_events") == total
    finally:
        await check.close()


async def _equals(value: object, expected: int) -> bool:
    return bool(await value == expected)  # type: ignore[misc]


async def _committed_total(settings: VigilSettings, topic: str) -> int:
    return sum([await committed(settings, group_id(settings, "detector"), topic, p) or 0 for p in range(12)])


async def test_relay_losing_its_connection_after_publishing_republishes_and_consumers_dedupe(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    events = [IncidentDetected(source="/vigil/detector", subject=f"inc-{n}", data=snapshot()) for n in range(5)]
    async with pool.acquire() as conn, conn.transaction():
        await write_events(conn, service="detector", names=names, events=events)

    producer = make_producer(settings, client_id="relay-fault")
    await producer.start()
    locker = await asyncpg.connect(settings.database_url)
    killer = await asyncpg.connect(settings.database_url)
    try:
        relay = OutboxRelay(
            service="detector", pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        original_send = producer.send
        sent = 0

        async def send_then_block_the_marking(*args: Any, **kwargs: Any) -> Any:
            # Once the last record went out, the relay's UPDATE marking them sent must wait on a lock...
            nonlocal sent
            future = await original_send(*args, **kwargs)
            sent += 1
            if sent == len(events):
                await locker.execute("BEGIN; LOCK TABLE outbox IN EXCLUSIVE MODE")
            return future

        async def kill_the_marking() -> None:
            # ...where its connection dies: published, never marked.
            pid = await eventually(
                lambda: killer.fetchval(
                    """SELECT pid FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'
                         AND query LIKE 'UPDATE outbox%'"""
                )
            )
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
            await locker.execute("ROLLBACK")

        producer.send = send_then_block_the_marking  # type: ignore[method-assign]
        killing = asyncio.create_task(kill_the_marking())
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError)) as lost:
            await relay.publish_pending()
        await killing
        assert is_retriable(lost.value)
        producer.send = original_send  # type: ignore[method-assign]
        assert (await relay.publish_pending()).sent == len(events)  # nothing was marked sent: all again
        assert (await relay.publish_pending()).sent == 0
    finally:
        await locker.close()
        await killer.close()
        await producer.stop()

    # At least once on the topic; exactly once in effect for a consumer keyed by event id.
    records = await read_all(settings, names(INCIDENTS), expect=2 * len(events))
    assert len(records) == 2 * len(events)
    reporter = dispatch_each({IncidentDetected: _count_effect}, savepoints=False)
    await pool.execute("CREATE TABLE handled (event_id text)")
    async with consume_loop(
        settings, pool, service="t-dedupe", topics=[names(INCIDENTS)], decoder=decode_cloudevent, handler=reporter
    ):
        await eventually(lambda: _effects_are(pool, len(events)), timeout=30)
    assert {r["event_id"] for r in await pool.fetch("SELECT event_id FROM handled")} == {e.id for e in events}


async def _count_effect(ctx: HandlerContext, event: IncidentDetected) -> None:
    await ctx.conn.execute("INSERT INTO handled VALUES ($1)", event.id)


async def _effects_are(pool: asyncpg.Pool, expected: int) -> bool:
    count = await pool.fetchval("SELECT count(*) FROM handled")
    committed_all = await pool.fetchval("SELECT count(*) FROM processed_events WHERE service = 't-dedupe'")
    return bool(count == expected and committed_all == expected)
