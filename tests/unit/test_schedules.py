"""On-call schedules: rotations across daylight-saving changes, layers, restrictions, overrides,
calendars, routing, escalation order and the file's errors, all at fixed moments."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.coordinator import schedules
from services.coordinator.schedules import (
    NobodyOnCall,
    OnCallConfig,
    OnCallError,
    Schedule,
    Shift,
    escalation_order,
    layer_members,
    load_oncall,
    next_on_call,
    on_call,
    parse_oncall,
    route,
    who_is_on_call,
)
from shared.events import IncidentType

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TAIL = "\ndefault_schedule: s\nack_deadline_minutes: {SEV1: 5}\n"


def utc(text: str) -> datetime:
    """An instant written in UTC: `2026-03-29 07:00`."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(text: str, zone: ZoneInfo) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def config(body: str) -> OnCallConfig:
    return parse_oncall(textwrap.dedent(body) + TAIL)


def schedule(layers: str, *, zone: str = "UTC", extra: str = "") -> Schedule:
    """One schedule `s` with these layers (YAML, indented as a list under `layers:`)."""
    text = f"schedules:\n  - name: s\n    time_zone: {zone}\n    layers:\n"
    text += textwrap.indent(textwrap.dedent(layers), "      ")
    text += textwrap.indent(textwrap.dedent(extra), "    ")
    return parse_oncall(text + TAIL).schedules["s"]


def rotation(kind: str, members: str, *, handoff: str = "09:00", start: str = "2026-01-05", length: str = "") -> str:
    extra = f", length: {length}" if length else ""
    return (
        f"- name: {kind}\n  rotation: {{type: {kind}{extra}, handoff: '{handoff}', start: {start}, "
        f"members: [{members}]}}\n"
    )


def who(s: Schedule, at: datetime) -> str:
    return on_call(s, at).person


def length(shift: Shift) -> timedelta:
    assert shift.starts is not None and shift.ends is not None, shift
    return shift.ends - shift.starts


# ---- rotations -------------------------------------------------------------------------------------


def test_weekly_rotation_hands_off_every_seven_days_and_wraps_round() -> None:
    s = schedule(rotation("weekly", "alice, bob, carol"))
    assert who(s, utc("2026-01-05 09:00")) == "alice"
    assert who(s, utc("2026-01-12 08:59")) == "alice"
    assert who(s, utc("2026-01-12 09:00")) == "bob"
    assert who(s, utc("2026-01-19 09:00")) == "carol"
    assert who(s, utc("2026-01-26 09:00")) == "alice"
    # Before its start date the turns go back as well: the week before was carol's.
    assert who(s, utc("2026-01-05 08:59")) == "carol"


def test_a_shift_says_when_it_began_and_ends() -> None:
    s = schedule(rotation("weekly", "alice, bob, carol"))
    assert on_call(s, utc("2026-01-14 12:00")) == Shift(
        person="bob",
        schedule="s",
        layer="weekly",
        starts=utc("2026-01-12 09:00"),
        ends=utc("2026-01-19 09:00"),
        covering=None,
    )


def test_a_layer_of_one_never_changes_hands() -> None:
    shift = on_call(schedule(rotation("daily", "alice")), utc("2026-06-01 12:00"))
    assert (shift.person, shift.starts, shift.ends) == ("alice", None, None)


def test_daily_rotation() -> None:
    s = schedule(rotation("daily", "dave, erin", handoff="08:30"))
    assert who(s, utc("2026-01-05 08:30")) == "dave"
    assert who(s, utc("2026-01-06 08:29")) == "dave"
    assert who(s, utc("2026-01-06 08:30")) == "erin"
    assert who(s, utc("2026-01-07 08:30")) == "dave"
    assert who(s, utc("2026-11-24 09:00")) == "erin"  # 323 days on


def test_custom_rotation_of_twelve_hours() -> None:
    s = schedule(rotation("custom", "alice, bob, carol", length="12h"))
    shift = on_call(s, utc("2026-01-05 20:59"))
    assert (shift.person, shift.starts, shift.ends) == ("alice", utc("2026-01-05 09:00"), utc("2026-01-05 21:00"))
    assert who(s, utc("2026-01-05 21:00")) == "bob"
    assert who(s, utc("2026-01-06 09:00")) == "carol"
    assert who(s, utc("2026-01-06 21:00")) == "alice"


def test_custom_rotation_of_three_days() -> None:
    s = schedule(rotation("custom", "alice, bob", length="3d"))
    assert who(s, utc("2026-01-08 08:59")) == "alice"
    assert who(s, utc("2026-01-08 09:00")) == "bob"
    assert on_call(s, utc("2026-01-09 00:00")).ends == utc("2026-01-11 09:00")


def test_an_unquoted_time_of_day_reads_as_the_time_it_says() -> None:
    # YAML 1.1 would read 10:30 as the number 630 (base 60).
    text = (
        "schedules:\n  - name: s\n    layers:\n      - name: d\n        rotation: "
        "{type: daily, handoff: 10:30, start: 2026-01-05, members: [a, b]}" + TAIL
    )
    s = parse_oncall(text).schedules["s"]
    assert on_call(s, utc("2026-01-05 12:00")).starts == utc("2026-01-05 10:30")


# ---- daylight-saving changes -------------------------------------------------------------------------


def test_berlin_spring_forward_keeps_the_handoff_at_nine_and_the_shift_lasts_23_hours() -> None:
    s = schedule(rotation("daily", "alice, bob"), zone="Europe/Berlin")
    # Clocks go forward on 2026-03-29 at 02:00 CET.
    before = on_call(s, local("2026-03-28 12:00", BERLIN))
    assert before.starts == local("2026-03-28 09:00", BERLIN) == utc("2026-03-28 08:00")
    assert before.ends == local("2026-03-29 09:00", BERLIN) == utc("2026-03-29 07:00")
    assert length(before) == timedelta(hours=23)
    after = on_call(s, utc("2026-03-29 07:00"))
    assert after.person != before.person
    assert length(after) == timedelta(hours=24)


def test_berlin_fall_back_makes_the_shift_25_hours() -> None:
    s = schedule(rotation("daily", "alice, bob"), zone="Europe/Berlin")
    # Clocks go back on 2026-10-25 at 03:00 CEST.
    shift = on_call(s, local("2026-10-24 22:00", BERLIN))
    assert shift.starts == utc("2026-10-24 07:00")  # 09:00 CEST
    assert shift.ends == utc("2026-10-25 08:00")  # 09:00 CET
    assert length(shift) == timedelta(hours=25)


def test_new_york_weekly_rotation_across_both_changes() -> None:
    s = schedule(rotation("weekly", "alice, bob", start="2026-03-02"), zone="America/New_York")
    # Spring forward on Sunday 2026-03-08: the week from Monday 2 March lasts 167 hours.
    first = on_call(s, local("2026-03-04 12:00", NEW_YORK))
    assert (first.person, first.starts, first.ends) == ("alice", utc("2026-03-02 14:00"), utc("2026-03-09 13:00"))
    assert length(first) == timedelta(hours=167)
    assert who(s, local("2026-03-09 08:59", NEW_YORK)) == "alice"
    assert who(s, local("2026-03-09 09:00", NEW_YORK)) == "bob"
    # Fall back on Sunday 2026-11-01: that week lasts 169 hours.
    week = on_call(s, local("2026-10-31 12:00", NEW_YORK))
    assert week.starts == local("2026-10-26 09:00", NEW_YORK)
    assert week.ends == local("2026-11-02 09:00", NEW_YORK) == utc("2026-11-02 14:00")
    assert length(week) == timedelta(hours=169)


def test_new_york_twelve_hour_shifts_stay_at_nine_and_twenty_one() -> None:
    s = schedule(rotation("custom", "day, night", length="12h", start="2026-03-07"), zone="America/New_York")
    shift = on_call(s, local("2026-03-08 03:00", NEW_YORK))
    assert shift.person == "night"
    assert shift.starts == local("2026-03-07 21:00", NEW_YORK) == utc("2026-03-08 02:00")
    assert shift.ends == local("2026-03-08 09:00", NEW_YORK) == utc("2026-03-08 13:00")
    assert length(shift) == timedelta(hours=11)
    assert on_call(s, local("2026-03-08 21:00", NEW_YORK)).starts == utc("2026-03-09 01:00")


def test_a_handoff_the_clocks_skip_happens_as_they_go_forward() -> None:
    s = schedule(rotation("daily", "alice, bob", handoff="02:30"), zone="Europe/Berlin")
    # 02:30 does not exist on 2026-03-29 in Berlin: the hand-off is at 03:30 CEST.
    shift = on_call(s, utc("2026-03-29 03:00"))
    assert shift.starts == utc("2026-03-29 01:30") == local("2026-03-29 03:30", BERLIN)
    assert shift.ends == local("2026-03-30 02:30", BERLIN)


def test_a_handoff_in_the_hour_that_happens_twice_is_at_its_first_time() -> None:
    s = schedule(rotation("daily", "alice, bob", handoff="02:30"), zone="Europe/Berlin")
    shift = on_call(s, utc("2026-10-25 01:00"))  # 02:00 CET, the second time round
    assert shift.starts == utc("2026-10-25 00:30")  # 02:30 CEST, the first
    assert shift.ends == utc("2026-10-26 01:30")


# ---- layers and restrictions ----------------------------------------------------------------------


WORKING_HOURS = """\
- name: base
  rotation: {type: weekly, handoff: "09:00", start: 2026-01-05, members: [alice, bob]}
- name: office
  rotation: {type: daily, handoff: "09:00", start: 2026-01-05, members: [xavier, yvonne]}
  restrictions: [{days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:00"}]
"""


def test_a_later_layer_wins_only_within_its_working_hours() -> None:
    s = schedule(WORKING_HOURS, zone="Europe/Berlin")
    # Monday 2026-01-05 (CET, UTC+1)
    assert who(s, local("2026-01-05 08:59", BERLIN)) == "bob"  # the week before was bob's
    office = on_call(s, local("2026-01-05 10:00", BERLIN))
    assert (office.person, office.layer) == ("xavier", "office")
    assert (office.starts, office.ends) == (local("2026-01-05 09:00", BERLIN), local("2026-01-05 17:00", BERLIN))
    evening = on_call(s, local("2026-01-05 17:00", BERLIN))
    assert (evening.person, evening.layer) == ("alice", "base")
    assert evening.ends == local("2026-01-06 09:00", BERLIN)
    assert who(s, local("2026-01-06 12:00", BERLIN)) == "yvonne"
    # Saturday: nobody in the office layer
    assert who(s, local("2026-01-10 12:00", BERLIN)) == "alice"
    # Working hours follow the local clock across the spring change: 09:00 CEST is 07:00 UTC.
    assert who(s, utc("2026-03-30 06:59")) != who(s, utc("2026-03-30 07:00"))
    assert on_call(s, utc("2026-03-30 07:00")).layer == "office"


def test_a_restriction_may_run_past_midnight() -> None:
    s = schedule(
        rotation("weekly", "alice")
        + "- name: nights\n  rotation: {type: daily, handoff: '22:00', start: 2026-01-05, members: [owl]}\n"
        + "  restrictions: [{days: [fri], from: '22:00', to: '06:00'}]\n"
    )
    assert who(s, utc("2026-01-09 21:59")) == "alice"  # Friday
    night = on_call(s, utc("2026-01-10 03:00"))
    assert (night.person, night.starts, night.ends) == ("owl", utc("2026-01-09 22:00"), utc("2026-01-10 06:00"))
    assert who(s, utc("2026-01-10 22:30")) == "alice"  # Saturday night is not Friday's


def test_a_layer_may_begin_and_end() -> None:
    s = schedule(
        rotation("weekly", "alice")
        + "- name: holiday\n  rotation: {type: daily, handoff: '09:00', start: 2026-01-05, members: [hank]}\n"
        + "  active_from: 2026-12-24\n  active_until: 2026-12-27T09:00:00\n",
        zone="Europe/Berlin",
    )
    assert who(s, local("2026-12-23 23:59", BERLIN)) == "alice"
    holiday = on_call(s, local("2026-12-25 12:00", BERLIN))
    assert (holiday.person, holiday.starts, holiday.ends) == (
        "hank",
        local("2026-12-24 00:00", BERLIN),
        local("2026-12-27 09:00", BERLIN),
    )
    assert who(s, local("2026-12-27 09:00", BERLIN)) == "alice"


# ---- overrides ---------------------------------------------------------------------------------------


def test_an_override_of_the_whole_schedule_covers_whoever_is_on() -> None:
    s = schedule(
        WORKING_HOURS,
        zone="Europe/Berlin",
        extra="overrides:\n  - {person: zoe, starts: 2026-01-05T12:00:00, ends: 2026-01-06T12:00:00}\n",
    )
    midday = on_call(s, local("2026-01-05 13:00", BERLIN))
    assert (midday.person, midday.covering, midday.layer) == ("zoe", "xavier", "office")
    assert (midday.starts, midday.ends) == (local("2026-01-05 12:00", BERLIN), local("2026-01-05 17:00", BERLIN))
    night = on_call(s, local("2026-01-05 23:00", BERLIN))
    assert (night.person, night.covering, night.layer) == ("zoe", "alice", "base")
    assert who(s, local("2026-01-06 12:00", BERLIN)) == "yvonne"


def test_an_override_of_one_layer_leaves_the_others() -> None:
    s = schedule(
        WORKING_HOURS,
        zone="Europe/Berlin",
        extra="overrides:\n  - {person: zoe, starts: 2026-01-05T00:00:00, ends: 2026-01-07T00:00:00, layer: base}\n",
    )
    assert who(s, local("2026-01-05 10:00", BERLIN)) == "xavier"  # the office layer is above base
    evening = on_call(s, local("2026-01-05 20:00", BERLIN))
    assert (evening.person, evening.covering, evening.layer) == ("zoe", "alice", "base")
    assert on_call(s, local("2026-01-05 08:00", BERLIN)).covering == "bob"


def test_an_override_of_a_restricted_layer_applies_only_when_that_layer_has_someone() -> None:
    s = schedule(
        WORKING_HOURS,
        zone="Europe/Berlin",
        extra="overrides:\n  - {person: zoe, starts: 2026-01-05T00:00:00, ends: 2026-01-07T00:00:00, layer: office}\n",
    )
    assert on_call(s, local("2026-01-05 10:00", BERLIN)).covering == "xavier"
    assert who(s, local("2026-01-05 20:00", BERLIN)) == "alice"


def test_the_later_of_two_overrides_wins() -> None:
    s = schedule(
        rotation("weekly", "alice, bob"),
        extra="overrides:\n"
        "  - {person: first, starts: 2026-01-06T00:00:00Z, ends: 2026-01-08T00:00:00Z}\n"
        "  - {person: second, starts: 2026-01-07T00:00:00Z, ends: 2026-01-07T12:00:00Z}\n",
    )
    assert who(s, utc("2026-01-06 12:00")) == "first"
    assert on_call(s, utc("2026-01-07 06:00")) == Shift(
        "second", "s", "weekly", utc("2026-01-07 00:00"), utc("2026-01-07 12:00"), covering="alice"
    )
    assert who(s, utc("2026-01-07 12:00")) == "first"
    assert who(s, utc("2026-01-08 00:00")) == "alice"


def test_an_override_by_the_person_on_call_changes_nothing() -> None:
    s = schedule(
        rotation("weekly", "alice, bob"),
        extra="overrides:\n  - {person: alice, starts: 2026-01-06T00:00:00Z, ends: 2026-01-08T00:00:00Z}\n",
    )
    shift = on_call(s, utc("2026-01-07 00:00"))
    assert (shift.person, shift.covering, shift.starts) == ("alice", None, utc("2026-01-05 09:00"))


def test_a_fallback_fills_the_gaps_of_restricted_layers() -> None:
    s = schedule(
        "- name: office\n  rotation: {type: daily, handoff: '09:00', start: 2026-01-05, members: [xavier]}\n"
        "  restrictions: [{days: [mon, tue, wed, thu, fri], from: '09:00', to: '17:00'}]\n",
        extra="fallback: duty-phone\n",
    )
    assert who(s, utc("2026-01-05 10:00")) == "xavier"
    night = on_call(s, utc("2026-01-05 20:00"))
    assert (night.person, night.layer) == ("duty-phone", "fallback")
    assert escalation_order(s, utc("2026-01-05 20:00")) == ["duty-phone"]
    with pytest.raises(NobodyOnCall):
        next_on_call(s, utc("2026-01-05 20:00"), after="duty-phone")


# ---- escalation --------------------------------------------------------------------------------------


def test_next_on_call_goes_down_the_layer_and_wraps_round() -> None:
    s = schedule(rotation("weekly", "alice, bob, carol"))
    at = utc("2026-01-20 10:00")  # carol's week
    assert who(s, at) == "carol"
    assert next_on_call(s, at, after="carol") == Shift(
        "alice", "s", "weekly", utc("2026-01-26 09:00"), utc("2026-02-02 09:00")
    )
    assert next_on_call(s, at, after="alice").person == "bob"
    assert next_on_call(s, at, after="bob").person == "carol"
    assert escalation_order(s, at) == ["carol", "alice", "bob"]
    assert layer_members(s, "weekly", at=at) == ["alice", "bob", "carol"]


def test_next_on_call_after_an_override_leaves_the_covered_person_last() -> None:
    s = schedule(
        rotation("weekly", "alice, bob, carol"),
        extra="overrides:\n  - {person: zoe, starts: 2026-01-05T00:00:00Z, ends: 2026-01-12T00:00:00Z}\n",
    )
    at = utc("2026-01-06 10:00")
    assert on_call(s, at).covering == "alice"
    assert next_on_call(s, at, after="zoe").person == "bob"
    assert escalation_order(s, at) == ["zoe", "bob", "carol", "alice"]


def test_next_on_call_follows_the_layer_on_call_now() -> None:
    s = schedule(WORKING_HOURS, zone="Europe/Berlin")
    assert next_on_call(s, local("2026-01-05 10:00", BERLIN), after="xavier").person == "yvonne"
    assert next_on_call(s, local("2026-01-05 20:00", BERLIN), after="alice").person == "bob"


def test_a_layer_of_one_has_nobody_next() -> None:
    s = schedule(rotation("daily", "alice"))
    with pytest.raises(NobodyOnCall):
        next_on_call(s, utc("2026-01-06 10:00"), after="alice")
    assert escalation_order(s, utc("2026-01-06 10:00")) == ["alice"]


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="without a time zone"):
        on_call(schedule(rotation("daily", "alice")), datetime(2026, 1, 6, 10))


# ---- iCalendar -----------------------------------------------------------------------------------------


ICS = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Vigil tests//EN
BEGIN:VEVENT
UID:weekdays@test
SUMMARY:On call: mia@example.com
DTSTART;TZID=Europe/Berlin:20260302T090000
DTEND;TZID=Europe/Berlin:20260302T170000
RRULE:FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR
END:VEVENT
BEGIN:VEVENT
UID:friday-nights@test
SUMMARY:Friday nights
ATTENDEE;CN=Noah:mailto:noah@example.com
DTSTART;TZID=Europe/Berlin:20260306T170000
DTEND;TZID=Europe/Berlin:20260307T090000
RRULE:FREQ=WEEKLY;COUNT=4
END:VEVENT
END:VCALENDAR
"""


def calendar_file(tmp_path: Path, layers: str, *, extra: str = "") -> Path:
    (tmp_path / "team.ics").write_text(ICS)
    oncall = tmp_path / "oncall.yaml"
    oncall.write_text(
        "schedules:\n  - name: s\n    time_zone: Europe/Berlin\n    layers:\n"
        + textwrap.indent(textwrap.dedent(layers), "      ")
        + textwrap.indent(extra, "    ")
        + TAIL
    )
    return oncall


def test_a_calendar_layer_over_a_rotation(tmp_path: Path) -> None:
    path = calendar_file(tmp_path, rotation("weekly", "alice, bob") + "- name: team\n  ical: {file: team.ics}\n")
    s = load_oncall(path).schedules["s"]
    # Monday 2 March: mia's weekday event, expanded from its RRULE (SUMMARY names her)
    day = on_call(s, local("2026-03-02 10:00", BERLIN))
    assert (day.person, day.layer) == ("mia@example.com", "team")
    assert (day.starts, day.ends) == (local("2026-03-02 09:00", BERLIN), local("2026-03-02 17:00", BERLIN))
    assert who(s, local("2026-03-02 18:00", BERLIN)) == "alice"  # no event: the rotation below
    # Friday night: noah, whom ATTENDEE names
    assert who(s, local("2026-03-06 23:00", BERLIN)) == "noah@example.com"
    # After the spring change the weekday event stays at 09:00 local (07:00 UTC)
    assert on_call(s, local("2026-03-30 09:30", BERLIN)).starts == utc("2026-03-30 07:00")
    # Friday nights had COUNT=4: the fifth falls to the rotation
    assert who(s, local("2026-03-27 23:00", BERLIN)) == "noah@example.com"
    assert who(s, local("2026-04-03 23:00", BERLIN)) == "alice"


def test_a_calendar_may_name_people_by_summary_only(tmp_path: Path) -> None:
    path = calendar_file(
        tmp_path, rotation("weekly", "alice") + "- name: team\n  ical: {file: team.ics, person: summary}\n"
    )
    s = load_oncall(path).schedules["s"]
    assert who(s, local("2026-03-06 23:00", BERLIN)) == "Friday nights"


def test_next_in_a_calendar_layer_is_the_next_other_person_ahead(tmp_path: Path) -> None:
    path = calendar_file(tmp_path, rotation("weekly", "alice") + "- name: team\n  ical: {file: team.ics}\n")
    s = load_oncall(path).schedules["s"]
    at = local("2026-03-04 10:00", BERLIN)  # Wednesday, mia's day
    after_mia = next_on_call(s, at, after="mia@example.com")
    assert (after_mia.person, after_mia.starts) == ("noah@example.com", local("2026-03-06 17:00", BERLIN))
    assert layer_members(s, "team", at=at) == ["mia@example.com", "noah@example.com"]
    assert escalation_order(s, at) == ["mia@example.com", "noah@example.com"]


def test_a_schedule_read_whole_from_a_calendar(tmp_path: Path) -> None:
    (tmp_path / "team.ics").write_text(ICS)
    path = tmp_path / "oncall.yaml"
    path.write_text(
        "schedules:\n  - name: s\n    time_zone: Europe/Berlin\n    ical: {file: team.ics}\n    fallback: desk\n" + TAIL
    )
    s = load_oncall(path).schedules["s"]
    assert on_call(s, local("2026-03-03 10:00", BERLIN)).layer == "s"
    assert who(s, local("2026-03-03 10:00", BERLIN)) == "mia@example.com"
    assert on_call(s, local("2026-03-03 20:00", BERLIN)) == Shift(
        "desk", "s", "fallback", local("2026-03-03 17:00", BERLIN), local("2026-03-04 09:00", BERLIN)
    )


def test_calendar_times_without_a_zone_and_whole_days_are_the_schedules_local_ones() -> None:
    floating = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Vigil tests//EN
BEGIN:VEVENT
UID:days@test
SUMMARY:dana@example.com
DTSTART:20260302T090000
DTEND:20260302T170000
RRULE:FREQ=DAILY
END:VEVENT
BEGIN:VEVENT
UID:holiday@test
SUMMARY:hal@example.com
DTSTART;VALUE=DATE:20260307
END:VEVENT
END:VCALENDAR
"""
    text = (
        "schedules:\n  - name: s\n    time_zone: America/New_York\n"
        "    ical: {url: 'https://cal.example.com/s.ics'}\n    fallback: desk\n" + TAIL
    )
    s = schedules.with_calendars(parse_oncall(text), {"https://cal.example.com/s.ics": floating}).schedules["s"]
    day = on_call(s, local("2026-03-03 16:30", NEW_YORK))
    assert (day.person, day.starts, day.ends) == ("dana@example.com", utc("2026-03-03 14:00"), utc("2026-03-03 22:00"))
    assert who(s, local("2026-03-03 17:00", NEW_YORK)) == "desk"
    # After the change to daylight time the day stays 09:00 to 17:00 in New York
    assert on_call(s, local("2026-03-10 12:00", NEW_YORK)).starts == utc("2026-03-10 13:00")
    # A day's event lasts the local day; where the day's shift overlaps it, the later start wins
    holiday = on_call(s, local("2026-03-07 20:00", NEW_YORK))
    assert (holiday.person, holiday.ends) == ("hal@example.com", local("2026-03-08 00:00", NEW_YORK))
    assert who(s, local("2026-03-07 10:00", NEW_YORK)) == "dana@example.com"
    assert next_on_call(s, local("2026-03-07 17:30", NEW_YORK), after="hal@example.com").person == "dana@example.com"


async def test_calendars_by_url_are_fetched_by_the_function_given() -> None:
    text = (
        "schedules:\n  - name: s\n    time_zone: Europe/Berlin\n    layers:\n"
        + textwrap.indent(rotation("weekly", "alice"), "      ")
        + "      - name: team\n        ical: {url: 'https://cal.example.com/private-s3cret/team.ics'}\n"
        + TAIL
    )
    config = parse_oncall(text)
    assert who(config.schedules["s"], local("2026-03-02 10:00", BERLIN)) == "alice"  # not fetched yet
    asked = []

    async def fetch(url: str) -> bytes:
        asked.append(url)
        return ICS.encode()

    fetched = await schedules.fetch_calendars(config, fetch)
    assert asked == ["https://cal.example.com/private-s3cret/team.ics"]
    assert who(fetched.schedules["s"], local("2026-03-02 10:00", BERLIN)) == "mia@example.com"

    async def refuse(url: str) -> bytes:
        raise ConnectionError(url)

    with pytest.raises(OnCallError) as failed:
        await schedules.fetch_calendars(config, refuse)
    assert "s3cret" not in str(failed.value)
    assert "cal.example.com" in str(failed.value) and "5:" in str(failed.value)


def test_a_broken_calendar_file_names_the_line_that_names_it(tmp_path: Path) -> None:
    path = calendar_file(tmp_path, rotation("weekly", "alice") + "- name: team\n  ical: {file: team.ics}\n")
    (tmp_path / "team.ics").write_text("this is not a calendar")
    with pytest.raises(OnCallError) as broken:
        load_oncall(path)
    assert broken.value.problems[0].startswith(f"{path}:8:")
    assert "team.ics" in broken.value.problems[0]
    (tmp_path / "team.ics").write_text(ICS.replace("RRULE:FREQ=WEEKLY;COUNT=4", "RRULE:FREQ=SOMETIMES"))
    with pytest.raises(OnCallError, match=r"8:.*team\.ics: not a usable iCalendar file"):
        load_oncall(path)
    (tmp_path / "team.ics").unlink()
    with pytest.raises(OnCallError, match=r"team\.ics"):
        load_oncall(path)


# ---- routing -------------------------------------------------------------------------------------------


ROUTED = """\
schedules:
  - name: security
    layers: [{name: l, rotation: {type: weekly, handoff: "09:00", start: 2026-01-05, members: [alice]}}]
  - name: payments
    layers: [{name: l, rotation: {type: weekly, handoff: "09:00", start: 2026-01-05, members: [paula]}}]
  - name: ops
    layers: [{name: l, rotation: {type: weekly, handoff: "09:00", start: 2026-01-05, members: [dave]}}]
routes:
  - {schedule: payments, services: ["payments-*"], severities: [SEV1, SEV2]}
  - {schedule: ops, types: [service_disruption]}
  - {schedule: security, types: [security_breach, data_leak]}
default_schedule: security
ack_deadline_minutes: {SEV1: 5, SEV2: 15}
"""


@pytest.mark.parametrize(
    ("incident_type", "severity", "service", "expected"),
    [
        ("service_disruption", "SEV1", "payments-api", "payments"),  # the first that matches wins
        ("data_leak", "SEV2", "payments-db", "payments"),
        ("service_disruption", "SEV3", "payments-api", "ops"),  # too low for payments
        ("service_disruption", "SEV1", None, "ops"),  # no service: only routes without services
        ("service_disruption", "SEV1", "payments", "ops"),  # the pattern wants a dash
        ("data_leak", "SEV4", None, "security"),
        ("unknown", "SEV1", None, "security"),  # the default
    ],
)
def test_routes_choose_a_schedule(incident_type: str, severity: str, service: str | None, expected: str) -> None:
    config = parse_oncall(ROUTED)
    chosen = route(config, incident_type=incident_type, severity=severity, services=[service] if service else [])
    assert chosen.name == expected


def test_who_is_on_call_in_every_schedule() -> None:
    shifts = who_is_on_call(parse_oncall(ROUTED), utc("2026-02-01 00:00"))
    assert [(s.schedule, s.person) for s in shifts] == [("security", "alice"), ("payments", "paula"), ("ops", "dave")]


# ---- the shipped file ------------------------------------------------------------------------------------


def test_the_shipped_file_keeps_the_old_rotations() -> None:
    config = load_oncall()
    assert config.channel == "pager"
    for incident_type in IncidentType:
        chosen = route(config, incident_type=incident_type, severity="SEV2", services=())
        assert chosen.name == ("operations" if incident_type is IncidentType.SERVICE_DISRUPTION else "security")
    security, operations = config.schedules["security"], config.schedules["operations"]
    members = ["alice@example.com", "bob@example.com", "carol@example.com"]
    for week in range(6):
        at = utc("2026-01-05 09:00") + timedelta(weeks=week, hours=167)
        assert who(security, at) == members[week % 3]
    assert who(operations, utc("2026-01-05 09:00")) == "dave@example.com"
    assert who(operations, utc("2026-01-06 09:00")) == "erin@example.com"
    assert escalation_order(security, utc("2026-01-12 09:00")) == [members[1], members[2], members[0]]


# ---- errors in the file, by line ---------------------------------------------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(OnCallError) as failed:
        parse_oncall(textwrap.dedent(text))
    return failed.value.problems


BASE = """\
schedules:
  - name: s
    time_zone: Europe/Berlin
    layers:
      - name: l
        rotation: {type: weekly, handoff: "09:00", start: 2026-01-05, members: [alice, bob]}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE.replace('"09:00"', '"9 am"') + TAIL,
            "6:43: schedules.0.layers.0.rotation.handoff: Value error",
        ),
        (BASE.replace('"09:00"', "9") + TAIL, "6:43: schedules.0.layers.0.rotation.handoff: Value error, not a time"),
        (BASE.replace("Europe/Berlin", "Europe/Atlantis") + TAIL, "3:16: schedules.0.time_zone: Value error, not a"),
        (
            BASE.replace("weekly", "custom") + TAIL,
            "6:19: schedules.0.layers.0.rotation: Value error, a custom",
        ),
        (
            BASE.replace("type: weekly", "type: custom, length: 5m") + TAIL,
            "6:42: schedules.0.layers.0.rotation.length: Value error",
        ),
        (BASE.replace("bob]", "alice]") + TAIL, "members appear twice: alice"),
        (BASE + TAIL.replace("default_schedule: s", "default_schedule: nope"), "8:19: default_schedule: no schedule"),
        (BASE + "routes:\n  - {schedule: x}\n" + TAIL, "8:16: routes.0.schedule: no schedule 'x'"),
        (BASE + "routes:\n  - {schedule: s, types: [fire]}\n" + TAIL, "8:27: routes.0.types.0: Input should be"),
        (
            BASE
            + "      - name: l\n        rotation: {type: daily, handoff: '09:00', start: 2026-01-05, members: [c]}\n"
            + TAIL,
            "7:15: schedules.0.layers.1.name: another layer of 's' is named 'l'",
        ),
        (
            BASE + "    overrides:\n      - {person: z, starts: 2026-01-05, ends: 2026-01-06, layer: nope}\n" + TAIL,
            "8:66: schedules.0.overrides.0.layer: 's' has no layer 'nope'",
        ),
        (
            BASE + "    overrides:\n      - {person: z, starts: 2026-01-06, ends: 2026-01-05}\n" + TAIL,
            "8:47: schedules.0.overrides.0.ends: ends before it begins",
        ),
        (
            BASE.replace("members: [alice, bob]}", "members: [a]}\n        restrictions: [{days: [mon]}]") + TAIL,
            "2:5: schedules.0: may leave nobody on call",
        ),
        (
            BASE.replace("members: [alice, bob]}", "members: [a]}\n        restrictions: [{days: [monday]}]") + TAIL,
            "7:32: schedules.0.layers.0.restrictions.0.days.0: Input should be",
        ),
        (
            BASE.replace("rotation:", "ical: {file: a.ics}\n        rotation:") + TAIL,
            "schedules.0.layers.0: Value error, a layer is either a rotation or an ical calendar",
        ),
        ("schedules: [\n", "2:1: not YAML"),
        (BASE, "1:1: default_schedule: Field required"),
    ],
)
def test_errors_name_their_line_and_why(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_load_oncall_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "oncall.yaml"
    path.write_text(BASE + TAIL.replace("default_schedule: s", "default_schedule: nope"))
    with pytest.raises(OnCallError) as failed:
        load_oncall(path)
    assert failed.value.problems == [f"{path}:8:19: default_schedule: no schedule 'nope'"]
    with pytest.raises(OnCallError, match="cannot be read"):
        load_oncall(tmp_path / "missing.yaml")


def test_the_people_a_schedule_names_are_its_members_override_people_and_fallback() -> None:
    text = f"""\
schedules:
  - name: s
    time_zone: UTC
    layers:
{textwrap.indent(rotation("weekly", "alice, bob"), "      ")}
    overrides:
      - {{person: frank, starts: "2026-03-01T00:00:00Z", ends: "2026-03-02T00:00:00Z"}}
    fallback: grace
"""
    assert schedules.people(parse_oncall(text + TAIL)) == {"alice", "bob", "frank", "grace"}
