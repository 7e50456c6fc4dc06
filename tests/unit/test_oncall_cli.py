"""`vigil oncall now` and `vigil oncall validate`, reading on-call files locally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vigil.cli import app

ONCALL = """\
schedules:
  - name: security
    time_zone: Europe/Berlin
    layers:
      - name: weekly
        rotation: {type: weekly, handoff: "09:00", start: 2026-01-05, members: [alice, bob, carol]}
    overrides:
      - {person: frank, starts: 2026-01-20T00:00:00Z, ends: 2026-01-21T00:00:00Z}
  - name: operations
    layers:
      - name: daily
        rotation: {type: daily, handoff: "09:00", start: 2026-01-05, members: [dave, erin]}
default_schedule: security
ack_deadline_minutes: {SEV1: 5}
"""


@pytest.fixture
def oncall_file(tmp_path: Path) -> Path:
    path = tmp_path / "oncall.yaml"
    path.write_text(ONCALL)
    return path


def test_now_at_a_given_time_as_json(oncall_file: Path) -> None:
    result = CliRunner().invoke(
        app, ["oncall", "now", "--file", str(oncall_file), "--at", "2026-01-20T12:00Z", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "person": "frank",
            "schedule": "security",
            "layer": "weekly",
            "starts": "2026-01-20T00:00:00+00:00",
            "ends": "2026-01-21T00:00:00+00:00",
            "covering": "carol",
        },
        {
            "person": "erin",
            "schedule": "operations",
            "layer": "daily",
            "starts": "2026-01-20T09:00:00+00:00",
            "ends": "2026-01-21T09:00:00+00:00",
            "covering": None,
        },
    ]


def test_now_as_a_table_in_each_schedules_zone(oncall_file: Path) -> None:
    result = CliRunner().invoke(
        app, ["oncall", "now", "--file", str(oncall_file), "--at", "2026-01-14T12:00:00+00:00"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "bob" in result.stdout and "erin" in result.stdout
    assert "Mon 12 Jan 09:00 CET" in result.stdout  # bob's week, in Berlin time
    assert "Wed 14 Jan 09:00 UTC" in result.stdout


def test_the_file_may_come_from_the_environment(oncall_file: Path) -> None:
    result = CliRunner().invoke(
        app, ["oncall", "now", "--at", "2026-01-14T12:00Z", "--json"], env={"VIGIL_ONCALL": str(oncall_file)}
    )
    assert result.exit_code == 0, result.output
    assert [s["person"] for s in json.loads(result.stdout)] == ["bob", "erin"]


def test_a_broken_file_is_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "oncall.yaml"
    path.write_text(ONCALL.replace("default_schedule: security", "default_schedule: nobody"))
    for command in (["oncall", "now", "--file", str(path)], ["oncall", "validate", str(path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, result.output
        assert f"{path}:13:19: default_schedule: no schedule 'nobody'" in result.stderr


def test_validate_says_what_the_file_holds(oncall_file: Path) -> None:
    # Deep enough that its path is wider than any terminal: the verdict still comes on one line.
    deep = oncall_file.parent / ("on-call-files-" * 16) / oncall_file.name
    deep.parent.mkdir()
    oncall_file.rename(deep)
    result = CliRunner().invoke(app, ["oncall", "validate", str(deep)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2 schedule(s), 2 layer(s), 0 route(s), valid" in result.stdout
    assert result.stdout.count("\n") == 1, result.stdout  # one line, however long the file's path


def test_a_time_that_is_not_one_is_refused(oncall_file: Path) -> None:
    result = CliRunner().invoke(app, ["oncall", "now", "--file", str(oncall_file), "--at", "tomorrowish"])
    assert result.exit_code == 2
    assert "not an ISO 8601 time" in result.output
