"""Escalation policies as data: whom to page, in what order, how long apart, and who hears at the end.

Pure: ``policy_for`` picks a policy, ``pages`` flattens its steps (repeats expanded), ``resolve``
says whom one page reaches given the schedule's order and who was paged already, and
``in_working_hours`` tells whether a working-hours step applies now.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.events import IncidentType, Severity
from shared.yamlfile import YamlFileError, validate_yaml

DEFAULT_ESCALATION = Path(__file__).with_name("escalation.yaml")
_DURATION = re.compile(r"^(\d{1,5})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TARGET = re.compile(r"^(on_call|next_on_call|schedule:[\w.@-]+|group:[\w.@-]+)$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class EscalationError(YamlFileError):
    """An escalation file that cannot be used; the message says why."""


def _seconds(text: str) -> int:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h or 1d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class WorkingHours(_Model):
    time_zone: str = "UTC"
    days: list[Day] = Field(default_factory=lambda: list(DAYS[:5]))
    from_: time = Field(time(9), alias="from")
    to: time = time(18)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class When(_Model):
    types: list[IncidentType] = Field(default_factory=list)
    severities: list[Severity] = Field(default_factory=list)
    services: list[str] = Field(
        default_factory=list, description="Shell-style patterns (`payments-*`) of the services the incident concerns."
    )


class Step(_Model):
    notify: str = Field(description="on_call, next_on_call, schedule:NAME or group:NAME.")
    after: str = Field("0s", description="How long after the previous page.")
    repeat: int = Field(0, ge=0, le=20)
    working_hours: bool = False

    @field_validator("notify")
    @classmethod
    def _target(cls, value: str) -> str:
        if not _TARGET.match(value):
            raise ValueError(f"{value!r} is not on_call, next_on_call, schedule:NAME or group:NAME")
        return value

    @field_validator("after")
    @classmethod
    def _after(cls, value: str) -> str:
        _seconds(value)
        return value


class Fallback(_Model):
    after: str
    notify: list[str] = Field(min_length=1, description="People or groups of the notifications file.")

    @field_validator("after")
    @classmethod
    def _after(cls, value: str) -> str:
        _seconds(value)
        return value


class Policy(_Model):
    name: str = Field(min_length=1)
    when: When = Field(default_factory=When)
    steps: list[Step] = Field(min_length=1)
    fallback: Fallback
    acknowledgements: int = Field(
        1, ge=1, le=5, description="Distinct people who must acknowledge before the chain stops."
    )

    @model_validator(mode="after")
    def _starts_with_the_commander(self) -> Policy:
        first = self.steps[0]
        if first.notify != "on_call" or _seconds(first.after) != 0 or first.working_hours:
            raise ValueError("the first step pages the commander at once: {notify: on_call}")
        return self


class EscalationFile(_Model):
    working_hours: WorkingHours = Field(default_factory=WorkingHours)
    policies: list[Policy] = Field(min_length=1)
    status_updates: dict[Severity, str] = Field(
        default_factory=dict,
        description="Once acknowledged, remind the commander to post a status update this often, per severity.",
    )

    stakeholders: dict[Severity, list[str]] = Field(
        default_factory=dict,
        description="Who receives every status update, per severity, besides the commander and the people with a "
        "role: people or groups of the notifications file.",
    )

    @field_validator("status_updates")
    @classmethod
    def _cadences(cls, cadences: dict[Severity, str]) -> dict[Severity, str]:
        for text in cadences.values():
            _seconds(text)
        return cadences

    @model_validator(mode="after")
    def _last_holds_for_all(self) -> EscalationFile:
        if self.policies[-1].when != When():
            raise ValueError("the last policy must have no `when`, so that every incident has one")
        names = [p.name for p in self.policies]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"policy names repeat: {', '.join(repeated)}")
        return self


def parse_escalation(document: str, *, source: str = "escalation.yaml") -> EscalationFile:
    """Validate the file's text; each problem says `source:line:column: where: why`."""
    return validate_yaml(document, EscalationFile, source=source, raises=EscalationError)


def load_escalation(path: Path = DEFAULT_ESCALATION) -> EscalationFile:
    return parse_escalation(path.read_text(), source=str(path))


# ---- decisions (pure) --------------------------------------------------------------------------


def policy_for(file: EscalationFile, *, incident_type: str, severity: str, services: Collection[str]) -> Policy:
    """The first policy whose `when` holds: any of the incident's services matches a pattern of its `services`."""
    for policy in file.policies:
        w = policy.when
        if (
            (not w.types or incident_type in w.types)
            and (not w.severities or severity in w.severities)
            and (not w.services or any(fnmatchcase(s, p) for s in services for p in w.services))
        ):
            return policy
    return file.policies[-1]  # the last holds for every incident (checked on load)


@dataclass(frozen=True)
class Page:
    notify: str
    after: timedelta
    working_hours: bool


def pages(policy: Policy) -> list[Page]:
    """The policy's steps with their repeats laid out: page 0 is the commander, at detection."""
    return [
        Page(step.notify, timedelta(seconds=_seconds(step.after)), step.working_hours)
        for step in policy.steps
        for _ in range(step.repeat + 1)
    ]


def stakeholders(file: EscalationFile, severity: Severity) -> list[str]:
    return list(file.stakeholders.get(severity, ()))


def status_update_every(file: EscalationFile, severity: Severity) -> timedelta | None:
    text = file.status_updates.get(severity)
    return timedelta(seconds=_seconds(text)) if text else None


def fallback_after(policy: Policy) -> timedelta:
    return timedelta(seconds=_seconds(policy.fallback.after))


def in_working_hours(hours: WorkingHours, at: datetime) -> bool:
    local = at.astimezone(ZoneInfo(hours.time_zone))
    return DAYS[local.weekday()] in hours.days and hours.from_ <= local.time() < hours.to


@dataclass(frozen=True)
class Target:
    """Whom a page reaches: a person who becomes the commander, or a group that is told."""

    recipient: str
    becomes_commander: bool


def resolve(page: Page, *, order: list[str], paged: list[str], on_call_elsewhere: str | None) -> Target | None:
    """Whom ``page`` reaches; None when nobody is left for it (the chain goes on to the next page).

    ``order`` is the incident's schedule's escalation order, ``paged`` who was paged already,
    ``on_call_elsewhere`` whoever is on call in the schedule a ``schedule:NAME`` page names.
    """
    if page.notify == "on_call":
        return Target(order[0], True) if order else None
    if page.notify == "next_on_call":
        left = [person for person in order if person not in paged]
        return Target(left[0], True) if left else None
    if page.notify.startswith("schedule:"):
        return Target(on_call_elsewhere, True) if on_call_elsewhere else None
    return Target(page.notify.removeprefix("group:"), False)
