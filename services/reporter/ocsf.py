"""An incident as an OCSF Incident Finding (class 2005, OCSF 1.5.0), for other security tools.

The enumerations are OCSF's own (schema.ocsf.io, incident_finding); what Vigil cannot say maps to
``0`` (Unknown) rather than a guess. Times are epoch milliseconds, as OCSF's ``timestamp_t``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

OCSF_VERSION = "1.5.0"
CLASS_UID = 2005
CATEGORY_UID = 2  # Findings
ACTIVITY_CREATE, ACTIVITY_UPDATE, ACTIVITY_CLOSE = 1, 2, 3

# Vigil's severity -> OCSF severity_id (Critical 5, High 4, Medium 3, Low 2) and priority_id (4..1).
SEVERITY_ID = {"SEV1": 5, "SEV2": 4, "SEV3": 3, "SEV4": 2}
PRIORITY_ID = {"SEV1": 4, "SEV2": 3, "SEV3": 2, "SEV4": 1}
# Lifecycle state -> status_id: New 1, In Progress 2, Resolved 4, Closed 5.
STATUS_ID = {
    "detected": 1,
    "triaged": 1,
    "acknowledged": 2,
    "investigating": 2,
    "contained": 2,
    "eradicated": 2,
    "recovered": 2,
    "resolved": 4,
    "closed": 5,
}
STATUS_NAME = {1: "New", 2: "In Progress", 4: "Resolved", 5: "Closed", 0: "Unknown"}
# How it ended -> verdict_id: False Positive 1, True Positive 2, Duplicate 10, Security Risk 8.
VERDICT_ID = {"false_positive": 1, "fixed": 2, "duplicate": 10, "risk_accepted": 8}
# Impact: the asset inventory's most critical affected asset (1 most critical) -> impact_id (4 Critical .. 1 Low).
IMPACT_ID = {1: 4, 2: 3, 3: 2, 4: 1}
# Indicator kinds -> observable type_id: IP Address 2, Hostname 1, URL String 6, Hash 8, Email Address 5.
OBSERVABLE_TYPE = {"ipv4": 2, "ipv6": 2, "domain": 1, "url": 6, "md5": 8, "sha1": 8, "sha256": 8, "email": 5}


def _ms(at: datetime | None) -> int | None:
    return int(at.timestamp() * 1000) if at is not None else None


def incident_finding(
    incident: Mapping[str, Any], alerts: Sequence[Mapping[str, Any]], *, version: str
) -> dict[str, Any]:
    """The OCSF Incident Finding of one incident; ``version`` is Vigil's, for ``metadata.product``."""
    state = incident.get("state") or "detected"
    status_id = STATUS_ID.get(state, 0)
    ended = status_id in (4, 5)
    activity_id = ACTIVITY_CLOSE if ended else ACTIVITY_CREATE if state == "detected" else ACTIVITY_UPDATE
    analysis = incident.get("analysis") or {}
    impact = analysis.get("impact") or {}
    created = incident.get("first_alert_at") or incident.get("created_at")
    finding: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "Incident Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "type_uid": CLASS_UID * 100 + activity_id,
        "time": _ms(incident.get("updated_at") or created),
        "start_time": _ms(created),
        "severity_id": SEVERITY_ID.get(incident.get("severity") or "", 0),
        "severity": incident.get("severity"),
        "priority_id": PRIORITY_ID.get(incident.get("severity") or "", 0),
        "status_id": status_id,
        "status": STATUS_NAME.get(status_id, "Unknown"),
        "status_detail": state,
        "desc": analysis.get("summary") or incident.get("classification_reason") or "",
        "message": incident.get("title") or "",
        "is_suspected_breach": incident.get("type") in ("security_breach", "system_compromise", "data_leak"),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Vigil", "vendor_name": "Vigil", "version": version},
            "uid": incident["id"],
            "correlation_uid": incident["id"],
        },
        "finding_info_list": [
            {
                "uid": incident["id"],
                "title": incident.get("title") or "",
                "desc": incident.get("classification_reason") or "",
                "types": [incident.get("type") or "unknown"],
                "created_time": _ms(incident.get("created_at")),
                "first_seen_time": _ms(created),
                "modified_time": _ms(incident.get("updated_at")),
                "related_events_count": len(alerts),
                "data_sources": sorted({a["source"] for a in alerts if a.get("source")}),
            }
        ],
        "observables": [
            {"name": f"indicator.{i['kind']}", "type_id": OBSERVABLE_TYPE.get(i["kind"], 99), "value": i["value"]}
            for i in analysis.get("indicators", [])
        ]
        + [{"name": "host", "type_id": 1, "value": host} for host in incident.get("hosts") or []]
        + [{"name": "user", "type_id": 4, "value": user} for user in incident.get("users") or []],
        "count": len(alerts),
    }
    # OCSF asks for an assignee or an assignee group: the commander, else a group that says there is none yet.
    if incident.get("commander"):
        finding["assignee"] = {"name": incident["commander"]}
    else:
        finding["assignee_group"] = {"name": "unassigned"}
    if ended:
        finding["end_time"] = _ms(incident.get("resolved_at"))
        if incident.get("resolution") in VERDICT_ID:
            finding["verdict_id"] = VERDICT_ID[incident["resolution"]]
            finding["verdict"] = incident["resolution"]
    if impact.get("most_critical") in IMPACT_ID:
        finding["impact_id"] = IMPACT_ID[impact["most_critical"]]
    if created is not None and ended and incident.get("resolved_at") is not None:
        finding["duration"] = _ms(incident["resolved_at"]) - _ms(created)  # type: ignore[operator]
    return {key: value for key, value in finding.items() if value is not None}
