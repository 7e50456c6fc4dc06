"""Service handlers, the outbox relay and durable timers against the real broker and Postgres."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
import pytest

from services.coordinator.handlers import ACK_DEADLINE, SERVICE, Coordinator
from services.coordinator.service import load_oncall
from services.detector.handlers import Detector, decode
from shared import cloudevents, housekeeping
from shared.consumer import HandlerContext, write_context
from shared.db import connect
from shared.events import (
    AcknowledgeIncident,
    CommandArgs,
    EscalationExhausted,
    IncidentDetected,
    IncidentEscalated,
    IncidentStateChanged,
)
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay, write_events
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import ALERTS_DLQ, ALERTS_RAW, COORDINATION, INCIDENTS, TopicNames
from tests.factories import alert_dict, snapshot
from tests.helpers import committed, consume_loop, eventually, produce, read_all

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_outbox_relay_publishes_in_order_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    events = [
        IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot(title=f"event {n}")) for n in range(3)
    ]
    async with pool.acquire() as conn, conn.transaction():
        await write_events(conn, service="detector", names=names, events=events)
    producer = make_producer(settings, client_id="relay-test")
    await producer.start()
    try:
        relay = OutboxRelay(
            service="detector", pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        assert (await relay.publish_pending()).sent == 3
        assert (await relay.publish_pending()).sent == 0  # marked sent: nothing published twice
        assert (await relay.publish_pending()).sent == 0
    finally:
        await producer.stop()
    records = await read_all(settings, names(INCIDENTS), expect=3)
    assert [cloudevents.decode(r.value, r.headers).id for r in records] == [e.id for e in events]
    assert {r.key for r in records} == {b"inc-1"}
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_outbox_rolls_back_with_the_state(pool: asyncpg.Pool, names: TopicNames) -> None:
    event = IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot())
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await write_events(conn, service="detector", names=names, events=[event])
            raise RuntimeError("the state change failed")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_detector_turns_alerts_into_incidents(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    raw = names(ALERTS_RAW)
    on_a = [alert_dict(host="host-a", time=f"2026-11-24T09:0{n}:00Z") for n in range(3)]
    on_b = [alert_dict(host="host-b", title="Reverse shell spawned", severity="critical") for _ in range(2)]
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = [
        (None, json.dumps(a).encode(), []) for a in [*on_a, *on_b, on_a[0]]
    ]  # last: a duplicate
    records.append((None, b'{"id": "no-source"}', []))
    await produce(settings, raw, records)
    detector = Detector(correlation_window=timedelta(minutes=30))

    async with consume_loop(settings, pool, service="detector", topics=[raw], decoder=decode, handler=detector.handle):
        await eventually(lambda: _committed_is(settings, raw, len(records)))

    incidents = {
        r["correlation_key"]: r for r in await pool.fetch("SELECT * FROM detector_incidents ORDER BY correlation_key")
    }
    assert set(incidents) == {"host:host-a", "host:host-b"}
    assert incidents["host:host-a"]["alert_count"] == 3
    assert incidents["host:host-b"]["type"] == "system_compromise"
    assert incidents["host:host-b"]["severity"] == "SEV1"
    assert await pool.fetchval("SELECT count(*) FROM detector_alerts") == 5
    outbox_headers = [dict(r["headers"]) for r in await pool.fetch("SELECT headers FROM outbox ORDER BY id")]
    outbox_types = [headers["ce_type"] for headers in outbox_headers]
    assert outbox_types.count("vigil.incident.detected.v1") == 2
    dead = await read_all(settings, names(ALERTS_DLQ), expect=1)
    assert dead[0].value == b'{"id": "no-source"}'
    assert b"as a native alert it lacks severity, source, time, title" in dict(dead[0].headers)["vigil_dlq_reason"]
    assert dict(dead[0].headers)["vigil_dlq_code"] == b"unknown_format"


async def _committed_is(settings: VigilSettings, topic: str, expected: int) -> bool:
    total = 0
    for partition in range(12):
        total += await committed(settings, group_id(settings, "detector"), topic, partition) or 0
    return total == expected


async def test_resolved_incident_stops_collecting_alerts(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    detector = Detector(correlation_window=timedelta(minutes=30))
    raw = names(ALERTS_RAW)
    await produce(settings, raw, [(None, json.dumps(alert_dict(host="h1")).encode(), [])])
    async with consume_loop(
        settings, pool, service="detector", topics=[raw, names(COORDINATION)], decoder=decode, handler=detector.handle
    ):
        incident_id = await eventually(lambda: pool.fetchval("SELECT id FROM detector_incidents"))
        resolved = IncidentStateChanged.model_validate(
            {
                "source": "/vigil/coordinator",
                "subject": incident_id,
                "data": {"from_state": "detected", "to_state": "resolved", "actor": "alice"},
            }
        )
        encoded = cloudevents.encode(resolved)
        await produce(settings, names(COORDINATION), [(encoded.key, encoded.value, encoded.headers)])
        await eventually(lambda: pool.fetchval("SELECT closed FROM detector_incidents WHERE id = $1", incident_id))
        await produce(settings, raw, [(None, json.dumps(alert_dict(host="h1")).encode(), [])])
        await eventually(lambda: _count_is(pool, "SELECT count(*) FROM detector_incidents", 2))


async def _count_is(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return bool(await pool.fetchval(sql) == expected)


async def test_unacknowledged_incident_escalates_down_the_rotation(pool: asyncpg.Pool, names: TopicNames) -> None:
    oncall = load_oncall()
    coordinator = Coordinator(oncall)
    detected = IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot())
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=names)
        await coordinator.on_detected(ctx, detected)
        first = [e for e in ctx.emitted if isinstance(e, IncidentEscalated)]
    assert len(first) == 1
    commander = first[0].data.commander
    assert first[0].data.alert_count == 1 and first[0].data.severity_reason

    # The deadline passes (as if the service had been down): the poller fires it at start.
    await pool.execute("UPDATE timers SET due_at = now() - interval '1 minute' WHERE kind = $1", ACK_DEADLINE)
    poller = TimerPoller(
        service=SERVICE, pool=pool, names=names, handlers=coordinator.timer_handlers, locks=coordinator.timer_locks
    )
    assert await poller.fire_due() == 1
    rows = await pool.fetch("SELECT value, headers FROM outbox ORDER BY id")
    last = cloudevents.decode(rows[-1]["value"], [(n, v.encode()) for n, v in rows[-1]["headers"]])
    assert isinstance(last, IncidentEscalated)
    assert last.data.commander != commander
    assert last.data.reason.startswith(f"not acknowledged by {commander}")
    assert await poller.fire_due() == 0  # the next deadline lies in the future

    # Acknowledging cancels the pending deadline.
    ack = AcknowledgeIncident(source="/test", subject="inc-1", data=CommandArgs(actor=last.data.commander))
    async with pool.acquire() as conn, conn.transaction():
        await coordinator.apply_command(HandlerContext(conn=conn, service=SERVICE, names=names), ack)
    pending = await pool.fetchval(
        "SELECT count(*) FROM timers WHERE kind = $1 AND fired_at IS NULL AND cancelled_at IS NULL", ACK_DEADLINE
    )
    assert pending == 0


async def test_an_unanswered_chain_pages_everyone_in_order_then_the_fallback_once(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall())
    detected = IncidentDetected(source="/vigil/detector", subject="inc-x", data=snapshot())  # SEV1
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=names)
        await coordinator.on_detected(ctx, detected)
        await write_context(conn, ctx)
    poller = TimerPoller(
        service=SERVICE, pool=pool, names=names, handlers=coordinator.timer_handlers, locks=coordinator.timer_locks
    )
    for _ in range(4):  # two more people, then the fallback, then nothing
        await pool.execute("UPDATE timers SET due_at = now() - interval '1 second' WHERE kind = $1", ACK_DEADLINE)
        await poller.fire_due()
    rows = await pool.fetch("SELECT value, headers FROM outbox ORDER BY id")
    events = [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]
    paged = [e.data.commander for e in events if isinstance(e, IncidentEscalated)]
    assert len(paged) == 3 and len(set(paged)) == 3  # everyone of the security schedule, each once
    [exhausted] = [e for e in events if isinstance(e, EscalationExhausted)]
    assert exhausted.data.paged == paged
    assert await pool.fetchval("SELECT paged FROM coordinator_incidents WHERE incident_id = 'inc-x'") == paged


async def test_housekeeping_prunes_only_what_has_expired(pool: asyncpg.Pool, names: TopicNames) -> None:
    await pool.execute(
        """INSERT INTO processed_events (service, event_id, processed_at) VALUES
           ('analyzer', 'old', now() - interval '9 days'), ('analyzer', 'recent', now() - interval '1 day'),
           ('reporter', 'other-service', now() - interval '9 days')"""
    )
    events = [IncidentDetected(source="/vigil/analyzer", subject=f"inc-{n}", data=snapshot()) for n in range(3)]
    async with pool.acquire() as conn, conn.transaction():
        await write_events(conn, service="analyzer", names=names, events=events)
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM outbox ORDER BY id")]
    await pool.execute("UPDATE outbox SET sent_at = now() - interval '2 hours' WHERE id = $1", ids[0])
    await pool.execute("UPDATE outbox SET sent_at = now() WHERE id = $1", ids[1])  # ids[2]: not yet sent

    assert await housekeeping.prune(pool, service="analyzer") == (1, 1)
    assert {r["event_id"] for r in await pool.fetch("SELECT event_id FROM processed_events")} == {
        "recent",
        "other-service",
    }
    assert [r["id"] for r in await pool.fetch("SELECT id FROM outbox ORDER BY id")] == ids[1:]
