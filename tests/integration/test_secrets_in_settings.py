"""Secrets planted in the settings reach no log line and no record on any topic while alerts flow through Vigil.

The database password, the ingest tokens, the ingest HMAC secret, the intel providers' API keys and the
CLI's API token are set, the detector, analyzer, coordinator and reporter consume as their specs say, and
alerts arrive through the authenticated HTTP ingest (a token, a signature, a refused forged token) until the
reporter shows the incident. Every log record at DEBUG, and every record (value, key and headers) on every
topic, is then searched for each secret. (Secrets of the responder's connectors: test_secrets_stay_secret.)
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from aiokafka import TopicPartition
from pydantic import SecretStr

from shared.auth import sign
from shared.kafka import make_consumer
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, ALL_TOPICS, COORDINATION, INCIDENTS, TopicNames
from tests.helpers import eventually, serve_app
from tests.integration.test_merge import detector_app, pipeline

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

DB_PASSWORD = "planted-db-pw-7f3a9c"
INGEST_TOKEN = "planted-ingest-token-51be0d"
HMAC_SECRET = "planted-hmac-secret-c0ffee"
INTEL_KEY = "planted-intel-key-9d8e7f"
API_TOKEN = "planted-api-token-4b2a1e"
PLANTED = [DB_PASSWORD, INGEST_TOKEN, HMAC_SECRET, INTEL_KEY, API_TOKEN]


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def alert(number: int) -> dict[str, object]:
    return {
        "id": f"secret-{number}",
        "source": "falco",
        "title": "Reverse shell spawned in a container",
        "severity": "critical",
        "time": "2026-11-24T09:03:00Z",
        "host": "bastion-01",
        "src_ip": "10.0.0.5",
        "dst_ip": "203.0.113.45",
    }


async def everything_on_the_topics(settings: VigilSettings, names: TopicNames) -> str:
    """Every record on every topic (key, value, headers), as text."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    texts: list[str] = []
    try:
        # Every topic's metadata at once: asked for one topic at a time, others went unseen, and each
        # refresh of one not yet known waited out its timeout.
        known = await consumer.topics()
        wanted = [names(topic) for topic in ALL_TOPICS if names(topic) in known]
        assert names(ALL_TOPICS[0]) in wanted, f"the broker lists none of this test's topics: {sorted(known)}"
        partitions = [TopicPartition(t, p) for t in wanted for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        left = {p for p in partitions if ends[p] > 0}
        deadline = time.monotonic() + 60
        while left:
            assert time.monotonic() < deadline, f"not read to their end in 60 s: {sorted(map(str, left))}"
            for records in (await consumer.getmany(*left, timeout_ms=200)).values():
                texts += [f"{r.topic} {r.key!r} {r.value!r} {r.headers!r}" for r in records]
            left = {p for p in left if await consumer.position(p) < ends[p]}
        return "\n".join(texts)
    finally:
        await consumer.stop()


async def test_planted_secrets_reach_no_log_line_and_no_topic(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    planted = settings.model_copy(
        update={
            "database_url": with_password(settings.database_url, DB_PASSWORD),
            "ingest_tokens": SecretStr(f"edr:{INGEST_TOKEN}"),
            "ingest_hmac_secret": SecretStr(HMAC_SECRET),
            "intel_api_keys": SecretStr(f"abuseipdb:{INTEL_KEY},virustotal:{INTEL_KEY}"),
            "api_token": SecretStr(API_TOKEN),
            "allow_unauthenticated": False,
        }
    )
    async with (
        pipeline(planted, pool, names),
        detector_app(planted, pool, names) as app,
        serve_app(app, name="detector-api") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        sent = await client.post("/api/v1/alerts", json=alert(1), headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
        assert sent.status_code == 202, sent.text
        body = json.dumps(alert(2)).encode()
        signed = {"X-Vigil-Signature": sign(body, HMAC_SECRET.encode()), "Content-Type": "application/json"}
        assert (await client.post("/api/v1/alerts", content=body, headers=signed)).status_code == 202
        forged = await client.post(
            "/api/v1/alerts", json=alert(3), headers={"Authorization": f"Bearer {INGEST_TOKEN}x"}
        )
        assert forged.status_code == 401 and INGEST_TOKEN not in forged.text
        await eventually(lambda: pool.fetchval("SELECT count(*) > 0 FROM reporter_incidents"), timeout=60)
        # The coordinator consumes the incident beside the reporter, not before it: wait for its events too.
        coordinated = "SELECT count(*) > 0 FROM outbox WHERE topic = $1 AND sent_at IS NOT NULL"
        await eventually(lambda: pool.fetchval(coordinated, names(COORDINATION)), timeout=60)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    published = await everything_on_the_topics(settings, names)
    assert "bastion-01" in published  # the alerts did flow
    # Through the services: their events are read too.
    for topic in (ALERTS_RAW, INCIDENTS, COORDINATION):
        assert f"{names(topic)} " in published, f"nothing read from {names(topic)}"
    for secret in PLANTED:
        assert secret not in logged, "a secret reached a log line"
        assert secret not in published, "a secret reached a topic"
