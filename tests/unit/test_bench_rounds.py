"""The throughput benchmark's rounds: each mode's median run, and mixed against native round by round."""

from __future__ import annotations

from typing import Any

from bench.detector import combine


def run(alerts_per_s: float, cpu_us: float, reading_us: float = 10.0) -> dict[str, Any]:
    return {"alerts_per_s": alerts_per_s, "detector_cpu_us_per_alert": cpu_us, "reading_us_per_alert": reading_us}


def test_each_mode_reports_its_median_run_and_every_rounds_throughput() -> None:
    combined = combine({"native": [run(5000, 120), run(7000, 100), run(6000, 110)]})
    assert combined["native"]["alerts_per_s"] == 6000
    assert combined["native"]["detector_cpu_us_per_alert"] == 110  # the median run's own figures, together
    assert combined["native"]["rounds_alerts_per_s"] == [5000, 7000, 6000]
    assert "mixed_vs_native" not in combined


def test_the_formats_cost_is_the_median_of_each_rounds_pair() -> None:
    # The machine slows down in round 2: within a round the ratio holds, across rounds it would not.
    native = [run(6000, 100), run(3000, 200), run(6000, 100)]
    mixed = [run(4800, 130, 30.0), run(2700, 230, 30.0), run(4500, 140, 30.0)]
    comparison = combine({"native": native, "mixed": mixed})["mixed_vs_native"]
    assert comparison["rounds_formats_cost_pct"] == [20.0, 10.0, 25.0]
    assert comparison["formats_cost_pct"] == 20.0
    assert (comparison["native_alerts_per_s"], comparison["mixed_alerts_per_s"]) == (6000, 4800)
    assert comparison["reading_share_of_cpu_gap_pct"] == round(20 / 30 * 100, 1)


def test_an_even_number_of_rounds_takes_the_lower_middle() -> None:
    combined = combine({"native": [run(1, 1), run(4, 1), run(2, 1), run(3, 1)]})
    assert combined["native"]["alerts_per_s"] == 2
