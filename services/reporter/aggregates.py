"""Pure aggregates of the response over many incidents: MTTx, resolution, effectiveness, false positives,
SLA breaches, per severity, type, source or business service."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from services.reporter.measures import MEASURES, Measure, SlaTargets, breaches, durations, mean, ratio

Dimension = Literal["severity", "type", "source", "service", "all"]
DIMENSIONS: tuple[Dimension, ...] = ("severity", "type", "source", "service", "all")
ENDED = ("resolved", "closed")
FALSE_POSITIVE = "false_positive"


@dataclass(frozen=True)
class IncidentTimes:
    """What the aggregates need of one incident."""

    id: str
    severity: str | None
    type: str | None
    state: str
    resolution: str | None
    milestones: Mapping[str, datetime | None]
    sources: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    executed: int = 0
    validated: int = 0

    @property
    def ended(self) -> bool:
        return self.state in ENDED or self.milestones.get("resolved") is not None

    def groups(self, by: Dimension) -> tuple[str, ...]:
        """The groups it counts in: one severity or type; each of its sources or services."""
        match by:
            case "severity":
                return (self.severity or "unknown",)
            case "type":
                return (self.type or "unknown",)
            case "source":
                return self.sources or ("unknown",)
            case "service":
                return self.services or ("none",)
            case _:
                return ("all",)


@dataclass
class GroupSummary:
    group: str
    incidents: int = 0
    resolved: int = 0
    false_positives: int = 0
    executed_actions: int = 0
    validated_actions: int = 0
    breached: int = 0  # incidents that missed at least one target
    breaches: dict[str, int] = field(default_factory=dict)
    means_s: dict[Measure, float | None] = field(default_factory=dict)

    @property
    def resolution_rate(self) -> float | None:
        return ratio(self.resolved, self.incidents)

    @property
    def effectiveness(self) -> float | None:
        """Actions validated (they held) over actions executed."""
        return ratio(self.validated_actions, self.executed_actions)

    @property
    def false_positive_rate(self) -> float | None:
        return ratio(self.false_positives, self.resolved)

    def as_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "incidents": self.incidents,
            "resolved": self.resolved,
            "resolution_rate": self.resolution_rate,
            "false_positives": self.false_positives,
            "false_positive_rate": self.false_positive_rate,
            "executed_actions": self.executed_actions,
            "validated_actions": self.validated_actions,
            "effectiveness": self.effectiveness,
            "sla_breached": self.breached,
            "sla_breaches": dict(self.breaches),
            "mean_s": dict(self.means_s),
        }


def summarize(
    incidents: Iterable[IncidentTimes], *, by: Dimension, sla: SlaTargets, now: datetime
) -> list[GroupSummary]:
    """One summary per group, the largest first."""
    groups: dict[str, GroupSummary] = {}
    samples: dict[str, dict[Measure, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    for incident in incidents:
        gaps = durations(incident.milestones)
        missed = breaches(incident.milestones, incident.severity, sla, now=now)
        for name in incident.groups(by):
            summary = groups.setdefault(name, GroupSummary(name))
            summary.incidents += 1
            summary.resolved += incident.ended
            summary.false_positives += incident.ended and incident.resolution == FALSE_POSITIVE
            summary.executed_actions += incident.executed
            summary.validated_actions += incident.validated
            summary.breached += bool(missed)
            for breach in missed:
                summary.breaches[breach.measure] = summary.breaches.get(breach.measure, 0) + 1
            for measure, seconds in gaps.items():
                samples[name][measure].append(seconds)
    for name, summary in groups.items():
        summary.means_s = {measure: mean(samples[name][measure]) for measure in MEASURES}
    return sorted(groups.values(), key=lambda g: (-g.incidents, g.group))


@dataclass(frozen=True)
class FalsePositiveRate:
    key: str
    resolved: int
    false_positives: int

    @property
    def rate(self) -> float | None:
        return ratio(self.false_positives, self.resolved)


def false_positive_rates(
    incidents: Iterable[IncidentTimes], *, by: Literal["source", "rule"]
) -> list[FalsePositiveRate]:
    """Per alert source or detection rule: of the ended incidents it fed, how many were false positives."""
    resolved: dict[str, int] = defaultdict(int)
    false: dict[str, int] = defaultdict(int)
    for incident in incidents:
        if not incident.ended:
            continue
        for key in incident.sources if by == "source" else incident.rules:
            resolved[key] += 1
            false[key] += incident.resolution == FALSE_POSITIVE
    rates = [FalsePositiveRate(key, resolved[key], false[key]) for key in resolved]
    return sorted(rates, key=lambda r: (-(r.rate or 0), -r.resolved, r.key))


def open_breaches(incidents: Sequence[IncidentTimes], *, sla: SlaTargets, now: datetime) -> dict[tuple[str, str], int]:
    """Open incidents whose clock has run past a target, by (severity, measure)."""
    found: dict[tuple[str, str], int] = defaultdict(int)
    for incident in incidents:
        if incident.ended:
            continue
        for breach in breaches(incident.milestones, incident.severity, sla, now=now):
            if breach.running:
                found[(incident.severity or "unknown", breach.measure)] += 1
    return dict(found)
