"""Reports rendered from the read model: a post-mortem per incident, a compliance report per period,
exports (CSV, JSON) and the OCSF Incident Finding. Pure: the caller reads the data (``bundle``)."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape

from services.reporter import charts
from services.reporter.aggregates import IncidentTimes, summarize
from services.reporter.measures import MEAN_NAMES, MEASURES, MILESTONES, SlaTargets, breaches, durations, humanize
from services.reporter.ocsf import incident_finding

Format = Literal["md", "html"]
TEMPLATES = Path(__file__).with_name("templates")


def vigil_version() -> str:
    try:
        return version("vigil")
    except PackageNotFoundError:
        return "0"


_MD_ACTIVE = str.maketrans({"\\": "\\\\", "[": "\\[", "]": "\\]", "<": "\\<", "|": "\\|", "`": "'"})


def _md(value: object) -> str:
    """Text in Markdown as it was written, never markup: pipes and line breaks (CR too) would break the row
    or the heading, a backtick would end the code span some values sit in, and brackets or an opening angle
    bracket would make links, images or HTML of it in whatever renders the report."""
    return " ".join(str(value).translate(_MD_ACTIVE).splitlines())


def when(at: object) -> str:
    """A moment as people read it, in UTC; stored analyses keep theirs as ISO text, and may lack it."""
    if not at:  # None, empty, or a field the stored data does not have
        return "-"
    if isinstance(at, str):
        try:
            moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            return at
    elif isinstance(at, datetime):
        moment = at
    else:
        return str(at)
    if moment.tzinfo is not None:  # a naive one is taken to be in UTC already
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _when(at: datetime | None) -> str:
    """A report's moment, said in UTC: a period asked for in another zone is told in UTC too."""
    return f"{when(at)} UTC" if at is not None else "-"


def _environment(fmt: Format) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        # Stored analyses of older versions may lack a field: it renders empty rather than failing the report.
        undefined=Undefined,
        trim_blocks=False,
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md if fmt == "md" else str
    env.globals.update(when=_when)
    return env


@dataclass
class IncidentBundle:
    """Everything the reporter knows of one incident."""

    incident: dict[str, Any]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    lessons: list[dict[str, Any]] = field(default_factory=list)  # went_well / went_badly notes: time, actor, note
    follow_ups: list[dict[str, Any]] = field(default_factory=list)  # its post-mortem tasks, done or not
    evidence: list[dict[str, Any]] = field(default_factory=list)  # its evidence register, as its events told it

    @property
    def milestones(self) -> dict[str, datetime | None]:
        return {name: self.incident.get(f"{name}_at") for name in MILESTONES}


def worked(action: Mapping[str, Any]) -> str:
    """Whether a response action did what it was for, in words."""
    if action.get("validated") is True:
        return "yes, validated"
    if action.get("validated") is False:
        return "no: validation failed"
    if action.get("state") == "rolled_back":
        return "reverted"
    if action.get("succeeded") is True:
        return "ran; not validated"
    if action.get("succeeded") is False:
        return "no: it failed"
    return "not run"


def response_rows(
    milestones: Mapping[str, datetime | None], severity: str | None, *, sla: SlaTargets, now: datetime
) -> list[dict[str, Any]]:
    """Each time-to-X of one incident: what it took, its target, and whether it was met."""
    gaps = durations(milestones)
    targets = sla.for_severity(severity)
    missed = {b.measure: b for b in breaches(milestones, severity, sla, now=now)}
    rows = []
    for measure in MEASURES:
        target = targets.of(measure)
        breach = missed.get(measure)
        if breach is not None:
            verdict = "still open, past its target" if breach.running else "missed"
        elif gaps[measure] is None:
            verdict = "not reached"
        else:
            verdict = "met" if target is not None else "no target"
        took = gaps[measure] if gaps[measure] is not None else (breach.actual_s if breach else None)
        rows.append(
            {
                "name": f"{measure.replace('_', ' ')} ({MEAN_NAMES[measure].removeprefix('M')})",
                "took": humanize(took),
                "target": humanize(target),
                "verdict": verdict,
                "missed": breach is not None,
            }
        )
    return rows


def times_chart(milestones: Mapping[str, datetime | None], severity: str | None, *, sla: SlaTargets) -> str:
    """The incident's response times as bars against their targets."""
    gaps = durations(milestones)
    targets = sla.for_severity(severity)
    return charts.bars_svg(
        [(m.replace("_", " "), gaps[m], targets.of(m)) for m in MEASURES], title="Response times (bar) and targets"
    )


ROOT_CAUSE_PARTS = (
    ("entry_vector", "Entry vector"),
    ("patient_zero", "Patient zero"),
    ("first_alert", "First alert"),
    ("stage", "Stage reached"),
)


def root_cause_rows(root_cause: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The analyzer's root-cause hypotheses, each with its confidence and evidence, in the order a reader asks."""
    rows = []
    for part, label in ROOT_CAUSE_PARTS:
        hypothesis = root_cause.get(part)
        if hypothesis:
            rows.append(
                {
                    "part": label,
                    "statement": hypothesis.get("statement", ""),
                    "confidence": hypothesis.get("confidence"),
                    "evidence": list(hypothesis.get("evidence") or []),
                }
            )
    return rows


def postmortem(bundle: IncidentBundle, *, fmt: Format, sla: SlaTargets, now: datetime) -> str:
    """The post-mortem of one incident, in Markdown or HTML."""
    i = bundle.incident
    analysis = i.get("analysis") or {}
    impact = analysis.get("impact") or {}
    milestones = bundle.milestones
    first = i.get("first_alert_at") or i.get("created_at")
    end = i.get("resolved_at") or now
    alert_sources = sorted({a.get("source", "") for a in bundle.alerts if a.get("source")})
    techniques = sorted({t for a in bundle.alerts for t in a.get("techniques", [])})
    summary = (
        f"A {i.get('severity')} {str(i.get('type') or 'unknown').replace('_', ' ')} incident, "
        f"{len(bundle.alerts)} alert(s) from {', '.join(alert_sources) or 'no source'}; "
        f"{analysis.get('summary') or i.get('classification_reason') or 'no analysis yet'}. "
        f"It is {i.get('state')}" + (f" ({i['resolution']})" if i.get("resolution") else "") + "."
    )
    hypothesis = (
        f"Classification: {i.get('classification_reason') or '-'}. Severity: {i.get('severity_reason') or '-'}."
        + (f" Analysis: {analysis['summary']}." if analysis.get("summary") else "")
    )
    context = {
        "i": i,
        "now": now,
        "summary": summary,
        "hypotheses": root_cause_rows(analysis.get("root_cause") or {}),
        "threat": analysis.get("threat") or {},
        "impact": impact,
        "systems": list(dict.fromkeys([*(impact.get("systems") or []), *(i.get("hosts") or [])])),
        "users": list(dict.fromkeys([*(impact.get("users") or []), *(i.get("users") or [])])),
        "services": impact.get("business_services") or i.get("services") or [],
        "duration": humanize((end - first).total_seconds()) if first else "-",
        "alert_count": len(bundle.alerts),
        "sources": alert_sources,
        "timeline": bundle.timeline,
        "chart": charts.timeline_svg(milestones, [t["time"] for t in bundle.timeline]),
        "chart_note": "The HTML version of this report draws the timeline as a chart.",
        "times_chart": times_chart(milestones, i.get("severity"), sla=sla),
        "hypothesis": hypothesis,
        "indicators": analysis.get("indicators", []),
        "indicator_count": analysis.get("indicator_count"),  # all of them: the analysis carries the worst
        "techniques": techniques,
        "attack_path": analysis.get("attack_path") or [],
        "attack_path_hops": analysis.get("attack_path_hops"),
        "actions": bundle.actions,
        "worked": worked,
        "response_rows": response_rows(milestones, i.get("severity"), sla=sla, now=now),
        "went_well": [lesson for lesson in bundle.lessons if lesson["lesson"] == "went_well"],
        "went_badly": [lesson for lesson in bundle.lessons if lesson["lesson"] == "went_badly"],
        "follow_ups": bundle.follow_ups,
        "evidence": bundle.evidence,
    }
    return _environment(fmt).get_template(f"postmortem.{fmt}.j2").render(context)


# ---- compliance ---------------------------------------------------------------------------------


# The runbook phase whose tasks are an incident's follow-ups (services/coordinator/tasks.yaml).
FOLLOW_UP_PHASES = ("post_mortem",)


@dataclass
class ComplianceData:
    since: datetime | None
    until: datetime | None
    incidents: list[dict[str, Any]]
    times: list[IncidentTimes]
    actions: list[dict[str, Any]]
    audit_entries: int
    audit_problem: str | None
    follow_ups: list[dict[str, Any]] = field(default_factory=list)  # post-mortem tasks not done


def compliance(data: ComplianceData, *, fmt: Format, sla: SlaTargets, now: datetime) -> str:
    """The compliance report of a period: incidents, response times against SLA, approvals, the audit chain."""
    by_severity = summarize(data.times, by="severity", sla=sla, now=now)
    severity_rows = []
    bars: list[tuple[str, float | None, float | None]] = []
    for group in sorted(by_severity, key=lambda g: g.group):
        targets = sla.for_severity(group.group)
        severity_rows.append(
            {
                "severity": group.group,
                "incidents": group.incidents,
                "resolved": group.resolved,
                "means": {MEAN_NAMES[m]: humanize(group.means_s[m]) for m in MEASURES},
                "missed": group.breached,
            }
        )
        for measure in ("time_to_acknowledge", "time_to_resolve"):
            bars.append((f"{group.group} {MEAN_NAMES[measure]}", group.means_s[measure], targets.of(measure)))  # type: ignore[arg-type]
    open_ones = [
        {"incident": t, "missed": breaches(t.milestones, t.severity, sla, now=now)} for t in data.times if not t.ended
    ]
    context = {
        "since": data.since,
        "until": data.until,
        "now": now,
        "count": len(data.incidents),
        # "unknown" as the aggregates count it: a row may lack one (the queries leave out those not detected).
        "by_severity": sorted(Counter(i["severity"] or "unknown" for i in data.incidents).items()),
        "by_type": sorted(Counter(i["type"] or "unknown" for i in data.incidents).items()),
        "by_state": sorted(Counter(i["state"] or "unknown" for i in data.incidents).items()),
        "severity_rows": severity_rows,
        "mean_names": list(MEAN_NAMES.values()),
        "chart": charts.bars_svg(bars, title="Mean response times per severity (bar) and SLA targets"),
        "actions": data.actions,
        "open": open_ones,
        "follow_ups": [
            {**task, "overdue": task["due_at"] is not None and task["due_at"] < now} for task in data.follow_ups
        ],
        "humanize": humanize,
        "audit_entries": data.audit_entries,
        "audit_problem": data.audit_problem,
    }
    return _environment(fmt).get_template(f"compliance.{fmt}.j2").render(context)


# ---- exports ------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        value = json.dumps(value, default=str, sort_keys=True)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        # An alert's title or a person's name is text, never a formula a spreadsheet opening the export
        # would run (=HYPERLINK(…), +cmd|…): the quote marks it as text there (OWASP's advice).
        return "'" + value
    return value


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


ExportKind = Literal["incidents", "actions", "timelines"]
EXPORT_KINDS: tuple[ExportKind, ...] = ("incidents", "actions", "timelines")
EXPORT_COLUMNS: dict[ExportKind, tuple[str, ...]] = {
    "incidents": (
        "id", "title", "type", "severity", "state", "resolution", "commander", "alert_count", "sources", "hosts",
        "users", "services", "indicators", "created_at", "first_alert_at", "detected_at", "acknowledged_at",
        "contained_at", "recovered_at", "resolved_at", "closed_at",
    ),
    "actions": (
        "incident_id", "step_id", "name", "phase", "item", "connector", "action", "state", "dry_run", "executed_at",
        "succeeded", "validated", "approved_by", "approved_at", "reason",
    ),
    "timelines": ("incident_id", "event_id", "time", "type", "actor", "summary"),
}  # fmt: skip


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV with a header; lists and objects as JSON text, times in ISO 8601."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _plain(row.get(c)) for c in columns})
    return out.getvalue()


def to_json(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(list(rows), default=_json_value, indent=2)


def _json_value(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


async def csv_chunks(batches: AsyncIterator[Sequence[Mapping[str, Any]]], columns: Sequence[str]) -> AsyncIterator[str]:
    """``to_csv`` a batch at a time: the header, then each batch's rows."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    async for rows in batches:
        for row in rows:
            writer.writerow({c: _plain(row.get(c)) for c in columns})
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    if out.tell():
        yield out.getvalue()


async def json_chunks(batches: AsyncIterator[Sequence[Mapping[str, Any]]]) -> AsyncIterator[str]:
    """``to_json`` a batch at a time: the same text, written as the rows come."""
    opened = False
    async for rows in batches:
        for row in rows:
            item = textwrap.indent(json.dumps(row, default=_json_value, indent=2), "  ")
            yield (",\n" if opened else "[\n") + item
            opened = True
    yield "\n]" if opened else "[]"


def export_chunks(
    batches: AsyncIterator[Sequence[Mapping[str, Any]]], *, kind: ExportKind, fmt: Literal["csv", "json"]
) -> AsyncIterator[str]:
    """An export's text as its rows are read, in either format."""
    return csv_chunks(batches, EXPORT_COLUMNS[kind]) if fmt == "csv" else json_chunks(batches)


def ocsf_finding(bundle: IncidentBundle) -> dict[str, Any]:
    return incident_finding(bundle.incident, bundle.alerts, version=vigil_version())
