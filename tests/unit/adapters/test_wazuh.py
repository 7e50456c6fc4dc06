"""Wazuh alerts.json lines: the public samples, examples from Wazuh's documentation, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected
from services.detector.adapters.wazuh import Wazuh
from tests.unit.adapters.corpus import records

ADAPTER = Wazuh()
DIRECTORY = "wazuh_alerts"
MANAGER = "ip-10-0-0-219.us-west-1.compute.internal"

# The alert Wazuh raises for the Suricata EVE line of its JSON decoder documentation
# (documentation.wazuh.com/current/user-manual/ruleset/json-decoder.html): the JSON decoder keeps
# the log's own field names under ``data`` (src_ip, dest_ip), and rule 86601 is Wazuh's
# "Suricata: Alert - $(alert.signature)" at level 3.
SURICATA_VIA_WAZUH: dict[str, Any] = {
    "timestamp": "2016-05-02T17:46:48.515+0000",
    "rule": {
        "level": 3,
        "description": "Suricata: Alert - ET WEB_SERVER Possible CVE-2014-6271 Attempt in HTTP Version Number",
        "id": "86601",
        "firedtimes": 1,
        "mail": False,
        "groups": ["ids", "suricata"],
    },
    "agent": {"id": "000", "name": "wazuh-manager"},
    "manager": {"name": "wazuh-manager"},
    "id": "1462211208.1175",
    "decoder": {"name": "json"},
    "data": {
        "timestamp": "2016-05-02T17:46:48.515262+0000",
        "flow_id": "1234",
        "event_type": "alert",
        "src_ip": "16.10.10.10",
        "src_port": "5555",
        "dest_ip": "16.10.10.11",
        "dest_port": "80",
        "proto": "TCP",
        "alert": {"action": "allowed", "signature_id": "2019236", "severity": "1"},
    },
    "location": "/var/log/suricata/eve.json",
}

# A Windows logon failure as Wazuh's Windows event channel decoder presents it
# (documentation.wazuh.com, "Monitoring Windows event logs": data.win.system / data.win.eventdata).
WINDOWS_LOGON_FAILURE: dict[str, Any] = {
    "timestamp": "2024-03-05T10:12:01.123+0000",
    "rule": {
        "level": 5,
        "description": "Logon failure - Unknown user or bad password.",
        "id": "60122",
        "mitre": {"id": ["T1078"], "tactic": ["Defense Evasion", "Persistence"], "technique": ["Valid Accounts"]},
        "groups": ["windows", "windows_security", "win_authentication_failed"],
    },
    "agent": {"id": "003", "name": "DC-01", "ip": "192.0.2.20"},
    "manager": {"name": "wazuh-manager"},
    "id": "1709633521.884211",
    "decoder": {"name": "windows_eventchannel"},
    "data": {
        "win": {
            "system": {"eventID": "4625", "channel": "Security", "computer": "DC-01.corp.example"},
            "eventdata": {"targetUserName": "Administrator", "ipAddress": "198.51.100.7"},
        }
    },
    "location": "EventChannel",
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [SURICATA_VIA_WAZUH, WINDOWS_LOGON_FAILURE]


# line -> (title, host, severity, id, time, src_ip, dst_ip, user)
EXPECTED = {
    1: (
        "sshd: Attempt to login using a non-existent user",
        "Ubuntu",
        "low",
        f"{MANAGER}/1587082700.80945",
        datetime(2020, 4, 17, 0, 18, 20, 659000, UTC),
        "123.20.109.89",
        "10.0.1.85",
        "admin",
    ),
    2: (
        "sshd: Multiple authentication failures.",
        "Centos",
        "medium",
        f"{MANAGER}/1587083113.109656",
        datetime(2020, 4, 17, 0, 25, 13, 117000, UTC),
        "49.88.112.76",
        "10.0.1.132",
        "root",
    ),
    3: (
        "PAM: User login failed.",
        "Amazon",
        "low",
        f"{MANAGER}/1587081881.16101",
        datetime(2020, 4, 17, 0, 4, 41, 137000, UTC),
        "222.186.30.76",
        "10.0.1.178",
        "root",
    ),
    4: (
        "unix_chkpwd: Password check failed.",
        "Centos",
        "low",
        f"{MANAGER}/1587082024.30535",
        datetime(2020, 4, 17, 0, 7, 4, 197000, UTC),
        None,
        "10.0.1.132",
        "root",
    ),
    5: (
        "sshd: brute force trying to get access to the system. Non existent user.",
        "localhost.localdomain",
        "medium",
        "localhost.localdomain/1652272159.1549653",
        datetime(2022, 5, 11, 12, 29, 19, 905000, UTC),
        "172.17.1.1",
        None,
        "paco",
    ),
    6: (
        "Integrity checksum changed.",
        "jellyfish",
        "medium",
        "jellyfish/1662759795.647670",
        datetime(2022, 9, 9, 21, 43, 15, 168000, UTC),  # written as +0200
        None,
        None,
        None,
    ),
}


def test_every_public_sample_becomes_one_alert_with_its_fields() -> None:
    samples = records(DIRECTORY)
    assert len(samples) == len(EXPECTED)
    for line, record in enumerate(samples, 1):
        (alert,) = ADAPTER.parse(record).alerts
        title, host, severity, alert_id, time, src_ip, dst_ip, user = EXPECTED[line]
        assert (alert.title, alert.host, alert.severity.value, alert.id, alert.time) == (
            title,
            host,
            severity,
            alert_id,
            time,
        ), line
        assert (str(alert.src_ip) if alert.src_ip else None, str(alert.dst_ip) if alert.dst_ip else None) == (
            src_ip,
            dst_ip,
        ), line
        assert alert.user == user, line
        assert alert.source == "wazuh" and alert.format == "wazuh" and alert.status == "firing"
        assert alert.description == record["full_log"].strip()
        assert alert.rule == record["rule"]["id"]
        assert alert.tags == record["rule"]["groups"]
        assert alert.raw == record


def test_attack_ids_compliance_and_decoded_fields_are_kept() -> None:
    samples = records(DIRECTORY)
    brute_force = ADAPTER.parse(samples[4]).alerts[0]
    assert brute_force.techniques == ["T1110", "TA0006"]  # Credential Access, by name
    assert brute_force.source_severity == "Wazuh level 10"
    assert brute_force.severity_reason == "Wazuh level 10 (7-11) -> medium"  # failed logins: a look, not a page
    assert brute_force.labels["manager"] == "localhost.localdomain"
    assert brute_force.labels["decoder"] == "sshd"
    assert brute_force.labels["data.srcport"] == "56404"
    assert brute_force.labels["pci_dss"] == '["11.4","10.2.4","10.2.5"]'
    integrity = ADAPTER.parse(samples[5]).alerts[0]
    assert integrity.techniques == ["T1565.001", "TA0040"]
    assert integrity.labels["location"] == "syscheck"


def test_a_json_decoded_log_keeps_its_own_address_fields() -> None:
    (alert,) = ADAPTER.parse(SURICATA_VIA_WAZUH).alerts
    assert alert.title.startswith("Suricata: Alert - ET WEB_SERVER")
    assert (str(alert.src_ip), str(alert.dst_ip)) == ("16.10.10.10", "16.10.10.11")
    assert alert.severity.value == "info"  # level 3: Wazuh's rules classification puts it with notifications
    assert alert.id == "wazuh-manager/1462211208.1175"
    assert alert.labels["data.alert"] == '{"action":"allowed","signature_id":"2019236","severity":"1"}'


def test_a_windows_alert_names_its_target_user_and_tactics() -> None:
    (alert,) = ADAPTER.parse(WINDOWS_LOGON_FAILURE).alerts
    assert (alert.host, alert.user, str(alert.dst_ip)) == ("DC-01", "Administrator", "192.0.2.20")
    assert alert.techniques == ["T1078", "TA0003", "TA0005"]
    assert alert.labels["mitre_techniques"] == "Valid Accounts"
    assert alert.severity.value == "low"


@pytest.mark.parametrize(
    ("level", "severity", "band"),
    [
        (0, "info", "0-3"),
        (3, "info", "0-3"),
        (4, "low", "4-6"),
        (6, "low", "4-6"),
        (7, "medium", "7-11"),
        (10, "medium", "7-11"),
        (11, "medium", "7-11"),
        (12, "high", "12-14"),
        (14, "high", "12-14"),
        (15, "critical", "15-16"),
        (16, "critical", "15-16"),
        ("12", "high", "12-14"),  # an indexer that kept it as text
    ],
)
def test_rule_levels_map_to_the_documented_bands(level: Any, severity: str, band: str) -> None:
    record = {**WINDOWS_LOGON_FAILURE, "rule": {**WINDOWS_LOGON_FAILURE["rule"], "level": level}}
    (alert,) = ADAPTER.parse(record).alerts
    assert alert.severity.value == severity
    assert alert.severity_reason == f"Wazuh level {int(level)} ({band}) -> {severity}"


@pytest.mark.parametrize(
    ("level", "code"),
    [
        (-1, "invalid_fields"),
        (17, "invalid_fields"),
        (5.5, "invalid_fields"),
        ("high", "invalid_fields"),
        (True, "invalid_fields"),
        (None, "missing_fields"),
    ],
)
def test_a_level_outside_wazuhs_scale_is_refused(level: Any, code: str) -> None:
    record = {**WINDOWS_LOGON_FAILURE, "rule": {**WINDOWS_LOGON_FAILURE["rule"], "level": level}}
    with pytest.raises(Rejected, match="level") as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code


def test_a_line_without_an_id_is_identified_by_its_content() -> None:
    record = {k: v for k, v in WINDOWS_LOGON_FAILURE.items() if k != "id"}
    first, again = ADAPTER.parse(record).alerts[0], ADAPTER.parse(dict(record)).alerts[0]
    assert first.id == again.id and len(first.id) == 32
    other = {**record, "full_log": "another line"}
    assert ADAPTER.parse(other).alerts[0].id != first.id


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ([WINDOWS_LOGON_FAILURE], "invalid_fields"),
        ({**WINDOWS_LOGON_FAILURE, "rule": "60122"}, "missing_fields"),
        ({**WINDOWS_LOGON_FAILURE, "timestamp": "yesterday"}, "bad_timestamp"),
        ({k: v for k, v in WINDOWS_LOGON_FAILURE.items() if k != "timestamp"}, "missing_fields"),
    ],
)
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code and refused.value.reason
