"""Dead letters for operators: read them back from their topics, and replay the chosen ones.

A dead letter is the original record (key, value, headers) plus ``vigil_dlq_*`` headers saying why,
where and when it was set aside (``shared.consumer.dead_letter_headers``). Replaying one publishes
the original record again to the topic it came from, without the ``vigil_dlq_*`` headers and with
``vigil_replayed_from`` naming the dead letter, so that a fixed consumer (a new format adapter, a
corrected schema) reads it as if it arrived now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from shared.kafka import make_consumer, make_producer
from shared.settings import VigilSettings
from shared.topics import ALERTS_DLQ, EVENTS_DLQ, Topic, TopicNames

DLQ_TOPICS: dict[str, Topic] = {"alerts": ALERTS_DLQ, "events": EVENTS_DLQ}
DLQ_HEADER_PREFIX = "vigil_dlq_"
REPLAYED_FROM = "vigil_replayed_from"
READ_TIMEOUT_S = 30.0
# The longest a command waits on the broker in all (connecting, reading or publishing): an operator
# gets an error rather than a prompt that never comes back.
BROKER_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        found = next((value for key, value in self.headers if key == name), None)
        return found.decode("utf-8", "replace") if found is not None else None

    @property
    def code(self) -> str:
        return self.header("vigil_dlq_code") or "invalid"  # dead letters from before codes existed

    @property
    def original_topic(self) -> str | None:
        return self.header("vigil_dlq_topic")

    @property
    def time(self) -> datetime:
        when = self.header("vigil_dlq_time")
        try:
            return datetime.fromisoformat(when) if when else self._record_time
        except ValueError:
            return self._record_time

    @property
    def _record_time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def position(self) -> str:
        """How `vigil dlq replay` names it: the offset, with the partition when it is not 0."""
        return str(self.offset) if self.partition == 0 else f"{self.partition}:{self.offset}"

    def excerpt(self, width: int = 80) -> str:
        text = " ".join((self.value or b"").decode("utf-8", "replace").split())
        return text if len(text) <= width else text[: width - 1] + "…"

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The original headers (without the dead-letter ones) and where the replay comes from."""
        kept = [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX) and k != REPLAYED_FROM]
        return [*kept, (REPLAYED_FROM, f"{self.topic}:{self.partition}:{self.offset}".encode())]

    def as_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "time": self.time.isoformat(),
            "service": self.header("vigil_dlq_service"),
            "code": self.code,
            "reason": self.header("vigil_dlq_reason"),
            "original": {
                "topic": self.original_topic,
                "partition": _int_or_none(self.header("vigil_dlq_partition")),
                "offset": _int_or_none(self.header("vigil_dlq_offset")),
            },
            "key": (self.key or b"").decode("utf-8", "replace") or None,
            "excerpt": self.excerpt(),
        }


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parse_position(text: str) -> tuple[int, int]:
    """``OFFSET`` (partition 0) or ``PARTITION:OFFSET``; raise ValueError otherwise."""
    partition, _, offset = text.rpartition(":")
    result = (int(partition) if partition else 0, int(offset))
    if min(result) < 0:
        raise ValueError(f"{text!r} is not an offset")
    return result


async def read(settings: VigilSettings, which: str, *, limit: int | None = None) -> list[DeadLetter]:
    """The dead letters of one topic (``alerts`` or ``events``), oldest first; with ``limit``, the newest that many."""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            return await _read(settings, which, limit=limit)
    except TimeoutError as exc:
        raise TimeoutError(f"the broker did not answer within {BROKER_TIMEOUT_S:g}s") from exc


async def _read(settings: VigilSettings, which: str, *, limit: int | None) -> list[DeadLetter]:
    topic = TopicNames(settings.topic_prefix)(DLQ_TOPICS[which])
    consumer = make_consumer(settings, group_id=None)
    try:
        await consumer.start()
        await consumer._client.force_metadata_update()  # the assign() API needs known partitions
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            raise LookupError(f"no topic {topic} on the broker (run `vigil init`, or check VIGIL_TOPIC_PREFIX)")
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - limit) if limit is not None else starts[tp])
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            batch = await consumer.getmany(*partitions, timeout_ms=200)
            for tp, records in batch.items():
                letters.extend(
                    DeadLetter(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=r.offset,
                        timestamp_ms=r.timestamp,
                        key=r.key,
                        value=r.value,
                        headers=tuple(r.headers or ()),
                    )
                    for r in records
                )
            # Done at the end offsets and once a poll brings nothing more: some brokers (the embedded
            # one) report a batch of records as one offset, so the end offsets alone can fall short.
            if not batch and not [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end within {READ_TIMEOUT_S:g}s")
    finally:
        await consumer.stop()
    letters.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return letters[-limit:] if limit is not None else letters


def choose(
    letters: Sequence[DeadLetter],
    *,
    positions: Sequence[tuple[int, int]] = (),
    code: str | None = None,
    everything: bool = False,
) -> tuple[list[DeadLetter], list[tuple[int, int]]]:
    """The dead letters chosen by position, by reason code, or all; and the positions that name none."""
    if everything:
        return list(letters), []
    if code is not None:
        return [d for d in letters if d.code == code], []
    by_position = {(d.partition, d.offset): d for d in letters}
    missing = [p for p in positions if p not in by_position]
    return [by_position[p] for p in dict.fromkeys(positions) if p in by_position], missing


async def replay(settings: VigilSettings, letters: Sequence[DeadLetter]) -> None:
    """Publish each dead letter's original record to its original topic; return once all are acknowledged."""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            await _replay(settings, letters)
    except TimeoutError as exc:
        raise TimeoutError(f"the broker did not acknowledge within {BROKER_TIMEOUT_S:g}s") from exc


async def _replay(settings: VigilSettings, letters: Sequence[DeadLetter]) -> None:
    producer = make_producer(settings, client_id="vigil-cli-dlq")
    await producer.start()
    try:
        futures = []
        for letter in letters:
            assert letter.original_topic is not None  # the caller leaves out those without one
            futures.append(
                await producer.send(
                    letter.original_topic, key=letter.key, value=letter.value, headers=letter.replay_headers()
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
