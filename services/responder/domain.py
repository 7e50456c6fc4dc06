"""Pure playbook selection and response planning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.responder.playbook import (
    IncidentFacts,
    PlannedStep,
    Playbook,
    RefusedStep,
    Step,
    matches,
    parse_playbooks,
    plan_on_demand,
    plan_steps,
)
from shared.events import (
    MAX_STEP_CHANGES,
    Analysis,
    EventBase,
    IncidentType,
    PlannedAction,
    ResponsePlan,
    ResponseStepsChanged,
    Severity,
    StepChanges,
)

__all__ = [
    "MAX_PLANNED_ACTIONS",
    "ON_DEMAND",
    "NoPlaybook",
    "OnDemandRefused",
    "Planning",
    "Playbook",
    "incident_facts",
    "needs_new_plan",
    "on_demand",
    "parse_playbooks",
    "plan_bounded",
    "plan_response",
    "select_playbook",
]

# A plan event travels whole through the outbox and the broker; an incident with thousands of
# addresses would otherwise make one event per incident too large to publish. 200 actions of a few
# hundred bytes each stay far below the broker's message limit.
MAX_PLANNED_ACTIONS = 200
# An action's name carries its item (an address, a URL, a user), which comes from alerts and has no
# bound of its own; the full value stays in the plan record, the event carries at most this much.
MAX_ACTION_NAME = 256


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


def incident_facts(incident_id: str, analysis: Analysis) -> IncidentFacts:
    """Return what the planner knows of an incident from its analysis: intel verdicts and asset tags too."""
    # The counts cover every indicator; the list only the worst (and analyses from before the counts, all).
    verdicts = sorted({*analysis.indicators_by_verdict, *(i.verdict for i in analysis.indicators if i.verdict)})
    return IncidentFacts(incident_id=incident_id, analysis=analysis, verdicts=verdicts, asset_tags=analysis.asset_tags)


@dataclass(frozen=True)
class Planning:
    """A plan as the event carries it, and every expanded step with its outcome."""

    plan: ResponsePlan
    steps: list[PlannedStep]
    truncated: int

    @property
    def refused(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.status == "refused"]

    @property
    def skipped(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.status == "skipped"]

    @property
    def runnable(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.status in ("planned", "awaiting_approval")]


def plan_bounded(
    playbook: Playbook, *, plan_id: str, facts: IncidentFacts, limit: int = MAX_PLANNED_ACTIONS
) -> Planning:
    """Expand and render the playbook for the incident; past `limit` actions, one action sums up the rest."""
    if limit < 2:
        raise ValueError("a bounded plan holds at least one action and the summary")
    steps = plan_steps(playbook, facts)
    actions = [_clipped(s.as_action()) for s in steps if s.status in ("planned", "awaiting_approval")]
    truncated = 0
    if len(actions) > limit:
        truncated = len(actions) - (limit - 1)
        actions = [*actions[: limit - 1], _more(truncated, limit)]
    a = facts.analysis
    plan = ResponsePlan(
        plan_id=plan_id,
        playbook=playbook.id,
        playbook_title=playbook.title,
        incident_type=a.type,
        severity=a.severity,
        actions=actions,
    )
    return Planning(plan=plan, steps=steps, truncated=truncated)


def _clipped(action: PlannedAction) -> PlannedAction:
    if len(action.name) <= MAX_ACTION_NAME:
        return action
    return action.model_copy(update={"name": action.name[: MAX_ACTION_NAME - 1] + "…"})


def _more(count: int, limit: int) -> PlannedAction:
    # Awaiting approval: a summary is never something to run without a person looking at the full plan.
    return PlannedAction(
        id="more",
        name=f"{count} more actions not listed",
        phase="investigation",
        description=f"A plan event lists at most {limit} actions; the responder's plan record holds them all.",
        destructive=False,
        requires_approval=True,
        status="awaiting_approval",
    )


# The plan id of a step a person asked for, beside the incident's plan: ``on-demand:<token>``, one per request.
ON_DEMAND = "on-demand:"
MAX_LEASE_S = 30 * 86400


class OnDemandRefused(ValueError):
    """A step asked for on demand that cannot run; the reason goes back to the person."""


def on_demand(
    playbooks: Sequence[Playbook],
    ref: str,
    facts: IncidentFacts,
    *,
    step_id: str,
    item: str | None,
    lease_s: int | None,
) -> tuple[Playbook, PlannedStep]:
    """The playbook step ``<playbook>.<step>`` rendered for the incident and the item a person named.

    ``lease_s`` replaces the step's lease (a reversible step only). Raises OnDemandRefused saying why not.
    """
    playbook_id, _, name = ref.partition(".")
    playbook = next((p for p in playbooks if p.id == playbook_id), None)
    if playbook is None:
        raise OnDemandRefused(f"no playbook {playbook_id!r}; there are: {', '.join(p.id for p in playbooks)}")
    step = next((s for s in playbook.steps if s.id == name), None)
    if step is None:
        raise OnDemandRefused(
            f"playbook {playbook.id} has no step {name!r}; its steps: {', '.join(s.id for s in playbook.steps)}"
        )
    if lease_s is not None:
        if step.lease is None:
            raise OnDemandRefused(f"step {ref} is not reversible: it has no lease to set")
        if not 60 <= lease_s <= MAX_LEASE_S:
            raise OnDemandRefused(f"a lease is from 1 minute to {MAX_LEASE_S // 86400} days")
    try:
        planned = plan_on_demand(playbook, step, facts, step_id=step_id, item=item)
    except RefusedStep as exc:
        raise OnDemandRefused(str(exc)) from exc
    if planned.status == "refused":
        raise OnDemandRefused(f"step {ref} cannot run: {planned.reason}")
    if lease_s is not None:
        planned = planned.model_copy(update={"lease_s": lease_s})
    return playbook, planned


def fold_step_changes(last: EventBase, new: EventBase) -> ResponseStepsChanged | None:
    """``last`` with ``new``'s step changes after its own, when the two are one cause's changes to one
    incident's steps that fit one event; None when they are not.

    A change that says what was sent or what came back (an action's outcome, up to kilobytes each) is
    published alone, and an event holds at most MAX_STEP_CHANGES: each stays far below the broker's limit.
    """
    if not (isinstance(last, ResponseStepsChanged) and isinstance(new, ResponseStepsChanged)):
        return None
    if (last.subject, last.causationid, last.correlationid) != (new.subject, new.causationid, new.correlationid):
        return None
    changes = [*last.data.changes, *new.data.changes]
    if len(changes) > MAX_STEP_CHANGES or any(c.sent is not None or c.result is not None for c in changes):
        return None
    return last.model_copy(update={"data": StepChanges(changes=changes)})
