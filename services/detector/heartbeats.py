"""The heartbeat watch: a tool's heartbeat that stops coming is an alert Vigil raises itself.

A heartbeat (Alertmanager's Watchdog, a native record of kind ``heartbeat``) says its tool's alerting
works, and is never an incident. Its absence is the alarm, and only the receiver can raise it: the
tool that stopped cannot say so. Each heartbeat's usual interval is learned from its sightings; when
none came for ``factor`` of those intervals, the detector raises a native alert about it (type
service disruption, declared), which goes the way of every alert: silences and windows apply,
correlation, an incident, its commander paged. The next sighting resolves that alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.detector.adapters.base import stable_id
from shared.alerts import Alert, AlertSeverity, AlertStatus

SOURCE = "vigil/heartbeat-watch"
# The durable timer of each heartbeat's patience, moved at each of its firing sightings.
TIMER = "heartbeat-missing"
# How much of the last interval between two sightings the learned interval takes: a smooth mean, so that one
# late delivery does not halve the patience nor one quick resend double the alarm's delay.
LEARNING = 0.25


@dataclass(frozen=True)
class HeartbeatWatch:
    """When a heartbeat counts as missing; ``factor`` 0 turns the watch off."""

    factor: float = 3.0
    # A heartbeat's interval is taken as at least this (two receivers resending at once are not its interval).
    min_interval_s: float = 60.0
    # The interval of a heartbeat seen once: Alertmanager's default repeat_interval (4h).
    first_interval_s: float = 4 * 3600.0

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def patience(self, interval_s: float | None) -> timedelta:
        """How long after its last sighting a heartbeat with this learned interval counts as missing."""
        usual = self.first_interval_s if interval_s is None else max(interval_s, self.min_interval_s)
        return timedelta(seconds=self.factor * usual)

    def due(self, last_seen: datetime, interval_s: float | None) -> datetime:
        return last_seen + self.patience(interval_s)


def missing_alert_id(key: str, since: datetime) -> str:
    """One alert per time a heartbeat went missing: the next time is another alert, not a repeat of this one."""
    return f"missing-{stable_id(key, since.isoformat())}"


def missing_alert(heartbeat: dict[str, Any], *, alert_id: str, since: datetime, status: AlertStatus) -> Alert:
    """The alert Vigil raises about a heartbeat missing since ``since`` (``resolved`` once it came back)."""
    title = f"Heartbeat missing from {heartbeat['source']}: {heartbeat['title']}"
    last = heartbeat["last_seen_at"]
    interval = heartbeat.get("interval_s")
    usual = f"about every {round(interval)} s" if interval else "once so far"
    description = (
        f"Vigil has not received the heartbeat {heartbeat['key']} ({heartbeat['format']}) since "
        f"{last:%Y-%m-%d %H:%M:%S %Z}; it came {usual}. The tool that sends it may be down, or the way "
        "its alerts reach Vigil broken: until it comes back, its alerts may not be reaching anyone."
    )
    return Alert(
        id=alert_id,
        source=SOURCE,
        title=title[:500],
        description=description,
        severity=AlertSeverity.HIGH,
        time=since,
        host=heartbeat.get("host"),
        status=status,
        rule="heartbeat missing",
        category="heartbeat",
        labels={
            "incident_type": "service_disruption",
            "heartbeat": heartbeat["key"][:1000],
            "heartbeat_source": heartbeat["source"],
            "last_seen_at": last.isoformat(),
        },
    )
