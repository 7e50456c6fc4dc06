"""Poison: records no service can read, among good ones, reach the running stack.

Each is dead-lettered with its reason code by every service that consumes it, the good records
behind it on the same partition are handled, no service crashes (the supervisor restarts none) and
every group catches up. What the unit and integration tests already prove is not repeated here:
each rejection code of the detector's decoder (tests/unit/test_detector_decode.py), the dead-letter
limit stopping a consumer and remembering it across restarts (tests/integration/test_consume_loop.py,
test_platform.py), an oversize outgoing event parked (test_platform.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from shared.settings import VigilSettings
from shared.topics import ALERTS_DLQ, ALERTS_RAW, EVENTS_DLQ, INCIDENTS, TopicNames
from tests.factories import alert_dict
from tests.faults.accounting import Accounting, account_lag
from tests.faults.harness import Stack, read_topic
from tests.helpers import eventually

pytestmark = [pytest.mark.faults, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]

NOW = "2026-11-26T01:00:00Z"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def alertmanager_message(alerts: int) -> bytes:
    """An Alertmanager webhook message carrying ``alerts`` alerts, as compact as Alertmanager writes them."""
    message = {
        "version": "4",
        "groupKey": '{}:{alertname="NodeDown"}',
        "status": "firing",
        "receiver": "vigil",
        "groupLabels": {"alertname": "NodeDown"},
        "commonLabels": {"alertname": "NodeDown"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "NodeDown", "instance": f"node-{n:05d}:9100"},
                "startsAt": NOW,
                "fingerprint": f"{n:016x}",
            }
            for n in range(alerts)
        ],
    }
    return json.dumps(message, separators=(",", ":")).encode()


# (what it is, the record, the reason code the detector dead-letters it with)
RAW_POISON: list[tuple[str, bytes, str]] = [
    ("invalid JSON", b'{"id": "a-1", "source": ', "not_json"),
    ("invalid UTF-8", b'{"title": "\xff\xfe"}', "not_utf8"),
    ("oversize", b'{"a": "' + b"x" * (1024 * 1024 + 1) + b'"}', "too_large"),
    ("wrong types", json.dumps(alert_dict(severity=5, time="yesterday")).encode(), "invalid_fields"),
    ("unknown format", b'{"hello": "world"}', "unknown_format"),
    ("deeply nested JSON", nested(100_000), "not_json"),
    ("huge array", json.dumps([0] * 200_000).encode(), "unknown_format"),
    (
        "huge array in a field",
        json.dumps(alert_dict(time=NOW, labels={"n": list(range(100_000))})).encode(),
        "invalid_fields",
    ),
    ("10,000-alert Alertmanager message", alertmanager_message(10_000), "too_large"),
]

CE = [("ce_specversion", b"1.0"), ("ce_id", b"poison-1"), ("ce_source", b"/test"), ("ce_subject", b"inc-poison")]
# (what it is, value, headers, dead-lettered?): events on the incidents topic, which four services consume.
EVENT_POISON: list[tuple[str, bytes, list[tuple[str, bytes]], bool]] = [
    ("event body not JSON", b"\x00garbage", [*CE, ("ce_type", b"vigil.incident.detected.v1")], True),
    ("event nested too deeply", nested(100_000), [*CE, ("ce_type", b"vigil.incident.detected.v1")], True),
    ("event of the wrong shape", b'{"title": 1}', [*CE, ("ce_type", b"vigil.incident.detected.v1")], True),
    ("event of a foreign type", b"{}", [*CE, ("ce_type", b"com.example.unknown")], True),
    ("Vigil event type from a newer version", b"{}", [*CE, ("ce_type", b"vigil.incident.exploded.v9")], False),
]
EVENT_CONSUMERS = ("analyzer", "coordinator", "reporter", "responder")


def headers_of(record: Any) -> dict[str, bytes]:
    return dict(record.headers or ())


async def test_poison_is_dead_lettered_with_its_reason_and_the_partitions_keep_flowing(
    settings: VigilSettings, tmp_path: Path
) -> None:
    names = TopicNames(settings.topic_prefix)
    book = Accounting("poison")
    stack = Stack(settings, tmp_path)
    good = [alert_dict(time=NOW, host=f"after-{n}") for n in range(len(RAW_POISON))]
    offsets: dict[str, int] = {}
    async with stack.running():
        producer = AIOKafkaProducer(max_request_size=4 * 1024 * 1024, **settings.kafka.client_options())
        await producer.start()
        try:
            # All on one partition: each poison record is followed by a good alert it must not hold up.
            for (what, value, _code), alert in zip(RAW_POISON, good, strict=True):
                sent = await producer.send_and_wait(names(ALERTS_RAW), value=value, partition=0)
                offsets[what] = sent.offset
                await producer.send_and_wait(names(ALERTS_RAW), value=json.dumps(alert).encode(), partition=0)
            for _what, value, headers, _dead in EVENT_POISON:
                await producer.send_and_wait(
                    names(INCIDENTS), key=b"inc-poison", value=value, headers=headers, partition=0
                )
        finally:
            await producer.stop()

        async def stored() -> bool:
            conn = await asyncpg.connect(settings.database_url)
            try:
                count: int = await conn.fetchval(
                    "SELECT count(*) FROM detector_alerts WHERE key = ANY($1::text[])",
                    [f"{a['source']}:{a['id']}" for a in good],
                )
                return count == len(good)
            finally:
                await conn.close()

        await eventually(stored, timeout=120, interval=1)
        expected_dead = len(RAW_POISON) + sum(dead for *_x, dead in EVENT_POISON) * len(EVENT_CONSUMERS)

        async def dead_letters() -> list[Any]:
            found = await read_topic(settings, names(ALERTS_DLQ)) + await read_topic(settings, names(EVENTS_DLQ))
            return found if len(found) >= expected_dead else []

        dead = await eventually(dead_letters, timeout=120, interval=1)
        await eventually(lambda: _caught_up(settings), timeout=120, interval=1)
        await account_lag(book, settings)

    raw_dead = {int(headers_of(r)["vigil_dlq_offset"]): r for r in dead if r.topic == names(ALERTS_DLQ)}
    for what, value, code in RAW_POISON:
        letter = raw_dead.get(offsets[what])
        book.expect(
            f"raw {what}: dead-lettered as", code, headers_of(letter)["vigil_dlq_code"].decode() if letter else None
        )
        if letter is None:
            continue
        # Whole, or (beyond what a producer may send) its head with the whole one's size and digest.
        kept = letter.value == value or (
            value.startswith(letter.value)
            and headers_of(letter).get("vigil_dlq_truncated") == str(len(value)).encode()
            and headers_of(letter).get("vigil_dlq_sha256") == hashlib.sha256(value).hexdigest().encode()
        )
        book.expect(f"raw {what}: original bytes kept", True, kept)
    reasons = [headers_of(r)["vigil_dlq_reason"] for r in dead]
    book.expect("dead letters without a reason", 0, sum(1 for reason in reasons if not reason.strip()))
    by_event = Counter(
        (r.value, headers_of(r).get("ce_type"), headers_of(r)["vigil_dlq_service"].decode())
        for r in dead
        if r.topic == names(EVENTS_DLQ)
    )
    for what, value, headers, is_dead in EVENT_POISON:
        ce_type = dict(headers)["ce_type"]
        services = sorted(s for s in EVENT_CONSUMERS if by_event[(value, ce_type, s)])
        book.expect(f"{what}: dead-lettered by", list(EVENT_CONSUMERS) if is_dead else [], services)
    book.note("good alerts behind the poison, all stored", len(good))
    book.expect("services restarted (a crash)", 0, sum(stack.restarts().values()), str(stack.restarts()))
    book.expect("services exiting 0 on SIGTERM", 5, sum(1 for code in stack.exit_codes.values() if code == 0))
    book.verify()


async def _caught_up(settings: VigilSettings) -> bool:
    """Every group has read everything, and nothing waits to be published: no outbox row, no analysis."""
    import asyncio

    from tests.faults.accounting import consumer_lag

    conn = await asyncpg.connect(settings.database_url)
    try:
        waiting = await conn.fetchval(
            """SELECT (SELECT count(*) FROM analyzer_incidents WHERE pending_event IS NOT NULL)
                    + (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL)"""
        )
    finally:
        await conn.close()
    return not waiting and not any((await asyncio.to_thread(consumer_lag, settings)).values())
