"""Properties of correlation that must hold for any stream of alerts, however it is cut into batches."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector import domain
from services.detector.correlation import parse_rules
from services.detector.replay import Replay
from shared.alerts import Alert
from tests.factories import alert

WINDOW = timedelta(minutes=30)
TITLES = ["Port scan", "Reverse shell spawned", "Data exfiltration", "Service down", "Odd thing"]

alerts_strategy = st.lists(
    st.builds(
        lambda host, minute, title, severity: alert(host=host, minutes=minute, title=title, severity=severity),
        host=st.sampled_from(["a", "b", "c"]),
        minute=st.integers(0, 180),
        title=st.sampled_from(TITLES),
        severity=st.sampled_from(["info", "low", "medium", "high", "critical"]),
    ),
    min_size=1,
    max_size=40,
)


def run_in_batches(alerts: list[Alert], cuts: list[int]) -> dict[str, domain.IncidentState]:
    """Correlate alerts batch by batch, as the detector does, carrying open incidents over."""
    counter = itertools.count()
    open_incidents: dict[str, domain.IncidentState] = {}
    every: dict[str, domain.IncidentState] = {}
    ordered = sorted(alerts, key=lambda a: a.time)  # a partition delivers a host's alerts in order
    bounds = [0, *sorted(set(cuts)), len(ordered)]
    for start, end in itertools.pairwise(bounds):
        batch = ordered[start:end]
        if not batch:
            continue
        for change in domain.correlate(batch, open_incidents, window=WINDOW, new_id=lambda: f"i{next(counter)}"):
            every[change.incident.id] = change.incident
            newest = open_incidents.get(change.incident.correlation_key)
            if newest is None or change.incident.last_seen >= newest.last_seen:
                open_incidents[change.incident.correlation_key] = change.incident
    return every


@settings(max_examples=200, deadline=None)
@given(alerts=alerts_strategy, cuts=st.lists(st.integers(0, 40), max_size=5))
def test_every_alert_lands_in_exactly_one_incident(alerts: list[Alert], cuts: list[int]) -> None:
    incidents = run_in_batches(alerts, cuts)
    assert sum(i.alert_count for i in incidents.values()) == len(alerts)


@settings(max_examples=200, deadline=None)
@given(alerts=alerts_strategy, cuts=st.lists(st.integers(0, 40), max_size=5))
def test_batch_boundaries_do_not_change_the_incidents(alerts: list[Alert], cuts: list[int]) -> None:
    def shape(incidents: dict[str, domain.IncidentState]) -> list[tuple[object, ...]]:
        return sorted(
            (i.correlation_key, i.first_seen, i.last_seen, i.alert_count, i.type, i.severity)
            for i in incidents.values()
        )

    assert shape(run_in_batches(alerts, cuts)) == shape(run_in_batches(alerts, []))


@settings(max_examples=200, deadline=None)
@given(alerts=alerts_strategy)
def test_incidents_on_one_key_are_separated_by_more_than_the_window(alerts: list[Alert]) -> None:
    incidents = sorted(run_in_batches(alerts, []).values(), key=lambda i: (i.correlation_key, i.first_seen))
    for before, after in itertools.pairwise(incidents):
        if before.correlation_key == after.correlation_key:
            assert after.first_seen - before.last_seen > WINDOW


# ---- correlation rules: the same incidents whatever the order, the batches and the partitions ----

RULES = parse_rules(
    """
rules:
  - {name: failed, detection: {tags: authentication_failed}}
  - {name: success, detection: {tags: authentication_success}}
  - {name: scan, detection: {category: scan}}
  - {name: canary, detection: {source: canary}}
correlations:
  - name: takeover
    correlation: {type: temporal_ordered, rules: [failed, success], group-by: [user], timespan: 20m}
  - name: sweep
    correlation:
      type: value_count
      rules: [scan]
      group-by: [src_ip]
      timespan: 15m
      condition: {field: host, gte: 3}
  - name: burst
    correlation: {type: event_count, rules: [canary], group-by: [host], timespan: 30m, condition: {gte: 2}}
  - name: both
    correlation: {type: temporal, rules: [failed, scan], group-by: [host], timespan: 1h}
"""
)

KINDS: dict[str, dict[str, Any]] = {
    "fail": {"tags": ["authentication_failed"]},
    "ok": {"tags": ["authentication_success"]},
    "scan": {"category": "scan"},
    "canary": {"source": "canary"},
    "other": {},
}
ruled_alert = st.builds(
    lambda n, kind, host, user, minute: alert(
        id=f"a{n}", host=host, user=user, minutes=minute, src_ip="198.51.100.7", **KINDS[kind]
    ),
    n=st.integers(0, 10_000),
    kind=st.sampled_from(["fail", "ok", "scan", "canary", "other"]),
    host=st.sampled_from(["a", "b", "c", "d"]),
    user=st.sampled_from(["ann", "bob"]),
    minute=st.integers(0, 90),
)
ruled_alerts = st.lists(ruled_alert, min_size=1, max_size=40, unique_by=lambda a: a.key)


def rule_groups(arrivals: list[list[Alert]]) -> tuple[set[frozenset[str]], set[str]]:
    """Feed batches in turn; return the incidents (as their alerts' keys) of rule groups, and the alerts waiting."""
    replay = Replay(rules=RULES, window=WINDOW)
    for batch in arrivals:
        replay.feed(batch)
    ruled = {i for i, state in replay.incidents.items() if "|" in state.correlation_key}
    groups = {keys for incident, keys in replay.groups().items() if incident in ruled}
    return groups, {key for key, placed in replay.placement.items() if placed is None}


@settings(max_examples=300, deadline=None)
@given(alerts=ruled_alerts, data=st.data())
def test_rule_incidents_do_not_depend_on_order_batches_or_partitions(alerts: list[Alert], data: st.DataObject) -> None:
    in_time = sorted(alerts, key=lambda a: a.time)
    expected = rule_groups([in_time])
    # Any arrival order (late and out-of-order alerts included), cut anywhere into batches.
    shuffled = data.draw(st.permutations(alerts))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(alerts)), max_size=6)))
    bounds = [0, *cuts, len(shuffled)]
    assert rule_groups([shuffled[a:b] for a, b in itertools.pairwise(bounds)]) == expected
    # Partitions: each alert on some partition, read in order per partition, partitions interleaved at random.
    partition_of = data.draw(st.lists(st.integers(0, 2), min_size=len(alerts), max_size=len(alerts)))
    partitions: list[list[Alert]] = [[], [], []]
    for alert_, partition in zip(shuffled, partition_of, strict=True):
        partitions[partition].append(alert_)
    batches: list[list[Alert]] = []
    while any(partitions):
        which = data.draw(st.sampled_from([p for p in partitions if p]))
        take = data.draw(st.integers(1, len(which)))
        batches.append(which[:take])
        del which[:take]
    assert rule_groups(batches) == expected


@settings(max_examples=200, deadline=None)
@given(alerts=ruled_alerts)
def test_every_alert_is_in_one_incident_or_waits(alerts: list[Alert]) -> None:
    replay = Replay(rules=RULES, window=WINDOW).feed_all(alerts, batch=7)
    assert set(replay.placement) == {a.key for a in alerts}
    placed = [key for keys in replay.groups().values() for key in keys]
    assert len(placed) == len(set(placed))
    assert sum(i.alert_count for i in replay.incidents.values()) == len(placed)


@settings(max_examples=200, deadline=None)
@given(alerts=alerts_strategy, data=st.data())
def test_entity_incidents_do_not_depend_on_how_partitions_interleave(alerts: list[Alert], data: st.DataObject) -> None:
    # The fallback's guarantee: a host's alerts come in time order on its partition (producers key
    # by entity); how partitions interleave and batches are cut does not matter.
    ordered = sorted(alerts, key=lambda a: a.time)
    expected = {frozenset(k) for k in Replay(rules=RULES, window=WINDOW).feed_all(ordered).groups().values()}
    by_host: dict[str | None, list[Alert]] = {}
    for alert_ in ordered:
        by_host.setdefault(alert_.host, []).append(alert_)
    queues = list(by_host.values())
    batches: list[list[Alert]] = []
    while any(queues):
        batch: list[Alert] = []
        for _ in range(data.draw(st.integers(1, 4))):
            live = [q for q in queues if q]
            if not live:
                break
            queue = data.draw(st.sampled_from(live))
            take = data.draw(st.integers(1, len(queue)))
            batch.extend(queue[:take])
            del queue[:take]
        batches.append(batch)
    replay = Replay(rules=RULES, window=WINDOW)
    for batch in batches:
        replay.feed(batch)
    assert {frozenset(k) for k in replay.groups().values()} == expected
