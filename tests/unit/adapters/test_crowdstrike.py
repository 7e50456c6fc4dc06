"""CrowdStrike Falcon detection summaries: the public samples, documented stream events, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected
from services.detector.adapters.crowdstrike import CrowdStrike
from tests.unit.adapters.corpus import samples

ADAPTER = CrowdStrike()

# A legacy detection as the Falcon Streaming API delivers it (Falcon SIEM Connector / Streaming API
# event dictionary, DetectionSummaryEvent: metadata.customerIDString, offset, eventType,
# eventCreationTime in ms; event.ComputerName, DetectName, DetectDescription, Severity 1-5,
# SeverityName, DetectId "ldt:<aid>:<id>", Tactic, Technique, FalconHostLink ...).
STREAMING_DETECTION: dict[str, Any] = {
    "metadata": {
        "customerIDString": "8f7e6d5c4b3a29180716253443526170",
        "offset": 14947764,
        "eventType": "DetectionSummaryEvent",
        "eventCreationTime": 1536846439000,
        "version": "1.0",
    },
    "event": {
        "ProcessStartTime": 1536846339,
        "ProcessId": 38684386611,
        "ParentProcessId": 38682494050,
        "ComputerName": "FIN-WS-07",
        "UserName": "bob",
        "DetectName": "Credential Theft",
        "DetectDescription": "A process accessed credentials in LSASS memory.",
        "Severity": 5,
        "SeverityName": "Critical",
        "FileName": "mimikatz.exe",
        "FilePath": "\\Device\\HarddiskVolume1\\Users\\bob\\Downloads",
        "CommandLine": "mimikatz.exe privilege::debug sekurlsa::logonpasswords",
        "SHA256String": "92804faaab2175dc501d73e814663058c78c0a042675a8937266357bcfb96c50",
        "MD5String": "2c527d980eb30daa789492283f9bf69e",
        "DetectId": "ldt:ecb5f1ed1a9945ae9d57ce22b5b6ae6b:38655034604",
        "SensorId": "ecb5f1ed1a9945ae9d57ce22b5b6ae6b",
        "FalconHostLink": "https://falcon.crowdstrike.com/activity/detections/detail/ecb5f1ed1a9945ae9d57ce22b5b6ae6b/38655034604",
        "Tactic": "Credential Access",
        "Technique": "Credential Dumping",
        "TacticId": "TA0006",
        "TechniqueId": "T1003",
        "Objective": "Gain Access",
        "PatternDispositionDescription": "Prevention, process killed.",
        "LocalIP": "10.20.1.17",
        "MachineDomain": "CORP",
    },
}

# Another Streaming API event type (AuthActivityAuditEvent): an audit record, not a detection.
AUTH_AUDIT: dict[str, Any] = {
    "metadata": {
        "customerIDString": "8f7e6d5c4b3a29180716253443526170",
        "offset": 14947765,
        "eventType": "AuthActivityAuditEvent",
        "eventCreationTime": 1581446181000,
        "version": "1.0",
    },
    "event": {
        "UserId": "analyst@example.com",
        "UserIp": "192.0.2.1",
        "OperationName": "userAuthenticate",
        "ServiceName": "CrowdStrike Authentication",
        "Success": True,
        "UTCTimestamp": 1581446181,
    },
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [STREAMING_DETECTION, AUTH_AUDIT]


def test_the_public_falcon_detections_are_read_with_their_fields() -> None:
    pup, sample, eicar = samples("crowdstrike")
    (alert,) = ADAPTER.parse(pup).alerts
    assert (
        alert.id
        == "00000000000000000000000000000000:ind:00000000006e49842267fc5837c4e2fc:222222222222222222-33333-444444"
    )
    assert (alert.title, alert.severity.value, alert.kind) == ("NGAV: Malware via PUP", "low", "alert")
    assert (alert.host, alert.user, str(alert.dst_ip)) == ("macbook", "bobert", "1.1.1.1")
    assert alert.time == datetime(2021, 9, 18, 20, 38, 52, tzinfo=UTC)
    assert alert.description.startswith("This file is classified as Adware/PUP based on its SHA256 hash.")
    assert alert.labels["sha256"] == "00000000009d4244ff0eff80712145e92dfbdc1990483402aca903f70c020e60"
    assert alert.url is not None and alert.url.startswith("https://falcon.us-2.crowdstrike.com/activity/detections/")
    assert (alert.rule, alert.category, alert.tags) == (
        "NGAV",
        "Malware",
        ["Malware", "PUP", "Falcon Detection Method"],
    )
    # The FDR record of CrowdStrike's documented sample detection, with Panther's p_* fields around it.
    (test,) = ADAPTER.parse(sample).alerts
    assert (test.kind, test.title, test.host, test.severity.value) == (
        "test",
        "Suspicious Activity",
        "hostname.lan",
        "low",
    )
    assert test.time == datetime(2021, 3, 24, 18, 19, 49, tzinfo=UTC)  # UTCTimestamp in milliseconds
    # An event-stream detection on the newer 0-100 scale, named: the name decides.
    (stream,) = ADAPTER.parse(eicar).alerts
    assert (stream.id, stream.title, stream.severity.value) == (
        "DETECTION ID",
        "Known Malware: Execution via User Execution",
        "high",
    )
    assert stream.severity_reason == "Falcon SeverityName High -> high"
    assert stream.time == datetime(2024, 12, 3, 19, 54, 30, tzinfo=UTC)  # metadata.eventCreationTime
    assert stream.techniques == ["TA0002"]  # Execution, by name
    assert stream.raw == eicar


def test_a_streaming_api_detection_gives_every_field() -> None:
    (alert,) = ADAPTER.parse(STREAMING_DETECTION).alerts
    assert (alert.id, alert.source) == ("ldt:ecb5f1ed1a9945ae9d57ce22b5b6ae6b:38655034604", "crowdstrike")
    assert alert.title == "Credential Theft: Credential Access via Credential Dumping"
    assert (alert.severity.value, alert.source_severity) == ("critical", "Falcon Critical")
    assert (alert.host, alert.user, str(alert.dst_ip)) == ("FIN-WS-07", "bob", "10.20.1.17")
    assert alert.time == datetime(2018, 9, 13, 13, 47, 19, tzinfo=UTC)
    assert alert.techniques == ["T1003", "TA0006"]
    assert "command line: mimikatz.exe privilege::debug" in alert.description
    assert alert.labels["file"] == "\\Device\\HarddiskVolume1\\Users\\bob\\Downloads/mimikatz.exe"
    assert alert.labels["customer_id"] == "8f7e6d5c4b3a29180716253443526170"
    assert alert.labels["offset"] == "14947764"


def test_other_stream_events_are_skipped_as_not_detections() -> None:
    assert ADAPTER.parse(AUTH_AUDIT).skipped == ["CrowdStrike AuthActivityAuditEvent: not a detection"]


@pytest.mark.parametrize(
    ("severity", "name", "expected", "reason"),
    [
        (1, None, "info", "Falcon severity 1 (Informational) -> info"),
        (2, None, "low", "Falcon severity 2 (Low) -> low"),
        (3, None, "medium", "Falcon severity 3 (Medium) -> medium"),
        (4, None, "high", "Falcon severity 4 (High) -> high"),
        (5, None, "critical", "Falcon severity 5 (Critical) -> critical"),
        (70, None, "medium", "Falcon severity 70 is off the 1-5 detection scale and unnamed -> medium"),
        (2, "High", "high", "Falcon SeverityName High -> high"),
        (None, None, "medium", "no Severity or SeverityName -> medium"),
    ],
)
def test_falcons_severity_scale(severity: Any, name: Any, expected: str, reason: str) -> None:
    event = STREAMING_DETECTION["event"] | {"Severity": severity, "SeverityName": name}
    (alert,) = ADAPTER.parse(STREAMING_DETECTION | {"event": event}).alerts
    assert (alert.severity.value, alert.severity_reason) == (expected, reason)


def test_a_detection_without_ids_is_identified_by_its_content() -> None:
    event = {k: v for k, v in STREAMING_DETECTION["event"].items() if k != "DetectId"}
    first = ADAPTER.parse(STREAMING_DETECTION | {"event": event}).alerts[0]
    again = ADAPTER.parse(STREAMING_DETECTION | {"event": dict(event)}).alerts[0]
    other = ADAPTER.parse(STREAMING_DETECTION | {"event": event | {"ProcessId": 1}}).alerts[0]
    assert first.id == again.id != other.id


def created_at(value: Any) -> dict[str, Any]:
    return STREAMING_DETECTION | {"metadata": STREAMING_DETECTION["metadata"] | {"eventCreationTime": value}}


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (["detection"], "invalid_fields"),
        ({"metadata": {"offset": 1}, "event": {}}, "missing_fields"),
        (created_at(None), "missing_fields"),
        (created_at("soon"), "bad_timestamp"),
    ],
)  # fmt: skip
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code and refused.value.reason
