"""CrowdStrike Falcon detection summary events (EppDetectionSummaryEvent, DetectionSummaryEvent).

**Detected by** one of the shapes Falcon's detections travel in: a Streaming API / SIEM connector
event (``metadata.eventType`` with ``metadata.customerIDString`` or ``offset``, and an ``event``
object), a flat event with ``ExternalApiType`` (``Event_EppDetectionSummaryEvent``,
``Event_DetectionSummaryEvent``), or a Falcon Data Replicator record wrapping it in ``event``
(``fdr_event_type``). Fields a log pipeline adds (Panther's ``p_*``) are ignored. Stream events of
other types (authentication audit, incident summaries, remote-response sessions ...) are accounted as
skipped: they are not detections.

**Identity**: ``CompositeId`` (EPP detections), else ``DetectId`` (legacy detections), else a digest
of the sensor, process and time; ``source`` is ``crowdstrike``.

**Severity**: ``SeverityName`` as Falcon names it, else the numeric ``Severity`` on Falcon's
detection scale:

| Severity | SeverityName | Vigil |
|---|---|---|
| 1 | Informational | info |
| 2 | Low | low |
| 3 | Medium | medium |
| 4 | High | high |
| 5 | Critical | critical |

A numeric severity off that scale without a name (Falcon's newer alerts score 0-100 and always name
it) is ``medium``, saying so.

**Kind**: a detection raised by CrowdStrike's documented test command (a command line containing
``crowdstrike_sample_detection``) is a ``test`` alert.

**Fields**: the detect name with "tactic via technique" is the title (Falcon's own headline); the
description, command line, file and disposition the description; ``Hostname`` (``ComputerName``) the
host, ``UserName`` the user, ``LocalIP`` the destination address (the machine the detection is
about), ``OriginSourceIpAddress`` the source; the tactic the category, tactic/technique/objective the
tags, ``TacticId``/``TechniqueId`` and the tactic's name the ATT&CK ids; ``FalconHostLink`` the URL;
hashes, file, command lines, disposition, sensor and customer ids are labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    attack_ids,
    build_alert,
    dig,
    first,
    identity,
    ip_or_none,
    json_object,
    lines,
    mapping,
    number,
    stable_id,
    string_labels,
    text,
    time_of,
)
from shared.alerts import AlertSeverity

SOURCE = "crowdstrike"
DETECTION_TYPES = {"EppDetectionSummaryEvent", "DetectionSummaryEvent"}
SCALE = {
    1: ("Informational", AlertSeverity.INFO),
    2: ("Low", AlertSeverity.LOW),
    3: ("Medium", AlertSeverity.MEDIUM),
    4: ("High", AlertSeverity.HIGH),
    5: ("Critical", AlertSeverity.CRITICAL),
}
NAMES = {name.lower(): severity for name, severity in SCALE.values()}
TEST_COMMAND = "crowdstrike_sample_detection"
EMPTY = {"", "n/a", "na", "none"}


def _event_type(payload: Mapping[str, Any]) -> str | None:
    """The event's type without Falcon's "Event_" prefix, wherever this shape keeps it."""
    found = first(
        dig(payload, "metadata.eventType"),
        payload.get("ExternalApiType"),
        dig(payload, "event.ExternalApiType"),
        payload.get("fdr_event_type"),
    )
    return found.removeprefix("Event_") if found else None


class CrowdStrike:
    name = "crowdstrike"
    description = "CrowdStrike Falcon detection summary events (streaming API, SIEM connector, FDR)."

    def matches(self, payload: Any) -> bool:
        if not isinstance(payload, dict):
            return False
        metadata = payload.get("metadata")
        if (
            isinstance(metadata, dict)
            and isinstance(metadata.get("eventType"), str)
            and ("customerIDString" in metadata or "offset" in metadata)
            and isinstance(payload.get("event"), Mapping)
        ):
            return True
        flat = payload.get("ExternalApiType")
        wrapped = dig(payload, "event.ExternalApiType")
        return (isinstance(flat, str) and flat.startswith("Event_")) or (
            isinstance(wrapped, str) and wrapped.startswith("Event_")
        )

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "a CrowdStrike event")
        event_type = _event_type(payload)
        if event_type is None:
            raise Rejected(
                "the CrowdStrike event names no type (metadata.eventType, ExternalApiType)", code="missing_fields"
            )
        if event_type not in DETECTION_TYPES:
            return Parsed(format=self.name, skipped=[f"CrowdStrike {event_type}: not a detection"])
        event = mapping(payload.get("event")) or payload
        severity, source_severity, reason = severity_of(event)
        name = first(event.get("Name"), event.get("DetectName"))
        tactic, technique, objective = (_named(event.get(k)) for k in ("Tactic", "Technique", "Objective"))
        command = text(event.get("CommandLine"))
        time = time_of(
            {"event": event, "outer": payload},
            "event.UTCTimestamp",
            "event.timestamp",
            "outer.metadata.eventCreationTime",
            "outer.timestamp",
            "outer.p_event_time",
            what="the CrowdStrike detection",
        )
        sensor = first(event.get("SensorId"), event.get("AgentIdString"), payload.get("aid"))
        alert = build_alert(
            id=identity(event.get("CompositeId"))
            or identity(event.get("DetectId"))
            or stable_id(sensor, event.get("ProcessId"), time.isoformat(), name),
            source=SOURCE,
            title=_title(name, tactic, technique),
            description=_description(event, command),
            severity=severity,
            time=time,
            host=first(event.get("Hostname"), event.get("ComputerName"), payload.get("Hostname")),
            user=text(event.get("UserName")),
            src_ip=ip_or_none(event.get("OriginSourceIpAddress")),
            dst_ip=ip_or_none(event.get("LocalIP")),
            labels=string_labels(
                {
                    "event_type": event_type,
                    "sha256": event.get("SHA256String"),
                    "md5": event.get("MD5String"),
                    "sha1": event.get("SHA1String"),
                    "file": _path(event),
                    "command_line": command,
                    "parent_command_line": event.get("ParentCommandLine"),
                    "disposition": event.get("PatternDispositionDescription"),
                    "objective": objective,
                    "sensor_id": sensor,
                    "customer_id": first(
                        event.get("CustomerIdString"), dig(payload, "metadata.customerIDString"), payload.get("cid")
                    ),
                    "offset": dig(payload, "metadata.offset"),
                    "machine_domain": text(event.get("MachineDomain")),
                }
            ),
            raw=dict(payload),
            format=self.name,
            kind="test" if command and TEST_COMMAND in command.lower() else "alert",
            rule=name,
            category=tactic,
            tags=[t for t in (tactic, technique, objective) if t],
            techniques=attack_ids([event.get("TacticId"), event.get("TechniqueId"), tactic]),
            url=text(event.get("FalconHostLink")),
            source_severity=source_severity,
            severity_reason=reason,
        )
        return Parsed(format=self.name, alerts=[alert])


def severity_of(event: Mapping[str, Any]) -> tuple[AlertSeverity, str | None, str]:
    """Vigil's severity for a Falcon detection, with what Falcon said and the mapping applied."""
    name = text(event.get("SeverityName"))
    if name is not None and name.lower() in NAMES:
        severity = NAMES[name.lower()]
        return severity, f"Falcon {name}", f"Falcon SeverityName {name} -> {severity.value}"
    score = number(event.get("Severity"))
    if score is not None and score.is_integer() and int(score) in SCALE:
        caption, severity = SCALE[int(score)]
        said = f"Falcon severity {int(score)}"
        return severity, said, f"{said} ({caption}) -> {severity.value}"
    if score is not None:
        said = f"Falcon severity {score:g}"
        return AlertSeverity.MEDIUM, said, f"{said} is off the 1-5 detection scale and unnamed -> medium"
    return AlertSeverity.MEDIUM, None, "no Severity or SeverityName -> medium"


def _named(value: Any) -> str | None:
    found = text(value)
    return None if found is None or found.lower() in EMPTY else found


def _title(name: str | None, tactic: str | None, technique: str | None) -> str | None:
    headline = f"{tactic} via {technique}" if tactic and technique else None
    if name and headline:
        return f"{name}: {headline}"
    return name or headline


def _path(event: Mapping[str, Any]) -> str | None:
    directory, file_name = text(event.get("FilePath")), text(event.get("FileName"))
    if directory and file_name and not directory.endswith(file_name):
        return directory + file_name if directory.endswith(("/", "\\")) else f"{directory}/{file_name}"
    return directory or file_name


def _description(event: Mapping[str, Any], command: str | None) -> str:
    return lines(
        (None, first(event.get("Description"), event.get("DetectDescription"))),
        ("command line", command),
        ("file", _path(event)),
        ("disposition", event.get("PatternDispositionDescription")),
    )
