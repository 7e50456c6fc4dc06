"""`vigil metrics`, `vigil report`, `vigil export` and `vigil timeline`: the reporter's commands.

They read Vigil's database directly, as an auditor's tools would, and need no running service.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.table import Table

from services.reporter.aggregates import DIMENSIONS, Dimension
from vigil.markup import escape

_RELATIVE = re.compile(r"^(\d+)([hdw])$")
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}

SinceOption = Annotated[str | None, typer.Option(help="From: an ISO date or time, or 7d / 12h / 4w ago.")]
UntilOption = Annotated[str | None, typer.Option(help="Until (excluded): an ISO date or time, or 7d ago.")]
SlaOption = Annotated[Path | None, typer.Option("--sla", help="SLA targets (YAML); else VIGIL_SLA or the shipped.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def parse_when(value: str | None, *, now: datetime) -> datetime | None:
    """`2026-11-01`, `2026-11-01T12:00:00Z`, or `7d` (ago); naive times are UTC."""
    if value is None:
        return None
    if match := _RELATIVE.match(value.strip()):
        return now - int(match[1]) * _UNIT[match[2]]
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is neither an ISO date/time nor a span such as 7d") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _sla(path: Path | None) -> Any:
    from services.reporter.measures import SlaFileError, load_sla
    from vigil.cli import _fail, _settings

    try:
        return load_sla(path or _settings().sla_file)
    except SlaFileError as exc:
        _fail(str(exc))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def register(app: typer.Typer) -> None:
    """Add the reporter's commands to the `vigil` CLI."""
    timeline_app = typer.Typer(help="Incident timelines.", no_args_is_help=True)
    app.add_typer(timeline_app, name="timeline")
    report_app = typer.Typer(help="Post-mortem and compliance reports.", no_args_is_help=True)
    app.add_typer(report_app, name="report")
    export_app = typer.Typer(
        help="Export incidents, actions, timelines (CSV, JSON), OCSF or STIX indicators.", no_args_is_help=True
    )
    app.add_typer(export_app, name="export")

    @app.command("metrics")
    def metrics(
        by: Annotated[str, typer.Option(help=f"Group by: {', '.join(DIMENSIONS)}.")] = "severity",
        since: SinceOption = "30d",
        until: UntilOption = None,
        sla: SlaOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Response metrics: MTTD, MTTA, MTTC, MTTR, resolution, effectiveness, false positives, SLA breaches."""
        from services.reporter import repository
        from services.reporter.api import response_report
        from services.reporter.measures import MEAN_NAMES, humanize
        from vigil.cli import _fail, _on_database, console

        if by not in DIMENSIONS:
            _fail(f"--by takes one of {', '.join(DIMENSIONS)}, not {by!r}")
        grouping: Dimension = by  # type: ignore[assignment]
        now = datetime.now(UTC)
        start, end = parse_when(since, now=now), parse_when(until, now=now)
        targets = _sla(sla)

        async def read(conn: Any) -> Any:
            return await repository.list_incident_times(conn, since=start, until=end)

        report = response_report(asyncio.run(_on_database(read)), by=grouping, sla=targets, now=now)
        if as_json:
            print(json.dumps(report, indent=2))
            return
        period = (
            f"{start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}"
            if start and end
            else (f"since {start:%Y-%m-%d %H:%M}" if start else "all time")
        )
        table = Table(title=f"{report['incidents']} incident(s), {period}, by {by}")
        for column in ("group", "incidents", "resolved", *MEAN_NAMES.values(), "effective", "false pos.", "SLA missed"):
            table.add_column(column, justify="left" if column == "group" else "right", no_wrap=True)
        for group in report["groups"]:
            table.add_row(
                escape(group["group"]),
                str(group["incidents"]),
                _pct(group["resolution_rate"]),
                *(humanize(group["mean_s"][measure]) for measure in MEAN_NAMES),
                _pct(group["effectiveness"]),
                _pct(group["false_positive_rate"]),
                str(group["sla_breached"]),
            )
        console.print(table)
        for kind in ("source", "rule"):
            rates = [r for r in report["false_positive_rates"][kind] if r["false_positives"]]
            if rates:
                said = ", ".join(f"{r[kind]} {_pct(r['rate'])} of {r['resolved']}" for r in rates[:10])
                console.print(f"[b]false positives by {kind}[/b] {escape(said)}")

    @timeline_app.command("rebuild")
    def timeline_rebuild() -> None:
        """Render every incident's timeline again from its history (after an upgrade adds renderers)."""
        from services.reporter import repository
        from services.reporter.timeline import render
        from vigil.cli import _on_database, console

        async def rebuild(conn: Any) -> int:
            return await repository.rebuild_timeline(conn, render=render)

        console.print(f"{asyncio.run(_on_database(rebuild))} timeline line(s) rendered")

    @report_app.command("incident")
    def report_incident(
        incident_id: Annotated[str, typer.Argument(help="The incident's id.")],
        fmt: ReportFormatOption = "html",
        out: OutOption = None,
        sla: SlaOption = None,
    ) -> None:
        """An incident's post-mortem: summary, impact, timeline with its chart, evidence, actions, response times."""
        from services.reporter import reports, repository
        from vigil.cli import _fail, _on_database

        if fmt not in ("md", "html"):
            _fail(f"--format takes md or html, not {fmt!r}")
        targets = _sla(sla)

        async def read(conn: Any) -> Any:
            return await repository.incident_bundle(conn, incident_id=await _full_id(conn, incident_id))

        bundle = asyncio.run(_on_database(read))
        if bundle is None:
            _fail(f"no incident {incident_id}")
        _write(reports.postmortem(bundle, fmt=fmt, sla=targets, now=datetime.now(UTC)), out)  # type: ignore[arg-type]

    @report_app.command("compliance")
    def report_compliance(
        since: SinceOption = "30d",
        until: UntilOption = None,
        fmt: ReportFormatOption = "html",
        out: OutOption = None,
        sla: SlaOption = None,
    ) -> None:
        """A period's compliance report: incidents, response times against SLA, approvals, follow-ups, audit chain."""
        from services.reporter import reports, repository
        from vigil.cli import _fail, _on_database

        if fmt not in ("md", "html"):
            _fail(f"--format takes md or html, not {fmt!r}")
        now = datetime.now(UTC)
        start, end = parse_when(since, now=now), parse_when(until, now=now)
        targets = _sla(sla)

        async def read(conn: Any) -> Any:
            return await repository.compliance_data(conn, since=start, until=end)

        data = asyncio.run(_on_database(read))
        _write(reports.compliance(data, fmt=fmt, sla=targets, now=now), out)  # type: ignore[arg-type]

    @export_app.command("incidents")
    def export_incidents(
        since: SinceOption = None, until: UntilOption = None, fmt: ExportFormatOption = "csv", out: OutOption = None
    ) -> None:
        """The incidents created in a period, with their milestones."""
        _export("incidents", since, until, fmt, out)

    @export_app.command("actions")
    def export_actions(
        since: SinceOption = None, until: UntilOption = None, fmt: ExportFormatOption = "csv", out: OutOption = None
    ) -> None:
        """The response actions of the incidents created in a period, with who approved them."""
        _export("actions", since, until, fmt, out)

    @export_app.command("timelines")
    def export_timelines(
        since: SinceOption = None, until: UntilOption = None, fmt: ExportFormatOption = "csv", out: OutOption = None
    ) -> None:
        """Every timeline line of the incidents created in a period."""
        _export("timelines", since, until, fmt, out)

    @export_app.command("ocsf")
    def export_ocsf(
        incident_id: Annotated[str, typer.Argument(help="The incident's id.")], out: OutOption = None
    ) -> None:
        """An incident as an OCSF Incident Finding (class 2005) in JSON."""
        from services.reporter import reports, repository
        from vigil.cli import _fail, _on_database

        async def read(conn: Any) -> Any:
            return await repository.incident_bundle(conn, incident_id=await _full_id(conn, incident_id))

        bundle = asyncio.run(_on_database(read))
        if bundle is None:
            _fail(f"no incident {incident_id}")
        _write(json.dumps(reports.ocsf_finding(bundle), indent=2) + "\n", out)

    @export_app.command("stix")
    def export_stix(
        incident_id: Annotated[str, typer.Argument(help="The incident's id.")],
        out: OutOption = None,
        min_verdict: Annotated[
            str, typer.Option("--min-verdict", help="Share malicious indicators only, suspicious and worse, or any.")
        ] = "suspicious",
        tlp: Annotated[str, typer.Option("--tlp", help="TLP 2.0: clear, green, amber, amber+strict or red.")] = "amber",
    ) -> None:
        """An incident's external indicators and ATT&CK techniques as a STIX 2.1 bundle, for sharing."""
        from services.reporter import repository, stix
        from vigil.cli import _fail, _on_database, err

        if min_verdict not in stix.MIN_VERDICTS:
            _fail(f"--min-verdict takes {', '.join(stix.MIN_VERDICTS)}, not {min_verdict!r}")
        if tlp.lower() not in stix.TLP_LEVELS:
            _fail(f"--tlp takes {', '.join(stix.TLP_LEVELS)}, not {tlp!r}")

        async def read(conn: Any) -> Any:
            return await repository.get_incident(conn, incident_id=await _full_id(conn, incident_id))

        incident = asyncio.run(_on_database(read))
        if incident is None or incident.get("title") is None:
            _fail(f"no incident {incident_id}")
        bundle = stix.indicator_bundle(incident, min_verdict=min_verdict, tlp=tlp.lower())  # type: ignore[arg-type]
        shared = sum(o["type"] == "indicator" for o in bundle["objects"])
        if not shared:  # still a valid bundle (techniques, report), but say so before someone shares it
            err.print(f"incident {escape(incident_id)}: no external indicator at --min-verdict {min_verdict}")
        _write(json.dumps(bundle, indent=2) + "\n", out)


ReportFormatOption = Annotated[str, typer.Option("--format", help="md (Markdown) or html.")]
ExportFormatOption = Annotated[str, typer.Option("--format", help="csv or json.")]
OutOption = Annotated[Path | None, typer.Option("-o", "--out", help="Write to this file instead of printing.")]


async def _full_id(conn: Any, given: str) -> str:
    """The incident whose id starts with ``given`` (the short ids `incidents list` prints), if only one does."""
    from services.reporter import repository
    from vigil.cli import _fail

    if len(given) >= 36:
        return given
    found = await repository.ids_starting(conn, prefix=given)
    if len(found) > 1 and given not in found:
        _fail(f"more than one incident matches {given!r}: {', '.join(i[:12] for i in found)}; give more of it")
    return found[0] if len(found) == 1 else given


def _write(text: str, out: Path | None) -> None:
    from vigil.cli import _fail, err

    if out is None:
        print(text, end="")
        return
    try:
        out.write_text(text)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}")
    err.print(f"written to {escape(str(out))}")


def _export(kind: str, since: str | None, until: str | None, fmt: str, out: Path | None) -> None:
    from services.reporter import reports, repository
    from vigil.cli import _fail, _on_database, err

    if fmt not in ("csv", "json"):
        _fail(f"--format takes csv or json, not {fmt!r}")
    now = datetime.now(UTC)
    start, end = parse_when(since, now=now), parse_when(until, now=now)

    async def write(conn: Any, sink: TextIO) -> None:
        # Written as it is read, from one snapshot: an export of everything never sits in memory whole.
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            batches = repository.export_rows(conn, kind=kind, since=start, until=end)  # type: ignore[arg-type]
            async for chunk in reports.export_chunks(batches, kind=kind, fmt=fmt):  # type: ignore[arg-type]
                sink.write(chunk)
        if fmt == "json":
            sink.write("\n")

    if out is None:
        asyncio.run(_on_database(lambda conn: write(conn, sys.stdout)))
        return
    # Written beside the file and put in its place once whole: a failed export leaves the file as it was.
    partial = out.with_name(f".{out.name}.partial")
    try:
        sink = partial.open("w")
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}")
    try:
        with sink:
            asyncio.run(_on_database(lambda conn: write(conn, sink)))
        partial.replace(out)
    except OSError as exc:  # the file, or the connection the rows come on
        _fail(f"the export to {out} failed: {exc}")
    finally:
        partial.unlink(missing_ok=True)
    err.print(f"written to {escape(str(out))}")
