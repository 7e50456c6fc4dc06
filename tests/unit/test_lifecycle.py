"""The incident lifecycle as data: the shipped file, moves, guards and refusals."""

from __future__ import annotations

import pytest

from services.coordinator.lifecycle import (
    DEFAULT_LIFECYCLE,
    GuardFacts,
    LifecycleError,
    load_lifecycle,
    move,
    parse_lifecycle,
)
from shared.errors import InvalidTransition
from shared.events import IncidentState, Severity

SHIPPED = load_lifecycle()
SHIPPED_TEXT = DEFAULT_LIFECYCLE.read_text()
SEV3 = GuardFacts(severity=Severity.SEV3)


@pytest.mark.parametrize(
    ("state", "to", "name"),
    [
        ("detected", "triaged", "triage"),
        ("detected", "acknowledged", "acknowledge"),
        ("acknowledged", "contained", "contain"),
        ("contained", "eradicated", "eradicate"),
        ("eradicated", "recovered", "recover"),
        ("closed", "acknowledged", "reopen"),
    ],
)
def test_the_shipped_lifecycle_moves_as_the_runbook_goes(state: str, to: str, name: str) -> None:
    assert move(SHIPPED, state, to=to, facts=SEV3).name == name
    assert move(SHIPPED, state, name=name, facts=SEV3).to is IncidentState(to)


def test_every_standard_state_is_reachable_and_the_ended_ones_are_resolved_and_closed() -> None:
    assert set(SHIPPED.states) == set(IncidentState)
    assert SHIPPED.is_ended(IncidentState.CLOSED) and not SHIPPED.is_ended(IncidentState.RECOVERED)


def test_an_illegal_move_names_the_moves_allowed_instead() -> None:
    with pytest.raises(InvalidTransition) as refused:
        move(SHIPPED, "detected", to="eradicated", facts=SEV3)
    message = str(refused.value)
    assert message.startswith("cannot go to eradicated from detected; allowed: ")
    assert "acknowledge (to acknowledged)" in message and "resolve (to resolved)" in message


def test_resolving_needs_a_known_resolution_and_nothing_else_takes_one() -> None:
    with pytest.raises(InvalidTransition, match="resolve needs a resolution: one of fixed, false_positive"):
        move(SHIPPED, "acknowledged", to="resolved", facts=SEV3)
    with pytest.raises(InvalidTransition, match="resolution 'gone' is not one of"):
        move(SHIPPED, "acknowledged", to="resolved", resolution="gone", facts=SEV3)
    assert move(SHIPPED, "acknowledged", to="resolved", resolution="false_positive", facts=SEV3).name == "resolve"
    with pytest.raises(InvalidTransition, match="contain takes no resolution"):
        move(SHIPPED, "acknowledged", to="contained", resolution="fixed", facts=SEV3)


def test_recovery_waits_for_the_recovery_steps_to_end_well() -> None:
    waiting = GuardFacts(severity=Severity.SEV2, step_states={"recovery": ["succeeded", "running", "failed"]})
    with pytest.raises(
        InvalidTransition, match=r"cannot recover yet: 2 recovery response step\(s\) have not ended well \(1 failed"
    ):
        move(SHIPPED, "eradicated", to="recovered", facts=waiting)
    done = GuardFacts(
        severity=Severity.SEV2, step_states={"recovery": ["succeeded", "simulated"], "containment": ["failed"]}
    )
    assert move(SHIPPED, "eradicated", to="recovered", facts=done).name == "recover"


def test_closing_a_sev1_or_sev2_needs_its_post_mortem_a_sev3_does_not() -> None:
    open_postmortem = {"post_mortem": (1, 3)}
    with pytest.raises(InvalidTransition, match="2 of 3 required post-mortem task"):
        move(SHIPPED, "resolved", to="closed", facts=GuardFacts(severity=Severity.SEV1, tasks=open_postmortem))
    assert move(SHIPPED, "resolved", to="closed", facts=GuardFacts(severity=Severity.SEV3, tasks=open_postmortem))


def test_a_state_this_version_does_not_know_refuses_every_move() -> None:
    with pytest.raises(InvalidTransition, match="'monitoring', which this version of Vigil does not know"):
        move(SHIPPED, "monitoring", to="resolved", resolution="fixed", facts=SEV3)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("states: [detected, nowhere]", "states.1: Input should be 'detected'"),
        ("states: [detected, acknowledged, resolved]", "no transition reaches: acknowledged"),
        (
            "transitions: [{name: a, from: [detected], to: resolved}, {name: a, from: [resolved], to: detected}]",
            "transition names repeat: a",
        ),
        (
            "transitions: [{name: a, from: [detected], to: resolved, guards: [{kind: vibes, phase: x}]}]",
            "guards.0.kind: Input should be 'response_steps_done', 'tasks_done' or 'containment_confirmed'",
        ),
    ],
)
def test_a_broken_lifecycle_is_refused_with_why(change: str, reason: str) -> None:
    base = {
        "initial": "initial: detected",
        "states": "states: [detected, resolved]",
        "ended": "ended: [resolved]",
        "resolutions": "resolutions: [fixed]",
        "transitions": "transitions: [{name: resolve, from: [detected], to: resolved}]",
    }
    base[change.split(":", 1)[0]] = change
    with pytest.raises(LifecycleError, match=reason):
        parse_lifecycle("\n".join(base.values()))


def test_a_lifecycle_may_hold_eradication_until_the_responder_confirmed_the_containment() -> None:
    text = SHIPPED_TEXT.replace(
        "  - {name: eradicate, from: [contained], to: eradicated}",
        "  - {name: eradicate, from: [contained], to: eradicated, guards: [{kind: containment_confirmed}]}",
    )
    held = parse_lifecycle(text)
    with pytest.raises(InvalidTransition, match="has not confirmed the containment yet"):
        move(held, "contained", name="eradicate", facts=SEV3)
    ineffective = GuardFacts(severity=Severity.SEV3, containment="ineffective")
    with pytest.raises(InvalidTransition, match="found the containment ineffective"):
        move(held, "contained", name="eradicate", facts=ineffective)
    confirmed = GuardFacts(severity=Severity.SEV3, containment="confirmed")
    assert move(held, "contained", name="eradicate", facts=confirmed).to is IncidentState.ERADICATED
