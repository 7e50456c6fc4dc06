"""The targets the benchmark judges its figures against: PASS, MISS, not measured."""

from __future__ import annotations

from typing import Any

from bench.scaling import alerts_per_incident_plan, open_incidents_plan
from bench.targets import MISS, NOT_MEASURED, PASS, TARGETS, Target, dig, evaluate, phase_at


def results(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "detector_throughput": {
            "native": {"alerts_per_s": 24_000.0},
            "mixed": {"alerts_per_s": 21_000.0},
            "mixed_vs_native": {"formats_cost_pct": 12.5},
        },
        "baseline": {"alerts_per_s": 1_000.0, "vigil_ratio": 24.0},
        "detector_latency": {
            "native": {
                "phases": [
                    {"rate_per_s": 200.0, "latency_ms": {"detected": {"p99": 40.0}}},
                    {"rate_per_s": 1000.0, "latency_ms": {"detected": {"p99": 90.0}}},
                ]
            }
        },
        "leases": {
            "while_running_after_due_s": {"done": {"max": 0.04}},
            "after_restart_s": {"done": {"max": 2.0}},
        },
        "end_to_end": {
            "native": {
                "sustained_alerts_per_s": 5_000.0,
                "phases": [{"rate_per_s": 1000.0, "latency_ms": {"detected": {"p99": 900.0}}}],
                "memory_mb": {
                    "idle": {"detector": 70.0, "analyzer": 79.9, "responder": 80.0, "coordinator": 60, "reporter": 75}
                },
            }
        },
    }
    base.update(overrides)
    return base


def verdicts(found: dict[str, Any]) -> dict[str, str]:
    return {verdict["figure"]: verdict["verdict"] for verdict in evaluate(found)}


def test_every_target_passes_at_or_beyond_its_goal() -> None:
    assert set(verdicts(results()).values()) == {PASS}


def test_a_figure_short_of_its_goal_misses_it() -> None:
    slow = results(
        detector_throughput={
            "native": {"alerts_per_s": 19_999.9},
            "mixed": {"alerts_per_s": 17_000.0},
            "mixed_vs_native": {"formats_cost_pct": 15.1},
        }
    )
    slow["leases"]["after_restart_s"]["done"]["max"] = 2.01
    slow["detector_latency"]["native"]["phases"][1]["latency_ms"]["detected"]["p99"] = 100.1
    slow["end_to_end"]["native"]["memory_mb"]["idle"]["coordinator"] = 84.0
    found = verdicts(slow)
    assert found["detector throughput, native alerts"] == MISS
    assert found["detector throughput, mixed formats"] == MISS
    assert found["throughput the formats cost (mixed against native)"] == MISS
    assert found["lease undone after a restart past its due time, latest"] == MISS
    assert found["lease undone after its due time, latest, responder running"] == PASS
    assert found["p99 alert -> incident detected at 1,000/s, detector alone"] == MISS
    assert found["idle RSS, coordinator"] == MISS
    assert found["idle RSS, responder"] == PASS  # exactly at the limit
    assert found["detector throughput / faust baseline"] == PASS


def test_a_figure_not_measured_is_said_so_not_judged() -> None:
    found = verdicts({"detector_throughput": {"native": {"alerts_per_s": 30_000.0}}})
    assert found["detector throughput, native alerts"] == PASS
    assert found["detector throughput / faust baseline"] == NOT_MEASURED
    assert found["end-to-end throughput, bounded lag"] == NOT_MEASURED
    # No phase at 1,000/s in this run: the latency target has nothing to judge.
    other_rates = results()
    other_rates["detector_latency"]["native"]["phases"] = [
        {"rate_per_s": 500.0, "latency_ms": {"detected": {"p99": 1.0}}}
    ]
    assert verdicts(other_rates)["p99 alert -> incident detected at 1,000/s, detector alone"] == NOT_MEASURED


def test_none_sustained_is_a_miss_not_a_gap() -> None:
    stalled = results()
    stalled["end_to_end"]["native"]["sustained_alerts_per_s"] = 0.0
    assert verdicts(stalled)["end-to-end throughput, bounded lag"] == MISS


def test_targets_say_their_goal() -> None:
    assert Target("x", " alerts/s", lambda r: None, at_least=20_000).goal == ">= 20,000 alerts/s"
    assert Target("y", " ms", lambda r: None, at_most=100).goal == "<= 100 ms"
    assert len(TARGETS) == 13
    assert evaluate(results())[0] == {
        "figure": "detector throughput, native alerts",
        "target": ">= 20,000 alerts/s",
        "value": 24_000.0,
        "unit": "alerts/s",
        "verdict": PASS,
    }


def test_dig_follows_a_path_or_gives_none() -> None:
    found = {"a": {"b": [{"c": 1}]}}
    assert dig(found, "a", "b", 0, "c") == 1
    assert dig(found, "a", "b", 1, "c") is None
    assert dig(found, "a", "x") is None
    assert dig(found, "a", "b", "c") is None
    assert phase_at(results(), 1000) == {"rate_per_s": 1000.0, "latency_ms": {"detected": {"p99": 90.0}}}
    assert phase_at(results(), 5000) is None
    assert phase_at(results(), 1000, "end_to_end") == {"rate_per_s": 1000.0, "latency_ms": {"detected": {"p99": 900.0}}}


def test_the_scaling_sweeps_measure_ten_incidents_of_each_level() -> None:
    incidents = open_incidents_plan(10_000)
    assert [level.value for level in incidents] == [10, 100, 1_000, 10_000]
    # The estate grows by the new hosts only; the measured ten are new ones, each with one alert so far.
    assert sum(len(level.seed_hosts) for level in incidents) == 10_000
    for level in incidents:
        assert len(level.measured) == 10 and set(level.measured) <= set(level.seed_hosts)
        assert level.seed_per_host == 1
    alerts = alerts_per_incident_plan(1_000)
    assert [(level.value, level.seed_per_host, len(level.seed_hosts)) for level in alerts] == [
        (1, 1, 10),
        (10, 10, 10),
        (100, 100, 10),
        (1_000, 1_000, 10),
    ]
    assert all(level.measured == level.seed_hosts for level in alerts)
