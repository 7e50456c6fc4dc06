"""The coordinator's pure decisions: routing to a schedule, escalation content and order, deadlines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.coordinator import domain, schedules
from services.coordinator.schedules import OnCallConfig
from services.coordinator.service import load_oncall
from shared.events import IncidentState, IncidentType, Severity
from tests.factories import T0, snapshot


@pytest.fixture
def oncall() -> OnCallConfig:
    return load_oncall()


def test_shipped_oncall_routes_every_incident_type(oncall: OnCallConfig) -> None:
    assert {t for r in oncall.routes for t in r.types} == {t.value for t in IncidentType}
    assert set(oncall.ack_deadline_minutes) == {s.value for s in Severity}


def test_escalation_goes_down_the_schedule_from_whoever_is_on_call(oncall: OnCallConfig) -> None:
    security = schedules.route(oncall, incident_type="data_leak", severity="SEV1", service=None)
    assert security.name == "security"
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert schedules.escalation_order(security, start) == ["alice@example.com", "bob@example.com", "carol@example.com"]
    second_week = start + timedelta(weeks=1)
    assert schedules.escalation_order(security, second_week)[0] == "bob@example.com"


def test_ack_deadline_by_severity(oncall: OnCallConfig) -> None:
    assert domain.ack_deadline(oncall, Severity.SEV1, T0) == T0 + timedelta(minutes=5)
    assert domain.ack_deadline(oncall, Severity.SEV4, T0) == T0 + timedelta(hours=4)


def test_escalation_carries_everything_gathered() -> None:
    snap = snapshot(alert_count=3, hosts=["web-01", "web-02"], users=["deploy"])
    escalation = domain.escalation(snap, commander="alice", channel="pager", reason="new", alerts=[])
    assert escalation.commander == "alice"
    assert escalation.severity is snap.severity
    assert escalation.classification_reason == snap.classification_reason
    assert escalation.severity_reason == snap.severity_reason
    assert escalation.hosts == ["web-01", "web-02"]
    assert escalation.alert_count == 3


def test_only_a_raised_severity_escalates_again() -> None:
    assert domain.escalates(Severity.SEV3, Severity.SEV1)
    assert not domain.escalates(Severity.SEV1, Severity.SEV2)
    assert not domain.escalates(Severity.SEV2, Severity.SEV2)


def test_a_state_this_version_does_not_know_refuses_every_command() -> None:
    assert domain.known_state("monitoring") is None
    assert domain.known_state("acknowledged") is IncidentState.ACKNOWLEDGED
    assert domain.known_severity("SEV0") is None
    assert domain.known_severity("SEV2") is Severity.SEV2


def test_exhaustion_names_everyone_paged_in_order() -> None:
    paged = ["bob@example.com", "carol@example.com", "alice@example.com"]
    exhaustion = domain.exhaustion("security", paged=paged, last_commander="alice@example.com", severity=Severity.SEV2)
    assert exhaustion.rotation == "security"
    assert exhaustion.paged == paged
    assert exhaustion.last_commander == "alice@example.com"
    assert exhaustion.severity is Severity.SEV2
    assert "SEV2 deadline" in exhaustion.reason
