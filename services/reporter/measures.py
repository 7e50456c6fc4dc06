"""Pure measures of the response: milestones, time-to-X, SLA targets and their breaches.

Each time-to-X is the gap between two milestones of one incident (first alert, detected,
acknowledged, contained, recovered, resolved); a milestone is the first time the incident got there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from shared.events import IncidentState, Severity

Milestone = Literal["first_alert", "detected", "acknowledged", "contained", "recovered", "resolved"]
MILESTONES: tuple[Milestone, ...] = ("first_alert", "detected", "acknowledged", "contained", "recovered", "resolved")

# Entering a state reaches its milestone and any it implies: a commander who contains an incident
# has acknowledged it. Containment is not implied by resolving: a false positive is never contained.
_STATE_MILESTONES: dict[IncidentState, tuple[Milestone, ...]] = {
    IncidentState.ACKNOWLEDGED: ("acknowledged",),
    IncidentState.INVESTIGATING: ("acknowledged",),
    IncidentState.CONTAINED: ("acknowledged", "contained"),
    IncidentState.ERADICATED: ("acknowledged", "contained"),
    IncidentState.RECOVERED: ("acknowledged", "contained", "recovered"),
    IncidentState.RESOLVED: ("acknowledged", "resolved"),
    IncidentState.CLOSED: ("acknowledged", "resolved"),
}

Measure = Literal["time_to_detect", "time_to_acknowledge", "time_to_contain", "time_to_recover", "time_to_resolve"]
# Each measure: from one milestone to another.
MEASURES: dict[Measure, tuple[Milestone, Milestone]] = {
    "time_to_detect": ("first_alert", "detected"),
    "time_to_acknowledge": ("detected", "acknowledged"),
    "time_to_contain": ("detected", "contained"),
    "time_to_recover": ("detected", "recovered"),
    "time_to_resolve": ("detected", "resolved"),
}
# The usual names of their means.
MEAN_NAMES: dict[Measure, str] = {
    "time_to_detect": "MTTD",
    "time_to_acknowledge": "MTTA",
    "time_to_contain": "MTTC",
    "time_to_recover": "MTTRec",
    "time_to_resolve": "MTTR",
}


# The resolution of an incident merged into another: it ended then, but nobody acknowledged it as itself
# (its alerts, its history and its measures are the survivor's).
MERGED = "merged"


def milestones_reached(state: IncidentState, resolution: str | None = None) -> tuple[Milestone, ...]:
    """The milestones an incident reaches on entering a state (with the resolution it entered it with)."""
    reached = _STATE_MILESTONES.get(state, ())
    if resolution == MERGED:
        return tuple(m for m in reached if m == "resolved")
    return reached


def durations(milestones: Mapping[str, datetime | None]) -> dict[Measure, float | None]:
    """Seconds of each time-to-X, None where either milestone is missing; never negative."""
    result: dict[Measure, float | None] = {}
    for measure, (start, end) in MEASURES.items():
        began, ended = milestones.get(start), milestones.get(end)
        result[measure] = max(0.0, (ended - began).total_seconds()) if began and ended else None
    return result


# ---- SLA targets ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> object:
    """`90s`, `15m`, `4h`, `2d`, or a number of seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 90s, 15m, 4h or 2d")
        return float(match[1]) * _UNIT_S[match[2]]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class Targets(BaseModel):
    """Targets of one severity; a measure without one has no SLA."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time_to_acknowledge: Seconds | None = None
    time_to_contain: Seconds | None = None
    time_to_recover: Seconds | None = None
    time_to_resolve: Seconds | None = None

    def of(self, measure: Measure) -> float | None:
        return getattr(self, measure, None)  # type: ignore[no-any-return]


class SlaTargets(BaseModel):
    """SLA targets per severity (``services/reporter/sla.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    targets: dict[Severity, Targets]

    def for_severity(self, severity: str | None) -> Targets:
        try:
            return self.targets.get(Severity(severity or ""), Targets())
        except ValueError:
            return Targets()


DEFAULT_SLA = SlaTargets(
    targets={
        Severity.SEV1: Targets(time_to_acknowledge=15 * 60, time_to_contain=4 * 3600, time_to_resolve=24 * 3600),
        Severity.SEV2: Targets(time_to_acknowledge=30 * 60, time_to_contain=8 * 3600, time_to_resolve=72 * 3600),
        Severity.SEV3: Targets(time_to_acknowledge=4 * 3600, time_to_resolve=7 * 86400),
        Severity.SEV4: Targets(time_to_acknowledge=24 * 3600, time_to_resolve=30 * 86400),
    }
)


class SlaFileError(ValueError):
    """An SLA file that cannot be used, with the reason."""


SHIPPED_SLA = Path(__file__).with_name("sla.yaml")


def load_sla(path: Path | None = None) -> SlaTargets:
    """Read SLA targets from YAML; no path means the shipped file."""
    path = path or SHIPPED_SLA
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SlaFileError(f"{path}: {exc}") from exc
    try:
        return SlaTargets.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SlaFileError(f"{path}: {problems}") from exc


@dataclass(frozen=True)
class Breach:
    measure: Measure
    target_s: float
    actual_s: float
    running: bool  # the milestone is not reached yet and the target has passed


def breaches(
    milestones: Mapping[str, datetime | None], severity: str | None, sla: SlaTargets, *, now: datetime
) -> list[Breach]:
    """Each target an incident missed, or is missing while its clock runs (an open incident)."""
    targets = sla.for_severity(severity)
    ended = milestones.get("resolved") is not None
    found = []
    for measure, (start, end) in MEASURES.items():
        target = targets.of(measure)
        began = milestones.get(start)
        if target is None or began is None:
            continue
        reached = milestones.get(end)
        if reached is not None:
            actual = (reached - began).total_seconds()
            if actual > target:
                found.append(Breach(measure, target, actual, running=False))
        elif not ended:
            # A resolved incident that never reached this milestone (a false positive never contained)
            # no longer runs the clock.
            actual = (now - began).total_seconds()
            if actual > target:
                found.append(Breach(measure, target, actual, running=True))
    return found


def ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def humanize(seconds: float | None) -> str:
    """`3725` -> `1h 2m`; None -> `-`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    delta = timedelta(seconds=round(seconds))
    days, rest = delta.days, delta.seconds
    hours, minutes = rest // 3600, rest % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {rest % 60}s"


def mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
