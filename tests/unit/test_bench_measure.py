"""The benchmarks' measuring functions: percentiles, /proc parsing, Prometheus sums, the collector's bookkeeping."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from bench import measure
from bench.pipeline import DETECTED, UPDATED, Collector, Phase, Samples, cpu_used, parse_rates, sustained_rate
from bench.report import cpu_summary
from bench.run import parse_only


def test_nearest_rank_percentiles_pick_a_value_of_the_list() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert measure.percentile(values, 50) == 50.0
    assert measure.percentile(values, 95) == 95.0
    assert measure.percentile(values, 99) == 99.0
    assert measure.percentile(values, 100) == 100.0
    assert measure.percentile([7.0], 99) == 7.0
    # Few values: p99 is the largest, never an interpolation beyond it.
    assert measure.percentile([1.0, 2.0, 3.0], 99) == 3.0
    assert measure.percentile([1.0, 2.0, 3.0], 34) == 2.0


def test_latency_summary_is_in_milliseconds_and_none_without_values() -> None:
    summary = measure.latency_ms([0.010, 0.020, 0.030, 0.040])
    assert summary == {"p50": 20.0, "p95": 40.0, "p99": 40.0, "max": 40.0, "mean": 25.0, "count": 4}
    assert measure.latency_ms([]) is None


STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  412884 kB
VmSize:\t  412880 kB
VmHWM:\t   80312 kB
VmRSS:\t   79960 kB
RssAnon:\t   61200 kB
Threads:\t4
"""


def test_resident_memory_is_read_from_vmrss_in_kilobytes() -> None:
    assert measure.parse_vm_rss(STATUS) == 79960 * 1024
    # A kernel thread has no VmRSS line.
    assert measure.parse_vm_rss("Name:\tkthreadd\nState:\tS (sleeping)\n") is None


def test_cpu_ticks_are_counted_after_the_command_name_whatever_it_holds() -> None:
    # utime 250 and stime 30: fields 14 and 15; the name holds a space and a parenthesis.
    stat = "4242 (python (bench) x) S 1 4242 4242 0 -1 4194560 9000 0 12 0 250 30 0 0 20 0 4 0 777 0 0"
    assert measure.parse_cpu_ticks(stat) == 280


def test_reaped_children_s_ticks_are_cutime_and_cstime() -> None:
    # cutime 900 and cstime 45: fields 16 and 17, after utime 250 and stime 30.
    stat = "4242 (postgres) S 1 4242 4242 0 -1 4194560 9000 0 12 0 250 30 900 45 20 0 4 0 777 0 0"
    assert measure.parse_reaped_cpu_ticks(stat) == 945
    assert measure.parse_cpu_ticks(stat) == 280


def test_a_child_that_ended_is_counted_with_reaped_and_not_without() -> None:
    # As a Postgres backend that served a connection and ended between two readings.
    pid = os.getpid()
    before, reaped_before = measure.cpu_seconds(pid, tree=False), measure.cpu_seconds(pid, tree=False, reaped=True)
    assert before is not None and reaped_before is not None
    child = subprocess.run(
        [sys.executable, "-c", "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"],
        check=True,
    )
    assert child.returncode == 0
    after, reaped_after = measure.cpu_seconds(pid, tree=False), measure.cpu_seconds(pid, tree=False, reaped=True)
    assert after is not None and reaped_after is not None
    # Ticks are 10 ms: the child's 0.3 s of work shows whole in the reaped count, and not in this process's own.
    assert (reaped_after - reaped_before) - (after - before) >= 0.25


def test_children_of_every_thread_are_gathered() -> None:
    assert measure.parse_children(["101 102 ", "", "205\n"]) == [101, 102, 205]
    assert measure.parse_children([]) == []


def test_machine_facts_are_read_from_cpuinfo_and_meminfo() -> None:
    cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n"
    assert measure.parse_cpu_model(cpuinfo) == "Intel(R) Xeon(R) Gold 6230"
    assert measure.parse_cpu_model("processor\t: 0\n") is None
    assert measure.parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n") == 24576000 * 1024
    assert measure.parse_mem_total("") is None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc, which this system lacks")
def test_this_process_has_memory_and_cpu_time_and_a_gone_one_has_none() -> None:
    pid = os.getpid()
    assert pid in measure.process_tree(pid)
    size = measure.rss_bytes(pid)
    assert size is not None and size > 1024 * 1024
    cpu = measure.cpu_seconds(pid)
    assert cpu is not None and cpu > 0
    assert measure.rss_bytes(2**22 + 12345) is None  # above any pid_max: no such process
    assert measure.cpu_seconds(2**22 + 12345) is None


EXPOSITION = """# HELP vigil_events_handled_total Records by outcome.
# TYPE vigil_events_handled_total counter
vigil_events_handled_total{outcome="ok",service="detector"} 1200.0
vigil_events_handled_total{outcome="duplicate",service="detector"} 7.0
vigil_events_handled_total{outcome="ok",service="analyzer"} 5.0
# HELP vigil_handler_duration_seconds Time to handle one batch.
# TYPE vigil_handler_duration_seconds histogram
vigil_handler_duration_seconds_bucket{le="0.1",service="detector"} 3.0
vigil_handler_duration_seconds_bucket{le="+Inf",service="detector"} 4.0
vigil_handler_duration_seconds_count{service="detector"} 4.0
vigil_handler_duration_seconds_sum{service="detector"} 0.25
"""


def test_metric_sums_pick_samples_by_name_and_labels() -> None:
    assert measure.metric_sum(EXPOSITION, "vigil_events_handled_total", service="detector", outcome="ok") == 1200
    assert measure.metric_sum(EXPOSITION, "vigil_events_handled_total", service="detector") == 1207
    assert measure.metric_sum(EXPOSITION, "vigil_handler_duration_seconds_sum", service="detector") == 0.25
    assert measure.metric_sum(EXPOSITION, "vigil_handler_duration_seconds_count", service="detector") == 4
    assert measure.metric_sum(EXPOSITION, "vigil_events_handled_total", service="reporter") == 0


@dataclass
class Record:
    """What the collector reads of a consumed record."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def event(event_type: str, incident: str, alert_keys: list[str] | None = None) -> Record:
    body = {"title": "t", "new_alerts": [{"key": key} for key in alert_keys or []]}
    return Record(incident.encode(), orjson.dumps(body), [("ce_type", event_type.encode())])


def test_the_collector_times_each_alert_and_each_incident_from_its_first_alert() -> None:
    collector = Collector(consumer=None)  # type: ignore[arg-type]  # only note() is exercised
    collector.phase = Phase(sent={"a": 100.0, "b": 100.5, "c": 101.0})
    collector.note(event(DETECTED, "inc-1", ["a", "b", "not-ours"]), 100.2)
    collector.note(event(UPDATED, "inc-1", ["b", "c"]), 101.3)  # b seen before: its first sighting counts
    collector.note(event("vigil.incident.analyzed.v1", "inc-1"), 102.0)
    collector.note(event("vigil.incident.analyzed.v1", "inc-1"), 109.0)  # a later analysis: not a milestone
    collector.note(event("vigil.response.planned.v1", "inc-9"), 102.0)  # an incident of another phase
    collector.note(event("vigil.incident.escalated.v1", "inc-1"), 100.7)

    phase = collector.phase
    assert phase.seen == {"a": 100.2, "b": 100.2, "c": 101.3}
    assert phase.opened == {"inc-1": 100.0}  # its earliest alert's send
    assert phase.milestones == {"analysed": {"inc-1": 102.0}, "planned": {}, "notified": {"inc-1": 100.7}}
    latency = phase.latencies()
    # Detected: a and b opened inc-1 (c joined it later); carried: every alert to its first event.
    detected, carried = latency["detected"], latency["carried"]
    assert detected is not None and detected["count"] == 2 and detected["max"] == pytest.approx(200.0)
    assert carried is not None and carried["count"] == 3 and carried["max"] == pytest.approx(300.0)
    analysed = latency["analysed"]
    assert analysed is not None and analysed["p99"] == pytest.approx(2000.0)
    assert latency["planned"] is None


def test_samples_keep_the_largest_of_each_service() -> None:
    samples = Samples()
    samples.add({"detector": 10, "analyzer": 0}, {"detector": 70.0, "analyzer": None})
    samples.add({"detector": 3, "analyzer": 40}, {"detector": 65.0, "analyzer": 90.5})
    assert samples.lag == {"detector": 10, "analyzer": 40}
    assert samples.rss_mb == {"detector": 70.0, "analyzer": 90.5}


def test_cpu_used_between_two_readings() -> None:
    assert cpu_used({"detector": 1.0, "analyzer": None}, {"detector": 3.5, "analyzer": 2.0}) == {
        "detector": 2.5,
        "analyzer": None,
    }


def test_the_sustained_rate_is_the_highest_rate_drained_within_the_bound() -> None:
    phases = [
        {"publish_rate_per_s": 199.8, "kept_up": True},
        {"publish_rate_per_s": 998.0, "kept_up": True},
        {"publish_rate_per_s": 4100.0, "kept_up": False},
    ]
    assert sustained_rate(phases) == 998.0
    assert sustained_rate([{"publish_rate_per_s": 199.8, "kept_up": False}]) == 0.0
    assert sustained_rate([]) is None


def test_rates_and_benchmark_names_are_parsed_from_the_command_line() -> None:
    assert parse_rates("200,1000, 5000") == [200.0, 1000.0, 5000.0]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_rates("200,-5")
    assert parse_only("e2e,throughput") == ["throughput", "e2e"]  # in the order they run
    assert parse_only("all")[0] == "throughput" and "reporter" in parse_only("all")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_only("throughput,nonsense")


def test_a_phase_s_cpu_is_summed_up_largest_first_with_the_machine_s() -> None:
    cpu_s = {
        "detector": 2.4,
        "analyzer": 6.03,
        "postgres": 10.2,
        "broker": None,
        "machine": 38.5,
        "machine_capacity": 41.5,
    }
    assert cpu_summary(cpu_s) == "CPU s postgres 10.2, analyzer 6.0, detector 2.4 (the machine 38.5 of 41.5)"
    assert cpu_summary({"detector": 1.0}) == "CPU s detector 1.0"
