"""Classification rules as data: the file's validation, each tool's taxonomy, ATT&CK, keywords, unknown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector import adapters
from services.detector.classification import (
    CACHED_FORMATS,
    CACHED_SHAPES,
    ClassificationError,
    keyword_pattern,
    load_rules,
    parse_rules,
    shipped,
)
from services.detector.service import spec
from shared.alerts import Alert
from shared.events import IncidentType
from shared.settings import VigilSettings
from tests.factories import alert

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"


def read(format_name: str, payload: dict[str, Any]) -> Alert:
    """The one alert the format's adapter reads from a record; skipped while that adapter is not registered."""
    if format_name not in adapters.FORMATS:
        pytest.skip(f"the {format_name} adapter is not registered")
    (read_alert,) = adapters.parse_payload(payload, format_name=format_name).alerts
    return read_alert


# ---- the rules file ----------------------------------------------------------------------------


def test_the_shipped_rules_are_valid() -> None:
    rules = load_rules()
    assert len(rules.rules) > 40
    assert rules.severity.widespread_hosts == 5


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("rules: [{id: bad-regex, type: data_leak, category: '(unclosed'}]", "rule 'bad-regex' (#1) category"),
        ("rules: [{id: bad-regex, type: data_leak, category: '(unclosed'}]", "invalid regular expression"),
        ("rules: [{id: bad-label, type: data_leak, labels: {x: '[a-'}}]", "rule 'bad-label' (#1) labels"),
        ("rules: [{id: no-such-type, type: breach, keywords: [x]}]", "rule 'no-such-type' (#1) type"),
        ("rules: [{id: typo, type: data_leak, catgory: x}]", "rule 'typo' (#1) catgory: Extra inputs"),
        ("rules: [{id: empty, type: data_leak}]", "rule 'empty' (#1): a rule needs at least one condition"),
        ("rules: [{id: bad-attack, type: data_leak, techniques: [T48]}]", "not ATT&CK technique or tactic ids"),
        ("rules: [{id: blank, type: data_leak, keywords: ['*']}]", "empty keywords"),
        ("rules: [{id: Upper Case, type: data_leak, keywords: [x]}]", "rule 'Upper Case' (#1) id"),
        ("rules: [{type: data_leak, keywords: [x]}]", "rule #1 id: Field required"),
        (
            "rules: [{id: twice, type: data_leak, keywords: [x]}, {id: twice, type: data_leak, keywords: [y]}]",
            "rule id 'twice' is used twice",
        ),
        ("rules: []", "rules: List should have at least 1 item"),
        ("severity: {widespread_hosts: 0}\nrules: [{id: a, type: data_leak, keywords: [x]}]", "widespread_hosts"),
        ("rules: [{id: a, type: data_leak, keywords: [x]]", "not YAML"),
    ],
)
def test_a_broken_rules_file_is_refused_naming_the_rule_and_the_reason(document: str, says: str) -> None:
    with pytest.raises(ClassificationError) as refused:
        parse_rules(document, origin="rules.yaml")
    assert str(refused.value).startswith("rules.yaml: ")
    assert says in str(refused.value)


def test_a_broken_rules_file_stops_the_detector_at_start_up(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yaml"
    broken.write_text("rules:\n  - {id: mine, type: data_leak, rule: '*oops'}\n")
    with pytest.raises(ClassificationError, match=r"rule 'mine' \(#1\) rule: invalid regular expression"):
        spec(VigilSettings(classification_rules=broken))
    with pytest.raises(ClassificationError, match="cannot be read"):
        spec(VigilSettings(classification_rules=tmp_path / "missing.yaml"))


def test_a_rules_file_of_ones_own_replaces_the_shipped_one(tmp_path: Path) -> None:
    own = tmp_path / "rules.yaml"
    own.write_text("rules:\n  - {id: our-payroll, type: data_leak, labels: {service: payroll}}\n")
    detector = spec(VigilSettings(classification_rules=own)).handler.__self__  # type: ignore[attr-defined]
    decision = detector.classifier.classify(alert(title="Port scan", labels={"service": "Payroll"}))
    assert (decision.type, decision.rule) == (IncidentType.DATA_LEAK, "our-payroll")
    assert decision.reason == "label service='Payroll' (rule our-payroll)"
    # Nothing of the shipped rules is left: no keyword rule places the port scan.
    assert detector.classifier.classify(alert(title="Port scan", description="")).type is IncidentType.UNKNOWN


def test_every_condition_of_a_rule_must_hold_and_any_item_of_a_list() -> None:
    rules = parse_rules(
        "rules:\n  - {id: both, type: data_leak, format: [suricata, zeek], tags: [a, b], category: 'leak$'}"
    )
    holds = alert(format="zeek", tags=["B"], category="Information Leak")
    assert rules.classify(holds).rule == "both"
    assert rules.classify(holds.model_copy(update={"format": "falco"})).rule == "unclassified"
    assert rules.classify(holds.model_copy(update={"tags": ["c"]})).rule == "unclassified"
    assert rules.classify(holds.model_copy(update={"category": "Leak detected"})).rule == "unclassified"


# ---- each tool's own taxonomy --------------------------------------------------------------------

SURICATA_TROJAN = {  # Suricata's EVE docs, "Event type: Alert" (docs.suricata.io, output/eve)
    "timestamp": "2009-11-24T21:27:09.534255",
    "event_type": "alert",
    "flow_id": 1676750118925411,
    "src_ip": "192.168.2.7",
    "src_port": 1041,
    "dest_ip": "203.0.113.50",
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


def suricata(signature: str, category: str | None) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(json.dumps(SURICATA_TROJAN))
    record["alert"].update(signature=signature, category=category)
    if category is None:
        del record["alert"]["category"]
    return record


def falco(rule: str, tags: list[str] | None = None) -> dict[str, Any]:
    # Falco's JSON output (falco.org/docs/concepts/outputs/formatting), with tags as falcosidekick forwards them.
    record: dict[str, Any] = {
        "output": f"16:31:56.746609046: Warning {rule} (user=root command=sh -c id)",
        "priority": "Warning",
        "rule": rule,
        "time": "2017-10-09T23:31:56.746609046Z",
        "output_fields": {"evt.time": 1507591916746609046, "user.name": "root", "proc.cmdline": "sh -c id"},
        "hostname": "node-3",
    }
    if tags is not None:
        record.update(source="syscall", tags=tags)
    return record


def wazuh(groups: list[str], *, level: int = 10, mitre: dict[str, Any] | None = None) -> dict[str, Any]:
    # An alerts.json line (documentation.wazuh.com, "Alerts": rule.level, rule.groups, rule.mitre).
    rule: dict[str, Any] = {"level": level, "description": "sshd: brute force", "id": "5712", "groups": groups}
    if mitre:
        rule["mitre"] = mitre
    return {
        "timestamp": "2024-03-05T10:12:01.884+0000",
        "rule": rule,
        "agent": {"id": "004", "name": "web-01", "ip": "10.0.1.132"},
        "manager": {"name": "wazuh-manager"},
        "id": "1709633521.884211",
        "decoder": {"name": "sshd"},
        "location": "/var/log/secure",
        "full_log": "Failed password for root from 198.51.100.7 port 22 ssh2",
    }


def guardduty(finding_type: str, severity: float = 8) -> dict[str, Any]:
    # A finding as the GuardDuty User Guide's "Finding details" shows it.
    return {
        "schemaVersion": "2.0",
        "accountId": "111122223333",
        "region": "eu-west-1",
        "partition": "aws",
        "id": "5ab1b4c2f1e3d7a9e0c1b2a3d4e5f601",
        "arn": "arn:aws:guardduty:eu-west-1:111122223333:detector/12ab/finding/5ab1b4c2f1e3d7a9e0c1b2a3d4e5f601",
        "type": finding_type,
        "resource": {"resourceType": "Instance", "instanceDetails": {"instanceId": "i-0a1b2c3d4e5f67890"}},
        "service": {"serviceName": "guardduty", "detectorId": "12ab", "archived": False, "count": 1},
        "severity": severity,
        "createdAt": "2024-06-01T10:05:00.000Z",
        "updatedAt": "2024-06-01T10:25:00.000Z",
        "title": f"{finding_type} on i-0a1b2c3d4e5f67890",
        "description": "A finding.",
    }


def ocsf(types: list[str], attacks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # A Detection Finding (schema.ocsf.io/1.1.0/classes/detection_finding).
    return {
        "activity_id": 1,
        "class_uid": 2004,
        "category_uid": 2,
        "type_uid": 200401,
        "severity_id": 3,
        "status_id": 1,
        "time": 1717236000000,
        "metadata": {"version": "1.1.0", "product": {"name": "Security Hub", "vendor_name": "AWS"}},
        "finding_info": {"uid": "f-1", "title": "A finding", "types": types, "attacks": attacks or []},
        "device": {"hostname": "web-01"},
    }


def elastic(**fields: Any) -> dict[str, Any]:
    # A detection-engine alert, flat (Elastic Security docs, "Alert schema").
    return {
        "@timestamp": "2024-05-02T09:15:04.512Z",
        "event.kind": "signal",
        "kibana.alert.uuid": "0b5d2f9c-5c1e-4a1f-9f53-1d2c3b4a5e6f",
        "kibana.alert.rule.name": "A rule",
        "kibana.alert.severity": "medium",
        "kibana.alert.workflow_status": "open",
        "host.name": "ws-042",
        **fields,
    }


def zeek(note: str) -> dict[str, Any]:
    # notice.log as JSON (docs.zeek.org, "Notice Framework": ts, note, msg, src, dst, actions).
    return {
        "ts": 1700000100.0,
        "uid": "CHhAvVGS1DHFjwGM9",
        "id.orig_h": "10.0.0.5",
        "id.resp_h": "198.51.100.66",
        "note": note,
        "msg": f"{note} from 10.0.0.5",
        "src": "10.0.0.5",
        "dst": "198.51.100.66",
        "actions": ["Notice::ACTION_LOG"],
    }


def alertmanager(alertname: str, **labels: str) -> dict[str, Any]:
    # The webhook payload of the Alertmanager docs (prometheus.io/docs/alerting/latest/configuration/#webhook_config).
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing",
        "receiver": "ops",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname, "instance": "api-1:9100", "severity": "warning", **labels},
                "annotations": {"summary": f"{alertname} on api-1", "description": "Memory leak suspected"},
                "startsAt": "2025-11-24T08:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "a1b2c3d4e5f60718",
            }
        ],
    }


@pytest.mark.parametrize(
    ("format_name", "record", "expected", "rule", "reason"),
    [
        # Suricata: the classtype's text first, then the ET category in the signature.
        ("suricata", SURICATA_TROJAN, IncidentType.SYSTEM_COMPROMISE, "suricata-trojan",
         "suricata category 'A Network Trojan was detected' (rule suricata-trojan)"),
        ("suricata", suricata("ET WEB_SERVER Possible CVE-2014-6271 Probe", "Attempted Information Leak"),
         IncidentType.SECURITY_BREACH, "suricata-information-leak", "category 'Attempted Information Leak'"),
        # An ET signature that reports (INFO, POLICY) or hunts says nothing of the type, whatever classtype it borrows.
        ("suricata", suricata("ET POLICY curl User-Agent Outbound", "Attempted Information Leak"),
         IncidentType.UNKNOWN, "suricata-signature-reporting", "signature 'ET POLICY curl User-Agent Outbound'"),
        ("suricata", suricata("ET HUNTING GENERIC SUSPICIOUS POST to Dotted Quad", "Potentially Bad Traffic"),
         IncidentType.UNKNOWN, "suricata-signature-reporting", "ET HUNTING"),
        ("suricata", suricata("ET DOS Possible NTP DDoS Inbound", "Attempted Denial of Service"),
         IncidentType.SERVICE_DISRUPTION, "suricata-denial-of-service", "'Attempted Denial of Service'"),
        ("suricata", suricata("ET WEB_SERVER SQL Injection", "Web Application Attack"),
         IncidentType.SECURITY_BREACH, "suricata-attack", "'Web Application Attack'"),
        ("suricata", suricata("GPL ATTACK_RESPONSE id check returned root", "Potentially Bad Traffic"),
         IncidentType.SYSTEM_COMPROMISE, "suricata-signature-compromise",
         "suricata signature 'GPL ATTACK_RESPONSE id check returned root'"),
        ("suricata", suricata("ET SCAN Potential SSH Scan", None),
         IncidentType.SECURITY_BREACH, "suricata-signature-attack", "signature 'ET SCAN Potential SSH Scan'"),
        # "Not Suspicious" outweighs a keyword in the signature's text.
        ("suricata", suricata("ET POLICY suspicious-looking apt User-Agent", "Not Suspicious Traffic"),
         IncidentType.UNKNOWN, "suricata-not-suspicious", "'Not Suspicious Traffic'"),
        # Falco: its rule names, then its mitre_* tags.
        ("falco", falco("Terminal shell in container"), IncidentType.SYSTEM_COMPROMISE, "falco-compromise",
         "falco rule 'Terminal shell in container'"),
        ("falco", falco("Read sensitive file untrusted"), IncidentType.SECURITY_BREACH, "falco-access",
         "falco rule 'Read sensitive file untrusted'"),
        ("falco", falco("Our own rule", ["host", "mitre_exfiltration"]), IncidentType.DATA_LEAK,
         "falco-tags-exfiltration", "falco tag 'mitre_exfiltration'"),
        ("falco", falco("Falco internal: syscall event drop"), IncidentType.SERVICE_DISRUPTION, "falco-internal",
         "falco rule 'Falco internal: syscall event drop'"),
        # Wazuh: rule groups.
        ("wazuh", wazuh(["syslog", "sshd", "authentication_failures"]), IncidentType.SECURITY_BREACH,
         "wazuh-authentication", "wazuh group 'authentication_failures'"),
        ("wazuh", wazuh(["ossec", "rootcheck"]), IncidentType.SYSTEM_COMPROMISE, "wazuh-malware",
         "wazuh group 'rootcheck'"),
        ("wazuh", wazuh(["ossec", "service_availability"]), IncidentType.SERVICE_DISRUPTION, "wazuh-availability",
         "wazuh group 'service_availability'"),
        # ... and rule.mitre when its groups say nothing.
        ("wazuh", wazuh(["syslog"], mitre={"id": ["T1048.003"], "tactic": ["Exfiltration"]}), IncidentType.DATA_LEAK,
         "attack-exfiltration-technique", "ATT&CK technique T1048.003"),
        # GuardDuty: the finding type's threat purpose.
        ("guardduty", guardduty("Exfiltration:S3/AnomalousBehavior"), IncidentType.DATA_LEAK,
         "guardduty-exfiltration", "guardduty finding type 'Exfiltration:S3/AnomalousBehavior'"),
        ("guardduty", guardduty("Trojan:EC2/DNSDataExfiltration"), IncidentType.SYSTEM_COMPROMISE,
         "guardduty-compromise", "'Trojan:EC2/DNSDataExfiltration'"),
        ("guardduty", guardduty("CryptoCurrency:EC2/BitcoinTool.B!DNS"), IncidentType.SYSTEM_COMPROMISE,
         "guardduty-compromise", "'CryptoCurrency:EC2/BitcoinTool.B!DNS'"),
        ("guardduty", guardduty("UnauthorizedAccess:IAMUser/ConsoleLoginSuccess.B"), IncidentType.SECURITY_BREACH,
         "guardduty-access", "'UnauthorizedAccess:IAMUser/ConsoleLoginSuccess.B'"),
        ("guardduty", guardduty("Impact:EC2/PortSweep"), IncidentType.SYSTEM_COMPROMISE,
         "guardduty-impact-resource", "'Impact:EC2/PortSweep'"),
        ("guardduty", guardduty("Recon:EC2/PortProbeUnprotectedPort"), IncidentType.SECURITY_BREACH,
         "guardduty-access", "'Recon:EC2/PortProbeUnprotectedPort'"),
        # OCSF: finding types in the ASFF taxonomy, then attacks.
        ("ocsf", ocsf(["Effects/Data Exfiltration"]), IncidentType.DATA_LEAK, "ocsf-data",
         "ocsf finding type 'Effects/Data Exfiltration'"),
        ("ocsf", ocsf(["TTPs/Command and Control/Backdoor:EC2-C&CActivity.B"]), IncidentType.SYSTEM_COMPROMISE,
         "ocsf-compromise", "'TTPs/Command and Control/Backdoor:EC2-C&CActivity.B'"),
        ("ocsf", ocsf(["Custom"], [{"tactic": {"uid": "TA0040", "name": "Impact"}}]), IncidentType.SERVICE_DISRUPTION,
         "attack-impact", "ATT&CK tactic TA0040 Impact"),
        # Elastic: Elastic Defend's event code, the prebuilt rules' tactic tags, the rule's threat.
        ("elastic", elastic(**{"event.code": "malicious_file"}), IncidentType.SYSTEM_COMPROMISE, "elastic-defend",
         "elastic category 'malicious_file'"),
        ("elastic", elastic(**{"kibana.alert.rule.tags": ["Domain: Cloud", "Tactic: Exfiltration"]}),
         IncidentType.DATA_LEAK, "elastic-tactic-exfiltration", "elastic tag 'Tactic: Exfiltration'"),
        ("elastic", elastic(**{"kibana.alert.rule.threat": [{"framework": "MITRE ATT&CK", "tactic": {
            "id": "TA0006", "name": "Credential Access"}, "technique": [{"id": "T1110", "name": "Brute Force"}]}]}),
         IncidentType.SECURITY_BREACH, "attack-access-technique", "ATT&CK technique T1110"),
        # Zeek: notice types.
        ("zeek", zeek("SSH::Password_Guessing"), IncidentType.SECURITY_BREACH, "zeek-attack",
         "zeek notice 'SSH::Password_Guessing'"),
        ("zeek", zeek("CaptureLoss::Too_Much_Loss"), IncidentType.SERVICE_DISRUPTION, "zeek-availability",
         "zeek notice 'CaptureLoss::Too_Much_Loss'"),
        # Alertmanager: an alertname is infrastructure, a "memory leak" included; a label may say otherwise.
        ("alertmanager", alertmanager("HighMemoryUsage"), IncidentType.SERVICE_DISRUPTION,
         "alertmanager-infrastructure", "label alertname='HighMemoryUsage'"),
        ("alertmanager", alertmanager("SSHBruteForce", incident_type="security_breach"), IncidentType.SECURITY_BREACH,
         "declared-security-breach", "label incident_type='security_breach'"),
    ],
)  # fmt: skip
def test_each_tool_is_read_by_its_own_taxonomy_first(
    format_name: str, record: dict[str, Any], expected: IncidentType, rule: str, reason: str
) -> None:
    decision = shipped().classify(read(format_name, record))
    assert (decision.type, decision.rule) == (expected, rule), decision.reason
    assert reason in decision.reason
    assert decision.reason.endswith(f"(rule {rule})")


# ---- ATT&CK, keywords, unknown -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("techniques", "expected", "rule"),
    [
        (["T1048.003"], IncidentType.DATA_LEAK, "attack-exfiltration-technique"),  # a sub-technique of T1048
        (["T1059.001", "TA0002"], IncidentType.SYSTEM_COMPROMISE, "attack-compromise-technique"),
        (["T1499.002"], IncidentType.SERVICE_DISRUPTION, "attack-availability-technique"),
        (["T1110.003", "TA0006"], IncidentType.SECURITY_BREACH, "attack-access-technique"),
        (["T1565.001", "TA0040"], IncidentType.SECURITY_BREACH, "attack-access-technique"),
        (["TA0010"], IncidentType.DATA_LEAK, "attack-exfiltration"),
        (["TA0011"], IncidentType.SYSTEM_COMPROMISE, "attack-compromise"),
        (["TA0040"], IncidentType.SERVICE_DISRUPTION, "attack-impact"),
        (["TA0001"], IncidentType.SECURITY_BREACH, "attack-access"),
        (["T9999"], IncidentType.UNKNOWN, "unclassified"),
    ],
)
def test_attack_techniques_then_tactics(techniques: list[str], expected: IncidentType, rule: str) -> None:
    decision = shipped().classify(alert(title="Something", description="", techniques=techniques))
    assert (decision.type, decision.rule) == (expected, rule)


def test_a_technique_covers_its_sub_techniques_only() -> None:
    rules = parse_rules("rules: [{id: t, type: data_leak, techniques: [T1048]}]")
    assert rules.classify(alert(techniques=["T1048.003"])).rule == "t"
    assert rules.classify(alert(techniques=["T1048"])).rule == "t"
    assert rules.classify(alert(techniques=["T10480"])).rule == "unclassified"


@pytest.mark.parametrize(
    ("title", "expected", "rule"),
    [
        ("Unusual volume of data transfer to 203.0.113.9", IncidentType.DATA_LEAK, "keywords-data-leak"),
        ("Memory leak in checkout-api", IncidentType.SERVICE_DISRUPTION, "keywords-memory-leak"),
        ("Mimikatz detected on ws-042", IncidentType.SYSTEM_COMPROMISE, "keywords-system-compromise"),
        ("Exfiltrating to pastebin", IncidentType.DATA_LEAK, "keywords-data-leak"),  # "exfiltrat*"
        ("Large download of installer", IncidentType.UNKNOWN, "unclassified"),  # not "down": whole words
        ("Service checkout is down", IncidentType.SERVICE_DISRUPTION, "keywords-service-disruption"),
    ],
)
def test_keywords_are_the_last_resort_whole_words_or_stems(title: str, expected: IncidentType, rule: str) -> None:
    decision = shipped().classify(alert(title=title, description=""))
    assert (decision.type, decision.rule) == (expected, rule)


# Keywords that overlap, share a start, end in "*" or in a non-word character, and are repeated across
# rules: what the rules below are made of, and the text is mostly made of their pieces.
_PIECES = ["leak", "leaks", "data", "data leak", "scan", "port scan", "c++", "down", "download", "é", "ête", "x"]
_KEYWORD = st.sampled_from([*_PIECES, "leak*", "scan*", "dat*", "c+*", "é*", "port sc*"])


def _first_by_each_rule(rules: list[tuple[str, list[str]]], text: str) -> tuple[str, str] | None:
    """Each rule's own pattern searched in turn: what one pass over the text must answer."""
    for rule_id, keywords in rules:
        if (found := keyword_pattern(k.lower() for k in keywords).search(text.lower())) is not None:
            return rule_id, found.group(0)
    return None


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    keywords=st.lists(st.lists(_KEYWORD, min_size=1, max_size=4), min_size=2, max_size=5),
    words=st.lists(st.sampled_from([*_PIECES, " ", "-", "_", "ed", "ing", "é", "Data", "SCAN"]), max_size=14),
)
def test_keyword_rules_in_a_row_decide_as_each_searched_in_turn(keywords: list[list[str]], words: list[str]) -> None:
    rules = [(f"k{n}", kws) for n, kws in enumerate(keywords)]
    document = {"rules": [{"id": rule_id, "type": "data_leak", "keywords": kws} for rule_id, kws in rules]}
    title = "alert: " + "".join(words)
    decision = parse_rules(json.dumps(document)).classify(alert(title=title, description=""))
    expected = _first_by_each_rule(rules, title)
    if expected is None:
        assert decision.rule == "unclassified"
    else:
        assert decision.rule == expected[0]
        assert decision.reason.endswith(f"mentions {expected[1]!r} (rule {expected[0]})")


def test_a_rule_with_more_than_keywords_keeps_its_place_between_keyword_rules() -> None:
    rules = parse_rules(
        """rules:
  - {id: first, type: data_leak, keywords: [exfiltrat*]}
  - {id: labelled, type: service_disruption, keywords: [down], labels: {env: prod}}
  - {id: any-down, type: security_breach, keywords: [down, scan]}"""
    )
    assert rules.classify(alert(title="Host down", description="", labels={"env": "prod"})).rule == "labelled"
    assert rules.classify(alert(title="Host down", description="", labels={"env": "dev"})).rule == "any-down"
    assert rules.classify(alert(title="Scan, then exfiltration", description="")).rule == "first"


def test_a_user_report_without_telling_words_is_unknown_until_triaged() -> None:
    report = read("user_report", {"report": {"reporter": "ana@example.org", "description": "Payroll looks odd"}})
    decision = shipped().classify(report)
    assert (decision.type, decision.rule) == (IncidentType.UNKNOWN, "unclassified")
    assert decision.reason == (
        "no classification rule matched the user_report alert 'Payroll looks odd' (category 'user report'); "
        "unknown until triaged (rule unclassified)"
    )


def test_a_declared_type_comes_first() -> None:
    decision = shipped().classify(alert(title="Port scan", labels={"incident_type": "data_leak"}))
    assert (decision.type, decision.rule) == (IncidentType.DATA_LEAK, "declared-data-leak")


# ---- the public corpus, when it is there -----------------------------------------------------------

# (directory, line, alert) -> (type, rule)
CORPUS_EXPECTED = {
    ("suricata_eve_alert", 1, 0): (IncidentType.SYSTEM_COMPROMISE, "suricata-trojan"),
    ("suricata_eve_alert", 8, 0): (IncidentType.UNKNOWN, "suricata-signature-reporting"),  # ET POLICY curl
    ("suricata_eve_alert", 0, 0): (IncidentType.UNKNOWN, "suricata-signature-reporting"),  # ET HUNTING, "suspicious"
    ("aws_guardduty", 6, 0): (IncidentType.SECURITY_BREACH, "guardduty-account-abuse"),  # IAMUser escalation
    ("ocsf_findings", 0, 0): (IncidentType.SECURITY_BREACH, "ocsf-account-abuse"),  # CloudTrail logging disabled
    ("wazuh_alerts", 4, 0): (IncidentType.SECURITY_BREACH, "wazuh-authentication"),
    ("aws_guardduty", 5, 0): (IncidentType.DATA_LEAK, "guardduty-attack-sequence-data"),
    ("falco", 0, 0): (IncidentType.SYSTEM_COMPROMISE, "falco-compromise"),
    ("alertmanager_webhook", 5, 1): (IncidentType.SERVICE_DISRUPTION, "alertmanager-infrastructure"),
    ("ocsf_findings", 6, 0): (IncidentType.SYSTEM_COMPROMISE, "ocsf-compromise"),
    ("elastic_ecs_alert", 0, 0): (IncidentType.SYSTEM_COMPROMISE, "elastic-defend"),
    ("zeek_notice", 0, 0): (IncidentType.SECURITY_BREACH, "zeek-attack"),
    ("edr_alerts", 0, 0): (IncidentType.SYSTEM_COMPROMISE, "edr-compromise"),
}


@pytest.mark.parametrize(("where", "expected"), CORPUS_EXPECTED.items(), ids=lambda v: str(v))
def test_corpus_samples_are_typed_by_their_tools_taxonomy(
    where: tuple[str, int, int], expected: tuple[IncidentType, str]
) -> None:
    directory, line, index = where
    files = sorted((CORPUS / directory).glob("*.jsonl"))
    if not files:
        pytest.skip(f"sample corpus {CORPUS / directory} is absent")
    record = json.loads(files[0].read_text("utf-8").splitlines()[line])
    parsed = adapters.parse_payload(record)
    decision = shipped().classify(parsed.alerts[index])
    assert (decision.type, decision.rule) == expected, decision.reason


def test_what_the_classifier_remembers_is_bounded_whatever_formats_alerts_name() -> None:
    # A native alert may name any format; the rules each format can meet are remembered, not for ever.
    rules = load_rules()
    for number in range(CACHED_FORMATS + 50):
        assert rules.classify(alert(title="Port scan", format=f"made-up-{number}")).type is not None
    assert rules._for_format.cache_info().currsize == CACHED_FORMATS
    assert rules._candidates.cache_info().currsize <= CACHED_SHAPES
