"""The sample alerts: the demo's stories and the seeded estate stream, every one a valid native alert."""

from __future__ import annotations

from shared.alerts import Alert
from vigil.demo import KINDS, EstateAlerts, scenarios


def test_the_demo_stories_are_valid_alerts_about_new_hosts_each_round() -> None:
    first, second = scenarios(1), scenarios(2)
    for story in first:
        for alert in story:
            Alert.model_validate(alert)
    hosts = {alert["host"] for story in first for alert in story}
    assert hosts.isdisjoint(alert["host"] for story in second for alert in story)
    shell = first[0][2]
    assert shell["source"] == "falco" and shell["dst_ip"] == "203.0.113.45"
    assert shell["labels"] == {"rule": "Reverse shell", "priority": "Critical"}


def test_the_estate_stream_is_the_same_for_a_seed_and_covers_every_kind() -> None:
    one, two = EstateAlerts(hosts=50, seed=7), EstateAlerts(hosts=50, seed=7)
    two.run = one.run
    stream = [one.make() for _ in range(2000)]
    assert stream == [two.make() for _ in range(2000)]
    assert {body["source"] for _key, body in stream} == {kind.source for kind in KINDS.values()}
    for key, body in stream[:200]:
        alert = Alert.model_validate({**body, "time": "2026-11-24T09:00:00Z"})
        assert key == f"host:{alert.host}".encode()
    assert len({body["id"] for _key, body in stream}) == 2000


def test_estates_of_different_sites_share_no_host() -> None:
    here = {EstateAlerts(hosts=30, seed=1, site="r200").make()[1]["host"] for _ in range(100)}
    there = {EstateAlerts(hosts=30, seed=1, site="r1000").make()[1]["host"] for _ in range(100)}
    assert here.isdisjoint(there)
    assert all(host.startswith("r200-") for host in here)
