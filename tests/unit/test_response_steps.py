"""Pure rules of response execution: the approval policy, step ids, ordering and answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.responder import approvals, steps
from services.responder.approvals import ApprovalsError, StepFacts, decide, load_policy, parse_policy
from shared.events import Severity

SHIPPED = load_policy()


def facts(**changes: object) -> StepFacts:
    base: dict[str, object] = {
        "severity": Severity.SEV2,
        "risk": "medium",
        "response": "immediate",
        "action": "block",
        "connector": "blocklist",
        "asset_tags": [],
        "targets": 1,
        "required_by_playbook": False,
    }
    return StepFacts(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "mode", "rule", "on_timeout"),
    [
        ({"severity": Severity.SEV1}, "approve", "sev1-containment", "proceed"),
        ({"severity": Severity.SEV4}, "approve", "low-severity", "deny"),
        ({"risk": "low", "response": "tactical"}, "auto", "low-risk", "deny"),
        ({"risk": "critical", "severity": Severity.SEV1}, "approve", "critical-risk", "deny"),
        ({"asset_tags": ["crown-jewel"], "risk": "low"}, "approve", "crown-jewels", "deny"),
        ({"targets": 25, "severity": Severity.SEV1}, "approve", "wide-blast-radius", "deny"),
        ({"response": "recovery", "severity": Severity.SEV2}, "approve", "default", "deny"),
    ],
)
def test_the_shipped_policy_decides_as_its_comments_say(
    changes: dict[str, object], mode: str, rule: str, on_timeout: str
) -> None:
    decision = decide(SHIPPED, facts(**changes))
    assert (decision.mode, decision.rule) == (mode, rule)
    if mode == "approve":
        assert decision.on_timeout == on_timeout and decision.timeout_s


def test_crown_jewels_need_two_people_and_sev1_containment_proceeds_after_five_minutes() -> None:
    jewel = decide(SHIPPED, facts(asset_tags=["crown-jewel"]))
    assert (jewel.approvals, jewel.roles) == (2, ("commander", "admin"))
    sev1 = decide(SHIPPED, facts(severity=Severity.SEV1))
    assert (sev1.timeout_s, sev1.on_timeout) == (300, "proceed")


def test_a_playbook_that_requires_approval_is_never_run_automatically() -> None:
    decision = decide(SHIPPED, facts(risk="low", response="tactical", required_by_playbook=True))
    assert (decision.mode, decision.approvals, decision.timeout_s) == ("approve", 1, None)
    assert "needs 1 approval(s) from any operator" in decision.reason


def test_a_step_the_playbook_requires_approval_for_is_denied_when_nobody_answers() -> None:
    # SEV1 containment proceeds after five minutes unanswered, but not a step whose playbook requires a person.
    decision = decide(SHIPPED, facts(severity=Severity.SEV1, required_by_playbook=True))
    assert (decision.rule, decision.timeout_s, decision.on_timeout) == ("sev1-containment", 300, "deny")
    assert "after 300s unanswered it will deny" in decision.reason


def test_forbid_wins_over_the_playbook() -> None:
    policy = parse_policy("rules: [{name: never, when: {actions: [wipe]}, mode: forbid}, {name: rest, mode: auto}]")
    assert decide(policy, facts(action="wipe", required_by_playbook=True)).mode == "forbid"
    assert decide(policy, facts(action="block")).mode == "auto"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("rules: []", "at least 1 item"),
        ("rules: [{name: a, when: {risks: [low]}, mode: auto}]", "the last rule must have no conditions"),
        (
            "rules: [{name: a, mode: maybe}]",
            r"approvals.yaml:1:25: rules.0.mode: Input should be 'auto', 'approve' or 'forbid'",
        ),
        ("rules: [{name: a, mode: approve, timeout: soon}]", "not a duration"),
        ("rules: [{name: a, mode: approve, on_timeout: shrug}]", "'proceed' or 'deny'"),
        ("rules: [", "approvals.yaml:1:9: not YAML"),
    ],
)
def test_a_broken_policy_is_refused_with_its_reason(document: str, reason: str) -> None:
    with pytest.raises(ApprovalsError, match=reason):
        parse_policy(document)


def test_the_shipped_policy_file_loads() -> None:
    assert isinstance(load_policy(Path(approvals.DEFAULT_APPROVALS)), approvals.Policy)


# ---- step ids ----------------------------------------------------------------------------------


def test_a_step_id_is_stable_names_its_incident_and_hides_long_items() -> None:
    one = steps.step_id("inc-1", "block", "203.0.113.7")
    assert one == steps.step_id("inc-1", "block", "203.0.113.7")
    assert one != steps.step_id("inc-1", "block", "203.0.113.8")
    assert steps.step_id("inc-1", "tell", None) == "inc-1:tell"
    long = steps.step_id("inc-1", "block-url", "https://evil.example/" + "a" * 5000)
    assert len(long) < 40 and steps.incident_of(long) == "inc-1"
    with pytest.raises(ValueError, match="not a step id"):
        steps.incident_of("no-colon")


# ---- ordering ----------------------------------------------------------------------------------


def view(sid: str, position: int, state: str, on_failure: str = "continue") -> steps.StepView:
    return steps.StepView(sid, position, state, on_failure, sid)


def test_every_item_of_a_step_runs_at_once_and_the_next_step_waits() -> None:
    plan = [view("a1", 0, "planned"), view("a2", 0, "approved"), view("b", 1, "planned")]
    assert steps.advance(plan) == [steps.Move("a1", "dispatch"), steps.Move("a2", "dispatch")]
    running = [view("a1", 0, "succeeded"), view("a2", 0, "running"), view("b", 1, "planned")]
    assert steps.advance(running) == []
    done = [view("a1", 0, "succeeded"), view("a2", 0, "refused"), view("b", 1, "planned")]
    assert steps.advance(done) == [steps.Move("b", "dispatch")]


def test_a_step_awaiting_approval_holds_the_steps_after_it_but_not_its_siblings() -> None:
    plan = [view("a1", 0, "awaiting_approval"), view("a2", 0, "planned"), view("b", 1, "planned")]
    assert steps.advance(plan) == [steps.Move("a2", "dispatch")]


def test_a_failed_stop_step_skips_what_has_not_started_and_continue_goes_on() -> None:
    plan = [view("a", 0, "failed", "stop"), view("b", 1, "awaiting_approval"), view("c", 2, "planned")]
    moves = steps.advance(plan)
    assert [(m.step_id, m.to) for m in moves] == [("b", "skip"), ("c", "skip")]
    assert "'a' failed" in moves[0].reason
    goes_on = [view("a", 0, "failed", "continue"), view("b", 1, "planned")]
    assert steps.advance(goes_on) == [steps.Move("b", "dispatch")]
    denied = [view("a", 0, "denied", "stop"), view("b", 1, "planned")]
    assert steps.advance(denied) == [steps.Move("b", "dispatch")]  # a denial is a decision, not a failure


def test_answers_are_checked_for_state_role_and_the_same_person_twice() -> None:
    given = [{"actor": "alice"}]
    ok = {"state": "awaiting_approval", "required": 2, "roles": ["commander"], "given": given}
    steps.check_answer(**ok, actor="bob", role="commander")  # type: ignore[arg-type]
    with pytest.raises(steps.ApprovalRefused, match="approved this step already"):
        steps.check_answer(**ok, actor="alice", role="commander")  # type: ignore[arg-type]
    with pytest.raises(steps.ApprovalRefused, match="may not answer"):
        steps.check_answer(**ok, actor="bob", role="intern")  # type: ignore[arg-type]
    with pytest.raises(steps.ApprovalRefused, match="is running, not awaiting approval"):
        steps.check_answer(**{**ok, "state": "running"}, actor="bob", role="commander")  # type: ignore[arg-type]
    assert not steps.approved_enough(2, given)
    assert steps.approved_enough(2, [*given, {"actor": "bob"}])
    assert not steps.approved_enough(2, [*given, {"actor": "alice"}])


def test_a_rule_naming_no_roles_takes_answers_only_from_roles_that_may_approve_steps() -> None:
    ok = {"state": "awaiting_approval", "required": 1, "roles": [], "given": []}
    for role in ("commander", "admin"):
        steps.check_answer(**ok, actor="bob", role=role)  # type: ignore[arg-type]
    for role in ("viewer", "responder", "ingest", "", "security-lead"):
        with pytest.raises(steps.ApprovalRefused, match="or above may"):
            steps.check_answer(**ok, actor="bob", role=role)  # type: ignore[arg-type]


def test_approvals_given_under_other_terms_count_only_from_the_roles_the_rule_allows_now() -> None:
    given = [{"actor": "alice", "role": "commander"}, {"actor": "bob", "role": "admin"}]
    assert steps.approved_enough(2, given, ["commander", "admin"])
    assert steps.approved_enough(2, given)  # a rule naming no roles
    assert not steps.approved_enough(2, given, ["admin"])  # the crown-jewel rule: admins only
    assert steps.approved_enough(2, [*given, {"actor": "carol", "role": "admin"}], ["admin"])
