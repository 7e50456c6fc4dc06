"""The analyzer's pure gathering: every part of an incident's alerts adds to what is known."""

from __future__ import annotations

from services.analyzer import domain
from shared.events import AlertSummary, IncidentSnapshot
from tests.factories import T0, snapshot


def _summary(n: int, **overrides: object) -> AlertSummary:
    base: dict[str, object] = {
        "key": f"suricata:{n}",
        "source": "suricata",
        "title": "ET SCAN Potential SSH Scan",
        "description": f"Inbound SSH scan from 203.0.113.{n}",
        "severity": "medium",
        "time": T0,
        "host": "web-01",
        "src_ip": f"198.51.100.{n}",
    }
    base.update(overrides)
    return AlertSummary.model_validate(base)


def _part(part: int, parts: int, alerts: list[AlertSummary], *, alert_count: int = 4) -> IncidentSnapshot:
    return snapshot(new_alerts=alerts, part=part, parts=parts, alert_count=alert_count)


def test_every_part_adds_its_indicators_hosts_and_users() -> None:
    first = domain.gather(None, _part(1, 2, [_summary(1), _summary(2)]))
    both = domain.gather(first, _part(2, 2, [_summary(3, host="web-02", user="mallory"), _summary(4)]))
    addresses = {i.value for i in both.indicators if i.kind == "ipv4"}
    assert {f"198.51.100.{n}" for n in range(1, 5)} <= addresses
    assert {f"203.0.113.{n}" for n in range(1, 5)} <= addresses
    assert both.alert_count == 4
    # Hosts and users come from the alerts too: a snapshot may list only the first of many.
    assert both.hosts == ["web-01", "web-02"]
    assert both.users == ["deploy", "mallory"]


def test_a_part_carrying_no_new_indicator_keeps_what_was_known() -> None:
    known = domain.gather(None, _part(1, 1, [_summary(1)]))
    again = domain.gather(known, _part(1, 1, [_summary(1)], alert_count=1))
    assert again.indicators == known.indicators
    assert again.alert_count == 4  # never goes back
