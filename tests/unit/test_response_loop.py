"""Pure rules of the response loop: lease terms and changes, and the watch after containment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.responder import leases, monitor
from shared.events import AlertSummary, WatchedEntity

T0 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
LADDER = leases.RepeatOffenders(durations=(3600, 6 * 3600, 24 * 3600))


@pytest.mark.parametrize(
    ("step_s", "kind", "earlier", "expected"),
    [
        (600, "ip", 0, (3600, 1)),  # the ladder's first rung is longer than the step's own lease
        (600, "ip", 1, (6 * 3600, 2)),
        (600, "domain", 2, (24 * 3600, 3)),
        (600, "ip", 9, (24 * 3600, 10)),  # past the ladder: its last rung, the cap
        (7 * 86400, "ip", 1, (7 * 86400, 2)),  # a step's longer lease wins
        (600, "host", 5, (600, 1)),  # a host isolated again is not a repeat offender
        (600, None, 5, (600, 1)),
    ],
)
def test_a_repeat_offender_gets_the_ladders_duration_for_its_offence(
    step_s: int, kind: str | None, earlier: int, expected: tuple[int, int]
) -> None:
    assert leases.lease_terms(step_s, target_kind=kind, earlier=earlier, policy=LADDER) == expected


def test_a_ladder_that_shrinks_or_is_empty_is_refused() -> None:
    with pytest.raises(ValueError, match="must not shrink"):
        leases.RepeatOffenders(durations=(3600, 60))
    with pytest.raises(ValueError, match="at least one"):
        leases.RepeatOffenders(durations=())


@pytest.mark.parametrize(
    ("state", "change", "refusal"),
    [
        ("active", "extend", None),
        ("extended", "make_permanent", None),
        ("permanent", "revoke", None),
        ("permanent", "extend", "there is no end to move"),
        ("permanent", "make_permanent", "permanent already"),
        ("reverting", "revoke", "only a lease in force"),
        ("reverted", "extend", "only a lease in force"),
        ("revert_failed", "make_permanent", "only a lease in force"),
    ],
)
def test_which_changes_a_lease_takes_in_each_state(state: str, change: leases.Change, refusal: str | None) -> None:
    if refusal is None:
        leases.check_change(state, change)
    else:
        with pytest.raises(leases.LeaseRefused, match=refusal):
            leases.check_change(state, change)


def test_an_extension_counts_from_the_leases_end_or_from_now_once_that_has_passed() -> None:
    assert leases.extended_due(T0 + timedelta(hours=1), T0, timedelta(hours=2)) == T0 + timedelta(hours=3)
    assert leases.extended_due(T0 - timedelta(hours=1), T0, timedelta(hours=2)) == T0 + timedelta(hours=2)
    assert leases.extended_due(None, T0, timedelta(minutes=5)) == T0 + timedelta(minutes=5)


def step(phase: str, state: str, kind: str | None = None, item: str | None = None) -> dict[str, Any]:
    return {"phase": phase, "state": state, "target_kind": kind, "item": item}


def test_containment_is_watched_once_every_containment_step_ended_and_some_acted() -> None:
    running = [step("containment", "succeeded", "ip", "203.0.113.7"), step("containment", "running", "host", "web-1")]
    assert monitor.contained_entities(running) is None
    ended = [
        step("containment", "succeeded", "ip", "203.0.113.7"),
        step("containment", "succeeded", "host", "web-1"),
        step("containment", "failed", "user", "bob"),  # did not act: nothing to watch
        step("containment", "succeeded"),  # no item
        step("investigation", "running", "host", "web-2"),  # not containment
    ]
    assert monitor.contained_entities(ended) == [
        WatchedEntity(kind="host", value="web-1"),
        WatchedEntity(kind="ip", value="203.0.113.7"),
    ]
    assert monitor.contained_entities([step("containment", "denied", "ip", "203.0.113.7")]) == []
    assert monitor.contained_entities([step("investigation", "succeeded", "host", "web-1")]) is None


def alert(**fields: Any) -> AlertSummary:
    base: dict[str, Any] = {"key": "k", "source": "s", "title": "t", "severity": "high", "time": T0}
    return AlertSummary.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("entity", "fields", "involved"),
    [
        (("ip", "203.0.113.7"), {"src_ip": "203.0.113.7"}, True),
        (("ip", "203.0.113.7"), {"dst_ip": "203.0.113.7"}, True),
        (("ip", "203.0.113.0/24"), {"src_ip": "203.0.113.99"}, True),
        (("ip", "203.0.113.7"), {"src_ip": "203.0.113.8"}, False),
        (("host", "web-1"), {"host": "WEB-1"}, True),
        (("host", "web-1"), {"host": "web-10"}, False),
        (("user", "bob"), {"user": "Bob"}, True),
        (("domain", "evil.example"), {"url": "https://cdn.evil.example/x"}, True),
        (("domain", "evil.example"), {"url": "https://notevil.example/x"}, False),
        (("domain", "evil.example"), {"labels": {"query": "evil.example"}}, True),
        (("url", "https://evil.example/a"), {"url": "https://evil.example/a"}, True),
        (("sha256", "ab" * 32), {"labels": {"sha256": ("AB" * 32)}}, True),
    ],
)
def test_an_alert_involves_a_contained_entity_when_it_names_it(
    entity: tuple[str, str], fields: dict[str, Any], involved: bool
) -> None:
    assert monitor.involves(alert(**fields), WatchedEntity(kind=entity[0], value=entity[1])) is involved


def test_evidence_is_the_firing_alerts_after_the_watch_started_that_name_a_contained_entity() -> None:
    watched = [WatchedEntity(kind="ip", value="203.0.113.7")]
    alerts = [
        alert(key="before", src_ip="203.0.113.7", time=T0 - timedelta(seconds=1)),
        alert(key="after", src_ip="203.0.113.7", time=T0 + timedelta(seconds=1)),
        alert(key="ended", src_ip="203.0.113.7", time=T0, status="resolved"),
        alert(key="heartbeat", src_ip="203.0.113.7", time=T0, kind="heartbeat"),
        alert(key="elsewhere", src_ip="198.51.100.1", time=T0),
    ]
    found = monitor.evidence(alerts, watched, since=T0)
    assert [(e.alert_key, e.kind, e.value) for e in found] == [("after", "ip", "203.0.113.7")]


def test_a_watch_needs_a_period_and_a_threshold() -> None:
    with pytest.raises(ValueError, match="positive period"):
        monitor.Watch(period=timedelta(0))
    with pytest.raises(ValueError, match="at least one alert"):
        monitor.Watch(threshold=0)
