"""Microsoft Defender XDR alerts: the public streamed rows, documented API alerts, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected
from services.detector.adapters.defender import Defender
from tests.unit.adapters.corpus import samples

ADAPTER = Defender()

# A Graph security alert (Microsoft Graph v1.0, "alert resource type" of microsoft.graph.security:
# id, providerAlertId, incidentId, status, severity, classification, determination, serviceSource,
# detectionSource, title, description, category, mitreTechniques, createdDateTime, alertWebUrl,
# evidence with deviceEvidence, userEvidence and ipEvidence).
GRAPH_ALERT: dict[str, Any] = {
    "@odata.type": "#microsoft.graph.security.alert",
    "id": "da637551227677560813_-961444813",
    "providerAlertId": "da637551227677560813_-961444813",
    "incidentId": "28282",
    "status": "new",
    "severity": "low",
    "classification": "unknown",
    "determination": "unknown",
    "serviceSource": "microsoftDefenderForEndpoint",
    "detectionSource": "antivirus",
    "detectorId": "e0da400f-affd-43ef-b1d5-afc2eb6f2756",
    "tenantId": "b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c",
    "title": "Suspicious execution of hidden file",
    "description": "A hidden file has been launched. This activity could indicate a compromised host.",
    "category": "DefenseEvasion",
    "alertWebUrl": "https://security.microsoft.com/alerts/da637551227677560813_-961444813?tid=b3c1b5fc",
    "mitreTechniques": ["T1564.001"],
    "createdDateTime": "2021-04-27T12:52:34.2010117Z",
    "lastUpdateDateTime": "2021-05-02T14:19:01.3266667Z",
    "firstActivityDateTime": "2021-04-26T07:45:50.116Z",
    "evidence": [
        {
            "@odata.type": "#microsoft.graph.security.deviceEvidence",
            "mdeDeviceId": "73e7e2de709dff64ef64b1d0c30e67fab63279db",
            "deviceDnsName": "tempDns",
            "roles": ["compromised"],
        },
        {
            "@odata.type": "#microsoft.graph.security.userEvidence",
            "userAccount": {"accountName": "identityTest", "domainName": "DOMAIN1"},
        },
        {"@odata.type": "#microsoft.graph.security.ipEvidence", "ipAddress": "203.0.113.50"},
    ],
    "systemTags": ["Defender Experts"],
}

# A Defender for Endpoint API alert (Microsoft Defender for Endpoint API, "Alert resource type":
# id, incidentId, severity UnSpecified/Informational/Low/Medium/High, status New/InProgress/Resolved,
# alertCreationTime, machineId, computerDnsName, relatedUser, mitreTechniques).
ENDPOINT_ALERT: dict[str, Any] = {
    "id": "da637472900382838869_1364969609",
    "incidentId": 1126093,
    "severity": "High",
    "status": "Resolved",
    "classification": "TruePositive",
    "determination": "Malware",
    "detectionSource": "WindowsDefenderAv",
    "category": "Malware",
    "threatFamilyName": "Mimikatz",
    "title": "Mimikatz credential theft tool",
    "description": "The Mimikatz tool was detected on this device.",
    "alertCreationTime": "2021-01-26T20:33:57.7220239Z",
    "firstEventTime": "2021-01-26T20:31:32.9562661Z",
    "machineId": "111e6dd8c833c8a052ea231ec1b19adaf497b625",
    "computerDnsName": "temp123.middleeast.corp.microsoft.com",
    "relatedUser": {"userName": "temp123", "domainName": "MIDDLEEAST"},
    "mitreTechniques": ["T1003.001"],
    "evidence": [],
}

# An alert of the Microsoft 365 Defender incidents API (GET /api/incidents, "alerts" of an incident:
# alertId, incidentId, serviceSource, creationTime, title, category, status, severity,
# mitreTechniques, devices with deviceDnsName, entities with entityType User / Ip).
INCIDENT_ALERT: dict[str, Any] = {
    "alertId": "da637308392288907382_-880718168",
    "incidentId": 924518,
    "serviceSource": "MicrosoftDefenderForEndpoint",
    "creationTime": "2020-07-21T00:00:28.7907529Z",
    "lastUpdatedTime": "2020-07-21T00:03:27.9666667Z",
    "firstActivity": "2020-07-20T23:56:28.8Z",
    "title": "Suspicious URL clicked",
    "category": "InitialAccess",
    "status": "New",
    "severity": "Medium",
    "detectionSource": "WindowsDefenderAtp",
    "mitreTechniques": ["T1566.002"],
    "devices": [{"mdatpDeviceId": "24c222b0b60fe148eeece49ac83910cc6a7ef491", "deviceDnsName": "nuc-lap.corp.example"}],
    "entities": [
        {"entityType": "User", "accountName": "bob", "domainName": "CONTOSO"},
        {"entityType": "Url", "url": "http://phishing.example/login"},
        {"entityType": "Ip", "ipAddress": "198.51.100.77"},
    ],
}

# A streamed row of another advanced hunting table (DeviceProcessEvents): telemetry.
PROCESS_ROW: dict[str, Any] = {
    "category": "AdvancedHunting-DeviceProcessEvents",
    "operationName": "Publish",
    "properties": {"DeviceName": "ws-1", "FileName": "cmd.exe", "Timestamp": "2025-04-11T20:51:04Z"},
    "time": "2025-04-11T21:07:42Z",
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [GRAPH_ALERT, ENDPOINT_ALERT, INCIDENT_ALERT, PROCESS_ROW]


def test_the_public_streamed_alert_rows_are_one_alert_seen_twice() -> None:
    info, evidence = samples("defender")
    (alert,) = ADAPTER.parse(info).alerts
    assert (alert.id, alert.source, alert.title) == (
        "0000000000-1111-2222-3333-444444444444",
        "defender",
        "Regsvr32 Rundll32 Image Loads Abnormal Extension",
    )
    assert (alert.severity.value, alert.category, alert.host) == ("high", "DefenseEvasion", None)
    assert alert.techniques == ["T1218", "T1218.010", "T1218.011", "TA0005"]
    assert alert.time == datetime(2025, 4, 21, 20, 51, 4, 58183, UTC)
    (row,) = ADAPTER.parse(evidence).alerts
    assert (row.id, row.host, row.category) == (
        "sn34c87846-505a-4c84-b125-44bce1202df4",
        "testdevice.testdomain.com",
        "DefenseEvasion",
    )
    assert row.labels["entity_type"] == "Machine" and row.labels["evidence_role"] == "Impacted"
    assert row.raw == evidence


def test_a_graph_alert_gives_every_field() -> None:
    (alert,) = ADAPTER.parse(GRAPH_ALERT).alerts
    assert (alert.id, alert.title, alert.severity.value, alert.status) == (
        "da637551227677560813_-961444813",
        "Suspicious execution of hidden file",
        "low",
        "firing",
    )
    assert (alert.host, alert.user, str(alert.src_ip)) == ("tempDns", "identityTest", "203.0.113.50")
    assert alert.techniques == ["T1564.001", "TA0005"]
    assert alert.time == datetime(2021, 4, 27, 12, 52, 34, 201011, UTC)
    assert alert.url == GRAPH_ALERT["alertWebUrl"]
    assert alert.tags == ["Defender Experts"]
    assert (
        alert.labels["incident_id"] == "28282"
        and alert.labels["machine_id"] == "73e7e2de709dff64ef64b1d0c30e67fab63279db"
    )


def test_an_endpoint_api_alert_that_is_resolved() -> None:
    (alert,) = ADAPTER.parse(ENDPOINT_ALERT).alerts
    assert (alert.severity.value, alert.status, alert.host, alert.user) == (
        "high",
        "resolved",
        "temp123.middleeast.corp.microsoft.com",
        "temp123",
    )
    assert (alert.techniques, alert.labels["threat_family"]) == (["T1003.001"], "Mimikatz")


def test_an_incidents_api_alert_names_its_device_user_and_address() -> None:
    (alert,) = ADAPTER.parse(INCIDENT_ALERT).alerts
    assert (alert.id, alert.title, alert.severity.value) == (
        "da637308392288907382_-880718168",
        "Suspicious URL clicked",
        "medium",
    )
    assert (alert.host, alert.user, str(alert.src_ip)) == ("nuc-lap.corp.example", "bob", "198.51.100.77")
    assert alert.time == datetime(2020, 7, 21, 0, 0, 28, 790752, UTC)
    assert alert.techniques == ["T1566.002", "TA0001"]
    assert alert.labels["machine_id"] == "24c222b0b60fe148eeece49ac83910cc6a7ef491"


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("Informational", "info"), ("low", "low"), ("Medium", "medium"), ("high", "high"),
     ("UnSpecified", "medium"), ("unknown", "medium"), (None, "medium")],
)  # fmt: skip
def test_defenders_severities_map_one_to_one(severity: Any, expected: str) -> None:
    assert ADAPTER.parse(GRAPH_ALERT | {"severity": severity}).alerts[0].severity.value == expected


def test_the_onboarding_test_alert_is_a_test() -> None:
    record = GRAPH_ALERT | {"title": "[Test Alert] Suspicious Powershell commandline"}
    assert ADAPTER.parse(record).alerts[0].kind == "test"


def test_other_advanced_hunting_rows_are_skipped_as_telemetry() -> None:
    assert ADAPTER.parse(PROCESS_ROW).skipped == [
        "Defender advanced hunting DeviceProcessEvents row: telemetry, not an alert"
    ]


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (3, "invalid_fields"),
        (GRAPH_ALERT | {"createdDateTime": "never"}, "bad_timestamp"),
        ({k: v for k, v in ENDPOINT_ALERT.items() if k not in ("alertCreationTime", "firstEventTime")},
         "missing_fields"),
        (GRAPH_ALERT | {"title": None}, "missing_fields"),
    ],
)  # fmt: skip
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code and refused.value.reason
