"""Review digests without I/O: the file, when each goes, and what it says of a period's incidents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.coordinator import digests

WEEKLY = """
digests:
  - name: weekly-review
    every: FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0
    time_zone: Europe/Lisbon
    to: [security-leads]
"""
END = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
ENDED = ("resolved", "closed")


def weekly(**changes: Any) -> digests.Digest:
    return digests.parse_digests(WEEKLY)["weekly-review"].model_copy(update=changes)


def incident(
    n: int, severity: str, *, detected: timedelta, state: str = "acknowledged", **times: Any
) -> dict[str, Any]:
    detected_at = END - detected
    return {
        "incident_id": f"{n:08d}-0000-4000-8000-000000000000",
        "severity": severity,
        "title": f"incident {n}",
        "state": state,
        "resolution": times.get("resolution"),
        "detected_at": detected_at,
        "acknowledged_at": detected_at + times["ack"] if "ack" in times else None,
        "resolved_at": detected_at + times["fix"] if "fix" in times else None,
    }


def test_as_shipped_no_digest_is_sent() -> None:
    assert digests.load_digests() == {}


def test_a_digest_goes_at_its_local_time_across_a_change_of_clocks() -> None:
    review = weekly()
    assert review.next_after(datetime(2026, 11, 27, 10, tzinfo=UTC)) == END  # Lisbon in winter: UTC
    assert review.next_after(END) == END + timedelta(days=7)  # strictly after
    summer = review.next_after(datetime(2026, 7, 1, tzinfo=UTC))
    assert summer == datetime(2026, 7, 6, 8, 0, tzinfo=UTC)  # 09:00 in Lisbon, UTC+1
    monthly = weekly(every="FREQ=MONTHLY;BYMONTHDAY=1;BYHOUR=8;BYMINUTE=0", time_zone="America/New_York")
    assert monthly.next_after(END) == datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("{name: w, every: bogus, to: [a]}", "is not an RRULE"),
        ("{name: w, every: 'RRULE:FREQ=DAILY', to: [a]}", "give only the RRULE part"),
        ("{name: w, every: FREQ=DAILY, to: [a], time_zone: Mars/Olympus}", "not a time zone"),
        ("{name: w, every: FREQ=DAILY, to: [a], covers: 7 days}", "not a duration"),
        ("{name: w, every: FREQ=DAILY, to: []}", "at least 1 item"),
        ("{name: Weekly Review, every: FREQ=DAILY, to: [a]}", "should match pattern"),
        ("{name: w, every: FREQ=MINUTELY, to: [a]}", "at most daily"),
        ("{name: w, every: FREQ=HOURLY;INTERVAL=2, to: [a]}", "at most daily"),
        ("{name: w, every: FREQ=WEEKLY;COUNT=10, to: [a]}", "COUNT is not taken"),
        ("{name: w, every: FREQ=DAILY;UNTIL=20200101T000000Z, to: [a]}", "has no time to come"),
        ("{name: w, every: FREQ=DAILY, to: [a], severities: []}", "at least 1 item"),
    ],
)
def test_a_broken_digest_is_refused_where_it_is_written(entry: str, why: str) -> None:
    with pytest.raises(digests.DigestsError) as caught:
        digests.parse_digests(f"digests:\n  - {entry}\n", source="d.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("d.yaml:2:") and why in problem


def test_a_name_is_one_digest() -> None:
    with pytest.raises(digests.DigestsError, match="w more than once"):
        digests.parse_digests("digests: [{name: w, every: FREQ=DAILY, to: [a]}, {name: w, every: FREQ=DAILY, to: [b]}]")


def test_a_digest_sums_up_the_period_and_where_its_incidents_stand_now() -> None:
    rows = [
        incident(1, "SEV1", detected=timedelta(days=2), ack=timedelta(minutes=4)),
        incident(
            2,
            "SEV3",
            detected=timedelta(days=3),
            ack=timedelta(minutes=10),
            fix=timedelta(hours=2),
            state="resolved",
            resolution="fixed",
        ),
        incident(
            3, "SEV3", detected=timedelta(days=1), fix=timedelta(hours=1), state="closed", resolution="false_positive"
        ),
        # Opened before the period, resolved in it: counted resolved, not opened.
        incident(4, "SEV2", detected=timedelta(days=9), fix=timedelta(days=8), state="resolved", resolution="fixed"),
        # Opened before, still open: open now.
        incident(5, "SEV4", detected=timedelta(days=20)),
    ]
    period = digests.Period(start=END - timedelta(days=7), end=END, time_zone="Europe/Lisbon")
    data = digests.summarise(weekly(), rows, period=period, ended=ENDED, overdue_tasks=2, open_follow_ups=3)
    assert data["period"] == "2026-11-23 09:00 to 2026-11-30 09:00 (Europe/Lisbon)"
    assert (data["opened"], data["opened_by_severity"]) == (3, {"SEV1": 1, "SEV3": 2})
    assert (data["resolved"], data["resolved_by_resolution"]) == (3, {"fixed": 2, "false_positive": 1})
    assert (data["open_now"], data["open_by_severity"]) == (2, {"SEV1": 1, "SEV4": 1})
    assert data["mtta_minutes"] == 7.0  # of 4 and 10 minutes
    assert data["mttr_minutes"] == 90.0  # of 2 hours and 1: incident 4 was opened before the period
    assert [n["short_id"] for n in data["notable"]] == ["00000001"]
    assert (data["overdue_tasks"], data["open_follow_ups"]) == (2, 3)
    assert digests.highest_severity(data) == "SEV1"

    only_low = digests.summarise(
        weekly(severities=["SEV3", "SEV4"]), rows, period=period, ended=ENDED, overdue_tasks=0, open_follow_ups=0
    )
    assert (only_low["opened"], only_low["open_now"], only_low["notable"]) == (2, 1, [])
    assert digests.highest_severity(only_low) == "SEV3"


def test_on_the_night_clocks_go_back_the_next_time_is_never_one_that_passed() -> None:
    night = weekly(every="FREQ=DAILY;BYHOUR=1;BYMINUTE=30", time_zone="America/New_York")
    # 2026-11-01: New York's 01:30 comes twice, at 05:30Z and 06:30Z.
    after = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)
    upcoming = night.next_after(after)
    assert upcoming is not None and upcoming > after
    assert night.next_after(datetime(2026, 11, 1, 5, 0, tzinfo=UTC)) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_a_week_covered_across_a_change_of_clocks_is_a_week_of_mornings() -> None:
    review = weekly()
    end = datetime(2026, 3, 30, 8, 0, tzinfo=UTC)  # Monday 09:00 in Lisbon, summer time since the 29th
    assert review.start_of(end) == datetime(2026, 3, 23, 9, 0, tzinfo=UTC)  # the Monday before, 09:00 in winter
    period = digests.Period(start=review.start_of(end), end=end, time_zone="Europe/Lisbon")
    assert period.words() == "2026-03-23 09:00 to 2026-03-30 09:00 (Europe/Lisbon)"


def test_a_reopened_incident_is_not_counted_resolved() -> None:
    reopened = incident(
        6, "SEV3", detected=timedelta(days=2), fix=timedelta(hours=1), state="acknowledged", resolution="fixed"
    )
    period = digests.Period(start=END - timedelta(days=7), end=END, time_zone="UTC")
    data = digests.summarise(weekly(), [reopened], period=period, ended=ENDED, overdue_tasks=0, open_follow_ups=0)
    assert (data["resolved"], data["open_now"]) == (0, 1)
