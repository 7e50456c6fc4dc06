"""Graceful shutdown: SIGTERM mid-stream drains, commits, hands back and exits 0 quickly, losing nothing.

Each service in turn gets SIGTERM while alerts flow; the supervisor starts it again. A service that
committed every offset it handled sees no duplicate after its restart (the ledger would absorb
one, silently: the metric says so), leaves no effect marked running, and the run's accounting holds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import SERVICE_NAMES, VigilSettings
from shared.topics import ALERTS_RAW, TopicNames
from tests.faults.accounting import Accounting, account_lag, account_run
from tests.faults.harness import Feed, Kill, Stack, feed_alerts, settle

pytestmark = [pytest.mark.faults, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]

ALERTS = 1500
HOSTS = 8
EXIT_WITHIN_S = 10.0


async def duplicates_seen(stack: Stack, service: str) -> float:
    """Events the service's consume loop found already handled since it started."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(stack.url(service, "/metrics"))).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vigil_events_handled_total" and sample.labels.get("outcome") == "duplicate"
    )


async def test_sigterm_drains_commits_and_exits_in_time(settings: VigilSettings, tmp_path: Path) -> None:
    book = Accounting(f"graceful shutdown: SIGTERM to each service mid-stream, {ALERTS} alerts")
    stack = Stack(settings, tmp_path)
    feed = Feed()
    async with stack.running():
        raw = TopicNames(settings.topic_prefix)(ALERTS_RAW)
        feeding = asyncio.create_task(
            feed_alerts(settings, raw, count=ALERTS, waves=10, every_s=3.0, hosts=HOSTS, out=feed)
        )
        assert stack.supervisor is not None
        conn = await asyncpg.connect(settings.database_url)
        try:
            for service in SERVICE_NAMES:
                await asyncio.sleep(2)
                process = stack.supervisor.child(service).process
                assert process is not None
                sent = time.monotonic()
                os.kill(process.pid, signal.SIGTERM)
                stack.stops.append(Kill(service, process.pid, sent))
                code = await process.wait()
                took = time.monotonic() - sent
                book.expect(f"{service}: exit code after SIGTERM", 0, code)
                book.expect(
                    f"{service}: exited within {EXIT_WITHIN_S:.0f}s", True, took <= EXIT_WITHIN_S, f"{took:.1f}s"
                )
                book.note(f"{service}: seconds to exit", round(took, 1))
                running = await conn.fetchval(
                    "SELECT count(*) FROM effects WHERE service = $1 AND status = 'running'", service
                )
                # Handed back on stop, else run again when their lease ends (nothing lost, only later).
                book.note(f"{service}: effects left running at exit", running)
                await stack.wait_ready([service], timeout=120)
        finally:
            await conn.close()
        await feeding
        settled = await settle(stack, alerts=len(feed.keys), timeout=400)
        book.note("seconds to settle after the last alert", round(settled.seconds))
        for service in SERVICE_NAMES:
            twice = await duplicates_seen(stack, service)
            if service == "responder":
                # Its API records each approval as handled when it answers, before the command comes back.
                book.note("responder: commands its own API had applied", twice)
            else:
                book.expect(f"{service}: events handled twice after its restart", 0, twice)
        await account_lag(book, settings)
    await account_run(book, settings, stack, feed, restarts=len(SERVICE_NAMES))
    book.verify()
