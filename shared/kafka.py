"""Kafka clients configured the same way for every Vigil process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from shared.settings import VigilSettings
from shared.topics import ALL_TOPICS, TopicNames


def group_id(settings: VigilSettings, service: str) -> str:
    """A service's consumer group. Deployments that share one cluster by topic prefix keep their
    groups apart as well: one deployment's members never take part in another's rebalances."""
    return f"{settings.topic_prefix}vigil-{service}"


def make_producer(settings: VigilSettings, *, client_id: str, linger_ms: int = 0) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas: an event is published only when it is safe.

    No linger by default: Vigil's senders hand a batch over at once (the relay, dead letters) or wait for
    each record's acknowledgement (the HTTP ingest), and records sent while a partition's request is in
    flight are batched anyway. A linger only delayed each batch by as long.
    """
    return AIOKafkaProducer(
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka.enable_idempotence,
        linger_ms=linger_ms,
        max_batch_size=1024 * 1024,
        **settings.kafka.client_options(),
    )


def make_consumer(
    settings: VigilSettings,
    *topics: str,
    group_id: str | None,
    listener: ConsumerRebalanceListener | None = None,
) -> AIOKafkaConsumer:
    """A consumer with auto-commit off: the consume loop commits after the database does."""
    consumer = AIOKafkaConsumer(
        group_id=group_id,
        client_id=group_id or "vigil-cli",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        session_timeout_ms=settings.session_timeout_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        heartbeat_interval_ms=min(3000, settings.session_timeout_ms // 3),
        **settings.kafka.client_options(),
    )
    if topics:
        consumer.subscribe(topics=list(topics), listener=listener)
    return consumer


class LagReader:
    """Each service's consumer group: records on the topics it consumes beyond the group's committed offsets,
    read as often as asked over the same clients (a sampler asks every second).

    Committed offsets are read with a consumer's ``committed()``, which every broker serves (the embedded
    one has no admin offset listing); the consumers join no group and commit nothing.
    """

    def __init__(self, settings: VigilSettings, services: Sequence[str]) -> None:
        names = TopicNames(settings.topic_prefix)
        self.wanted = {
            service: [
                TopicPartition(names(t), p) for t in ALL_TOPICS if service in t.consumers for p in range(t.partitions)
            ]
            for service in services
        }
        self.reader = make_consumer(settings, group_id=None)
        self.groups = {service: make_consumer(settings, group_id=group_id(settings, service)) for service in services}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> LagReader:
        started: list[AIOKafkaConsumer] = []
        try:
            for consumer in (self.reader, *self.groups.values()):
                await consumer.start()
                started.append(consumer)
        except BaseException:
            for consumer in started:
                await consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Every client is stopped, whichever fails to; the first failure is raised unless one already is.
        failures: list[Exception] = []
        for consumer in (self.reader, *self.groups.values()):
            try:
                await consumer.stop()
            except Exception as failure:
                failures.append(failure)
        if failures and exc[0] is None:
            raise failures[0]

    async def read(self) -> dict[str, int]:
        async with self._lock:
            ends = await self.reader.end_offsets(
                sorted({tp for partitions in self.wanted.values() for tp in partitions})
            )
            lag: dict[str, int] = {}
            for service, partitions in self.wanted.items():
                group = self.groups[service]
                committed = await asyncio.gather(*(group.committed(tp) for tp in partitions))
                lag[service] = sum(max(ends[tp] - (c or 0), 0) for tp, c in zip(partitions, committed, strict=True))
            return lag


async def consumer_lag(settings: VigilSettings, services: Sequence[str]) -> dict[str, int]:
    """Each service's consumer lag, read once (``LagReader`` to read it again and again)."""
    async with LagReader(settings, services) as lag:
        return await lag.read()
