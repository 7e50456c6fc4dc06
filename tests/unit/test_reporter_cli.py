"""The reporter commands' reading of periods."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
import typer

from tests.factories import T0
from vigil.cli_reports import parse_when


def test_periods_are_iso_dates_or_spans_ago() -> None:
    assert parse_when(None, now=T0) is None
    assert parse_when("7d", now=T0) == T0 - timedelta(days=7)
    assert parse_when("12h", now=T0) == T0 - timedelta(hours=12)
    assert parse_when("2w", now=T0) == T0 - timedelta(weeks=2)
    assert parse_when("2026-11-01", now=T0) == T0.replace(day=1, hour=0)
    assert parse_when("2026-11-01T12:00:00Z", now=T0) == T0.replace(day=1, hour=12)
    assert parse_when("2026-11-01T12:00:00+02:00", now=T0) == T0.replace(day=1, hour=10).astimezone(UTC)


@pytest.mark.parametrize("bad", ["yesterday", "7 days", "-3d", "2026-13-01"])
def test_a_period_that_is_neither_says_so(bad: str) -> None:
    with pytest.raises(typer.BadParameter, match="neither an ISO date/time nor a span"):
        parse_when(bad, now=T0)
