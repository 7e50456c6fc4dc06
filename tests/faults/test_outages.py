"""Outages of what the services stand on: Postgres restarted mid-stream, the broker unresponsive for 30 s.

Postgres here is an embedded server of the test's own (the machine's shared one serves other tests);
the broker is one of the test's own too, paused with SIGSTOP: the embedded broker keeps its data in
memory only, so stopping its process would lose every topic and offset, which no real cluster does.
A paused broker is a hung or partitioned one: connections stay open and nothing answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from shared.db import create_pool, migrate
from shared.embedded import EmbeddedBroker, EmbeddedPostgres
from shared.settings import KafkaSettings, VigilSettings
from shared.topics import ALERTS_RAW, TopicNames, ensure_topics
from tests.faults.accounting import Accounting, account_lag, account_run
from tests.faults.harness import EstateFactory, Feed, Stack, feed_alerts, settle, value_digest
from tests.helpers import empty_database

pytestmark = [pytest.mark.faults, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]

ALERTS = 1200
HOSTS = 8


async def test_postgres_restarted_mid_stream_loses_nothing(settings: VigilSettings, tmp_path: Path) -> None:
    book = Accounting(f"Postgres restarted mid-stream: {ALERTS} alerts")
    feed = Feed()
    with tempfile.TemporaryDirectory(prefix="vigil-faults-pg-") as folder:
        postgres = await asyncio.to_thread(EmbeddedPostgres(Path(folder) / "data").start)
        try:
            async with empty_database(postgres.url("postgres")) as url:
                pool = await create_pool(url, max_size=1)
                try:
                    await migrate(pool)
                finally:
                    await pool.close()
                own = settings.model_copy(update={"database_url": url})
                stack = Stack(own, tmp_path)
                async with stack.running():
                    raw = TopicNames(own.topic_prefix)(ALERTS_RAW)
                    feeding = asyncio.create_task(
                        feed_alerts(own, raw, count=ALERTS, waves=6, every_s=4.0, hosts=HOSTS, out=feed)
                    )
                    await asyncio.sleep(6)
                    down = time.monotonic()
                    await asyncio.to_thread(postgres.stop)  # a fast shutdown: every connection is cut
                    await asyncio.sleep(10)
                    await asyncio.to_thread(postgres.start)
                    book.note("seconds Postgres was down", round(time.monotonic() - down))
                    assert postgres.url("postgres") == with_postgres_db(url), "Postgres came back elsewhere"
                    await feeding
                    settled = await settle(stack, alerts=len(feed.keys), timeout=400)
                    book.note("seconds to settle after the last alert", round(settled.seconds))
                    await account_lag(book, own)
                await account_run(book, own, stack, feed)
        finally:
            await asyncio.to_thread(postgres.stop)
    book.verify()


def with_postgres_db(url: str) -> str:
    from shared.db import with_database

    return with_database(url, "postgres")


async def test_an_unresponsive_broker_gets_503s_and_the_services_resume(
    settings: VigilSettings, tmp_path: Path
) -> None:
    book = Accounting(f"broker unresponsive for 30 s: {ALERTS} alerts through the HTTP ingest")
    feed = Feed()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        assert broker._process is not None
        own = settings.model_copy(update={"kafka": KafkaSettings(bootstrap_servers=broker.bootstrap_servers)})
        await ensure_topics(own.kafka, TopicNames(own.topic_prefix))
        stack = Stack(own, tmp_path, extra_env={"VIGIL_INGEST_PUBLISH_TIMEOUT_S": "3"})
        async with stack.running():
            sending = asyncio.create_task(send_over_http(stack, count=ALERTS, batches=60, every_s=1.0, out=feed))
            await asyncio.sleep(8)
            os.kill(broker._process.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(30)
            finally:
                os.kill(broker._process.pid, signal.SIGCONT)
            answers = await sending
            book.expect("HTTP ingest answered 503 while the broker hung", True, answers[503] > 0, str(dict(answers)))
            book.expect(
                "answers other than 202 and 503", 0, sum(n for code, n in answers.items() if code not in (202, 503))
            )
            settled = await settle(stack, alerts=len(feed.keys), timeout=400)
            book.note("seconds to settle after the last alert", round(settled.seconds))
            await account_lag(book, own)
        await account_run(book, own, stack, feed)
    book.verify()


async def send_over_http(stack: Stack, *, count: int, batches: int, every_s: float, out: Feed) -> dict[int, int]:
    """POST alerts to the detector's ingest as NDJSON batches; a batch answered 503 is sent again until taken.

    Return how many answers of each status came back.
    """
    from datetime import UTC, datetime

    from bench import formats
    from tests.faults.harness import SEED

    factory = EstateFactory(hosts=HOSTS, seed=SEED)
    factory.run = "http"
    answers: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=stack.url("detector", ""), timeout=30) as client:
        for _ in range(batches):
            started = time.monotonic()
            lines = []
            for _ in range(count // batches):
                _kafka_key, alert = factory.make()
                key, value = formats.encode(alert, datetime.now(UTC), "mixed")
                out.keys.append(key)
                out.by_value[value_digest(value)] = key
                out.formats[formats.format_for(alert, "mixed").name] += 1
                lines.append(value)
            body = b"\n".join(lines)
            while True:
                try:
                    response = await client.post(
                        "/api/v1/alerts", content=body, headers={"Content-Type": "application/x-ndjson"}
                    )
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all: the sender tries again, as for a 503
                answers[status] = answers.get(status, 0) + 1
                if status == 202:
                    break
                await asyncio.sleep(1)
            await asyncio.sleep(max(every_s - (time.monotonic() - started), 0))
    return answers
