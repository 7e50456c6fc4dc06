"""ATT&CK for the analyzer: the shipped dataset, each format's own fields, tags and mapping rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.analyzer import attack, attack_dataset
from services.detector.adapters import parse_payload
from services.detector.domain import summarise
from shared.events import AlertSummary
from tests.unit.adapters import (
    test_elastic,
    test_falco,
    test_guardduty,
    test_hayabusa,
    test_ocsf,
    test_suricata,
    test_wazuh,
)

DATASET = attack.load_dataset()
RULES = attack.load_rules()


def mapped(record: dict[str, Any]) -> attack.Mapped:
    """A tool's record through the detector's adapter, as the analyzer receives it, then mapped."""
    [alert] = parse_payload(record).alerts[:1]
    return attack.map_alert(summarise(alert), DATASET, RULES)


def summary(**fields: Any) -> AlertSummary:
    base: dict[str, Any] = {
        "key": "native:1",
        "source": "native",
        "title": "Something happened",
        "severity": "high",
        "time": datetime(2026, 11, 24, 9, tzinfo=UTC),
    }
    return AlertSummary.model_validate(base | fields)


# ---- the shipped dataset -------------------------------------------------------------------------


def test_the_shipped_dataset_is_attack_enterprise_with_its_attribution_and_kill_chain_order() -> None:
    raw = json.loads(attack.DATASET.read_text())
    assert raw["dataset"] == "MITRE ATT&CK Enterprise" and DATASET.version == raw["version"]
    assert "The MITRE Corporation" in raw["attribution"] and "license" in raw["licence"]
    assert [t.name for t in sorted(DATASET.tactics.values(), key=lambda t: t.stage)][:3] == [
        "Reconnaissance",
        "Resource Development",
        "Initial Access",
    ]
    assert DATASET.tactics["TA0040"].stage == 14  # Impact closes the chain
    assert attack.DATASET.stat().st_size < 200_000  # compact: no descriptions, no relationships


def test_a_sub_technique_is_named_with_its_technique_and_a_revoked_id_becomes_its_replacement() -> None:
    assert attack.technique_label("T1059.001", DATASET) == "T1059.001 Command and Scripting Interpreter: PowerShell"
    powershell = DATASET.technique("T1086")  # revoked in 2020 for T1059.001; old rules still send it
    assert powershell is not None and (powershell.id, powershell.parent) == ("T1059.001", "T1059")
    assert attack.technique_label("T9999", DATASET) == f"T9999 (not in ATT&CK {DATASET.version})"


def test_feed_tags_name_actors_and_software_by_any_alias() -> None:
    assert DATASET.named("Fancy Bear") == attack.Named("G0007", "APT28", "actor")
    found = DATASET.named("cobalt strike")
    assert found is not None and found.id == "S0154"
    assert DATASET.named("botnet_cc") is None


# ---- each format's own fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "techniques", "tactics", "how"),
    [
        (test_wazuh.WINDOWS_LOGON_FAILURE, {"T1078"}, {"TA0003", "TA0005"}, "wazuh rule.mitre"),
        (test_falco.SIDEKICK, {"T1071"}, {"TA0011"}, "falco tags"),
        (test_suricata.MITRE_ALERT, {"T1071", "T1071.001"}, {"TA0011"}, "suricata metadata mitre_*"),
        (test_ocsf.detection_finding(), {"T1110", "T1110.003"}, {"TA0006"}, "ocsf attacks"),
        (test_elastic.DETECTION_FLAT, {"T1003", "T1003.001"}, {"TA0006"}, "elastic threat.*"),
        (test_hayabusa.VERBOSE, {"T1110.001"}, {"TA0006"}, "hayabusa MitreTags/MitreTactics"),
        (
            test_guardduty.finding(type="UnauthorizedAccess:EC2/SSHBruteForce"),
            {"T1110.001"},
            {"TA0006"},
            "rule guardduty-ssh-brute-force",
        ),
        (test_guardduty.finding(), {"T1071"}, {"TA0011"}, "rule guardduty-command-and-control"),
    ],
    ids=["wazuh", "falco", "suricata", "ocsf", "ecs", "hayabusa", "guardduty-ssh", "guardduty-c2"],
)
def test_each_format_maps_from_its_own_fields(
    record: dict[str, Any], techniques: set[str], tactics: set[str], how: str
) -> None:
    result = mapped(record)
    assert set(result.techniques) == techniques
    assert set(result.tactics) == tactics
    assert set(result.techniques.values()) == {how}


def test_a_technique_serving_several_tactics_is_placed_where_the_tool_said() -> None:
    # Wazuh says T1078 (Valid Accounts: initial access, persistence, privilege escalation, defense
    # evasion) served persistence and defense evasion here: not initial access.
    result = mapped(test_wazuh.WINDOWS_LOGON_FAILURE)
    assert result.placed["T1078"] == ("TA0003", "TA0005")
    unsaid = attack.map_alert(summary(techniques=["T1078"]), DATASET, RULES)
    assert unsaid.placed["T1078"] == ("TA0001", "TA0003", "TA0004", "TA0005")


def test_sigma_and_falco_tags_are_read_when_no_adapter_turned_them_into_ids() -> None:
    result = attack.map_alert(
        summary(tags=["attack.t1059.001", "attack.execution", "mitre_privilege_escalation"]), DATASET, RULES
    )
    assert result.techniques == {"T1059.001": "tag"}
    assert result.stated_tactics == {"TA0002", "TA0004"}
    assert result.placed["T1059.001"] == ("TA0002",)


def test_rules_fill_in_only_what_the_tool_did_not_say() -> None:
    said = attack.map_alert(summary(title="SSH brute force", techniques=["T1021.004"]), DATASET, RULES)
    assert set(said.techniques) == {"T1021.004"}  # the tool's own mapping wins
    unsaid = attack.map_alert(summary(title="SSH brute force from 203.0.113.7"), DATASET, RULES)
    assert unsaid.techniques == {"T1110": "rule brute-force-in-title"}
    nothing = attack.map_alert(summary(title="Disk almost full"), DATASET, RULES)
    assert (nothing.techniques, nothing.tactics) == ({}, {})


def test_an_unknown_id_is_kept_and_a_tactic_id_alone_is_a_stated_tactic() -> None:
    result = attack.map_alert(summary(techniques=["T9999", "TA0010"]), DATASET, RULES)
    assert result.techniques == {"T9999": "native fields"}
    assert result.tactics == {"TA0010": "native fields"}


def test_a_rules_file_with_an_unknown_id_or_an_empty_condition_is_refused_saying_where() -> None:
    with pytest.raises(attack.RulesError) as refused:
        attack.parse_rules(
            "rules:\n  - {name: typo, when: {format: zeek}, techniques: [T1110, T9998]}\n",
            source="attack.yaml",
            dataset=DATASET,
        )
    assert "rule typo: T9998 is no ATT&CK" in str(refused.value)
    with pytest.raises(attack.RulesError) as empty:
        attack.parse_rules("rules:\n  - {name: any, when: {}, techniques: [T1110]}\n", source="a.yaml", dataset=DATASET)
    assert "a.yaml:2:" in str(empty.value) and "at least one of" in str(empty.value)


# ---- making the compact dataset ------------------------------------------------------------------


def _stix(kind: str, external_id: str, name: str, **fields: Any) -> dict[str, Any]:
    reference = {"source_name": "mitre-attack", "external_id": external_id}
    return {"type": kind, "id": f"{kind}--{external_id}", "name": name, "external_references": [reference], **fields}


def test_the_dataset_script_keeps_ids_names_tactics_revocations_and_aliases_only(tmp_path: Path) -> None:
    phase = {"kill_chain_name": "mitre-attack", "phase_name": "execution"}
    objects = [
        _stix("x-mitre-tactic", "TA0002", "Execution", x_mitre_shortname="execution", description="long"),
        _stix("x-mitre-tactic", "TA0001", "Initial Access", x_mitre_shortname="initial-access"),
        {
            "type": "x-mitre-matrix",
            "id": "x-mitre-matrix--1",
            "external_references": [{"source_name": "mitre-attack", "external_id": "enterprise-attack"}],
            "tactic_refs": ["x-mitre-tactic--TA0001", "x-mitre-tactic--TA0002"],
        },
        _stix("attack-pattern", "T1059", "Command and Scripting Interpreter", kill_chain_phases=[phase]),
        _stix("attack-pattern", "T1059.001", "PowerShell", kill_chain_phases=[phase], description="long"),
        _stix("attack-pattern", "T1086", "PowerShell", revoked=True),
        {
            "type": "relationship",
            "relationship_type": "revoked-by",
            "source_ref": "attack-pattern--T1086",
            "target_ref": "attack-pattern--T1059.001",
        },
        _stix("intrusion-set", "G0007", "APT28", aliases=["APT28", "Fancy Bear"]),
        _stix("malware", "S0154", "Cobalt Strike", x_mitre_aliases=["Cobalt Strike"]),
        _stix("tool", "S0002", "Mimikatz", x_mitre_deprecated=True),
    ]
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "objects": objects}))
    output = tmp_path / "attack.json"
    assert attack_dataset.main([str(source), "--version", "99.1", "--origin", "test", "--output", str(output)]) == 0
    made = json.loads(output.read_text())
    assert made["tactics"] == [["TA0001", "Initial Access", "initial-access"], ["TA0002", "Execution", "execution"]]
    assert made["techniques"] == {
        "T1059": {"name": "Command and Scripting Interpreter", "tactics": ["TA0002"]},
        "T1059.001": {"name": "PowerShell", "tactics": ["TA0002"]},
    }
    assert made["revoked"] == {"T1086": "T1059.001"}
    assert made["groups"] == {"G0007": ["APT28", ["Fancy Bear"]]}
    assert made["software"] == {"S0154": ["Cobalt Strike", "malware", []]}  # deprecated Mimikatz left out
    assert made["version"] == "99.1" and "The MITRE Corporation" in made["attribution"]
    assert "long" not in output.read_text()
    loaded = attack.parse_dataset(made)
    assert loaded.technique("T1086") == attack.Technique("T1059.001", "PowerShell", ("TA0002",))


def test_the_dataset_script_refuses_a_source_without_a_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "objects": []}))
    assert attack_dataset.main([str(source), "--origin", "test", "--output", str(tmp_path / "out.json")]) == 1
    assert "give --version" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
