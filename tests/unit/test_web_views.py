"""The web view's pure parts: reading the list's filters, where sign-in may lead, and escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import pytest

from services.reporter import views
from services.reporter.measures import DEFAULT_SLA
from services.reporter.reports import IncidentBundle, when
from shared.identity import Principal
from tests.factories import T0

VIEWER = Principal(name="dana", role="viewer", kind="person")


def test_the_list_form_reads_every_filter() -> None:
    form = views.parse_list_form(
        [
            ("state", "detected"),
            ("state", "resolved"),
            ("state", "detected"),  # twice is once
            ("severity", "SEV1"),
            ("type", "data_leak"),
            ("since", "2026-11-01"),
            ("until", "2026-11-24"),
            ("q", "  ransomware  "),
            ("sort", "severity"),
            ("order", "asc"),
            ("limit", "20"),
            ("cursor", "abc"),
            ("q", ""),  # an empty field filters nothing
        ]
    )
    assert form.problems == []
    filters = form.filters()
    assert filters.states == ("detected", "resolved")
    assert (filters.severities, filters.types, filters.text) == (("SEV1",), ("data_leak",), "ransomware")
    assert filters.since == datetime(2026, 11, 1, tzinfo=UTC)
    assert filters.until == datetime(2026, 11, 25, tzinfo=UTC)  # the last day is included
    assert (form.sort, form.order, form.limit, form.cursor) == ("severity", "asc", 20, "abc")
    assert form.narrowed


def test_the_list_form_says_what_it_could_not_use_and_leaves_it_out() -> None:
    form = views.parse_list_form(
        [
            ("state", "exploded"),
            ("severity", "SEV9"),
            ("since", "yesterday"),
            ("sort", "title; DROP TABLE x"),
            ("order", "sideways"),
            ("limit", "100000"),
            ("q", "x" * 600),
        ]
    )
    assert form.problems == [
        "there is no state 'exploded'",
        "there is no severity 'SEV9'",
        "since 'yesterday' is neither a date (2026-11-24) nor an ISO 8601 time",
        "cannot sort by 'title; DROP TABLE x'",
        "the order is asc or desc, not 'sideways'",
        f"a page holds 1 to {views.MAX_PAGE_SIZE} incidents",
        f"the search text was cut to {views.MAX_TEXT} characters",
    ]
    assert (form.states, form.severities, form.since, form.sort, form.order, form.limit) == (
        [],
        [],
        None,
        "created_at",
        "desc",
        views.PAGE_SIZE,
    )
    assert len(form.text) == views.MAX_TEXT
    assert views.parse_list_form([("since", "2026-11-24"), ("until", "2026-11-23")]).problems == [
        "the period ends before it starts"
    ]


def test_times_are_days_or_iso_times_in_utc() -> None:
    assert views.parse_moment("2026-11-24") == T0 - timedelta(hours=9)
    assert views.parse_moment("2026-11-24", end_of_day=True) == T0 + timedelta(hours=15)
    assert views.parse_moment("2026-11-24T09:00") == T0
    assert views.parse_moment("2026-11-24T10:00:00+01:00") == T0
    with pytest.raises(ValueError):
        views.parse_moment("next tuesday")
    # The last day there is has no next day: it is included up to the last moment there is.
    assert views.parse_moment("9999-12-31", end_of_day=True) == datetime.max.replace(tzinfo=UTC)


def test_a_page_link_keeps_the_filters_but_not_the_defaults() -> None:
    form = views.parse_list_form([("severity", "SEV1"), ("severity", "SEV2"), ("q", "a&b=c"), ("until", "2026-11-24")])
    assert parse_qsl(form.query(cursor="CUR")) == [
        ("severity", "SEV1"),
        ("severity", "SEV2"),
        ("until", "2026-11-24"),
        ("q", "a&b=c"),
        ("cursor", "CUR"),
    ]
    assert views.parse_list_form([]).query() == ""


@pytest.mark.parametrize(
    "asked",
    [None, "", "https://evil.example/ui/", "//evil.example/ui/", "/\\evil.example", "/ui\\..\\x", "/api/v1/incidents",
     "/ui/login?next=/ui/incidents", "/ui/logout", "javascript:alert(1)"],
)  # fmt: skip
def test_sign_in_never_leads_away_from_the_view(asked: str | None) -> None:
    assert views.safe_next(asked) == views.HOME


def test_sign_in_comes_back_to_the_page_asked_for() -> None:
    assert views.safe_next("/ui/incidents/inc-1?x=1") == "/ui/incidents/inc-1?x=1"
    assert (
        views.sign_in_url("/ui/incidents/inc-1", "x=1&y=2")
        == "/ui/login?next=%2Fui%2Fincidents%2Finc-1%3Fx%3D1%26y%3D2"
    )
    assert views.sign_in_url("/ui/incidents", "") == "/ui/login?next=%2Fui%2Fincidents"


def test_times_read_as_utc_whether_stored_as_times_or_text() -> None:
    assert when(None) == "-"
    assert when(T0) == "2026-11-24 09:00:00"
    assert when("2026-11-24T10:00:00+01:00") == "2026-11-24 09:00:00"
    assert when("2026-11-24T09:00:00Z") == "2026-11-24 09:00:00"
    assert when("not a time") == "not a time"


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _bundle(**incident: object) -> IncidentBundle:
    base: dict[str, object] = {
        "id": "inc-1/../x",
        "title": HOSTILE,
        "type": "data_leak",
        "severity": "SEV2",
        "state": "detected",
        "alert_count": 1,
        "hosts": [HOSTILE],
        "users": [],
        "sources": ["falco"],
        "created_at": T0,
        "first_alert_at": T0,
        "detected_at": T0 + timedelta(seconds=30),
        "updated_at": T0,
    }
    return IncidentBundle(
        incident={**base, **incident},
        alerts=[
            {"time": T0, "source": "falco", "severity": "high", "title": HOSTILE, "status": "firing", "repeats": 0}
        ],
        actions=[{"name": HOSTILE, "step_id": "s1", "state": "failed", "succeeded": False, "connector": "c"}],
        timeline=[{"time": T0, "actor": HOSTILE, "summary": HOSTILE, "incident_id": "inc-1/../x"}],
    )


def test_the_incident_page_shows_what_was_written_as_text() -> None:
    analysis = {"summary": HOSTILE, "indicators": [{"kind": "url", "value": HOSTILE}], "risk": None}
    page = views.incident_page(
        _bundle(analysis=analysis, commander=HOSTILE),
        merged=[HOSTILE],
        leases=[{"name": HOSTILE, "step_id": "s1", "state": "active", "due_at": "2026-11-25T09:00:00Z"}],
        sla=DEFAULT_SLA,
        now=T0 + timedelta(hours=1),
        by=VIEWER,
    )
    assert "<script" not in page and "<img" not in page
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") >= 9
    assert 'href="/ui/incidents/inc-1%2F..%2Fx/postmortem.html"' in page  # an id stays one path segment
    assert "2026-11-25 09:00:00" in page
    assert "no: it failed" in page
    assert "<svg" in page  # the timeline's chart, drawn by the reports' own code


def test_an_incident_analysed_by_an_older_version_still_renders() -> None:
    page = views.incident_page(
        _bundle(analysis={"summary": "old", "root_cause": {}, "threat": None}, title="Old one"),
        merged=[],
        leases=[],
        sla=DEFAULT_SLA,
        now=T0,
        by=VIEWER,
    )
    assert "Old one" in page and "No root cause stated." in page and "No risk score." in page
