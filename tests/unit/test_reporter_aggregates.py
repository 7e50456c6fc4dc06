"""Aggregates of the response over incidents, and the reporter's Prometheus metrics built from them."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.reporter.aggregates import IncidentTimes, false_positive_rates, open_breaches, summarize
from services.reporter.measures import DEFAULT_SLA
from services.reporter.metrics import RESPONSE_TIMES, histograms, publish
from tests.factories import T0

PROMTOOL = shutil.which("promtool")


def _incident(
    n: int,
    *,
    severity: str = "SEV2",
    ack_s: float | None = 60,
    resolve_s: float | None = None,
    resolution: str | None = None,
    sources: tuple[str, ...] = ("falco",),
    rules: tuple[str, ...] = (),
    executed: int = 0,
    validated: int = 0,
) -> IncidentTimes:
    detected = T0 + timedelta(seconds=10)
    return IncidentTimes(
        id=f"inc-{n}",
        severity=severity,
        type="security_breach",
        state="resolved" if resolve_s is not None else "acknowledged" if ack_s is not None else "detected",
        resolution=resolution,
        milestones={
            "first_alert": T0,
            "detected": detected,
            "acknowledged": detected + timedelta(seconds=ack_s) if ack_s is not None else None,
            "resolved": detected + timedelta(seconds=resolve_s) if resolve_s is not None else None,
        },
        sources=sources,
        rules=rules,
        executed=executed,
        validated=validated,
    )


NOW = T0 + timedelta(hours=2)
INCIDENTS = [
    _incident(1, severity="SEV1", ack_s=60, resolve_s=3600, resolution="fixed", executed=3, validated=2),
    _incident(2, severity="SEV1", ack_s=1800, sources=("falco", "wazuh")),  # ack late: past the 15 min target
    _incident(3, severity="SEV3", ack_s=None),  # not yet acknowledged, within 4 h
    _incident(4, ack_s=120, resolve_s=600, resolution="false_positive", sources=("wazuh",), rules=("r-noisy",)),
    _incident(5, ack_s=120, resolve_s=900, resolution="fixed", sources=("wazuh",), rules=("r-noisy", "r-good")),
]


def test_summaries_per_severity() -> None:
    [sev1, sev2, sev3] = sorted(summarize(INCIDENTS, by="severity", sla=DEFAULT_SLA, now=NOW), key=lambda g: g.group)
    assert (sev1.group, sev1.incidents, sev1.resolved, sev1.resolution_rate) == ("SEV1", 2, 1, 0.5)
    assert sev1.means_s["time_to_detect"] == 10.0
    assert sev1.means_s["time_to_acknowledge"] == (60 + 1800) / 2
    assert sev1.means_s["time_to_resolve"] == 3600.0
    assert sev1.means_s["time_to_contain"] is None
    assert (sev1.executed_actions, sev1.validated_actions, sev1.effectiveness) == (3, 2, 2 / 3)
    assert (sev1.breached, sev1.breaches) == (1, {"time_to_acknowledge": 1})
    assert (sev2.incidents, sev2.false_positives, sev2.false_positive_rate) == (2, 1, 0.5)
    assert (sev3.incidents, sev3.resolution_rate, sev3.effectiveness, sev3.breached) == (1, 0.0, None, 0)


def test_an_incident_counts_once_in_each_of_its_sources() -> None:
    groups = {g.group: g.incidents for g in summarize(INCIDENTS, by="source", sla=DEFAULT_SLA, now=NOW)}
    assert groups == {"falco": 3, "wazuh": 3}
    assert [g.incidents for g in summarize(INCIDENTS, by="all", sla=DEFAULT_SLA, now=NOW)] == [5]
    assert {g.group for g in summarize(INCIDENTS, by="service", sla=DEFAULT_SLA, now=NOW)} == {"none"}


def test_false_positive_rates_per_source_and_rule() -> None:
    by_source = {r.key: (r.resolved, r.false_positives, r.rate) for r in false_positive_rates(INCIDENTS, by="source")}
    assert by_source == {"wazuh": (2, 1, 0.5), "falco": (1, 0, 0.0)}
    by_rule = [(r.key, r.rate) for r in false_positive_rates(INCIDENTS, by="rule")]
    assert by_rule == [("r-noisy", 0.5), ("r-good", 0.0)]


def test_open_breaches_count_running_clocks_of_open_incidents_only() -> None:
    late = NOW + timedelta(hours=5)  # past SEV1's 4 h to contain, SEV3's 4 h to acknowledge
    assert open_breaches(INCIDENTS, sla=DEFAULT_SLA, now=late) == {
        ("SEV1", "time_to_contain"): 1,
        ("SEV3", "time_to_acknowledge"): 1,
    }


def test_histograms_count_each_time_to_x_in_cumulative_buckets() -> None:
    families = {f.name: f for f in histograms(INCIDENTS)}
    assert set(families) == {
        f"vigil_incident_{m}_seconds"
        for m in ("time_to_detect", "time_to_acknowledge", "time_to_contain", "time_to_recover", "time_to_resolve")
    }
    acknowledge = {
        (s.labels["severity"], s.labels.get("le")): s.value
        for s in families["vigil_incident_time_to_acknowledge_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert acknowledge[("SEV1", "60.0")] == 1  # 60 s is in the le=60 bucket
    assert acknowledge[("SEV1", "1800.0")] == 2
    assert acknowledge[("SEV1", "+Inf")] == 2
    assert acknowledge[("SEV2", "120.0")] == 2
    assert ("SEV3", "+Inf") not in acknowledge  # never acknowledged: no observation


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_the_exposition_passes_promtool() -> None:
    RESPONSE_TIMES.update(INCIDENTS)
    publish(
        [("SEV1", "security_breach", "acknowledged", 1), ("SEV2", "security_breach", "resolved", 2)],
        INCIDENTS,
        DEFAULT_SLA,
        now=NOW + timedelta(hours=5),
    )
    text = generate_latest(REGISTRY).decode()
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("vigil_incidents")
    }
    assert (
        samples[
            ("vigil_incidents_open", (("severity", "SEV1"), ("state", "acknowledged"), ("type", "security_breach")))
        ]
        == 1
    )
    assert not any(name == "vigil_incidents_open" and ("state", "resolved") in labels for name, labels in samples)
    assert samples[("vigil_incidents_sla_breaching", (("measure", "time_to_contain"), ("severity", "SEV1")))] == 1
