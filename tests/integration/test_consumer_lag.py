"""Each service's consumer lag, read from committed offsets, and a run's topics deleted afterwards."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import consumer_lag, group_id, make_consumer
from shared.settings import VigilSettings
from shared.topics import ALL_TOPICS, INCIDENTS, TopicNames, delete_topics, ensure_topics
from tests.helpers import produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def test_lag_counts_what_each_group_has_not_committed(settings: VigilSettings, names: TopicNames) -> None:
    topic = names(INCIDENTS)
    await produce(settings, topic, [(b"inc-1", b"{}", []) for _ in range(5)])
    analyzer = make_consumer(settings, group_id=group_id(settings, "analyzer"))
    await analyzer.start()
    try:
        partition = TopicPartition(topic, 0)
        analyzer.assign([partition])
        await analyzer.commit({partition: 2})
    finally:
        await analyzer.stop()

    lag = await consumer_lag(settings, ("analyzer", "coordinator", "detector"))

    # The analyzer committed two of the five; the coordinator, which reads incidents too, none;
    # the detector does not read the incidents topic at all.
    assert lag == {"analyzer": 3, "coordinator": 5, "detector": 0}


async def test_a_runs_topics_are_deleted_and_no_others(settings: VigilSettings, names: TopicNames) -> None:
    other = TopicNames(f"{names.prefix}other.")
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await ensure_topics(settings.kafka, other)
        await delete_topics(settings.kafka, names)
        left = set(await admin.list_topics())
    finally:
        await admin.close()
        await delete_topics(settings.kafka, other)
    assert not {names(t) for t in ALL_TOPICS} & left
    assert {other(t) for t in ALL_TOPICS} <= left
