"""Pure decisions of the detector: correlation, classification and prioritisation. No I/O here.

(Callers that pass no classifier get the shipped rules, which ``classification`` reads once.)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pydantic import BaseModel
from pydantic_core import to_json

from services.detector import classification, correlation
from services.detector.classification import Classifier, Decision, SeverityPolicy
from services.detector.correlation import CorrelationRules, Member, Route
from services.detector.suppression import Suppression
from shared.alerts import Alert, AlertKind, AlertSeverity, leaves
from shared.events import (
    AlertCorrelation,
    AlertRepeat,
    AlertResolution,
    AlertsChange,
    AlertSummary,
    IncidentSnapshot,
    IncidentType,
    Severity,
    SuppressedAlerts,
    SuppressedAlertSummary,
    SuppressedBy,
    SuppressedEnd,
    SuppressedEnded,
    trusted,
)

# Most specific first: when an incident's alerts point several ways, the earlier type wins a tie.
# ``unknown`` is not among them: an alert no rule could place does not outvote one that was placed.
TYPE_PRECEDENCE = (
    IncidentType.DATA_LEAK,
    IncidentType.SYSTEM_COMPROMISE,
    IncidentType.SECURITY_BREACH,
    IncidentType.SERVICE_DISRUPTION,
)

# The runbook's levels: SEV1 critical, widespread impact (a data breach, a system-wide outage);
# SEV2 high, a significant number of users; SEV3 medium, limited users; SEV4 low, minimal impact.
BASE_SEVERITY = {
    AlertSeverity.CRITICAL: Severity.SEV1,
    AlertSeverity.HIGH: Severity.SEV2,
    AlertSeverity.MEDIUM: Severity.SEV3,
    AlertSeverity.LOW: Severity.SEV4,
    AlertSeverity.INFO: Severity.SEV4,
}
# Types that raise an incident one step, and the highest each raises it to: data gone is a breach,
# SEV1 by the runbook's own words; an attacker inside one host is SEV2 until breadth or a critical
# asset makes it widespread (a single endpoint's malware is not a company-wide emergency).
RAISING_TYPES = {IncidentType.DATA_LEAK: Severity.SEV1, IncidentType.SYSTEM_COMPROMISE: Severity.SEV2}
# Heartbeats, tests and informational records never open an incident above this.
NON_ALERT_CAP = Severity.SEV3
# Labels by which a tool or a person says an alert concerns a critical asset, and their values that do.
CRITICALITY_LABELS = ("asset_criticality", "criticality")
CRITICAL_VALUES = frozenset({"high", "critical"})

# One incident event carries at most this many of a batch's new alerts, in at most this many bytes
# of JSON; the rest follow in further parts. Kafka refuses records over 1 MiB by default.
MAX_ALERTS_PER_EVENT = 200
MAX_EVENT_BYTES = 256 * 1024
# What a snapshot says besides its alerts (mostly the users list) keeps this much of an event at
# most, so that the rest always holds at least the largest alert summary (see ``summarise``).
MAX_HEADER_BYTES = 64 * 1024
# The part numbers of a split batch are written after the header was measured with "1".
_PART_NUMBER_SLACK = 32
# What an alert summary carries of its alert's unbounded fields (the detector stores the alert
# whole): with the alert's own length limits, a summary stays under 160 KiB of JSON even were
# every character escaped to six bytes.
MAX_DESCRIPTION = 2_000
MAX_LABELS = 32
MAX_LABEL_KEY = 100
MAX_LABEL_VALUE = 300
MAX_TAGS = 32  # tags, and ATT&CK techniques
MAX_TAG = 100
# What a summary carries of why its alert joined: the alerts that made a threshold rule hold (all
# of them are stored with the alert), and the group-by values, cut like labels.
MAX_TRIGGERS = 10
MAX_KEY_VALUES = 8
MAX_REASON = 500
# The tool's original record travels whole up to this much JSON (every record of the sample corpus
# does), else as its first fields flattened, each value cut: the analyzer reads indicators from it.
MAX_RAW_BYTES = 16 * 1024
MAX_RAW_VALUE = 1_000
# The most JSON one summary can take with those bounds (tests hold the worst possible alert to it).
MAX_SUMMARY_BYTES = 180 * 1024


def classify_alert(alert: Alert, classifier: Classifier | None = None) -> Decision:
    """Return the incident type an alert points to, the rule that decided it, and why."""
    return (classifier or classification.shipped()).classify(alert)


@dataclass(frozen=True)
class SeverityInputs:
    """Everything an incident's severity depends on, as the incident stands after some alert."""

    alert_severity: AlertSeverity  # of the lead alert: the most severe real alert, else the most severe
    alert_reason: str | None  # how the lead alert's tool severity became ``alert_severity``
    alert_kind: AlertKind
    incident_type: IncidentType
    hosts: int
    users: int
    critical_asset: str | None


def prioritise(inputs: SeverityInputs, policy: SeverityPolicy | None = None) -> tuple[Severity, str]:
    """Return the incident's SEV level and the steps that led to it, in words.

    From the lead alert's severity (its tool's own scale as the adapter mapped it), raised one step
    each by a data leak (from SEV2 or SEV3) or a compromise (from SEV3), by breadth (hosts or users), and by a
    critical asset; capped at SEV3 when the incident holds only heartbeats, tests or
    informational records.
    """
    policy = policy or SeverityPolicy()
    severity = BASE_SEVERITY[inputs.alert_severity]
    if inputs.alert_reason:
        said = inputs.alert_reason
        if not said.endswith(inputs.alert_severity.value):
            said += f" -> {inputs.alert_severity.value}"
        steps = [f"{said} -> {severity.value}"]
    else:
        steps = [f"highest alert severity {inputs.alert_severity.value} -> {severity.value}"]
    ceiling = RAISING_TYPES.get(inputs.incident_type)
    if ceiling is not None and severity in (Severity.SEV2, Severity.SEV3) and severity.urgency < ceiling.urgency:
        severity = _raise(severity)
        steps.append(f"{inputs.incident_type.value} -> {severity.value}")
    breadth = []
    if inputs.hosts >= policy.widespread_hosts:
        breadth.append(f"{inputs.hosts} hosts")
    if inputs.users >= policy.widespread_users:
        breadth.append(f"{inputs.users} users")
    if breadth and severity is not Severity.SEV1:
        severity = _raise(severity)
        steps.append(f"{' and '.join(breadth)} affected (widespread) -> {severity.value}")
    if inputs.critical_asset and severity is not Severity.SEV1:
        severity = _raise(severity)
        steps.append(f"critical asset {inputs.critical_asset} -> {severity.value}")
    if severity.urgency > NON_ALERT_CAP.urgency:
        if inputs.alert_kind != "alert":
            severity = NON_ALERT_CAP
            steps.append(f"only {inputs.alert_kind} alerts, which never open SEV1/SEV2: capped at {severity.value}")
        elif inputs.alert_severity is AlertSeverity.INFO:
            severity = NON_ALERT_CAP
            steps.append(f"only informational alerts, which never open SEV1/SEV2: capped at {severity.value}")
    return severity, "; ".join(steps)


def _raise(severity: Severity) -> Severity:
    return Severity(f"SEV{max(1, int(severity.value[-1]) - 1)}")


def critical_asset(alert: Alert, classifier: Classifier) -> str | None:
    """Return the critical asset an alert concerns, said with how it is known to be critical, or None."""
    for name in CRITICALITY_LABELS:
        value = alert.labels.get(name, "")
        if value.lower() in CRITICAL_VALUES:
            asset = alert.host or alert.resource or alert.entity
            return f"{asset} ({name}={value})"
    if alert.host and classifier.critical_host(alert.host):
        return f"{alert.host} (critical hosts list)"
    return None


def resolution_time(alert: Alert) -> datetime:
    """When a resolved alert ended: Alertmanager's endsAt (label ``ends_at``) when given, else the record's time."""
    ends_at = alert.labels.get("ends_at")
    if ends_at:
        try:
            ended = datetime.fromisoformat(ends_at)
        except ValueError:
            return alert.time
        if ended.tzinfo is not None:
            return ended
    return alert.time


def correlation_key(alert: Alert, route: Route | None = None) -> str:
    """Alerts about the same entity belong to one incident; alerts a correlation rule takes, to its group's."""
    return route.key if route is not None else alert.entity


@dataclass(frozen=True)
class IncidentState:
    """What the detector keeps of an open incident between batches."""

    id: str
    correlation_key: str
    title: str
    type: IncidentType
    severity: Severity
    classification_reason: str
    severity_reason: str
    alert_count: int
    max_alert_severity: AlertSeverity
    type_votes: dict[str, int]
    hosts: tuple[str, ...]
    users: tuple[str, ...]
    first_seen: datetime
    last_seen: datetime
    # The lead alert (the most severe real alert, else the most severe) besides its severity:
    # its kind and how its tool's severity was mapped; and the first critical asset seen.
    lead_kind: AlertKind = "alert"
    lead_severity_reason: str | None = None
    critical_asset: str | None = None


@dataclass
class IncidentChange:
    """An incident a batch opened or added alerts to."""

    incident: IncidentState
    created: bool
    alerts: list[Alert] = field(default_factory=list)
    type_rules: dict[str, str] = field(default_factory=dict)  # alert key -> the rule that typed it
    reasons: dict[str, AlertCorrelation] = field(default_factory=dict)  # alert key -> why it joined


class Publication(NamedTuple):
    """What the last event that carried an open incident's new alerts said, and whether more wait."""

    since: timedelta | None  # since that event; None: none has (an incident stored before publications were)
    type: str | None
    severity: str | None
    held: bool  # alerts wait for the interval's end


def publish_now(incident: IncidentState, last: Publication, *, interval: timedelta) -> bool:
    """Whether a batch's new alerts for an open incident go out now, or wait until the interval since the
    last publication ends (as Alertmanager's group_interval): at most one event an interval per incident,
    however fast its alerts come. A change of type or severity is news, and never waits."""
    if not interval or last.since is None or last.since >= interval:
        return True
    return incident.type.value != last.type or incident.severity.value != last.severity


def publishing_now(
    changes: Sequence[IncidentChange],
    publications: Mapping[str, Publication],
    *,
    touched: Collection[str],
    interval: timedelta,
) -> dict[str, bool]:
    """By incident id: whether a batch's new alerts for it go out now (True) or wait for its interval.

    Decided once an incident, as the batch leaves it. Now: an incident the batch opened (its first event),
    one whose stored alerts the batch ``touched`` (repeated, resolved: what it holds goes first), one whose
    publication is not known, and as ``publish_now`` says.
    """
    last: dict[str, IncidentChange] = {}
    opened: set[str] = set()
    for change in changes:
        last[change.incident.id] = change
        if change.created:
            opened.add(change.incident.id)
    decided: dict[str, bool] = {}
    for incident_id, change in last.items():
        known = publications.get(incident_id)
        decided[incident_id] = (
            incident_id in opened
            or incident_id in touched
            or known is None
            or publish_now(change.incident, known, interval=interval)
        )
    return decided


def change_summaries(change: IncidentChange, *, alert_bytes: Mapping[str, int] | None = None) -> list[AlertSummary]:
    """The summaries of a change's new alerts, as its events carry them."""
    sizes = alert_bytes or {}
    return [
        summarise(
            a,
            type_rule=change.type_rules.get(a.key),
            reason=change.reasons.get(a.key),
            raw_fits=sizes.get(a.key, MAX_RAW_BYTES + 1) <= MAX_RAW_BYTES,
        )
        for a in change.alerts
    ]


def held_snapshots(
    incident: IncidentState,
    summaries: list[AlertSummary],
    *,
    max_alerts: int = MAX_ALERTS_PER_EVENT,
    max_bytes: int = MAX_EVENT_BYTES,
) -> list[IncidentSnapshot]:
    """Return the snapshots that carry alerts which waited for the incident's interval (and any new ones
    after them), in order, each within both bounds: the incident as it stands, its alerts measured."""
    whole = _snapshot(incident, summaries)
    if len(summaries) <= max_alerts and _json_size(whole) <= max_bytes:
        return [whole]
    return _parts(incident, summaries, max_alerts, max_bytes)


def snapshots(
    change: IncidentChange,
    *,
    max_alerts: int = MAX_ALERTS_PER_EVENT,
    max_bytes: int = MAX_EVENT_BYTES,
    alert_bytes: Mapping[str, int] | None = None,
) -> list[IncidentSnapshot]:
    """Return the snapshots that carry a change's new alerts, in order, each within both bounds.

    Every alert is in exactly one snapshot; each says which ``part`` of how many ``parts`` it is.
    ``alert_bytes`` (by alert key: the bytes of each alert's own JSON, as stored) spares serialising
    to measure: an alert's JSON holds its raw record and every value its summary carries.
    """
    sizes = alert_bytes or {}
    summaries = change_summaries(change, alert_bytes=sizes)
    if len(summaries) <= max_alerts:
        whole = _snapshot(change.incident, summaries)
        # Serialising to measure costs as much again as the outbox does: alerts whose summaries are
        # bounded well within the room need no measuring.
        if len(summaries) == 1 and _header_bound(change.incident) + MAX_SUMMARY_BYTES <= max_bytes:
            return [whole]
        if all(a.key in sizes for a in change.alerts):
            bound = _header_bound(change.incident) + sum(_summary_bound(s, sizes[s.key]) + 1 for s in summaries)
            if bound <= max_bytes:
                return [whole]
        if _json_size(whole) <= max_bytes:
            return [whole]
    return _parts(change.incident, summaries, max_alerts, max_bytes)


def _parts(
    incident: IncidentState, summaries: list[AlertSummary], max_alerts: int, max_bytes: int
) -> list[IncidentSnapshot]:
    """The incident's header in each part, the summaries cut into runs that fit beside it."""
    header = _header(incident)
    chunks = _pack(summaries, max_alerts, room=max_bytes - _json_size(header) - _PART_NUMBER_SLACK) or [[]]
    return [
        header.model_copy(update={"new_alerts": chunk, "part": n, "parts": len(chunks)})
        for n, chunk in enumerate(chunks, 1)
    ]


def _snapshot(incident: IncidentState, alerts: list[AlertSummary]) -> IncidentSnapshot:
    i = incident
    # Without validation: the values are the detector's own, of the snapshot's types already.
    return trusted(
        IncidentSnapshot,
        title=i.title,
        type=i.type,
        severity=i.severity,
        classification_reason=i.classification_reason,
        severity_reason=i.severity_reason,
        correlation_key=i.correlation_key,
        alert_count=i.alert_count,
        first_seen=i.first_seen,
        last_seen=i.last_seen,
        hosts=list(i.hosts),
        users=list(i.users),
        new_alerts=alerts,
    )


def _header(incident: IncidentState) -> IncidentSnapshot:
    """Return the incident's snapshot without alerts, its host and user lists cut to fit MAX_HEADER_BYTES.

    Only a spray over thousands of accounts comes near the bound; each user and host still
    reaches the consumers on the alerts that name it.
    """
    header = _snapshot(incident, [])
    if _json_size(header) <= MAX_HEADER_BYTES:
        return header
    room = MAX_HEADER_BYTES - _json_size(header.model_copy(update={"hosts": [], "users": []}))
    hosts, room = _fitting(incident.hosts, room)
    users, _ = _fitting(incident.users, room)
    return header.model_copy(update={"hosts": hosts, "users": users})


def _fitting(names: Sequence[str], room: int) -> tuple[list[str], int]:
    """Return the first names whose JSON fits in ``room`` bytes, and the room left."""
    kept: list[str] = []
    for name in names:
        size = len(to_json(name)) + 1  # and a comma
        if size > room:
            break
        kept.append(name)
        room -= size
    return kept, room


def _pack(summaries: list[AlertSummary], max_alerts: int, *, room: int) -> list[list[AlertSummary]]:
    """Cut summaries, in order, into runs of at most ``max_alerts`` whose JSON list fits in ``room`` bytes.

    A run holds at least one summary, and ``summarise`` bounds a summary well below any room left.
    """
    chunks: list[list[AlertSummary]] = []
    chunk: list[AlertSummary] = []
    used = 2  # the list's brackets
    for summary in summaries:
        size = _json_size(summary) + 1  # and a comma
        if chunk and (len(chunk) == max_alerts or used + size > room):
            chunks.append(chunk)
            chunk, used = [], 2
        chunk.append(summary)
        used += size
    if chunk:
        chunks.append(chunk)
    return chunks


def _json_size(model: BaseModel) -> int:
    """Bytes of the model's JSON, as the outbox writes it."""
    return len(model.__pydantic_serializer__.to_json(model))


def _header_bound(incident: IncidentState) -> int:
    """Return bytes that the JSON of the incident's snapshot without alerts cannot exceed.

    A character takes at most six bytes (an escaped control character); field names, numbers,
    times and enums take less than 600 bytes in all.
    """
    i = incident
    chars = len(i.title) + len(i.classification_reason) + len(i.severity_reason) + len(i.correlation_key)
    chars += sum(map(len, i.hosts)) + sum(map(len, i.users))
    return 600 + 6 * chars + 3 * (len(i.hosts) + len(i.users))  # a name's quotes and comma


def _summary_bound(summary: AlertSummary, alert_bytes: int) -> int:
    """Bytes the summary's JSON cannot exceed, given its alert's: the summary carries the alert's values or
    fewer (cut text, bounded labels, the raw record whole or cut), plus its key, its typing rule and why it
    joined; a character takes at most six bytes."""
    reason = summary.correlation
    extra = 6 * (len(summary.key) + len(summary.type_rule or "")) + 128
    if reason is not None:
        chars = len(reason.rule) + len(reason.type) + len(reason.reason) + sum(map(len, reason.triggered_by))
        chars += sum(len(k) + len(v) for k, v in reason.key.items())
        extra += 6 * chars + 4 * (len(reason.key) + len(reason.triggered_by)) + 256
    return alert_bytes + extra


def summarise(
    alert: Alert,
    *,
    type_rule: str | None = None,
    reason: AlertCorrelation | None = None,
    raw_fits: bool = False,
) -> AlertSummary:
    """Return what incident events carry of an alert, its unbounded fields cut to bounded lengths.

    Built without validation: every value comes from a validated ``Alert`` (or a reason made by the
    detector), already of the summary's types and within its bounds, and validating them again (the
    addresses above all) cost as much as the rest of the summary. ``raw_fits``: the caller knows the raw
    record's JSON is within MAX_RAW_BYTES, so it is not serialised to measure.
    """
    return trusted(
        AlertSummary,
        key=alert.key,
        source=alert.source,
        title=alert.title,
        description=alert.description[:MAX_DESCRIPTION],
        severity=alert.severity,
        time=alert.time,
        host=alert.host,
        user=alert.user,
        src_ip=alert.src_ip,
        dst_ip=alert.dst_ip,
        labels=_bounded_labels(alert.labels),
        format=alert.format,
        status=alert.status,
        kind=alert.kind,
        rule=alert.rule,
        category=alert.category,
        tags=_bounded_tags(alert.tags),
        techniques=_bounded_tags(alert.techniques),
        resource=alert.resource,
        url=alert.url,
        source_severity=alert.source_severity,
        severity_reason=alert.severity_reason,
        type_rule=type_rule,
        correlation=_bounded_reason(reason) if reason is not None else None,
        **({"raw": alert.raw} if raw_fits else _bounded_raw(alert.raw)),
    )


def _bounded_reason(reason: AlertCorrelation) -> AlertCorrelation:
    if reason.type == ENTITY:  # bounded when made: an entity's name is at most 255 characters
        return reason
    if (
        len(reason.triggered_by) <= MAX_TRIGGERS
        and len(reason.reason) <= MAX_REASON
        and _bounded_labels(reason.key) is reason.key
        and len(reason.key) <= MAX_KEY_VALUES
    ):
        return reason
    return reason.model_copy(
        update={
            "key": dict(itertools.islice(_bounded_labels(reason.key).items(), MAX_KEY_VALUES)),
            "reason": reason.reason[:MAX_REASON],
            "triggered_by": reason.triggered_by[:MAX_TRIGGERS],
        }
    )


def _bounded_raw(raw: dict[str, Any] | None) -> dict[str, Any]:
    """The raw record as a summary carries it: whole when small, else its first leaves within MAX_RAW_BYTES."""
    if raw is None or len(to_json(raw)) <= MAX_RAW_BYTES:
        return {"raw": raw}
    excerpt: dict[str, Any] = {}
    used = 2  # the braces
    for path, value in leaves(raw):
        kept = value[:MAX_RAW_VALUE] if isinstance(value, str) else value
        size = len(to_json(path)) + len(to_json(kept)) + 2  # a colon and a comma
        if used + size <= MAX_RAW_BYTES:
            excerpt[path] = kept
            used += size
    return {"raw": excerpt, "raw_cut": True}


def _bounded_labels(labels: dict[str, str]) -> dict[str, str]:
    # max(map(len, …)) runs in C: this is checked for every alert an event carries.
    if not labels or (
        len(labels) <= MAX_LABELS
        and max(map(len, labels)) <= MAX_LABEL_KEY
        and max(map(len, labels.values())) <= MAX_LABEL_VALUE
    ):
        return labels
    return {k[:MAX_LABEL_KEY]: v[:MAX_LABEL_VALUE] for k, v in itertools.islice(labels.items(), MAX_LABELS)}


def _bounded_tags(tags: list[str]) -> list[str]:
    if not tags or (len(tags) <= MAX_TAGS and max(map(len, tags)) <= MAX_TAG):
        return tags
    return [t[:MAX_TAG] for t in tags[:MAX_TAGS]]


# ---- suppressed alerts ----------------------------------------------------------------------------

# What a suppressed alert's summary and what held it back take of JSON besides their text: field
# names, severity, time, counts, brackets. Their text takes at most six bytes a character (escaped).
_SUPPRESSED_FIXED_BYTES = 300


@dataclass(frozen=True)
class Held:
    """A suppressed alert as stored: what held it back, its stored occurrence, and its sightings after the first."""

    alert: Alert
    suppression: Suppression
    occurrence: int
    repeats: int


def suppressed_events(
    held: Sequence[Held], *, max_alerts: int = MAX_ALERTS_PER_EVENT, max_bytes: int = MAX_EVENT_BYTES
) -> list[tuple[str, list[SuppressedAlerts]]]:
    """Return, for each thing that held alerts back, the events' subject and data, in bounded parts.

    The subject names what held them back (``silence:ID``, ``maintenance:ID``, ``inhibition:KEY``): a
    suppressed alert has no incident. Every alert is in exactly one part, in the order given.
    """
    groups: dict[Suppression, list[SuppressedAlertSummary]] = {}
    for h in held:
        groups.setdefault(h.suppression, []).append(summarise_suppressed(h))
    events = []
    for suppression, summaries in groups.items():
        by = SuppressedBy(
            kind=suppression.kind, id=suppression.by, name=suppression.name, reason=suppression.reason[:MAX_REASON]
        )
        room = max_bytes - _text_bound(by.id, by.name, by.reason)
        chunks = _pack_by_bound(summaries, max_alerts, room=room)
        parts = [
            trusted(SuppressedAlerts, suppressed_by=by, alerts=chunk, part=n, parts=len(chunks))
            for n, chunk in enumerate(chunks, 1)
        ]
        events.append((f"{suppression.kind}:{suppression.by}", parts))
    return events


# Ends of held-back alerts one event carries at most (each a key, an occurrence and a time).
MAX_ENDS_PER_EVENT = 500


def suppressed_endings(
    ended: Sequence[tuple[str, str, str, str, datetime]], *, max_alerts: int = MAX_ENDS_PER_EVENT
) -> list[tuple[str, list[SuppressedEnded]]]:
    """For each silence, window or inhibition, the events' subject and data telling its held-back alerts ended.

    ``ended`` holds (kind, by, key, occurrence, resolved at). The subject is the one the alerts were held
    back under (``silence:ID``…), so that an alert's end follows its being held back on one partition.
    """
    groups: dict[tuple[str, str], list[SuppressedEnd]] = {}
    for kind, by, key, occurrence, resolved_at in ended:
        end = trusted(SuppressedEnd, key=key, occurrence=occurrence, resolved_at=resolved_at)
        groups.setdefault((kind, by), []).append(end)
    events = []
    for (kind, by), ends in groups.items():
        chunks = [ends[i : i + max_alerts] for i in range(0, len(ends), max_alerts)]
        parts = [
            trusted(SuppressedEnded, kind=kind, id=by, alerts=chunk, part=n, parts=len(chunks))
            for n, chunk in enumerate(chunks, 1)
        ]
        events.append((f"{kind}:{by}", parts))
    return events


def summarise_suppressed(held: Held) -> SuppressedAlertSummary:
    """What the suppressed-alerts event carries of an alert: its bounded fields only (the detector keeps it whole)."""
    a = held.alert
    return trusted(
        SuppressedAlertSummary,
        key=a.key,
        source=a.source,
        title=a.title,
        severity=a.severity,
        time=a.time,
        host=a.host,
        format=a.format,
        occurrence=str(held.occurrence),
        repeats=held.repeats,
    )


def _text_bound(*texts: str | None) -> int:
    """Bytes that the JSON of a summary (or header) holding these texts cannot exceed."""
    return _SUPPRESSED_FIXED_BYTES + 6 * sum(len(t) for t in texts if t)


def _pack_by_bound(
    summaries: list[SuppressedAlertSummary], max_alerts: int, *, room: int
) -> list[list[SuppressedAlertSummary]]:
    """Cut summaries, in order, into runs of at most ``max_alerts`` whose bounds add up to ``room`` at most.

    Measured by bound, not serialised: a summary's fields are a few short texts, each limited by ``Alert``.
    """
    chunks: list[list[SuppressedAlertSummary]] = []
    chunk: list[SuppressedAlertSummary] = []
    used = 0
    for summary in summaries:
        size = _text_bound(summary.key, summary.source, summary.title, summary.host, summary.format, summary.occurrence)
        if chunk and (len(chunk) == max_alerts or used + size > room):
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(summary)
        used += size
    if chunk:
        chunks.append(chunk)
    return chunks


@dataclass(frozen=True)
class Waiting:
    """An alert stored while its correlation rule's condition does not hold: what the condition reads, and the alert."""

    member: Member
    # The alert, or its JSON as stored; None until the group's condition holds (only then is it read).
    stored: Alert | dict[str, Any] | None = None

    def alert(self) -> Alert:
        if self.stored is None:
            raise ValueError(f"waiting alert {self.member.key} was not read: its group's condition holds now")
        return self.stored if isinstance(self.stored, Alert) else Alert.model_validate(self.stored)


def groups_opening(
    alerts: Sequence[Alert],
    routes: Mapping[str, Route | None],
    waiting: Mapping[str, Sequence[Waiting]],
    open_keys: Iterable[str],
) -> set[str]:
    """Return the rule groups with waiting alerts whose condition these alerts make hold: their alerts are read."""
    opened = set(open_keys)
    new: dict[str, list[Member]] = {}
    rules: dict[str, Route] = {}
    for alert in alerts:
        route = routes.get(alert.key)
        if route is not None and route.key not in opened and route.key in waiting:
            new.setdefault(route.key, []).append(route.member(alert))
            rules[route.key] = route
    return {
        key
        for key, members in new.items()
        if rules[key].correlation.trigger([*(w.member for w in waiting[key]), *members]) is not None
    }


@dataclass
class Correlated:
    """What correlating a batch decided."""

    changes: list[IncidentChange] = field(default_factory=list)
    waiting: list[tuple[Alert, Route]] = field(default_factory=list)  # new alerts whose condition does not hold yet
    taken: set[str] = field(default_factory=set)  # groups whose waiting alerts joined the incident they opened


def correlate(
    alerts: Sequence[Alert],
    open_incidents: dict[str, IncidentState],
    *,
    window: timedelta,
    new_id: Callable[[], str],
    classifier: Classifier | None = None,
) -> list[IncidentChange]:
    """Attach each alert to the open incident on its entity within the window, or open a new one (no rules)."""
    return correlate_all(alerts, open_incidents, window=window, new_id=new_id, classifier=classifier).changes


def correlate_all(
    alerts: Sequence[Alert],
    open_incidents: dict[str, IncidentState],
    *,
    window: timedelta,
    new_id: Callable[[], str],
    classifier: Classifier | None = None,
    rules: CorrelationRules | None = None,
    routes: Mapping[str, Route | None] | None = None,
    waiting: Mapping[str, Sequence[Waiting]] | None = None,
) -> Correlated:
    """Place each alert by the correlation rules, else on its entity: attach it, open an incident, or keep it waiting.

    ``open_incidents`` maps a correlation key to its most recent open incident, ``waiting`` a
    rule's group key to its alerts stored before while the condition did not hold, ``routes``
    an alert's key to where the rules put it (computed here when not given). Alerts are taken in
    time order so that the window is judged the same however a batch was cut. On an entity, a
    gap longer than ``window`` starts a new incident; in a rule's window, an incident opens when
    the condition first holds, with every alert of the window so far.
    """
    classify = classifier or classification.shipped()
    rules = rules or correlation.NONE
    routes = routes if routes is not None else {a.key: rules.route(a) for a in alerts}
    waiting = waiting or {}
    by_key: dict[str, list[Alert]] = {}
    by_group: dict[str, list[tuple[Alert, Route]]] = {}
    for alert in sorted(alerts, key=lambda a: a.time):
        route = routes.get(alert.key)
        if route is None:
            by_key.setdefault(correlation_key(alert), []).append(alert)
        else:
            by_group.setdefault(route.key, []).append((alert, route))
    result = Correlated()
    for key, keyed in by_key.items():
        incident = open_incidents.get(key)
        last_seen = incident.last_seen if incident else None
        segment: list[Alert] = []
        for alert in keyed:
            if last_seen is not None and alert.time - last_seen > window:
                if segment:
                    result.changes.append(_change(incident, segment, key, new_id, classify, window=window))
                incident, segment = None, []
            segment.append(alert)
            last_seen = alert.time if last_seen is None else max(last_seen, alert.time)
        result.changes.append(_change(incident, segment, key, new_id, classify, window=window))
    for key, placed in by_group.items():
        change = _group_change(open_incidents.get(key), placed, waiting.get(key, ()), key, new_id, classify)
        if change is None:
            result.waiting.extend(placed)
            continue
        if change.created:
            result.taken.add(key)
        result.changes.append(change)
    return result


def _group_change(
    incident: IncidentState | None,
    placed: list[tuple[Alert, Route]],
    waiting: Sequence[Waiting],
    key: str,
    new_id: Callable[[], str],
    rules: Classifier,
) -> IncidentChange | None:
    """Attach a rule group's new alerts to its incident, or open it when the condition now holds (None: not yet)."""
    route = placed[0][1]
    rule = route.correlation
    said = dict(route.values)
    if incident is not None:
        alerts = [alert for alert, _route in placed]
        reason = f"{rule.name} ({rule.type}): same {_said(said)} in the window its incident opened for"
        change = _change(incident, alerts, key, new_id, rules)
        if incident.correlation_key == key:  # the rule's own incident, not a survivor it was merged into
            change.incident = kept_as_ruled(change.incident, incident, rule)
        joined = _reason(route, reason)
        change.reasons = dict.fromkeys((a.key for a in alerts), joined)
        return change
    members = [w.member for w in waiting] + [r.member(a) for a, r in placed]
    held = rule.trigger(members)
    if held is None:
        return None
    trigger, reached = held
    alerts = sorted([*(w.alert() for w in waiting), *(a for a, _r in placed)], key=lambda a: a.time)
    reason = f"{rule.name} ({rule.type}): {rule.condition_text()} held for {_said(said)} ({reached} reached)"
    change = _change(None, alerts, key, new_id, rules)
    if rule.title or rule.severity:
        change.incident = _ruled(change.incident, title=rule.title, severity=rule.severity, said=said, name=rule.name)
    change.reasons = {a.key: _reason(route, reason, triggered_by=trigger) for a in alerts}
    return change


def _said(values: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items())


def _reason(route: Route, reason: str, *, triggered_by: list[str] | None = None) -> AlertCorrelation:
    return AlertCorrelation(
        rule=route.correlation.name,
        type=route.correlation.type,
        key=dict(route.values),
        window_start=route.window_start,
        window_end=route.window_end,
        reason=reason,
        triggered_by=triggered_by or [],
    )


def _ruled(
    incident: IncidentState, *, title: str | None, severity: Severity | None, said: dict[str, str], name: str
) -> IncidentState:
    """The incident a correlation rule opened, with the rule's title and severity when it sets them."""
    if title:
        incident = replace(incident, title=f"{title} ({_said(said)})")
    if severity is not None:
        incident = replace(
            incident, severity=severity, severity_reason=f"correlation rule {name} sets {severity.value}"
        )
    return incident


def kept_as_ruled(
    incident: IncidentState, before: IncidentState, rule: correlation.Correlation | None
) -> IncidentState:
    """The incident judged again from its alerts, keeping what its correlation rule set on it before.

    The rule's title and severity hold whatever alert leads now, as they do when all come in one batch.
    """
    if rule is None:
        return incident
    if rule.title:
        incident = replace(incident, title=before.title)
    if rule.severity is not None:
        incident = replace(incident, severity=before.severity, severity_reason=before.severity_reason)
    return incident


@functools.lru_cache(maxsize=8192)  # frozen; most batches name the same entities again
def entity_reason(key: str, *, created: bool, window: timedelta) -> AlertCorrelation:
    """Why an alert joined an incident by the fallback rule: the entity it is about."""
    kind, _, value = key.partition(":")
    name = {"ip": "address"}.get(kind, kind)
    reason = (
        f"{ENTITY}: the first alert about {name} {value}"
        if created
        else f"{ENTITY}: same {name} {value}, within {correlation.span_text(window)} of the incident's last alert"
    )
    return AlertCorrelation(rule=ENTITY, type=ENTITY, key={name: value}, reason=reason)


ENTITY = correlation.ENTITY_RULE


def _change(
    incident: IncidentState | None,
    alerts: list[Alert],
    key: str,
    new_id: Callable[[], str],
    rules: Classifier,
    *,
    window: timedelta | None = None,
) -> IncidentChange:
    """Fold alerts into the incident (None: a new one); with ``window``, record that the entity rule placed them."""
    type_rules: dict[str, str] = {}
    folded = _fold(incident, alerts, key, incident.id if incident else new_id(), rules, type_rules)
    change = IncidentChange(folded, created=incident is None, alerts=alerts, type_rules=type_rules)
    if window is not None:
        # One reason serves every alert that joined (and another the one that opened the incident).
        joined = entity_reason(key, created=False, window=window)
        change.reasons = dict.fromkeys((a.key for a in alerts), joined)
        if incident is None:
            change.reasons[alerts[0].key] = entity_reason(key, created=True, window=window)
    return change


def _weight(alert: Alert) -> int:
    """A critical alert counts more towards the incident's type than an informational one."""
    return alert.severity.rank + 1


class _Lead(NamedTuple):
    """The alert an incident's severity starts from: real alerts before heartbeats and tests, then the most severe."""

    severity: AlertSeverity
    kind: AlertKind
    reason: str | None

    @property
    def rank(self) -> tuple[bool, int]:
        return self.kind == "alert", self.severity.rank


def _fold(
    base: IncidentState | None,
    alerts: list[Alert],
    key: str,
    incident_id: str,
    rules: Classifier,
    type_rules: dict[str, str],
) -> IncidentState:
    """Return the incident after adding ``alerts`` (time-ordered) to ``base`` (None: a new incident).

    Records in ``type_rules`` the rule that typed each alert.
    """
    votes = dict(base.type_votes) if base else {}
    reasons: dict[IncidentType, str] = {}
    first = alerts[0]
    if base:
        lead = _Lead(base.max_alert_severity, base.lead_kind, base.lead_severity_reason)
        title, critical = base.title, base.critical_asset
    else:
        lead, title, critical = _Lead(first.severity, first.kind, first.severity_reason), first.title, None
    hosts = dict.fromkeys(base.hosts if base else ())
    users = dict.fromkeys(base.users if base else ())
    # An open incident is never downgraded: its severity is the highest it reached after any
    # alert, which also makes it the same however the alerts were cut into batches.
    severity, severity_reason = (base.severity, base.severity_reason) if base else (None, "")
    judged: SeverityInputs | None = None
    for alert in alerts:
        decision = rules.classify(alert)
        type_rules[alert.key] = decision.rule
        votes[decision.type.value] = votes.get(decision.type.value, 0) + _weight(alert)
        reasons.setdefault(decision.type, decision.reason)
        candidate = _Lead(alert.severity, alert.kind, alert.severity_reason)
        if candidate.rank > lead.rank:
            lead, title = candidate, alert.title
        if alert.host:
            hosts[alert.host] = None
        if alert.user:
            users[alert.user] = None
        critical = critical or critical_asset(alert, rules)
        inputs = SeverityInputs(
            alert_severity=lead.severity,
            alert_reason=lead.reason,
            alert_kind=lead.kind,
            incident_type=decide_type(votes),
            hosts=len(hosts),
            users=len(users),
            critical_asset=critical,
        )
        if inputs != judged:  # most alerts change none of what severity depends on
            judged = inputs
            reached, why = prioritise(inputs, rules.severity)
            if severity is None or reached.urgency > severity.urgency:
                severity, severity_reason = reached, why
    assert severity is not None  # alerts is never empty
    incident_type = decide_type(votes)
    if base is not None and incident_type is base.type:
        reason = base.classification_reason
    elif base is None and len(votes) == 1:
        reason = reasons[incident_type]
    else:
        tally = ", ".join(f"{name} {weight}" for name, weight in sorted(votes.items(), key=lambda v: -v[1]))
        reason = f"{reasons.get(incident_type, 'earlier alerts')}; weighted alert votes: {tally}"
    first_seen = min(first.time, base.first_seen) if base else first.time
    last_seen = max(alerts[-1].time, base.last_seen) if base else alerts[-1].time
    return IncidentState(
        id=incident_id,
        correlation_key=key,
        title=title,
        type=incident_type,
        severity=severity,
        classification_reason=reason,
        severity_reason=severity_reason,
        alert_count=(base.alert_count if base else 0) + len(alerts),
        max_alert_severity=lead.severity,
        type_votes=votes,
        hosts=tuple(hosts),
        users=tuple(users),
        first_seen=first_seen,
        last_seen=last_seen,
        lead_kind=lead.kind,
        lead_severity_reason=lead.reason,
        critical_asset=critical,
    )


def decide_type(votes: dict[str, int]) -> IncidentType:
    """Return the incident's type from its alerts' weighted votes.

    The most specific type wins when it carries at least half the leading weight: one reverse
    shell among brute-force alerts makes the incident a system compromise, one stray keyword does
    not. Alerts no rule could place (``unknown``) take no part: the incident is ``unknown`` only
    when none of its alerts was placed.
    """
    weights = [(incident_type, votes.get(value, 0)) for incident_type, value in _PRECEDENCE]
    leading = max(weight for _type, weight in weights)
    if leading:
        for incident_type, weight in weights:
            if weight * 2 >= leading:
                return incident_type
    return IncidentType.UNKNOWN


# Enum values read once: deciding the type runs once per alert.
_PRECEDENCE = tuple((incident_type, incident_type.value) for incident_type in TYPE_PRECEDENCE)


# One alerts-changed event lists at most this many repeats and resolutions: an entry is at most
# about 1.9 KB of JSON (a 301-character key, every character escaped), so a part stays well under
# MAX_EVENT_BYTES.
MAX_ALERT_CHANGES_PER_EVENT = 100


def alerts_changes(
    repeated: Sequence[AlertRepeat],
    resolved: Sequence[AlertResolution],
    *,
    firing: int,
    alert_count: int,
    all_resolved: bool,
    max_items: int = MAX_ALERT_CHANGES_PER_EVENT,
) -> list[AlertsChange]:
    """Return the events' data that carry one incident's repeats and resolutions of a batch, in bounded parts.

    Repeats come before resolutions (an alert in both fired again, then ended); ``all_resolved``
    is said on the last part, once everything before it has been told.
    """
    items: list[AlertRepeat | AlertResolution] = [*repeated, *resolved]
    chunks = [items[i : i + max_items] for i in range(0, len(items), max_items)] or [[]]
    return [
        AlertsChange(
            repeated=[i for i in chunk if isinstance(i, AlertRepeat)],
            resolved=[i for i in chunk if isinstance(i, AlertResolution)],
            firing=firing,
            alert_count=alert_count,
            all_resolved=all_resolved and n == len(chunks),
            part=n,
            parts=len(chunks),
        )
        for n, chunk in enumerate(chunks, 1)
    ]


def suggests_resolving(incident_type: IncidentType, *, closed: bool, firing: int) -> bool:
    """Every alert of an open service disruption has ended: the commander may resolve it.

    Only service disruptions: a security incident is not over when its alerts stop.
    """
    return incident_type is IncidentType.SERVICE_DISRUPTION and not closed and firing == 0
