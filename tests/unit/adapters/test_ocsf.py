"""OCSF Detection and Security Findings: the public samples, examples from the OCSF schema, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.ocsf import Ocsf
from tests.unit.adapters.corpus import records

ADAPTER = Ocsf()
DIRECTORY = "ocsf_findings"


def detection_finding(**overrides: Any) -> dict[str, Any]:
    """A Detection Finding (class 2004) as the OCSF 1.1 schema defines it (schema.ocsf.io/1.1.0/classes/
    detection_finding): finding_info with uid, title, desc, types, analytic and attacks; evidences with
    endpoints and actor; device; severity_id; status_id; time in epoch milliseconds; metadata.version."""
    base: dict[str, Any] = {
        "activity_id": 1,
        "activity_name": "Create",
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 200401,
        "severity_id": 4,
        "severity": "High",
        "status_id": 1,
        "status": "New",
        "time": 1717236000000,
        "metadata": {"version": "1.1.0", "product": {"name": "Example EDR", "vendor_name": "Example Corp"}},
        "finding_info": {
            "uid": "f-7d1c5e2a",
            "title": "Password spraying against domain controller",
            "desc": "Failed logons for 40 accounts from one address within five minutes.",
            "types": ["Credential Access", "Password Spraying"],
            "analytic": {"name": "Password spray heuristic", "uid": "an-42", "type_id": 1, "type": "Rule"},
            "attacks": [
                {
                    "tactic": {"uid": "TA0006", "name": "Credential Access"},
                    "technique": {"uid": "T1110", "name": "Brute Force"},
                    "sub_technique": {"uid": "T1110.003", "name": "Password Spraying"},
                }
            ],
            "src_url": "https://edr.example.com/findings/f-7d1c5e2a",
        },
        "evidences": [
            {
                "src_endpoint": {"ip": "198.51.100.14"},
                "dst_endpoint": {"ip": "10.1.0.10"},
                "actor": {"user": {"name": "svc-backup"}},
            }
        ],
        "device": {"hostname": "dc-01.corp.example", "ip": "10.1.0.10", "type_id": 1},
        "cloud": {"provider": "AWS", "region": "eu-west-1", "account": {"uid": "111122223333"}},
    }
    base.update(overrides)
    return base


# A Security Finding (class 2001) as OCSF 1.0 defines it (schema.ocsf.io/1.0.0/classes/security_finding):
# the finding object, attacks at the top with the 1.0 attack object (technique and a tactics list),
# state_id for the finding's state.
SECURITY_FINDING_1_0: dict[str, Any] = {
    "activity_id": 1,
    "category_uid": 2,
    "class_uid": 2001,
    "class_name": "Security Finding",
    "severity_id": 5,
    "severity": "Critical",
    "state_id": 1,
    "state": "New",
    "time": 1717236000000,
    "metadata": {"version": "1.0.0", "product": {"name": "Example NDR", "vendor_name": "Example Corp"}},
    "finding": {
        "uid": "ndr-0001",
        "title": "Beaconing to known command and control server",
        "desc": "Host contacts 203.0.113.80 every 60 s.",
        "types": ["Command and Control"],
    },
    "attacks": [
        {"technique": {"uid": "T1071.001", "name": "Web Protocols"}, "tactics": [{"uid": "TA0011"}], "version": "12"}
    ],
    "analytic": {"name": "Beacon detector", "type_id": 1},
    "resources": [{"uid": "i-0abc", "type": "AwsEc2Instance"}],
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [detection_finding(), SECURITY_FINDING_1_0]


# line -> (source, id, severity, status, title start, src_ip, dst_ip, resource start)
EXPECTED = {
    1: ("ocsf/guardduty", "arn:aws:guardduty:us-east-2:111111111111:detector/1ac1bfceda6679698215d5d0EXAMPLE/finding/"
        "a6c556fcbc9bea427a19f8b787099a0b", "low", "firing", "AWS CloudTrail trail", "52.94.133.131", None,
        "AwsIamAccessKey AWS::IAM::AccessKey:ASIATMJPC7EXAMPLE"),
    2: ("ocsf/okta-system-log", "dc9fd3c0-598c-11ef-8478-2b7584bf8d5a", "medium", "firing", "Login Failures",
        "10.0.0.1", None, "/app/office365"),
    3: ("ocsf/prowler", "prowler-aws-acm_certificates_expiration_check-111122223333-eu-west-1-e4dc1386-8b4b-402c-9fed-"
        "03269ee10006", "high", "resolved", "Check if ACM Certificates", None, None,
        "AwsCertificateManagerCertificate arn:aws:acm:"),
    4: ("ocsf/security-hub", "test", "info", "resolved", "EC2.19 Security groups", None, None,
        "AwsEc2SecurityGroup arn:aws:ec2:"),
    7: ("ocsf/securityscorecard-attack-surface-intelligence", "2b7908d7-4b72-4f65-afa0-09bdaea46ae3", "info",
        "firing", "Infection found on 1.183.190.110", None, "1.183.190.110", "1.183.190.110"),
    8: ("ocsf/securityscorecard-attack-surface-intelligence", "45521c66-6498-442d-ad9b-40da9f0e9236", "info",
        "firing", "Infection found on 59.11.81.231", None, "59.11.81.231", "59.11.81.231"),
}  # fmt: skip
# Lines 5 and 6 name schema versions this adapter does not read: Falco's pre-1.0 draft (0.1.0) and
# QRadar's product version (7.5.0) written where the schema version belongs.
REFUSED = {5: "'0.1.0'", 6: "'7.5.0'"}


def test_every_public_sample_is_read_or_refused_for_its_version() -> None:
    samples = records(DIRECTORY)
    assert len(samples) == len(EXPECTED) + len(REFUSED)
    for line, record in enumerate(samples, 1):
        if line in REFUSED:
            with pytest.raises(Rejected, match=REFUSED[line]) as refused:
                ADAPTER.parse(record)
            assert refused.value.code == "unsupported_version"
            continue
        (alert,) = ADAPTER.parse(record).alerts
        source, alert_id, severity, status, title, src_ip, dst_ip, resource = EXPECTED[line]
        assert (alert.source, alert.id, alert.severity.value, alert.status) == (source, alert_id, severity, status)
        assert alert.title.startswith(title), line
        assert (str(alert.src_ip) if alert.src_ip else None, str(alert.dst_ip) if alert.dst_ip else None) == (
            src_ip,
            dst_ip,
        ), line
        assert alert.resource is not None and alert.resource.startswith(resource), line
        assert alert.format == "ocsf" and alert.raw == record


def test_public_samples_keep_their_times_urls_and_cloud() -> None:
    samples = records(DIRECTORY)
    guardduty = ADAPTER.parse(samples[0]).alerts[0]
    assert guardduty.time == datetime(2023, 9, 19, 15, 5, 22, 487000, UTC)
    assert guardduty.url is not None and guardduty.url.endswith("fId=a6c556fcbc9bea427a19f8b787099a0b")
    assert guardduty.labels["cloud_account"] == "111111111111"
    assert guardduty.category == "TTPs/Defense Evasion/Stealth:IAMUser-CloudTrailLoggingDisabled"
    okta = ADAPTER.parse(samples[1]).alerts[0]
    assert okta.severity_reason == "OCSF severity_id 0 (Unknown): Unknown -> medium"
    prowler = ADAPTER.parse(samples[2]).alerts[0]
    assert prowler.time == datetime(2024, 10, 4, 13, 49, 2, tzinfo=UTC)  # "time" in seconds
    assert prowler.labels["status_code"] == "PASS"  # a passed check: resolves the failed one of this uid


def test_a_detection_finding_gives_every_field() -> None:
    (alert,) = ADAPTER.parse(detection_finding()).alerts
    assert (alert.id, alert.source, alert.title) == (
        "f-7d1c5e2a",
        "ocsf/example-edr",
        "Password spraying against domain controller",
    )
    assert alert.description.startswith("Failed logons for 40 accounts")
    assert (alert.severity.value, alert.status, alert.kind) == ("high", "firing", "alert")
    assert alert.time == datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    assert (alert.host, alert.user, str(alert.src_ip), str(alert.dst_ip)) == (
        "dc-01.corp.example",
        "svc-backup",
        "198.51.100.14",
        "10.1.0.10",
    )
    assert alert.techniques == ["T1110", "T1110.003", "TA0006"]
    assert (alert.rule, alert.category, alert.tags) == (
        "Password spray heuristic",
        "Credential Access",
        ["Credential Access", "Password Spraying"],
    )
    assert alert.url == "https://edr.example.com/findings/f-7d1c5e2a"
    assert alert.labels["cloud_region"] == "eu-west-1" and alert.labels["ocsf_version"] == "1.1.0"
    assert alert.source_severity == "OCSF severity_id 4 (High)"


def test_a_1_0_security_finding_reads_its_finding_object_and_attacks() -> None:
    (alert,) = ADAPTER.parse(SECURITY_FINDING_1_0).alerts
    assert (alert.id, alert.title, alert.severity.value) == (
        "ndr-0001",
        "Beaconing to known command and control server",
        "critical",
    )
    assert alert.techniques == ["T1071.001", "TA0011"]
    assert (alert.rule, alert.resource) == ("Beacon detector", "AwsEc2Instance i-0abc")


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"status_id": 2, "status": "In Progress"}, "firing"),
        ({"status_id": 3, "status": "Suppressed"}, "resolved"),
        ({"status_id": 4, "status": "Resolved"}, "resolved"),
        ({"status_id": 5, "status": "Archived"}, "resolved"),
        ({"status_id": 99, "status": "Resolved"}, "resolved"),
        ({"activity_id": 3, "activity_name": "Close"}, "resolved"),
        ({"status_code": "PASS"}, "resolved"),
        ({"status_code": "FAIL"}, "firing"),
    ],
)
def test_a_closed_suppressed_or_passed_finding_is_resolved(changes: dict[str, Any], status: str) -> None:
    assert ADAPTER.parse(detection_finding(**changes)).alerts[0].status == status


def test_a_security_findings_state_not_its_event_status_says_whether_it_is_resolved() -> None:
    resolved = {**SECURITY_FINDING_1_0, "state_id": 4, "state": "Resolved"}
    succeeded = {**SECURITY_FINDING_1_0, "status_id": 4}  # base event status: not the finding's
    assert ADAPTER.parse(resolved).alerts[0].status == "resolved"
    assert ADAPTER.parse(succeeded).alerts[0].status == "firing"


@pytest.mark.parametrize(
    ("severity_id", "label", "severity"),
    [(1, "Informational", "info"), (2, "Low", "low"), (3, "Medium", "medium"), (5, "Critical", "critical"),
     (6, "Fatal", "critical"), (0, "Unknown", "medium"), (99, "Critical", "critical"), (99, "Sev-A", "medium"),
     (None, "low", "low")],
)  # fmt: skip
def test_severity_ids_follow_ocsfs_scale(severity_id: int | None, label: str, severity: str) -> None:
    record = detection_finding(severity_id=severity_id, severity=label)
    assert ADAPTER.parse(record).alerts[0].severity.value == severity


@pytest.mark.parametrize(
    ("record", "code", "reason"),
    [
        (detection_finding(metadata={"version": "2.0.0", "product": {"name": "X"}}), "unsupported_version", "'2.0.0'"),
        (detection_finding(metadata={"product": {"name": "X"}}), "unsupported_version", "no schema version"),
        (detection_finding(class_uid=2002, class_name="Vulnerability Finding"), "unsupported_class",
         "Vulnerability Finding \\(class 2002\\)"),
        (detection_finding(severity_id="high"), "invalid_fields", "severity_id"),
        (detection_finding(severity_id=None, severity=None), "missing_fields", "severity_id"),
        (detection_finding(time="tomorrow"), "bad_timestamp", "time"),
        ([detection_finding()], "invalid_fields", "JSON object"),
    ],
)  # fmt: skip
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str, reason: str) -> None:
    with pytest.raises(Rejected, match=reason) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code


def test_activity_events_and_non_alerts_are_skipped_with_a_reason() -> None:
    network = {
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "activity_id": 6,
        "time": 1717236000000,
        "severity_id": 1,
        "metadata": {"version": "1.1.0", "product": {"name": "Example Firewall"}},
        "src_endpoint": {"ip": "10.0.0.1"},
    }
    assert ADAPTER.parse(network).skipped == ["OCSF Network Activity (class 4001): an activity event, not a finding"]
    assert parse_payload(network).alerts == []
    quiet = ADAPTER.parse(detection_finding(is_alert=False))
    assert quiet.alerts == [] and quiet.skipped == ["OCSF Detection Finding f-7d1c5e2a: marked is_alert false"]
    closing = ADAPTER.parse(detection_finding(is_alert=False, activity_id=3)).alerts
    assert [a.status for a in closing] == ["resolved"]


def test_a_finding_without_uid_is_identified_by_its_content() -> None:
    info = {k: v for k, v in detection_finding()["finding_info"].items() if k != "uid"}
    first = ADAPTER.parse(detection_finding(finding_info=info)).alerts[0]
    again = ADAPTER.parse(detection_finding(finding_info=dict(info))).alerts[0]
    later = ADAPTER.parse(detection_finding(finding_info=info, time=1717236060000)).alerts[0]
    assert first.id == again.id != later.id
