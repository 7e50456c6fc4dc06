"""The reporter's query building: filters become parameterised conditions, cursors round-trip."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest

from services.reporter.queries import (
    AlertFilter,
    BadCursor,
    IncidentFilter,
    Order,
    alert_query,
    decode_cursor,
    encode_cursor,
    incident_query,
)
from tests.factories import T0

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_no_filter_lists_detected_incidents_newest_first() -> None:
    sql, args = incident_query("id", IncidentFilter(), limit=10)
    assert sql == (
        "SELECT id FROM reporter_incidents WHERE detected_at IS NOT NULL ORDER BY created_at desc, id desc LIMIT $1"
    )
    assert args == [11]  # one more, to know whether another page follows


def test_every_filter_is_a_parameter_never_text_in_the_sql() -> None:
    hostile = "x'; DROP TABLE reporter_incidents; --"
    filters = IncidentFilter(
        states=("detected", "acknowledged"),
        severities=("SEV1",),
        types=("data_leak",),
        since=T0,
        until=T0 + timedelta(days=1),
        commander=hostile,
        source=hostile,
        service="payments",
        asset="web-01",
        indicator="203.0.113.9",
        text=hostile,
    )
    sql, args = incident_query("id", filters, sort="created_at", order="asc", after=(T0, "inc-9"), limit=5)
    assert hostile not in sql
    assert "state = ANY($1::text[])" in sql
    assert "sources @> ARRAY[$7::text]" in sql and "hosts @> ARRAY[$9::text]" in sql
    assert "indicators && $10::text[]" in sql
    assert "search @@ websearch_to_tsquery('english', $11)" in sql
    assert "(created_at, id) > ($12, $13)" in sql
    assert sql.endswith("ORDER BY created_at asc, id asc LIMIT $14")
    assert args[0] == ["detected", "acknowledged"] and args[-3:] == [T0, "inc-9", 6]


@pytest.mark.parametrize(("order", "direction", "op"), [("desc", "asc", ">"), ("asc", "desc", "<")])
def test_severity_desc_is_the_most_severe_first_in_the_order_and_the_cursor_alike(
    order: Order, direction: str, op: str
) -> None:
    """SEV1 is the highest severity and the least text: "desc" (highest first) orders the text ascending."""
    sql, args = incident_query("id", IncidentFilter(), sort="severity", order=order, after=("SEV2", "inc-9"), limit=5)
    assert f"(severity, id) {op} ($1, $2)" in sql
    assert sql.endswith(f"ORDER BY severity {direction}, id {direction} LIMIT $3")
    assert args == ["SEV2", "inc-9", 6]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", EMPTY_SHA256),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:db8:0:0::1", "2001:db8::1"),
        ("Evil[.]Example.", "evil.example"),
        ("HXXPS://Evil.Example/Path", "https://evil.example/Path"),
        ("203.0.113.9", "203.0.113.9"),
    ],
)
def test_an_indicator_filter_matches_the_form_indicators_are_stored_in(given: str, stored: str) -> None:
    sql, args = incident_query("id", IncidentFilter(indicator=given))
    assert "indicators && $1::text[]" in sql
    assert stored in args[0] and given in args[0]


def test_an_indicator_filter_of_no_known_kind_matches_as_given() -> None:
    _, args = incident_query("id", IncidentFilter(indicator="not an indicator"))
    assert args[0] == ["not an indicator"]


def test_a_host_filter_matches_in_any_case_through_an_index() -> None:
    sql, args = incident_query("id", IncidentFilter(asset="desktop-7qk2m"))
    assert "(search @@ plainto_tsquery('simple', $1) OR hosts @> ARRAY[$1::text])" in sql
    assert "EXISTS (SELECT FROM unnest(hosts) AS host WHERE lower(host) = lower($1))" in sql
    assert args[0] == "desktop-7qk2m"


def test_an_unknown_sort_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot sort"):
        incident_query("id", IncidentFilter(), sort="id; DROP", order="desc")  # type: ignore[arg-type]


@pytest.mark.parametrize(("sort", "value"), [("created_at", T0), ("severity", "SEV2"), ("alert_count", 17)])
def test_cursors_round_trip(sort: str, value: object) -> None:
    cursor = encode_cursor(sort, "desc", value, "inc-1")
    assert decode_cursor(cursor, sort=sort, order="desc") == (value, "inc-1")


def _forged(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("sort", "cursor"),
    [
        pytest.param("created_at", _forged("created_at", "desc", T0.isoformat(), 5), id="id-a-number"),
        pytest.param("created_at", _forged("created_at", "desc", T0.isoformat(), None), id="id-null"),
        pytest.param("time", _forged("time", "desc", T0.isoformat(), 5), id="alert-id-a-number"),
        pytest.param("created_at", _forged("created_at", "desc", "2026-11-24T09:00:00", "inc-1"), id="no-zone"),
        pytest.param("created_at", _forged("created_at", "desc", "0001-01-01T00:00:00+01:00", "inc-1"), id="year-0"),
        pytest.param("time", _forged("time", "desc", "9999-12-31T23:00:00-05:00", "inc-1/k"), id="year-10000"),
        pytest.param("created_at", _forged("created_at", "desc", 1764000000, "inc-1"), id="time-a-number"),
        pytest.param("alert_count", _forged("alert_count", "desc", 2**31, "inc-1"), id="count-past-integer"),
        pytest.param("alert_count", _forged("alert_count", "desc", True, "inc-1"), id="count-a-boolean"),
        pytest.param("severity", _forged("severity", "desc", "SEV1", "inc-\x00"), id="id-with-nul"),
        pytest.param("severity", _forged("severity", "desc", "SEV\ud800", "inc-1"), id="lone-surrogate"),
    ],
)
def test_a_crafted_cursor_is_refused_before_any_query(sort: str, cursor: str) -> None:
    with pytest.raises(BadCursor, match="the cursor is not one this API gave out"):
        decode_cursor(cursor, sort=sort, order="desc")


def test_a_cursor_s_time_is_compared_in_utc() -> None:
    cursor = _forged("created_at", "desc", "2026-11-24T10:00:00+01:00", "inc-1")
    value, _ = decode_cursor(cursor, sort="created_at", order="desc")
    assert value == T0 and value.utcoffset() == timedelta(0)


def test_a_cursor_of_another_sort_or_made_up_is_refused() -> None:
    cursor = encode_cursor("created_at", "desc", T0, "inc-1")
    with pytest.raises(BadCursor, match="sort=created_at&order=desc"):
        decode_cursor(cursor, sort="severity", order="desc")
    for forged in ("nonsense!", encode_cursor("alert_count", "desc", "many", "inc-1"), "W10"):
        with pytest.raises(BadCursor):
            decode_cursor(forged, sort="alert_count", order="desc")


def test_the_alert_history_pages_by_time_then_occurrence() -> None:
    sql, args = alert_query(
        "key", AlertFilter(source="falco", status="firing"), after=(T0, "inc-1/key/with/slashes"), limit=2
    )
    assert "body->>'source' = $1" in sql and "resolved_at IS NULL" in sql
    assert "(time, key, place) < ($2, $3, $4)" in sql
    assert args == ["falco", T0, "key/with/slashes", "inc-1", 3]


def test_the_alert_history_holds_the_suppressed_alerts_unless_they_are_left_out() -> None:
    both, _ = alert_query("key", AlertFilter(), after=None, limit=10)
    assert "FROM reporter_alerts" in both and "FROM reporter_suppressed_alerts" in both
    assert "WHERE true ORDER BY time DESC, key DESC, place DESC LIMIT $1" in both
    without, _ = alert_query("key", AlertFilter(suppressed="exclude"), after=None, limit=10)
    only, _ = alert_query("key", AlertFilter(suppressed="only", source="falco"), after=None, limit=10)
    assert "WHERE NOT suppressed ORDER BY" in without
    assert "WHERE body->>'source' = $1 AND suppressed ORDER BY" in only


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_a_period_that_says_no_zone_is_utc_in_both_apis(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The incidents' and the stream's periods, whatever the server's zone: a naive time reaches Postgres'
    driver and ``datetime.timestamp``, which read it in the local zone, as UTC."""
    import time
    from datetime import UTC, datetime
    from typing import Any

    from pydantic import TypeAdapter

    from services.reporter import api, stream_api

    periods: list[Any] = [api.Since, api.Until, stream_api.Since]  # annotations, as FastAPI reads them
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        for period in periods:
            read: TypeAdapter[Any] = TypeAdapter(period)
            assert read.validate_python("2026-10-01") == datetime(2026, 10, 1, tzinfo=UTC)
            assert (
                read.validate_python("2026-10-01T02:00:00").timestamp()
                == datetime(2026, 10, 1, 2, tzinfo=UTC).timestamp()
            )
            assert read.validate_python("2026-10-01T02:00:00-04:00").hour == 2  # its own zone kept
            assert read.validate_python(None) is None
    finally:
        monkeypatch.undo()
        time.tzset()
