"""Pure playbook selection and response planning."""

from __future__ import annotations

from collections.abc import Sequence

from services.responder.playbook import IncidentFacts, Playbook, Step, matches, parse_playbooks, plan_steps
from shared.events import IncidentType, PlannedAction, ResponsePlan, Severity

__all__ = ["NoPlaybook", "Playbook", "needs_new_plan", "parse_playbooks", "plan_response", "select_playbook"]


class NoPlaybook(LookupError):
    pass


def select_playbook(
    playbooks: Sequence[Playbook],
    incident_type: IncidentType,
    severity: Severity,
    facts: IncidentFacts | None = None,
) -> Playbook:
    """Return the matching playbook with the highest severity threshold; the narrower one wins a tie."""
    facts = facts or IncidentFacts.bare(incident_type, severity)
    eligible = [p for p in playbooks if matches(p, facts)]
    if not eligible:
        raise NoPlaybook(f"no playbook for {incident_type.value} at {severity.value}")
    return max(eligible, key=lambda p: (p.match.min_severity.urgency, p.specificity))


def plan_response(
    playbook: Playbook,
    *,
    plan_id: str,
    incident_type: IncidentType,
    severity: Severity,
    facts: IncidentFacts | None = None,
) -> ResponsePlan:
    """Turn a playbook into a plan of the steps that would run; steps needing approval wait for it.

    Without the incident's facts, each step is announced once, unexpanded; with them, `for_each` steps
    are expanded and only steps that would run stay (see `plan_steps` for the skipped and refused).
    """
    if facts is None:
        actions = [_announced(step) for step in playbook.steps]
    else:
        actions = [s.as_action() for s in plan_steps(playbook, facts) if s.status in ("planned", "awaiting_approval")]
    return ResponsePlan(
        plan_id=plan_id,
        playbook=playbook.id,
        playbook_title=playbook.title,
        incident_type=incident_type,
        severity=severity,
        actions=actions,
    )


def _announced(step: Step) -> PlannedAction:
    waits = step.approval == "required"
    return PlannedAction(
        id=step.id,
        name=step.name,
        phase=step.phase,
        description=step.description,
        destructive=waits,
        requires_approval=waits,
        status="awaiting_approval" if waits else "planned",
    )


def needs_new_plan(current: tuple[str, Severity] | None, playbook: Playbook, severity: Severity) -> bool:
    """Plan again only when the playbook or the severity changed since the current plan."""
    return current != (playbook.id, severity)
