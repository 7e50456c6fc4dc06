"""A member's lag gauge says only the partitions it holds: a revoked partition's value goes with it."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from shared.consumer import BatchFence
from shared.metrics import CONSUMER_LAG


def _lag(partition: int) -> float | None:
    labels = {"service": "lagtest", "topic": "vigil.incidents", "partition": str(partition)}
    return REGISTRY.get_sample_value("vigil_consumer_lag", labels)


@pytest.mark.asyncio
async def test_a_revoked_partitions_lag_is_no_longer_reported() -> None:
    CONSUMER_LAG.labels("lagtest", "vigil.incidents", "0").set(12_000)
    CONSUMER_LAG.labels("lagtest", "vigil.incidents", "1").set(5)
    await BatchFence("lagtest").on_partitions_revoked({TopicPartition("vigil.incidents", 0)})
    assert _lag(0) is None  # another member reports it now; a value left here would alert for good
    assert _lag(1) == 5
    await BatchFence("lagtest").on_partitions_revoked({TopicPartition("vigil.incidents", 2)})  # never reported
