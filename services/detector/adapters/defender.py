"""Microsoft Defender XDR alerts: Graph security alerts (v2), Defender for Endpoint API alerts, the
alerts of the Microsoft 365 Defender incidents API, and the AlertInfo / AlertEvidence rows of
Defender's streaming API (advanced hunting tables).

**Detected by** an alert with its id, ``title`` and ``severity`` plus Defender's own keys: Graph's
``createdDateTime`` with ``detectionSource``, ``serviceSource`` or ``providerAlertId`` (or the
``@odata.type`` ``#microsoft.graph.security.alert``), the Endpoint API's ``alertCreationTime`` with
``machineId`` or ``detectionSource``, or the incidents API's ``alertId`` and ``creationTime`` with
``devices`` or a source; or a streamed row, ``category`` ``AdvancedHunting-<table>`` with
its ``properties``. Rows of other advanced-hunting tables (device, e-mail, identity events ...) are
telemetry and accounted as skipped.

**Identity**: the alert id (``id``; ``alertId`` in the incidents API, ``properties.AlertId`` when
streamed: the same id), ``source`` ``defender``. Defender streams one AlertInfo row and one
AlertEvidence row per entity of an alert, all with its AlertId: they are one alert, repeated;
whichever arrives first is the one stored (an evidence row names a device, an AlertInfo row does not).

**Severity**: Defender's own scale, one to one (it has no critical):

| Defender | Vigil |
|---|---|
| informational | info |
| low | low |
| medium | medium |
| high | high |
| unknown, unspecified, none | medium |

**Status and kind**: ``status`` resolved is ``resolved``. The alert of Defender for Endpoint's
onboarding detection test (its title starts with "[Test Alert]") is a ``test`` alert.

**Fields**: title and description as written; ``category`` the category, and an ATT&CK tactic when
it names one (``DefenseEvasion``); ``mitreTechniques`` (``AttackTechniques`` when streamed) the
techniques. The host is the device's ``deviceDnsName`` (``devices``, device evidence;
``computerDnsName``, ``DeviceName``), the user the user evidence's or entity's account
(``relatedUser``, ``AccountName``); an IP evidence or entity (Defender does not say which end it
was) is the source address, a streamed row's ``RemoteIP`` and ``LocalIP`` the source and
destination. ``alertWebUrl`` is the URL; incident,
detection and service sources, classification, determination, threat and tenant are labels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    build_alert,
    dig,
    first,
    identity,
    ip_or_none,
    json_object,
    listed,
    mapping,
    string_labels,
    strings,
    tactic_id,
    techniques_in,
    text,
    time_of,
)
from shared.alerts import AlertSeverity

SOURCE = "defender"
GRAPH_ALERT = "#microsoft.graph.security.alert"
HUNTING = "AdvancedHunting-"
ALERT_TABLES = {"AlertInfo", "AlertEvidence"}
SEVERITIES = {
    "informational": AlertSeverity.INFO,
    "low": AlertSeverity.LOW,
    "medium": AlertSeverity.MEDIUM,
    "high": AlertSeverity.HIGH,
}
TEST_ALERT = "[Test Alert]"


def _is_alert(payload: Mapping[str, Any]) -> bool:
    if payload.get("@odata.type") == GRAPH_ALERT:
        return True
    if "title" not in payload or "severity" not in payload:
        return False
    sources = ("detectionSource", "serviceSource")
    graph = (
        "id" in payload and "createdDateTime" in payload and any(k in payload for k in (*sources, "providerAlertId"))
    )
    endpoint = "id" in payload and "alertCreationTime" in payload and any(k in payload for k in ("machineId", *sources))
    incident = "alertId" in payload and "creationTime" in payload and any(k in payload for k in ("devices", *sources))
    return graph or endpoint or incident


def _hunting_table(payload: Mapping[str, Any]) -> str | None:
    category = payload.get("category")
    if isinstance(category, str) and category.startswith(HUNTING) and isinstance(payload.get("properties"), Mapping):
        return category.removeprefix(HUNTING)
    return None


class Defender:
    name = "defender"
    description = (
        "Microsoft Defender XDR alerts: Graph alerts v2, Endpoint API alerts, streamed AlertInfo/AlertEvidence."
    )

    def matches(self, payload: Any) -> bool:
        return isinstance(payload, dict) and (_is_alert(payload) or _hunting_table(payload) is not None)

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "a Defender alert")
        table = _hunting_table(payload)
        if table is not None and table not in ALERT_TABLES:
            return Parsed(format=self.name, skipped=[f"Defender advanced hunting {table} row: telemetry, not an alert"])
        fields = _streamed(payload) if table is not None else _alert(payload)
        severity, source_severity, reason = severity_of(fields.pop("severity"))
        category = text(fields.pop("category"))
        techniques = set(techniques_in(strings(fields.pop("techniques"))))
        if (tactic := tactic_id(category)) is not None:
            techniques.add(tactic)
        title = text(fields.get("title"))
        alert = build_alert(
            **fields,
            source=SOURCE,
            severity=severity,
            raw=dict(payload),
            format=self.name,
            kind="test" if title and title.startswith(TEST_ALERT) else "alert",
            category=category,
            techniques=sorted(techniques),
            source_severity=source_severity,
            severity_reason=reason,
        )
        return Parsed(format=self.name, alerts=[alert])


def severity_of(value: Any) -> tuple[AlertSeverity, str | None, str]:
    """Vigil's severity for Defender's, with what Defender said and the mapping applied."""
    said = text(value)
    if said is None:
        return AlertSeverity.MEDIUM, None, "no severity -> medium"
    severity = SEVERITIES.get(said.lower())
    if severity is None:
        return AlertSeverity.MEDIUM, f"Defender {said}", f"Defender severity {said} is not rated -> medium"
    return severity, f"Defender {said}", f"Defender severity {said} -> {severity.value}"


def _alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised fields of a Graph (v2), Defender for Endpoint API or incidents API alert."""
    evidence = [mapping(e) for e in [*listed(alert.get("evidence")), *listed(alert.get("entities"))]]
    devices = [mapping(d) for d in listed(alert.get("devices"))]
    device = next((e for e in [*devices, *evidence] if "deviceDnsName" in e or e.get("entityType") == "Machine"), {})
    account = next((mapping(e.get("userAccount")) or e for e in evidence if _is_user(e)), {})
    related = mapping(alert.get("relatedUser"))
    ip = next((ip for e in evidence if (ip := ip_or_none(e.get("ipAddress"))) is not None), None)
    return {
        "id": identity(first(alert.get("id"), alert.get("alertId"))),
        "title": text(alert.get("title")),
        "description": first(alert.get("description"), alert.get("title")) or "",
        "severity": alert.get("severity"),
        "time": time_of(
            alert,
            "createdDateTime",
            "alertCreationTime",
            "creationTime",
            "firstActivityDateTime",
            "firstEventTime",
            "firstActivity",
            what="the Defender alert",
        ),
        "host": first(alert.get("computerDnsName"), device.get("deviceDnsName"), device.get("computerDnsName")),
        "user": first(related.get("userName"), account.get("accountName"), account.get("userPrincipalName")),
        "src_ip": ip,
        "status": "resolved" if (text(alert.get("status")) or "").lower() == "resolved" else "firing",
        "category": alert.get("category"),
        "tags": strings(alert.get("systemTags")),
        "techniques": alert.get("mitreTechniques"),
        "url": text(alert.get("alertWebUrl")),
        "labels": string_labels(
            {
                "incident_id": alert.get("incidentId"),
                "provider_alert_id": alert.get("providerAlertId"),
                "service_source": alert.get("serviceSource"),
                "detection_source": alert.get("detectionSource"),
                "detector_id": alert.get("detectorId"),
                "classification": alert.get("classification"),
                "determination": alert.get("determination"),
                "threat": first(alert.get("threatDisplayName"), alert.get("threatName")),
                "threat_family": alert.get("threatFamilyName"),
                "machine_id": first(alert.get("machineId"), device.get("mdeDeviceId"), device.get("mdatpDeviceId")),
                "tenant_id": first(alert.get("tenantId"), alert.get("aadTenantId")),
            }
        ),
    }


def _is_user(evidence: Mapping[str, Any]) -> bool:
    return "userAccount" in evidence or evidence.get("entityType") == "User"


def _streamed(row: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised fields of a streamed AlertInfo or AlertEvidence row."""
    properties = mapping(row.get("properties"))
    account = first(properties.get("AccountName"), properties.get("AccountUpn"))
    return {
        "id": identity(properties.get("AlertId")),
        "title": text(properties.get("Title")),
        "description": text(properties.get("Title")) or "",
        "severity": properties.get("Severity"),
        "time": time_of(row, "properties.Timestamp", "time", what="the Defender alert row"),
        "host": text(properties.get("DeviceName")),
        "user": account,
        "src_ip": ip_or_none(properties.get("RemoteIP")),
        "dst_ip": ip_or_none(properties.get("LocalIP")),
        "category": first(properties.get("Category"), *_json_strings(properties.get("Categories"))),
        "techniques": properties.get("AttackTechniques"),
        "labels": string_labels(
            {
                "table": dig(row, "category"),
                "service_source": properties.get("ServiceSource"),
                "detection_source": properties.get("DetectionSource"),
                "entity_type": properties.get("EntityType"),
                "evidence_role": properties.get("EvidenceRole"),
                "device_id": properties.get("DeviceId"),
                "sha256": properties.get("SHA256"),
                "file_name": properties.get("FileName"),
                "command_line": properties.get("ProcessCommandLine"),
                "tenant_id": row.get("tenantId"),
            }
        ),
    }


def _json_strings(value: Any) -> list[str]:
    """The strings of a JSON array written as text (``"[\\"DefenseEvasion\\"]"``), as advanced hunting does."""
    if not isinstance(value, str):
        return strings(value)
    try:
        return strings(json.loads(value))
    except ValueError:
        return []
