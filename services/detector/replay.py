"""What-if: correlation run in memory over alerts seen before, one set of rules compared with another.

Pure: ``Replay`` keeps what the detector keeps in Postgres (the incident collecting each key, the
alerts waiting in each rule's group) in dictionaries, and takes batches as the detector does;
``compare`` says how a candidate grouping differs from another. ``vigil rules test`` compares a
replay of the candidate rules with a replay of the rules in force, not with today's incidents: a
replay knows nothing of incidents resolved, merged or split since, which would show as changes the
rules do not make. The property tests of correlation use both.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from services.detector import domain
from services.detector.classification import Classifier
from services.detector.correlation import CorrelationRules
from services.detector.domain import IncidentState, Waiting
from shared.alerts import Alert
from shared.events import AlertCorrelation


class Replay:
    """Correlation with its state in memory: what the detector decides, batch after batch."""

    def __init__(
        self,
        *,
        rules: CorrelationRules,
        window: timedelta,
        classifier: Classifier | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.rules = rules
        self.window = window
        self.classifier = classifier
        counter = itertools.count(1)
        self.new_id = new_id or (lambda: f"incident-{next(counter)}")
        self.collecting: dict[str, IncidentState] = {}  # correlation key -> the incident collecting it
        self.waiting: dict[str, list[Waiting]] = {}  # group key -> its waiting alerts
        self.incidents: dict[str, IncidentState] = {}
        self.placement: dict[str, str | None] = {}  # alert key -> incident id, None while it waits
        self.reasons: dict[str, AlertCorrelation] = {}

    def feed(self, batch: Sequence[Alert]) -> list[domain.IncidentChange]:
        """Correlate one batch; an alert seen before is a repeat and changes nothing."""
        fresh = list({a.key: a for a in reversed(batch) if a.key not in self.placement}.values())[::-1]
        if not fresh:
            return []
        correlated = domain.correlate_all(
            fresh,
            self.collecting,
            window=self.window,
            new_id=self.new_id,
            classifier=self.classifier,
            rules=self.rules,
            waiting={key: self.waiting[key] for key in self.waiting},
        )
        newest: dict[str, IncidentState] = {}
        for change in correlated.changes:
            incident = change.incident
            self.incidents[incident.id] = incident
            known = newest.get(incident.correlation_key)
            if known is None or incident.last_seen >= known.last_seen:
                newest[incident.correlation_key] = incident
            for alert in change.alerts:
                self.placement[alert.key] = incident.id
                if alert.key in change.reasons:
                    self.reasons[alert.key] = change.reasons[alert.key]
        self.collecting.update(newest)
        for key in correlated.taken:
            self.waiting.pop(key, None)
        for alert, route in correlated.waiting:
            self.waiting.setdefault(route.key, []).append(Waiting(route.member(alert), alert))
            self.placement[alert.key] = None
        return correlated.changes

    def feed_all(self, alerts: Iterable[Alert], *, batch: int = 500) -> Replay:
        """Feed alerts in batches of ``batch``, in the order given."""
        ordered = list(alerts)
        for start in range(0, len(ordered), batch):
            self.feed(ordered[start : start + batch])
        return self

    def groups(self) -> dict[str, frozenset[str]]:
        """Each incident's alerts, by incident id."""
        grouped: dict[str, set[str]] = {}
        for key, incident_id in self.placement.items():
            if incident_id is not None:
                grouped.setdefault(incident_id, set()).add(key)
        return {incident_id: frozenset(keys) for incident_id, keys in grouped.items()}


@dataclass
class Comparison:
    """How a candidate grouping of alerts differs from the current one (the rules in force, replayed)."""

    alerts: int = 0
    incidents_today: int = 0  # the incidents the alerts are in today, as they really went
    incidents_current: int = 0  # with the rules in force, replayed
    incidents_candidate: int = 0
    unchanged: int = 0
    opened: list[str] = field(default_factory=list)  # candidate incidents of alerts that raise nothing now
    merged: dict[str, list[str]] = field(default_factory=dict)  # candidate incident -> current ones it merges
    split: dict[str, list[str]] = field(default_factory=dict)  # current incident -> candidates it splits into
    suppressed: list[str] = field(default_factory=list)  # current incidents whose alerts would all wait
    waiting: int = 0  # alerts that would wait for a condition
    released: int = 0  # alerts waiting now that would join an incident


def compare(
    current: Mapping[str, str | None],
    candidate: Mapping[str, str | None],
    *,
    today: Mapping[str, str | None] | None = None,
) -> Comparison:
    """Compare two placements of the same alerts (alert key -> incident id, None: waiting).

    ``today``: where the alerts really are, counted only (``current`` when not given).
    """
    result = Comparison(alerts=len(current))
    from_today: dict[str, set[str]] = {}  # candidate incident -> current incidents of its alerts
    into: dict[str, set[str]] = {}  # current incident -> candidate incidents of its alerts
    for key, now in current.items():
        then = candidate.get(key)
        if then is not None:
            from_today.setdefault(then, set())
            if now is not None:
                from_today[then].add(now)
            else:
                result.released += 1
        if now is not None:
            into.setdefault(now, set())
            if then is not None:
                into[now].add(then)
            else:
                result.waiting += 1
    result.incidents_current = len(into)
    result.incidents_today = len({i for i in today.values() if i is not None}) if today is not None else len(into)
    result.incidents_candidate = len(from_today)
    for incident, sources in sorted(from_today.items()):
        if not sources:
            result.opened.append(incident)
        elif len(sources) > 1:
            result.merged[incident] = sorted(sources)
    for incident, targets in sorted(into.items()):
        if not targets:
            result.suppressed.append(incident)
        elif len(targets) > 1:
            result.split[incident] = sorted(targets)
        elif from_today[next(iter(targets))] == {incident}:
            result.unchanged += 1
    return result
