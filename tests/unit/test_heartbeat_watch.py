"""The heartbeat watch's pure decisions: when a heartbeat counts as missing, and the alert raised about it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.detector.heartbeats import SOURCE, HeartbeatWatch, missing_alert, missing_alert_id

SEEN = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def _beat(**changed: Any) -> dict[str, Any]:
    beat = {
        "key": "alertmanager/deadmansswitch:e3b0c442",
        "source": "alertmanager/deadmansswitch",
        "format": "alertmanager",
        "title": "Watchdog",
        "host": None,
        "last_seen_at": SEEN,
        "interval_s": 60.0,
    }
    return beat | changed


def test_a_heartbeat_is_missing_after_its_factor_of_usual_intervals() -> None:
    watch = HeartbeatWatch(factor=3, min_interval_s=60, first_interval_s=14_400)
    assert watch.due(SEEN, 120.0) == SEEN + timedelta(seconds=360)
    # Resent quicker than the floor (two receivers at once): the floor is its interval.
    assert watch.due(SEEN, 2.0) == SEEN + timedelta(seconds=180)
    # Seen once: Alertmanager's default repeat interval is assumed.
    assert watch.due(SEEN, None) == SEEN + timedelta(hours=12)
    assert watch.enabled and not HeartbeatWatch(factor=0).enabled


def test_the_alert_about_a_missing_heartbeat_says_which_since_when_and_is_a_service_disruption() -> None:
    since = SEEN + timedelta(minutes=3)
    alert_id = missing_alert_id(_beat()["key"], since)
    raised = missing_alert(_beat(), alert_id=alert_id, since=since, status="firing")
    assert (raised.source, raised.id, raised.status, raised.kind) == (SOURCE, alert_id, "firing", "alert")
    assert raised.title == "Heartbeat missing from alertmanager/deadmansswitch: Watchdog"
    assert raised.severity == "high" and raised.time == since
    assert raised.labels["incident_type"] == "service_disruption"
    assert raised.labels["heartbeat"] == _beat()["key"]
    assert "about every 60 s" in raised.description and "2026-11-20 10:00:00" in raised.description
    resolved = missing_alert(_beat(), alert_id=alert_id, since=since, status="resolved")
    assert resolved.key == raised.key and resolved.status == "resolved"
    first = missing_alert(_beat(interval_s=None), alert_id=alert_id, since=since, status="firing")
    assert "once so far" in first.description


def test_each_time_a_heartbeat_goes_missing_is_an_alert_of_its_own() -> None:
    key = _beat()["key"]
    assert missing_alert_id(key, SEEN) == missing_alert_id(key, SEEN)
    assert missing_alert_id(key, SEEN) != missing_alert_id(key, SEEN + timedelta(hours=1))
    assert missing_alert_id(key, SEEN) != missing_alert_id(key + "x", SEEN)
