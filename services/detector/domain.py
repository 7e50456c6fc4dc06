"""Pure decisions of the detector: correlation, classification and prioritisation. No I/O here."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel
from pydantic_core import to_json

from shared.alerts import Alert, AlertSeverity
from shared.events import AlertSummary, IncidentSnapshot, IncidentType, Severity

# Most specific first: when an incident's alerts point several ways, the earlier type wins a tie.
TYPE_PRECEDENCE = (
    IncidentType.DATA_LEAK,
    IncidentType.SYSTEM_COMPROMISE,
    IncidentType.SECURITY_BREACH,
    IncidentType.SERVICE_DISRUPTION,
)

# Keyword rules over an alert's title, description and label values, checked in this order.
# A keyword matches whole words; a trailing "*" lets it match any ending ("exfiltrat*").
CLASSIFICATION_RULES: tuple[tuple[IncidentType, tuple[str, ...]], ...] = (
    (
        IncidentType.DATA_LEAK,
        (
            "exfiltrat*",
            "data leak*",
            "leak*",
            "dlp",
            "sensitive data",
            "public bucket",
            "bucket is public",
            "mass download",
            "data transfer",
        ),
    ),
    (
        IncidentType.SYSTEM_COMPROMISE,
        (
            "malware",
            "ransomware",
            "rootkit",
            "backdoor*",
            "trojan",
            "reverse shell",
            "shell spawned",
            "cryptominer",
            "coin miner",
            "command and control",
            "c2",
            "beacon*",
            "privilege escalation",
            "persistence",
            "mimikatz",
            "credential dump*",
            "webshell",
            "compromised",
        ),
    ),
    (
        IncidentType.SECURITY_BREACH,
        (
            "brute force",
            "brute-force",
            "unauthori*",
            "failed login*",
            "authentication failure*",
            "intrusion",
            "exploit*",
            "sql injection",
            "xss",
            "port scan*",
            "scan*",
            "suspicious",
            "policy violation",
            "credential*",
            "phishing",
            "attack*",
        ),
    ),
    (
        IncidentType.SERVICE_DISRUPTION,
        (
            "down",
            "outage",
            "unavailable",
            "latency",
            "error rate",
            "ddos",
            "denial of service",
            "crashloop*",
            "crash*",
            "oom*",
            "out of memory",
            "disk full",
            "saturat*",
            "timeout*",
            "5xx",
        ),
    ),
)


def _keyword_pattern(keywords: Iterable[str]) -> re.Pattern[str]:
    """One alternation per type: a single scan of the text instead of one per keyword."""
    parts = [re.escape(k[:-1]) + r"\w*" if k.endswith("*") else re.escape(k) + r"\b" for k in keywords]
    return re.compile(r"\b(?:" + "|".join(parts) + ")")


_RULE_PATTERNS = [(incident_type, _keyword_pattern(keywords)) for incident_type, keywords in CLASSIFICATION_RULES]

BASE_SEVERITY = {
    AlertSeverity.CRITICAL: Severity.SEV1,
    AlertSeverity.HIGH: Severity.SEV2,
    AlertSeverity.MEDIUM: Severity.SEV3,
    AlertSeverity.LOW: Severity.SEV4,
    AlertSeverity.INFO: Severity.SEV4,
}
WIDESPREAD_HOSTS = 5

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
# The most JSON one summary can take with those bounds (tests hold the worst possible alert to it).
MAX_SUMMARY_BYTES = 180 * 1024


def classify_alert(alert: Alert) -> tuple[IncidentType, str]:
    """Return the incident type an alert points to and why."""
    declared = alert.labels.get("incident_type", "")
    if declared in IncidentType._value2member_map_:
        return IncidentType(declared), f"label incident_type={declared}"
    text = " ".join([alert.title, alert.description, *alert.labels.values()]).lower()
    for incident_type, pattern in _RULE_PATTERNS:
        if match := pattern.search(text):
            return incident_type, f"{alert.source} alert {alert.title!r} mentions {match.group(0)!r}"
    if alert.labels.get("alertname") or alert.source.lower() in {"prometheus", "alertmanager"}:
        return IncidentType.SERVICE_DISRUPTION, f"{alert.source} alert with no security keyword"
    return IncidentType.SECURITY_BREACH, "no rule matched; security breach until analysed"


def prioritise(max_alert_severity: AlertSeverity, incident_type: IncidentType, host_count: int) -> tuple[Severity, str]:
    """Return the incident's SEV level and the steps that led to it."""
    severity = BASE_SEVERITY[max_alert_severity]
    steps = [f"highest alert severity {max_alert_severity.value} -> {severity.value}"]
    if incident_type in (IncidentType.DATA_LEAK, IncidentType.SYSTEM_COMPROMISE) and severity in (
        Severity.SEV2,
        Severity.SEV3,
    ):
        severity = _raise(severity)
        steps.append(f"{incident_type.value} -> {severity.value}")
    if host_count >= WIDESPREAD_HOSTS and severity is not Severity.SEV1:
        severity = _raise(severity)
        steps.append(f"{host_count} hosts affected (widespread) -> {severity.value}")
    return severity, "; ".join(steps)


def _raise(severity: Severity) -> Severity:
    return Severity(f"SEV{max(1, int(severity.value[-1]) - 1)}")


def correlation_key(alert: Alert) -> str:
    """Alerts about the same entity belong to one incident."""
    return alert.entity


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


@dataclass
class IncidentChange:
    """An incident a batch opened or added alerts to."""

    incident: IncidentState
    created: bool
    alerts: list[Alert] = field(default_factory=list)


def snapshots(
    change: IncidentChange, *, max_alerts: int = MAX_ALERTS_PER_EVENT, max_bytes: int = MAX_EVENT_BYTES
) -> list[IncidentSnapshot]:
    """Return the snapshots that carry a change's new alerts, in order, each within both bounds.

    Every alert is in exactly one snapshot; each says which ``part`` of how many ``parts`` it is.
    """
    summaries = [summarise(a) for a in change.alerts]
    if len(summaries) <= max_alerts:
        whole = _snapshot(change.incident, summaries)
        # Serialising to measure costs as much again as the outbox does: one alert beside a
        # small header needs no measuring.
        if len(summaries) == 1 and _header_bound(change.incident) + MAX_SUMMARY_BYTES <= max_bytes:
            return [whole]
        if _json_size(whole) <= max_bytes:
            return [whole]
    header = _header(change.incident)
    chunks = _pack(summaries, max_alerts, room=max_bytes - _json_size(header) - _PART_NUMBER_SLACK) or [[]]
    return [
        header.model_copy(update={"new_alerts": chunk, "part": n, "parts": len(chunks)})
        for n, chunk in enumerate(chunks, 1)
    ]


def _snapshot(incident: IncidentState, alerts: list[AlertSummary]) -> IncidentSnapshot:
    i = incident
    return IncidentSnapshot(
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


def summarise(alert: Alert) -> AlertSummary:
    """Return what incident events carry of an alert, its unbounded fields cut to bounded lengths."""
    return AlertSummary(
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
        type_rule=None,
    )


def _bounded_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) <= MAX_LABELS and all(
        len(k) <= MAX_LABEL_KEY and len(v) <= MAX_LABEL_VALUE for k, v in labels.items()
    ):
        return labels
    return {k[:MAX_LABEL_KEY]: v[:MAX_LABEL_VALUE] for k, v in itertools.islice(labels.items(), MAX_LABELS)}


def _bounded_tags(tags: list[str]) -> list[str]:
    if len(tags) <= MAX_TAGS and all(len(t) <= MAX_TAG for t in tags):
        return tags
    return [t[:MAX_TAG] for t in tags[:MAX_TAGS]]


def correlate(
    alerts: Sequence[Alert],
    open_incidents: dict[str, IncidentState],
    *,
    window: timedelta,
    new_id: Callable[[], str],
) -> list[IncidentChange]:
    """Attach each alert to the open incident on its key within the window, or open a new one.

    ``open_incidents`` maps a correlation key to its most recent open incident. Alerts are taken
    in time order so that the window is judged the same however a batch was cut; a gap longer
    than the window starts a new incident.
    """
    by_key: dict[str, list[Alert]] = {}
    for alert in sorted(alerts, key=lambda a: a.time):
        by_key.setdefault(correlation_key(alert), []).append(alert)
    changes: list[IncidentChange] = []
    for key, keyed in by_key.items():
        incident = open_incidents.get(key)
        last_seen = incident.last_seen if incident else None
        segment: list[Alert] = []
        for alert in keyed:
            if last_seen is not None and alert.time - last_seen > window:
                if segment:
                    changes.append(_change(incident, segment, key, new_id))
                incident, segment = None, []
            segment.append(alert)
            last_seen = alert.time if last_seen is None else max(last_seen, alert.time)
        changes.append(_change(incident, segment, key, new_id))
    return changes


def _change(incident: IncidentState | None, alerts: list[Alert], key: str, new_id: Callable[[], str]) -> IncidentChange:
    folded = _fold(incident, alerts, key, incident.id if incident else new_id())
    return IncidentChange(folded, created=incident is None, alerts=alerts)


def _weight(alert: Alert) -> int:
    """A critical alert counts more towards the incident's type than an informational one."""
    return alert.severity.rank + 1


def _fold(base: IncidentState | None, alerts: list[Alert], key: str, incident_id: str) -> IncidentState:
    """Return the incident after adding ``alerts`` (time-ordered) to ``base`` (None: a new incident)."""
    votes = dict(base.type_votes) if base else {}
    reasons: dict[IncidentType, str] = {}
    max_severity = base.max_alert_severity if base else alerts[0].severity
    title = base.title if base else alerts[0].title
    hosts = dict.fromkeys(base.hosts if base else ())
    # An open incident is never downgraded: its severity is the highest it reached after any
    # alert, which also makes it the same however the alerts were cut into batches.
    severity, severity_reason = (base.severity, base.severity_reason) if base else (None, "")
    judged: tuple[AlertSeverity, IncidentType, int] | None = None
    for alert in alerts:
        alert_type, alert_reason = classify_alert(alert)
        votes[alert_type.value] = votes.get(alert_type.value, 0) + _weight(alert)
        reasons.setdefault(alert_type, alert_reason)
        if alert.severity.rank > max_severity.rank:
            max_severity, title = alert.severity, alert.title
        if alert.host:
            hosts[alert.host] = None
        inputs = (max_severity, decide_type(votes), len(hosts))
        if inputs != judged:  # most alerts change none of what severity depends on
            judged = inputs
            reached, why = prioritise(*inputs)
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
    first_seen = min(alerts[0].time, base.first_seen) if base else alerts[0].time
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
        max_alert_severity=max_severity,
        type_votes=votes,
        hosts=tuple(hosts),
        users=_union(base.users if base else (), (a.user for a in alerts)),
        first_seen=first_seen,
        last_seen=last_seen,
    )


def decide_type(votes: dict[str, int]) -> IncidentType:
    """Return the incident's type from its alerts' weighted votes.

    The most specific type wins when it carries at least half the leading weight: one reverse
    shell among brute-force alerts makes the incident a system compromise, one stray keyword does not.
    """
    leading = max(votes.values(), default=0)
    for incident_type in TYPE_PRECEDENCE:
        if leading and votes.get(incident_type.value, 0) * 2 >= leading:
            return incident_type
    return IncidentType.SECURITY_BREACH


def _union(existing: Iterable[str], more: Iterable[str | None]) -> tuple[str, ...]:
    merged = dict.fromkeys(existing)
    merged.update(dict.fromkeys(m for m in more if m))
    return tuple(merged)
