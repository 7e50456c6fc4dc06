"""Kafka clients configured the same way for every Vigil process."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener

from shared.settings import VigilSettings


def make_producer(settings: VigilSettings, *, client_id: str) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas: an event is published only when it is safe."""
    return AIOKafkaProducer(
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka.enable_idempotence,
        linger_ms=5,
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
        session_timeout_ms=settings.session_timeout_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        heartbeat_interval_ms=min(3000, settings.session_timeout_ms // 3),
        **settings.kafka.client_options(),
    )
    if topics:
        consumer.subscribe(topics=list(topics), listener=listener)
    return consumer
