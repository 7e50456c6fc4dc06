"""The stream aggregations' pure decisions: which window of which aggregate an event counts toward, when an
alert flaps, what the windows say, and the gauges /metrics shows of them."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.reporter import windows
from services.reporter.metrics import stream_families
from services.reporter.windows import (
    ALERTS,
    DEAD_LETTERS,
    INCIDENTS,
    OTHER,
    Change,
    Flapping,
    FlappingAlert,
    Tally,
    Window,
    WindowSpec,
    bounded,
    dead_letter_tallies,
    event_tallies,
    expired,
    flap,
    flapping_alerts,
    last_complete,
    read_windows,
    roll_up,
    source_of,
    window_start,
    worth_writing,
)
from shared.events import (
    AlertRepeat,
    AlertResolution,
    AlertsChange,
    AlertSummary,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentStateChanged,
    IncidentUpdated,
    StateChange,
)
from tests.factories import T0, snapshot

AT = T0.timestamp()


def summary(key: str, *, status: str = "firing") -> AlertSummary:
    source = key.partition(":")[0]
    return AlertSummary.model_validate(
        {"key": key, "source": source, "title": "t", "severity": "high", "time": T0, "status": status}
    )


def detected(*keys: str, **envelope: Any) -> IncidentDetected:
    return IncidentDetected(
        source="/vigil/detector",
        subject="inc-1",
        time=T0,
        data=snapshot(new_alerts=[summary(k) for k in keys]),
        **envelope,
    )


def changed(repeated: tuple[str, ...] = (), resolved: tuple[str, ...] = (), **envelope: Any) -> IncidentAlertsChanged:
    change = AlertsChange(
        repeated=[AlertRepeat(key=k, repeats=3, last_seen=T0) for k in repeated],
        resolved=[AlertResolution(key=k, resolved_at=T0) for k in resolved],
        firing=0,
        alert_count=1,
    )
    return IncidentAlertsChanged(source="/vigil/detector", subject="inc-1", time=T0, data=change, **envelope)


# ---- what an event counts toward ------------------------------------------------------------------


def test_an_incident_detected_counts_one_incident_and_its_new_alerts_per_source() -> None:
    tallies = event_tallies(detected("falco:1", "falco:2", "suricata:9"))
    assert tallies == [
        Tally("incidents", ("system_compromise", "SEV1"), AT),
        Tally("alerts", ("falco", "accepted"), AT, 2),
        Tally("alerts", ("suricata", "accepted"), AT, 1),
    ]


def test_an_update_counts_its_new_alerts_and_no_incident() -> None:
    update = IncidentUpdated(
        source="/vigil/detector", subject="inc-1", time=T0, data=snapshot(new_alerts=[summary("zeek:1")])
    )
    assert event_tallies(update) == [Tally("alerts", ("zeek", "accepted"), AT, 1)]


def test_repeats_and_resolutions_count_per_source_and_as_state_changes_per_alert() -> None:
    tallies = event_tallies(changed(repeated=("falco:1", "falco:2"), resolved=("falco:1", "wazuh:7")))
    assert [t for t in tallies if t.aggregate == "alerts"] == [
        Tally("alerts", ("falco", "deduplicated"), AT, 2),
        Tally("alerts", ("falco", "resolved"), AT, 1),
        Tally("alerts", ("wazuh", "resolved"), AT, 1),
    ]
    # An alert both repeated and resolved in one batch fired again, then ended.
    assert {t.key: t.changes for t in tallies if t.aggregate == "flapping"} == {
        ("falco:1",): ("fired", "resolved"),
        ("falco:2",): ("fired",),
        ("wazuh:7",): ("resolved",),
    }


def test_events_an_operator_caused_restate_alerts_counted_before() -> None:
    assert event_tallies(detected("falco:1", causationid="cmd-1")) == []
    assert event_tallies(changed(repeated=("falco:1",), causationid="cmd-1")) == []
    # The rest of a batch's alerts follow its first event: correlated, not caused.
    assert event_tallies(detected("falco:1", correlationid="ev-0")) != []


def test_events_of_other_kinds_count_for_nothing() -> None:
    state = IncidentStateChanged(
        source="/vigil/coordinator",
        subject="inc-1",
        data=StateChange.model_validate({"from_state": "detected", "to_state": "acknowledged", "actor": "ana"}),
    )
    assert event_tallies(state) == []


def test_a_key_names_its_source_before_the_first_colon() -> None:
    assert source_of("falco:abc") == "falco"
    assert source_of("guardduty:arn:aws:guardduty:eu-west-1:1:detector/x") == "guardduty"
    assert source_of("alertmanager/team-a:fp") == "alertmanager/team-a"
    assert source_of("no-colon") == "unknown"
    assert source_of(":empty-source") == "unknown"


def test_a_raw_alerts_dead_letter_counts_its_reason_and_an_alert_of_its_sender() -> None:
    at = T0 + timedelta(seconds=5)
    headers = [
        ("vigil_format", b"falco"),
        ("vigil_ingest_source", b"edge-sensor"),
        ("vigil_dlq_code", b"not_json"),
        ("vigil_dlq_time", at.isoformat().encode()),
    ]
    assert dead_letter_tallies("alerts", headers, received=0.0) == [
        Tally("dead_letters", ("alerts", "not_json"), at.timestamp()),
        Tally("alerts", ("edge-sensor", "dead_lettered"), at.timestamp()),
    ]
    # No sender named: its format; neither: unknown.
    assert dead_letter_tallies("alerts", [("vigil_format", b"zeek")], received=AT)[1].key == ("zeek", "dead_lettered")
    assert dead_letter_tallies("alerts", [], received=AT)[1].key == ("unknown", "dead_lettered")


def test_an_events_dead_letter_counts_its_reason_at_the_time_it_was_received_when_it_has_no_time_of_its_own() -> None:
    assert dead_letter_tallies("events", [("vigil_dlq_time", b"yesterday")], received=AT) == [
        Tally("dead_letters", ("events", "invalid"), AT)
    ]


def test_a_tally_travels_as_json_and_keys_its_record_by_aggregate_and_key() -> None:
    tally = Tally("flapping", ('quote"and:colon',), AT, changes=("fired", "resolved"))
    assert Tally.from_json(json.loads(json.dumps(tally.to_json()))) == tally
    assert json.loads(tally.table_key) == ['quote"and:colon']
    assert tally.partition_key == b'flapping:["quote\\"and:colon"]'
    assert Tally("alerts", ("a", "b"), AT).partition_key != Tally("alerts", ("a:b",), AT).partition_key


def test_tallies_of_one_key_and_window_are_combined_and_their_changes_kept_in_order() -> None:
    specs = {"alerts": ALERTS, "flapping": windows.flapping_spec(3600)}
    combined = windows.combine(
        [
            Tally("alerts", ("falco", "accepted"), AT, 2),
            Tally("flapping", ("falco:1",), AT, changes=("resolved",)),
            Tally("alerts", ("falco", "accepted"), AT + 59, 3),
            Tally("alerts", ("falco", "accepted"), AT + 60, 1),  # the next minute
            Tally("alerts", ("falco", "resolved"), AT, 1),
            Tally("flapping", ("falco:1",), AT + 600, changes=("fired", "resolved")),
        ],
        specs,  # type: ignore[arg-type]
    )
    assert combined == [
        Tally("alerts", ("falco", "accepted"), AT, 5),
        Tally("flapping", ("falco:1",), AT, 2, changes=("resolved", "fired", "resolved")),
        Tally("alerts", ("falco", "accepted"), AT + 60, 1),
        Tally("alerts", ("falco", "resolved"), AT, 1),
    ]


def test_a_tally_whose_window_expired_is_not_counted() -> None:
    minute = ALERTS.size_s
    start = window_start(AT, minute)
    tally = Tally("alerts", ("falco", "accepted"), AT)
    assert not expired(tally, ALERTS, now=start + minute + ALERTS.expires_s - 1)
    assert expired(tally, ALERTS, now=start + minute + ALERTS.expires_s)


def test_before_the_horizon_no_window_kept_holds_anything() -> None:
    specs = [ALERTS, INCIDENTS, DEAD_LETTERS]
    now = AT + 10 * 24 * 3600
    edge = windows.horizon(specs, now=now)
    assert edge == now - INCIDENTS.expires_s - INCIDENTS.size_s
    for spec in specs:
        assert expired(Tally(spec.aggregate, ("k",), edge - 1), spec, now=now)


def test_windows_start_on_the_epoch_as_fausts_do() -> None:
    assert window_start(3599.9, 60) == 3540.0
    assert window_start(3600.0, 3600) == 3600.0
    assert window_start(AT + 59, 60) == AT  # T0 is on the minute


# ---- flapping -------------------------------------------------------------------------------------


def test_resolving_and_firing_again_are_changes_and_repeats_are_not() -> None:
    state = flap(Flapping(), ["fired", "fired", "resolved", "resolved", "fired", "fired", "resolved"])
    assert state == Flapping(changes=3, state="resolved")


def test_a_window_begins_not_knowing_the_state_so_a_first_resolution_counts_and_a_first_firing_does_not() -> None:
    assert flap(Flapping(), ["resolved"]) == Flapping(1, "resolved")
    assert flap(Flapping(), ["fired"]) == Flapping(0, "firing")


@given(st.lists(st.sampled_from(["fired", "resolved"]), max_size=40), st.integers(0, 40))
def test_flapping_counts_the_same_however_the_changes_are_split_over_events(changes: list[Change], cut: int) -> None:
    whole = flap(Flapping(), changes)
    assert flap(flap(Flapping(), changes[:cut]), changes[cut:]) == whole
    # Each change is a switch of state: as many as the sequence has switches, a first resolution included.
    states = ["firing" if c == "fired" else "resolved" for c in changes]
    switches = sum(a != b for a, b in itertools.pairwise(states)) + (states[:1] == ["resolved"])
    assert whole.changes == switches


@given(
    st.lists(st.sampled_from(["fired", "resolved"]), max_size=20),
    st.lists(st.sampled_from(["fired", "resolved"]), max_size=20),
)
def test_a_state_not_worth_writing_changes_nothing_that_follows(first: list[Change], then: list[Change]) -> None:
    before = Flapping()
    after = flap(before, first)
    kept = after if worth_writing(before, after) else before
    assert flap(kept, then).changes == flap(after, then).changes
    assert not worth_writing(Flapping(2, "firing"), flap(Flapping(2, "firing"), ["fired", "fired"]))
    assert worth_writing(Flapping(2, "firing"), flap(Flapping(2, "firing"), ["resolved"]))


def test_flapping_state_travels_as_json() -> None:
    state = Flapping(4, "firing")
    assert Flapping.from_json(state.to_json()) == state
    assert Flapping.from_json({}) == Flapping()
    assert Flapping.from_json(None) == Flapping()


def test_alerts_over_the_threshold_in_the_current_or_last_window_are_flapping_once_each() -> None:
    hour = 3600
    now = window_start(AT, hour) + hour + 10  # T0's hour has just ended
    current, last, older = now - 10, now - 10 - hour, now - 10 - 2 * hour

    def window(start: float, key: str, changes: int) -> Window:
        return Window(start, start + hour, (key,), Flapping(changes, "resolved").to_json())

    found = flapping_alerts(
        [
            window(current, "falco:a", 4),
            window(last, "falco:a", 6),
            window(last, "wazuh:b", 4),
            window(last, "zeek:c", 3),  # at the threshold: not over it
            window(older, "zeek:d", 9),  # too old
        ],
        threshold=3,
        size_s=hour,
        now=now,
    )
    assert found == [
        FlappingAlert("falco:a", "falco", last, last + hour, 6, "resolved"),
        FlappingAlert("wazuh:b", "wazuh", last, last + hour, 4, "resolved"),
    ]


# ---- what the windows say -------------------------------------------------------------------------


def _entry(key: tuple[str, ...], start: float, size: int, value: Any) -> tuple[Any, Any]:
    return ((json.dumps(list(key)), (start, start + size - 0.1)), value)


def test_read_windows_leaves_out_the_expired_ones_and_lists_the_newest_first() -> None:
    minute = ALERTS.size_s
    now = AT + ALERTS.expires_s
    entries = [
        _entry(("falco", "accepted"), AT - minute, minute, 7),  # ended an hour ago: expired
        _entry(("falco", "accepted"), AT, minute, 2),
        _entry(("wazuh", "resolved"), AT + minute, minute, 1),
        _entry(("falco", "accepted"), AT + minute, minute, 3),
    ]
    assert read_windows(entries, ALERTS, now=now) == [
        Window(AT + minute, AT + 2 * minute, ("falco", "accepted"), 3),
        Window(AT + minute, AT + 2 * minute, ("wazuh", "resolved"), 1),
        Window(AT, AT + minute, ("falco", "accepted"), 2),
    ]


def test_minutes_roll_up_into_hours() -> None:
    hour = 3600
    minutes = [
        Window(AT, AT + 60, ("alerts", "not_json"), 2),
        Window(AT + 60, AT + 120, ("alerts", "not_json"), 3),
        Window(AT + hour, AT + hour + 60, ("alerts", "not_json"), 1),
        Window(AT, AT + 60, ("events", "invalid"), 1),
    ]
    assert roll_up(minutes, hour) == [
        Window(AT + hour, AT + 2 * hour, ("alerts", "not_json"), 1),
        Window(AT, AT + hour, ("alerts", "not_json"), 5),
        Window(AT, AT + hour, ("events", "invalid"), 1),
    ]


def test_last_complete_is_the_window_that_ended_last_by_now() -> None:
    found = [
        Window(AT, AT + 60, ("falco", "accepted"), 2),
        Window(AT + 60, AT + 120, ("falco", "accepted"), 5),  # still open at now
    ]
    assert last_complete(found, 60, now=AT + 61) == {("falco", "accepted"): 2}
    assert last_complete(found, 60, now=AT + 121) == {("falco", "accepted"): 5}
    assert last_complete(found, 60, now=AT + 181) == {}


def test_bounded_keeps_the_most_frequent_values_and_sums_the_rest_as_other() -> None:
    counts: dict[tuple[str, ...], int] = {
        ("a", "accepted"): 5,
        ("b", "accepted"): 3,
        ("b", "resolved"): 3,
        ("c", "accepted"): 1,
        ("d", "x"): 1,
    }
    assert bounded(counts, position=0, limit=2) == {
        ("a", "accepted"): 5,
        ("b", "accepted"): 3,
        ("b", "resolved"): 3,
        (OTHER, "accepted"): 1,
        (OTHER, "x"): 1,
    }


@given(
    st.dictionaries(st.tuples(st.text(max_size=3), st.sampled_from(["x", "y"])), st.integers(0, 50)), st.integers(1, 5)
)
def test_bounded_keeps_every_count_and_at_most_limit_values_besides_other(
    counts: dict[tuple[str, ...], int], limit: int
) -> None:
    kept = bounded(counts, position=0, limit=limit)
    assert sum(kept.values()) == sum(counts.values())
    assert len({key[0] for key in kept} - {OTHER}) <= limit


# ---- the gauges -----------------------------------------------------------------------------------


class Tables:
    """The stream's windows held in memory, as WindowSource serves them to /metrics."""

    def __init__(self, now: float, found: dict[str, list[Window]], flapping: list[FlappingAlert]) -> None:
        self._now, self._found, self._flapping = now, found, flapping
        self.ready = True

    def now(self) -> float:
        return self._now

    def windows(self, spec: WindowSpec) -> list[Window]:
        return self._found.get(spec.aggregate, [])

    def flapping(self) -> list[FlappingAlert]:
        return self._flapping


def samples(source: Any, *, running: bool = True) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in stream_families(source, running=running)}


def test_the_gauges_show_the_last_complete_windows() -> None:
    hour = INCIDENTS.size_s
    now = window_start(AT, hour) + hour + 5  # T0's hour and the minute 09:59 have ended
    minute = now - 5 - 60
    source = Tables(
        now,
        {
            "alerts": [
                Window(minute, minute + 60, ("falco", "accepted"), 4),
                Window(minute + 60, minute + 120, ("falco", "accepted"), 9),  # open
            ],
            "incidents": [Window(AT, AT + hour, ("data_leak", "SEV2"), 2)],
            "dead_letters": [
                Window(minute, minute + 60, ("alerts", "not_json"), 1),
                Window(AT, AT + 60, ("alerts", "not_json"), 2),
            ],
        },
        [FlappingAlert("falco:a", "falco", AT, AT + hour, 5, "firing")],
    )
    found = samples(source)
    assert found["vigil_stream_ready"] == [({}, 1.0)]
    assert found["vigil_stream_alerts_last_minute"] == [({"source": "falco", "outcome": "accepted"}, 4)]
    assert found["vigil_stream_incidents_opened_last_hour"] == [({"type": "data_leak", "severity": "SEV2"}, 2)]
    assert found["vigil_stream_dead_letters_last_minute"] == [({"topic": "alerts", "reason": "not_json"}, 1)]
    assert found["vigil_stream_dead_letters_last_hour"] == [({"topic": "alerts", "reason": "not_json"}, 3)]
    assert found["vigil_stream_alerts_flapping"] == [({"source": "falco"}, 1)]


def test_while_the_app_is_down_every_gauge_family_is_there_with_no_series_and_ready_says_0() -> None:
    assert samples(None)["vigil_stream_ready"] == [({}, 0.0)]
    found = samples(None, running=False)
    assert found == {
        "vigil_stream_ready": [],
        "vigil_stream_alerts_last_minute": [],
        "vigil_stream_incidents_opened_last_hour": [],
        "vigil_stream_dead_letters_last_minute": [],
        "vigil_stream_dead_letters_last_hour": [],
        "vigil_stream_alerts_flapping": [],
    }


def test_the_gauges_bound_their_sources() -> None:
    minute = window_start(AT, 60)
    many = [Window(minute, minute + 60, (f"tool-{n:02}", "accepted"), n + 1) for n in range(30)]
    found = samples(Tables(minute + 61, {"alerts": many}, []))["vigil_stream_alerts_last_minute"]
    sources = {labels["source"] for labels, _ in found}
    assert len(sources) == 21 and OTHER in sources  # the 20 most frequent, and the rest
    assert sum(value for _, value in found) == sum(range(1, 31))


def test_the_aggregates_keep_their_windows_for_as_documented() -> None:
    assert (ALERTS.size_s, ALERTS.expires_s) == (60, 3600)
    assert (INCIDENTS.size_s, INCIDENTS.expires_s) == (3600, 48 * 3600)
    assert (DEAD_LETTERS.size_s, DEAD_LETTERS.expires_s) == (60, 24 * 3600)
    assert windows.flapping_spec(900) == WindowSpec("flapping", 900, 1800, ("alert",))
    assert datetime.fromtimestamp(window_start(AT, 60), UTC) == T0
