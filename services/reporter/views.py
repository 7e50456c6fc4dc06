"""Pure rendering of the reporter's web view: the incident list and its filters, one incident, the
reports page, sign-in and refusals. The routes (``web.py``) read the data and send what this returns.

Every page is a Jinja template with autoescaping on: whatever an alert or a person wrote shows as
text, never as markup. Charts come from ``charts`` and the report pieces from ``reports``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import ChainableUndefined, Environment, FileSystemLoader

from services.reporter import charts, page_commands, reports
from services.reporter.measures import MILESTONES, SlaTargets
from services.reporter.queries import INCIDENT_SORTS, IncidentFilter, IncidentSort, Order
from services.reporter.reports import ExportKind, IncidentBundle, when
from shared.events import IncidentState, IncidentType, Severity
from shared.identity import Principal

TEMPLATES = Path(__file__).with_name("templates") / "web"
HOME = "/ui/incidents"
SIGN_IN = "/ui/login"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_TEXT = 500  # as the query API's `q`
STATES = tuple(s.value for s in IncidentState)
SEVERITIES = tuple(s.value for s in Severity)
TYPES = tuple(t.value for t in IncidentType)
CHOICES = {"state": STATES, "severity": SEVERITIES, "type": TYPES}
SORT_LABELS: dict[IncidentSort, str] = {
    "created_at": "created",
    "updated_at": "last change",
    "severity": "severity",
    "alert_count": "alerts",
}
EXPORT_LABELS: dict[ExportKind, str] = {
    "incidents": "The incidents created in the period",
    "actions": "Their response actions, with who approved them and whether they worked",
    "timelines": "Their timelines, a line per event",
}
OPEN_STATES = frozenset(STATES) - {IncidentState.RESOLVED.value, IncidentState.CLOSED.value}


# ---- the template environment -------------------------------------------------------------------


def words(value: object) -> str:
    """`security_breach` -> `security breach`."""
    return str(value).replace("_", " ") if value else "-"


def segment(value: object) -> str:
    """A value as one URL path segment."""
    return quote(str(value), safe="")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,  # every page, whatever its name: nothing a person sees is markup unless marked safe
        # An analysis stored by an older version may lack a field: it shows empty rather than failing the page.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, words=words, segment=segment)
    env.globals.update(worked=reports.worked, open_states=OPEN_STATES, page_size=PAGE_SIZE)
    return env


_ENV = _environment()


def render(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(context)


# ---- the incident list's filters --------------------------------------------------------------


@dataclass
class ListForm:
    """The incident list's filters as a person set them, what they mean, and what could not be read."""

    states: list[str] = field(default_factory=list)
    severities: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    since_text: str = ""
    until_text: str = ""
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""
    sort: IncidentSort = "created_at"
    order: Order = "desc"
    limit: int = PAGE_SIZE
    cursor: str | None = None
    problems: list[str] = field(default_factory=list)

    def filters(self) -> IncidentFilter:
        return IncidentFilter(
            states=tuple(self.states),
            severities=tuple(self.severities),
            types=tuple(self.types),
            since=self.since,
            until=self.until,
            text=self.text or None,
        )

    def query(self, *, cursor: str | None = None) -> str:
        """The query string of this list (from a cursor on), without defaults, for links."""
        pairs: list[tuple[str, str]] = [
            *(("state", s) for s in self.states),
            *(("severity", s) for s in self.severities),
            *(("type", t) for t in self.types),
        ]
        for name, value, default in (
            ("since", self.since_text, ""),
            ("until", self.until_text, ""),
            ("q", self.text, ""),
            ("sort", self.sort, "created_at"),
            ("order", self.order, "desc"),
            ("limit", str(self.limit), str(PAGE_SIZE)),
        ):
            if value != default:
                pairs.append((name, value))
        if cursor:
            pairs.append(("cursor", cursor))
        return urlencode(pairs)

    @property
    def narrowed(self) -> bool:
        return bool(self.states or self.severities or self.types or self.since or self.until or self.text)


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime:
    """`2026-11-24` (the day's start, or with ``end_of_day`` the next day's, so the day is included) or an
    ISO 8601 time (UTC unless it says otherwise); ValueError for anything else."""
    text = text.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    start = datetime.combine(day, time(), tzinfo=UTC)
    if not end_of_day:
        return start
    # The last day there is (9999-12-31) has no next day: it ends at the last moment there is.
    return start + timedelta(days=1) if day < date.max else datetime.max.replace(tzinfo=UTC)


def parse_list_form(params: Sequence[tuple[str, str]]) -> ListForm:
    """Read the list's query string; a value that cannot be used is left out and said why, never an error page."""
    form = ListForm()
    for name, raw in params:
        value = raw.strip()
        if not value:
            continue  # an empty field of the form: no filter
        match name:
            case "state" | "severity" | "type":
                chosen = {"state": form.states, "severity": form.severities, "type": form.types}[name]
                if value not in CHOICES[name]:
                    form.problems.append(f"there is no {name} {value!r}")
                elif value not in chosen:
                    chosen.append(value)
            case "since" | "until":
                try:
                    moment = parse_moment(value, end_of_day=name == "until")
                except ValueError:
                    form.problems.append(f"{name} {value!r} is neither a date (2026-11-24) nor an ISO 8601 time")
                    continue
                if name == "since":
                    form.since, form.since_text = moment, value
                else:
                    form.until, form.until_text = moment, value
            case "q":
                if len(value) > MAX_TEXT:
                    form.problems.append(f"the search text was cut to {MAX_TEXT} characters")
                form.text = value[:MAX_TEXT]
            case "sort":
                if value in INCIDENT_SORTS:
                    form.sort = value  # type: ignore[assignment]
                else:
                    form.problems.append(f"cannot sort by {value!r}")
            case "order":
                if value in ("asc", "desc"):
                    form.order = value  # type: ignore[assignment]
                else:
                    form.problems.append(f"the order is asc or desc, not {value!r}")
            case "limit":
                if value.isdigit() and 1 <= int(value) <= MAX_PAGE_SIZE:
                    form.limit = int(value)
                else:
                    form.problems.append(f"a page holds 1 to {MAX_PAGE_SIZE} incidents")
            case "cursor":
                form.cursor = value[:1000]
    if form.since and form.until and form.since >= form.until:
        form.problems.append("the period ends before it starts")
    return form


# ---- pages --------------------------------------------------------------------------------------


def incident_list_page(
    form: ListForm, incidents: Sequence[Mapping[str, Any]], *, next_cursor: str | None, by: Principal
) -> str:
    return render(
        "incidents.html.j2",
        title="Incidents",
        by=by,
        form=form,
        incidents=incidents,
        next_query=form.query(cursor=next_cursor) if next_cursor else None,
        first_query=form.query() if form.cursor else None,
        states=STATES,
        severities=SEVERITIES,
        types=TYPES,
        sorts=SORT_LABELS,
    )


def incident_page(
    bundle: IncidentBundle,
    *,
    merged: Sequence[str],
    leases: Sequence[Mapping[str, Any]],
    sla: SlaTargets,
    now: datetime,
    by: Principal,
    can: Mapping[str, bool] | None = None,
    sent: str | None = None,
) -> str:
    """One incident: summary, analysis, actions and leases, timeline with its chart, links to its reports;
    the forms to act on it that ``can`` allows, and what was ``sent`` from them last."""
    i = bundle.incident
    milestones = bundle.milestones
    return render(
        "incident.html.j2",
        title=i.get("title") or i["id"],
        by=by,
        can=can or {},
        sent=sent,
        nonce=secrets.token_urlsafe(18),  # the page's forms: each sent twice is one command
        resolutions=page_commands.RESOLUTIONS,
        i=i,
        analysis=i.get("analysis") or {},
        plan=i.get("plan") or {},
        alerts=bundle.alerts,
        actions=bundle.actions,
        evidence=bundle.evidence,
        leases=leases,
        timeline=bundle.timeline,
        merged=merged,
        milestones=[(name.replace("_", " "), milestones[name]) for name in MILESTONES],
        chart=charts.timeline_svg(milestones, [t["time"] for t in bundle.timeline]),
        times_chart=reports.times_chart(milestones, i.get("severity"), sla=sla),
        response_rows=reports.response_rows(milestones, i.get("severity"), sla=sla, now=now),
    )


def reports_page(*, since_text: str, until_text: str, problems: Sequence[str], by: Principal) -> str:
    period = urlencode([(k, v) for k, v in (("since", since_text), ("until", until_text)) if v])
    return render(
        "reports.html.j2",
        title="Reports",
        by=by,
        since_text=since_text,
        until_text=until_text,
        period=period,
        problems=problems,
        kinds=EXPORT_LABELS,
    )


def sign_in_page(*, next_path: str, problem: str | None = None, by: Principal | None = None) -> str:
    return render("login.html.j2", title="Sign in", next_path=next_path, problem=problem, by=by)


def message_page(title: str, message: str, *, by: Principal | None = None) -> str:
    """A plain page saying why there is nothing else to show (refused, not found)."""
    return render("message.html.j2", title=title, message=message, by=by)


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a page of this view, never another site (``//host``, ``/\\host``)."""
    if not path or not path.startswith("/ui/") or path.startswith(("//", "/\\")) or "\\" in path:
        return HOME
    if path.split("?", 1)[0] in (SIGN_IN, "/ui/logout"):
        return HOME
    return path


def sign_in_url(path: str, query: str) -> str:
    """The sign-in page, coming back to this page afterwards."""
    return f"{SIGN_IN}?{urlencode({'next': safe_next(f'{path}?{query}' if query else path)})}"
