"""Silences, maintenance windows and inhibition rules: matching and deciding, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector import service as detector_service
from services.detector import suppression
from services.detector.suppression import (
    InhibitionError,
    Matcher,
    Silence,
    SuppressionError,
    Suppressor,
    Window,
    check_window,
    equal_values,
    load_inhibition,
    parse_inhibition,
    parse_matchers,
    window_of,
)
from shared.settings import VigilSettings
from tests.factories import T0, alert

NOW = T0 + timedelta(minutes=5)


def silence(
    *matchers: str, starts: datetime = T0, ends: datetime = T0 + timedelta(hours=1), sid: str = "s1"
) -> Silence:
    return Silence(sid, parse_matchers(matchers), starts, ends, created_by="ana", comment="disk swap")


@pytest.mark.parametrize(
    ("text", "matching", "not_matching"),
    [
        ("host=web-01", {"host": "web-01"}, {"host": "web-02"}),
        ("host!=web-01", {"host": "web-02"}, {"host": "web-01"}),
        ('host=~"web-.*"', {"host": "web-07"}, {"host": "db-web-07"}),  # the whole value, as Alertmanager
        ("host!~web-.*", {"host": "db-01"}, {"host": "web-01"}),
        ("severity=high", {"severity": "high"}, {"severity": "medium"}),
        ("src_ip=203.0.113.9", {"src_ip": "203.0.113.9"}, {"src_ip": "198.51.100.1"}),
        ("team=payments", {"labels": {"team": "payments"}}, {"labels": {"team": "search"}}),
        ("labels.host=a", {"labels": {"host": "a"}}, {"host": "a"}),  # labels.NAME is the label, not the field
        ('rule="Host Down"', {"rule": "Host Down"}, {"rule": "HostDown"}),
        ("user=", {"user": None}, {"user": "root"}),  # absent reads as ""
    ],
)
def test_a_matcher_reads_a_field_or_a_label_with_each_operator(
    text: str, matching: dict[str, Any], not_matching: dict[str, Any]
) -> None:
    matcher = Matcher.parse(text)
    assert matcher.matches(alert(**matching))
    assert not matcher.matches(alert(**not_matching))


@pytest.mark.parametrize(
    ("texts", "why"),
    [
        (["host"], "is not NAME=VALUE"),
        (["host=~(unclosed"], "not a regex Vigil reads"),
        (["host=~(a)\\1"], "not a regex Vigil reads"),  # a backreference: RE2 has none
        ([], "at least one matcher"),
        (["host=~.*"], "would match every alert"),
        (["host!=x", "user="], "would match every alert"),
    ],
)
def test_matchers_that_cannot_be_used_are_refused_with_the_reason(texts: list[str], why: str) -> None:
    with pytest.raises(SuppressionError, match=why):
        parse_matchers(texts)


def test_a_regex_that_would_backtrack_for_hours_in_python_matches_at_once() -> None:
    # ``(a+)+b`` against a long run of a's is exponential for a backtracking engine: an operator's
    # silence would stop the detector. RE2 answers in time proportional to the text.
    matcher = Matcher.parse('host=~"(a+)+b"')
    assert not matcher.matches(alert(host="a" * 254 + "!"))  # some 2**254 paths to Python's re
    assert matcher.matches(alert(host="aaab"))


def test_a_silence_covers_the_alerts_all_its_matchers_match_while_it_is_active() -> None:
    suppressor = Suppressor([silence("host=web-01", 'rule=~"Disk.*"')])
    covered = alert(host="web-01", rule="DiskFull")
    decided = suppressor.decide(covered, NOW, {})
    assert decided is not None
    assert (decided.kind, decided.by) == ("silence", "s1")
    assert "ana" in decided.reason and "disk swap" in decided.reason
    assert suppressor.decide(alert(host="web-01", rule="CpuHigh"), NOW, {}) is None
    assert suppressor.decide(alert(host="web-02", rule="DiskFull"), NOW, {}) is None
    assert suppressor.decide(covered, T0 - timedelta(seconds=1), {}) is None  # not started
    assert suppressor.decide(covered, T0 + timedelta(hours=1), {}) is None  # ended (the end is excluded)


def test_of_several_silences_the_earliest_is_recorded_whichever_index_found_it() -> None:
    later = silence("rule=DiskFull", starts=T0 + timedelta(minutes=1), sid="later")
    earlier = silence('host=~"web-.*"', sid="earlier")  # no equality matcher: not indexed
    decided = Suppressor([later, earlier]).decide(alert(host="web-01", rule="DiskFull"), NOW, {})
    assert decided is not None and decided.by == "earlier"


def test_a_one_off_window_covers_its_hosts_during_its_span() -> None:
    window = Window("w1", "db patching", parse_matchers(["host=db-01"]), T0, T0 + timedelta(hours=2))
    check_window(window, T0)
    suppressor = Suppressor(windows=[window])
    decided = suppressor.decide(alert(host="db-01"), NOW, {})
    assert decided is not None and (decided.kind, decided.by) == ("maintenance", "w1")
    assert "db patching" in decided.reason
    assert suppressor.decide(alert(host="db-02"), NOW, {}) is None
    assert suppressor.decide(alert(host="db-01"), T0 + timedelta(hours=2), {}) is None


def sundays_in_paris(window_id: str, *, hours: int) -> Window:
    """A window every Sunday from 02:00 in Paris, from 4 October 2026, for the checkout service."""
    return Window(
        window_id,
        "weekly patching",
        parse_matchers(["service=checkout"]),
        datetime(2026, 10, 4, 2, 0, tzinfo=ZoneInfo("Europe/Paris")),
        rrule="FREQ=WEEKLY;BYDAY=SU",
        duration=timedelta(hours=hours),
        time_zone="Europe/Paris",
    )


def test_a_recurring_window_covers_each_occurrence_in_its_time_zone_across_daylight_saving() -> None:
    # Every Sunday 02:00-04:00 in Paris; clocks go back on 25 October.
    window = sundays_in_paris("w2", hours=2)
    check_window(window, T0)
    suppressor = Suppressor(windows=[window])
    checkout = alert(labels={"service": "checkout"})
    summer = datetime(2026, 10, 11, 0, 30, tzinfo=UTC)  # 02:30 in Paris (UTC+2)
    winter = datetime(2026, 11, 1, 1, 30, tzinfo=UTC)  # 02:30 in Paris (UTC+1)
    for inside in (summer, winter):
        decided = suppressor.decide(checkout, inside, {})
        assert decided is not None and decided.by == "w2", inside
    assert suppressor.decide(checkout, datetime(2026, 11, 1, 0, 30, tzinfo=UTC), {}) is None  # 01:30 Paris
    assert suppressor.decide(checkout, datetime(2026, 11, 2, 1, 30, tzinfo=UTC), {}) is None  # a Monday
    assert suppressor.decide(alert(labels={"service": "search"}), winter, {}) is None
    assert window.next_start(datetime(2026, 11, 2, tzinfo=UTC)) == datetime(2026, 11, 8, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "starts_utc"),
    [
        (datetime(2027, 3, 28, tzinfo=UTC), datetime(2027, 3, 28, 1, 0, tzinfo=UTC)),  # spring forward at 02:00
        (datetime(2026, 10, 25, tzinfo=UTC), datetime(2026, 10, 25, 0, 0, tzinfo=UTC)),  # fall back at 03:00
    ],
)
def test_an_occurrence_lasts_its_duration_on_the_days_the_clocks_change(day: datetime, starts_utc: datetime) -> None:
    # Sundays at 02:00 in Paris, for an hour: on either change, an hour of real time, not of the clock face.
    window = sundays_in_paris("w4", hours=1)
    minutes = [day + timedelta(minutes=m) for m in range(0, 6 * 60, 5)]
    covered = [m for m in minutes if window.occurrence(m) is not None]
    assert (covered[0], covered[-1]) == (starts_utc, starts_utc + timedelta(minutes=55))
    assert len(covered) == 12
    assert window.occurrence(starts_utc) == (starts_utc, starts_utc + timedelta(hours=1))
    assert window.end_after(starts_utc) == starts_utc + timedelta(hours=1)


def checkout_in_paris(window_id: str, starts: datetime, rrule: str, *, minutes: int) -> Window:
    """A recurring window for the checkout service from ``starts`` (local time in Paris), ``minutes`` long."""
    return Window(
        window_id,
        f"checkout {rrule}",
        parse_matchers(["service=checkout"]),
        starts.replace(tzinfo=ZoneInfo("Europe/Paris")),
        rrule=rrule,
        duration=timedelta(minutes=minutes),
        time_zone="Europe/Paris",
    )


@pytest.mark.parametrize(
    "day",
    [datetime(2027, 3, 28, tzinfo=UTC), datetime(2026, 10, 25, tzinfo=UTC)],
    ids=["spring forward", "fall back"],
)
def test_an_hourly_window_covers_every_hour_that_passes_on_the_days_the_clocks_change(day: datetime) -> None:
    # Ten minutes at the top of every hour in Paris: autumn's repeated hour is an hour too.
    window = checkout_in_paris("w5", datetime(2026, 10, 20, 0, 0), "FREQ=HOURLY;BYMINUTE=0", minutes=10)
    check_window(window, T0)
    hours = [day + timedelta(hours=h) for h in range(6)]  # 00:00 to 05:00 UTC, across the change
    for hour in hours:
        assert window.occurrence(hour + timedelta(minutes=5)) == (hour, hour + timedelta(minutes=10)), hour
        assert window.occurrence(hour + timedelta(minutes=15)) is None, hour
        assert window.next_start(hour - timedelta(minutes=30)) == hour, hour
        assert window.end_after(hour - timedelta(minutes=30)) == hour + timedelta(minutes=10), hour


def test_a_daily_window_at_the_hour_autumn_repeats_happens_once() -> None:
    # 02:30 in Paris comes twice on 25 October 2026 (00:30 and 01:30 UTC): a daily window opens at the first.
    window = checkout_in_paris("w6", datetime(2026, 10, 20, 2, 30), "FREQ=DAILY", minutes=20)
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert window.next_start(datetime(2026, 10, 25, tzinfo=UTC)) == first
    assert window.occurrence(first + timedelta(minutes=5)) == (first, first + timedelta(minutes=20))
    assert window.occurrence(first + timedelta(hours=1, minutes=5)) is None
    assert window.next_start(first + timedelta(minutes=30)) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_recurring_window_stops_recurring_at_its_end() -> None:
    window = Window(
        "w3",
        "nightly",
        parse_matchers(["host=db-01"]),
        T0,
        ends_at=T0 + timedelta(days=2),
        rrule="FREQ=DAILY",
        duration=timedelta(hours=1),
    )
    suppressor = Suppressor(windows=[window])
    assert suppressor.decide(alert(host="db-01"), T0 + timedelta(days=1, minutes=30), {}) is not None
    assert suppressor.decide(alert(host="db-01"), T0 + timedelta(days=3, minutes=30), {}) is None


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"ends_at": None}, "needs an end"),
        ({"rrule": "FREQ=SOMETIMES", "duration": timedelta(hours=1)}, "cannot be read"),
        ({"rrule": "FREQ=DAILY", "duration": None}, "positive duration"),
        ({"rrule": "FREQ=DAILY", "duration": timedelta(hours=1), "time_zone": "Mars/Olympus"}, "unknown time zone"),
        (
            {"time_zone": "America"},
            "unknown time zone",
        ),  # a folder of zones; a one-off window is shown on its clock too
        ({"rrule": "FREQ=DAILY;COUNT=0", "duration": timedelta(hours=1)}, "no occurrence"),
        ({"rrule": "FREQ=MINUTELY", "duration": timedelta(seconds=30)}, "once an hour at most"),
        # Hourly in name, 3,600 occurrences an hour in fact: each batch would walk them all since the start.
        (
            {"rrule": "FREQ=HOURLY;BYMINUTE=" + ",".join(map(str, range(60))), "duration": timedelta(seconds=1)},
            "once an hour at most",
        ),
        ({"rrule": "FREQ=DAILY;BYHOUR=2;BYSECOND=0,30", "duration": timedelta(seconds=10)}, "once an hour at most"),
    ],
)
def test_a_window_that_cannot_be_used_is_refused(changes: dict[str, object], why: str) -> None:
    fields: dict[str, object] = {"ends_at": T0 + timedelta(hours=1), **changes}
    window = Window("w", "x", parse_matchers(["host=a"]), T0, **fields)  # type: ignore[arg-type]
    with pytest.raises(SuppressionError, match=why):
        check_window(window, T0)


def test_a_new_recurring_window_starts_at_most_a_year_ago() -> None:
    hourly = {"rrule": "FREQ=HOURLY", "duration": timedelta(minutes=5), "ends_at": None}
    old = Window("w", "x", parse_matchers(["host=a"]), T0 - timedelta(days=367), **hourly)  # type: ignore[arg-type]
    with pytest.raises(SuppressionError, match="at most a year ago"):
        check_window(old, T0)
    recent = Window("w", "x", parse_matchers(["host=a"]), T0 - timedelta(days=300), **hourly)  # type: ignore[arg-type]
    check_window(recent, T0)


def test_a_stored_window_whose_rule_is_refused_now_is_refused_when_read_not_when_asked() -> None:
    # Stored by an older version that took the rule: the detector leaves it out when it loads the
    # windows (saying why), instead of failing each batch that asks whether it is on.
    row = {
        "id": "w-1",
        "name": "every half hour",
        "matchers": ["host=a"],
        "starts_at": T0,
        "ends_at": None,
        "rrule": "FREQ=HOURLY;BYMINUTE=0,30",
        "duration_s": 60,
        "time_zone": "UTC",
        "created_by": "ana",
        "comment": "",
    }
    with pytest.raises(SuppressionError, match="once an hour at most"):
        window_of(row)
    assert window_of({**row, "rrule": "FREQ=HOURLY;BYMINUTE=0"}).occurrence(T0 + timedelta(seconds=30)) is not None


HOST_DOWN = """
inhibit_rules:
  - name: host-down
    source_matchers: ['rule=HostDown']
    target_matchers: ['rule!=HostDown']
    equal: [host]
"""


def test_a_firing_source_inhibits_targets_with_the_same_equal_values_only() -> None:
    suppressor = Suppressor(inhibitions=parse_inhibition(HOST_DOWN))
    down = alert(id="down", host="web-01", rule="HostDown")
    (source,) = suppressor.sources(down)
    firing = {(source.rule, source.equal_values): [down.key]}
    target = alert(id="http", host="web-01", rule="HttpErrors")
    decided = suppressor.decide(target, NOW, firing)
    assert decided is not None
    assert (decided.kind, decided.by, decided.rule) == ("inhibition", down.key, "host-down")
    assert "host=web-01" in decided.reason
    assert suppressor.decide(alert(id="other", host="web-02", rule="HttpErrors"), NOW, firing) is None
    assert suppressor.decide(down, NOW, firing) is None  # the source itself is not a target
    assert suppressor.decide(target, NOW, {}) is None  # nothing fires


def test_alerts_without_the_equal_fields_are_never_inhibited_by_each_other() -> None:
    (rule,) = parse_inhibition(HOST_DOWN)
    assert equal_values(rule, alert(host=None, rule="HostDown")) is None
    suppressor = Suppressor(inhibitions=[rule])
    assert suppressor.sources(alert(host=None, src_ip=None, rule="HostDown")) == []


def test_a_silence_comes_before_an_inhibition() -> None:
    suppressor = Suppressor([silence("host=web-01")], inhibitions=parse_inhibition(HOST_DOWN))
    down = alert(id="down", host="web-01", rule="HostDown")
    (source,) = suppressor.sources(down)
    decided = suppressor.decide(alert(host="web-01", rule="X"), NOW, {(source.rule, source.equal_values): ["k"]})
    assert decided is not None and decided.kind == "silence"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "inhibit_rules:\n  - name: a\n    source_matchers: ['h']\n    target_matchers: [x=1]\n    equal: [h]\n",
            ":3:",
        ),
        ("inhibit_rules:\n  - name: a\n    source_matchers: [x=1]\n    target_matchers: [y=1]\n", ":2:"),
        (
            "inhibit_rules:\n  - name: a\n    source_matchers: [x=1]\n    target_matchers: [y=1]\n    equal: [h]\n"
            "    source_max_age: soon\n",
            ":6:",
        ),
        ("inhibit_rules: [\n", "not YAML"),
    ],
)
def test_a_broken_inhibition_file_is_refused_with_the_line_and_reason(text: str, where: str) -> None:
    with pytest.raises(InhibitionError) as refused:
        parse_inhibition(text, source="rules.yaml")
    assert where in str(refused.value) and str(refused.value).startswith("rules.yaml:")


def test_the_shipped_rules_inhibit_service_alerts_of_a_down_host_but_never_security_detections() -> None:
    suppressor = Suppressor(inhibitions=load_inhibition())
    down = alert(id="d", host="web-01", rule="InstanceDown", format="alertmanager")
    firing = {(s.rule, s.equal_values): [down.key] for s in suppressor.sources(down)}
    assert firing
    service_alert = alert(id="h", host="web-01", rule="HighErrorRate", format="alertmanager")
    assert suppressor.decide(service_alert, NOW, firing) is not None
    detection = alert(id="s", host="web-01", rule="ET SCAN", format="suricata")
    assert suppressor.decide(detection, NOW, firing) is None


def test_the_shipped_rules_inhibit_pod_alerts_of_a_cluster_that_is_down() -> None:
    suppressor = Suppressor(inhibitions=load_inhibition())
    down = alert(id="api", rule="KubeAPIDown", format="alertmanager", labels={"cluster": "eu-1"})
    firing = {(s.rule, s.equal_values): [down.key] for s in suppressor.sources(down)}
    pod = alert(id="p", rule="PodCrashLooping", format="alertmanager", labels={"cluster": "eu-1", "pod": "web-5"})
    decided = suppressor.decide(pod, NOW, firing)
    assert decided is not None and decided.rule == "cluster-down"
    other = alert(id="q", rule="PodCrashLooping", format="alertmanager", labels={"cluster": "us-1", "pod": "web-5"})
    assert suppressor.decide(other, NOW, firing) is None


def test_a_windows_end_timer_falls_at_the_end_of_the_occurrence_in_progress_else_of_the_next() -> None:
    daily = Window(
        "w4", "nightly", parse_matchers(["host=db-01"]), T0, rrule="FREQ=DAILY;COUNT=2", duration=timedelta(hours=1)
    )
    assert daily.end_after(T0 + timedelta(minutes=10)) == T0 + timedelta(hours=1)
    assert daily.end_after(T0 + timedelta(hours=2)) == T0 + timedelta(days=1, hours=1)
    assert daily.end_after(T0 + timedelta(days=2)) is None  # no occurrence left
    one_off = Window("w5", "once", parse_matchers(["host=db-01"]), T0, T0 + timedelta(hours=3))
    assert one_off.end_after(T0 - timedelta(hours=1)) == T0 + timedelta(hours=3)
    assert one_off.end_after(T0 + timedelta(hours=4)) is None


def test_a_detector_given_a_broken_inhibition_file_refuses_to_start_with_the_line(tmp_path: Path) -> None:
    broken = tmp_path / "inhibition.yaml"
    broken.write_text("inhibit_rules:\n  - name: a\n    source_matchers: [x=1]\n    target_matchers: [y=1]\n")
    with pytest.raises(InhibitionError, match=rf"{broken}:2:5: inhibit_rules.0.equal: Field required"):
        detector_service.spec(VigilSettings(inhibition_rules=broken))


@pytest.mark.parametrize(
    ("text", "matching", "not_matching"),
    [
        ('format=~"alertmanager|pagerduty"', ["alertmanager", "pagerduty"], ["alertmanager2", "suricata", "native"]),
        ('host=~"(web-01|web-02)"', ["web-01", "web-02"], ["web-03", "web-01x"]),
        ('host=~"web.01"', ["web-01", "webX01"], ["db-01"]),  # a dot is any character: not indexed as a word
        ('host=~"web-0[12]"', ["web-01", "web-02"], ["web-03"]),
    ],
)
def test_an_index_by_regex_alternatives_finds_exactly_what_the_regex_matches(
    text: str, matching: list[str], not_matching: list[str]
) -> None:
    silences = [silence(text, sid="s"), silence("host=other", sid="t")]
    suppressor = Suppressor(silences)
    field: dict[str, Any] = {}
    name = text.split("=")[0]
    for value in matching:
        field[name] = value
        decided = suppressor.decide(alert(**field), NOW, {})
        assert decided is not None and decided.by == "s", value
    for value in not_matching:
        field[name] = value
        assert suppressor.decide(alert(**field), NOW, {}) is None, value


# Matchers of every kind the index treats differently: equalities on fields of many and of few values,
# regexes with and without a literal start, alternatives, negations, labels.
MATCHERS = [
    "host=web-01",
    "host=db-02",
    'host=~"web-.*"',
    'host=~"db-[0-9]+"',
    'host=~"web-0?1"',
    'host=~"(web|db)-01"',
    'host!~"web-.*"',
    "severity=low",
    "severity=high",
    'severity=~"low|medium"',
    "labels.service=checkout",
    'labels.service=~"check.*"',
    'labels.team=~"sre-[a-z]+"',
    "source!=falco",
]
HOSTS = ["web-01", "web-1", "web-02", "db-02", "db-x", "we", "", "webby"]


@settings(max_examples=300, deadline=None)
@given(
    chosen=st.lists(st.lists(st.sampled_from(MATCHERS), min_size=1, max_size=3, unique=True), max_size=12),
    host=st.sampled_from(HOSTS),
    severity=st.sampled_from(["low", "medium", "high", "critical"]),
    service=st.sampled_from(["checkout", "checkouts", "cart", ""]),
    team=st.sampled_from(["sre-core", "sre-", "dev", ""]),
)
def test_the_index_finds_exactly_the_silences_a_scan_of_them_all_finds(
    chosen: list[list[str]], host: str, severity: str, service: str, team: str
) -> None:
    silences = [silence(*texts, sid=f"s{n}") for n, texts in enumerate(chosen) if _usable(texts)]
    labels = {name: value for name, value in (("service", service), ("team", team)) if value}
    subject = alert(host=host or None, severity=severity, labels=labels)
    suppressor = Suppressor(silences)
    # In the order the suppressor keeps them: the earliest that covers the alert is the one recorded.
    scanned = next((s.id for s in suppressor.silences if all(m.matches(subject) for m in s.matchers)), None)
    decided = suppressor.decide(subject, NOW, {})
    assert (decided.by if decided else None) == scanned


def _usable(texts: list[str]) -> bool:
    try:
        parse_matchers(texts)
    except SuppressionError:
        return False
    return True


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from(["HostDown", "hostdown", "HostDownX", "", "NodeNotReady", "web-01"]), max_size=30),
    st.sampled_from(["=~", "!~"]),
)
def test_a_regex_matcher_says_the_same_of_a_value_however_often_it_meets_it(values: list[str], op: str) -> None:
    matcher = Matcher.parse(f'rule{op}"(?i)(HostDown|NodeNotReady)"')
    for value in values:
        expected = value.lower() in ("hostdown", "nodenotready")
        assert matcher.matches(alert(rule=value)) is (expected if op == "=~" else not expected)


def test_a_regex_matcher_remembers_a_bounded_number_of_verdicts() -> None:
    matcher = Matcher.parse('host=~"web-.*"')
    for n in range(suppression.MATCHER_VERDICTS * 3):
        assert matcher.matches(alert(host=f"web-{n}"))
        assert not matcher.matches(alert(host=f"db-{n}"))
    long = "web-" + "x" * suppression.MATCHER_VERDICT_CHARS
    assert matcher.matches(alert(host=long)) and matcher.matches(alert(host=long))
    assert 0 < len(matcher._verdicts) <= suppression.MATCHER_VERDICTS
    assert long not in matcher._verdicts
