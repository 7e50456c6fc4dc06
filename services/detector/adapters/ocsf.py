"""OCSF findings: Detection Finding (class 2004) and Security Finding (class 2001), schema versions 1.x.

**Detected by** an object with an integer ``class_uid`` and a ``metadata`` object naming the
``product`` or the schema ``version`` (every OCSF event has both).

**Versions**: ``metadata.version`` must be 1.x. It is tested on 1.0 to 1.5 (1.0's Security Finding
with its ``finding`` object and ``state_id``; 1.1's Detection Finding with ``finding_info``,
``evidences`` and ``status_id``); later 1.x minors only add attributes, so they are read too. Any
other major version (0.x drafts, a product's own version written in its place), or none, is refused
with ``unsupported_version``.

**Other classes**: events of other categories (system, network, identity activity ...) are
telemetry, not alerts: they are accounted as skipped, as a Suricata flow record is. Other classes
of the Findings category (Vulnerability, Compliance, Incident, Data Security ... Findings) may well
be meant as alerts, but this adapter does not read them: they are refused with
``unsupported_class``, naming the class, so that an operator sees them in the dead-letter topic
(with the bytes to replay) instead of losing them quietly. A finding whose producer sets
``is_alert: false`` is skipped, unless it closes or resolves one.

**Identity**: ``finding_info.uid`` (``finding.uid`` in 1.0); ``source`` is ``ocsf/<product>``
(``metadata.product.name``, else its vendor). A finding without a uid is identified by a digest of
its product, title and time. An update of the finding (``activity_id`` 2) is a repeat of it.

**Severity**: ``severity_id``, OCSF's normalised scale:

| severity_id | OCSF | Vigil |
|---|---|---|
| 0 | Unknown | medium (no severity given: neither dismissed nor escalated) |
| 1 | Informational | info |
| 2 | Low | low |
| 3 | Medium | medium |
| 4 | High | high |
| 5 | Critical | critical |
| 6 | Fatal | critical |
| 99 | Other | the ``severity`` label read as one of the above, else medium |

**Status**: a finding is ``resolved`` when it is closed (``activity_id`` 3), when its ``status_id``
(Detection Finding) is 3 Suppressed, 4 Resolved, 5 Archived or 6 Deleted, when its ``state_id``
(Security Finding) is 3 Suppressed or 4 Resolved, or when the check it reports passed
(``status_code`` PASS, as Prowler writes it, or ``compliance.status_id`` 1 Pass): such a record
resolves the stored alert of the same uid.

**Fields**: ``finding_info.title`` (else ``message``) is the title, ``desc`` (else ``message``)
the description, ``types`` the tags and the first type the category, the analytic's name or uid the
rule; ATT&CK ids come from ``attacks`` (technique, sub-technique and tactic uids, tactics by name).
``device`` (hostname, name, ip) is the host; the evidences' and the event's ``src_endpoint`` and
``dst_endpoint`` the addresses (the device's ip stands in for the destination; an affected resource
identified by an address is the destination); ``actor.user`` or an evidence's user the user; the
affected ``resources`` the resource; ``finding_info.src_url`` the URL. Cloud account, region and
provider, the class, version, product and confidence are labels.
"""

from __future__ import annotations

import re
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
    listed,
    mapping,
    number,
    slug,
    stable_id,
    string_labels,
    strings,
    text,
    time_of,
    values_under,
)
from shared.alerts import AlertSeverity

DETECTION_FINDING = 2004
SECURITY_FINDING = 2001
SUPPORTED_MAJOR = 1
FINDINGS_CATEGORY = 2
SEVERITY_IDS = {
    0: ("Unknown", AlertSeverity.MEDIUM),
    1: ("Informational", AlertSeverity.INFO),
    2: ("Low", AlertSeverity.LOW),
    3: ("Medium", AlertSeverity.MEDIUM),
    4: ("High", AlertSeverity.HIGH),
    5: ("Critical", AlertSeverity.CRITICAL),
    6: ("Fatal", AlertSeverity.CRITICAL),
}
OTHER = 99
SEVERITY_LABELS = {caption.lower(): severity for caption, severity in SEVERITY_IDS.values()} | {
    "info": AlertSeverity.INFO
}
RESOLVED_STATUS_IDS = {3, 4, 5, 6}  # Suppressed, Resolved, Archived, Deleted (Detection Finding)
RESOLVED_STATE_IDS = {3, 4}  # Suppressed, Resolved (Security Finding)
RESOLVED_LABELS = {"suppressed", "resolved", "archived", "deleted"}
CLOSE_ACTIVITY = 3
PASSED = 1  # compliance.status_id Pass


class Ocsf:
    name = "ocsf"
    description = "OCSF Detection Finding (2004) and Security Finding (2001), schema 1.x."

    def matches(self, payload: Any) -> bool:
        if not isinstance(payload, dict):
            return False
        class_uid, metadata = payload.get("class_uid"), payload.get("metadata")
        return (
            isinstance(class_uid, int)
            and not isinstance(class_uid, bool)
            and isinstance(metadata, dict)
            and ("product" in metadata or "version" in metadata)
        )

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "an OCSF event")
        class_uid = number(payload.get("class_uid"))
        class_name = first(payload.get("class_name"), payload.get("classname")) or "an unnamed class"
        if class_uid is None or not class_uid.is_integer():
            raise Rejected(f"class_uid {payload.get('class_uid')!r} is not an OCSF class", code="invalid_fields")
        if class_uid // 1000 != FINDINGS_CATEGORY:
            return Parsed(
                format=self.name,
                skipped=[f"OCSF {class_name} (class {int(class_uid)}): an activity event, not a finding"],
            )
        if class_uid not in (DETECTION_FINDING, SECURITY_FINDING):
            raise Rejected(
                f"OCSF {class_name} (class {int(class_uid)}) is not read: only Detection Finding (2004) and "
                "Security Finding (2001) are",
                code="unsupported_class",
            )
        metadata = mapping(payload.get("metadata"))
        version = _supported_version(metadata.get("version"))
        info = mapping(payload.get("finding_info")) or mapping(payload.get("finding"))
        resolved = _resolved(payload, class_uid)
        if payload.get("is_alert") is False and not resolved:
            return Parsed(
                format=self.name,
                skipped=[f"OCSF {class_name} {text(info.get('uid')) or '(no uid)'}: marked is_alert false"],
            )
        product = first(dig(metadata, "product.name"), dig(metadata, "product.vendor_name"))
        time = time_of(payload, "time", "time_dt", what="the OCSF finding")
        title = first(info.get("title"), payload.get("message"))
        severity, source_severity, reason = severity_of(payload)
        evidences = listed(payload.get("evidences"))
        src_ip, dst_ip = _addresses(payload, evidences)
        types = strings(info.get("types"))
        analytic = mapping(info.get("analytic")) or mapping(payload.get("analytic"))
        alert = build_alert(
            id=identity(info.get("uid")) or stable_id(product, title, time.isoformat()),
            source=f"ocsf/{slug(product, default='unknown')}" if product else "ocsf",
            title=title,
            description=first(info.get("desc"), payload.get("message"), payload.get("status_detail")) or "",
            severity=severity,
            time=time,
            host=first(dig(payload, "device.hostname"), dig(payload, "device.name"), *_evidence(evidences, "device")),
            user=first(
                dig(payload, "actor.user.name"),
                *_evidence(evidences, "actor.user.name", "user.name"),
                dig(payload, "user.name"),
            ),
            src_ip=src_ip,
            dst_ip=dst_ip,
            labels=string_labels(
                {
                    "class": f"{class_name} ({int(class_uid)})",
                    "ocsf_version": version,
                    "product": product,
                    "vendor": dig(metadata, "product.vendor_name"),
                    "event_code": metadata.get("event_code"),
                    "activity": payload.get("activity_name"),
                    "status": first(payload.get("status"), payload.get("state")),
                    "status_code": payload.get("status_code"),
                    "confidence": first(payload.get("confidence"), payload.get("confidence_score")),
                    "cloud_provider": dig(payload, "cloud.provider"),
                    "cloud_account": first(dig(payload, "cloud.account.uid"), dig(payload, "cloud.account_uid")),
                    "cloud_region": dig(payload, "cloud.region"),
                }
            ),
            raw=dict(payload),
            format=self.name,
            status="resolved" if resolved else "firing",
            rule=first(analytic.get("name"), analytic.get("uid")),
            category=types[0] if types else None,
            tags=types,
            techniques=attack_ids(values_under([payload.get("attacks"), info.get("attacks")], "uid", "name")),
            resource=_resources(payload.get("resources")),
            url=text(info.get("src_url")),
            source_severity=source_severity,
            severity_reason=reason,
        )
        return Parsed(format=self.name, alerts=[alert])


def _supported_version(value: Any) -> str:
    version = text(value)
    if version is None:
        raise Rejected("the OCSF event names no schema version (metadata.version)", code="unsupported_version")
    major = re.match(r"^v?(\d+)\.\d+", version)
    if major is None or int(major.group(1)) != SUPPORTED_MAJOR:
        raise Rejected(
            f"OCSF schema version {version!r} is not read: only 1.x is (tested on 1.0-1.5)",
            code="unsupported_version",
        )
    return version


def severity_of(payload: Mapping[str, Any]) -> tuple[AlertSeverity, str, str]:
    """Vigil's severity for an OCSF severity_id, with what the event said and the mapping applied."""
    raw_id, label = payload.get("severity_id"), text(payload.get("severity"))
    if raw_id is None and label is None:
        raise Rejected("the OCSF finding has no severity_id", code="missing_fields")
    severity_id = number(raw_id) if raw_id is not None else float(OTHER)
    if severity_id is None or not severity_id.is_integer():
        raise Rejected(f"severity_id {raw_id!r} is not an OCSF severity id", code="invalid_fields")
    said = f"OCSF severity_id {int(severity_id)}" + (f" ({label})" if label else "")
    if int(severity_id) in SEVERITY_IDS:
        caption, severity = SEVERITY_IDS[int(severity_id)]
        return severity, said, f"{said}: {caption} -> {severity.value}"
    if label is not None and label.lower() in SEVERITY_LABELS:
        severity = SEVERITY_LABELS[label.lower()]
        return severity, said, f"{said}: the label {label!r} -> {severity.value}"
    return AlertSeverity.MEDIUM, said, f"{said}: not on OCSF's scale -> medium"


def _resolved(payload: Mapping[str, Any], class_uid: float) -> bool:
    if number(payload.get("activity_id")) == CLOSE_ACTIVITY:
        return True
    if class_uid == DETECTION_FINDING:
        status_id, label = number(payload.get("status_id")), text(payload.get("status"))
    else:  # a Security Finding's status is the event's outcome; its state is the finding's
        status_id, label = number(payload.get("state_id")), text(payload.get("state"))
    resolved_ids = RESOLVED_STATUS_IDS if class_uid == DETECTION_FINDING else RESOLVED_STATE_IDS
    if status_id in resolved_ids or (status_id in (None, OTHER) and (label or "").lower() in RESOLVED_LABELS):
        return True
    passed = (text(payload.get("status_code")) or "").upper() == "PASS"
    return passed or number(dig(payload, "compliance.status_id")) == PASSED


def _evidence(evidences: list[Any], *paths: str) -> list[Any]:
    """The values at ``paths`` in each evidence, in order (a device path yields its hostname, then name)."""
    found: list[Any] = []
    for evidence in evidences:
        for path in paths:
            if path == "device":
                found += [dig(evidence, "device.hostname"), dig(evidence, "device.name")]
            else:
                found.append(dig(evidence, path))
    return found


def _addresses(payload: Mapping[str, Any], evidences: list[Any]) -> tuple[str | None, str | None]:
    holders = [payload, *evidences]
    src_ip = next((ip for h in holders if (ip := ip_or_none(dig(h, "src_endpoint.ip"))) is not None), None)
    dst_ip = next((ip for h in holders if (ip := ip_or_none(dig(h, "dst_endpoint.ip"))) is not None), None)
    resources = listed(payload.get("resources"))
    dst_ip = (
        dst_ip
        or ip_or_none(dig(payload, "device.ip"))
        or next((ip for r in resources if (ip := ip_or_none(mapping(r).get("uid"))) is not None), None)
    )
    return src_ip, dst_ip


def _resources(resources: Any) -> str | None:
    names: list[str] = []
    for item in listed(resources):
        resource = mapping(item)
        name = first(resource.get("uid"), resource.get("name"))
        if name is not None:
            kind = text(resource.get("type"))
            names.append(f"{kind} {name}" if kind else name)
    return ", ".join(names[:3]) or None
