"""`vigil silence`, `vigil maintenance` and `vigil alerts suppressed`, through the detector's API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.table import Table

from vigil.markup import escape

silence_app = typer.Typer(
    help="Silences: matching alerts are stored and counted as silenced, and open or raise nothing.",
    no_args_is_help=True,
)
maintenance_app = typer.Typer(
    help="Maintenance windows of hosts or services, one-off or recurring (iCalendar RRULE).", no_args_is_help=True
)
alerts_app = typer.Typer(help="Stored alerts.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
MatcherArgs = Annotated[
    list[str],
    typer.Argument(
        help="Matchers: NAME=VALUE, NAME!=VALUE, NAME=~REGEX, NAME!~REGEX on a field (host, rule, source, severity, "
        "src_ip, …) or a label, e.g. host=web-01 'rule=~\"Disk.*\"'."
    ),
]
CommentOption = Annotated[str, typer.Option("--comment", "-c", help="Why; shown with every alert it suppresses.")]
StartOption = Annotated[str | None, typer.Option("--start", help="ISO 8601 (your zone unless said); now if not given.")]


def _detector(method: str, path: str, body: Any = None) -> Any:
    from vigil import cli

    return cli._answer_of(cli._request("detector", cli._settings().detector_url, method, path, body))


def _time(text: str | None, option: str, *, zone: tzinfo | None = None) -> datetime | None:
    """An ISO 8601 time; without an offset, in ``zone`` (else this machine's zone)."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint=option) from exc
    if at.tzinfo is not None:
        return at
    return at.replace(tzinfo=zone) if zone is not None else at.astimezone()


def _naive(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return False  # refused as it is read


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a folder of zones ("America")
        raise typer.BadParameter(f"unknown time zone {name!r}", param_hint="--tz") from exc


def _seconds(text: str | None, option: str) -> int | None:
    from services.detector.suppression import parse_duration

    if text is None:
        return None
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def _short(moment: str | None) -> str:
    return moment[:16].replace("T", " ") if moment else "-"


def _in_zone(moment: str | None, zone: str) -> str:
    """A stored (UTC) time as the window's own clock reads it."""
    if not moment:
        return "-"
    try:
        return datetime.fromisoformat(moment).astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
    except (ValueError, ZoneInfoNotFoundError, OSError):
        return f"{_short(moment)} UTC"


def _print(rows: Any, as_json: bool, table: Table, row: Any) -> None:
    """Print the rows as JSON, or each as ``row`` makes it: plain text, brackets and all (never rich markup)."""
    from vigil import cli

    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for item in rows if isinstance(rows, list) else [rows]:
        # Titles, hosts, matchers, comments and reasons come from tools and people: `[/etc/passwd]`
        # in an alert's title is no closing tag, `[ssh]` no style.
        table.add_row(*(escape(cell) for cell in row(item)))
    cli.console.print(table)


# ---- silences ----------------------------------------------------------------------------------


def _silences_table(title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "state", "matchers", "starts", "ends", "by", "comment"):
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    return table


def _silence_row(s: dict[str, Any]) -> list[str]:
    by = s["created_by"] + (f" (expired by {s['expired_by']})" if s["expired_by"] else "")
    return [
        s["id"],
        s["state"],
        " ".join(s["matchers"]),
        _short(s["starts_at"]),
        _short(s["ends_at"]),
        by,
        s["comment"],
    ]


@silence_app.command("add")
def silence_add(
    matchers: MatcherArgs,
    comment: CommentOption,
    duration: Annotated[str | None, typer.Option("--for", help="How long: 30m, 2h, 1d.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Or the end, ISO 8601.")] = None,
    start: StartOption = None,
    as_json: JsonOption = False,
) -> None:
    """Silence the alerts all MATCHERS match, from now (or --start) --for a while or --until a time."""
    if (duration is None) == (until is None):
        raise typer.BadParameter("give --for or --until, one of them")
    starts_at, ends_at = _time(start, "--start"), _time(until, "--until")
    body = {
        "matchers": matchers,
        "comment": comment,
        "starts_at": starts_at.isoformat() if starts_at else None,
        "ends_at": ends_at.isoformat() if ends_at else None,
        "duration_s": _seconds(duration, "--for"),
    }
    created = _detector("POST", "/api/v1/silences", body)
    _print(created, as_json, _silences_table("silence added"), _silence_row)


@silence_app.command("list")
def silence_list(
    expired: Annotated[bool, typer.Option("--expired", help="Also those that ended.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List silences that have not ended (pending and active), the latest to end first."""
    silences = _detector("GET", f"/api/v1/silences?expired={str(expired).lower()}")
    _print(silences, as_json, _silences_table(f"{len(silences)} silence(s)"), _silence_row)


@silence_app.command("expire")
def silence_expire(silence_id: str, as_json: JsonOption = False) -> None:
    """End a silence now; alerts it covered that still fire open or join incidents when next seen."""
    ended = _detector("POST", f"/api/v1/silences/{silence_id}/expire")
    _print(ended, as_json, _silences_table("silence expired"), _silence_row)


# ---- maintenance windows -----------------------------------------------------------------------


def _windows_table(title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "name", "matchers", "when", "now", "next", "by"):
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    return table


def _window_row(w: dict[str, Any]) -> list[str]:
    zone = w["time_zone"]
    if w["rrule"]:
        when = f"{w['rrule']} for {w['duration_s'] // 60} min from {_in_zone(w['starts_at'], zone)} {zone}"
        if w["ends_at"]:
            when += f" until {_in_zone(w['ends_at'], zone)}"
    else:
        when = f"{_in_zone(w['starts_at'], zone)} to {_in_zone(w['ends_at'], zone)} {zone}"
    active = f"until {_in_zone(w['active_now'][1], zone)}" if w["active_now"] else "-"
    by = w["created_by"] + (f" (ended by {w['ended_by']})" if w["ended_by"] else "")
    upcoming = _in_zone(w["next_start"], zone) if w["next_start"] else "-"
    return [w["id"], w["name"], " ".join(w["matchers"]), when, active, upcoming, by]


@maintenance_app.command("add")
def maintenance_add(
    name: Annotated[str, typer.Argument(help="What the maintenance is, e.g. 'db patching'.")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="A host in maintenance (repeat for several).")
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", help="A business service (the alerts' `service` label).")
    ] = None,
    match: Annotated[
        list[str] | None, typer.Option("--match", help="Any other matcher, e.g. 'host=~\"db-.*\"'.")
    ] = None,
    start: StartOption = None,
    end: Annotated[
        str | None, typer.Option("--end", help="One-off: when it ends; recurring: no occurrence after.")
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--for", help="One-off: how long; recurring: each occurrence.")
    ] = None,
    rrule: Annotated[
        str | None, typer.Option("--rrule", help="Recurring: an iCalendar RRULE, e.g. 'FREQ=WEEKLY;BYDAY=SU'.")
    ] = None,
    time_zone: Annotated[
        str | None,
        typer.Option("--tz", help="The zone the RRULE recurs in, and --start / --end read in without an offset."),
    ] = None,
    comment: Annotated[str, typer.Option("--comment", "-c", help="Why, or a change ticket.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Add a maintenance window for --host / --service (or --match): one-off (--end or --for) or --rrule + --for."""
    if not (host or service or match):
        raise typer.BadParameter("say what is in maintenance: --host, --service or --match")
    # A window's matchers must all match: several hosts (or services) become one regex.
    matchers = [*(match or []), *_one_of("host", host), *_one_of("service", service)]
    if rrule is not None and time_zone is None and start is not None and _naive(start):
        # Read in this machine's zone but recurring in UTC, a weekly window would drift off its day and hour.
        raise typer.BadParameter(
            "a recurring window needs the zone it recurs in: --tz (e.g. --tz Europe/Paris), or an offset on --start"
        )
    zone = _zone(time_zone or "UTC")
    starts_at = _time(start, "--start", zone=zone if time_zone else None) or datetime.now(UTC)
    seconds = _seconds(duration, "--for")
    ends_at = _time(end, "--end", zone=zone if time_zone else None)
    if rrule is None:
        if (ends_at is None) == (seconds is None):
            raise typer.BadParameter("a one-off window needs --end or --for, one of them")
        ends_at = ends_at or starts_at + timedelta(seconds=seconds or 0)
        seconds = None
    elif seconds is None:
        raise typer.BadParameter("a recurring window needs --for: how long each occurrence lasts")
    body = {
        "name": name,
        "matchers": matchers,
        "starts_at": starts_at.isoformat(),
        "ends_at": ends_at.isoformat() if ends_at else None,
        "rrule": rrule,
        "duration_s": seconds,
        "time_zone": time_zone or "UTC",
        "comment": comment,
    }
    created = _detector("POST", "/api/v1/maintenance-windows", body)
    _print(created, as_json, _windows_table("maintenance window added"), _window_row)


def _one_of(name: str, values: list[str] | None) -> list[str]:
    if not values:
        return []
    if len(values) == 1:
        return [f"{name}={json.dumps(values[0])}"]
    return [f"{name}=~{json.dumps('|'.join(map(re.escape, values)))}"]


@maintenance_app.command("list")
def maintenance_list(
    ended: Annotated[bool, typer.Option("--ended", help="Also those that ended.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List maintenance windows that have not ended, with the occurrence in progress and the next one."""
    windows = _detector("GET", f"/api/v1/maintenance-windows?ended={str(ended).lower()}")
    _print(windows, as_json, _windows_table(f"{len(windows)} maintenance window(s)"), _window_row)


@maintenance_app.command("end")
def maintenance_end(window_id: str, as_json: JsonOption = False) -> None:
    """End a maintenance window now (a recurring one never recurs again)."""
    ended = _detector("POST", f"/api/v1/maintenance-windows/{window_id}/end")
    _print(ended, as_json, _windows_table("maintenance window ended"), _window_row)


# ---- suppressed alerts -------------------------------------------------------------------------


@alerts_app.command("suppressed")
def alerts_suppressed(
    kind: Annotated[str | None, typer.Option(help="silence, maintenance or inhibition.")] = None,
    by: Annotated[str | None, typer.Option(help="A silence id, window id or inhibiting alert key.")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only those still held back (not released).")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, latest first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List alerts that were stored but raised nothing, and what suppressed each (silence, window, inhibiting alert)."""
    from urllib.parse import urlencode

    query = {"kind": kind, "by": by, "active": str(active).lower(), "limit": limit}
    rows = _detector("GET", "/api/v1/suppressed-alerts?" + urlencode({k: v for k, v in query.items() if v is not None}))
    table = Table(title=f"{len(rows)} suppressed alert(s)")
    for column in ("alert", "title", "host", "by", "why", "seen", "state"):
        table.add_column(column, overflow="fold")

    def row(a: dict[str, Any]) -> list[str]:
        state = (
            f"released {_short(a['released_at'])}"
            if a["released_at"]
            else f"resolved {_short(a['resolved_at'])}"
            if a["resolved_at"]
            else "held back"
        )
        seen = f"{a['repeats'] + 1}x, last {_short(a['last_seen_at'])}"
        return [a["key"], a["title"], a["host"] or "-", f"{a['kind']} {a['suppressed_by']}", a["reason"], seen, state]

    _print(rows, as_json, table, row)
