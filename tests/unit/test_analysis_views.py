"""What people read of the root cause, threat and risk: the commander's page on every channel, and the CLI."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from services.analyzer import attack, risk, rootcause
from services.coordinator import domain
from services.coordinator.notifications import CHANNELS, Notice, mail_text
from shared.events import AlertSummary, Analysis, IncidentType, Indicator, Severity, SimilarIncident
from tests.unit.adapters import test_guardduty
from tests.unit.test_notifications import FULL_DATA, INCIDENT, example
from vigil import cli
from vigil.cli_analysis import print_threat_analysis

DATASET = attack.load_dataset()
T0 = datetime(2026, 11, 24, 9, tzinfo=UTC)
BAD = Indicator(kind="ipv4", value="203.0.113.7", verdict="malicious", confidence=90, feeds=["abuse"], tags=["APT28"])


def analysis() -> Analysis:
    """An analysis as the analyzer makes it, from two alerts: brute force from outside, then a shell."""
    alerts = [
        AlertSummary(
            key="wazuh:1",
            source="wazuh",
            format="wazuh",
            title="sshd: brute force trying to get access",
            severity="high",
            time=T0,
            host="bastion-01",
            src_ip="203.0.113.7",
            techniques=["T1110", "TA0006"],
        ),
        AlertSummary(
            key="falco:2",
            source="falco",
            format="falco",
            title="Terminal shell in container",
            severity="critical",
            time=T0 + timedelta(minutes=9),
            host="bastion-01",
            rule="Terminal shell in container",
        ),
    ]
    trace = rootcause.fold(None, [(a, attack.map_alert(a, DATASET, attack.load_rules())) for a in alerts])
    tactics = rootcause.tactics_of(trace, DATASET)
    return Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV2,
        title="Brute force then a shell on bastion-01",
        indicators=[BAD],
        affected_hosts=["bastion-01"],
        affected_users=[],
        alert_count=2,
        summary="2 alerts on 1 host and 0 users; 1 indicators (1 ipv4); 1 known bad to threat intelligence",
        techniques=rootcause.techniques_of(trace, DATASET),
        tactics=tactics,
        attack_version=DATASET.version,
        root_cause=rootcause.root_cause(trace, DATASET, [BAD]),
        threat=rootcause.threat_profile(trace, DATASET, [BAD]),
        attack_path=rootcause.attack_path(trace),
        attack_path_hops=len(trace.hops or {}),
        similar=[
            SimilarIncident(incident_id="9b2e7f00-past", title="Brute force on bastion-01", score=8, reason="shares 1")
        ],
        risk=risk.score(
            risk.RiskInputs(
                severity=Severity.SEV2,
                indicators=[BAD],
                tactic=(tactics[-1].stage, tactics[-1].name),
                hosts=1,
                unknown_systems=1,
            )
        ),
    )


def page(kind: str) -> Notice:
    brief = domain.analysis_brief(analysis()).model_dump(mode="json")
    return Notice(
        kind=kind,
        incident_id=INCIDENT,
        discriminator="step-1",
        severity="SEV2",
        recipients=["alice@example.com"],
        data={**FULL_DATA[kind], "analysis": brief},
    )


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("kind", ["escalation", "update"])
def test_the_page_and_the_update_carry_the_risk_root_cause_and_threat_on_every_channel(kind: str, channel: str) -> None:
    rendered = example().templates.render(channel, page(kind), recipient="alice@example.com")
    text = mail_text(rendered) if channel == "email" else rendered.body + "\n" + str(rendered.facts)
    assert "Risk 49/100 (medium)" in text
    assert "Patient zero: Patient zero is host bastion-01 (85% sure)" in text
    assert "Entry: Entry by brute force of credentials from 203.0.113.7 (70% sure)" in text
    assert "Stage: Reached Credential Access (stage 8 of 14)" in text
    assert "Origin: external (from 203.0.113.7)" in text
    assert "Attribution (feed tags): APT28 (G0007)" in text
    assert "ATT&CK: T1110 Brute Force, T1059 Command and Scripting Interpreter" in text
    assert "Alike: 9b2e7f00 Brute force on bastion-01" in text
    if channel != "email":
        assert ("Risk", "49/100 medium") in rendered.facts


def test_a_page_without_an_analysis_reads_as_before() -> None:
    templates = example().templates
    plain = templates.render(
        "slack", Notice("escalation", INCIDENT, "step-1", "SEV2", ["a"], FULL_DATA["escalation"]), recipient="a"
    )
    assert "Risk" not in plain.body and all(label != "Risk" for label, _ in plain.facts)


def test_incidents_show_prints_each_hypothesis_with_its_evidence_and_every_risk_factor() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    shown: dict[str, Any] = analysis().model_dump(mode="json")
    print_threat_analysis(console, shown)
    text = out.getvalue()
    assert "risk 49/100 medium" in text
    for factor in ("severity", "asset_criticality", "intel", "tactic", "breadth", "privilege"):
        assert f" {factor} " in text
    assert "patient zero Patient zero is host bastion-01 (85% sure)" in text
    assert (
        "    - host bastion-01 first seen 2026-11-24T09:00:00+00:00 in 'sshd: brute force trying to get access'" in text
    )
    assert "entry Entry by brute force of credentials from 203.0.113.7 (70% sure)" in text
    assert "origin external" in text and "actors: APT28 (G0007)" in text
    assert f"ATT&CK {DATASET.version}" in text
    assert "T1059      Command and Scripting Interpreter (TA0002; 1 alert(s); rule falco-terminal-shell)" in text
    assert "alike 9b2e7f00 Brute force on bastion-01 (score 8: shares 1)" in text
    assert "attack path (1 of 1 hop(s), the earliest first)" in text
    assert "  2026-11-24T09:00:00 ip:203.0.113.7 -> host:bastion-01 (1 alert(s)) T1110" in text


def test_vigil_attack_show_names_ids_from_the_shipped_dataset() -> None:
    runner = CliRunner()
    revoked = runner.invoke(cli.app, ["attack", "show", "T1086"])
    assert revoked.exit_code == 0
    assert "T1059.001 Command and Scripting Interpreter: PowerShell (revoked T1086, replaced by T1059.001)" in (
        revoked.output
    )
    assert "stage 10 of 14" in runner.invoke(cli.app, ["attack", "show", "ta0008"]).output
    unknown = runner.invoke(cli.app, ["attack", "show", "T9999"])
    assert unknown.exit_code == 1 and f"not in ATT&CK Enterprise {DATASET.version}" in unknown.output


def test_vigil_attack_map_says_what_a_tools_record_maps_to_and_why(tmp_path: Path) -> None:
    record = tmp_path / "finding.json"
    record.write_text(json.dumps(test_guardduty.finding(type="UnauthorizedAccess:EC2/SSHBruteForce")))
    mapped = CliRunner().invoke(cli.app, ["attack", "map", str(record), "--json"])
    assert mapped.exit_code == 0, mapped.output
    [found] = json.loads(mapped.output)
    assert found["format"] == "guardduty"
    assert found["techniques"] == {"T1110.001 Brute Force: Password Guessing": "rule guardduty-ssh-brute-force"}
    assert found["tactics"] == {"TA0006 Credential Access": "of technique T1110.001"}
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": "world"}')
    refused = CliRunner().invoke(cli.app, ["attack", "map", str(junk)])
    assert refused.exit_code == 1 and "error:" in refused.output
