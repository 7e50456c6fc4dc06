"""SentinelOne threats, alerts and activities (management API v2.1, and as log pipelines export them).

**Detected by** a threat (``threatInfo`` with ``agentRealtimeInfo`` or ``agentDetectionInfo``), a
cloud-detection alert (``alertInfo`` with ``ruleInfo``), or an activity (``activityType`` with
``primaryDescription`` or ``activityUuid``; exports such as Panther's lower-case every key, which is
read alike).

**Activities**: SentinelOne records everything as an activity; only these are alerts: type 3608
(an alert raised by a custom detection rule) and the new-threat types 18, 19, 20, 4003, 4106-4113
(a threat detected, mitigated or not, or marked malicious or suspicious by STAR, Watchtower or the
threat-intelligence engine; the list Panther's SentinelOne rules use). Every other activity (logins,
policy changes, agent updates ...) is accounted as skipped.

**Identity** (``source`` ``sentinelone``): a threat is ``threat/<id>`` whether it arrives from the
threats API or as a threat activity (``threatId``), an alert ``alert/<alertId>`` whether from the
alerts API or a 3608 activity (``data.alertId``), so that the same detection seen both ways is one
alert; an activity naming neither is ``activity/<id>``.

**Severity**: an alert carries its rule's severity (``ruleInfo.severity``, ``data.severity``, the
latter written ``E_CRITICAL``): Low, Medium, High and Critical map one to one. A threat carries no
severity, only the engine's confidence: ``malicious`` is high, ``suspicious`` medium; anything else
(``n/a``, none) medium, saying so.

**Status**: ``incidentStatus`` resolved is ``resolved``.

**Fields**: a threat's title names its confidence, file and classification; an alert's is its rule's
name; an activity's its rule or its primary description. The agent's computer name is the host, its
address the destination (the machine the detection is about) unless the alert names a destination;
the alert's source address the source; the process user the user; the classification the category;
indicator tactics and techniques the ATT&CK ids; hashes, file path, mitigation and analyst verdict,
site and account are labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    attack_ids,
    build_alert,
    first,
    identity,
    ip_or_none,
    json_object,
    lines,
    mapping,
    number,
    string_labels,
    text,
    time_of,
    values_under,
)
from shared.alerts import Alert, AlertSeverity

SOURCE = "sentinelone"
ALERT_ACTIVITY = 3608
THREAT_ACTIVITIES = {18, 19, 20, 4003, 4106, 4107, 4108, 4109, 4110, 4111, 4112, 4113}
SEVERITIES = {
    "low": AlertSeverity.LOW,
    "medium": AlertSeverity.MEDIUM,
    "high": AlertSeverity.HIGH,
    "critical": AlertSeverity.CRITICAL,
}
CONFIDENCE = {"malicious": AlertSeverity.HIGH, "suspicious": AlertSeverity.MEDIUM}


def get(record: Any, *path: str) -> Any:
    """A field by its camelCase name, or lower-cased as exports write it."""
    current = record
    for name in path:
        if not isinstance(current, dict):
            return None
        current = current[name] if name in current else current.get(name.lower())
    return current


class SentinelOne:
    name = "sentinelone"
    description = "SentinelOne threats, cloud-detection alerts and alert/threat activities."

    def matches(self, payload: Any) -> bool:
        if not isinstance(payload, dict):
            return False
        if isinstance(payload.get("threatInfo"), Mapping) and (
            isinstance(payload.get("agentRealtimeInfo"), Mapping)
            or isinstance(payload.get("agentDetectionInfo"), Mapping)
        ):
            return True
        if isinstance(payload.get("alertInfo"), Mapping) and isinstance(payload.get("ruleInfo"), Mapping):
            return True
        return get(payload, "activityType") is not None and (
            get(payload, "primaryDescription") is not None or get(payload, "activityUuid") is not None
        )

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "a SentinelOne record")
        if isinstance(payload.get("threatInfo"), Mapping):
            return Parsed(format=self.name, alerts=[_threat(payload)])
        if isinstance(payload.get("alertInfo"), Mapping):
            return Parsed(format=self.name, alerts=[_alert(payload)])
        activity_type = number(get(payload, "activityType"))
        if activity_type is None:
            raise Rejected("the SentinelOne record is no threat, alert or activity", code="missing_fields")
        if activity_type == ALERT_ACTIVITY or activity_type in THREAT_ACTIVITIES:
            return Parsed(format=self.name, alerts=[_activity(payload, int(activity_type))])
        description = text(get(payload, "primaryDescription")) or "no description"
        return Parsed(
            format=self.name,
            skipped=[f"SentinelOne activity type {activity_type:g} ({description[:200]}): not a threat or alert"],
        )


def rated(value: Any) -> tuple[AlertSeverity, str | None, str]:
    """Vigil's severity for a rule severity (Critical, E_HIGH, ...), with what SentinelOne said."""
    said = text(value)
    if said is None:
        return AlertSeverity.MEDIUM, None, "no rule severity -> medium"
    severity = SEVERITIES.get(said.lower().removeprefix("e_"))
    if severity is None:
        return AlertSeverity.MEDIUM, f"SentinelOne {said}", f"SentinelOne severity {said} is not rated -> medium"
    return severity, f"SentinelOne {said}", f"SentinelOne severity {said} -> {severity.value}"


def confident(value: Any) -> tuple[AlertSeverity, str | None, str]:
    """Vigil's severity for a threat's confidence level, SentinelOne's only measure of a threat."""
    said = text(value)
    severity = CONFIDENCE.get((said or "").lower())
    if severity is None:
        why = f"SentinelOne confidence {said}" if said else "no confidence level"
        return AlertSeverity.MEDIUM, said and f"SentinelOne confidence {said}", f"{why} -> medium"
    return severity, f"SentinelOne confidence {said}", f"SentinelOne confidence {said} -> {severity.value}"


def _resolved(value: Any) -> bool:
    return (text(value) or "").lower() == "resolved"


def _threat(threat: Mapping[str, Any]) -> Alert:
    info = mapping(threat.get("threatInfo"))
    realtime, detection = mapping(threat.get("agentRealtimeInfo")), mapping(threat.get("agentDetectionInfo"))
    severity, source_severity, reason = confident(info.get("confidenceLevel"))
    confidence, name, classification = (
        text(info.get("confidenceLevel")),
        text(info.get("threatName")),
        text(info.get("classification")),
    )
    threat_id = identity(first(threat.get("id"), info.get("threatId")))
    if threat_id is None:
        raise Rejected("the SentinelOne threat has no id", code="missing_fields")
    return build_alert(
        id=f"threat/{threat_id}",
        source=SOURCE,
        title=_threat_title(confidence, name, classification),
        description=lines(
            ("file", info.get("filePath")),
            ("originator process", info.get("originatorProcess")),
            ("arguments", info.get("maliciousProcessArguments")),
            ("mitigation", info.get("mitigationStatus")),
        ),
        severity=severity,
        time=time_of(info, "createdAt", "identifiedAt", "updatedAt", what="the SentinelOne threat"),
        host=first(realtime.get("agentComputerName"), detection.get("agentComputerName")),
        user=text(info.get("processUser")),
        dst_ip=ip_or_none(detection.get("agentIpV4")) or ip_or_none(detection.get("agentIpV6")),
        labels=string_labels(
            {
                "sha1": info.get("sha1"),
                "sha256": info.get("sha256"),
                "file_path": info.get("filePath"),
                "mitigation_status": info.get("mitigationStatus"),
                "analyst_verdict": info.get("analystVerdict"),
                "detection_type": info.get("detectionType"),
                "storyline": info.get("storyline"),
                "external_ip": detection.get("externalIp"),
                "site": first(detection.get("siteName"), realtime.get("siteName")),
                "account": first(detection.get("accountName"), realtime.get("accountName")),
                "updated_at": info.get("updatedAt"),
            }
        ),
        raw=dict(threat),
        format=SentinelOne.name,
        status="resolved" if _resolved(info.get("incidentStatus")) else "firing",
        rule=text(info.get("detectionType")),
        category=classification,
        techniques=attack_ids(values_under(threat.get("indicators"), "name")),
        source_severity=source_severity,
        severity_reason=reason,
    )


def _threat_title(confidence: str | None, name: str | None, classification: str | None) -> str:
    """ "Malicious threat invoice.exe (Trojan)"."""
    parts = [f"{confidence.capitalize()} threat" if confidence else "Threat", name]
    title = " ".join(p for p in parts if p)
    return f"{title} ({classification})" if classification else title


def _alert(alert: Mapping[str, Any]) -> Alert:
    info, rule = mapping(alert.get("alertInfo")), mapping(alert.get("ruleInfo"))
    agent = mapping(alert.get("agentDetectionInfo")) or mapping(alert.get("agentRealtimeInfo"))
    source_process = mapping(alert.get("sourceProcessInfo"))
    severity, source_severity, reason = rated(rule.get("severity"))
    alert_id = identity(info.get("alertId"))
    if alert_id is None:
        raise Rejected("the SentinelOne alert has no alertInfo.alertId", code="missing_fields")
    return build_alert(
        id=f"alert/{alert_id}",
        source=SOURCE,
        title=first(rule.get("name"), info.get("indicatorName"), "SentinelOne alert"),
        description=lines(
            (None, first(rule.get("description"), info.get("indicatorDescription"))),
            ("process", source_process.get("commandline")),
        ),
        severity=severity,
        time=time_of(info, "createdAt", "reportedAt", "updatedAt", what="the SentinelOne alert"),
        host=first(agent.get("name"), agent.get("agentComputerName")),
        user=text(source_process.get("user")),
        src_ip=ip_or_none(info.get("srcIp")),
        dst_ip=ip_or_none(info.get("dstIp")),
        labels=string_labels(
            {
                "rule_id": rule.get("id"),
                "event_type": info.get("eventType"),
                "source": info.get("source"),
                "analyst_verdict": info.get("analystVerdict"),
                "treat_as_threat": rule.get("treatAsThreat"),
                "sha1": source_process.get("fileHashSha1"),
                "sha256": source_process.get("fileHashSha256"),
                "site_id": agent.get("siteId"),
                "agent_uuid": agent.get("uuid"),
            }
        ),
        raw=dict(alert),
        format=SentinelOne.name,
        status="resolved" if _resolved(info.get("incidentStatus")) else "firing",
        rule=text(rule.get("name")),
        category=text(info.get("indicatorCategory")),
        source_severity=source_severity,
        severity_reason=reason,
    )


def _activity(activity: Mapping[str, Any], activity_type: int) -> Alert:
    data = mapping(get(activity, "data"))
    if activity_type == ALERT_ACTIVITY:
        severity, source_severity, reason = rated(get(data, "severity"))
        native = identity(get(data, "alertId"))
        alert_id = f"alert/{native}" if native else None
    else:
        severity, source_severity, reason = confident(get(data, "confidenceLevel"))
        native = identity(first(get(activity, "threatId"), get(data, "threatId")))
        alert_id = f"threat/{native}" if native else None
    activity_id = identity(get(activity, "id"))
    primary = text(get(activity, "primaryDescription"))
    alert_id = alert_id or (f"activity/{activity_id}" if activity_id else None)
    if alert_id is None:
        raise Rejected("the SentinelOne activity has no id", code="missing_fields")
    time = time_of(
        activity, "createdAt", "createdat", "data.detectedAt", "data.detectedat", what="the SentinelOne activity"
    )
    return build_alert(
        id=alert_id,
        source=SOURCE,
        title=first(get(data, "ruleName"), primary),
        description=lines(
            (None, primary), (None, get(data, "ruleDescription")), (None, get(activity, "secondaryDescription"))
        ),
        severity=severity,
        time=time,
        host=first(get(data, "computerName"), get(data, "agentComputerName")),
        user=first(get(data, "userName"), get(data, "processUser")),
        src_ip=ip_or_none(get(data, "srcIp")),
        dst_ip=ip_or_none(get(data, "dstIp")) or ip_or_none(get(data, "agentIpv4")),
        labels=string_labels(
            {
                "activity_type": activity_type,
                "activity_id": activity_id,
                "rule_id": get(data, "ruleId"),
                "file": first(get(data, "fileDisplayName"), get(data, "filePath")),
                "sha1": get(data, "fileContentHash"),
                "site": first(get(activity, "siteName"), get(data, "siteName")),
                "account": first(get(activity, "accountName"), get(data, "accountName")),
                "detected_at": get(data, "detectedAt"),
            }
        ),
        raw=dict(activity),
        format=SentinelOne.name,
        rule=text(get(data, "ruleName")),
        source_severity=source_severity,
        severity_reason=reason,
    )
