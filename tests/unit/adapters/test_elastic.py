"""Elastic Security alerts: the public Elastic Defend samples, documented alert documents, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.elastic import Elastic
from tests.unit.adapters.corpus import records

ADAPTER = Elastic()
DIRECTORY = "elastic_ecs_alert"
UUID = "3b7d5c1e9f2a4b6c8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e"

# A detection-engine alert with its fields written flat, as Elastic Security's alert schema lists them
# (Elastic Security docs, "Alert schema": event.kind is always signal; kibana.alert.uuid,
# kibana.alert.rule.*, kibana.alert.severity, kibana.alert.risk_score, kibana.alert.workflow_status,
# kibana.alert.reason, kibana.alert.original_time, kibana.alert.url; ECS fields copied from the event).
DETECTION_FLAT: dict[str, Any] = {
    "@timestamp": "2024-05-02T09:15:04.512Z",
    "event.kind": "signal",
    "kibana.alert.uuid": UUID,
    "kibana.alert.rule.name": "Potential Credential Access via LSASS Memory Dump",
    "kibana.alert.rule.rule_id": "9960432d-9b26-409f-972b-839a959e79e2",
    "kibana.alert.rule.uuid": "5f1c2b0e-1a2b-11ef-9a3c-0242ac120002",
    "kibana.alert.rule.type": "eql",
    "kibana.alert.rule.description": "Identifies access to LSASS memory by a dumping tool.",
    "kibana.alert.rule.tags": ["Domain: Endpoint", "OS: Windows", "Tactic: Credential Access"],
    "kibana.alert.rule.threat": [
        {
            "framework": "MITRE ATT&CK",
            "tactic": {
                "id": "TA0006",
                "name": "Credential Access",
                "reference": "https://attack.mitre.org/tactics/TA0006/",
            },
            "technique": [
                {
                    "id": "T1003",
                    "name": "OS Credential Dumping",
                    "reference": "https://attack.mitre.org/techniques/T1003/",
                    "subtechnique": [{"id": "T1003.001", "name": "LSASS Memory"}],
                }
            ],
        }
    ],
    "kibana.alert.severity": "high",
    "kibana.alert.risk_score": 73,
    "kibana.alert.workflow_status": "open",
    "kibana.alert.status": "active",
    "kibana.alert.reason": "process event with process procdump.exe, by jdoe on ws-042 created high alert "
    "Potential Credential Access via LSASS Memory Dump.",
    "kibana.alert.original_time": "2024-05-02T09:14:58.000Z",
    "kibana.alert.url": "https://kibana.example.com/app/security/alerts/redirect/" + UUID,
    "kibana.space_ids": ["default"],
    "host.name": "ws-042",
    "user.name": "jdoe",
    "process.command_line": "procdump.exe -accepteula -ma lsass.exe out.dmp",
}


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """The same document with its dotted keys written as nested objects."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".") if key != "@timestamp" else ["@timestamp"]
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


# A 7.x signal, as a search hit on .siem-signals-* (Elastic SIEM 7.x "Signal schema": signal.rule.*,
# signal.status, signal.original_time; event.kind signal).
SIGNAL_HIT: dict[str, Any] = {
    "_index": ".siem-signals-default-000001",
    "_id": "a8f1c0d2e3b4",
    "_source": {
        "@timestamp": "2021-03-10T12:00:05.000Z",
        "event": {"kind": "signal"},
        "signal": {
            "rule": {
                "id": "c2f3e6a0-8171-11eb-9d0f-2b3f0a1b2c3d",
                "rule_id": "f44fa4b6-524c-4e87-8d9e-a32599e4fb7c",
                "name": "Outbound connection to a rare port",
                "severity": "medium",
                "risk_score": 47,
                "threat": [{"framework": "MITRE ATT&CK", "tactic": {"id": "TA0011", "name": "Command and Control"}}],
            },
            "status": "closed",
            "original_time": "2021-03-10T11:59:59.000Z",
        },
        "host": {"name": "web-3"},
        "source": {"ip": "10.2.0.7"},
        "destination": {"ip": "203.0.113.200"},
    },
}

# A Suricata alert shipped by Filebeat's suricata module in ECS (event.kind alert, event.module
# suricata, event.severity = Suricata's alert.severity, where 1 is the highest).
FILEBEAT_SURICATA: dict[str, Any] = {
    "@timestamp": "2023-11-01T08:30:00.123Z",
    "event": {"kind": "alert", "module": "suricata", "dataset": "suricata.eve", "severity": 1, "id": "f-9911"},
    "rule": {"id": "2019236", "name": "ET WEB_SERVER Possible CVE-2014-6271 Attempt", "category": "Attempted Admin"},
    "source": {"ip": "198.51.100.9", "port": 5555},
    "destination": {"ip": "192.0.2.10", "port": 80},
    "message": "ET WEB_SERVER Possible CVE-2014-6271 Attempt",
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [DETECTION_FLAT, nested(DETECTION_FLAT), SIGNAL_HIT, FILEBEAT_SURICATA]


def test_the_public_elastic_defend_alerts_are_read_with_their_fields() -> None:
    samples = records(DIRECTORY)
    assert len(samples) == 2
    (prevention,) = ADAPTER.parse(samples[0]).alerts
    assert (prevention.id, prevention.source, prevention.title) == (
        "MYfSjQEEEFe1o09b+++++D5Q",
        "elastic/endpoint",
        "Malware Prevention Alert",
    )
    assert (prevention.host, prevention.user, prevention.severity.value) == ("security-win-1", "SYSTEM", "high")
    assert prevention.severity_reason == "Elastic risk score 73 (48-73) -> high"
    assert prevention.time == datetime(2022, 4, 4, 12, 15, 41, 594406, UTC)
    assert prevention.category == "malicious_file"
    assert prevention.resource == "kubernetes webapp/webservers"
    assert "file: C:\\sysmon\\9C0E42A47D" in prevention.description
    (malware,) = ADAPTER.parse(samples[1]).alerts
    assert (malware.id, malware.host, malware.user, malware.rule) == (
        "LZuf+05Wl/ji0z7y+++++++3",
        "host1",
        "albert",
        "BLOCK_DNS_over_TLS",
    )
    assert malware.techniques == ["T1499", "TA0040"]
    assert (malware.severity.value, malware.severity_reason) == ("medium", "no severity or risk score -> medium")
    assert malware.raw == samples[1]


@pytest.mark.parametrize("document", [DETECTION_FLAT, nested(DETECTION_FLAT)], ids=["flat", "nested"])
def test_a_detection_alert_reads_the_same_flat_or_nested(document: dict[str, Any]) -> None:
    (alert,) = ADAPTER.parse(document).alerts
    assert (alert.id, alert.source, alert.title, alert.rule) == (
        UUID,
        "elastic",
        "Potential Credential Access via LSASS Memory Dump",
        "Potential Credential Access via LSASS Memory Dump",
    )
    assert alert.description.startswith("process event with process procdump.exe")
    assert (alert.severity.value, alert.severity_reason) == ("high", "Elastic severity high -> high")
    assert (alert.host, alert.user, alert.status) == ("ws-042", "jdoe", "firing")
    assert alert.time == datetime(2024, 5, 2, 9, 15, 4, 512000, UTC)
    assert alert.techniques == ["T1003", "T1003.001", "TA0006"]
    assert alert.tags == ["Domain: Endpoint", "OS: Windows", "Tactic: Credential Access"]
    assert alert.url == "https://kibana.example.com/app/security/alerts/redirect/" + UUID
    assert alert.labels["rule_id"] == "9960432d-9b26-409f-972b-839a959e79e2"
    assert parse_payload(document).format == "elastic"


def test_a_mixed_document_and_a_search_hits_fields_read_alike() -> None:
    mixed = {"@timestamp": DETECTION_FLAT["@timestamp"], "kibana.alert": nested(DETECTION_FLAT)["kibana"]["alert"]}
    fields_hit = {
        "_index": ".internal.alerts-security.alerts-default-000001",
        "_id": UUID,
        "fields": {k: v if isinstance(v, list) else [v] for k, v in DETECTION_FLAT.items() if "threat" not in k}
        | {"kibana.alert.rule.threat.tactic.id": ["TA0006"], "kibana.alert.rule.threat.technique.id": ["T1003"]},
    }
    for document in (mixed, fields_hit):
        (alert,) = ADAPTER.parse(document).alerts
        assert (alert.id, alert.title, alert.severity.value) == (UUID, DETECTION_FLAT["kibana.alert.rule.name"], "high")
    assert ADAPTER.parse(fields_hit).alerts[0].techniques == ["T1003", "TA0006"]


def test_a_closed_7x_signal_is_resolved_and_keyed_by_its_document_id() -> None:
    (alert,) = ADAPTER.parse(SIGNAL_HIT).alerts
    assert (alert.id, alert.source, alert.status) == ("a8f1c0d2e3b4", "elastic", "resolved")
    assert (alert.title, alert.severity.value, alert.techniques) == (
        "Outbound connection to a rare port",
        "medium",
        ["TA0011"],
    )
    assert (str(alert.src_ip), str(alert.dst_ip), alert.host) == ("10.2.0.7", "203.0.113.200", "web-3")
    assert alert.raw == SIGNAL_HIT


def test_another_tools_ecs_alert_keeps_its_own_severity_scale_apart() -> None:
    (alert,) = ADAPTER.parse(FILEBEAT_SURICATA).alerts
    assert (alert.source, alert.id, alert.title) == (
        "elastic/suricata",
        "f-9911",
        "ET WEB_SERVER Possible CVE-2014-6271 Attempt",
    )
    assert (alert.severity.value, alert.severity_reason) == (
        "medium",
        "event.severity 1 is on its tool's own scale -> medium",
    )
    assert (str(alert.src_ip), str(alert.dst_ip), alert.category) == ("198.51.100.9", "192.0.2.10", "Attempted Admin")


@pytest.mark.parametrize(
    ("score", "severity", "band"),
    [(0, "low", "0-21"), (21, "low", "0-21"), (22, "medium", "22-47"), (47, "medium", "22-47"),
     (48, "high", "48-73"), (73, "high", "48-73"), (74, "critical", "74-100"), (100, "critical", "74-100")],
)  # fmt: skip
def test_risk_scores_follow_elastics_banding(score: int, severity: str, band: str) -> None:
    document = {k: v for k, v in DETECTION_FLAT.items() if k != "kibana.alert.severity"} | {
        "kibana.alert.risk_score": score
    }
    (alert,) = ADAPTER.parse(document).alerts
    assert (alert.severity.value, alert.severity_reason) == (
        severity,
        f"Elastic risk score {score} ({band}) -> {severity}",
    )


def test_the_rules_severity_wins_over_its_risk_score() -> None:
    document = DETECTION_FLAT | {"kibana.alert.severity": "low", "kibana.alert.risk_score": 99}
    assert ADAPTER.parse(document).alerts[0].severity.value == "low"


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"kibana.alert.workflow_status": "acknowledged"}, "firing"),
        ({"kibana.alert.workflow_status": "closed"}, "resolved"),
        ({"kibana.alert.status": "recovered"}, "resolved"),
    ],
)
def test_closed_and_recovered_alerts_are_resolved(changes: dict[str, Any], status: str) -> None:
    assert ADAPTER.parse(DETECTION_FLAT | changes).alerts[0].status == status


def test_a_building_block_alert_is_skipped_with_its_reason() -> None:
    parsed = ADAPTER.parse(DETECTION_FLAT | {"kibana.alert.building_block_type": "default"})
    assert parsed.alerts == []
    assert parsed.skipped == [
        "Elastic building-block alert of rule 'Potential Credential Access via LSASS Memory Dump': "
        "Elastic keeps it out of the alerts view"
    ]


def test_a_detection_alert_is_never_keyed_by_its_source_events_id() -> None:
    # Two rules alerting on one event copy the same event.id: without uuid or _id, a digest decides.
    document = {k: v for k, v in DETECTION_FLAT.items() if k != "kibana.alert.uuid"} | {"event.id": "shared"}
    other = document | {"kibana.alert.rule.name": "Another rule"}
    assert ADAPTER.parse(document).alerts[0].id != ADAPTER.parse(other).alerts[0].id != "shared"


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ("alert", "invalid_fields"),
        ({"@timestamp": "2024-01-01T00:00:00Z", "event": {"kind": "event"}}, "missing_fields"),
        ({k: v for k, v in DETECTION_FLAT.items() if k != "@timestamp" and k != "kibana.alert.original_time"},
         "missing_fields"),
        (DETECTION_FLAT | {"@timestamp": "last tuesday"}, "bad_timestamp"),
    ],
)  # fmt: skip
def test_records_that_cannot_be_alerts_are_refused_with_a_reason(record: Any, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        ADAPTER.parse(record)
    assert refused.value.code == code and refused.value.reason
