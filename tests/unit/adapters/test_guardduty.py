"""Amazon GuardDuty findings: the public samples, examples from AWS's documentation, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.guardduty import GuardDuty
from tests.unit.adapters.corpus import records

ADAPTER = GuardDuty()
DIRECTORY = "aws_guardduty"


def finding(**overrides: Any) -> dict[str, Any]:
    """A finding in the camelCase schema of the GuardDuty User Guide ("Finding details", EventBridge format)."""
    base: dict[str, Any] = {
        "schemaVersion": "2.0",
        "accountId": "111122223333",
        "region": "eu-west-1",
        "partition": "aws",
        "id": "5ab1b4c2f1e3d7a9e0c1b2a3d4e5f601",
        "arn": "arn:aws:guardduty:eu-west-1:111122223333:detector/12abc34d567e8fa901bc2d34e56789f0/finding/"
        "5ab1b4c2f1e3d7a9e0c1b2a3d4e5f601",
        "type": "Backdoor:EC2/C&CActivity.B!DNS",
        "resource": {
            "resourceType": "Instance",
            "instanceDetails": {"instanceId": "i-0a1b2c3d4e5f67890", "instanceType": "t3.large"},
        },
        "service": {
            "serviceName": "guardduty",
            "detectorId": "12abc34d567e8fa901bc2d34e56789f0",
            "action": {
                "actionType": "DNS_REQUEST",
                "dnsRequestAction": {"domain": "c2.example.net", "protocol": "UDP", "blocked": False},
            },
            "resourceRole": "TARGET",
            "additionalInfo": {},
            "eventFirstSeen": "2024-06-01T10:00:00.000Z",
            "eventLastSeen": "2024-06-01T10:20:00.000Z",
            "archived": False,
            "count": 3,
        },
        "severity": 8,
        "createdAt": "2024-06-01T10:05:00.000Z",
        "updatedAt": "2024-06-01T10:25:00.000Z",
        "title": "Command and Control server domain name queried by EC2 instance i-0a1b2c3d4e5f67890.",
        "description": "EC2 instance i-0a1b2c3d4e5f67890 is querying a domain name associated with a known "
        "Command & Control server.",
    }
    base.update(overrides)
    return base


def service(**overrides: Any) -> dict[str, Any]:
    return {**finding()["service"], **overrides}


# An EventBridge event as GuardDuty publishes it (GuardDuty User Guide, "Creating custom responses
# to GuardDuty findings with Amazon EventBridge": version, id, detail-type, source, account, time,
# region, resources, detail = the complete finding JSON).
EVENTBRIDGE: dict[str, Any] = {
    "version": "0",
    "id": "c8c4daa7-a20c-2f03-0070-b7393dd542ad",
    "detail-type": "GuardDuty Finding",
    "source": "aws.guardduty",
    "account": "111122223333",
    "time": "2024-06-01T10:25:03Z",
    "region": "eu-west-1",
    "resources": [],
    "detail": finding(),
}

# An outbound connection from an instance to a mining pool ("CryptoCurrency:EC2/BitcoinTool.B",
# networkConnectionAction with connectionDirection OUTBOUND, local and remote IP details).
OUTBOUND = finding(
    id="7c0e3b8a9d2f4e6a8b1c3d5e7f9a0b2c",
    type="CryptoCurrency:EC2/BitcoinTool.B",
    severity=5,
    service=service(
        action={
            "actionType": "NETWORK_CONNECTION",
            "networkConnectionAction": {
                "connectionDirection": "OUTBOUND",
                "localIpDetails": {"ipAddressV4": "10.0.0.5"},
                "remoteIpDetails": {"ipAddressV4": "203.0.113.7"},
                "remotePortDetails": {"port": 3333},
                "protocol": "TCP",
            },
        }
    ),
)

# A port probe ("Recon:EC2/PortProbeUnprotectedPort", portProbeAction.portProbeDetails[]).
PORT_PROBE = finding(
    id="9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b",
    type="Recon:EC2/PortProbeUnprotectedPort",
    severity=2,
    service=service(
        action={
            "actionType": "PORT_PROBE",
            "portProbeAction": {
                "blocked": False,
                "portProbeDetails": [
                    {
                        "localPortDetails": {"port": 22, "portName": "SSH"},
                        "localIpDetails": {"ipAddressV4": "10.0.0.9"},
                        "remoteIpDetails": {"ipAddressV4": "198.51.100.23"},
                    }
                ],
            },
        }
    ),
)

# A Kubernetes audit-log finding (resourceType EKSCluster, kubernetesDetails, kubernetesApiCallAction).
KUBERNETES = finding(
    id="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    type="Discovery:Kubernetes/MaliciousIPCaller",
    severity=5,
    resource={
        "resourceType": "EKSCluster",
        "eksClusterDetails": {"name": "prod-cluster", "arn": "arn:aws:eks:eu-west-1:111122223333:cluster/prod"},
        "kubernetesDetails": {"kubernetesUserDetails": {"username": "system:anonymous", "groups": []}},
    },
    service=service(
        action={
            "actionType": "KUBERNETES_API_CALL",
            "kubernetesApiCallAction": {
                "requestUri": "/api/v1/secrets",
                "verb": "list",
                "remoteIpDetails": {"ipAddressV4": "203.0.113.99"},
            },
        }
    ),
)

# An RDS login finding (resourceType RDSDBInstance, rdsDbInstanceDetails, rdsDbUserDetails).
RDS_LOGIN = finding(
    id="1a2b3c4d5e6f708192a3b4c5d6e7f809",
    type="CredentialAccess:RDS/AnomalousBehavior.SuccessfulLogin",
    severity=4,
    resource={
        "resourceType": "RDSDBInstance",
        "rdsDbInstanceDetails": {"dbInstanceIdentifier": "orders-db", "engine": "aurora-postgresql"},
        "rdsDbUserDetails": {"user": "app_admin", "application": "psql"},
    },
    service=service(
        action={
            "actionType": "RDS_LOGIN_ATTEMPT",
            "rdsLoginAttemptAction": {"remoteIpDetails": {"ipAddressV4": "192.0.2.44"}},
        }
    ),
)

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [EVENTBRIDGE, OUTBOUND, PORT_PROBE, KUBERNETES, RDS_LOGIN]


# line -> (id, title start, severity, kind, status, host, user, src_ip, resource)
EXPECTED = {
    1: ("16afba5c5c43e07c9e3e5e2e544e95df", "Canary:EC2", "medium", "test", "firing", "i-05746eb48123455e0", None,
        None, "Instance i-05746eb48123455e0"),
    2: ("30bf285e52a1e405084ff6ec28e06e17", "Reconnaissance API", "medium", "test", "resolved", None,
        "GeneratedFindingUserName", "198.51.100.0", "AccessKey GeneratedFindingAccessKeyId"),
    3: ("2cbf285e52a6e74ff96f4cb3cf93296d", "API GeneratedFindingAPIName", "medium", "test", "resolved", None,
        "GeneratedFindingUserName", "198.51.100.0", "S3Bucket bucketName"),
    4: ("02be5693b63eea1d67e6f321c6aee4f3", "198.51.100.0 is performing SSH brute force", "low", "test", "firing",
        "i-99999999", None, "198.51.100.0", "Instance i-99999999"),
    5: ("8c258d654378414b9bc26f61a93eb816", "Potential credential compromise", "critical", "alert", "firing", None,
        None, None, "AttackSequence"),
    6: ("b174b38d16e34da0a4c66012083bd8f7", "Potential data compromise", "critical", "test", "firing", None, None,
        None, "AttackSequence"),
    7: ("eeb88ab56556eb7771b266670dddee5a", "Principal AssumedRole:IAMRole", "high", "test", "firing", None, None,
        None, "AWS::IAM::Role arn:aws:iam::123456789012:role/IAMRole"),
}  # fmt: skip


def test_every_public_sample_becomes_one_alert_with_its_fields() -> None:
    samples = records(DIRECTORY)
    assert len(samples) == len(EXPECTED)
    for line, record in enumerate(samples, 1):
        (alert,) = ADAPTER.parse(record).alerts
        alert_id, title, severity, kind, status, host, user, src_ip, resource = EXPECTED[line]
        assert (alert.id, alert.severity.value, alert.kind, alert.status) == (alert_id, severity, kind, status), line
        assert alert.title.startswith(title), line
        assert (alert.host, alert.user, str(alert.src_ip) if alert.src_ip else None) == (host, user, src_ip), line
        assert alert.resource == resource, line
        assert alert.source == "guardduty" and alert.format == "guardduty"
        assert alert.raw == record


def test_the_finding_type_names_rule_category_tags_and_techniques() -> None:
    samples = records(DIRECTORY)
    recon = ADAPTER.parse(samples[1]).alerts[0]
    assert recon.rule == recon.category == "Recon:IAMUser/MaliciousIPCaller.Custom"
    assert recon.tags == [
        "threat_purpose:Recon",
        "resource_type:IAMUser",
        "threat_family:MaliciousIPCaller",
        "detection_mechanism:Custom",
    ]
    escalation = ADAPTER.parse(samples[6]).alerts[0]
    assert escalation.techniques == ["TA0004"]  # PrivilegeEscalation is an ATT&CK tactic
    sequence = ADAPTER.parse(samples[4]).alerts[0]
    # An attack sequence lists the techniques it observed in its description.
    assert sequence.techniques == ["T1078.004", "T1087.004", "T1098", "T1098.003", "T1562.008"]
    assert sequence.source_severity == "GuardDuty severity 9"
    assert sequence.severity_reason == "GuardDuty severity 9 is Critical (9.0-10.0) -> critical"
    assert sequence.time == datetime(2025, 2, 25, 20, 40, 6, 721000, UTC)


def test_the_eventbridge_event_wraps_the_finding_and_is_kept_whole() -> None:
    (alert,) = ADAPTER.parse(EVENTBRIDGE).alerts
    assert alert.id == "5ab1b4c2f1e3d7a9e0c1b2a3d4e5f601"
    assert alert.raw == EVENTBRIDGE
    assert (alert.severity.value, alert.host, alert.kind, alert.status) == ("high", "i-0a1b2c3d4e5f67890", "alert",
                                                                              "firing")  # fmt: skip
    assert alert.time == datetime(2024, 6, 1, 10, 25, tzinfo=UTC)  # updatedAt: the latest occurrence
    assert alert.tags == [
        "threat_purpose:Backdoor",
        "resource_type:EC2",
        "threat_family:C&CActivity",
        "detection_mechanism:B",
        "artifact:DNS",
    ]
    assert alert.labels["count"] == "3"
    assert alert.labels["updated_at"] == "2024-06-01T10:25:00.000Z"
    assert alert.labels["account_id"] == "111122223333"
    assert alert.url == (
        "https://eu-west-1.console.aws.amazon.com/guardduty/home?region=eu-west-1"
        "#/findings?macros=current&fId=5ab1b4c2f1e3d7a9e0c1b2a3d4e5f601"
    )
    assert parse_payload(EVENTBRIDGE).format == "guardduty"


def test_a_republished_finding_keeps_its_identity() -> None:
    again = finding(updatedAt="2024-06-01T16:25:00.000Z", service=service(count=9))
    first, later = ADAPTER.parse(finding()).alerts[0], ADAPTER.parse(again).alerts[0]
    assert first.key == later.key == "guardduty:5ab1b4c2f1e3d7a9e0c1b2a3d4e5f601"
    assert later.labels["count"] == "9"


@pytest.mark.parametrize(
    ("record", "src_ip", "dst_ip", "user", "resource", "techniques"),
    [
        (OUTBOUND, "10.0.0.5", "203.0.113.7", None, "Instance i-0a1b2c3d4e5f67890", []),
        (PORT_PROBE, "198.51.100.23", "10.0.0.9", None, "Instance i-0a1b2c3d4e5f67890", []),
        (KUBERNETES, "203.0.113.99", None, "system:anonymous", "EKSCluster prod-cluster", ["TA0007"]),
        (RDS_LOGIN, "192.0.2.44", None, "app_admin", "RDSDBInstance orders-db", ["TA0006"]),
    ],
)
def test_actions_and_resources_name_addresses_users_and_resources(
    record: dict[str, Any], src_ip: str, dst_ip: str | None, user: str | None, resource: str, techniques: list[str]
) -> None:
    (alert,) = ADAPTER.parse(record).alerts
    assert (str(alert.src_ip), str(alert.dst_ip) if alert.dst_ip else None) == (src_ip, dst_ip)
    assert (alert.user, alert.resource, alert.techniques) == (user, resource, techniques)


@pytest.mark.parametrize(
    ("severity", "expected"),
    [(0, "info"), (1, "low"), (3.9, "low"), (4, "medium"), (6.9, "medium"), (7, "high"), (8.9, "high"),
     (9, "critical"), (10, "critical"), ("5.0", "medium")],
)  # fmt: skip
def test_severity_follows_awss_bands(severity: Any, expected: str) -> None:
    assert ADAPTER.parse(finding(severity=severity)).alerts[0].severity.value == expected


@pytest.mark.parametrize(("severity", "code"), [(-1, "invalid_fields"), (10.5, "invalid_fields"),
                                                ("HIGH", "invalid_fields"), (None, "missing_fields")])  # fmt: skip
def test_a_severity_off_the_scale_is_refused(severity: Any, code: str) -> None:
    with pytest.raises(Rejected, match="severity") as refused:
        ADAPTER.parse(finding(severity=severity))
    assert refused.value.code == code


def test_canary_sample_and_archived_findings() -> None:
    canary = ADAPTER.parse(finding(type="Canary:EC2/Stateless.IntegTest")).alerts[0]
    sample = ADAPTER.parse(finding(service=service(additionalInfo={"sample": True}))).alerts[0]
    archived = ADAPTER.parse(finding(service=service(archived=True))).alerts[0]
    assert (canary.kind, sample.kind, archived.kind) == ("test", "test", "alert")
    assert archived.status == "resolved"


def test_guardduty_events_that_are_not_findings_are_skipped() -> None:
    scan = {**EVENTBRIDGE, "detail-type": "GuardDuty Malware Protection Object Scan Result", "detail": {"x": 1}}
    parsed = ADAPTER.parse(scan)
    assert parsed.alerts == []
    assert parsed.skipped == [
        "GuardDuty event 'GuardDuty Malware Protection Object Scan Result': not a finding (only 'GuardDuty Finding' is)"
    ]
    assert parse_payload(scan).skipped == parsed.skipped


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ("a finding", "invalid_fields"),
        ({**EVENTBRIDGE, "detail": "gone"}, "missing_fields"),
        (finding(id=""), "missing_fields"),
        (finding(updatedAt="soon", createdAt=None), "bad_timestamp"),
        (finding(updatedAt=None, createdAt=None, service=service(eventLastSeen=None)), "missing_fields"),
    ],
)
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code and refused.value.reason
