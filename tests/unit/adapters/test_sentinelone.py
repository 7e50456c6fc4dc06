"""SentinelOne threats, alerts and activities: the public sample, API-shaped records, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected
from services.detector.adapters.sentinelone import SentinelOne
from tests.unit.adapters.corpus import samples

ADAPTER = SentinelOne()

# A threat as the Management API v2.1 returns it from /web/api/v2.1/threats (threatInfo with
# threatName, classification, confidenceLevel, incidentStatus, createdAt; agentRealtimeInfo with the
# computer name; agentDetectionInfo with the agent's addresses; indicators with ATT&CK tactics).
THREAT: dict[str, Any] = {
    "id": "1234567890123456789",
    "agentDetectionInfo": {
        "agentIpV4": "10.0.0.1",
        "externalIp": "81.2.69.143",
        "siteName": "Default site",
        "accountName": "Default",
    },
    "agentRealtimeInfo": {"agentComputerName": "test-LINUX", "agentOsType": "linux"},
    "indicators": [
        {
            "category": "Exploitation",
            "description": "Document behaves abnormally",
            "tactics": [
                {
                    "name": "Execution",
                    "source": "MITRE",
                    "techniques": [{"name": "T1204", "link": "https://attack.mitre.org/techniques/T1204/"}],
                }
            ],
        }
    ],
    "threatInfo": {
        "threatId": "1234567890123456789",
        "threatName": "invoice.exe",
        "classification": "Trojan",
        "confidenceLevel": "malicious",
        "incidentStatus": "unresolved",
        "analystVerdict": "undefined",
        "mitigationStatus": "not_mitigated",
        "filePath": "/tmp/invoice.exe",
        "originatorProcess": "bash",
        "processUser": "alice",
        "sha1": "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
        "detectionType": "static",
        "createdAt": "2022-04-06T08:45:54.519988Z",
        "updatedAt": "2022-04-06T08:54:17.194122Z",
    },
}

# A cloud-detection (STAR custom rule) alert from /web/api/v2.1/cloud-detection/alerts (alertInfo,
# ruleInfo with its severity, agentDetectionInfo, sourceProcessInfo).
RULE_ALERT: dict[str, Any] = {
    "agentDetectionInfo": {"name": "srv-win1", "uuid": "0efd7bcfd285450885e05bd8d5bf2ba7", "siteId": "14020"},
    "alertInfo": {
        "alertId": "1985998272619999973",
        "createdAt": "2024-07-03T03:44:03.003000Z",
        "eventType": "PROCESSCREATION",
        "incidentStatus": "Unresolved",
        "srcIp": "81.2.69.142",
        "dstIp": None,
        "source": "STAR",
    },
    "ruleInfo": {"id": "1412136126226508571", "name": "PowerShell from Office", "severity": "Critical"},
    "sourceProcessInfo": {"commandline": "powershell.exe -enc SQBFAFgA", "user": "CORP\\jdoe"},
}

# An activity that is neither a threat nor an alert (type 27: a user logged in to the console).
LOGIN_ACTIVITY: dict[str, Any] = {
    "activityType": 27,
    "activityUuid": "a1b2c3",
    "id": "1570000000000000001",
    "primaryDescription": "The management user Jane Doe logged in to the management console.",
    "createdAt": "2022-12-07T17:00:00.000Z",
    "data": {},
}

# A new-threat activity (type 19: new malicious threat not mitigated), in the API's camelCase.
THREAT_ACTIVITY: dict[str, Any] = {
    "activityType": 19,
    "activityUuid": "d4e5f6",
    "id": "1570000000000000002",
    "threatId": "1234567890123456789",
    "primaryDescription": "Threat detected, name: invoice.exe.",
    "createdAt": "2022-04-06T08:45:55.000Z",
    "data": {"computerName": "test-LINUX", "confidenceLevel": "malicious", "fileDisplayName": "invoice.exe"},
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [THREAT, RULE_ALERT, LOGIN_ACTIVITY, THREAT_ACTIVITY]


def test_the_public_custom_rule_activity_is_its_alert() -> None:
    (record,) = samples("sentinelone")
    (alert,) = ADAPTER.parse(record).alerts
    assert (alert.id, alert.source, alert.title, alert.rule) == (
        "alert/1570395776954206544",
        "sentinelone",
        "test-rule",
        "test-rule",
    )
    assert (alert.severity.value, alert.severity_reason) == ("critical", "SentinelOne severity E_CRITICAL -> critical")
    assert alert.time == datetime(2022, 12, 7, 17, 36, 5, 76000, UTC)
    assert str(alert.dst_ip) == "1.2.3.4"  # the agent's address: the machine the alert is about
    assert alert.description.startswith("Alert created for sshd from Custom Rule: test-rule")
    assert alert.labels["activity_type"] == "3608" and alert.labels["activity_id"] == "5423"
    assert alert.raw == record


def test_a_threat_gives_every_field() -> None:
    (alert,) = ADAPTER.parse(THREAT).alerts
    assert (alert.id, alert.title) == ("threat/1234567890123456789", "Malicious threat invoice.exe (Trojan)")
    assert (alert.severity.value, alert.severity_reason) == ("high", "SentinelOne confidence malicious -> high")
    assert (alert.host, alert.user, str(alert.dst_ip), alert.status) == ("test-LINUX", "alice", "10.0.0.1", "firing")
    assert alert.time == datetime(2022, 4, 6, 8, 45, 54, 519988, UTC)
    assert alert.techniques == ["T1204", "TA0002"]
    assert (alert.category, alert.labels["sha1"]) == ("Trojan", "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
    assert alert.description.startswith("file: /tmp/invoice.exe\noriginator process: bash")


def test_a_threat_and_its_activity_are_one_alert() -> None:
    threat, activity = ADAPTER.parse(THREAT).alerts[0], ADAPTER.parse(THREAT_ACTIVITY).alerts[0]
    assert threat.key == activity.key == "sentinelone:threat/1234567890123456789"
    assert (activity.host, activity.severity.value) == ("test-LINUX", "high")


def test_a_resolved_threat_and_a_suspicious_one() -> None:
    info = THREAT["threatInfo"]
    resolved = ADAPTER.parse(THREAT | {"threatInfo": info | {"incidentStatus": "resolved"}}).alerts[0]
    suspicious = ADAPTER.parse(THREAT | {"threatInfo": info | {"confidenceLevel": "suspicious"}}).alerts[0]
    unrated = ADAPTER.parse(THREAT | {"threatInfo": info | {"confidenceLevel": "n/a"}}).alerts[0]
    assert resolved.status == "resolved"
    assert (suspicious.severity.value, unrated.severity.value) == ("medium", "medium")
    assert unrated.severity_reason == "SentinelOne confidence n/a -> medium"


def test_a_rule_alert_carries_its_rules_severity() -> None:
    (alert,) = ADAPTER.parse(RULE_ALERT).alerts
    assert (alert.id, alert.title, alert.severity.value) == (
        "alert/1985998272619999973",
        "PowerShell from Office",
        "critical",
    )
    assert (alert.host, alert.user, str(alert.src_ip), alert.dst_ip) == ("srv-win1", "CORP\\jdoe", "81.2.69.142", None)
    assert "process: powershell.exe -enc SQBFAFgA" in alert.description


def test_other_activities_are_skipped() -> None:
    assert ADAPTER.parse(LOGIN_ACTIVITY).skipped == [
        "SentinelOne activity type 27 (The management user Jane Doe logged in to the management console.): "
        "not a threat or alert"
    ]


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (None, "invalid_fields"),
        (THREAT | {"id": None, "threatInfo": THREAT["threatInfo"] | {"threatId": None}}, "missing_fields"),
        (RULE_ALERT | {"alertInfo": RULE_ALERT["alertInfo"] | {"alertId": ""}}, "missing_fields"),
        (THREAT_ACTIVITY | {"createdAt": "?"}, "bad_timestamp"),
        ({"activityType": "x", "primaryDescription": "?"}, "missing_fields"),
    ],
)
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code and refused.value.reason
