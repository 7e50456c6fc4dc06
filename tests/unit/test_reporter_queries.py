"""The reporter's query building: filters become parameterised conditions, cursors round-trip."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.reporter.queries import (
    AlertFilter,
    BadCursor,
    IncidentFilter,
    alert_query,
    decode_cursor,
    encode_cursor,
    incident_query,
)
from tests.factories import T0


def test_no_filter_lists_detected_incidents_newest_first() -> None:
    sql, args = incident_query("id", IncidentFilter(), limit=10)
    assert sql == (
        "SELECT id FROM reporter_incidents WHERE title IS NOT NULL ORDER BY created_at desc, id desc LIMIT $1"
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
    sql, args = incident_query("id", filters, sort="severity", order="asc", after=("SEV1", "inc-9"), limit=5)
    assert hostile not in sql
    assert "state = ANY($1::text[])" in sql
    assert "sources @> ARRAY[$7::text]" in sql and "hosts @> ARRAY[$9::text]" in sql
    assert "search @@ websearch_to_tsquery('english', $11)" in sql
    assert "(severity, id) > ($12, $13)" in sql
    assert sql.endswith("ORDER BY severity asc, id asc LIMIT $14")
    assert args[0] == ["detected", "acknowledged"] and args[-3:] == ["SEV1", "inc-9", 6]


def test_an_unknown_sort_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot sort"):
        incident_query("id", IncidentFilter(), sort="id; DROP", order="desc")  # type: ignore[arg-type]


@pytest.mark.parametrize(("sort", "value"), [("created_at", T0), ("severity", "SEV2"), ("alert_count", 17)])
def test_cursors_round_trip(sort: str, value: object) -> None:
    cursor = encode_cursor(sort, "desc", value, "inc-1")
    assert decode_cursor(cursor, sort=sort, order="desc") == (value, "inc-1")


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
