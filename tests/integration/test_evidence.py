"""No evidence lost, no crash loop: re-sent alerts, incidents too large for one event, escalation's end."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.detector.handlers import Detector, decode
from shared import housekeeping
from shared.consumer import HandlerContext
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, TopicNames
from tests.factories import alert, alert_dict
from tests.helpers import committed, consume_loop, eventually, produce

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
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1  # the first IncidentDetected only
    assert _repeats_counted() == repeats_before + 1


async def _committed_is(settings: VigilSettings, topic: str, expected: int) -> bool:
    return await _committed(settings, "vigil-detector", topic) == expected


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
    assert ctx_two.emitted == []  # it took the alert for a repeat: no incident, no event
    assert await pool.fetchval("SELECT repeats FROM detector_alerts WHERE key = $1", resent.key) == 1
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 1


async def _waits_on_a_lock(pool: asyncpg.Pool, pid: int) -> bool:
    return bool(await pool.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))
