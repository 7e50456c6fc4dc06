"""Pure decisions of the coordinator: who commands an incident, and what the escalation says."""

from __future__ import annotations

from datetime import datetime, timedelta

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events import (
    AlertSummary,
    Escalation,
    EscalationExhaustion,
    IncidentSnapshot,
    IncidentState,
    IncidentType,
    Severity,
)


class Rotation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    types: list[IncidentType] = Field(min_length=1)
    start: AwareDatetime
    shift_hours: int = Field(gt=0)
    members: list[str] = Field(min_length=1)


class OnCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rotations: list[Rotation] = Field(min_length=1)
    channel: str = "pager"
    ack_deadline_minutes: dict[Severity, int]


def parse_oncall(document: str) -> OnCall:
    """Validate an on-call file's text; a broken file stops the service at start-up."""
    return OnCall.model_validate(yaml.safe_load(document))


def rotation_for(oncall: OnCall, incident_type: IncidentType) -> Rotation:
    for rotation in oncall.rotations:
        if incident_type in rotation.types:
            return rotation
    return oncall.rotations[0]


def on_shift(rotation: Rotation, at: datetime, *, step: int = 0) -> str:
    """Return who is on shift at ``at``; ``step`` goes that many people further down the rotation."""
    shifts = int((at - rotation.start) / timedelta(hours=rotation.shift_hours))
    return rotation.members[(shifts + step) % len(rotation.members)]


def exhaustion(
    rotation: Rotation, *, detected_at: datetime, last_commander: str, severity: Severity
) -> EscalationExhaustion:
    """Say that everyone in the rotation was paged, in order from whoever was on shift, and nobody acknowledged."""
    paged = [on_shift(rotation, detected_at, step=step) for step in range(len(rotation.members))]
    return EscalationExhaustion(
        rotation=rotation.name,
        paged=paged,
        last_commander=last_commander,
        severity=severity,
        reason=f"none of the {len(paged)} people of rotation {rotation.name!r} acknowledged "
        f"within the {severity.value} deadline",
    )


def ack_deadline(oncall: OnCall, severity: Severity, since: datetime) -> datetime:
    return since + timedelta(minutes=oncall.ack_deadline_minutes.get(severity, 60))


def escalation(
    snapshot: IncidentSnapshot,
    *,
    commander: str,
    channel: str,
    reason: str,
    alerts: list[AlertSummary],
) -> Escalation:
    """Everything gathered so far, for the commander (runbook: escalate immediately, with all you have)."""
    return Escalation(
        commander=commander,
        channel=channel,
        reason=reason,
        title=snapshot.title,
        type=snapshot.type,
        severity=snapshot.severity,
        classification_reason=snapshot.classification_reason,
        severity_reason=snapshot.severity_reason,
        alert_count=snapshot.alert_count,
        hosts=snapshot.hosts,
        users=snapshot.users,
        first_seen=snapshot.first_seen,
        last_seen=snapshot.last_seen,
        alerts=alerts,
    )


def known_state(value: str) -> IncidentState | None:
    """Return the state a stored value names, or None for one this version does not know.

    During a rolling deploy a newer coordinator may write a state added after this version.
    """
    try:
        return IncidentState(value)
    except ValueError:
        return None


def known_severity(value: str) -> Severity | None:
    """Return the severity a stored value names, or None for one this version does not know."""
    try:
        return Severity(value)
    except ValueError:
        return None


def escalates(old: Severity, new: Severity) -> bool:
    """A severity raised on an open incident calls for escalating again."""
    return new.urgency > old.urgency
