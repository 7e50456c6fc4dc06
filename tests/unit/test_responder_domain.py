"""Playbook selection and response planning."""

from __future__ import annotations

import itertools

import pytest

from services.responder import domain
from services.responder.service import load_playbooks
from shared.events import IncidentType, Severity


@pytest.fixture(scope="module")
def playbooks() -> list[domain.Playbook]:
    return load_playbooks()


def test_every_type_and_severity_has_a_playbook(playbooks: list[domain.Playbook]) -> None:
    for incident_type, severity in itertools.product(IncidentType, Severity):
        domain.select_playbook(playbooks, incident_type, severity)


@pytest.mark.parametrize(
    ("incident_type", "severity", "expected"),
    [
        (IncidentType.SYSTEM_COMPROMISE, Severity.SEV1, "compromise-critical"),
        (IncidentType.SYSTEM_COMPROMISE, Severity.SEV2, "compromise-critical"),
        (IncidentType.SYSTEM_COMPROMISE, Severity.SEV3, "compromise-triage"),
        (IncidentType.SERVICE_DISRUPTION, Severity.SEV4, "service-degradation"),
        (IncidentType.DATA_LEAK, Severity.SEV4, "data-leak"),
    ],
)
def test_most_demanding_playbook_the_severity_reaches(
    playbooks: list[domain.Playbook], incident_type: IncidentType, severity: Severity, expected: str
) -> None:
    assert domain.select_playbook(playbooks, incident_type, severity).id == expected


def test_no_playbook_is_an_error() -> None:
    only = domain.Playbook.model_validate(
        {
            "id": "x",
            "title": "x",
            "match": {"types": ["data_leak"], "min_severity": "SEV1"},
            "steps": [
                {
                    "id": "a",
                    "name": "a",
                    "phase": "containment",
                    "response": "immediate",
                    "connector": "notify",
                    "action": "message",
                }
            ],
        }
    )
    with pytest.raises(domain.NoPlaybook):
        domain.select_playbook([only], IncidentType.DATA_LEAK, Severity.SEV2)


def test_destructive_actions_wait_for_approval(playbooks: list[domain.Playbook]) -> None:
    playbook = domain.select_playbook(playbooks, IncidentType.SYSTEM_COMPROMISE, Severity.SEV1)
    plan = domain.plan_response(
        playbook, plan_id="p1", incident_type=IncidentType.SYSTEM_COMPROMISE, severity=Severity.SEV1
    )
    assert plan.actions, "a plan has actions"
    for action in plan.actions:
        assert action.requires_approval == action.destructive
        assert (action.status == "awaiting_approval") == action.destructive
    assert any(a.destructive for a in plan.actions)


def test_plan_again_only_on_change(playbooks: list[domain.Playbook]) -> None:
    playbook = domain.select_playbook(playbooks, IncidentType.DATA_LEAK, Severity.SEV2)
    assert domain.needs_new_plan(None, playbook, Severity.SEV2)
    assert not domain.needs_new_plan((playbook.id, Severity.SEV2), playbook, Severity.SEV2)
    assert domain.needs_new_plan((playbook.id, Severity.SEV2), playbook, Severity.SEV1)
