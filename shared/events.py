"""Every event Vigil publishes: frozen pydantic models in one discriminated union.

Each event travels as a CloudEvents 1.0 event in Kafka binary mode (see ``shared.cloudevents``):
the envelope fields of ``EventBase`` become ``ce_*`` headers and ``data`` becomes the JSON body.
Event types carry their schema version (``.v1``); a breaking change adds a new type.

Producers validate strictly (``extra="forbid"``: a typo is a bug); consumers decode with unknown
fields ignored (``shared.cloudevents.decode``), so a newer producer may add optional fields during
a rolling deploy without an older consumer dead-lettering its events.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from shared.addresses import IPAnyAddress
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


P = TypeVar("P", bound=Payload)


_GIVEN = object()  # in a construction's template: a field the caller must give


@functools.cache
def _construction(cls: type[Payload]) -> tuple[dict[str, Any], frozenset[str], frozenset[str]]:
    """A payload class's fields in order with their plain defaults, its fields, and those that must be given."""
    template = {
        name: _GIVEN if field.is_required() or field.default_factory is not None else field.default
        for name, field in cls.model_fields.items()
    }
    return template, frozenset(template), frozenset(name for name, value in template.items() if value is _GIVEN)


def trusted(cls: type[P], **values: Any) -> P:
    """``cls.model_construct(**values)`` at a fraction of its cost, for values already valid and of the
    payload's types (a hot path's own, built from validated models). A field with a default factory,
    or none, must be given; the others take their default when left out."""
    template, names, needed = _construction(cls)
    if not (needed <= values.keys() <= names):
        unknown = values.keys() - names
        problem = (
            f"{', '.join(sorted(unknown))} not its fields"
            if unknown
            else f"{', '.join(sorted(needed - values.keys()))} must be given"
        )
        raise TypeError(f"{cls.__name__}: {problem}")
    payload = cls.__new__(cls)
    # In the fields' order, as model_construct has them (the JSON's keys come in that order): a merge
    # into the template keeps its order.
    object.__setattr__(payload, "__dict__", {**template, **values})
    object.__setattr__(payload, "__pydantic_fields_set__", set(values))
    object.__setattr__(payload, "__pydantic_extra__", None)
    object.__setattr__(payload, "__pydantic_private__", None)
    return payload


# ---- payloads -------------------------------------------------------------------------------


class AlertCorrelation(Payload):
    """Why an alert joined its incident: the correlation rule, its key and value, and what made it hold."""

    rule: str = Field(description="The correlation rule that placed the alert (`entity`: the fallback).")
    type: str = Field(description="event_count, value_count, temporal, temporal_ordered, or entity.")
    key: dict[str, str] = Field(default_factory=dict, description="The group-by fields and their values.")
    window_start: AwareDatetime | None = Field(None, description="The rule's window the alert fell in.")
    window_end: AwareDatetime | None = None
    reason: str = Field("", description="Why, in words.")
    triggered_by: list[str] = Field(
        default_factory=list,
        description="For threshold rules: the alerts (keys) that made the condition true and opened the incident.",
    )


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
    src_ip: IPAnyAddress | None = None
    dst_ip: IPAnyAddress | None = None
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
    correlation: AlertCorrelation | None = Field(None, description="Why the alert joined this incident.")
    raw: dict[str, Any] | None = Field(
        None,
        description="The tool's original record, for the analyzer to read indicators from: whole when its JSON "
        "fits in 16 KiB, else its first fields flattened to dotted paths (`raw_cut`); the detector keeps it whole.",
    )
    raw_cut: bool = Field(False, description="`raw` holds only the first fields of a larger record.")


class IncidentSnapshot(Payload):
    """What the detector knows of an incident, and the alerts that joined it since its last event, in order."""

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


class SuppressedBy(Payload):
    """What held alerts back from incidents: a silence, a maintenance window or a firing alert's inhibition."""

    kind: Literal["silence", "maintenance", "inhibition"] = Field(
        description="silence (silenced), maintenance (in a maintenance window) or inhibition (inhibited)."
    )
    id: str = Field(description="The silence's or the maintenance window's id, or the inhibiting alert's key.")
    name: str = Field(description="The silence's comment, the maintenance window's name, or the inhibition rule's.")
    reason: str = Field(description="Why, in words: who silenced until when, the window's span, the inhibiting alert.")


class SuppressedAlertSummary(Payload):
    """A suppressed alert as its history shows it: a subset of ``AlertSummary``, each field bounded."""

    key: str
    source: str
    title: str
    severity: AlertSeverity
    time: AwareDatetime
    host: str | None = None
    format: str = "native"
    occurrence: str = Field(
        description="The same for every sighting while the alert stays held back; held back again after it "
        "was released, it is a new occurrence."
    )
    repeats: int = Field(0, ge=0, description="Sightings after the first while held back, in all.")


class SuppressedAlerts(Payload):
    """Alerts a batch held back from incidents, stored by the detector, with what held them back."""

    suppressed_by: SuppressedBy
    alerts: list[SuppressedAlertSummary] = Field(
        description="New alerts and new sightings of alerts held back before; many are split over several "
        "events (see `part` and `parts`), each bounded in size."
    )
    part: int = Field(1, ge=1, description="Which of the `parts` events carrying one batch's alerts this is.")
    parts: int = Field(1, ge=1, description="How many events carry the alerts one batch held back by the same.")


class SuppressedEnd(Payload):
    """A held-back alert that ended (resolved) while held back."""

    key: str
    occurrence: str = Field(description="The held-back occurrence it ends (see SuppressedAlertSummary).")
    resolved_at: AwareDatetime


class SuppressedEnded(Payload):
    """Alerts held back by one silence, window or inhibition that ended while held back."""

    kind: Literal["silence", "maintenance", "inhibition"]
    id: str = Field(description="The silence's or the maintenance window's id, or the inhibiting alert's key.")
    alerts: list[SuppressedEnd]
    part: int = Field(1, ge=1)
    parts: int = Field(1, ge=1)


class ResolutionSuggestion(Payload):
    """Every alert of an open incident has resolved: the commander is asked to resolve it."""

    commander: str
    reason: str


IndicatorKind = Literal["ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256", "email"]
IntelVerdict = Literal["malicious", "suspicious", "benign-listed"]
# The most indicators an analysis carries, the worst first: a flood of 10,000 addresses would otherwise
# make every version of the analysis megabytes, which every consumer reads whole. Its counts cover all.
MAX_ANALYSIS_INDICATORS = 200
# The most observables of each kind, and the most affected hosts and accounts, an analysis carries: a
# password spray over 5,200 accounts made it 1.1 MB, more than the broker takes. Its counts cover all.
MAX_ANALYSIS_OBSERVABLES = 50
MAX_ANALYSIS_AFFECTED = 200


class Indicator(Payload):
    kind: IndicatorKind
    value: str
    verdict: IntelVerdict | None = Field(
        None, description="What threat intelligence says of it; none: no feed lists it."
    )
    confidence: int | None = Field(None, ge=0, le=100)
    feeds: list[str] = Field(default_factory=list, description="The feeds that list it.")
    tags: list[str] = Field(default_factory=list, description="Actor, malware family, campaign, where feeds say.")
    # Provenance: where the incident's alerts named it.
    internal: bool = Field(
        False, description="A private or reserved address, or a name or URL inside the organisation."
    )
    fields: list[str] = Field(
        default_factory=list, description="The alert fields it was found in (`src_ip`, `raw.data.srcip`), at most 10."
    )
    first_seen: AwareDatetime | None = Field(None, description="The time of the first alert that named it.")
    last_seen: AwareDatetime | None = Field(None, description="The time of the last alert that named it.")
    count: int | None = Field(None, ge=1, description="How many of the incident's alerts named it.")
    alert_keys: list[str] = Field(
        default_factory=list, description="The first alerts that named it, at most 5 (`vigil incidents evidence`)."
    )


ObservableKind = Literal["cve", "user", "process", "command_line", "cloud_resource"]


class Observable(Payload):
    """What else the alerts name that a responder looks at: vulnerabilities, accounts, processes, cloud resources."""

    kind: ObservableKind
    value: str
    fields: list[str] = Field(default_factory=list, description="The alert fields it was found in, at most 10.")
    first_seen: AwareDatetime | None = None
    last_seen: AwareDatetime | None = None
    count: int | None = Field(None, ge=1, description="How many of the incident's alerts named it.")
    alert_keys: list[str] = Field(default_factory=list, description="The first alerts that named it, at most 5.")


class Impact(Payload):
    """What the incident touches, from the asset inventory; unknown entities are listed, never dropped.

    Each list holds at most ``MAX_ANALYSIS_AFFECTED`` names; the counts say how many there are in all.
    """

    systems: list[str] = Field(
        default_factory=list, description="Affected systems the inventory knows, most critical first."
    )
    unknown_systems: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    privileged_users: list[str] = Field(default_factory=list)
    business_services: list[str] = Field(default_factory=list)
    crown_jewels: list[str] = Field(default_factory=list)
    most_critical: int | None = Field(None, ge=1, le=4, description="1 is most critical.")
    data_at_risk: str | None = Field(None, description="The highest data classification affected.")
    unknown_users: list[str] = Field(default_factory=list, description="Accounts named that the inventory lacks.")
    blast_radius: int | None = Field(
        None,
        ge=0,
        description="How many distinct systems the inventory knows are affected (addresses in one listed "
        "network are one); none in analyses from before it was carried.",
    )
    by_criticality: dict[Annotated[int, Field(ge=1, le=4)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Criticality (1 most critical … 4) -> how many of the affected systems have it.",
        json_schema_extra={"propertyNames": {"enum": ["1", "2", "3", "4"]}},  # JSON keys are strings
    )
    unknown_system_count: int | None = Field(
        None, ge=0, description="How many affected systems the inventory lacks, `unknown_systems` naming the first."
    )
    unknown_user_count: int | None = Field(
        None, ge=0, description="How many accounts named the inventory lacks, `unknown_users` naming the first."
    )
    user_count: int | None = Field(None, ge=0, description="How many accounts the inventory knows, `users` the first.")


class SeverityRecommendation(Payload):
    """The analyzer thinks the severity is too low; the coordinator decides, a person's choice stands."""

    severity: Severity
    reasons: list[str]


class AttackTechnique(Payload):
    """An ATT&CK technique the incident's alerts show, named from the ATT&CK dataset Vigil ships."""

    id: str = Field(description="T1059 or T1059.001; a revoked id is given as the one that replaced it.")
    name: str = Field(description="ATT&CK's name (a sub-technique's with its technique's); `unknown` if not in it.")
    tactics: list[str] = Field(default_factory=list, description="Tactic ids it serves in this incident.")
    alerts: int = Field(ge=1, description="Alerts that show it.")
    first_seen: AwareDatetime
    first_alert: str = Field(description="Key of the earliest alert that shows it.")
    mapped_by: list[str] = Field(
        default_factory=list, description="Where it came from: the tool's own field, a tag, or a Vigil rule."
    )


class AttackTactic(Payload):
    """An ATT&CK tactic the incident reached, in the Enterprise matrix's kill-chain order."""

    id: str
    name: str
    stage: int = Field(ge=1, le=14, description="1 Reconnaissance … 14 Impact.")
    first_seen: AwareDatetime
    stated: bool = Field(description="A tool named the tactic itself (else it is inferred from a technique).")
    techniques: list[str] = Field(default_factory=list)


class PathStep(Payload):
    """One hop of the attack path: alerts of activity from one entity to another (an address to a host,
    a host to another), when first and last seen, and the ATT&CK techniques named on it."""

    source: str = Field(description="Where it came from: `ip:203.0.113.9`, `host:web-1`.")
    target: str = Field(description="What it reached: `ip:10.0.0.5`, `host:db-1`.")
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    alerts: int = Field(ge=1)
    techniques: list[str] = Field(default_factory=list)
    lateral: bool = Field(False, description="From one internal entity to another.")


class Hypothesis(Payload):
    """A conclusion drawn from the alerts, with what supports it and how sure it is."""

    statement: str
    subject: str | None = Field(None, description="What it names: an entity, a technique id, an alert key.")
    confidence: int = Field(ge=0, le=100)
    evidence: list[str] = Field(default_factory=list)


class RootCause(Payload):
    stage: Hypothesis | None = Field(None, description="Kill-chain stage: the furthest tactic reached.")
    patient_zero: Hypothesis | None = Field(None, description="The earliest affected entity.")
    entry_vector: Hypothesis | None = Field(None, description="How the attacker probably got in.")
    first_alert: Hypothesis | None = None


class ThreatProfile(Payload):
    origin: Literal["external", "internal", "mixed", "unknown"]
    origin_evidence: list[str] = Field(default_factory=list)
    external_sources: list[str] = Field(default_factory=list, description="Public addresses the activity came from.")
    known_bad: list[str] = Field(default_factory=list, description="Indicators threat intelligence lists as bad.")
    actors: list[str] = Field(default_factory=list, description="Threat actors feeds tag its indicators with.")
    malware: list[str] = Field(default_factory=list, description="Malware and tools feeds tag its indicators with.")
    tags: list[str] = Field(default_factory=list, description="Other feed tags (campaigns, threat types).")


class SimilarIncident(Payload):
    incident_id: str
    title: str
    first_seen: AwareDatetime | None = None
    score: int = Field(ge=0, description="Higher is more alike; known-bad indicators weigh most.")
    reason: str
    shared: list[str] = Field(default_factory=list, description="What both incidents have: `kind:value`.")


class RiskFactor(Payload):
    factor: Literal["severity", "asset_criticality", "intel", "tactic", "breadth", "privilege"]
    points: int = Field(ge=0)
    max_points: int = Field(ge=0)
    reason: str


class Risk(Payload):
    """0-100, the sum of its factors' points: an operator sees why."""

    score: int = Field(ge=0, le=100)
    level: Literal["low", "medium", "high", "critical"]
    factors: list[RiskFactor]


class Analysis(Payload):
    """Cumulative analysis of an incident; carries its type and severity for the services downstream."""

    type: IncidentType
    severity: Severity
    title: str
    indicators: list[Indicator] = Field(
        description=f"The incident's worst indicators, at most {MAX_ANALYSIS_INDICATORS}: malicious, suspicious, "
        "benign-listed, then those no feed lists; the most confident, then the most sighted first."
    )
    affected_hosts: list[str] = Field(
        description=f"The hosts the incident's alerts name, at most {MAX_ANALYSIS_AFFECTED}: those the asset "
        "inventory rates most critical are kept first; `affected_host_count` counts all."
    )
    affected_users: list[str] = Field(
        description=f"The accounts the incident's alerts name, at most {MAX_ANALYSIS_AFFECTED}: privileged ones, "
        "those the inventory lists, then the most sighted are kept first; `affected_user_count` counts all."
    )
    alert_count: int
    summary: str
    impact: Impact | None = None
    asset_tags: list[str] = Field(default_factory=list, description="Tags of the affected assets (crown-jewel, …).")
    severity_recommendation: SeverityRecommendation | None = None
    techniques: list[AttackTechnique] = Field(default_factory=list, description="ATT&CK techniques, earliest first.")
    tactics: list[AttackTactic] = Field(default_factory=list, description="Tactics reached, in kill-chain order.")
    attack_version: str | None = Field(None, description="The ATT&CK Enterprise release the names come from.")
    root_cause: RootCause | None = None
    threat: ThreatProfile | None = None
    attack_path: list[PathStep] = Field(
        default_factory=list,
        description="How the activity moved, hop by hop, the earliest first: at most 50 hops (`attack_path_hops` "
        "counts all).",
    )
    attack_path_hops: int | None = Field(
        None,
        description="Every hop the incident's alerts show (the 2,000 earliest at most); absent when the incident "
        "was first analysed before Vigil kept its path.",
    )
    similar: list[SimilarIncident] = Field(default_factory=list, description="Past incidents alike, most alike first.")
    risk: Risk | None = None
    observables: list[Observable] = Field(
        default_factory=list,
        description="CVE ids, accounts, processes, command lines and cloud resource ids the alerts name, with "
        f"their provenance (indicators hold what threat intelligence can list): at most {MAX_ANALYSIS_OBSERVABLES} "
        "of each kind, the most sighted first.",
    )
    observables_by_kind: dict[ObservableKind, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="How many observables of each kind the incident's alerts name in all, `observables` carrying "
        "the most sighted of them; empty in analyses from before it was carried, which carry every one.",
    )
    affected_host_count: int | None = Field(
        None,
        ge=0,
        description="How many hosts the incident's alerts name in all; none in analyses from before it was "
        "carried, which carry every one.",
    )
    affected_user_count: int | None = Field(
        None,
        ge=0,
        description="How many accounts the incident's alerts name in all; none in analyses from before it was "
        "carried, which carry every one.",
    )
    indicator_count: int | None = Field(
        None,
        ge=0,
        description="How many indicators the incident's alerts name in all, `indicators` carrying the worst of "
        "them; none in analyses from before it was carried, which carry every one.",
    )
    indicators_by_kind: dict[IndicatorKind, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="How many of all the incident's indicators are of each kind."
    )
    indicators_by_verdict: dict[IntelVerdict, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="How many of all the incident's indicators threat intelligence gives each verdict (the rest "
        "no feed lists).",
    )


class AnalysisBrief(Payload):
    """What the analysis says, in the escalation: risk and why, root cause, threat, alike incidents."""

    summary: str
    risk: Risk | None = None
    root_cause: RootCause | None = None
    threat: ThreatProfile | None = None
    techniques: list[str] = Field(default_factory=list, description="`T1110 Brute Force`, earliest first.")
    similar: list[SimilarIncident] = Field(default_factory=list)


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
    analysis: AnalysisBrief | None = Field(None, description="The analyzer's findings, once it has analysed.")


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
    from_state: StepState | None = Field(
        description="None for a step's first change: to `planned`, or straight to `awaiting_approval` when the "
        "approval policy makes it wait as it is planned, or to `skipped` or `refused`."
    )
    state: StepState
    actor: str = Field(description="A person, or `responder`, `policy`, `guardrail:<name>`, `timeout`.")
    reason: str = ""
    on_failure: Literal["continue", "stop", "escalate"]
    required: bool = Field(True, description="Whether it must end well before the incident may be recovered.")
    owner: str | None = Field(None, description="Who does it, for a step a person does (the `manual` connector).")
    due_at: AwareDatetime | None = Field(None, description="By when it should be done (recovery steps).")
    dry_run: bool = False
    sent: dict[str, Any] | None = Field(None, description="What was sent, or would have been in a dry run.")
    result: dict[str, Any] | None = None


# How many changes one step-changes event carries at most: a plan of thousands of items is published
# in events of this many, each well below the broker's message size (a folded change has no `sent` or
# `result`, so it is a few hundred bytes, its reason at most 2,000 characters).
MAX_STEP_CHANGES = 100


class StepChanges(Payload):
    """What one cause did to an incident's response steps, in the order it did it: a plan's steps as it
    decided them (planned, waiting for approval, skipped), an approval's, a deadline's. Each change is a
    `vigil.response.step_changed.v1` event's data."""

    changes: list[StepChange] = Field(min_length=1)


ValidationOutcome = Literal["validated", "failed", "unchecked"]


class StepValidation(Payload):
    """What the check after an action (or its undo) found: the effect is there, or it is not."""

    step_id: str
    step: str = Field(description="The playbook step it expands.")
    name: str
    phase: str | None = None
    item: str | None = None
    connector: str
    action: str = Field(description="The action checked: the step's, or its undo's.")
    of: Literal["action", "undo"] = "action"
    outcome: ValidationOutcome = Field(
        description="validated: the effect is there; failed: it is not (or could not be checked); "
        "unchecked: the connector has no check configured for this action."
    )
    check: str = Field("", description="What was checked, e.g. `203.0.113.7 in the served ip list`.")
    reason: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)


LeaseState = Literal["active", "extended", "permanent", "reverting", "reverted", "revert_failed"]


class LeaseChange(Payload):
    """A reversible action's lease changed: made, extended, made permanent, revoked, ended, undone or not."""

    step_id: str
    name: str
    target_kind: str = ""
    target: str = ""
    action: str
    state: LeaseState
    change: Literal[
        "created", "extended", "made_permanent", "revoked", "expired", "rolled_back", "reverted", "revert_failed"
    ]
    actor: str
    reason: str = ""
    due_at: AwareDatetime | None = Field(None, description="When the undo runs; none once permanent.")
    offence: int = Field(1, ge=1, description="How many leases this target had within the repeat window, this one too.")
    duration_s: int = Field(ge=0)


class WatchedEntity(Payload):
    kind: str = Field(description="ip, host, user, domain, url or sha256.")
    value: str


class ContainmentEvidence(Payload):
    """An alert after containment that involved a contained entity."""

    alert_key: str
    title: str
    time: AwareDatetime
    kind: str
    value: str


class ContainmentWatch(Payload):
    """What the watch after containment saw: the entities, the period, the alerts that involved them."""

    started_at: AwareDatetime
    ended_at: AwareDatetime
    entities: list[WatchedEntity]
    threshold: int = Field(ge=1, description="Alerts on contained entities that make containment ineffective.")
    matched: int = Field(ge=0)
    evidence: list[ContainmentEvidence] = Field(default_factory=list)
    reason: str = ""


class RollbackOffer(Payload):
    """The incident ended as a false positive while actions are still in force: rolling them back is offered."""

    leases: list[str] = Field(description="Step ids of the leases in force.")
    reason: str
    command: str = Field(description="What rolls them back.")


class StepAnswer(Payload):
    """A person's approval or denial of a response step."""

    step_id: str = Field(
        min_length=1, max_length=500, description="A step id, or `<incident>:<step>` for all its items."
    )
    actor: str = Field(min_length=1, max_length=200, description="Person answering.")
    role: str = Field("", max_length=100, description="The role they answer in (the policy may require one).")
    note: str = Field("", max_length=2000, description="Why; a denial needs one.")


class StepRun(Payload):
    """A person's request to run one playbook step on an incident now, beside its plan ("contain now")."""

    step: str = Field(
        min_length=3,
        max_length=200,
        pattern=r"^[a-z0-9][a-z0-9_-]*\.[a-z0-9][a-z0-9_-]*$",
        description="`<playbook>.<step>`: the step of the shipped or configured playbooks to run.",
    )
    item: str | None = Field(
        None, min_length=1, max_length=2000, description="What a `for_each` step acts on: an address, a host…"
    )
    lease: str | None = Field(
        None, max_length=20, description="How long a reversible step holds before its undo (30m, 4h, 2d)."
    )
    actor: str = Field(min_length=1, max_length=200, description="Person asking.")
    role: str = Field("", max_length=100, description="The role they ask in.")
    note: str = Field("", max_length=2000, description="Why.")


class EvidenceChange(Payload):
    """An item of an incident's evidence register, and what was just done with it: registered, handed to
    another custodian, or its hash checked against the item as kept."""

    item_id: int
    entry: int = Field(description="The entry's number in the chain of custody: its order, whatever the clocks.")
    name: str = Field(max_length=500)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int | None = None
    location: str = Field(max_length=2000, description="Where the item is kept (a path, an object store URI).")
    action: Literal["registered", "transferred", "verified"]
    actor: str
    custodian: str = Field(description="Who holds it now.")
    verified: bool | None = Field(None, description="On `verified`: whether the hash matched.")
    note: str = Field("", max_length=2000)


class StateChange(Payload):
    from_state: IncidentState | None
    to_state: IncidentState
    actor: str
    note: str = ""
    command_id: str | None = None
    transition: str | None = Field(None, description="The lifecycle's name for the move (acknowledge, contain, …).")
    resolution: str | None = Field(None, description="How it ended (fixed, false_positive, …), on resolving.")
    ended: bool | None = Field(
        None,
        description="Whether the coordinator's lifecycle counts the new state as an end (its `ended` list); "
        "absent from older coordinators, for which `resolved` and `closed` are the ends.",
    )

    def ends_incident(self) -> bool:
        """Whether the incident is over in its new state: as the lifecycle said, else resolved or closed."""
        return self.ended if self.ended is not None else self.to_state in DEFAULT_ENDED


# The end states of the shipped lifecycle, for state changes that do not say (``StateChange.ended``).
DEFAULT_ENDED = frozenset({IncidentState.RESOLVED, IncidentState.CLOSED})


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
    status_update: bool = Field(
        False,
        description="A status update: where the incident stands, sent to its commander, the people with a role "
        "on it and the severity's stakeholders, and the next status-update reminder counted from it.",
    )
    lesson: Literal["went_well", "went_badly"] | None = Field(
        None, description="A lesson for the post-mortem: what went well, or what went badly."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> NoteArgs:
        if self.status_update and self.lesson is not None:
            raise ValueError("a note is a status update or a lesson, not both")
        return self


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


class OpenedTask(Payload):
    """A runbook task made for an incident: what it is, whose, and by when."""

    task_id: int
    phase: str
    title: str
    owner: str
    required: bool
    due_at: AwareDatetime | None = Field(None, description="None until its phase starts, or when it has no deadline.")


class TasksOpened(Payload):
    """The incident's runbook tasks made now (on detection, or more when its severity rose)."""

    tasks: list[OpenedTask]


class TasksDropped(Payload):
    """The incident's open tasks no longer to be done (resolved as a false positive or duplicate, merged away)."""

    task_ids: list[int]
    actor: str
    reason: str


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


class MergeArgs(Payload):
    """Merge other incidents into this one (the survivor): their alerts and correlation keys move to it."""

    actor: str = Field(min_length=1, max_length=200)
    incidents: list[str] = Field(
        min_length=1, max_length=50, description="The incidents merged into the survivor (the command's subject)."
    )
    note: str = Field("", max_length=2000, description="Why.")

    @field_validator("incidents")
    @classmethod
    def _named(cls, ids: list[str]) -> list[str]:
        if any(not i or len(i) > 200 for i in ids):
            raise ValueError("an incident id is 1 to 200 characters")
        return ids


class DetachArgs(Payload):
    """Detach some alerts of an incident into a new incident of their own."""

    actor: str = Field(min_length=1, max_length=200)
    alerts: list[str] = Field(min_length=1, max_length=200, description="Keys of the incident's alerts to detach.")
    note: str = Field("", max_length=2000, description="Why.")

    @field_validator("alerts")
    @classmethod
    def _named(cls, keys: list[str]) -> list[str]:
        if any(not k or len(k) > 500 for k in keys):
            raise ValueError("an alert key is 1 to 500 characters")
        return keys


class MergeRecord(Payload):
    """An incident was merged into another (the survivor), which carries on with its alerts and keys."""

    survivor: str
    merged: list[str] = Field(description="Every incident merged into the survivor by the same command.")
    actor: str
    note: str = ""
    command_id: str
    alerts: int = Field(ge=0, description="How many of its alerts moved to the survivor.")
    correlation_keys: list[str] = Field(
        default_factory=list, description="Its correlation keys, which now lead later alerts to the survivor."
    )


class SplitRecord(Payload):
    """Some alerts of an incident were detached into a new incident; the rest stay.

    ``incident`` restates the incident as it stands after the split, with every alert it keeps in
    ``new_alerts`` (over ``part``/``parts`` events): consumers that gather per incident start again.
    """

    new_incident: str
    detached: list[str] = Field(description="Keys of the alerts that moved to the new incident.")
    actor: str
    note: str = ""
    command_id: str
    incident: IncidentSnapshot


class CommandRejection(Payload):
    command_id: str
    command: str
    actor: str
    reason: str


# ---- envelope -------------------------------------------------------------------------------


# Characters of an envelope's id, source, subject and causal ids: 2,000 bytes at most in UTF-8.
MAX_ENVELOPE_TEXT = 500


class EventBase(BaseModel):
    """CloudEvents envelope shared by every Vigil event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Bounded so that every consumer can index them: Postgres refuses an index entry over 2,704 bytes
    # (the ledger's key is the id), and a record no consumer could store is invalid, not a crash.
    id: str = Field(
        default_factory=new_id, max_length=MAX_ENVELOPE_TEXT, description="Unique event id (CloudEvents `id`)."
    )
    source: str = Field(max_length=MAX_ENVELOPE_TEXT, description="Producing service, as `/vigil/<service>`.")
    time: AwareDatetime = Field(default_factory=utcnow)
    subject: str = Field(
        max_length=MAX_ENVELOPE_TEXT, description="Incident id the event is about; also the Kafka key."
    )
    correlationid: str | None = Field(
        None, max_length=MAX_ENVELOPE_TEXT, description="Id shared by every event of one causal chain."
    )
    causationid: str | None = Field(
        None, max_length=MAX_ENVELOPE_TEXT, description="Id of the event that caused this one."
    )

    @field_validator("time")
    @classmethod
    def _storable_time(cls, value: datetime) -> datetime:
        # 0001-01-01T00:00+01:00 is a valid RFC 3339 time whose UTC is before year 1: no service could store it.
        try:
            value.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError("time is out of the range a timestamp holds") from exc
        return value

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


class AlertsSuppressed(EventBase):
    """Alerts held back from incidents; about no incident: ``subject`` names what held them back
    (``silence:ID``, ``maintenance:ID``, ``inhibition:KEY``)."""

    type: Literal["vigil.alert.suppressed.v1"] = "vigil.alert.suppressed.v1"
    data: SuppressedAlerts


class IncidentAnalyzed(EventBase):
    type: Literal["vigil.incident.analyzed.v1"] = "vigil.incident.analyzed.v1"
    data: Analysis


class ResponsePlanned(EventBase):
    type: Literal["vigil.response.planned.v1"] = "vigil.response.planned.v1"
    data: ResponsePlan


class ResponseStepChanged(EventBase):
    """One step's change. The responder now publishes `vigil.response.step_changed.v2`; consumers still read
    this version, which earlier responders published and which a topic may still hold."""

    type: Literal["vigil.response.step_changed.v1"] = "vigil.response.step_changed.v1"
    data: StepChange

    @property
    def changes(self) -> list[StepChange]:
        return [self.data]


class ResponseStepsChanged(EventBase):
    """A run of step changes with one cause, as one event: a plan's dozens of step decisions are one
    message for the broker and each consumer, not dozens."""

    type: Literal["vigil.response.step_changed.v2"] = "vigil.response.step_changed.v2"
    data: StepChanges

    @property
    def changes(self) -> list[StepChange]:
        return self.data.changes


class ResponseStepValidated(EventBase):
    type: Literal["vigil.response.step_validated.v1"] = "vigil.response.step_validated.v1"
    data: StepValidation


class ResponseLeaseChanged(EventBase):
    type: Literal["vigil.response.lease_changed.v1"] = "vigil.response.lease_changed.v1"
    data: LeaseChange


class ContainmentIneffective(EventBase):
    type: Literal["vigil.response.containment_ineffective.v1"] = "vigil.response.containment_ineffective.v1"
    data: ContainmentWatch


class ContainmentConfirmed(EventBase):
    type: Literal["vigil.response.containment_confirmed.v1"] = "vigil.response.containment_confirmed.v1"
    data: ContainmentWatch


class RollbackOffered(EventBase):
    type: Literal["vigil.incident.rollback_offered.v1"] = "vigil.incident.rollback_offered.v1"
    data: RollbackOffer


class AlertsSuppressedResolved(EventBase):
    type: Literal["vigil.alert.suppressed_resolved.v1"] = "vigil.alert.suppressed_resolved.v1"
    data: SuppressedEnded


class EvidenceChanged(EventBase):
    type: Literal["vigil.evidence.changed.v1"] = "vigil.evidence.changed.v1"
    data: EvidenceChange


class RunStep(EventBase):
    type: Literal["vigil.command.run_step.v1"] = "vigil.command.run_step.v1"
    data: StepRun


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


class TasksCreated(EventBase):
    type: Literal["vigil.incident.tasks_created.v1"] = "vigil.incident.tasks_created.v1"
    data: TasksOpened


class TasksCancelled(EventBase):
    type: Literal["vigil.incident.tasks_cancelled.v1"] = "vigil.incident.tasks_cancelled.v1"
    data: TasksDropped


class TaskCompleted(EventBase):
    type: Literal["vigil.incident.task_done.v1"] = "vigil.incident.task_done.v1"
    data: TaskDone


class MergeIncidents(EventBase):
    type: Literal["vigil.command.merge_incidents.v1"] = "vigil.command.merge_incidents.v1"
    data: MergeArgs


class DetachAlerts(EventBase):
    type: Literal["vigil.command.detach_alerts.v1"] = "vigil.command.detach_alerts.v1"
    data: DetachArgs


class IncidentMerged(EventBase):
    """Said of the incident merged away (its subject), after every earlier event of it."""

    type: Literal["vigil.incident.merged.v1"] = "vigil.incident.merged.v1"
    data: MergeRecord


class IncidentSplit(EventBase):
    type: Literal["vigil.incident.split.v1"] = "vigil.incident.split.v1"
    data: SplitRecord


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
    | AlertsSuppressed
    | IncidentAnalyzed
    | ResponsePlanned
    | ResponseStepChanged
    | ResponseStepsChanged
    | ResponseStepValidated
    | ResponseLeaseChanged
    | ContainmentIneffective
    | ContainmentConfirmed
    | RollbackOffered
    | ApproveStep
    | DenyStep
    | RunStep
    | EvidenceChanged
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
    | AlertsSuppressedResolved
    | TasksCreated
    | TasksCancelled
    | TaskCompleted
    | CommandRejected
    | EscalationExhausted
    | ResolutionSuggested
    | EffectCompleted
    | MergeIncidents
    | DetachAlerts
    | IncidentMerged
    | IncidentSplit,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_CLASSES: tuple[type[EventBase], ...] = (
    IncidentDetected,
    IncidentUpdated,
    IncidentAlertsChanged,
    AlertsSuppressed,
    IncidentAnalyzed,
    ResponsePlanned,
    ResponseStepChanged,
    ResponseStepsChanged,
    ResponseStepValidated,
    ResponseLeaseChanged,
    ContainmentIneffective,
    ContainmentConfirmed,
    RollbackOffered,
    ApproveStep,
    DenyStep,
    RunStep,
    EvidenceChanged,
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
    AlertsSuppressedResolved,
    TasksCreated,
    TasksCancelled,
    TaskCompleted,
    CommandRejected,
    EscalationExhausted,
    ResolutionSuggested,
    EffectCompleted,
    MergeIncidents,
    DetachAlerts,
    IncidentMerged,
    IncidentSplit,
)
EVENT_TYPES: dict[str, type[EventBase]] = {cls.model_fields["type"].default: cls for cls in EVENT_CLASSES}
