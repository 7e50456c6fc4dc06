"""Milestones, time-to-X, SLA targets and breaches: pure measures of the response."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.reporter.measures import (
    DEFAULT_SLA,
    Breach,
    SlaFileError,
    breaches,
    durations,
    humanize,
    load_sla,
    mean,
    milestones_reached,
)
from shared.events import IncidentState
from tests.factories import T0


def test_entering_a_state_reaches_its_milestones_and_those_it_implies() -> None:
    assert milestones_reached(IncidentState.TRIAGED) == ()
    assert milestones_reached(IncidentState.ACKNOWLEDGED) == ("acknowledged",)
    assert milestones_reached(IncidentState.CONTAINED) == ("acknowledged", "contained")
    assert milestones_reached(IncidentState.RECOVERED) == ("acknowledged", "contained", "recovered")
    # A false positive is resolved without ever being contained.
    assert milestones_reached(IncidentState.RESOLVED) == ("acknowledged", "resolved")
    # Merged into another, an incident ended; nobody acknowledged it as itself.
    assert milestones_reached(IncidentState.RESOLVED, "merged") == ("resolved",)


def test_each_time_to_x_is_the_gap_between_two_milestones() -> None:
    milestones = {
        "first_alert": T0,
        "detected": T0 + timedelta(seconds=30),
        "acknowledged": T0 + timedelta(minutes=5, seconds=30),
        "contained": T0 + timedelta(hours=1, seconds=30),
        "recovered": None,
        "resolved": T0 + timedelta(days=1, seconds=30),
    }
    assert durations(milestones) == {
        "time_to_detect": 30.0,
        "time_to_acknowledge": 300.0,
        "time_to_contain": 3600.0,
        "time_to_recover": None,
        "time_to_resolve": 86400.0,
    }


def test_a_milestone_stamped_before_its_start_counts_as_zero() -> None:
    assert durations({"detected": T0, "acknowledged": T0 - timedelta(seconds=1)})["time_to_acknowledge"] == 0.0


def test_breaches_of_finished_and_running_clocks() -> None:
    detected = T0
    milestones = {"first_alert": T0, "detected": detected, "acknowledged": detected + timedelta(minutes=20)}
    found = breaches(milestones, "SEV1", DEFAULT_SLA, now=detected + timedelta(hours=5))
    assert found == [
        Breach("time_to_acknowledge", 900.0, 1200.0, running=False),
        Breach("time_to_contain", 14400.0, 18000.0, running=True),
    ]
    # Within every target, nothing.
    assert breaches(milestones, "SEV3", DEFAULT_SLA, now=detected + timedelta(hours=5)) == []


def test_a_resolved_incident_no_longer_runs_the_clocks_it_never_reached() -> None:
    milestones = {"detected": T0, "acknowledged": T0, "resolved": T0 + timedelta(hours=1)}
    assert breaches(milestones, "SEV1", DEFAULT_SLA, now=T0 + timedelta(days=30)) == []


def test_an_unknown_severity_has_no_targets() -> None:
    assert breaches({"detected": T0}, "SEV9", DEFAULT_SLA, now=T0 + timedelta(days=99)) == []


def test_sla_targets_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sla.yaml"
    path.write_text(
        "targets:\n  SEV1: {time_to_acknowledge: 5m, time_to_resolve: 2h}\n  SEV2: {time_to_acknowledge: 90}\n"
    )
    sla = load_sla(path)
    assert sla.for_severity("SEV1").time_to_acknowledge == 300
    assert sla.for_severity("SEV1").time_to_resolve == 7200
    assert sla.for_severity("SEV2").time_to_acknowledge == 90
    assert sla.for_severity("SEV4").time_to_acknowledge is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("targets:\n  SEV1: {time_to_acknowledge: soon}\n", "targets.SEV1.time_to_acknowledge"),
        ("targets:\n  SEV7: {time_to_acknowledge: 5m}\n", "targets.SEV7"),
        ("targets:\n  SEV1: {time_to_lunch: 5m}\n", "time_to_lunch"),
        ("targets: [\n", "sla.yaml"),
    ],
)
def test_a_bad_sla_file_names_its_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "sla.yaml"
    path.write_text(text)
    with pytest.raises(SlaFileError, match=problem):
        load_sla(path)


def test_the_shipped_sla_file_loads() -> None:
    assert load_sla() == DEFAULT_SLA


def test_humanize_and_mean() -> None:
    assert [humanize(v) for v in (None, 42, 125, 3725, 90061)] == ["-", "42s", "2m 5s", "1h 2m", "1d 1h"]
    assert mean([None, 1.0, 3.0]) == 2.0
    assert mean([None]) is None
