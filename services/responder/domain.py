"""Pure playbook selection and response planning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from shared.events import IncidentType, PlannedAction, ResponsePlan, Severity


class ActionTemplate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    phase: Literal["containment", "eradication", "recovery", "communication", "investigation"]
    description: str
    destructive: bool


class Playbook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    title: str
    types: list[IncidentType] = Field(min_length=1)
    min_severity: Severity
    actions: list[ActionTemplate] = Field(min_length=1)


class PlaybookBook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    playbooks: list[Playbook] = Field(min_length=1)


def parse_playbooks(document: str) -> list[Playbook]:
    """Validate a playbook file's text; a broken file stops the service at start-up."""
    return PlaybookBook.model_validate(yaml.safe_load(document)).playbooks


class NoPlaybook(LookupError):
    pass


def select_playbook(playbooks: Sequence[Playbook], incident_type: IncidentType, severity: Severity) -> Playbook:
    """Return the playbook for the type whose severity threshold is the highest the incident reaches."""
    eligible = [p for p in playbooks if incident_type in p.types and severity.urgency >= p.min_severity.urgency]
    if not eligible:
        raise NoPlaybook(f"no playbook for {incident_type.value} at {severity.value}")
    return max(eligible, key=lambda p: p.min_severity.urgency)


def plan_response(playbook: Playbook, *, plan_id: str, incident_type: IncidentType, severity: Severity) -> ResponsePlan:
    """Turn a playbook into a plan; destructive actions wait for an approval."""
    return ResponsePlan(
        plan_id=plan_id,
        playbook=playbook.id,
        playbook_title=playbook.title,
        incident_type=incident_type,
        severity=severity,
        actions=[
            PlannedAction(
                id=a.id,
                name=a.name,
                phase=a.phase,
                description=a.description,
                destructive=a.destructive,
                requires_approval=a.destructive,
                status="awaiting_approval" if a.destructive else "planned",
            )
            for a in playbook.actions
        ],
    )


def needs_new_plan(current: tuple[str, Severity] | None, playbook: Playbook, severity: Severity) -> bool:
    """Plan again only when the playbook or the severity changed since the current plan."""
    return current != (playbook.id, severity)
