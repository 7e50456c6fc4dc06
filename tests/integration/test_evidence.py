"""No evidence lost, no crash loop: re-sent alerts, incidents too large for one event, escalation's end."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.analyzer import handlers as analyzer
from services.coordinator import schedules
from services.coordinator.handlers import ACK_DEADLINE, SERVICE, Coordinator
from services.coordinator.service import load_oncall
from services.detector.handlers import Detector, decode
from services.reporter import handlers as reporter
from shared import cloudevents, housekeeping, timers
from shared.consumer import HandlerContext, Inbound, decode_cloudevent, write_context
from shared.db import connect
from shared.events import (
    MAX_ANALYSIS_INDICATORS,
    CommandArgs,
    CommandRejected,
    EscalationExhausted,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentType,
    IncidentUpdated,
    ResolveIncident,
    Severity,
    TasksCreated,
)
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import ALERTS_RAW, ANALYSES, COMMANDS, INCIDENTS, TopicNames
from tests.factories import T0, alert, alert_dict, snapshot
from tests.helpers import committed, consume_loop, eventually, produce, read_all, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WINDOW = timedelta(minutes=30)


def _repeats_counted() -> float:
    return REGISTRY.get_sample_value("vigil_detector_alerts_total", {"outcome": "repeat"}) or 0.0


async def _committed(settings: VigilSettings, group: str, topic: str) -> int:
    return await committed(settings, group, topic) or 0


# ---- 1. an alert re-sent after its processed id expired -------------------------------------------


async def test_alert_resent_after_its_ledger_expired_is_a_repeat(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    raw = names(ALERTS_RAW)
    record: tuple[bytes | None, bytes, list[tuple[str, bytes]]] = (
        None,
        json.dumps(alert_dict(host="web-07")).encode(),
        [],
    )
    detector = Detector(correlation_window=WINDOW)
    async with consume_loop(
        settings, pool, service="detector", topics=[raw], decoder=decode, handler=detector.handle
    ) as (_loop, task):
        await produce(settings, raw, [record])
        await eventually(lambda: _committed_is(settings, raw, 1))
        first = await pool.fetchrow("SELECT repeats, last_seen_at FROM detector_alerts")
        assert first is not None and first["repeats"] == 0
        processed, _sent = await housekeeping.prune(pool, service="detector", keep_processed=timedelta(0))
        assert processed == 1
        repeats_before = _repeats_counted()

        await produce(settings, raw, [record])  # the same alert, weeks later
        await eventually(lambda: _committed_is(settings, raw, 2))
        assert not task.done()  # the loop keeps running

    stored = await pool.fetch("SELECT repeats, last_seen_at FROM detector_alerts")
    assert len(stored) == 1
    assert stored[0]["repeats"] == 1
    assert stored[0]["last_seen_at"] > first["last_seen_at"]
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 1
    assert await pool.fetchval("SELECT alert_count FROM detector_incidents") == 1
    # The first IncidentDetected, then the repeat made visible: no second detection, no update.
    types = [dict(r["headers"])["ce_type"] for r in await pool.fetch("SELECT headers FROM outbox ORDER BY id")]
    assert types == ["vigil.incident.detected.v1", "vigil.incident.alerts_changed.v1"]
    assert _repeats_counted() == repeats_before + 1


async def _committed_is(settings: VigilSettings, topic: str, expected: int) -> bool:
    return await _committed(settings, group_id(settings, "detector"), topic) == expected


async def test_two_detectors_storing_one_alert_at_once_count_a_repeat(pool: asyncpg.Pool, names: TopicNames) -> None:
    detector = Detector(correlation_window=WINDOW)
    resent = alert(host="db-01")
    async with pool.acquire() as first, pool.acquire() as second:
        one = first.transaction()
        await one.start()
        ctx_one = HandlerContext(conn=first, service="detector", names=names)
        await detector.handle_alerts(ctx_one, [resent])

        async def other_replica() -> HandlerContext:
            async with second.transaction():
                ctx = HandlerContext(conn=second, service="detector", names=names)
                await detector.handle_alerts(ctx, [resent])
                return ctx

        racing = asyncio.create_task(other_replica())
        # The other replica found no stored alert and waits on the first one's uncommitted key.
        await eventually(lambda: _waits_on_a_lock(pool, second.get_server_pid()))
        await one.commit()
        ctx_two = await racing

    assert len(ctx_one.emitted) == 1
    # It took the alert for a repeat: no incident, only the repeat made visible.
    assert [type(e).__name__ for e in ctx_two.emitted] == ["IncidentAlertsChanged"]
    assert await pool.fetchval("SELECT repeats FROM detector_alerts WHERE key = $1", resent.key) == 1
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 1


async def _waits_on_a_lock(pool: asyncpg.Pool, pid: int) -> bool:
    return bool(await pool.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))


# ---- 2. every alert of a burst reaches the analyzer and the reporter ---------------------------------


BURST = 1_000


async def test_every_alert_of_a_burst_reaches_the_analyzer_and_the_reporter(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    raw, incidents, analyses = names(ALERTS_RAW), names(INCIDENTS), names(ANALYSES)
    addresses = [f"198.51.{n // 250}.{n % 250 + 1}" for n in range(BURST)]
    burst = [
        alert_dict(
            host="web-01",
            src_ip=address,
            title="sshd: brute force trying to get access to the system",
            description=f"Multiple authentication failures from {address}",
            time=(T0 + timedelta(seconds=n)).isoformat(),
        )
        for n, address in enumerate(addresses)
    ]
    await _produce_fast(settings, raw, [json.dumps(a).encode() for a in burst])
    detector = Detector(correlation_window=WINDOW)

    async with (
        consume_loop(settings, pool, service="detector", topics=[raw], decoder=decode, handler=detector.handle),
        consume_loop(
            settings, pool, service="analyzer", topics=[incidents], decoder=decode_cloudevent, handler=analyzer.handle
        ),
        consume_loop(
            settings,
            pool,
            service="reporter",
            topics=[incidents, analyses],
            decoder=decode_cloudevent,
            handler=reporter.handle,
        ),
        _relay(settings, pool, "detector"),
        _relay(settings, pool, "analyzer"),
    ):
        incident_id = await eventually(lambda: pool.fetchval("SELECT id FROM detector_incidents"))
        await eventually(lambda: _analysed(pool, incident_id, BURST), timeout=60)

    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 1
    stored = await pool.fetch("SELECT body FROM reporter_alerts WHERE incident_id = $1", incident_id)
    assert len(stored) == BURST
    assert {r["body"]["src_ip"] for r in stored} == set(addresses)
    kept = await pool.fetch(
        "SELECT value FROM analyzer_indicators WHERE incident_id = $1 AND kind = 'ipv4'", incident_id
    )
    assert set(addresses) <= {r["value"] for r in kept}

    # The detector cut the burst into bounded parts, in order; each batch was analysed once, on its last part.
    events = [cloudevents.decode(r.value, r.headers) for r in await read_all(settings, incidents, expect=BURST)]
    parts = [e.data for e in events if isinstance(e, IncidentDetected | IncidentUpdated)]
    assert sum(len(p.new_alerts) for p in parts) == BURST
    assert max(len(p.new_alerts) for p in parts) <= 200
    assert any(p.parts > 1 for p in parts)
    batches = sum(p.part == p.parts for p in parts)
    analysed = [cloudevents.decode(r.value, r.headers) for r in await read_all(settings, analyses, expect=batches)]
    assert all(isinstance(e, IncidentAnalyzed) for e in analysed)
    assert len(analysed) == batches
    last = analysed[-1]
    assert isinstance(last, IncidentAnalyzed) and last.data.alert_count == BURST
    # It carries the worst of them, and counts every one.
    assert len(last.data.indicators) == MAX_ANALYSIS_INDICATORS
    assert last.data.indicator_count == len(kept) and last.data.indicators_by_kind["ipv4"] == len(kept)
    assert f"; {len(kept)} indicators (" in last.data.summary
    summaries = await pool.fetch(
        """SELECT summary FROM reporter_timeline
           WHERE incident_id = $1 AND type IN ('vigil.incident.detected.v1', 'vigil.incident.updated.v1')""",
        incident_id,
    )
    split = [p for p in parts if p.parts > 1]
    assert sum(f"(part {p.part} of {p.parts})" in r["summary"] for p in split for r in summaries) == len(split)


async def _analysed(pool: asyncpg.Pool, incident_id: str, alerts: int) -> bool:
    """The reporter holds every alert and the analysis of all of them."""
    stored = await pool.fetchval("SELECT count(*) FROM reporter_alerts WHERE incident_id = $1", incident_id)
    analysis = await pool.fetchval("SELECT analysis FROM reporter_incidents WHERE id = $1", incident_id)
    return bool(stored == alerts and analysis and analysis["alert_count"] == alerts)


async def _produce_fast(settings: VigilSettings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(settings, client_id="burst")
    await producer.start()
    try:
        sent = [await producer.send(topic, value=value, key=b"host:web-01", partition=0) for value in values]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def _relay(settings: VigilSettings, pool: asyncpg.Pool, service: str) -> AsyncIterator[None]:
    """Run a service's outbox relay, as the service does, until the block ends."""
    producer = make_producer(settings, client_id=f"{service}-relay")
    await producer.start()
    relay = OutboxRelay(
        service=service, pool=pool, producer=producer, connect=lambda: connect(settings.database_url), idle_wait_s=0.1
    )
    async with running(relay.run()):
        yield
        await producer.stop()


# ---- 3. the coordinator: the end of the rotation, and states from a newer version -----------------


async def test_whole_rotation_paged_without_acknowledgement_is_reported_once(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    oncall = load_oncall()
    coordinator = Coordinator(oncall)
    detected = IncidentDetected(
        source="/vigil/detector", subject="inc-1", data=snapshot(type=IncidentType.SYSTEM_COMPROMISE)
    )
    await _handle(pool, names, coordinator, detected)
    schedule = schedules.route(oncall, incident_type="system_compromise", severity="SEV1", services=())
    members = schedules.escalation_order(schedule, T0)
    poller = TimerPoller(
        service=SERVICE, pool=pool, names=names, handlers=coordinator.timer_handlers, locks=coordinator.timer_locks
    )

    # Each deadline passes unacknowledged: the poller pages the next person, then reports the end.
    for _ in range(len(members)):
        await pool.execute(
            "UPDATE timers SET due_at = now() - interval '1 minute' WHERE fired_at IS NULL AND kind = $1", ACK_DEADLINE
        )
        assert await poller.fire_due() == 1
    assert await poller.fire_due() == 0  # nothing left to fire

    events = await _outbox(pool)
    paged = [e.data.commander for e in events if isinstance(e, IncidentEscalated)]
    assert len(paged) == len(members) and len(set(paged)) == len(paged)
    [exhausted] = [e for e in events if isinstance(e, EscalationExhausted)]
    assert exhausted.subject == "inc-1"
    assert exhausted.data.rotation == schedule.name
    assert exhausted.data.paged == paged  # everyone, in the order they were paged
    assert exhausted.data.last_commander == paged[-1]
    assert exhausted.data.severity is Severity.SEV1
    assert "acknowledged" in exhausted.data.reason

    # A deadline set again later (a severity raised, say) does not report it a second time.
    async with pool.acquire() as conn, conn.transaction():
        await timers.schedule(
            conn, service=SERVICE, kind=ACK_DEADLINE, subject="inc-1", due_at=T0, payload={"step": len(paged) + 1}
        )
    assert await poller.fire_due() == 1
    assert sum(isinstance(e, EscalationExhausted) for e in await _outbox(pool)) == 1


async def test_the_parts_of_one_batch_escalate_once(pool: asyncpg.Pool, names: TopicNames) -> None:
    coordinator = Coordinator(load_oncall())
    await _handle(
        pool, names, coordinator, IncidentDetected(source="/d", subject="inc-1", data=snapshot(severity=Severity.SEV3))
    )
    # Unacknowledged: the deadline pages the next person down the rotation.
    await pool.execute(
        "UPDATE timers SET due_at = now() - interval '1 minute' WHERE fired_at IS NULL AND kind = $1", ACK_DEADLINE
    )
    poller = TimerPoller(
        service=SERVICE, pool=pool, names=names, handlers=coordinator.timer_handlers, locks=coordinator.timer_locks
    )
    assert await poller.fire_due() == 1
    before = len(await _outbox(pool))

    # A batch raises the severity; its alerts come in three parts, each saying SEV2.
    for part in (1, 2, 3):
        updated = IncidentUpdated(
            source="/d", subject="inc-1", data=snapshot(severity=Severity.SEV2, part=part, parts=3, alert_count=500)
        )
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service=SERVICE, names=names)
            await coordinator.on_updated(ctx, updated)
            await write_context(conn, ctx)

    new = (await _outbox(pool))[before:]
    # One page, and the runbook's tasks a SEV2 has beyond a SEV3's, made once.
    assert [type(e) for e in new] == [IncidentEscalated, TasksCreated]
    assert isinstance(new[0], IncidentEscalated) and new[0].data.reason == "severity raised from SEV3 to SEV2"
    # The walk down the rotation goes on from the current commander, not back to the first step.
    pending = await pool.fetchval(
        "SELECT payload FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL AND kind = $1", ACK_DEADLINE
    )
    assert pending == {"step": 2}


async def test_a_state_from_a_newer_coordinator_is_left_alone_without_crashing(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(load_oncall())
    detected = IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot(severity=Severity.SEV3))
    await _handle(pool, names, coordinator, detected)
    # A newer replica moved the incident to a state this version does not know.
    await pool.execute("UPDATE coordinator_incidents SET state = 'monitoring' WHERE incident_id = 'inc-1'")
    written = await pool.fetchval("SELECT count(*) FROM outbox")

    raised = IncidentUpdated(source="/vigil/detector", subject="inc-1", data=snapshot(severity=Severity.SEV1))
    resolve = ResolveIncident(source="/test", subject="inc-1", data=CommandArgs(actor="alice"))
    incidents, commands = names(INCIDENTS), names(COMMANDS)
    await produce(settings, incidents, [_record(raised)])
    await produce(settings, commands, [_record(resolve)])
    async with consume_loop(
        settings,
        pool,
        service=SERVICE,
        topics=[incidents, commands],
        decoder=decode_cloudevent,
        handler=coordinator.handle,
    ) as (_loop, task):
        await eventually(lambda: _all_committed(settings, [incidents, commands]))
        assert not task.done()

    new = (await _outbox(pool))[written:]
    assert [type(e) for e in new] == [CommandRejected]  # nothing escalated on the unknown state
    assert isinstance(new[0], CommandRejected)
    assert "'monitoring'" in new[0].data.reason
    assert "severity change not escalated" in caplog.text and "'monitoring'" in caplog.text

    # The acknowledgement deadline fires on it: nothing is paged, and the timer is done, not retried.
    await pool.execute(
        "UPDATE timers SET due_at = now() - interval '1 minute' WHERE fired_at IS NULL AND kind = $1", ACK_DEADLINE
    )
    poller = TimerPoller(
        service=SERVICE, pool=pool, names=names, handlers=coordinator.timer_handlers, locks=coordinator.timer_locks
    )
    assert await poller.fire_due() == 1
    assert len(await _outbox(pool)) == written + 1
    timer = await pool.fetchrow(
        "SELECT fired_at, attempts, parked_at FROM timers WHERE subject = 'inc-1' AND kind = $1", ACK_DEADLINE
    )
    assert timer is not None and timer["fired_at"] and timer["attempts"] == 0 and timer["parked_at"] is None
    state = await pool.fetchval("SELECT state FROM coordinator_incidents WHERE incident_id = 'inc-1'")
    assert state == "monitoring"


async def test_updates_of_one_incident_in_one_run_each_escalate_from_the_severity_the_one_before_left(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall())
    await _handle(
        pool, names, coordinator, IncidentDetected(source="/d", subject="inc-1", data=snapshot(severity=Severity.SEV3))
    )
    await _handle(
        pool, names, coordinator, IncidentDetected(source="/d", subject="inc-2", data=snapshot(severity=Severity.SEV3))
    )
    before = len(await _outbox(pool))
    run = [
        IncidentUpdated(source="/d", subject=subject, data=snapshot(severity=severity))
        for subject, severity in [("inc-1", Severity.SEV2), ("inc-2", Severity.SEV3), ("inc-1", Severity.SEV1)]
    ]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=names)
        await coordinator.handle(ctx, [Inbound(event_id=e.id, item=e, record=None) for e in run])
        await write_context(conn, ctx)
    pages = [e for e in (await _outbox(pool))[before:] if isinstance(e, IncidentEscalated)]
    assert [(e.subject, e.data.reason) for e in pages] == [
        ("inc-1", "severity raised from SEV3 to SEV2"),
        ("inc-1", "severity raised from SEV2 to SEV1"),
    ]


async def _handle(pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator, event: IncidentDetected) -> None:
    """Handle an event as the consume loop does: its events go to the outbox in the same transaction."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=names)
        await coordinator.on_detected(ctx, event)
        await write_context(conn, ctx)


async def _outbox(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


def _record(event: EventBase) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    encoded = cloudevents.encode(event)
    return encoded.key, encoded.value, encoded.headers


async def _all_committed(settings: VigilSettings, topics: list[str]) -> bool:
    return all([await _committed(settings, group_id(settings, SERVICE), topic) == 1 for topic in topics])
