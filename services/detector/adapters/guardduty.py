"""Amazon GuardDuty findings, as EventBridge delivers them or bare (the finding JSON of an S3 export or a forwarder).

**Detected by** an EventBridge event from ``source: aws.guardduty`` (or ``detail-type: GuardDuty
Finding``, or a ``detail`` that is a finding), or a bare finding: an object with a ``type`` and a
``severity`` whose ``arn`` is a GuardDuty ARN or whose ``service.serviceName`` is ``guardduty``. The
camelCase finding schema is read (EventBridge, S3 export); the SDK's PascalCase rendering of
``GetFindings`` is not. GuardDuty events that are not findings (malware scan results, runtime
agent health) are accounted as skipped.

**Identity**: the finding ``id``; ``source`` is ``guardduty``. GuardDuty keeps one finding per id
and re-publishes it as the activity recurs (``service.count`` grows, ``updatedAt`` moves): each
re-publication is a repeat of the same alert. The count and both times are kept as labels.

**Severity**: GuardDuty's numeric severity, in AWS's bands (GuardDuty User Guide, *Severity levels
of GuardDuty findings*):

| severity | AWS's level | Vigil |
|---|---|---|
| below 1.0 (reserved by AWS) | - | info |
| 1.0-3.9 | Low | low |
| 4.0-6.9 | Medium | medium |
| 7.0-8.9 | High | high |
| 9.0-10.0 | Critical (attack sequences) | critical |

A severity that is not a number from 0 to 10 is refused (``invalid_fields``).

**Kind and status**: a ``Canary:`` finding type and a sample finding (``service.additionalInfo.sample``
true, as ``CreateSampleFindings`` makes them) are ``test`` alerts, which never open a SEV1/SEV2
incident; an archived finding (``service.archived``) is ``resolved``.

**Fields**: ``title`` and ``description`` as written; the finding type
(``ThreatPurpose:ResourceType/ThreatFamily.DetectionMechanism!Artifact``) is the rule and the
category, and its parts become tags (``threat_purpose:Recon``, ``resource_type:IAMUser``, ...); a
threat purpose that is an ATT&CK tactic (``PrivilegeEscalation``, ``Discovery``, ...) and technique
ids written in the description (attack sequences list them) become techniques. The affected
resource (instance, access key, S3 bucket, EKS/ECS cluster, container, Lambda function, RDS
instance) becomes ``resource``; an EC2 instance id is the host, the access key's, Kubernetes or RDS
user the user. The action's remote and local addresses become source and destination by the
connection's direction (a remote caller or prober is the source). Account, region, partition, ARN,
detector, counts and times are labels; the GuardDuty console link is the alert's URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    build_alert,
    dig,
    first,
    identity,
    ip_or_none,
    json_object,
    mapping,
    number,
    string_labels,
    tactic_id,
    techniques_in,
    text,
    time_of,
)
from shared.alerts import AlertSeverity

SOURCE = "guardduty"
FINDING_DETAIL_TYPE = "GuardDuty Finding"
EVENT_SOURCE = "aws.guardduty"
# (lowest severity of the band, AWS's name, Vigil severity), highest band first.
BANDS = (
    (9.0, "Critical (9.0-10.0)", AlertSeverity.CRITICAL),
    (7.0, "High (7.0-8.9)", AlertSeverity.HIGH),
    (4.0, "Medium (4.0-6.9)", AlertSeverity.MEDIUM),
    (1.0, "Low (1.0-3.9)", AlertSeverity.LOW),
    (0.0, "below AWS's lowest band (1.0)", AlertSeverity.INFO),
)
TYPE_PATTERN = re.compile(
    r"^(?P<purpose>[^:/]+):(?P<resource>[^/]+)/(?P<family>[^.!]+)(?:\.(?P<mechanism>[^!]+))?(?:!(?P<artifact>.+))?$"
)
TYPE_TAGS = {
    "purpose": "threat_purpose",
    "resource": "resource_type",
    "family": "threat_family",
    "mechanism": "detection_mechanism",
    "artifact": "artifact",
}
# Where each resource type names itself: (details key, the fields that identify it).
RESOURCE_IDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Instance": ("instanceDetails", ("instanceId",)),
    "AccessKey": ("accessKeyDetails", ("accessKeyId",)),
    "EKSCluster": ("eksClusterDetails", ("name", "arn")),
    "ECSCluster": ("ecsClusterDetails", ("name", "arn")),
    "Container": ("containerDetails", ("name", "id")),
    "Lambda": ("lambdaDetails", ("functionName", "functionArn")),
    "RDSDBInstance": ("rdsDbInstanceDetails", ("dbInstanceIdentifier", "dbClusterIdentifier")),
    "EBSVolume": ("ebsVolumeDetails", ("volumeArn",)),
}
# Resource types whose findings come from a workload running on an EC2 instance (runtime monitoring).
ON_AN_INSTANCE = {"Instance", "EKSCluster", "ECSCluster", "Container"}


def is_finding(value: Any) -> bool:
    """Whether the value has a GuardDuty finding's shape."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str) or "severity" not in value:
        return False
    arn = value.get("arn")
    return (isinstance(arn, str) and ":guardduty:" in arn) or dig(value, "service.serviceName") == "guardduty"


class GuardDuty:
    name = "guardduty"
    description = "Amazon GuardDuty findings, bare or in an EventBridge event (detail-type GuardDuty Finding)."

    def matches(self, payload: Any) -> bool:
        if not isinstance(payload, dict):
            return False
        return (
            payload.get("source") == EVENT_SOURCE
            or payload.get("detail-type") == FINDING_DETAIL_TYPE
            or is_finding(payload)
            or is_finding(payload.get("detail"))
        )

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "a GuardDuty finding")
        envelope: Mapping[str, Any] = {}
        finding: Any = payload
        if "detail" in payload and not is_finding(payload):
            envelope, finding = payload, payload.get("detail")
            detail_type = text(payload.get("detail-type"))
            if detail_type is not None and detail_type != FINDING_DETAIL_TYPE:
                return Parsed(
                    format=self.name,
                    skipped=[f"GuardDuty event {detail_type!r}: not a finding (only {FINDING_DETAIL_TYPE!r} is)"],
                )
        if not isinstance(finding, dict):
            raise Rejected("the EventBridge event carries no GuardDuty finding in detail", code="missing_fields")
        finding_id = identity(finding.get("id"))
        if finding_id is None:
            raise Rejected("the GuardDuty finding has no id", code="missing_fields")
        finding_type = text(finding.get("type"))
        severity, source_severity, reason = severity_of(finding.get("severity"))
        service = mapping(finding.get("service"))
        resource = mapping(finding.get("resource"))
        src_ip, dst_ip = _addresses(mapping(service.get("action")))
        host, user, named = _resource(resource)
        resource_name = first(named, _affected(mapping(service.get("action"))), resource.get("resourceType"))
        account = first(finding.get("accountId"), envelope.get("account"))
        region = first(finding.get("region"), envelope.get("region"))
        alert = build_alert(
            id=finding_id,
            source=SOURCE,
            title=first(finding.get("title"), finding_type),
            description=first(finding.get("description"), finding.get("title")) or "",
            severity=severity,
            time=time_of(
                {"finding": finding, "event": envelope},
                "finding.updatedAt",
                "finding.createdAt",
                "finding.service.eventLastSeen",
                "event.time",
                what="the GuardDuty finding",
            ),
            host=host,
            user=user,
            src_ip=src_ip,
            dst_ip=dst_ip,
            labels=string_labels(
                {
                    "account_id": account,
                    "region": region,
                    "partition": finding.get("partition"),
                    "arn": finding.get("arn"),
                    "detector_id": service.get("detectorId"),
                    "count": service.get("count"),
                    "created_at": finding.get("createdAt"),
                    "updated_at": finding.get("updatedAt"),
                    "event_first_seen": service.get("eventFirstSeen"),
                    "event_last_seen": service.get("eventLastSeen"),
                    "resource_role": service.get("resourceRole"),
                    "action_type": dig(service, "action.actionType"),
                    "feature": service.get("featureName"),
                    "archived": service.get("archived"),
                }
            ),
            raw=dict(payload),
            format=self.name,
            status="resolved" if _true(service.get("archived")) else "firing",
            kind="test" if _is_test(finding_type, service) else "alert",
            rule=finding_type,
            category=finding_type,
            tags=_type_tags(finding_type),
            techniques=_techniques(finding_type, finding.get("description")),
            resource=resource_name,
            url=_console_url(finding_id, region, finding.get("partition")),
            source_severity=source_severity,
            severity_reason=reason,
        )
        return Parsed(format=self.name, alerts=[alert])


def severity_of(value: Any) -> tuple[AlertSeverity, str, str]:
    """Vigil's severity for GuardDuty's numeric severity, with the value as GuardDuty said it and the band."""
    if value is None:
        raise Rejected("the GuardDuty finding has no severity", code="missing_fields")
    score = number(value)
    if score is None or not 0 <= score <= 10:
        raise Rejected(f"severity {value!r} is not a GuardDuty severity (0-10)", code="invalid_fields")
    said = f"GuardDuty severity {score:g}"
    for lowest, band, severity in BANDS:
        if score >= lowest:
            return severity, said, f"{said} is {band} -> {severity.value}"
    raise AssertionError("the bands cover 0-10")  # pragma: no cover


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _is_test(finding_type: str | None, service: Mapping[str, Any]) -> bool:
    return (finding_type or "").startswith("Canary:") or _true(dig(service, "additionalInfo.sample"))


def _type_tags(finding_type: str | None) -> list[str]:
    match = TYPE_PATTERN.match(finding_type or "")
    if match is None:
        return []
    return [f"{TYPE_TAGS[part]}:{value}" for part, value in match.groupdict().items() if value]


def _techniques(finding_type: str | None, description: Any) -> list[str]:
    found = set(techniques_in([description]))
    match = TYPE_PATTERN.match(finding_type or "")
    if match is not None and (tactic := tactic_id(match.group("purpose"))) is not None:
        found.add(tactic)
    return sorted(found)


def _addresses(action: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(source, destination) of the finding's action: the remote end is the source unless it went outbound."""
    for key, detail in action.items():
        if not key.endswith("Action") or not isinstance(detail, dict):
            continue
        probes = detail.get("portProbeDetails")
        if isinstance(probes, list) and probes:
            detail = mapping(probes[0])
        remote = _ip(detail.get("remoteIpDetails"))
        local = _ip(detail.get("localIpDetails"))
        if detail.get("connectionDirection") == "OUTBOUND":
            return local, remote
        return remote, local
    return None, None


def _affected(action: Mapping[str, Any]) -> str | None:
    """The resource an API call acted on, as "AWS::IAM::Role arn:..." (when the finding names no other)."""
    for key, detail in action.items():
        affected = mapping(mapping(detail).get("affectedResources")) if key.endswith("Action") else {}
        for resource_type, name in affected.items():
            if (found := text(name)) is not None:
                return f"{resource_type} {found}"
    return None


def _ip(details: Any) -> str | None:
    details = mapping(details)
    return ip_or_none(details.get("ipAddressV4")) or ip_or_none(details.get("ipAddressV6"))


def _resource(resource: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(host, user, "<type> <name>") of the finding's affected resource, each None when it does not say."""
    resource_type = text(resource.get("resourceType"))
    instance_id = text(dig(resource, "instanceDetails.instanceId"))
    host = instance_id if resource_type in ON_AN_INSTANCE else None
    user = first(
        dig(resource, "accessKeyDetails.userName"),
        dig(resource, "kubernetesDetails.kubernetesUserDetails.username"),
        dig(resource, "rdsDbUserDetails.user"),
    )
    names: list[str] = []
    if resource_type == "S3Bucket":
        buckets = resource.get("s3BucketDetails")
        for bucket in buckets if isinstance(buckets, list) else []:
            if (name := first(mapping(bucket).get("name"), mapping(bucket).get("arn"))) is not None:
                names.append(name)
    elif resource_type in RESOURCE_IDS:
        details_key, fields = RESOURCE_IDS[resource_type]
        details = mapping(resource.get(details_key))
        if (name := first(*(details.get(f) for f in fields))) is not None:
            names.append(name)
    return host, user, f"{resource_type} {', '.join(names)}" if names else None


def _console_url(finding_id: str, region: str | None, partition: Any) -> str | None:
    # The console's deep link to one finding (as Security Hub's GuardDuty findings carry it); the
    # commercial partition only, the others have consoles of their own.
    if region is None or partition not in (None, "aws"):
        return None
    if not re.fullmatch(r"[a-z0-9-]+", region) or not re.fullmatch(r"[0-9a-f]+", finding_id):
        return None
    return f"https://{region}.console.aws.amazon.com/guardduty/home?region={region}#/findings?macros=current&fId={finding_id}"
