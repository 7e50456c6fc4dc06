"""The detector's HTTP ingest, through its real app, publishing to the real broker.

Every accepted record is read back from the raw topic: what a 202 promised is there, with its
format header and its entity as the key; what a refusal refused is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY
from pydantic import SecretStr
from typer.testing import CliRunner

from services.detector import api
from services.detector.adapters import FORMATS, parse_record
from services.detector.adapters.pagerduty import routing_digest
from shared.auth import sign
from shared.embedded import EmbeddedBroker, free_port
from shared.kafka import make_consumer, make_producer
from shared.service import Runtime, build_app
from shared.settings import KafkaSettings, VigilSettings
from shared.topics import ALERTS_RAW, TopicNames, ensure_topics
from tests.factories import alert_dict
from tests.helpers import read_all, serve_app
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NOW = datetime.now(UTC).replace(microsecond=0).isoformat()


@contextlib.asynccontextmanager
async def ingest(
    settings: VigilSettings, pool: asyncpg.Pool, producer: AIOKafkaProducer | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The detector's real app (its ingest router on build_app), publishing with a real producer."""
    configured = settings.model_copy(update=overrides)
    producer = producer or make_producer(configured, client_id="ingest-test")
    await producer.start()
    try:
        runtime = Runtime(
            service="detector",
            settings=configured,
            pool=pool,
            producer=producer,
            names=TopicNames(configured.topic_prefix),
        )
        app = build_app(runtime, api.routers(runtime))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://detector") as client:
            yield client
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def served_ingest(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """The detector's app served by uvicorn on a free port; yields its host:port."""
    producer = make_producer(settings, client_id="ingest-test")
    await producer.start()
    runtime = Runtime(
        service="detector", settings=settings, pool=pool, producer=producer, names=TopicNames(settings.topic_prefix)
    )
    try:
        async with serve_app(build_app(runtime, api.routers(runtime)), name="detector-ingest") as url:
            yield url.removeprefix("http://")
    finally:
        await producer.stop()


async def raw_records(settings: VigilSettings, names: TopicNames, expect: int) -> list[Any]:
    records = await read_all(settings, names(ALERTS_RAW), expect=expect)
    assert len(records) == expect, [r.value for r in records]
    return records


async def stored_count(settings: VigilSettings, topic: str) -> int:
    """The sum of the topic's end offsets: 0 exactly when nothing was ever published to it.

    (The embedded broker counts a batch of records as one offset, so only 0 and 1 are exact.)
    """
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def headers_of(record: Any) -> dict[str, bytes]:
    return dict(record.headers or ())


def ndjson(*items: dict[str, Any]) -> bytes:
    return "\n".join(json.dumps(item) for item in items).encode() + b"\n"


def requests_counted(route: str, status: int) -> float:
    return REGISTRY.get_sample_value("vigil_ingest_requests_total", {"route": route, "status": str(status)}) or 0.0


def records_counted(format_name: str) -> float:
    return REGISTRY.get_sample_value("vigil_ingest_records_total", {"format": format_name}) or 0.0


# ---- accepted: on the raw topic with its format and key ----------------------------------------


async def test_a_native_alert_is_on_the_raw_topic_with_its_format_and_entity_key_once_answered(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    alert = alert_dict(host="Web-01", time=NOW)
    requests_before, records_before = requests_counted("alerts", 202), records_counted("native")
    async with ingest(settings, pool) as client:
        response = await client.post("/api/v1/alerts", json=alert)
    assert response.status_code == 202, response.text
    (summary,) = response.json()["records"]
    assert summary["format"] == "native"
    assert summary["alerts"] == [f"suricata:{alert['id']}"]

    (record,) = await raw_records(settings, names, expect=1)
    assert json.loads(record.value) == alert
    assert record.key == b"host:web-01"
    assert headers_of(record)["vigil_format"] == b"native"
    assert "vigil_ingest_source" not in headers_of(record)  # open ingest: nobody to name
    assert (record.partition, record.offset) == (summary["partition"], summary["offset"])
    assert requests_counted("alerts", 202) == requests_before + 1
    assert records_counted("native") == records_before + 1


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [
        ("application/json", lambda items: json.dumps(items).encode()),
        ("application/x-ndjson", lambda items: ndjson(*items)),
        ("application/json", lambda items: ndjson(*items)),  # lines, recognised as such
        (None, lambda items: ndjson(*items)),
    ],
    ids=["array", "ndjson", "ndjson-detected", "no-content-type"],
)
async def test_an_array_and_ndjson_become_one_record_each(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    names: TopicNames,
    content_type: str | None,
    encode: Any,
) -> None:
    items = [
        alert_dict(host="db-01", time=NOW),
        alert_dict(host=None, src_ip="198.51.100.7", time=NOW),
        alert_dict(host=None, src_ip=None, user="Alice", time=NOW),
    ]
    headers = {"Content-Type": content_type} if content_type else {}
    async with ingest(settings, pool) as client:
        response = await client.post("/api/v1/alerts", content=encode(items), headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 3
    assert [r["index"] for r in response.json()["records"]] == [0, 1, 2]

    records = await raw_records(settings, names, expect=3)
    by_id = {json.loads(r.value)["id"]: r for r in records}
    assert [by_id[item["id"]].key for item in items] == [b"host:db-01", b"ip:198.51.100.7", b"user:alice"]
    assert all(headers_of(r)["vigil_format"] == b"native" for r in records)
    assert [json.loads(by_id[item["id"]].value) for item in items] == items


async def test_a_named_format_is_the_one_used_and_recorded(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    alert = alert_dict(time=NOW)
    async with ingest(settings, pool) as client:
        named = await client.post("/api/v1/alerts", params={"format": "native"}, json=alert)
        unknown = await client.post("/api/v1/alerts", params={"format": "carrier-pigeon"}, json=alert)
    assert named.status_code == 202, named.text
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "unknown_format"
    assert "carrier-pigeon" in unknown.json()["detail"]
    (record,) = await raw_records(settings, names, expect=1)
    assert headers_of(record)["vigil_format"] == b"native"


# ---- refused: the reason, and nothing stored ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "index", "words"),
    [
        (b"{not json", "not_json", 0, "not JSON"),
        (b"", "empty", None, "no record"),
        (b"[]", "empty", None, "no record"),
        (json.dumps({"hello": "world"}).encode(), "unknown_format", 0, "no adapter recognised"),
        (json.dumps(alert_dict(severity="apocalyptic")).encode(), "invalid_fields", 0, "severity"),
        (
            json.dumps([alert_dict(), alert_dict(severity="apocalyptic")]).encode(),
            "invalid_fields",
            1,
            "record at index 1",
        ),
        (ndjson(alert_dict(), alert_dict()) + b"{oops\n", "not_json", 2, "record at index 2"),
        (json.dumps([alert_dict(), 42]).encode(), "unknown_format", 1, "JSON int"),
        (json.dumps(alert_dict(title="a\u0000b")).encode(), "nul", 0, "NUL"),
        # An escaped unpaired surrogate is JSON, and no text: refused by index, as the same record alone would be.
        (json.dumps([alert_dict(), alert_dict(host="\ud800")]).encode(), "not_utf8", 1, "record at index 1"),
    ],
    ids=[
        "not-json",
        "empty",
        "empty-array",
        "unknown-shape",
        "invalid",
        "second-of-array",
        "ndjson-line",
        "scalar",
        "nul",
        "surrogate-in-array",
    ],
)
async def test_junk_is_refused_whole_with_the_reason_and_nothing_is_published(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    names: TopicNames,
    body: bytes,
    code: str,
    index: int | None,
    words: str,
) -> None:
    async with ingest(settings, pool) as client:
        refused = await client.post("/api/v1/alerts", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400, refused.text
    answer = refused.json()
    assert answer["code"] == code
    assert words in answer["detail"]
    assert answer.get("index") == index
    # Refused whole: not even the good records before the bad one were published.
    assert await stored_count(settings, names(ALERTS_RAW)) == 0


async def test_a_body_over_the_limit_is_refused_by_its_length_or_while_read(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    big = json.dumps(alert_dict(description="x" * 2000)).encode()

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for start in range(0, len(big), 256):
            yield big[start : start + 256]

    async with ingest(settings, pool, ingest_max_bytes=1024) as client:
        declared = await client.post("/api/v1/alerts", content=big, headers={"Content-Type": "application/json"})
        streamed = await client.post("/api/v1/alerts", content=chunked(), headers={"Content-Type": "application/json"})
        small = await client.post("/api/v1/alerts", json=alert_dict(time=NOW))
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "too_large"
        assert "1024-byte limit" in response.json()["detail"]
    assert "Content-Length" not in streamed.request.headers
    assert f"{len(big)} bytes" in declared.json()["detail"]
    assert small.status_code == 202, small.text
    assert await stored_count(settings, names(ALERTS_RAW)) == 1


async def test_a_record_within_the_limits_but_over_the_brokers_request_size_is_refused_not_retried(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    # Within the ingest's 1 MiB and the record limit, but not once the producer adds its key, headers and framing.
    body = json.dumps(alert_dict(time=NOW, labels={"padding": ""}))
    padded = body.replace('"padding": ""', '"padding": "' + "x" * (1_048_560 - len(body)) + '"')
    assert len(padded) == 1_048_560
    async with ingest(settings, pool) as client:
        response = await client.post("/api/v1/alerts", content=padded, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "too_large"
    assert "Retry-After" not in response.headers
    assert await stored_count(settings, names(ALERTS_RAW)) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_a_body_that_is_not_json_by_its_type_is_refused(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, content_type: str
) -> None:
    async with ingest(settings, pool) as client:
        response = await client.post(
            "/api/v1/alerts", content=json.dumps(alert_dict()), headers={"Content-Type": content_type}
        )
        vendor_json = await client.post(
            "/api/v1/alerts",
            content=json.dumps(alert_dict(time=NOW)),
            headers={"Content-Type": "application/vnd.example+json; charset=utf-8"},
        )
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert vendor_json.status_code == 202, vendor_json.text
    assert await stored_count(settings, names(ALERTS_RAW)) == 1


# ---- authentication ----------------------------------------------------------------------------

TOKENS = SecretStr("alertmanager:am-7f3c9e, falco:fa-41d2:with-colon")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", "Bearer am-7f3c9", "Bearer am-7f3c9e0", "Basic am-7f3c9e", "am-7f3c9e"],
)
async def test_with_tokens_configured_a_missing_or_wrong_token_is_refused(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with ingest(settings, pool, ingest_tokens=TOKENS) as client:
        response = await client.post("/api/v1/alerts", json=alert_dict(time=NOW), headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorized"
    assert "am-7f3c9e" not in response.text
    assert await stored_count(settings, names(ALERTS_RAW)) == 0


async def test_with_tokens_configured_each_source_is_named_on_its_records(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    sent = {"alertmanager": alert_dict(time=NOW), "falco": alert_dict(time=NOW)}
    async with ingest(settings, pool, ingest_tokens=TOKENS) as client:
        for token, source in (("am-7f3c9e", "alertmanager"), ("fa-41d2:with-colon", "falco")):
            response = await client.post(
                "/api/v1/alerts", json=sent[source], headers={"Authorization": f"bearer {token}"}
            )
            assert response.status_code == 202, response.text
    records = await raw_records(settings, names, expect=2)
    sources = {json.loads(r.value)["id"]: headers_of(r)["vigil_ingest_source"] for r in records}
    assert sources == {sent["alertmanager"]["id"]: b"alertmanager", sent["falco"]["id"]: b"falco"}


async def test_a_signed_request_is_accepted_and_a_wrong_signature_refused(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    secret = "hm4c-s3cret"
    body = json.dumps(alert_dict(time=NOW)).encode()
    other = json.dumps(alert_dict(time=NOW)).encode()
    json_type = {"Content-Type": "application/json"}
    async with ingest(settings, pool, ingest_hmac_secret=SecretStr(secret), ingest_tokens=TOKENS) as client:
        signed = await client.post(
            "/api/v1/alerts", content=body, headers={**json_type, "X-Vigil-Signature": sign(body, secret.encode())}
        )
        refusals = [
            await client.post("/api/v1/alerts", content=body, headers={**json_type, "X-Vigil-Signature": signature})
            for signature in (
                sign(other, secret.encode()),  # another body's
                sign(body, b"guessed"),  # another secret's
                sign(body, secret.encode()).replace("sha256=", "sha1="),
                "sha256=",
            )
        ]
        unsigned = await client.post("/api/v1/alerts", content=other, headers=json_type)
        by_token = await client.post(
            "/api/v1/alerts", content=other, headers={**json_type, "Authorization": "Bearer am-7f3c9e"}
        )
    assert signed.status_code == 202, signed.text
    for response in [*refusals, unsigned]:
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert by_token.status_code == 202, by_token.text
    records = await raw_records(settings, names, expect=2)
    sources = {r.value: headers_of(r)["vigil_ingest_source"] for r in records}
    assert sources == {body: b"hmac", other: b"alertmanager"}


@pytest.mark.parametrize(
    ("tokens", "complaint"),
    [
        ("falco", "entry 1 is not `name:token`"),
        ("falco:abc,:def", "entry 2 is not `name:token`"),
        ("falco:abc,falco:def", "names a source twice"),
        ("falco:abc,wazuh:abc", "same token"),
        (" , ", "holds no"),
    ],
)
async def test_a_malformed_token_list_stops_the_detector_without_quoting_a_token(
    settings: VigilSettings, pool: asyncpg.Pool, tokens: str, complaint: str
) -> None:
    producer = make_producer(settings, client_id="ingest-test")
    await producer.start()
    try:
        runtime = Runtime(
            service="detector",
            settings=settings.model_copy(update={"ingest_tokens": SecretStr(tokens)}),
            pool=pool,
            producer=producer,
            names=TopicNames(settings.topic_prefix),
        )
        with pytest.raises(ValueError, match=complaint) as raised:
            api.routers(runtime)
    finally:
        await producer.stop()
    assert "abc" not in str(raised.value) and "def" not in str(raised.value)


# ---- the broker: 503 when it cannot take the records -------------------------------------------


async def test_a_request_is_answered_503_while_the_broker_is_down(
    settings: VigilSettings, pool: asyncpg.Pool, tmp_path: Any
) -> None:
    # A broker of the test's own, stopped halfway: the ingest must not answer 202 for what it cannot store.
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        own = settings.model_copy(
            update={"kafka": KafkaSettings(bootstrap_servers=broker.bootstrap_servers), "ingest_publish_timeout_s": 2.0}
        )
        names = TopicNames(own.topic_prefix)
        await ensure_topics(own.kafka, names)
        refused_before = requests_counted("alerts", 503)
        # The detector's producer, except that it gives up on unsent records in seconds, not 40 (on stop).
        producer = AIOKafkaProducer(
            client_id="ingest-test", acks="all", request_timeout_ms=3000, **own.kafka.client_options()
        )
        async with ingest(own, pool, producer) as client:
            up = await client.post("/api/v1/alerts", json=alert_dict(time=NOW))
            assert up.status_code == 202, up.text
            await asyncio.to_thread(broker.stop)
            down = [await client.post("/api/v1/alerts", json=alert_dict(time=NOW)) for _ in range(2)]
    for response in down:
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "broker_unavailable"
        assert "retry later" in response.json()["detail"]
        assert response.headers["Retry-After"]
    assert requests_counted("alerts", 503) == refused_before + 2


# ---- the format-specific routes ----------------------------------------------------------------

# The payload Alertmanager's webhook_config sends, as its documentation shows it
# (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config).
ALERTMANAGER_PAYLOAD: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}:{alertname="DiskFull"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "vigil",
    "groupLabels": {"alertname": "DiskFull"},
    "commonLabels": {"alertname": "DiskFull", "severity": "critical", "instance": "db-01:9100"},
    "commonAnnotations": {"summary": "Disk almost full on db-01"},
    "externalURL": "http://alertmanager.example.com:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "db-01:9100"},
            "annotations": {"summary": "Disk almost full on db-01", "description": "/var is 97% full"},
            "startsAt": NOW,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=disk",
            "fingerprint": "c6e5f1b2a3d4e5f6",
        }
    ],
}

# A trigger event as PagerDuty's Events API v2 documents it
# (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/).
PAGERDUTY_TRIGGER: dict[str, Any] = {
    "payload": {
        "summary": "DISK at 99% on machine prod-datapipe03.example.com",
        "timestamp": NOW,
        "severity": "critical",
        "source": "prod-datapipe03.example.com",
        "component": "mysql",
        "group": "prod-datapipe",
        "class": "disk",
        "custom_details": {"free space": "1%"},
    },
    "routing_key": "e93facc04764012d7bfb002500d5d1a6",
    "dedup_key": "srv01/mysql",
    "event_action": "trigger",
    "client": "Sample Monitoring Service",
    "client_url": "https://monitoring.service.com",
}


@pytest.mark.skipif("alertmanager" not in FORMATS, reason="the alertmanager adapter is not registered yet")
async def test_an_alertmanager_webhook_is_on_the_raw_topic_as_alertmanager(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    # The group's next notification: another alert fired first, and db-01's has resolved.
    web = {**ALERTMANAGER_PAYLOAD["alerts"][0], "labels": {"alertname": "DiskFull", "instance": "web-01:9100"}}
    db = {**ALERTMANAGER_PAYLOAD["alerts"][0], "status": "resolved", "endsAt": NOW}
    later = {**ALERTMANAGER_PAYLOAD, "commonLabels": {"alertname": "DiskFull"}, "alerts": [web, db]}
    async with ingest(settings, pool) as client:
        response = await client.post("/api/v1/alerts/alertmanager", json=ALERTMANAGER_PAYLOAD)
        junk = await client.post("/api/v1/alerts/alertmanager", json={"alerts": "none"})
        again = await client.post("/api/v1/alerts/alertmanager", json=later)
    assert response.status_code == 202, response.text
    assert again.status_code == 202, again.text
    assert response.json()["records"][0]["format"] == "alertmanager"
    assert junk.status_code == 400, junk.text
    assert junk.json()["code"] and junk.json()["detail"]
    record, next_record = await raw_records(settings, names, expect=2)
    assert json.loads(record.value) == ALERTMANAGER_PAYLOAD
    assert headers_of(record)["vigil_format"] == b"alertmanager"
    # Keyed by the group, whichever alert comes first: db-01's firing is read before its resolution.
    assert record.key == next_record.key == b'alertmanager:{}:{alertname="DiskFull"}'


@pytest.mark.skipif("alertmanager" in FORMATS, reason="the alertmanager adapter is registered")
async def test_without_the_alertmanager_adapter_its_route_says_so(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with ingest(settings, pool) as client:
        response = await client.post("/api/v1/alerts/alertmanager", json=ALERTMANAGER_PAYLOAD)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "format_unavailable"
    assert "'alertmanager'" in response.json()["detail"]


@pytest.mark.skipif("pagerduty" not in FORMATS, reason="the pagerduty adapter is not registered yet")
async def test_a_pagerduty_event_is_answered_as_pagerduty_answers(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with ingest(settings, pool) as client:
        response = await client.post("/api/v1/alerts/pagerduty", json=PAGERDUTY_TRIGGER)
        invalid = await client.post("/api/v1/alerts/pagerduty", json={"event_action": "trigger"})
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "success", "message": "Event processed", "dedup_key": "srv01/mysql"}
    assert invalid.status_code == 400, invalid.text
    error = invalid.json()
    assert error["status"] == "invalid event"
    assert error["message"] == "Event object is invalid"
    assert error["errors"] and all(isinstance(e, str) and e for e in error["errors"])
    (record,) = await raw_records(settings, names, expect=1)
    # Stored without its routing key, a secret; otherwise as sent, and the same alert.
    # Kept without its routing key; its digest tells the integration it came from.
    digest = routing_digest(PAGERDUTY_TRIGGER["routing_key"])
    kept = {k: v for k, v in PAGERDUTY_TRIGGER.items() if k != "routing_key"}
    assert json.loads(record.value) == {**kept, "routing_key_sha256": digest}
    assert PAGERDUTY_TRIGGER["routing_key"].encode() not in record.value
    assert headers_of(record)["vigil_format"] == b"pagerduty"
    sent = parse_record(json.dumps(PAGERDUTY_TRIGGER).encode(), format_name="pagerduty").alerts
    assert parse_record(record.value, format_name="pagerduty").alerts == sent


@pytest.mark.skipif("pagerduty" not in FORMATS, reason="the pagerduty adapter is not registered yet")
async def test_the_dedup_key_answered_for_a_keyless_trigger_resolves_that_alert(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    trigger = {k: v for k, v in PAGERDUTY_TRIGGER.items() if k != "dedup_key"}
    async with ingest(settings, pool) as client:
        answered = await client.post("/api/v1/alerts/pagerduty", json=trigger)
        assert answered.status_code == 202, answered.text
        dedup_key = answered.json()["dedup_key"]
        resolve = {"routing_key": trigger["routing_key"], "event_action": "resolve", "dedup_key": dedup_key}
        resolved = await client.post("/api/v1/alerts/pagerduty", json=resolve)
    assert resolved.status_code == 202, resolved.text
    assert resolved.json()["dedup_key"] == dedup_key
    records = await raw_records(settings, names, expect=2)
    alerts = {a.status: a for r in records for a in parse_record(r.value, format_name="pagerduty").alerts}
    assert alerts["resolved"].key == alerts["firing"].key


# ---- the CLI publishes what the HTTP ingest publishes --------------------------------------------


async def test_vigil_alert_send_publishes_records_as_the_http_ingest_does(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("VIGIL_TOPIC_PREFIX", settings.topic_prefix)
    good = [alert_dict(host="db-01", time=NOW), alert_dict(host=None, src_ip="198.51.100.7", time=NOW)]
    lines = ndjson(good[0], {"hello": "world"}, good[1])
    sent = await asyncio.to_thread(CliRunner().invoke, cli, ["alert", "send", "-"], input=lines)
    assert sent.exit_code == 1, sent.output  # one record refused
    assert "sent 2 alert(s) in 2 record(s), refused 1" in sent.stdout
    assert "record 2: no adapter recognised the record" in sent.output
    from_cli = await raw_records(settings, names, expect=2)

    async with ingest(settings, pool) as client:
        response = await client.post(
            "/api/v1/alerts", content=ndjson(*good), headers={"Content-Type": "application/x-ndjson"}
        )
    assert response.status_code == 202, response.text
    from_http = [r for r in await raw_records(settings, names, expect=4) if r not in from_cli]

    def published(records: list[Any]) -> set[tuple[bytes | None, bytes, bytes]]:
        return {(r.key, r.value, headers_of(r)["vigil_format"]) for r in records}

    assert published(from_cli) == published(from_http)
    assert {r.key for r in from_cli} == {b"host:db-01", b"ip:198.51.100.7"}


async def test_vigil_alert_send_publishes_a_large_file_whole(
    settings: VigilSettings, names: TopicNames, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("VIGIL_TOPIC_PREFIX", settings.topic_prefix)
    alerts = [alert_dict(host=f"web-{n % 7:02d}", time=NOW) for n in range(1000)]  # past the progress bar's threshold
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps(alerts))
    sent = await asyncio.to_thread(CliRunner().invoke, cli, ["alert", "send", str(path), "--format", "native"])
    assert sent.exit_code == 0, sent.output
    assert "sent 1000 alert(s) in 1000 record(s)" in sent.stdout
    records = await raw_records(settings, names, expect=1000)
    assert {json.loads(r.value)["id"] for r in records} == {a["id"] for a in alerts}
    assert all(r.key == f"host:{json.loads(r.value)['host']}".encode() for r in records)


# ---- vigil report-problem: a person's report through the HTTP ingest -------------------------


@pytest.mark.skipif("user_report" not in FORMATS, reason="the user_report adapter is not registered yet")
async def test_a_reported_problem_reaches_the_raw_topic_as_a_user_report(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = settings.model_copy(update={"ingest_tokens": SecretStr("people:pe-0p1e,falco:fa-1")})
    monkeypatch.setenv("VIGIL_INGEST_TOKEN", "pe-0p1e")
    monkeypatch.delenv("VIGIL_ACTOR", raising=False)
    async with served_ingest(configured, pool) as detector:
        monkeypatch.setenv("VIGIL_DETECTOR_URL", f"http://{detector}")
        reported = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["report-problem", "--service", "payroll", "--severity", "HIGH", "--contact", "ext 4471"],
            input="Payroll shows another employee's payslip\nSince 09:00, after logging in.\n",
        )
        assert reported.exit_code == 0, reported.output
        monkeypatch.setenv("VIGIL_INGEST_TOKEN", "wrong")
        refused = await asyncio.to_thread(
            CliRunner().invoke, cli, ["report-problem", "--description", "the wiki is down"]
        )
    assert refused.exit_code == 1
    assert "the detector refused the report (401)" in refused.output

    (record,) = await raw_records(configured, names, expect=1)
    assert headers_of(record)["vigil_format"] == b"user_report"
    assert headers_of(record)["vigil_ingest_source"] == b"people"
    (alert,) = parse_record(record.value).alerts
    assert f"problem reported: {alert.key}" in reported.stdout
    assert alert.user == getpass.getuser()  # the reporter: the local user
    assert alert.title == "payroll: Payroll shows another employee's payslip"
    assert alert.description == "Payroll shows another employee's payslip\nSince 09:00, after logging in."
    assert alert.severity.value == "high"
    assert alert.labels["contact"] == "ext 4471"
    assert record.key == f"user:{getpass.getuser().lower()}".encode()


async def test_report_problem_says_when_the_detector_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_DETECTOR_URL", f"http://127.0.0.1:{free_port()}")
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["report-problem", "--description", "mail is slow", "--reporter", "ana"]
    )
    assert result.exit_code == 1
    assert "cannot reach the detector at http://127.0.0.1:" in result.output
    empty = await asyncio.to_thread(CliRunner().invoke, cli, ["report-problem"], input="  \n")
    assert empty.exit_code == 1 and "no description" in empty.output
    bad = await asyncio.to_thread(CliRunner().invoke, cli, ["report-problem", "--severity", "meh"], input="x")
    assert bad.exit_code == 1 and "severity 'meh' is not one of" in bad.output


async def test_a_compressed_body_is_refused_as_an_encoding_not_taken(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    body = gzip.compress(json.dumps(alert_dict(time=NOW)).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with ingest(settings, pool) as client:
        refused = await client.post("/api/v1/alerts", content=body, headers=headers)
        plain = await client.post("/api/v1/alerts", json=alert_dict(time=NOW), headers={"Content-Encoding": "identity"})
    assert refused.status_code == 415, refused.text
    assert refused.json()["code"] == "unsupported_encoding"
    assert plain.status_code == 202, plain.text
    assert await stored_count(settings, names(ALERTS_RAW)) == 1


async def test_a_pagerduty_acknowledge_names_what_it_acknowledges(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    routing_key = PAGERDUTY_TRIGGER["routing_key"]
    async with ingest(settings, pool) as client:
        keyless = await client.post(
            "/api/v1/alerts/pagerduty", json={"routing_key": routing_key, "event_action": "acknowledge"}
        )
        keyed = await client.post(
            "/api/v1/alerts/pagerduty",
            json={"routing_key": routing_key, "event_action": "acknowledge", "dedup_key": "srv01/mysql"},
        )
    assert keyless.status_code == 400, keyless.text
    assert keyless.json()["status"] == "invalid event"
    assert "dedup_key" in keyless.json()["errors"][0]
    assert keyed.status_code == 202, keyed.text
    assert keyed.json()["dedup_key"] == "srv01/mysql"
    assert await stored_count(settings, names(ALERTS_RAW)) == 1


async def test_an_api_token_that_cannot_be_checked_is_answered_503_not_500(
    settings: VigilSettings, names: TopicNames
) -> None:
    """Postgres unreachable: the ingest tokens still work, an API token is answered 'retry later'."""
    unreachable = f"postgresql://vigil@127.0.0.1:{free_port()}/vigil"
    pool = await asyncpg.create_pool(unreachable, min_size=0, max_size=1)
    try:
        async with ingest(settings, pool, ingest_tokens=TOKENS) as client:
            api_token = "vigil_ABCDEFGHIJKL_" + "x" * 43
            refused = await client.post(
                "/api/v1/alerts", json=alert_dict(time=NOW), headers={"Authorization": f"Bearer {api_token}"}
            )
            accepted = await client.post(
                "/api/v1/alerts", json=alert_dict(time=NOW), headers={"Authorization": "Bearer am-7f3c9e"}
            )
        async with ingest(settings, pool) as client:  # any route that reads the database: the platform's answer
            listing = await client.get("/api/v1/silences")
    finally:
        await pool.close()
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "auth_unavailable"
    assert refused.headers["Retry-After"]
    assert api_token not in refused.text
    assert accepted.status_code == 202, accepted.text
    assert await stored_count(settings, names(ALERTS_RAW)) == 1
    assert listing.status_code == 503, listing.text
    assert listing.headers["Retry-After"] and "retry later" in listing.json()["detail"]


async def test_a_token_may_not_send_for_a_source_that_has_a_token_of_its_own(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """The falco token cannot fire, repeat or resolve Alertmanager's alerts; it may send for sources no token names."""
    forged = alert_dict(time=NOW, source="alertmanager/vigil", status="resolved")
    own = alert_dict(time=NOW, source="falco")
    unowned = alert_dict(time=NOW, source="suricata")
    falco = {"Authorization": "Bearer fa-41d2:with-colon"}
    async with ingest(settings, pool, ingest_tokens=TOKENS) as client:
        refused = await client.post("/api/v1/alerts", json=[own, forged], headers=falco)
        webhook = await client.post("/api/v1/alerts/alertmanager", json=ALERTMANAGER_PAYLOAD, headers=falco)
        accepted = await client.post("/api/v1/alerts", json=[own, unowned], headers=falco)
        alertmanager = await client.post(
            "/api/v1/alerts/alertmanager", json=ALERTMANAGER_PAYLOAD, headers={"Authorization": "Bearer am-7f3c9e"}
        )
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "source_of_another" and refused.json()["index"] == 1
    assert "fa-41d2" not in refused.text
    assert webhook.status_code == 403, webhook.text
    assert accepted.status_code == 202, accepted.text
    assert alertmanager.status_code == 202, alertmanager.text
    records = await raw_records(settings, names, expect=3)
    sent = sorted((headers_of(r)["vigil_ingest_source"], headers_of(r)["vigil_format"]) for r in records)
    assert sent == [(b"alertmanager", b"alertmanager"), (b"falco", b"native"), (b"falco", b"native")]
