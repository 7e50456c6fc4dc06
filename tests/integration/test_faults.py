"""Faults injected into the real Postgres while the consume loop runs: nothing lost, nothing doubled."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.detector.handlers import Detector, decode
from shared.consumer import HandlerContext, Inbound
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, TopicNames
from tests.factories import alert_dict
from tests.helpers import committed, consume_loop, eventually, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def test_lost_database_connections_are_retried_without_loss_or_duplicates(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    raw = names(ALERTS_RAW)
    detector = Detector(correlation_window=timedelta(minutes=30))
    admin = await asyncpg.connect(settings.database_url)
    waves = [[alert_dict(host=f"host-{n % 7}") for n in range(200)] for _ in range(3)]
    total = 0
    faults = 0

    async def handle_then_lose_the_connection(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        # The worst moment: the handler's writes are done, the transaction is not committed.
        nonlocal faults
        await detector.handle(ctx, batch)
        if faults < len(waves):
            faults += 1
            await admin.execute("SELECT pg_terminate_backend($1)", ctx.conn.get_server_pid())

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
    return sum([await committed(settings, "vigil-detector", topic, p) or 0 for p in range(12)])
