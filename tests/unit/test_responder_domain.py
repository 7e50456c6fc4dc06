"""Playbook selection and response planning."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from services.responder import domain
from services.responder.service import load_playbooks
from shared.events import Analysis, IncidentType, Indicator, Severity


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


def _analysis(
    *, ips: Sequence[str] = (), hosts: Sequence[str] = (), users: Sequence[str] = (), title: str = "intrusion"
) -> Analysis:
    return Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV1,
        title=title,
        indicators=[Indicator(kind="ipv4", value=ip) for ip in ips],
        affected_hosts=list(hosts),
        affected_users=list(users),
        alert_count=1,
        summary="",
    )


def test_facts_from_an_analysis_expand_steps_per_external_ip_with_the_ip_rendered(
    playbooks: list[domain.Playbook],
) -> None:
    facts = domain.incident_facts("inc-7", _analysis(ips=["203.0.113.5", "10.0.0.8", "198.51.100.9"], hosts=["web-1"]))
    playbook = domain.select_playbook(playbooks, IncidentType.SYSTEM_COMPROMISE, Severity.SEV1, facts)
    planning = domain.plan_bounded(playbook, plan_id="p", facts=facts)

    blocks = [s for s in planning.steps if s.step == "block-ip"]
    assert [(s.item, s.params["address"]) for s in blocks] == [
        ("203.0.113.5", "203.0.113.5"),
        ("198.51.100.9", "198.51.100.9"),
    ]
    assert blocks[0].params["reason"] == "incident inc-7: intrusion"
    names = [a.name for a in planning.plan.actions]
    assert "Block attacker addresses: 203.0.113.5" in names
    assert not any("10.0.0.8" in n for n in names)
    assert planning.truncated == 0


def test_a_value_failing_its_type_is_refused_and_nothing_to_iterate_is_skipped(
    playbooks: list[domain.Playbook],
) -> None:
    facts = domain.incident_facts("inc-8", _analysis(hosts=["web-1", "--rm -rf /"]))
    playbook = domain.select_playbook(playbooks, IncidentType.SYSTEM_COMPROMISE, Severity.SEV1, facts)
    planning = domain.plan_bounded(playbook, plan_id="p", facts=facts)

    assert planning.refused and all(s.item == "--rm -rf /" for s in planning.refused)
    assert all("refused" in s.reason for s in planning.refused)
    assert {s.step for s in planning.skipped} >= {"block-ip", "reset-credentials"}
    assert all(s.reason.startswith("no ") for s in planning.skipped)
    assert not any("--rm" in a.name for a in planning.plan.actions)
    assert len(planning.plan.actions) == len(planning.runnable)


def test_a_plan_event_lists_at_most_the_bound_and_sums_up_the_rest(playbooks: list[domain.Playbook]) -> None:
    hosts = [f"host-{n}" for n in range(100)]
    facts = domain.incident_facts("inc-9", _analysis(hosts=hosts))
    playbook = domain.select_playbook(playbooks, IncidentType.SYSTEM_COMPROMISE, Severity.SEV1, facts)
    planning = domain.plan_bounded(playbook, plan_id="p", facts=facts, limit=50)

    actions = planning.plan.actions
    assert len(actions) == 50
    assert planning.truncated == len(planning.runnable) - 49 > 0
    assert actions[-1].id == "more" and actions[-1].name == f"{planning.truncated} more actions not listed"
    assert actions[-1].requires_approval
    assert [a.id for a in actions[:-1]] == [s.id for s in planning.runnable[:49]]


def test_a_plan_within_the_bound_is_listed_whole(playbooks: list[domain.Playbook]) -> None:
    facts = domain.incident_facts("inc-10", _analysis(hosts=["a", "b"]))
    playbook = domain.select_playbook(playbooks, IncidentType.SYSTEM_COMPROMISE, Severity.SEV1, facts)
    runnable = domain.plan_bounded(playbook, plan_id="q", facts=facts).runnable
    planning = domain.plan_bounded(playbook, plan_id="p", facts=facts, limit=len(runnable))
    assert planning.truncated == 0
    assert [a.id for a in planning.plan.actions] == [s.id for s in runnable]


def test_a_long_item_is_clipped_in_the_plan_event_and_whole_in_the_plan(playbooks: list[domain.Playbook]) -> None:
    user = "u" * 2000  # a string parameter takes up to 2,048 characters
    facts = domain.incident_facts("inc-11", _analysis(users=[user]))
    playbook = domain.select_playbook(playbooks, IncidentType.SYSTEM_COMPROMISE, Severity.SEV1, facts)
    planning = domain.plan_bounded(playbook, plan_id="p", facts=facts)

    assert max(len(a.name) for a in planning.plan.actions) == domain.MAX_ACTION_NAME
    [reset] = [s for s in planning.runnable if s.step == "reset-credentials"]
    assert reset.params["user"] == user


def test_the_planner_sees_intel_verdicts_and_asset_tags_from_the_analysis() -> None:
    from services.responder.domain import incident_facts
    from shared.events import Analysis, IncidentType, Indicator, Severity

    analysis = Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV2,
        title="t",
        indicators=[
            Indicator(kind="ipv4", value="203.0.113.7", verdict="malicious", feeds=["feodo"]),
            Indicator(kind="domain", value="example.org"),
        ],
        affected_hosts=["db-1"],
        affected_users=[],
        alert_count=1,
        summary="",
        asset_tags=["crown-jewel"],
    )
    facts = incident_facts("inc-1", analysis)
    assert (facts.verdicts, facts.asset_tags) == (["malicious"], ["crown-jewel"])


def test_a_step_asked_for_on_demand_is_rendered_for_the_item_named_with_the_lease_asked(
    playbooks: list[domain.Playbook],
) -> None:
    facts = domain.incident_facts("inc-9", _analysis(ips=["203.0.113.5"], hosts=["web-1"]))
    playbook, step = domain.on_demand(
        playbooks,
        "compromise-critical.block-ip",
        facts,
        step_id="inc-9:block-ip:run-1",
        item=" 198.51.100.9 ",
        lease_s=7200,
    )
    assert playbook.id == "compromise-critical"
    assert (step.id, step.item, step.params["address"], step.lease_s) == (
        "inc-9:block-ip:run-1",
        "198.51.100.9",
        "198.51.100.9",
        7200,
    )
    assert step.undo is not None and step.undo.params["address"] == "198.51.100.9"
    assert step.status in ("planned", "awaiting_approval") and step.position == 0
    # A host is named as the step's type has it: lower case, without a trailing dot.
    _, isolate = domain.on_demand(
        playbooks, "compromise-critical.isolate-host", facts, step_id="s", item="DB-7.corp.", lease_s=None
    )
    assert isolate.item == "db-7.corp"


@pytest.mark.parametrize(
    ("ref", "item", "lease_s", "why"),
    [
        ("compromise-critical.block-ip", "10.0.0.8", None, "10.0.0.8 is not an external address"),
        ("compromise-critical.block-ip", "203.0.113.5", 30, "a lease is from 1 minute to 30 days"),
        ("compromise-critical.isolate-host", "rm -rf /", None, "item 'rm -rf /' is refused: not a host name"),
        ("compromise-critical.notify-stakeholders", "web-1", None, "acts on no item"),
        ("compromise-critical.notify-stakeholders", None, 3600, "is not reversible"),
        ("nothing.block-ip", None, None, "no playbook 'nothing'"),
    ],
)
def test_a_step_that_cannot_run_on_demand_says_why(
    playbooks: list[domain.Playbook], ref: str, item: str | None, lease_s: int | None, why: str
) -> None:
    facts = domain.incident_facts("inc-9", _analysis())
    with pytest.raises(domain.OnDemandRefused, match=why):
        domain.on_demand(playbooks, ref, facts, step_id="s", item=item, lease_s=lease_s)
