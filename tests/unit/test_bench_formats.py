"""The benchmark's alerts in each tool's format, and what reading them costs the adapters."""

from __future__ import annotations

from datetime import UTC, datetime

from bench import formats
from vigil.demo import EstateAlerts


def test_the_adapters_reading_cost_is_given_for_each_format_of_the_mix() -> None:
    factory = EstateAlerts(hosts=50, seed=3, prefix="bench")
    sample = [factory.make()[1] for _ in range(400)]
    at = datetime.now(UTC)
    mixed = formats.reading_cost(sample, at, "mixed", rounds=1)
    assert set(mixed["by_format"]) == set(formats.check(sample, at, "mixed"))
    assert all(us > 0 for us in mixed["by_format"].values())
    low, high = min(mixed["by_format"].values()), max(mixed["by_format"].values())
    assert low <= mixed["us_per_record"] <= high
    assert list(formats.reading_cost(sample, at, "native", rounds=1)["by_format"]) == ["native"]
