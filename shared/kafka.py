"""Kafka clients configured the same way for every Vigil process."""

from __future__ import annotations

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


async def consumer_lag(settings: VigilSettings, services: Sequence[str]) -> dict[str, int]:
    """Each service's consumer group: records on the topics it consumes beyond the group's committed offsets.

    Committed offsets are read with a consumer's ``committed()``, which every broker serves (the embedded
    one has no admin offset listing); the consumer joins no group and commits nothing.
    """
    names = TopicNames(settings.topic_prefix)
    wanted = {
        service: [
            TopicPartition(names(t), p) for t in ALL_TOPICS if service in t.consumers for p in range(t.partitions)
        ]
        for service in services
    }
    reader = make_consumer(settings, group_id=None)
    await reader.start()
    try:
        ends = await reader.end_offsets(sorted({tp for partitions in wanted.values() for tp in partitions}))
    finally:
        await reader.stop()
    lag: dict[str, int] = {}
    for service, partitions in wanted.items():
        group = make_consumer(settings, group_id=group_id(settings, service))
        await group.start()
        try:
            behind = 0
            for tp in partitions:
                committed = await group.committed(tp)
                behind += max(ends[tp] - (committed or 0), 0)
            lag[service] = behind
        finally:
            await group.stop()
    return lag
