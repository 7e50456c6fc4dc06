"""Playbooks as code: the model, matching, for_each expansion, safe templating and validation errors."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from services.responder import domain
from services.responder.playbook import (
    IncidentFacts,
    Param,
    ParamType,
    PlannedStep,
    Playbook,
    PlaybookError,
    RefusedStep,
    context,
    json_schema,
    matches,
    parse_playbooks,
    plan_steps,
    render,
    typed,
)
from services.responder.service import DEFAULT_PLAYBOOKS
from shared.events import IncidentType, Severity
from vigil.cli import app


def analysis(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "security_breach",
        "severity": "SEV2",
        "title": "Brute force on web-01",
        "indicators": [
            {"kind": "ipv4", "value": "203.0.113.7"},
            {"kind": "ipv4", "value": "10.0.0.5"},
            {"kind": "ipv4", "value": "198.51.100.9"},
            {"kind": "domain", "value": "evil.example"},
        ],
        "affected_hosts": ["web-01", "web-02"],
        "affected_users": ["alice"],
        "alert_count": 3,
        "summary": "many failed logins",
        **overrides,
    }


def alert(**overrides: Any) -> dict[str, Any]:
    return {
        "key": "a-1",
        "source": "wazuh",
        "title": "failed login",
        "severity": "high",
        "time": datetime(2026, 11, 24, 9, tzinfo=UTC).isoformat(),
        "format": "wazuh",
        "src_ip": "203.0.113.7",
        "techniques": ["T1110.001"],
        **overrides,
    }


def facts(*, alerts: list[dict[str, Any]] | None = None, **overrides: Any) -> IncidentFacts:
    seen = datetime(2026, 11, 24, 9, tzinfo=UTC).isoformat()
    incident = None
    if alerts is not None:
        incident = {
            "title": "Brute force",
            "type": "security_breach",
            "severity": "SEV2",
            "classification_reason": "r",
            "severity_reason": "r",
            "correlation_key": "k",
            "alert_count": len(alerts),
            "first_seen": seen,
            "last_seen": seen,
            "new_alerts": alerts,
        }
    return IncidentFacts.model_validate(
        {"incident_id": "inc-1", "analysis": analysis(**overrides), "incident": incident}
    )


def step(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "s",
        "name": "S",
        "phase": "containment",
        "response": "immediate",
        "connector": "blocklist",
        "action": "block",
        **overrides,
    }


def playbook(*steps: dict[str, Any], **match: Any) -> Playbook:
    return Playbook.model_validate(
        {"id": "p", "title": "P", "match": {"types": ["security_breach"], **match}, "steps": list(steps) or [step()]}
    )


# ---- the model --------------------------------------------------------------------------------


def test_the_default_set_covers_every_type_and_severity() -> None:
    books = parse_playbooks(DEFAULT_PLAYBOOKS.read_text())
    for incident_type, severity in itertools.product(IncidentType, Severity):
        chosen = domain.select_playbook(books, incident_type, severity)
        assert incident_type in chosen.match.types


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"response": "eventually"}, "'immediate', 'tactical', 'strategic' or 'recovery'"),
        ({"connector": "Web Hook"}, "should match pattern"),
        ({"on_failure": "ignore"}, "'continue', 'stop' or 'escalate'"),
        ({"timeout": "soon"}, "not a duration"),
        ({"retries": 99}, "less than or equal to 10"),
        ({"lease": "1h"}, "both a lease and an undo step"),
        ({"params": {"x": {"value": "{{ item ", "type": "ip"}}}, "template does not parse"),
        ({"params": {"x": {"value": "1", "type": "float"}}}, "'ip', 'cidr'"),
        ({"condition": "item ==="}, "condition does not parse"),
        # An action's undo and check are keyed "<step id>:undo" and ":validate": no step may be named so.
        ({"id": "undo"}, "step id 'undo' is reserved"),
        ({"id": "validate"}, "step id 'validate' is reserved"),
    ],
)
def test_a_step_is_validated(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        playbook(step(**change))


def test_models_are_frozen() -> None:
    book = playbook()
    with pytest.raises(ValueError, match="frozen"):
        book.steps[0].action = "unblock"  # type: ignore[misc]


def test_step_ids_repeat_is_refused() -> None:
    with pytest.raises(ValueError, match="step ids repeat: s"):
        playbook(step(), step())


def test_json_schema_describes_the_file() -> None:
    schema = json_schema()
    assert schema["title"] == "Vigil playbooks"
    step_schema = schema["$defs"]["Step"]
    assert {"for_each", "condition", "timeout", "retries", "on_failure", "approval", "risk", "lease", "undo"} <= set(
        step_schema["properties"]
    )
    assert step_schema["additionalProperties"] is False


# ---- matching ---------------------------------------------------------------------------------


def test_matching_on_type_and_severity() -> None:
    assert matches(playbook(min_severity="SEV2"), facts(severity="SEV2"))
    assert not matches(playbook(min_severity="SEV1"), facts(severity="SEV2"))
    assert not matches(playbook(), facts(type="data_leak"))


def test_matching_on_techniques_includes_sub_techniques() -> None:
    assert matches(playbook(techniques=["T1110"]), facts(alerts=[alert()]))
    assert not matches(playbook(techniques=["T1110.003"]), facts(alerts=[alert()]))
    # Without the detector's snapshot, techniques are unknown: the condition is not met.
    assert not matches(playbook(techniques=["T1110"]), facts())


def test_matching_on_indicator_kinds_source_and_format() -> None:
    assert matches(playbook(indicator_kinds=["domain", "url"]), facts())
    assert not matches(playbook(indicator_kinds=["sha256"]), facts())
    assert matches(playbook(sources=["wazuh"], formats=["wazuh"]), facts(alerts=[alert()]))
    assert not matches(playbook(sources=["falco"]), facts(alerts=[alert()]))


def test_an_analysis_carrying_only_its_worst_indicators_matches_on_the_kinds_and_verdicts_of_all() -> None:
    # 10,000 addresses and one file hash no feed lists: the hash is not among the worst 200 carried.
    cut = facts(
        indicators=[{"kind": "ipv4", "value": "203.0.113.7", "verdict": "malicious"}],
        indicator_count=10_001,
        indicators_by_kind={"ipv4": 10_000, "sha256": 1},
        indicators_by_verdict={"malicious": 1, "benign-listed": 3},
    )
    assert matches(playbook(indicator_kinds=["sha256"]), cut)
    assert domain.incident_facts("inc-1", cut.analysis).verdicts == ["benign-listed", "malicious"]


def test_verdicts_and_asset_tags_match_only_when_provided() -> None:
    assert not matches(playbook(verdicts=["malicious"]), facts())
    given = facts().model_copy(update={"verdicts": ["malicious"], "asset_tags": ["crown-jewel"]})
    assert matches(playbook(verdicts=["malicious"], asset_tags=["crown-jewel"]), given)


def test_the_narrower_playbook_wins_a_tie() -> None:
    broad = playbook()
    narrow = broad.model_copy(update={"id": "narrow", "match": broad.match.model_copy(update={"sources": ["wazuh"]})})
    chosen = domain.select_playbook(
        [broad, narrow], IncidentType.SECURITY_BREACH, Severity.SEV2, facts(alerts=[alert()])
    )
    assert chosen.id == "narrow"
    assert domain.select_playbook([broad, narrow], IncidentType.SECURITY_BREACH, Severity.SEV2).id == "p"


# ---- for_each and planning --------------------------------------------------------------------


def test_for_each_expands_over_external_ips_only() -> None:
    book = playbook(step(for_each="external_ips", params={"address": {"value": "{{ item }}", "type": "ip"}}))
    planned = plan_steps(book, facts())
    assert [(p.id, p.params) for p in planned] == [
        ("s#0", {"address": "203.0.113.7"}),
        ("s#1", {"address": "198.51.100.9"}),
    ]


def test_for_each_over_hosts_and_alert_sources() -> None:
    book = playbook(
        step(id="h", for_each="affected_hosts", params={"host": {"value": "{{ item }}", "type": "hostname"}}),
        step(id="src", for_each="external_source_ips", params={"address": {"value": "{{ item }}", "type": "ip"}}),
    )
    planned = plan_steps(book, facts(alerts=[alert(), alert(key="a-2", src_ip="192.168.1.1")]))
    assert [(p.id, p.item) for p in planned] == [("h#0", "web-01"), ("h#1", "web-02"), ("src#0", "203.0.113.7")]


def test_a_for_each_with_nothing_to_iterate_is_skipped_with_a_reason() -> None:
    book = playbook(step(for_each="sha256s", params={"h": {"value": "{{ item }}", "type": "sha256"}}))
    (only,) = plan_steps(book, facts())
    assert (only.status, only.reason) == ("skipped", "no sha256s")


def test_condition_skips_a_step() -> None:
    book = playbook(
        step(id="sev1", condition="analysis.severity == 'SEV1'"),
        step(id="web", for_each="affected_hosts", condition="item.startswith('web-02')"),
    )
    planned = plan_steps(book, facts())
    assert [(p.id, p.status) for p in planned] == [("sev1", "skipped"), ("web#0", "skipped"), ("web#1", "planned")]


def test_a_planned_step_carries_its_policy() -> None:
    book = playbook(
        step(
            for_each="external_ips",
            params={"address": {"value": "{{ item }}", "type": "ip"}},
            timeout="2m",
            retries=3,
            on_failure="escalate",
            approval="required",
            risk="high",
            lease="24h",
            undo={
                "connector": "blocklist",
                "action": "unblock",
                "params": {"address": {"value": "{{ item }}", "type": "ip"}},
            },
        )
    )
    first = plan_steps(book, facts())[0]
    assert (first.timeout_s, first.retries, first.on_failure, first.risk, first.lease_s) == (
        120,
        3,
        "escalate",
        "high",
        86400,
    )
    assert first.status == "awaiting_approval"
    assert first.undo is not None and first.undo.params == {"address": "203.0.113.7"}


def test_plan_response_carries_the_expanded_steps_that_would_run() -> None:
    book = playbook(
        step(for_each="external_ips", approval="required", params={"a": {"value": "{{ item }}", "type": "ip"}}),
        step(id="never", condition="false"),
    )
    plan = domain.plan_response(
        book, plan_id="p1", incident_type=IncidentType.SECURITY_BREACH, severity=Severity.SEV2, facts=facts()
    )
    assert [(a.id, a.name, a.requires_approval) for a in plan.actions] == [
        ("s#0", "S: 203.0.113.7", True),
        ("s#1", "S: 198.51.100.9", True),
    ]
    announced = domain.plan_response(
        book, plan_id="p2", incident_type=IncidentType.SECURITY_BREACH, severity=Severity.SEV2
    )
    assert [a.id for a in announced.actions] == ["s", "never"]


# ---- typed values and hostile input -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("ip", "2001:DB8::1", "2001:db8::1"),
        ("cidr", "10.1.2.3/8", "10.0.0.0/8"),
        ("domain", "Evil.Example.", "evil.example"),
        ("hostname", "web-01", "web-01"),
        ("url", "https://evil.example/x?y=1", "https://evil.example/x?y=1"),
        ("sha256", "A" * 64, "a" * 64),
        ("int", "42", 42),
        ("duration", "15m", 900),
        ("string", "a plain line", "a plain line"),
    ],
)
def test_values_of_each_type(kind: Any, value: str, expected: str | int) -> None:
    assert typed(value, kind) == expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("ip", "$(rm -rf /)"),
        ("ip", "203.0.113.7; reboot"),
        ("cidr", "10.0.0.0/33"),
        ("domain", "--output=/etc/passwd"),
        ("domain", "evil.example`id`"),
        ("hostname", "-oProxyCommand=sh"),
        ("hostname", "web 01"),
        ("url", "javascript:alert(1)"),
        ("url", "file:///etc/passwd"),
        ("url", "https://evil.example/\nX-Injected: 1"),
        ("sha256", "not-a-hash"),
        ("int", "1; drop table"),
        ("duration", "1y"),
        ("string", "line\x1b[2Jcleared"),
        ("string", "x" * 5000),
    ],
)
def test_values_that_fail_their_type(kind: Any, value: str) -> None:
    with pytest.raises(ValueError):
        typed(value, kind)


def test_a_value_failing_its_type_refuses_the_step_with_a_reason() -> None:
    hostile = facts(indicators=[{"kind": "domain", "value": "$(rm -rf /)"}])
    book = playbook(step(for_each="domains", params={"domain": {"value": "{{ item }}", "type": "domain"}}))
    (refused,) = plan_steps(book, hostile)
    assert refused.status == "refused"
    assert refused.reason == "parameter domain: '$(rm -rf /)' is refused: not a domain name"
    assert refused.params == {}


def test_hostile_text_stays_data() -> None:
    # A template in an alert's field is text: rendering is not repeated on rendered values.
    scope = {"analysis": {"title": "{{ 7*7 }} $(rm -rf /) {{ ''.__class__ }}"}}
    rendered = render({"text": Param(value="{{ analysis.title }}")}, scope, connector="notify")
    assert rendered == {"text": "{{ 7*7 }} $(rm -rf /) {{ ''.__class__ }}"}


def test_template_syntax_in_an_alert_field_is_not_evaluated() -> None:
    hostile = alert(title="{{ 7*7 }}", host="{{ 7*7 }}", description="{{ ''.__class__.__mro__ }}")
    book = playbook(
        step(
            id="note",
            connector="notify",
            action="message",
            params={
                "text": {"value": "{{ incident.alerts[0].title }} / {{ incident.alerts[0].description }} / {{ 7*7 }}"}
            },
        ),
        step(id="host", params={"host": {"value": "{{ incident.alerts[0].host }}", "type": "hostname"}}),
    )
    note, host = plan_steps(book, facts(alerts=[hostile]))
    assert note.params == {"text": "{{ 7*7 }} / {{ ''.__class__.__mro__ }} / 49"}
    assert host.status == "refused" and "not a host name" in host.reason


@pytest.mark.parametrize("template", ["{{ item * 100000000 }}", "{{ 10 ** 10 ** 10 }}"])
def test_templates_cannot_build_huge_values(template: str) -> None:
    book = playbook(step(for_each="affected_hosts", params={"x": {"value": template}}))
    refused = plan_steps(book, facts())[0]
    assert refused.status == "refused" and "template failed" in refused.reason


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=200), kind=st.sampled_from(list(get_args(ParamType))))
def test_any_value_is_rendered_as_itself_or_refused(value: str, kind: ParamType) -> None:
    params = {"x": Param(value="{{ item }}", type=kind)}
    try:
        rendered = render(params, {"item": value}, connector="command")
    except RefusedStep:
        return
    assert rendered["x"] == typed(value, kind)  # the value as data, in its type's canonical form
    assert not str(rendered["x"]).startswith("-")


def test_an_option_looking_value_is_refused_for_a_command() -> None:
    scope = {"item": "--output=/etc/passwd"}
    params = {"arg": Param(value="{{ item }}")}
    assert render(params, scope, connector="notify") == {"arg": "--output=/etc/passwd"}
    with pytest.raises(RefusedStep, match="would read as an option"):
        render(params, scope, connector="command")


@pytest.mark.parametrize(
    "template",
    [
        "{{ analysis.__class__ }}",
        "{{ analysis.title.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ analysis.nowhere }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_unsafe_or_unknown_lookups_refuse_the_step(template: str) -> None:
    book = playbook(step(params={"x": {"value": template}}))
    (refused,) = plan_steps(book, facts())
    assert refused.status == "refused"
    assert refused.reason.startswith("parameter x: template failed:")


def test_templates_see_only_plain_data() -> None:
    seen: list[Any] = []

    def walk(value: Any) -> None:
        seen.append(type(value))
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(context(facts(alerts=[alert()])))
    assert set(seen) <= {dict, list, str, int, float, bool, type(None)}


# ---- validation errors with their lines ---------------------------------------------------------

BROKEN = """\
playbooks:
  - id: p
    title: P
    match: {types: [security_breach]}
    steps:
      - id: s
        name: S
        phase: containment
        response: eventually
        connector: blocklist
        action: block
        params: {a: {value: "{{ item }}", type: ipaddress}}
"""


def test_validation_errors_name_their_line() -> None:
    with pytest.raises(PlaybookError) as caught:
        parse_playbooks(BROKEN)
    problems = caught.value.problems
    assert problems[0].startswith("9:19: playbooks.0.steps.0.response: Input should be 'immediate'")
    assert problems[1].startswith("12:49: playbooks.0.steps.0.params.a.type: Input should be 'ip'")


def test_a_missing_field_points_at_its_parent() -> None:
    text = "playbooks:\n  - id: p\n    match: {types: [unknown]}\n    steps: []\n"
    with pytest.raises(PlaybookError) as caught:
        parse_playbooks(text)
    assert "2:5: playbooks.0.title: Field required" in caught.value.problems


def test_broken_yaml_names_its_line() -> None:
    with pytest.raises(PlaybookError, match=r"^4:1: not YAML"):
        parse_playbooks("playbooks:\n  - id: p\n    title: [unclosed\n")


# ---- the CLI ----------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_schema_prints_the_json_schema() -> None:
    result = runner.invoke(app, ["playbook", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json_schema()


def test_cli_validate(tmp_path: Path) -> None:
    good = runner.invoke(app, ["playbook", "validate", str(DEFAULT_PLAYBOOKS)])
    assert good.exit_code == 0, good.output
    assert "8 playbooks" in good.output
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    bad = runner.invoke(app, ["playbook", "validate", str(broken)])
    assert bad.exit_code == 1
    assert f"{broken}:9:19: playbooks.0.steps.0.response:" in bad.output


def test_cli_plan_prints_what_would_run(tmp_path: Path) -> None:
    incident = tmp_path / "incident.json"
    incident.write_text(facts(alerts=[alert()]).model_dump_json())
    result = runner.invoke(
        app, ["playbook", "plan", str(DEFAULT_PLAYBOOKS), "--incident-json", str(incident), "--json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["playbook"] == "breach-critical"
    steps = [PlannedStep.model_validate(s) for s in printed["steps"]]
    blocks = [s for s in steps if s.step == "block-ip"]
    assert [s.params["address"] for s in blocks] == ["203.0.113.7", "198.51.100.9"]
    # Reversible containment: the playbook asks no approval of its own; the approval policy decides as it runs.
    assert all(s.status == "planned" for s in blocks)
    human = runner.invoke(app, ["playbook", "plan", str(DEFAULT_PLAYBOOKS), "--incident-json", str(incident)])
    assert human.exit_code == 0, human.output
    assert "breach-critical" in human.output and "203.0.113.7" in human.output


def test_cli_plan_refuses_an_unreadable_incident(tmp_path: Path) -> None:
    incident = tmp_path / "incident.json"
    incident.write_text(json.dumps({"analysis": {"type": "security_breach"}}))
    result = runner.invoke(app, ["playbook", "plan", str(DEFAULT_PLAYBOOKS), "--incident-json", str(incident)])
    assert result.exit_code == 1
    assert "analysis.severity" in result.output


def test_yaml_loads_safely() -> None:
    with pytest.raises(PlaybookError):
        parse_playbooks("playbooks: !!python/object/apply:os.system ['echo hi']\n")
