"""Hayabusa detections: the public documentation samples, its output profiles, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected
from services.detector.adapters.hayabusa import Hayabusa
from tests.unit.adapters.corpus import records

ADAPTER = Hayabusa()
DIRECTORY = "sigma_hayabusa"

# A detection in Hayabusa's "verbose" profile (config/profiles.yaml: Timestamp, Computer, Channel,
# EventID, Level, MitreTactics, MitreTags, OtherTags, RecordID, RuleTitle, Details, RuleFile, EvtxFile)
# as `hayabusa json-timeline -L` writes it: lists as JSON arrays, Details as an object.
VERBOSE: dict[str, Any] = {
    "Timestamp": "2021-12-12 01:12:42.346 +09:00",
    "Computer": "DESKTOP-1",
    "Channel": "Sec",
    "EventID": 4625,
    "Level": "high",
    "MitreTactics": ["CredAccess"],
    "MitreTags": ["T1110.001"],
    "OtherTags": ["Sysmon"],
    "RecordID": 11950,
    "RuleTitle": "Failed Logon From Public IP",
    "Details": {"Type": 3, "TgtUser": "Administrator", "SrcComp": "kali", "SrcIP": "93.184.216.34", "LID": "0x0"},
    "RuleFile": "Sec_4625_Med_LogonFail_FromPublicIP.yml",
    "EvtxFile": "Security.evtx",
}

# The same in the text form Hayabusa uses for CSV timelines (items joined with "¦", Details as
# "Key: value ¦ Key: value"), with the tactics abbreviated and an ISO-8601 (--ISO-8601) timestamp.
TEXT_FIELDS: dict[str, Any] = {
    "Timestamp": "2021-12-11T16:20:00.000Z",
    "Computer": "WS-22.corp.example",
    "Channel": "PwSh",
    "EventID": 4104,
    "Level": "crit",
    "MitreTactics": "Exec ¦ Evas",
    "MitreTags": "T1059.001 ¦ T1027",
    "OtherTags": "",
    "RecordID": 77,
    "RuleTitle": "Obfuscated PowerShell Script Block",
    "Details": "ScriptBlock: IEX (New-Object Net.WebClient).DownloadString ¦ User: CORP\\bob",
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [VERBOSE, TEXT_FIELDS]


def test_the_public_samples_are_read_or_skipped_by_their_level() -> None:
    samples = records(DIRECTORY)
    assert len(samples) == 3
    # Lines 1-2: informational process-execution entries; Sigma says they are not for alerting.
    for record in samples[:2]:
        parsed = ADAPTER.parse(record)
        assert parsed.alerts == []
        assert parsed.skipped == ["Hayabusa 'Proc Exec' on IE10Win7: informational (Sigma: enrichment, no alerting)"]
    (alert,) = ADAPTER.parse(samples[2]).alerts
    assert (alert.id, alert.source, alert.title, alert.rule) == (
        "MSEDGEWIN10/Sysmon/4908/Net Conn (Sysmon Alert)",
        "hayabusa",
        "Net Conn (Sysmon Alert)",
        "Net Conn (Sysmon Alert)",
    )
    assert (alert.severity.value, alert.severity_reason) == ("medium", "Hayabusa level med -> medium")
    assert alert.time == datetime(2019, 7, 29, 21, 33, 20, 711000, UTC)  # written as +09:00
    assert (alert.host, alert.user) == ("MSEDGEWIN10", "MSEDGEWIN10\\IEUser")
    assert (str(alert.src_ip), str(alert.dst_ip)) == ("10.0.2.15", "93.184.220.29")
    assert "Proc: C:\\Windows\\System32\\mshta.exe" in alert.description
    assert (alert.labels["channel"], alert.labels["event_id"], alert.labels["record_id"]) == ("Sysmon", "3", "4908")
    assert alert.raw == samples[2]


def test_a_verbose_profile_detection_gives_every_field() -> None:
    (alert,) = ADAPTER.parse(VERBOSE).alerts
    assert alert.id == "DESKTOP-1/Sec/11950/Failed Logon From Public IP"
    assert (alert.severity.value, alert.host, alert.user, str(alert.src_ip)) == (
        "high",
        "DESKTOP-1",
        "Administrator",
        "93.184.216.34",
    )
    assert alert.techniques == ["T1110.001", "TA0006"]
    assert alert.tags == ["CredAccess", "Sysmon"]
    assert alert.labels["rule_file"] == "Sec_4625_Med_LogonFail_FromPublicIP.yml"
    assert alert.time == datetime(2021, 12, 11, 16, 12, 42, 346000, UTC)


def test_text_fields_are_split_as_hayabusa_joins_them() -> None:
    (alert,) = ADAPTER.parse(TEXT_FIELDS).alerts
    assert alert.severity.value == "critical"
    assert alert.techniques == ["T1027", "T1059.001", "TA0002", "TA0005"]
    assert (alert.tags, alert.user) == (["Exec", "Evas"], "CORP\\bob")
    assert alert.description.startswith("ScriptBlock: IEX")


def test_the_same_detection_found_again_is_the_same_alert() -> None:
    first, again = ADAPTER.parse(VERBOSE).alerts[0], ADAPTER.parse(dict(VERBOSE)).alerts[0]
    other_record = ADAPTER.parse(VERBOSE | {"RecordID": 11951}).alerts[0]
    assert first.key == again.key != other_record.key
    minimal = {k: v for k, v in VERBOSE.items() if k not in ("RecordID", "MitreTactics", "MitreTags", "OtherTags")}
    assert ADAPTER.parse(minimal).alerts[0].id == (
        "DESKTOP-1/Sec/4625@2021-12-12 01:12:42.346 +09:00/Failed Logon From Public IP"
    )


@pytest.mark.parametrize(
    ("level", "severity"),
    [("low", "low"), ("med", "medium"), ("medium", "medium"), ("high", "high"), ("crit", "critical"),
     ("critical", "critical"), ("emer", "critical"), ("emergency", "critical"), ("HIGH", "high")],
)  # fmt: skip
def test_levels_map_to_sigmas(level: str, severity: str) -> None:
    assert ADAPTER.parse(VERBOSE | {"Level": level}).alerts[0].severity.value == severity


def test_informational_in_either_spelling_is_skipped() -> None:
    for level in ("info", "informational"):
        assert ADAPTER.parse(VERBOSE | {"Level": level}).alerts == []


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2021-12-11 16:12:42.346 +00:00", datetime(2021, 12, 11, 16, 12, 42, 346000, UTC)),  # --UTC
        ("2021-12-12T01:12:42.346+09:00", datetime(2021, 12, 11, 16, 12, 42, 346000, UTC)),  # --RFC-3339
        ("Sun, 12 Dec 2021 01:12:42 +0900", datetime(2021, 12, 11, 16, 12, 42, tzinfo=UTC)),  # --RFC-2822
    ],
)
def test_hayabusas_timestamp_options(timestamp: str, expected: datetime) -> None:
    assert ADAPTER.parse(VERBOSE | {"Timestamp": timestamp}).alerts[0].time == expected


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ("detection", "invalid_fields"),
        (VERBOSE | {"Level": "severe"}, "invalid_fields"),
        (VERBOSE | {"Level": None}, "missing_fields"),
        (VERBOSE | {"Timestamp": "12-12-2021 01:12:42.346 AM +09:00"}, "bad_timestamp"),  # --US-time
        (VERBOSE | {"RuleTitle": ""}, "missing_fields"),
    ],
)
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code and refused.value.reason
