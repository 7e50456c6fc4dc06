"""Merging incidents and detaching alerts: the pure decisions, without I/O."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import timedelta

import pytest
from pydantic import ValidationError

from services.detector import classification, domain, merging
from services.detector.correlation import parse_rules
from services.detector.domain import IncidentState
from services.detector.merging import Refused, Standing
from services.detector.replay import Replay
from shared.alerts import Alert
from shared.events import (
    DetachArgs,
    IncidentMerged,
    IncidentSplit,
    IncidentType,
    MergeArgs,
    MergeIncidents,
    MergeRecord,
    Severity,
    SplitRecord,
)
from shared.timeline import TimelineEntry, detached_from, merged_in, timeline_entry
from tests.factories import alert, snapshot

WINDOW = timedelta(minutes=30)


def ids(prefix: str = "inc") -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


def incident(alerts: Sequence[Alert], incident_id: str) -> IncidentState:
    [change] = domain.correlate(alerts, {}, window=WINDOW, new_id=lambda: incident_id)
    return change.incident


# ---- refusals ----------------------------------------------------------------------------------

OPEN = {i: Standing(i, closed=False) for i in ("a", "b", "c")}


def test_an_n_way_merge_names_each_incident_once_in_order() -> None:
    assert merging.check_merge("a", ["c", "b", "c"], OPEN) == ["c", "b"]


@pytest.mark.parametrize(
    ("survivor", "others", "found", "reason"),
    [
        ("a", [], OPEN, "name at least one incident to merge into the survivor"),
        ("a", ["b", "a"], OPEN, "incident a cannot be merged into itself"),
        ("a", ["x"], OPEN, "no incident x"),
        ("x", ["a"], OPEN, "no incident x"),
        ("a", ["b"], OPEN | {"b": Standing("b", closed=True)}, "incident b has ended"),
        ("a", ["b"], OPEN | {"a": Standing("a", closed=True)}, "incident a has ended"),
        ("a", ["b"], OPEN | {"b": Standing("b", True, "a")}, "incident b was merged into a already"),
        ("a", ["b"], OPEN | {"b": Standing("b", True, "c")}, "incident b was merged into c already"),
        ("a", ["b"], OPEN | {"a": Standing("a", True, "c")}, "was merged into c already: merge into that one"),
    ],
)
def test_a_merge_that_cannot_be_applied_is_refused_with_why(
    survivor: str, others: list[str], found: dict[str, Standing], reason: str
) -> None:
    with pytest.raises(Refused, match=reason):
        merging.check_merge(survivor, others, found)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ([], "name at least one alert to detach"),
        (["k1", "nope"], "incident inc-1 holds no alert nope"),
        (["k1", "k2", "k3"], "detaching every alert of incident inc-1 would leave it empty"),
        (["k3", "k1", "k2", "k1"], "would leave it empty"),  # each key counts once
    ],
)
def test_a_detach_that_cannot_be_applied_is_refused_with_why(keys: list[str], reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        merging.check_detach("inc-1", keys, ["k1", "k2", "k3"])


def test_a_detach_names_each_alert_once_in_order() -> None:
    assert merging.check_detach("inc-1", ["k2", "k1", "k2"], ["k1", "k2", "k3"]) == ["k2", "k1"]


# ---- combining -------------------------------------------------------------------------------


def test_n_incidents_combine_into_the_survivor_as_their_alerts_would_have() -> None:
    by_host = {
        host: [alert(minutes=n + i, host=host, title="Port scan detected", severity="medium") for i in range(2)]
        for n, host in enumerate(["web-01", "web-02", "web-03", "web-04", "web-05"])
    }
    states = [incident(alerts, f"inc-{host}") for host, alerts in by_host.items()]
    assert {s.severity for s in states} == {Severity.SEV3}
    combined = merging.combine(states[0], states[1:])
    assert combined.id == "inc-web-01"
    assert combined.correlation_key == "host:web-01"  # the survivor keeps its key
    assert combined.alert_count == 10
    assert combined.hosts == ("web-01", "web-02", "web-03", "web-04", "web-05")
    assert combined.first_seen == states[0].first_seen
    assert combined.last_seen == states[-1].last_seen
    # Five hosts together are widespread, which none of them was alone.
    assert combined.severity is Severity.SEV2
    assert "5 hosts affected (widespread)" in combined.severity_reason
    # The same as one incident holding all ten alerts would be.
    every_alert = sorted((a for alerts in by_host.values() for a in alerts), key=lambda a: a.time)
    everything = domain._fold(None, every_alert, "all", "all", classification.shipped(), {})
    assert (combined.type, combined.severity, combined.type_votes) == (
        everything.type,
        everything.severity,
        everything.type_votes,
    )


def test_a_merge_never_lowers_severity_and_the_lead_alert_titles_it() -> None:
    scan = incident([alert(host="web-01", title="Port scan detected", severity="low")], "inc-1")
    shell = incident([alert(host="web-02", title="Reverse shell spawned", severity="critical")], "inc-2")
    combined = merging.combine(scan, [shell])
    assert combined.severity is Severity.SEV1
    assert combined.title == "Reverse shell spawned"
    assert combined.type is IncidentType.SYSTEM_COMPROMISE
    assert "weighted alert votes of the merged incidents" in combined.classification_reason
    # On a tie, the survivor's own title and reason stand.
    other = incident([alert(host="web-03", title="Port scan detected", severity="low")], "inc-3")
    same = merging.combine(scan, [other])
    assert (same.title, same.classification_reason) == (scan.title, scan.classification_reason)


RULED = parse_rules("""
rules:
  - {name: canary, detection: {source: canary}}
correlations:
  - name: burst
    title: Canary tripped again and again
    severity: SEV3
    correlation: {type: event_count, rules: [canary], group-by: [host], timespan: 1h, condition: {gte: 2}}
""")


def ruled_incident(severity: str = "critical") -> tuple[IncidentState, list[Alert]]:
    burst = [alert(source="canary", title=f"canary {i}", severity=severity, minutes=i) for i in range(3)]
    [state] = Replay(rules=RULED, window=WINDOW).feed_all(burst).incidents.values()
    assert (state.title, state.severity) == ("Canary tripped again and again (host=web-01)", Severity.SEV3)
    return state, burst


def test_a_rule_incident_keeps_the_rules_title_and_severity_when_merged_into_or_split() -> None:
    ruled, burst = ruled_incident()
    kept = merging.split(ruled, burst[:2], burst[2:], new_incident_id="inc-2", correlations=RULED).kept.incident
    assert (kept.title, kept.severity, kept.severity_reason) == (ruled.title, ruled.severity, ruled.severity_reason)
    ruled, _burst = ruled_incident("low")
    shell = incident([alert(host="web-02", title="Reverse shell spawned", severity="critical")], "inc-3")
    combined = merging.combine(ruled, [shell], correlations=RULED)
    assert combined.title == ruled.title
    assert combined.severity is Severity.SEV1  # never lower than an incident merged in
    # Without the rule in force, the lead alert titles it as any incident.
    assert merging.combine(ruled, [shell], correlations=parse_rules("{}")).title == "Reverse shell spawned"


# ---- later alerts of a merged-away key ---------------------------------------------------------


def test_a_merged_away_keys_alerts_join_the_survivor_keeping_its_key() -> None:
    survivor = incident([alert(host="web-01")], "inc-1")
    later = [alert(minutes=5, host="web-02"), alert(minutes=6, host="web-02")]
    changes = merging.correlate_merged(later, {"host:web-02": survivor}, [], window=WINDOW, new_id=ids("new"))
    [change] = changes
    assert not change.created
    assert change.incident.id == "inc-1"
    assert change.incident.correlation_key == "host:web-01"
    assert change.incident.alert_count == 3
    assert change.incident.hosts == ("web-01", "web-02")
    assert [a.key for a in change.alerts] == [a.key for a in later]


def test_a_survivor_is_folded_once_when_its_own_and_merged_keys_arrive_together() -> None:
    survivor = incident([alert(host="web-01")], "inc-1")
    own = [alert(minutes=1, host="web-01")]
    merged_b = [alert(minutes=2, host="web-02")]
    merged_c = [alert(minutes=3, host="web-03")]
    plain = domain.correlate(own, {"host:web-01": survivor}, window=WINDOW, new_id=ids())
    survivors = {"host:web-02": survivor, "host:web-03": survivor}
    changes = merging.correlate_merged([*merged_b, *merged_c], survivors, plain, window=WINDOW, new_id=ids())
    [change] = changes
    assert change.incident.alert_count == 4  # one before, three now: none folded from a stale state
    assert [a.key for a in change.alerts] == [a.key for a in (*own, *merged_b, *merged_c)]
    assert change.incident.hosts == ("web-01", "web-02", "web-03")


def test_every_alert_of_a_merged_away_rule_group_joins_the_survivor_whatever_else_reaches_it() -> None:
    survivor = incident([alert(host="web-01")], "inc-1")
    ruled, _burst = ruled_incident()
    own = [alert(minutes=4, host="web-01")]
    later = [alert(source="canary", minutes=5), alert(source="canary", minutes=6)]
    routes = {a.key: RULED.route(a) for a in [*own, *later]}
    plain = domain.correlate(own, {"host:web-01": survivor}, window=WINDOW, new_id=ids())
    changes = merging.correlate_merged(
        later, {ruled.correlation_key: survivor}, plain, window=WINDOW, new_id=ids(), rules=RULED, routes=routes
    )
    [change] = changes
    assert change.incident.alert_count == 4 and change.incident.correlation_key == "host:web-01"
    assert [a.key for a in change.alerts] == [a.key for a in (*own, *later)]
    assert change.reasons[later[0].key].rule == "burst"
    # The rule's title and severity are its own incident's: the survivor is judged as any incident.
    assert change.incident.title == survivor.title


def test_a_merged_away_key_past_the_window_opens_an_incident_of_its_own() -> None:
    survivor = incident([alert(host="web-01")], "inc-1")
    late = alert(minutes=90, host="web-02")
    [change] = merging.correlate_merged([late], {"host:web-02": survivor}, [], window=WINDOW, new_id=ids("new"))
    assert change.created
    assert change.incident.id == "new-1"
    assert change.incident.correlation_key == "host:web-02"


# ---- detaching ---------------------------------------------------------------------------------


def test_a_split_judges_both_incidents_from_the_alerts_each_holds() -> None:
    scans = [alert(minutes=i, host="web-01", title="Port scan detected", severity="low") for i in range(3)]
    shell = alert(minutes=4, host="web-01", title="Reverse shell spawned", severity="critical")
    whole = incident([*scans, shell], "inc-1")
    assert whole.severity is Severity.SEV1
    split = merging.split(whole, scans, [shell], new_incident_id="inc-2")
    kept, detached = split.kept.incident, split.detached.incident
    assert (kept.id, kept.correlation_key, kept.alert_count) == ("inc-1", "host:web-01", 3)
    assert kept.type is IncidentType.SECURITY_BREACH
    # Never downgraded by itself: people were paged at SEV1; a person lowers it if they see fit.
    assert (kept.severity, kept.severity_reason) == (whole.severity, whole.severity_reason)
    assert [a.key for a in split.kept.alerts] == [a.key for a in scans]
    assert split.detached.created
    assert (detached.id, detached.alert_count, detached.severity) == ("inc-2", 1, Severity.SEV1)
    assert detached.correlation_key == "detached:inc-2"  # no later alert joins it by itself
    assert split.detached.type_rules == {shell.key: "keywords-system-compromise"}


def test_merged_in_keys_follow_detached_alerts_only_when_all_of_theirs_left() -> None:
    on_a = [alert(host="web-01")]
    on_b = [alert(host="web-02"), alert(host="web-02")]
    on_c = [alert(host="web-03"), alert(host="web-03")]
    aliases = {"host:web-02", "host:web-03"}
    following = merging.keys_following(aliases, kept=[*on_a, on_c[0]], detached=[*on_b, on_c[1]])
    assert following == {"host:web-02"}
    assert merging.keys_following(aliases, kept=on_b, detached=on_a) == set()  # the incident's own key stays


def test_a_merged_in_rule_group_follows_detached_alerts_by_why_they_joined() -> None:
    pairs = parse_rules("""
rules:
  - {name: canary, detection: {source: canary}}
correlations:
  - name: pair
    correlation: {type: event_count, rules: [canary], group-by: [user, host], timespan: 1h, condition: {gte: 1}}
""")
    on_a = [alert(host="web-01")]
    grouped = [alert(source="canary", user="bob", host="web-02", minutes=i) for i in range(2)]
    route = pairs.route(grouped[0])
    assert route is not None and route.key == "pair|user=bob,host=web-02|2026-11-24T09:00:00Z"
    # Read back from jsonb, a group's values come in another order than its key's.
    joined = domain._reason(route, "joined").model_copy(update={"key": {"host": "web-02", "user": "bob"}})
    reasons = dict.fromkeys((a.key for a in grouped), joined)
    aliases = {route.key, "host:web-02"}
    assert merging.keys_following(aliases, on_a, grouped, reasons=reasons) == {route.key}
    assert merging.keys_following(aliases, [*on_a, grouped[0]], grouped[1:], reasons=reasons) == set()


# ---- on the timeline ---------------------------------------------------------------------------


def test_merges_and_splits_say_who_did_what_on_each_timeline() -> None:
    record = MergeRecord(
        survivor="inc-1", merged=["inc-2"], actor="carol", note="same scanner", command_id="c-1", alerts=4
    )
    merged = IncidentMerged(source="/vigil/detector", subject="inc-2", data=record)
    assert timeline_entry(merged) == TimelineEntry(
        "carol", "merged into incident inc-1 with its 4 alert(s): same scanner"
    )
    assert merged_in(merged, title="Port scan") == TimelineEntry(
        "carol", "incident inc-2 (Port scan) merged into this one with its 4 alert(s): same scanner"
    )
    keys = ["falco:1", "falco:2", "falco:3", "falco:4"]
    split = IncidentSplit(
        source="/vigil/detector",
        subject="inc-1",
        data=SplitRecord(new_incident="inc-9", detached=keys, actor="dave", command_id="c-2", incident=snapshot()),
    )
    assert timeline_entry(split) == TimelineEntry(
        "dave", "4 alert(s) detached into incident inc-9 (falco:1, falco:2, falco:3 and 1 more)"
    )
    assert detached_from(split) == TimelineEntry("dave", "opened from 4 alert(s) detached from incident inc-1")
    command = MergeIncidents(
        source="/vigil/detector/api", subject="inc-1", data=MergeArgs(actor="carol", incidents=["inc-2"])
    )
    assert timeline_entry(command) == TimelineEntry("carol", "merge of inc-2 into this incident requested")


def test_commands_name_what_they_act_on_within_bounds() -> None:
    with pytest.raises(ValidationError):
        MergeArgs(actor="carol", incidents=[])
    with pytest.raises(ValidationError):
        MergeArgs(actor="carol", incidents=[""])
    with pytest.raises(ValidationError):
        DetachArgs(actor="carol", alerts=["k"] * 201)
    assert DetachArgs(actor="carol", alerts=["falco:1"]).alerts == ["falco:1"]
