"""Suricata EVE JSON: alert events become alerts, every other event type is skipped with its reason."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.suricata import Suricata
from tests.unit.adapters.corpus import (
    records,
)

ADAPTER = Suricata()
CORPUS_DIR = "suricata_eve_alert"

# The alert example of Suricata 6's EVE docs (docs.suricata.io/en/suricata-6.0.20/output/eve/
# eve-json-format.html), its address redacted there as "x.x.250.50", with no flow_id.
DOCUMENTED_ALERT: dict[str, Any] = {
    "timestamp": "2009-11-24T21:27:09.534255",
    "event_type": "alert",
    "src_ip": "192.168.2.7",
    "src_port": 1041,
    "dest_ip": "x.x.250.50",
    "dest_port": 80,
    "proto": "TCP",
    "alert": {
        "action": "allowed",
        "gid": 1,
        "signature_id": 2001999,
        "rev": 9,
        "signature": "ET MALWARE BTGrab.com Spyware Downloading Ads",
        "category": "A Network Trojan was detected",
        "severity": 1,
    },
}

# An ET Open rule's alert with ATT&CK metadata (rules carry mitre_tactic_id, mitre_tactic_name,
# mitre_technique_id, mitre_technique_name), logged by a sensor named with `sensor-name` ("host").
MITRE_ALERT: dict[str, Any] = {
    "timestamp": "2024-03-14T10:15:00.000000+0000",
    "flow_id": 1234567890123456,
    "in_iface": "eth1",
    "host": "ids-dmz-1",
    "event_type": "alert",
    "src_ip": "10.1.2.3",
    "src_port": 49812,
    "dest_ip": "198.51.100.7",
    "dest_port": 443,
    "proto": "TCP",
    "app_proto": "tls",
    "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
    "alert": {
        "action": "blocked",
        "gid": 1,
        "signature_id": 2035000,
        "rev": 2,
        "signature": "ET MALWARE Cobalt Strike Beacon Observed",
        "category": "A Network Trojan was detected",
        "severity": 1,
        "metadata": {
            "mitre_tactic_id": ["TA0011"],
            "mitre_tactic_name": ["Command_And_Control"],
            "mitre_technique_id": ["T1071", "T1071.001"],
            "mitre_technique_name": ["Application_Layer_Protocol"],
            "signature_severity": ["Critical"],
            "tag": ["c2"],
        },
    },
    "tls": {"sni": "cdn.bad.example", "version": "TLS 1.2"},
}

# One record of each other EVE type, in the shapes of the EVE docs' examples (docs.suricata.io/en/
# latest/output/eve/eve-json-format.html: "Event type: Flow", "DNS", "HTTP", "TLS", "Fileinfo",
# "Anomaly", "Stats", "Netflow").
OTHER_EVENTS: dict[str, dict[str, Any]] = {
    "flow": {
        "timestamp": "2017-04-07T22:24:37.251547+0100",
        "flow_id": 586497171462735,
        "event_type": "flow",
        "src_ip": "192.168.2.14",
        "src_port": 50096,
        "dest_ip": "209.53.113.5",
        "dest_port": 80,
        "proto": "TCP",
        "app_proto": "http",
        "flow": {"pkts_toserver": 5, "pkts_toclient": 4, "state": "closed", "reason": "timeout", "alerted": True},
    },
    "dns": {
        "timestamp": "2009-11-24T21:27:09.534255",
        "event_type": "dns",
        "src_ip": "192.168.2.7",
        "src_port": 53,
        "dest_ip": "x.x.250.50",
        "dest_port": 23242,
        "proto": "UDP",
        "dns": {"type": "query", "id": 16000, "rrname": "twitter.com", "rrtype": "A"},
    },
    "http": {
        "timestamp": "2009-11-24T21:27:09.534255",
        "event_type": "http",
        "src_ip": "192.168.2.7",
        "dest_ip": "x.x.250.50",
        "http": {"hostname": "www.digip.org", "url": "/jansson/releases/", "http_method": "GET", "status": 200},
    },
    "tls": {
        "timestamp": "2009-11-24T21:27:09.534255",
        "event_type": "tls",
        "src_ip": "192.168.2.7",
        "dest_ip": "x.x.250.50",
        "tls": {"subject": "C=US, O=Google Inc, CN=*.google.com", "sni": "www.google.com", "version": "TLS 1.2"},
    },
    "fileinfo": {
        "timestamp": "2009-11-24T21:27:09.534255",
        "event_type": "fileinfo",
        "src_ip": "192.168.2.7",
        "dest_ip": "x.x.250.50",
        "fileinfo": {"filename": "/jansson/releases/", "state": "CLOSED", "stored": False, "size": 5362},
    },
    "anomaly": {
        "timestamp": "2019-01-22T12:22:49.185148+0000",
        "event_type": "anomaly",
        "src_ip": "10.16.1.11",
        "dest_ip": "10.16.1.10",
        "anomaly": {"type": "decode", "event": "decoder.ipv4.trunc_pkt"},
    },
    "stats": {
        "timestamp": "2019-01-22T12:22:49.185148+0000",
        "event_type": "stats",
        "stats": {"uptime": 30, "capture": {"kernel_packets": 10000, "kernel_drops": 0}},
    },
    "netflow": {
        "timestamp": "2017-04-07T22:24:37.251547+0100",
        "flow_id": 586497171462735,
        "event_type": "netflow",
        "src_ip": "192.168.2.14",
        "dest_ip": "209.53.113.5",
        "netflow": {"pkts": 5, "bytes": 600, "start": "2017-04-07T22:24:36.251547+0100"},
    },
}
# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [DOCUMENTED_ALERT, MITRE_ALERT, *OTHER_EVENTS.values()]


def corpus(line: int) -> Any:
    (alert,) = ADAPTER.parse(records(CORPUS_DIR)[line - 1]).alerts
    return alert


# ---- the corpus ------------------------------------------------------------------------------


def test_the_documented_http_alert_is_keyed_by_flow_and_signature() -> None:
    alert = corpus(1)
    assert alert.key == "suricata:586497171462735:2018358"
    assert alert.title == alert.rule == "ET HUNTING GENERIC SUSPICIOUS POST to Dotted Quad with Fake Browser 1"
    assert (alert.category, alert.severity, alert.source_severity) == (
        "Potentially Bad Traffic",
        "medium",
        "severity 2",
    )
    assert (str(alert.src_ip), str(alert.dst_ip), alert.host) == ("192.168.2.14", "209.53.113.5", None)
    assert alert.time == datetime(2017, 4, 7, 21, 24, 37, 251547, tzinfo=UTC)
    assert alert.labels["signature_id"] == "1:2018358:10"
    assert (alert.labels["app_proto"], alert.labels["src_port"], alert.labels["dest_port"]) == ("http", "50096", "80")
    assert "TCP 192.168.2.14:50096 -> 209.53.113.5:80" in alert.description


def test_severity_one_is_high_and_the_rule_metadata_is_kept() -> None:
    alert = corpus(2)
    assert (alert.severity, alert.severity_reason) == (
        "high",
        "Suricata alert severity 1 (1 is the most severe) -> high",
    )
    assert alert.labels["metadata.signature_severity"] == "Major"
    assert alert.labels["http.hostname"] == "142.11.240.191"
    assert alert.category == "A Network Trojan was detected"


def test_a_decoder_alert_without_flow_or_addresses_has_a_derived_id() -> None:
    alert = corpus(3)
    assert (alert.title, alert.severity, alert.src_ip, alert.host) == ("SURICATA Ethertype unknown", "low", None, None)
    assert len(alert.id) == 32
    assert ADAPTER.parse(copy.deepcopy(records(CORPUS_DIR)[2])).alerts[0].id == alert.id


def test_the_dns_query_and_community_id_are_read() -> None:
    alert = corpus(4)
    assert "DNS query: wpad.m57.biz" in alert.description
    assert alert.labels["dns.query"] == "wpad.m57.biz"
    assert alert.labels["community_id"] == "1:7a1+QSQIMks82cZhgk0hAeH2ykE="
    assert alert.labels["metadata.confidence"] == "High"


def test_the_interface_is_a_label_and_addresses_decide_the_entity() -> None:
    alert = corpus(8)
    assert (alert.labels["in_iface"], alert.host, alert.entity) == ("eth0", None, "ip:172.30.0.30")
    assert alert.title == "GPL ATTACK_RESPONSE id check returned root"


def test_the_same_signature_on_the_same_flow_is_one_alert_seen_again() -> None:
    assert corpus(10).key == corpus(11).key == "suricata:112424506237238:2013504"
    assert corpus(6).key == corpus(7).key  # tx 0 and tx 1 of one Java flow
    assert corpus(10).labels["http.url"] == "/ubuntu/dists/bionic/InRelease"


def test_every_corpus_alert_is_one_alert() -> None:
    for payload in records(CORPUS_DIR):
        parsed = parse_payload(payload)
        assert (parsed.format, len(parsed.alerts)) == ("suricata", 1)


# ---- documented shapes ----------------------------------------------------------------------


def test_the_documented_alert_without_flow_or_a_real_address_is_read() -> None:
    (alert,) = parse_payload(DOCUMENTED_ALERT).alerts
    assert (alert.severity, str(alert.src_ip), alert.dst_ip) == ("high", "192.168.2.7", None)
    assert alert.time == datetime(2009, 11, 24, 21, 27, 9, 534255, tzinfo=UTC)  # no offset: UTC
    assert len(alert.id) == 32


def test_attack_metadata_gives_techniques_and_the_sensor_is_a_label() -> None:
    (alert,) = ADAPTER.parse(MITRE_ALERT).alerts
    assert alert.techniques == ["T1071", "T1071.001", "TA0011"]
    assert alert.tags == ["c2"]
    assert (alert.host, alert.labels["sensor"], alert.labels["action"]) == (None, "ids-dmz-1", "blocked")
    assert alert.labels["tls.sni"] == "cdn.bad.example"
    assert "TLS SNI: cdn.bad.example" in alert.description


def test_an_alert_without_addresses_is_about_its_sensor() -> None:
    flowless = {k: v for k, v in MITRE_ALERT.items() if k not in {"src_ip", "dest_ip", "flow_id"}}
    (alert,) = ADAPTER.parse(flowless).alerts
    assert alert.host == "ids-dmz-1"


@pytest.mark.parametrize("event_type", sorted(OTHER_EVENTS))
def test_other_event_types_are_recognised_and_skipped_with_the_reason(event_type: str) -> None:
    parsed = parse_payload(OTHER_EVENTS[event_type])
    assert (parsed.format, parsed.alerts) == ("suricata", [])
    assert parsed.skipped == [f"suricata {event_type} event: not an alert"]


@pytest.mark.parametrize(
    ("given_severity", "severity"),
    [
        (1, "high"),
        (2, "medium"),
        (3, "low"),
        (4, "info"),
        (255, "info"),
        ("2", "medium"),
        (0, "medium"),
        (None, "medium"),
    ],
)
def test_suricata_severity_maps_onto_vigils_scale(given_severity: Any, severity: str) -> None:
    record = copy.deepcopy(MITRE_ALERT)
    record["alert"]["severity"] = given_severity
    (alert,) = ADAPTER.parse(record).alerts
    assert alert.severity == severity


def test_an_alert_event_without_its_alert_object_is_refused() -> None:
    record = {k: v for k, v in MITRE_ALERT.items() if k != "alert"}
    with pytest.raises(Rejected, match="no 'alert' object") as refused:
        ADAPTER.parse(record)
    assert refused.value.code == "missing_fields"


@pytest.mark.parametrize(
    ("signature", "given_severity", "severity", "lowered"),
    [
        ("ET INFO Vulnerable Java Version 1.8.x Detected", 2, "info", True),
        ("ET POLICY curl User-Agent Outbound", 2, "low", True),
        ("ETPRO P2P BitTorrent peer sync", 1, "low", True),
        ("ET POLICY Dropbox.com Offsite File Backup in Use", 3, "low", False),  # low already
        ("ET INFO .biz Domain DNS Query", 4, "info", False),
        ("ET HUNTING GENERIC SUSPICIOUS POST", 2, "medium", False),  # hunting keeps its priority
        ("ET MALWARE Win32/LeftHook Stealer", 1, "high", False),
        ("ETX INFO not an Emerging Threats name", 2, "medium", False),
    ],
)
def test_emerging_threats_reporting_signatures_are_read_no_more_severe_than_they_say(
    signature: str, given_severity: int, severity: str, lowered: bool
) -> None:
    record = copy.deepcopy(MITRE_ALERT)
    record["alert"].update(signature=signature, severity=given_severity)
    (alert,) = ADAPTER.parse(record).alerts
    assert alert.severity == severity
    assert ("reports, it does not detect an attack" in (alert.severity_reason or "")) is lowered


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        ({"http": {"hostname": "testmyids.com", "url": "/"}}, "test"),
        ({"http": {"hostname": "www.testmynids.org", "url": "/uid/index.html"}}, "test"),
        ({"dns": {"rrname": "testmynids.org."}}, "test"),
        ({"tls": {"sni": "testmyids.com"}}, "test"),
        ({"http": {"hostname": "nottestmyids.com", "url": "/"}}, "alert"),
        ({"http": {"hostname": "example.com", "url": "/testmyids.com"}}, "alert"),  # a path, not the site
    ],
)
def test_traffic_to_a_public_ids_test_site_is_a_test(names: dict[str, Any], kind: str) -> None:
    record = {**copy.deepcopy(MITRE_ALERT), **names}
    record["alert"].update(signature="GPL ATTACK_RESPONSE id check returned root", signature_id=2100498, severity=2)
    (alert,) = ADAPTER.parse(record).alerts
    assert alert.kind == kind


def test_an_attack_sent_to_a_test_sites_name_is_still_an_alert() -> None:
    # The Host header is the sender's to choose: only the signature the sites exist to fire is a test.
    record = {**copy.deepcopy(MITRE_ALERT), "http": {"hostname": "testmyids.com", "url": "/${jndi:ldap://x}"}}
    record["alert"].update(signature="ET EXPLOIT Apache log4j RCE Attempt", signature_id=2034647, severity=1)
    (alert,) = ADAPTER.parse(record).alerts
    assert (alert.kind, alert.severity) == ("alert", "high")
