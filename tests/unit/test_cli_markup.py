"""What the CLI prints from an API, the database, a broker or a file is shown verbatim, never read as rich markup.

An alert titled `ET WEB path traversal [/etc/passwd]` once stopped `vigil alerts suppressed` and
`vigil rules waiting` with a MarkupError, and `[ssh] brute force` lost its `[ssh]`. Each command here
runs through the CLI with its HTTP call (or database read, or dead-letter read) answered from canned
data in which every text field it shows carries such brackets; each of them must come out as it went in.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from shared.outbox import ParkedRow
from vigil import cli
from vigil.dlq import DeadLetter

MARKUP = "[/etc/passwd] [ssh] [bold]x[/bold]"
NOW = "2026-11-24T09:03:00+00:00"
WHEN = datetime(2026, 11, 24, 9, 3, tzinfo=UTC)
INCIDENT = "0f8e2a52-3c1d-4d4f-9a53-2b1f5e6c7d80"  # a whole id: no list is asked for to resolve it


@dataclass
class Case:
    argv: list[str]
    answers: dict[str, Any] = field(default_factory=dict)  # by path, without the query
    database: Any = None  # what `_on_database` returns
    letters: list[DeadLetter] = field(default_factory=list)


class Texts:
    """A hostile text per field, each remembered to be looked for in the output."""

    def __init__(self) -> None:
        self.expected: list[str] = []

    def __call__(self, name: str) -> str:
        return self.shown(f"{name} {MARKUP}")

    def shown(self, text: str) -> str:
        """Text the output must hold verbatim (the CLI's own literal brackets too)."""
        self.expected.append(text)
        return text


def alerts_suppressed(t: Texts, _: Path) -> Case:
    row = {
        "key": t("key"),
        "title": t("ET WEB path traversal"),
        "host": t("host"),
        "kind": "silence",
        "suppressed_by": t("suppressed by"),
        "reason": t("reason"),
        "repeats": 0,
        "last_seen_at": NOW,
        "released_at": None,
        "resolved_at": None,
    }
    return Case(["alerts", "suppressed"], {"/api/v1/suppressed-alerts": [row]})


def rules_waiting(t: Texts, _: Path) -> Case:
    row = {
        "time": NOW,
        "title": t("[ssh] brute force"),
        "key": t("key"),
        "severity": "high",
        "correlation": t("rule"),
        "group_key": t("group"),
    }
    return Case(["rules", "waiting"], {"/api/v1/correlation/waiting": [row]})


def rules_show(t: Texts, _: Path) -> Case:
    rule = {"name": t("name"), "type": "event_count", "group_by": [t("group by")], "condition": t("condition")}
    return Case(["rules", "show"], {"/api/v1/correlation/rules": {"file": t("file"), "correlations": [rule]}})


def rules_reload(t: Texts, _: Path) -> Case:
    return Case(["rules", "reload"], {"/api/v1/correlation/reload": {"file": t("file"), "correlations": []}})


def rules_validate(t: Texts, tmp_path: Path) -> Case:
    # A path is the operator's text: "[/etc/passwd]" and "[/bold]" are folders in it.
    file = tmp_path / "[ssh] [bold]x[" / "bold] [" / "etc" / "passwd]" / "rules.yaml"
    file.parent.mkdir(parents=True)
    shutil.copy(Path(__file__).parents[2] / "services" / "detector" / "correlation.yaml", file)
    t.shown(str(file))
    return Case(["rules", "validate", str(file)])


def silence_list(t: Texts, _: Path) -> Case:
    silence = {
        "id": t("id"),
        "state": "active",
        "matchers": [t("matcher")],
        "starts_at": NOW,
        "ends_at": NOW,
        "created_by": t("created by"),
        "expired_by": t("expired by"),
        "comment": t("comment"),
    }
    return Case(["silence", "list"], {"/api/v1/silences": [silence]})


def maintenance_list(t: Texts, _: Path) -> Case:
    window = {
        "id": t("id"),
        "name": t("name"),
        "matchers": [t("matcher")],
        "rrule": t("rrule"),
        "duration_s": 3600,
        "starts_at": NOW,
        "time_zone": t("zone"),
        "ends_at": None,
        "active_now": None,
        "next_start": NOW,
        "created_by": t("created by"),
        "ended_by": t("ended by"),
    }
    return Case(["maintenance", "list"], {"/api/v1/maintenance-windows": [window]})


def incidents_show(t: Texts, _: Path) -> Case:
    incident_id = t("incident id")
    incident = {
        "id": incident_id,
        "title": t("title"),
        "severity": "SEV2",
        "type": "unknown",
        "state": "detected",
        "commander": t("commander"),
        "classification_reason": t("why"),
        "severity_reason": t("severity reason"),
        "hosts": [t("host")],
        "users": [t("user")],
        "merged_into": t("merged into"),
        "merged": [t("merged")],
        "analysis": {
            "summary": t("summary"),
            "indicators": [
                {
                    "kind": "domain",
                    "value": t("value"),
                    "verdict": "malicious",
                    "feeds": [t("feed")],
                    "tags": [t("tag")],
                }
            ],
            "risk": {
                "score": 40,
                "level": "informational",  # a level with no style of its own
                "factors": [{"points": 1, "max_points": 5, "factor": t("factor"), "reason": t("factor reason")}],
            },
            "threat": {"origin": t("origin"), "origin_evidence": [t("evidence")], "actors": [t("actor")]},
            "attack_version": t("version"),
            "techniques": [
                {
                    "id": t("T1110"),
                    "name": t("technique"),
                    "tactics": [t("tactic")],
                    "alerts": 1,
                    "mapped_by": [t("map")],
                }
            ],
            "similar": [{"incident_id": INCIDENT, "title": t("alike"), "score": 0.9, "reason": t("alike reason")}],
        },
        "plan": {
            "playbook_title": t("playbook title"),
            "playbook": t("playbook"),
            "actions": [{"phase": t("phase"), "name": t("action"), "status": "planned"}],
        },
        "alerts": [
            {
                "time": NOW,
                "format": "native",
                "title": t("alert title"),
                "key": t("alert key"),
                "severity": "high",
                "source_severity": t("tool severity"),
                "status": "firing",
                "repeats": 0,
                "type_rule": t("type rule"),
                "correlation": {
                    "rule": t("rule"),
                    "key": {"account": t("account")},
                    "triggered_by": [t("trigger")],
                    "reason": t("held because"),
                },
            }
        ],
        "timeline": [{"time": NOW, "actor": t("actor"), "summary": t("said"), "incident_id": incident_id}],
    }
    return Case(["incidents", "show", incident_id], {f"/api/v1/incidents/{incident_id}": incident})


def incidents_evidence(t: Texts, _: Path) -> Case:
    incident_id = t("incident id")
    alert = {
        "time": NOW,
        "source": t("source"),
        "format": "native",
        "host": t("host"),
        "user": t("user"),
        "title": t("title"),
        "alert_key": t("key"),
        "sightings": [{"kind": "ipv4", "value": t("value"), "internal": True}],
    }
    page = {"alerts": [alert], "next": None}
    return Case(["incidents", "evidence", incident_id], {f"/api/v1/incidents/{incident_id}/evidence": page})


def incidents_list(t: Texts, _: Path) -> Case:
    incident = {
        "id": INCIDENT,
        "severity": "SEV2",
        "state": "detected",
        "merged_into": None,
        "type": "unknown",
        "alert_count": 1,
        "title": t("title"),
        "commander": t("commander"),
        "created_at": NOW,
    }
    return Case(["incidents", "list"], {"/api/v1/incidents": [incident]})


def actions_list(t: Texts, _: Path) -> Case:
    step = {
        "id": t("step id"),
        "name": t("step"),
        "item": t("item"),
        "state": "awaiting_approval",
        "reason": t("why"),
        "dry_run": True,
        "approvals": [{"actor": "ana"}],
        "approvals_required": 2,
        "validation": "failed",
        "validation_reason": t("check"),
    }
    t.shown("[dry run]")
    return Case(["actions", "list", INCIDENT], {f"/api/v1/incidents/{INCIDENT}/actions": [step]})


def recovery_list(t: Texts, _: Path) -> Case:
    step = {
        "id": t("step id"),
        "phase": "recovery",
        "recovery": "service",
        "name": t("step"),
        "item": t("item"),
        "owner": t("owner"),
        "connector": "manual",
        "due_at": None,
        "state": "planned",
        "validation": t("validation"),
        "required": True,
    }
    return Case(["recovery", "list", INCIDENT], {f"/api/v1/incidents/{INCIDENT}/actions": [step]})


def lease_list(t: Texts, _: Path) -> Case:
    lease = {
        "step_id": t("step id"),
        "action": t("action"),
        "target": t("target"),
        "state": "active",
        "due_at": NOW,
        "offence": 1,
        "changed_by": t("changed by"),
        "change_reason": t("change reason"),
    }
    return Case(["lease", "list"], {"/api/v1/leases": [lease]})


def lease_revoke(t: Texts, _: Path) -> Case:
    step_id = t("step id")
    return Case(["lease", "revoke", step_id], {f"/api/v1/steps/{step_id}/lease": {"undo_at": NOW}})


def response_rollback(t: Texts, _: Path) -> Case:
    incident_id = t("incident id")
    return Case(
        ["response", "rollback", incident_id], {f"/api/v1/incidents/{incident_id}/rollback": {"steps": [t("step")]}}
    )


def tasks_list(t: Texts, _: Path) -> Case:
    listed = {
        "progress": {
            "done": 1,
            "total": 2,
            "overdue": 0,
            "phases": [{"phase": t("phase"), "done": 1, "total": 2, "overdue": 0, "required_open": 1}],
        },
        "tasks": [
            {
                "id": 1,
                "phase": t("task phase"),
                "title": t("task"),
                "required": False,
                "owner": t("owner"),
                "due_at": None,
                "overdue": False,
                "due_after_s": None,
                "state": "done",
                "done_by": t("done by"),
                "ticket": {"tracker": "github", "ref": t("ticket ref"), "url": t("ticket url")},
            },
            {  # open: no one did it (the API says null)
                "id": 2,
                "phase": t("open task phase"),
                "title": t("open task"),
                "required": True,
                "owner": t("open task owner"),
                "due_at": None,
                "overdue": False,
                "due_after_s": None,
                "state": "open",
                "done_by": None,
            },
        ],
    }
    return Case(["tasks", "list", INCIDENT], {f"/api/v1/incidents/{INCIDENT}/tasks": listed})


def digests_list(t: Texts, _: Path) -> Case:
    listed = [
        {
            "name": t("digest"),
            "every": t("rule"),
            "time_zone": "UTC",
            "covers": "7d",
            "to": [t("reader")],
            "severities": None,
            "next_at": "2026-11-30T09:00:00Z",
        }
    ]
    return Case(["digests", "list"], {"/api/v1/digests": listed})


def digests_preview(t: Texts, _: Path) -> Case:
    data = {
        "name": t("digest"),
        "period": t("period"),
        "opened": 2,
        "opened_by_severity": {"SEV1": 2},
        "resolved": 1,
        "resolved_by_resolution": {t("resolution"): 1},
        "open_now": 1,
        "open_by_severity": {"SEV1": 1},
        "mtta_minutes": 4.5,
        "mttr_minutes": None,
        "notable": [{"short_id": "5e1f0000", "severity": "SEV1", "title": t("title"), "state": "acknowledged"}],
        "notable_more": 0,
        "overdue_tasks": 0,
        "open_follow_ups": 1,
    }
    return Case(["digests", "preview", "weekly"], {"/api/v1/digests/weekly/preview": data})


def state_show(t: Texts, _: Path) -> Case:
    lifecycle = {
        "incident_id": t("incident id"),
        "state": "triaged",
        "allowed": {"contain": "contained"},
        "transitions": [
            {
                "at": NOW,
                "from_state": None,
                "to_state": "triaged",
                "actor": t("actor"),
                "reason": t("reason"),
                "resolution": "fixed",
            }
        ],
    }
    t.shown("[fixed]")
    return Case(["state", INCIDENT], {f"/api/v1/incidents/{INCIDENT}/lifecycle": lifecycle})


def ack(t: Texts, _: Path) -> Case:
    result = {
        "incident_id": t("incident id"),
        "state": "acknowledged",
        "resolution": None,
        "severity": "SEV2",
        "commander": t("commander"),
    }
    return Case(["ack", INCIDENT], {f"/api/v1/incidents/{INCIDENT}/ack": result})


def incidents_merge(t: Texts, _: Path) -> Case:
    result = {
        "merged": [t("merged")],
        "incident_id": t("survivor"),
        "alerts_moved": 1,
        "alert_count": 2,
        "severity": "SEV2",
    }
    return Case(["incidents", "merge", INCIDENT, INCIDENT], {f"/api/v1/incidents/{INCIDENT}/merge": result})


def effects_list(t: Texts, _: Path) -> Case:
    row = {
        "id": 1,
        "service": t("service"),
        "kind": t("kind"),
        "target": t("target"),
        "status": "pending",  # no style of its own
        "attempts": 0,
        "last_error": t("error"),
        "not_before": WHEN,
    }
    t.shown("pending")
    return Case(["effects", "list"], database=[row])


def tokens_list(t: Texts, _: Path) -> Case:
    row = {
        "id": t("id"),
        "name": t("name"),
        "role": "admin",
        "kind": "person",
        "created_at": WHEN,
        "created_by": t("created by"),
        "expires_at": None,
        "revoked_at": WHEN,
        "revoked_by": t("revoked by"),
    }
    return Case(["tokens", "list"], database=[row])


def outbox_parked(t: Texts, _: Path) -> Case:
    row = ParkedRow(
        id=1,
        service=t("service"),
        topic=t("topic"),
        event_id="e-1",
        key="k",
        size=10,
        attempts=3,
        error=t("error"),
        parked_at=WHEN,
    )
    return Case(["outbox", "parked"], database=[row])


def assets_list(t: Texts, _: Path) -> Case:
    asset = SimpleNamespace(
        kind="host",
        identifier=t("identifier"),
        criticality=1,
        environment=t("environment"),
        data_classification="internal",
        business_service=t("service"),
        owner=t("owner"),
        tags=[t("tag")],
    )
    user = SimpleNamespace(name=t("name"), privilege="admin", department=t("department"), owns=[t("owns")], tags=[])
    return Case(["assets", "list"], database=([asset], [user]))


def dlq_list(t: Texts, _: Path) -> Case:
    headers = (
        ("vigil_dlq_service", t("service").encode()),
        ("vigil_dlq_code", t("code").encode()),
        ("vigil_dlq_reason", t("reason").encode()),
        ("vigil_dlq_topic", t("topic").encode()),
    )
    value = t("value").encode()
    letter = DeadLetter("vigil.alerts.dlq", 0, 7, 1_700_000_000_000, None, value, headers)
    return Case(["dlq", "list"], letters=[letter])


def heartbeats(t: Texts, _: Path) -> Case:
    beats = [
        {
            "key": t("heartbeat key"),
            "source": t("source"),
            "format": "alertmanager",
            "title": t("Watchdog"),
            "host": None,
            "first_seen_at": NOW,
            "last_seen_at": NOW,
            "sightings": 3,
            "resolved_at": None,
        },
        {  # never seen firing: its tool said at once that it stopped
            "key": t("stopped key"),
            "source": t("stopped source"),
            "format": "native",
            "title": t("DeadMansSwitch"),
            "host": None,
            "first_seen_at": NOW,
            "last_seen_at": None,
            "sightings": 0,
            "resolved_at": NOW,
        },
        {  # missing: Vigil raised an alert about it
            "key": t("missing key"),
            "source": t("missing source"),
            "format": "alertmanager",
            "title": t("Watchdog"),
            "host": None,
            "first_seen_at": NOW,
            "last_seen_at": NOW,
            "sightings": 7,
            "resolved_at": None,
            "interval_s": 60.2,
            "missed_since": NOW,
            "missed_alert": "missing-0123abcd",
        },
    ]
    return Case(["heartbeats"], {"/api/v1/heartbeats": beats})


CASES: list[Callable[[Texts, Path], Case]] = [
    alerts_suppressed,
    rules_waiting,
    rules_show,
    rules_reload,
    rules_validate,
    silence_list,
    maintenance_list,
    incidents_show,
    incidents_evidence,
    incidents_list,
    actions_list,
    recovery_list,
    lease_list,
    lease_revoke,
    response_rollback,
    tasks_list,
    digests_list,
    digests_preview,
    state_show,
    ack,
    incidents_merge,
    effects_list,
    tokens_list,
    outbox_parked,
    assets_list,
    dlq_list,
    heartbeats,
]


@pytest.mark.parametrize("make", CASES, ids=lambda make: make.__name__)
def test_text_with_brackets_is_shown_verbatim(
    make: Callable[[Texts, Path], Case], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    texts = Texts()
    case = make(texts, tmp_path)

    def answer(path: str) -> Any:
        return case.answers[path.partition("?")[0]]

    def request(service: str, base_url: str, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.Response(200, json=answer(path))

    async def on_database(work: Any) -> Any:
        return case.database

    monkeypatch.setattr(cli, "_request", request)  # the answer is still read by `_answer_of`
    monkeypatch.setattr(cli, "_get", lambda path, **_: answer(path))
    monkeypatch.setattr(cli, "_analyzer", lambda path, **_: answer(path))
    monkeypatch.setattr(cli, "_on_database", on_database)
    monkeypatch.setattr(cli, "_dead_letters", lambda which, limit=None: case.letters)
    # Wide enough for no cell to be folded; no colours, so that the text is all there is.
    monkeypatch.setattr(cli, "console", Console(width=2000, color_system=None))
    monkeypatch.setattr(cli, "err", Console(width=2000, color_system=None, stderr=True))

    result = CliRunner().invoke(cli.app, case.argv)

    assert result.exit_code == 0, f"{result.exception!r}\n{result.output}"
    missing = [text for text in texts.expected if text not in result.output]
    assert not missing, f"not shown verbatim: {missing}\n{result.output}"
