"""Zeek notice.log JSON: each notice becomes an alert, its severity read from the note's family."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.zeek import Zeek
from tests.unit.adapters.corpus import (
    records,
)

ADAPTER = Zeek()
CORPUS_DIR = "zeek_notice"

# Notices with the fields of Zeek's Notice::Info record (docs.zeek.org/en/master/scripts/base/
# frameworks/notice/main.zeek.html#type-Notice::Info), as notice.log writes them in JSON.
PASSWORD_GUESSING: dict[str, Any] = {
    "ts": 1700000000.123456,
    "note": "SSH::Password_Guessing",
    "msg": "203.0.113.9 appears to be guessing SSH passwords (seen in 30 connections).",
    "sub": "Sampled servers:  10.0.0.21, 10.0.0.22",
    "src": "203.0.113.9",
    "peer_descr": "zeek-worker-1",
    "actions": ["Notice::ACTION_LOG"],
    "suppress_for": 3600.0,
}
# A file's notice: a Team Cymru malware hash match, identified by its file (fuid), ISO timestamps
# (LogAscii::json_timestamps = JSON::TS_ISO8601) and the connection only in id.*.
MALWARE_HASH: dict[str, Any] = {
    "ts": "2023-09-18T06:13:41.532140Z",
    "uid": None,
    "fuid": "FhM1nX3pR1bvCBXR6f",
    "id.orig_h": "192.168.100.237",
    "id.orig_p": 49175,
    "id.resp_h": "142.11.240.191",
    "id.resp_p": 35361,
    "file_mime_type": "application/x-dosexec",
    "file_desc": "http://142.11.240.191/payload.exe",
    "proto": "tcp",
    "note": "TeamCymruMalwareHashRegistry::Match",
    "msg": "Malware Hash Registry Detection rate: 87%  Last seen: 2023-09-17 10:00:00",
    "sub": "https://www.virustotal.com/gui/search/5d41402abc4b2a76b9719d911017c592",
    "actions": ["Notice::ACTION_LOG", "Notice::ACTION_ALARM"],
    "remote_location": {"country_code": "US", "city": "Phoenix"},
}
# An intelligence match a site pages for.
INTEL_PAGED: dict[str, Any] = {
    "ts": 1700000100.0,
    "uid": "CHhAvVGS1DHFjwGM9",
    "id.orig_h": "10.0.0.5",
    "id.orig_p": 51234,
    "id.resp_h": "198.51.100.66",
    "id.resp_p": 443,
    "note": "Intel::Notice",
    "msg": "Intel hit on cdn.bad.example at SSL::IN_SERVER_NAME",
    "sub": "cdn.bad.example",
    "src": "10.0.0.5",
    "dst": "198.51.100.66",
    "p": 443,
    "actions": ["Notice::ACTION_LOG", "Notice::ACTION_PAGE"],
}
# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [PASSWORD_GUESSING, MALWARE_HASH, INTEL_PAGED, {"notice": INTEL_PAGED}]


def notice(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(PASSWORD_GUESSING), **changes}


# ---- the corpus ------------------------------------------------------------------------------


def test_a_port_scan_notice_is_a_medium_alert_on_the_scanned_host() -> None:
    (alert,) = ADAPTER.parse(records(CORPUS_DIR)[0]).alerts
    assert alert.title == "192.168.2.153 scanned at least 15 unique ports of host 192.168.2.111 in 0m0s"
    assert (alert.rule, alert.category, alert.source) == ("Scan::Port_Scan", "Scan", "zeek")
    assert (alert.severity, alert.severity_reason) == ("medium", "Zeek note family Scan -> medium")
    assert (str(alert.src_ip), str(alert.dst_ip), alert.entity) == (
        "192.168.2.153",
        "192.168.2.111",
        "ip:192.168.2.111",
    )
    assert alert.time == datetime(2016, 5, 20, 6, 43, 14, 405281, tzinfo=UTC)
    assert (alert.tags, alert.labels["sensor"], alert.labels["sub"]) == (["Notice::ACTION_LOG"], "bro", "local")
    assert len(alert.id) == 32  # no uid: a hash of the notice


def test_a_wrapped_certificate_notice_is_keyed_by_its_connection() -> None:
    payload = records(CORPUS_DIR)[1]
    (alert,) = parse_payload(payload).alerts
    assert alert.key == "zeek:CNHQmp1mNiZHdAf5Ce:SSL::Invalid_Server_Cert"
    assert (alert.severity, str(alert.src_ip), str(alert.dst_ip)) == ("low", "192.168.15.4", "74.125.19.104")
    assert alert.time == datetime(2008, 7, 22, 5, 59, 37, 196728, tzinfo=UTC)
    assert alert.labels["p"] == "443"
    assert alert.description.endswith("CN=www.google.com,O=Google Inc,L=Mountain View,ST=California,C=US")
    assert alert.raw == payload  # the wrapper kept


# ---- documented fields ------------------------------------------------------------------------


def test_password_guessing_is_high_and_about_its_source() -> None:
    (alert,) = ADAPTER.parse(PASSWORD_GUESSING).alerts
    assert (alert.severity, alert.entity, alert.dst_ip) == ("high", "ip:203.0.113.9", None)
    assert alert.severity_reason == "Zeek note SSH::Password_Guessing -> high"
    assert alert.labels["suppress_for"] == "3600.0"


def test_a_file_notice_is_keyed_by_its_file_and_reads_the_connection() -> None:
    (alert,) = ADAPTER.parse(MALWARE_HASH).alerts
    assert alert.id == "FhM1nX3pR1bvCBXR6f:TeamCymruMalwareHashRegistry::Match"
    assert (alert.severity, str(alert.src_ip), str(alert.dst_ip)) == ("high", "192.168.100.237", "142.11.240.191")
    assert alert.time == datetime(2023, 9, 18, 6, 13, 41, 532140, tzinfo=UTC)
    assert alert.labels["file_mime_type"] == "application/x-dosexec"
    assert alert.labels["remote_location.country_code"] == "US"
    assert alert.labels["actions"] == "Notice::ACTION_LOG,Notice::ACTION_ALARM"


def test_a_paged_notice_is_at_least_high() -> None:
    (alert,) = ADAPTER.parse(INTEL_PAGED).alerts
    assert alert.severity == "high"
    (raised,) = ADAPTER.parse({**INTEL_PAGED, "note": "Weird::Activity"}).alerts
    assert (raised.severity, raised.severity_reason) == (
        "high",
        "Zeek note family Weird, raised by Notice::ACTION_PAGE -> high",
    )


@pytest.mark.parametrize(
    ("note", "severity"),
    [
        ("Heartbleed::SSL_Heartbeat_Attack_Success", "critical"),
        ("SSH::Login_By_Password_Guesser", "critical"),
        ("HTTP::SQL_Injection_Attacker", "high"),
        ("Intel::Notice", "high"),
        ("Signatures::Sensitive_Signature", "high"),
        ("Scan::Address_Scan", "medium"),
        ("Software::Vulnerable_Version", "medium"),
        ("SSL::Certificate_Expired", "low"),
        ("Traceroute::Detected", "low"),
        ("CaptureLoss::Too_Much_Loss", "info"),
        ("Weird::Activity", "info"),
        ("Software::Software_Version_Change", "info"),
        ("ProtocolDetector::Protocol_Found", "info"),
        ("MySite::Odd_Login", "medium"),
        ("NoFamily", "medium"),
    ],
)
def test_the_note_decides_the_severity(note: str, severity: str) -> None:
    (alert,) = ADAPTER.parse(notice(note=note)).alerts
    assert alert.severity == severity


def test_a_notice_without_a_time_is_refused() -> None:
    with pytest.raises(Rejected, match="ts None is not a timestamp") as refused:
        ADAPTER.parse(notice(ts=None))
    assert refused.value.code == "bad_timestamp"
