"""The coordinator's pure decisions: on-call, escalation content, the incident state machine."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.coordinator import domain
from services.coordinator.service import load_oncall
from shared.events import IncidentState, IncidentType, Severity
from tests.factories import T0, snapshot


@pytest.fixture
def oncall() -> domain.OnCall:
    return load_oncall()


def test_shipped_oncall_covers_every_incident_type(oncall: domain.OnCall) -> None:
    covered = {t for r in oncall.rotations for t in r.types}
    assert covered == set(IncidentType)
    assert set(oncall.ack_deadline_minutes) == set(Severity)


def test_rotation_by_type(oncall: domain.OnCall) -> None:
    assert domain.rotation_for(oncall, IncidentType.DATA_LEAK).name == "security"
    assert domain.rotation_for(oncall, IncidentType.SERVICE_DISRUPTION).name == "operations"


def test_on_shift_follows_the_rotation(oncall: domain.OnCall) -> None:
    security = domain.rotation_for(oncall, IncidentType.SECURITY_BREACH)
    start = security.start
    assert domain.on_shift(security, start) == security.members[0]
    assert domain.on_shift(security, start + timedelta(hours=167)) == security.members[0]
    assert domain.on_shift(security, start + timedelta(hours=168)) == security.members[1]
    assert domain.on_shift(security, start + timedelta(weeks=3)) == security.members[0]
    # escalation goes down the rotation from whoever is on shift
    assert domain.on_shift(security, start, step=1) == security.members[1]


def test_ack_deadline_by_severity(oncall: domain.OnCall) -> None:
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


def test_exhaustion_names_everyone_paged_in_order_from_whoever_was_on_shift(oncall: domain.OnCall) -> None:
    security = domain.rotation_for(oncall, IncidentType.SYSTEM_COMPROMISE)
    detected_at = security.start + timedelta(hours=168)  # the second member's shift
    exhaustion = domain.exhaustion(
        security, detected_at=detected_at, last_commander=security.members[0], severity=Severity.SEV2
    )
    assert exhaustion.rotation == "security"
    assert exhaustion.paged == [*security.members[1:], security.members[0]]
    assert exhaustion.last_commander == security.members[0]
    assert exhaustion.severity is Severity.SEV2
    assert "SEV2 deadline" in exhaustion.reason
