"""Properties of correlation that must hold for any stream of alerts, however it is cut into batches."""

from __future__ import annotations

import itertools
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector import domain
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
