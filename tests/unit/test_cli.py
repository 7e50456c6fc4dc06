"""The CLI's input handling, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from rich.console import Console
from typer.testing import CliRunner

from services.detector.adapters import FORMATS, parse_payload
from tests.factories import alert_dict
from tests.integration.test_hostile_text import HOSTILE as HOSTILE_TEXT
from vigil.cli import app, parse_records, problem_report
from vigil.dlq import DeadLetter, choose, parse_position


def test_one_record_an_array_or_json_lines() -> None:
    one, two = alert_dict(), alert_dict(host="db-01")
    assert len(parse_records(json.dumps(one).encode())[0]) == 1
    assert len(parse_records(json.dumps([one, two]).encode())[0]) == 2
    records, refused = parse_records((json.dumps(one) + "\n\n" + json.dumps(two) + "\n").encode())
    assert [r.parsed.alerts[0].host for r in records] == ["web-01", "db-01"]
    assert [r.parsed.format for r in records] == ["native", "native"]
    assert refused == []


def test_each_record_is_sent_as_it_came() -> None:
    # An array's element is re-encoded; a line or a single record is sent byte for byte.
    line = b'{"id": "a-1",  "source": "falco", "title": "t", "severity": "high", "time": "2026-11-24T09:00:00Z"}'
    records, _ = parse_records(line + b"\n" + line.replace(b"a-1", b"a-2"))
    assert records[0].value == line
    (single,), _ = parse_records(b"  " + line + b"\n")
    assert single.value == line


def test_records_that_cannot_be_read_are_refused_with_their_position_and_code() -> None:
    good, bad = alert_dict(), alert_dict(severity="apocalyptic")
    records, refused = parse_records((json.dumps(good) + "\n" + json.dumps(bad) + "\n{oops\n").encode())
    assert len(records) == 1
    assert refused[0].startswith("record 2: ") and "severity" in refused[0] and refused[0].endswith("(invalid_fields)")
    assert refused[1].startswith("record 3: record is not JSON") and refused[1].endswith("(not_json)")


def test_a_named_format_is_used_for_every_record() -> None:
    records, refused = parse_records(json.dumps([alert_dict(), {"hello": "world"}]).encode(), format_name="native")
    assert len(records) == 1
    assert refused[0].startswith("record 2: alert does not match the Vigil alert schema")


def test_alert_times_are_normalised_to_utc() -> None:
    records, _ = parse_records(json.dumps(alert_dict(time="2026-11-24T10:00:00+01:00")).encode())
    assert records[0].parsed.alerts[0].time.isoformat() == "2026-11-24T09:00:00+00:00"


@pytest.mark.skipif("alertmanager" not in FORMATS, reason="the alertmanager adapter is not registered yet")
def test_formats_are_recognised_per_record() -> None:
    webhook = {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing",
        "receiver": "vigil",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "DiskFull", "instance": "db-01:9100", "severity": "warning"},
                "annotations": {"summary": "Disk almost full"},
                "startsAt": "2026-11-24T09:00:00Z",
                "fingerprint": "f1",
            }
        ],
    }
    records, refused = parse_records(json.dumps([alert_dict(), webhook]).encode())
    assert refused == []
    assert [r.parsed.format for r in records] == ["native", "alertmanager"]


def test_an_unknown_format_is_refused_before_anything_is_read() -> None:
    result = CliRunner().invoke(app, ["alert", "send", "-", "--format", "carrier-pigeon"], input="{}")
    assert result.exit_code == 1
    assert "unknown format 'carrier-pigeon'" in result.output


def test_nothing_readable_means_nothing_sent_and_a_non_zero_exit() -> None:
    # No broker is needed: nothing readable, nothing to publish.
    result = CliRunner().invoke(app, ["alert", "send", "-"], input='{"hello": "world"}\n')
    assert result.exit_code == 1
    assert "sent 0 alert(s) in 0 record(s), refused 1" in result.output
    assert "no adapter recognised the record" in result.output


# ---- dead letters ------------------------------------------------------------------------------


def letter(offset: int, code: str, *, partition: int = 0) -> DeadLetter:
    return DeadLetter(
        topic="vigil.alerts.dlq",
        partition=partition,
        offset=offset,
        timestamp_ms=1_700_000_000_000 + offset,
        key=b"host:web-01",
        value=b'{"id": "a"}',
        headers=(
            ("vigil_format", b"native"),
            ("vigil_dlq_code", code.encode()),
            ("vigil_dlq_topic", b"vigil.alerts.raw"),
            ("vigil_replayed_from", b"vigil.alerts.dlq:0:0"),
        ),
    )


def test_dead_letters_are_chosen_by_offset_code_or_all() -> None:
    letters = [letter(0, "not_json"), letter(1, "unknown_format"), letter(2, "unknown_format")]
    assert choose(letters, positions=[(0, 2), (0, 0), (0, 2)]) == ([letters[2], letters[0]], [])
    assert choose(letters, positions=[(0, 9), (1, 0)]) == ([], [(0, 9), (1, 0)])
    assert choose(letters, code="unknown_format") == (letters[1:], [])
    assert choose(letters, everything=True) == (letters, [])


def test_positions_are_offsets_or_partition_and_offset() -> None:
    assert parse_position("17") == (0, 17)
    assert parse_position("2:17") == (2, 17)
    for junk in ("x", "-1", "1:-2", "", "1:2:3"):
        with pytest.raises(ValueError):
            parse_position(junk)


def test_a_replay_carries_the_original_headers_and_where_it_comes_from() -> None:
    replayed = letter(5, "unknown_format", partition=0).replay_headers()
    assert replayed == [("vigil_format", b"native"), ("vigil_replayed_from", b"vigil.alerts.dlq:0:5")]


# ---- problem reports ---------------------------------------------------------------------------


@pytest.mark.skipif("user_report" not in FORMATS, reason="the user_report adapter is not registered yet")
def test_a_problem_report_is_a_user_report_record() -> None:
    when = datetime(2026, 11, 24, 9, 5, tzinfo=UTC)
    full = problem_report(
        reporter="ana.lima@example.org",
        description="Payroll shows another employee's payslip",
        service="payroll",
        contact="+351 21 000 0000",
        severity="critical",
        host="payroll-web-1",
        time=when,
    )
    (alert,) = parse_payload(full).alerts  # recognised by its shape, too
    assert (alert.format, alert.user, alert.host, alert.severity.value, alert.time) == (
        "user_report",
        "ana.lima@example.org",
        "payroll-web-1",
        "critical",
        when,
    )
    bare = problem_report(reporter="ana", description="VPN drops every 5 minutes", time=when)
    assert bare == {
        "format": "user_report",
        "report": {"reporter": "ana", "description": "VPN drops every 5 minutes", "time": when.isoformat()},
    }
    (plain,) = parse_payload(bare, format_name="user_report").alerts
    assert plain.severity.value == "medium"  # the adapter's default for a person's report


def test_incidents_show_puts_known_bad_indicators_impact_and_a_recommendation_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vigil import cli, cli_analysis

    incident = {
        "id": "inc-1",
        "title": "Reverse shell",
        "severity": "SEV3",
        "type": "system_compromise",
        "state": "detected",
        "commander": "alice",
        "alert_count": 1,
        "classification_reason": "falco: reverse shell",
        "severity_reason": "critical alert",
        "hosts": ["db-1"],
        "users": [],
        "analysis": {
            "summary": "1 alert on 1 host",
            "indicators": [
                {"kind": "domain", "value": "example.org"},  # an analysis from before verdicts: no verdict key
                {
                    "kind": "ipv4",
                    "value": "203.0.113.7",
                    "verdict": "malicious",
                    "feeds": ["feodo"],
                    "tags": ["emotet"],
                },
            ],
            "impact": {
                "systems": ["db-1", "arn:aws:s3:::exports", "198.51.100.20"],
                "crown_jewels": ["db-1"],
                "privileged_users": [],
                "business_services": ["payments"],
                "data_at_risk": "restricted",
                "unknown_systems": ["laptop-9"],
                "unknown_users": ["mallory"],
                "blast_radius": 3,
                "by_criticality": {"1": 2, "2": 0, "3": 1, "4": 0},
            },
            "severity_recommendation": {"severity": "SEV1", "reasons": ["db-1 is a crown jewel"]},
        },
        "timeline": [],
        "alerts": [],
    }
    monkeypatch.setattr(cli, "_get", lambda path, **_: incident)  # the reporter's answer, as rendered
    # Wide enough for a line each, whatever the width the consoles took when the module was imported. Consoles
    # of their own: setting the shared one's width and setting it back would pin it for the tests after.
    monkeypatch.setattr(cli, "console", Console(width=200))
    monkeypatch.setattr(cli_analysis, "console", Console(width=200))
    cli.incidents_show("inc-1-full-id-of-thirty-six-characters", as_json=False)
    shown = capsys.readouterr().out
    assert shown.index("203.0.113.7") < shown.index("example.org")
    assert "malicious (feodo, emotet)" in shown
    assert "crown jewels: db-1" in shown and "data at risk: restricted" in shown and "laptop-9" in shown
    assert (
        "impact 3 system(s) affected (2 at criticality 1, 1 at criticality 3): db-1, arn:aws:s3:::exports, "
        "198.51.100.20" in shown
    )
    assert "unknown to the inventory: systems laptop-9; accounts mallory" in shown
    assert "recommended SEV1: db-1 is a crown jewel" in shown


def test_vigil_incidents_show_prints_hostile_text_verbatim(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vigil import cli

    # Rich markup too: a title with `[/b]` once stopped `vigil incidents show` with a MarkupError.
    texts = [*HOSTILE_TEXT[:4], "[/b] [red]not red[/red] [link=https://example.com]x[/link]"]
    full_id = "inc-hostile-full-id-of-36-characters"  # a whole id: the CLI asks for no list to resolve it
    incident = {
        "id": full_id,
        "title": texts[4],
        "severity": "SEV2",
        "type": "unknown",
        "state": "detected",
        "commander": texts[3],
        "classification_reason": texts[1],
        "severity_reason": texts[2],
        "hosts": [texts[0]],
        "users": [],
        "alerts": [{"time": "2026-11-24T09:03:00Z", "title": text, "key": text, "severity": "high"} for text in texts],
        "timeline": [
            {"time": "2026-11-24T09:03:00Z", "actor": text, "summary": text, "incident_id": full_id} for text in texts
        ],
    }
    monkeypatch.setattr(cli, "_get", lambda path, **_: incident)
    # Wide enough for no cell to be cut, whatever width an earlier test left the shared console at.
    monkeypatch.setattr(cli, "console", Console(width=400))
    cli.incidents_show(full_id, as_json=False)
    shown = capsys.readouterr().out
    for text in texts:
        assert text in shown, f"{text!r} is not shown verbatim"
    monkeypatch.setattr(cli, "_get", lambda path, **_: [{**incident, "alert_count": 1, "created_at": None}])
    cli.incidents_list(as_json=False, state=None, severity=None, limit=100)
    listed = capsys.readouterr().out
    assert texts[4] in listed and texts[3] in listed


@pytest.mark.parametrize("text", ["[/bold]", "[red]not red[/red]", "[link=https://evil.example]x[/link]"])
def test_an_error_shows_what_the_operator_typed_verbatim(text: str) -> None:
    # Brackets are markup to rich: unescaped, a closing tag crashed the command and an opening one
    # restyled the message.
    result = CliRunner().invoke(app, ["dlq", "list", "--topic", text])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"unknown dead-letter topic {text!r}" in result.output
