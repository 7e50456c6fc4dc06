"""Every event Vigil publishes: frozen pydantic models in one discriminated union.

Each event travels as a CloudEvents 1.0 event in Kafka binary mode (see ``shared.cloudevents``):
the envelope fields of ``EventBase`` become ``ce_*`` headers and ``data`` becomes the JSON body.
Event types carry their schema version (``.v1``); a breaking change adds a new type.

Producers validate strictly (``extra="forbid"``: a typo is a bug); consumers decode with unknown
fields ignored (``shared.cloudevents.decode``), so a newer producer may add optional fields during
a rolling deploy without an older consumer dead-lettering its events.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, IPvAnyAddress, TypeAdapter

from shared.alerts import AlertSeverity


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class IncidentType(StrEnum):
    SECURITY_BREACH = "security_breach"
    SYSTEM_COMPROMISE = "system_compromise"
    DATA_LEAK = "data_leak"
    SERVICE_DISRUPTION = "service_disruption"
    # Nothing in the alerts says which of the above it is: triaged by a person.
    UNKNOWN = "unknown"


class Severity(StrEnum):
    """Incident priority; SEV1 is the most urgent (see the runbook's definitions)."""

    SEV1 = "SEV1"
    SEV2 = "SEV2"
    SEV3 = "SEV3"
    SEV4 = "SEV4"

    @property
    def urgency(self) -> int:
        """Return 4 for SEV1 down to 1 for SEV4, so that larger means more urgent."""
        return 5 - int(self.value[-1])


class IncidentState(StrEnum):
    """Lifecycle states, declared once for every service; a value outside them is handled explicitly."""

    DETECTED = "detected"
    TRIAGED = "triaged"
    ACKNOWLEDGED = "acknowledged"
    INVESTIGATING = "investigating"
    CONTAINED = "contained"
    ERADICATED = "eradicated"
    RECOVERED = "recovered"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- payloads -------------------------------------------------------------------------------


class AlertSummary(Payload):
    """An alert as carried inside incident events: enough for analysis, without the raw record."""

    key: str
    source: str
    title: str
    description: str = ""
    severity: AlertSeverity
    time: AwareDatetime
    host: str | None = None
    user: str | None = None
    src_ip: IPvAnyAddress | None = None
    dst_ip: IPvAnyAddress | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    format: str = "native"
    status: Literal["firing", "resolved"] = "firing"
    kind: Literal["alert", "heartbeat", "test"] = "alert"
    rule: str | None = None
    category: str | None = None
    tags: list[str] = Field(default_factory=list)
    techniques: list[str] = Field(default_factory=list)
    resource: str | None = None
    url: str | None = None
    source_severity: str | None = None
    severity_reason: str | None = None
    type_rule: str | None = Field(None, description="The classification rule that decided this alert's type.")


class IncidentSnapshot(Payload):
    """What the detector knows of an incident after a batch of alerts."""

    title: str
    type: IncidentType
    severity: Severity
    classification_reason: str
    severity_reason: str
    correlation_key: str
    alert_count: int
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    hosts: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    new_alerts: list[AlertSummary] = Field(
        default_factory=list,
        description="Alerts added since the previous event; many alerts are split over several events "
        "(see `part` and `parts`), each bounded in size, so that every alert reaches every consumer.",
    )
    part: int = Field(1, ge=1, description="Which of the `parts` events carrying one batch's new alerts this is.")
    parts: int = Field(
        1,
        ge=1,
        description="How many events carry this batch's new alerts; consumers that "
        "summarise (the analyzer) may wait for the last part.",
    )


class AlertRepeat(Payload):
    """An alert sent again: how many times it was repeated in all, and when it was last seen."""

    key: str
    repeats: int = Field(ge=1, description="Sightings after the first, in all.")
    last_seen: AwareDatetime


class AlertResolution(Payload):
    """An alert its tool says has ended."""

    key: str
    resolved_at: AwareDatetime


class AlertsChange(Payload):
    """An incident's stored alerts that a batch repeated or resolved (its new alerts travel in snapshots)."""

    repeated: list[AlertRepeat] = Field(default_factory=list)
    resolved: list[AlertResolution] = Field(
        default_factory=list,
        description="Applied after `repeated`: an alert in both fired again, then ended.",
    )
    firing: int = Field(ge=0, description="The incident's alerts still firing after this change.")
    alert_count: int = Field(ge=0, description="The incident's alerts in all.")
    all_resolved: bool = Field(
        False,
        description="Every alert of this open service-disruption incident has resolved: the commander may "
        "resolve it (nothing resolves it by itself). Said on the last part only.",
    )
    part: int = Field(1, ge=1, description="Which of the `parts` events carrying one batch's changes this is.")
    parts: int = Field(1, ge=1, description="How many events carry this batch's changes of the incident.")


class ResolutionSuggestion(Payload):
    """Every alert of an open incident has resolved: the commander is asked to resolve it."""

    commander: str
    reason: str


class Indicator(Payload):
    kind: Literal["ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256", "email"]
    value: str
    verdict: Literal["malicious", "suspicious", "benign-listed"] | None = Field(
        None, description="What threat intelligence says of it; none: no feed lists it."
    )
    confidence: int | None = Field(None, ge=0, le=100)
    feeds: list[str] = Field(default_factory=list, description="The feeds that list it.")
    tags: list[str] = Field(default_factory=list, description="Actor, malware family, campaign, where feeds say.")


class Impact(Payload):
    """What the incident touches, from the asset inventory; unknown entities are listed, never dropped."""

    systems: list[str] = Field(default_factory=list, description="Affected systems the inventory knows.")
    unknown_systems: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    privileged_users: list[str] = Field(default_factory=list)
    business_services: list[str] = Field(default_factory=list)
    crown_jewels: list[str] = Field(default_factory=list)
    most_critical: int | None = Field(None, ge=1, le=4, description="1 is most critical.")
    data_at_risk: str | None = Field(None, description="The highest data classification affected.")


class SeverityRecommendation(Payload):
    """The analyzer thinks the severity is too low; the coordinator decides, a person's choice stands."""

    severity: Severity
    reasons: list[str]


class Analysis(Payload):
    """Cumulative analysis of an incident; carries its type and severity for the services downstream."""

    type: IncidentType
    severity: Severity
    title: str
    indicators: list[Indicator]
    affected_hosts: list[str]
    affected_users: list[str]
    alert_count: int
    summary: str
    impact: Impact | None = None
    asset_tags: list[str] = Field(default_factory=list, description="Tags of the affected assets (crown-jewel, …).")
    severity_recommendation: SeverityRecommendation | None = None


class PlannedAction(Payload):
    id: str
    name: str
    phase: Literal["containment", "eradication", "recovery", "communication", "investigation"]
    description: str
    destructive: bool
    requires_approval: bool
    status: Literal["planned", "awaiting_approval"]
    step_id: str | None = Field(None, description="The step's id for `vigil approve` and `vigil actions list`.")
    connector: str | None = None
    action: str | None = None
    params: dict[str, str | int] = Field(default_factory=dict, description="Parameters as rendered for this incident.")


class ResponsePlan(Payload):
    plan_id: str
    playbook: str
    playbook_title: str
    incident_type: IncidentType
    severity: Severity
    actions: list[PlannedAction]


class Escalation(Payload):
    """The message sent to the incident commander: everything gathered so far."""

    commander: str
    channel: str
    reason: str
    title: str
    type: IncidentType
    severity: Severity
    classification_reason: str
    severity_reason: str
    alert_count: int
    hosts: list[str]
    users: list[str]
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    alerts: list[AlertSummary]


class EscalationExhaustion(Payload):
    """Everyone in the rotation was paged and nobody acknowledged."""

    rotation: str
    paged: list[str] = Field(description="Everyone paged for this incident, in order.")
    last_commander: str
    severity: Severity
    reason: str


class EffectOutcome(Payload):
    """What happened to one side effect (a webhook call, a mail, a command) run by the effects runner."""

    effect_id: int
    service: str
    kind: str
    key: str = Field(description="Idempotency key the far side saw.")
    target: str = Field(description="Where the effect went: a host, an address, a mailbox (never a secret).")
    status: Literal["succeeded", "failed", "parked"] = Field(
        description="succeeded; failed: refused for good by the far side; parked: gave up after retries "
        "(an operator may re-queue it)."
    )
    attempts: int
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)


StepState = Literal[
    "planned",
    "awaiting_approval",
    "approved",
    "denied",
    "running",
    "succeeded",
    "failed",
    "refused",
    "simulated",
    "skipped",
    "cancelled",
    "rolled_back",
]


class StepChange(Payload):
    """A response step changed state: who or what changed it, why, and what was sent."""

    step_id: str
    plan_id: str
    step: str = Field(description="The playbook step it expands.")
    phase: str | None = Field(None, description="containment, eradication, recovery, communication, investigation.")
    name: str
    item: str | None = Field(None, description="What a per-item step acts on (an address, a host).")
    connector: str
    action: str
    from_state: StepState | None
    state: StepState
    actor: str = Field(description="A person, or `responder`, `policy`, `guardrail:<name>`, `timeout`.")
    reason: str = ""
    on_failure: Literal["continue", "stop", "escalate"]
    dry_run: bool = False
    sent: dict[str, Any] | None = Field(None, description="What was sent, or would have been in a dry run.")
    result: dict[str, Any] | None = None


class StepAnswer(Payload):
    """A person's approval or denial of a response step."""

    step_id: str = Field(
        min_length=1, max_length=500, description="A step id, or `<incident>:<step>` for all its items."
    )
    actor: str = Field(min_length=1, max_length=200, description="Person answering.")
    role: str = Field("", max_length=100, description="The role they answer in (the policy may require one).")
    note: str = Field("", max_length=2000, description="Why; a denial needs one.")


class StateChange(Payload):
    from_state: IncidentState | None
    to_state: IncidentState
    actor: str
    note: str = ""
    command_id: str | None = None
    transition: str | None = Field(None, description="The lifecycle's name for the move (acknowledge, contain, …).")
    resolution: str | None = Field(None, description="How it ended (fixed, false_positive, …), on resolving.")


class CommandArgs(Payload):
    actor: str = Field(min_length=1, max_length=200, description="Person or tool issuing the command.")
    note: str = Field("", max_length=2000)
    resolution: str | None = Field(None, max_length=100, description="On resolving: how it ended.")


class StateCommand(Payload):
    """Move an incident to another state of its lifecycle."""

    actor: str = Field(min_length=1, max_length=200)
    to_state: str = Field(min_length=1, max_length=100)
    note: str = Field("", max_length=2000, description="Why.")
    resolution: str | None = Field(None, max_length=100)


class IncidentEdit(Payload):
    """A person changes an incident's severity, type or title, saying why."""

    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)
    severity: Severity | None = None
    type: IncidentType | None = None
    title: str | None = Field(None, min_length=1, max_length=500)


class NoteArgs(Payload):
    actor: str = Field(min_length=1, max_length=200)
    note: str = Field(min_length=1, max_length=10000)


class Assignment(Payload):
    """Who holds a role on an incident: the commander, a scribe, a communications lead, a responder."""

    actor: str = Field(min_length=1, max_length=200, description="Who assigns.")
    person: str = Field(min_length=1, max_length=200)
    role: str = Field("commander", pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    note: str = Field("", max_length=2000)


class FieldChange(Payload):
    before: str
    after: str


class IncidentEdits(Payload):
    """What a person changed, and why; a detector's later change of these fields is only offered."""

    actor: str
    reason: str
    changes: dict[str, FieldChange]
    command_id: str | None = None


class TaskDone(Payload):
    """A runbook task of an incident was done."""

    task_id: int
    phase: str
    title: str
    actor: str
    note: str = ""
    required: bool


class ChangeOffer(Payload):
    """A change the coordinator did not apply over a person's decision: shown, for them to take or leave."""

    field: str
    current: str
    offered: str
    by: str
    reason: str


class CommandRejection(Payload):
    command_id: str
    command: str
    actor: str
    reason: str


# ---- envelope -------------------------------------------------------------------------------


class EventBase(BaseModel):
    """CloudEvents envelope shared by every Vigil event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=new_id, description="Unique event id (CloudEvents `id`).")
    source: str = Field(description="Producing service, as `/vigil/<service>`.")
    time: AwareDatetime = Field(default_factory=utcnow)
    subject: str = Field(description="Incident id the event is about; also the Kafka key.")
    correlationid: str | None = Field(None, description="Id shared by every event of one causal chain.")
    causationid: str | None = Field(None, description="Id of the event that caused this one.")

    @property
    def incident_id(self) -> str:
        return self.subject

    def caused_by(self) -> dict[str, Any]:
        """Return the envelope fields of an event caused by this one."""
        return {
            "subject": self.subject,
            "correlationid": self.correlationid or self.id,
            "causationid": self.id,
        }


class IncidentDetected(EventBase):
    type: Literal["vigil.incident.detected.v1"] = "vigil.incident.detected.v1"
    data: IncidentSnapshot


class IncidentUpdated(EventBase):
    type: Literal["vigil.incident.updated.v1"] = "vigil.incident.updated.v1"
    data: IncidentSnapshot


class IncidentAlertsChanged(EventBase):
    type: Literal["vigil.incident.alerts_changed.v1"] = "vigil.incident.alerts_changed.v1"
    data: AlertsChange


class IncidentAnalyzed(EventBase):
    type: Literal["vigil.incident.analyzed.v1"] = "vigil.incident.analyzed.v1"
    data: Analysis


class ResponsePlanned(EventBase):
    type: Literal["vigil.response.planned.v1"] = "vigil.response.planned.v1"
    data: ResponsePlan


class ResponseStepChanged(EventBase):
    type: Literal["vigil.response.step_changed.v1"] = "vigil.response.step_changed.v1"
    data: StepChange


class ApproveStep(EventBase):
    type: Literal["vigil.command.approve_step.v1"] = "vigil.command.approve_step.v1"
    data: StepAnswer


class DenyStep(EventBase):
    type: Literal["vigil.command.deny_step.v1"] = "vigil.command.deny_step.v1"
    data: StepAnswer


class IncidentEscalated(EventBase):
    type: Literal["vigil.incident.escalated.v1"] = "vigil.incident.escalated.v1"
    data: Escalation


class IncidentStateChanged(EventBase):
    type: Literal["vigil.incident.state_changed.v1"] = "vigil.incident.state_changed.v1"
    data: StateChange


class AcknowledgeIncident(EventBase):
    type: Literal["vigil.command.acknowledge.v1"] = "vigil.command.acknowledge.v1"
    data: CommandArgs


class ResolveIncident(EventBase):
    type: Literal["vigil.command.resolve.v1"] = "vigil.command.resolve.v1"
    data: CommandArgs


class ChangeState(EventBase):
    type: Literal["vigil.command.change_state.v1"] = "vigil.command.change_state.v1"
    data: StateCommand


class EditIncident(EventBase):
    type: Literal["vigil.command.edit_incident.v1"] = "vigil.command.edit_incident.v1"
    data: IncidentEdit


class AddNote(EventBase):
    type: Literal["vigil.command.add_note.v1"] = "vigil.command.add_note.v1"
    data: NoteArgs


class AssignRole(EventBase):
    type: Literal["vigil.command.assign.v1"] = "vigil.command.assign.v1"
    data: Assignment


class IncidentEdited(EventBase):
    type: Literal["vigil.incident.edited.v1"] = "vigil.incident.edited.v1"
    data: IncidentEdits


class IncidentAssigned(EventBase):
    type: Literal["vigil.incident.assigned.v1"] = "vigil.incident.assigned.v1"
    data: Assignment


class ChangeOffered(EventBase):
    type: Literal["vigil.incident.change_offered.v1"] = "vigil.incident.change_offered.v1"
    data: ChangeOffer


class TaskCompleted(EventBase):
    type: Literal["vigil.incident.task_done.v1"] = "vigil.incident.task_done.v1"
    data: TaskDone


class CommandRejected(EventBase):
    type: Literal["vigil.command.rejected.v1"] = "vigil.command.rejected.v1"
    data: CommandRejection


class EscalationExhausted(EventBase):
    type: Literal["vigil.incident.escalation_exhausted.v1"] = "vigil.incident.escalation_exhausted.v1"
    data: EscalationExhaustion


class ResolutionSuggested(EventBase):
    type: Literal["vigil.incident.resolution_suggested.v1"] = "vigil.incident.resolution_suggested.v1"
    data: ResolutionSuggestion


class EffectCompleted(EventBase):
    type: Literal["vigil.effect.completed.v1"] = "vigil.effect.completed.v1"
    data: EffectOutcome


Event = Annotated[
    IncidentDetected
    | IncidentUpdated
    | IncidentAlertsChanged
    | IncidentAnalyzed
    | ResponsePlanned
    | ResponseStepChanged
    | ApproveStep
    | DenyStep
    | IncidentEscalated
    | IncidentStateChanged
    | AcknowledgeIncident
    | ResolveIncident
    | ChangeState
    | EditIncident
    | AddNote
    | AssignRole
    | IncidentEdited
    | IncidentAssigned
    | ChangeOffered
    | TaskCompleted
    | CommandRejected
    | EscalationExhausted
    | ResolutionSuggested
    | EffectCompleted,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_CLASSES: tuple[type[EventBase], ...] = (
    IncidentDetected,
    IncidentUpdated,
    IncidentAlertsChanged,
    IncidentAnalyzed,
    ResponsePlanned,
    ResponseStepChanged,
    ApproveStep,
    DenyStep,
    IncidentEscalated,
    IncidentStateChanged,
    AcknowledgeIncident,
    ResolveIncident,
    ChangeState,
    EditIncident,
    AddNote,
    AssignRole,
    IncidentEdited,
    IncidentAssigned,
    ChangeOffered,
    TaskCompleted,
    CommandRejected,
    EscalationExhausted,
    ResolutionSuggested,
    EffectCompleted,
)
EVENT_TYPES: dict[str, type[EventBase]] = {cls.model_fields["type"].default: cls for cls in EVENT_CLASSES}
