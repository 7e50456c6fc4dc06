"""Pure rules of a response step's life: its id, its states, approvals, and which step runs next.

A plan's steps run in their playbook's order: every expansion of a step (one per host, address…)
runs at once, and the next step waits until they are all done. Approval requests go out as soon as
a step is planned, so that people can answer before the step's turn comes. A failed step whose
playbook says ``on_failure: stop`` skips every step after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shared import identity
from shared.events import StepState

State = StepState  # declared once, with the events that carry it
# Nothing more happens to a step in these states (a lease's undo is its own effect, see rolled_back).
FINAL: frozenset[str] = frozenset(
    {"denied", "succeeded", "failed", "refused", "simulated", "skipped", "cancelled", "rolled_back"}
)
# A step in these states has not acted yet: a revised plan may still change or cancel it.
NOT_STARTED: frozenset[str] = frozenset({"planned", "awaiting_approval", "approved"})
# Where the for_each items come from, as a guardrail sees their kind.
TARGET_KINDS: dict[str, str] = {
    "external_ips": "ip",
    "external_source_ips": "ip",
    "affected_hosts": "host",
    "affected_users": "user",
    "domains": "domain",
    "urls": "url",
    "sha256s": "sha256",
}


def step_id(incident_id: str, step: str, item: str | None) -> str:
    """A step's id: the same for the same incident, playbook step and item in every revision of a plan."""
    if item is None:
        return f"{incident_id}:{step}"
    return f"{incident_id}:{step}:{hashlib.sha256(item.encode()).hexdigest()[:10]}"


def incident_of(step: str) -> str:
    """The incident a step id belongs to (the id starts with it)."""
    incident, sep, _ = step.partition(":")
    if not sep or not incident:
        raise ValueError(f"{step!r} is not a step id (<incident id>:<step>[:<item>])")
    return incident


@dataclass(frozen=True)
class StepView:
    """What the ordering rules need of a step."""

    id: str
    position: int
    state: str
    on_failure: str
    name: str


@dataclass(frozen=True)
class Move:
    """A change ``advance`` asks for: run a step now, or skip it with a reason."""

    step_id: str
    to: Literal["dispatch", "skip"]
    reason: str = ""


def advance(steps: Sequence[StepView]) -> list[Move]:
    """Which steps run now, and which are skipped, given every step of the current plan.

    The earliest position not yet done is the current one: its planned and approved steps run.
    A step awaiting approval or running holds the positions after it. A failed ``on_failure: stop``
    step skips everything after it that has not started.
    """
    moves: list[Move] = []
    for position in sorted({s.position for s in steps}):
        stage = [s for s in steps if s.position == position]
        moves.extend(Move(s.id, "dispatch") for s in stage if s.state in ("planned", "approved"))
        if any(s.state in ("awaiting_approval", "running", "planned", "approved") for s in stage):
            return moves  # this position is not done; what dispatches now may finish at once, then ask again
        stopped = [s for s in stage if s.state == "failed" and s.on_failure == "stop"]
        if stopped:
            reason = f"step {stopped[0].name!r} failed and its playbook stops there"
            later = [s for s in steps if s.position > position and s.state in NOT_STARTED]
            return [*moves, *(Move(s.id, "skip", reason) for s in later)]
    return moves


@dataclass(frozen=True)
class Approval:
    actor: str
    role: str
    note: str
    at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"actor": self.actor, "role": self.role, "note": self.note, "at": self.at.isoformat()}


class ApprovalRefused(ValueError):
    """The approval or denial does not count (wrong state, role, or the same person twice)."""


def check_answer(
    *, state: str, required: int, roles: Sequence[str], given: Sequence[dict[str, Any]], actor: str, role: str
) -> None:
    """Raise ApprovalRefused unless this person may answer this step now."""
    if state != "awaiting_approval":
        raise ApprovalRefused(f"the step is {state}, not awaiting approval")
    if roles and role not in roles:
        raise ApprovalRefused(f"role {role or '(none)'!r} may not answer; one of {', '.join(roles)} may")
    if not roles and not identity.allows(role, "steps.approve"):  # a rule naming none: whoever may approve steps
        raise ApprovalRefused(
            f"role {role or '(none)'!r} may not answer; {identity.least_role('steps.approve')} or above may"
        )
    if any(a["actor"] == actor for a in given):
        raise ApprovalRefused(f"{actor} has approved this step already; {required} different people must")


def approved_enough(required: int, given: Sequence[dict[str, Any]], roles: Sequence[str] = ()) -> bool:
    """As many different people approved as required, counting only the roles the rule allows (any, without)."""
    return len({a["actor"] for a in given if not roles or a.get("role") in roles}) >= required
