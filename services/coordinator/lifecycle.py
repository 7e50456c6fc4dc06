"""The incident lifecycle as data: states, transitions and their guards, read from ``lifecycle.yaml``.

Pure: ``move`` decides whether an incident may go from its state to another, given what the
guards look at (``GuardFacts``), and says why not — naming the states it may go to instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.coordinator.tasks import Duration, duration
from shared.errors import InvalidTransition
from shared.events import IncidentState, Severity
from shared.yamlfile import YamlFileError, validate_yaml

DEFAULT_LIFECYCLE = Path(__file__).with_name("lifecycle.yaml")

# Response step states that count as "ended well" for a response_steps_done guard.
STEP_DONE = frozenset({"succeeded", "simulated", "skipped", "cancelled", "rolled_back"})
STEP_BAD = frozenset({"failed", "denied", "refused"})
# Lease states of a reversible action that is not settled: its undo is running, or it failed and the
# action is still in force.
LEASE_UNSETTLED = ("reverting", "revert_failed")
# The guards that read a runbook phase (`phase`); the others look at the incident as a whole.
PHASED_GUARDS = frozenset({"response_steps_done", "tasks_done"})

GuardKind = Literal[
    "response_steps_done",
    "tasks_done",
    "containment_confirmed",
    "no_alerts_firing",
    "alerts_quiet",
    "leases_settled",
]


class LifecycleError(YamlFileError):
    """A lifecycle file that cannot be used; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Guard(_Model):
    kind: GuardKind
    phase: str = Field("containment", min_length=1)
    severities: list[Severity] = Field(default_factory=list, description="Only for these severities; empty: all.")
    resolutions: list[str] = Field(
        default_factory=list,
        description="Only when the incident is resolved (or being resolved) as one of these; empty: however.",
    )
    for_: Duration | None = Field(None, alias="for", description="alerts_quiet: how long without a new alert.")

    @model_validator(mode="after")
    def _options(self) -> Guard:
        if self.kind == "alerts_quiet" and self.for_ is None:
            raise ValueError(
                "alerts_quiet needs `for`: how long no alert may come, e.g. {kind: alerts_quiet, for: 30m}"
            )
        if self.kind != "alerts_quiet" and self.for_ is not None:
            raise ValueError(f"`for` is an option of alerts_quiet only, not of {self.kind}")
        # containment_confirmed has always let `phase` by unread: files that give it one still load.
        if "phase" in self.model_fields_set and self.kind not in PHASED_GUARDS | {"containment_confirmed"}:
            raise ValueError(f"{self.kind} looks at no runbook phase: remove `phase`")
        if repeated := sorted({r for r in self.resolutions if self.resolutions.count(r) > 1}):
            raise ValueError(f"resolutions repeat: {', '.join(repeated)}")
        return self

    @property
    def quiet_for(self) -> timedelta:
        """alerts_quiet: how long the incident must have had no new alert, nor a repeat."""
        return duration(self.for_) if self.for_ else timedelta(0)


class Transition(_Model):
    name: str = Field(pattern=r"^[a-z][a-z_]*$")
    from_: list[IncidentState] = Field(alias="from", min_length=1)
    to: IncidentState
    guards: list[Guard] = Field(default_factory=list)
    resolution: Literal["required", "none"] = "none"


class Lifecycle(_Model):
    initial: IncidentState
    states: list[IncidentState] = Field(min_length=2)
    ended: list[IncidentState] = Field(min_length=1)
    resolutions: list[str] = Field(min_length=1)
    transitions: list[Transition] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Lifecycle:
        known = set(self.states)
        names = [t.name for t in self.transitions]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"transition names repeat: {', '.join(repeated)}")
        used = {self.initial, *self.ended} | {s for t in self.transitions for s in (*t.from_, t.to)}
        if missing := sorted(s.value for s in used - known):
            raise ValueError(f"states used but not listed in `states`: {', '.join(missing)}")
        reachable = {self.initial}
        while True:
            more = {t.to for t in self.transitions if reachable & set(t.from_)} - reachable
            if not more:
                break
            reachable |= more
        if unreachable := sorted(s.value for s in known - reachable):
            raise ValueError(f"no transition reaches: {', '.join(unreachable)}")
        for t in self.transitions:
            for n, guard in enumerate(t.guards):
                if unknown := [r for r in guard.resolutions if r not in self.resolutions]:
                    raise ValueError(
                        f"transition {t.name}, guard {n} ({guard.kind}): resolutions {', '.join(unknown)} are not "
                        f"in `resolutions` ({', '.join(self.resolutions)})"
                    )
                if guard.resolutions and t.resolution != "required" and not set(t.from_) & set(self.ended):
                    raise ValueError(
                        f"transition {t.name}, guard {n} ({guard.kind}): `resolutions` would never apply: the "
                        "transition takes no resolution and leaves no ended state"
                    )
        return self

    def by_name(self, name: str) -> Transition | None:
        return next((t for t in self.transitions if t.name == name), None)

    def allowed_from(self, state: IncidentState) -> list[Transition]:
        return [t for t in self.transitions if state in t.from_]

    def is_ended(self, state: IncidentState) -> bool:
        return state in self.ended


def parse_lifecycle(document: str, *, source: str = "lifecycle.yaml") -> Lifecycle:
    """Validate the file's text; each problem says `source:line:column: where: why`."""
    return validate_yaml(document, Lifecycle, source=source, raises=LifecycleError)


def load_lifecycle(path: Path = DEFAULT_LIFECYCLE) -> Lifecycle:
    return parse_lifecycle(path.read_text(), source=str(path))


# ---- deciding a move (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    """A reversible action's lease as the guards see it: which step, and its state."""

    step_id: str
    name: str  # the step's name and item, as people know it: "Block address: 203.0.113.7"
    state: str


@dataclass(frozen=True)
class GuardFacts:
    """What the guards look at for one incident."""

    severity: Severity
    # Per phase, the states of the incident's response steps in it.
    step_states: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Per phase, (required tasks done, required tasks in all).
    tasks: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # What the responder's watch after containment found: confirmed, ineffective, or None (no watch ended).
    containment: str | None = None
    # Named in refusals, so that the command they suggest can be run as it stands.
    incident_id: str = "ID"
    # How the incident was resolved; what a transition that takes a resolution is given wins (``move``).
    resolution: str | None = None
    # The incident's alerts still firing as the detector last counted them; None: never counted (an
    # incident from before the coordinator kept the count), which holds nothing up.
    firing: int | None = None
    # When an alert of the incident was last seen, new or repeated; None: unknown, which holds nothing up.
    last_alert_at: datetime | None = None
    # When the move is asked for: what a quiet period is measured to (None: the clock now).
    now: datetime | None = None
    # The incident's reversible actions with a lease.
    leases: Sequence[Lease] = ()


def _ago(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    if minutes < 1:  # a sighting stamped a little ahead of the coordinator's clock too
        return "under a minute ago"
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes > 1 else ''} ago"
    return f"{minutes // 60} hours ago"


def _guard_failure(guard: Guard, facts: GuardFacts, resolution: str | None = None) -> str | None:
    if guard.severities and facts.severity not in guard.severities:
        return None
    if guard.resolutions and resolution not in guard.resolutions:
        return None
    incident = facts.incident_id
    if guard.kind == "no_alerts_firing":
        if not facts.firing:
            return None
        plural = "s" if facts.firing > 1 else ""
        return f"{facts.firing} alert{plural} still firing (vigil incidents show {incident})"
    if guard.kind == "alerts_quiet":
        if facts.last_alert_at is None:
            return None
        now = facts.now or datetime.now(UTC)
        quiet_from = facts.last_alert_at + guard.quiet_for
        if now >= quiet_from:
            return None
        return (
            f"last alert {_ago(now - facts.last_alert_at)}; quiet for {guard.for_} first "
            f"(from {quiet_from.astimezone(UTC):%Y-%m-%d %H:%M} UTC if no alert comes)"
        )
    if guard.kind == "leases_settled":
        unsettled = [lease for lease in facts.leases if lease.state in LEASE_UNSETTLED]
        said = [
            f"lease of {lease.name!r} is revert_failed: the action is still in force; undo it by hand, or try "
            f"its undo again (vigil response rollback {incident})"
            if lease.state == "revert_failed"
            else f"lease of {lease.name!r} is reverting: wait for its undo to end (vigil lease list {incident})"
            for lease in unsettled[:3]
        ]
        if len(unsettled) > 3:
            said.append(f"and {len(unsettled) - 3} more lease(s) not settled (vigil lease list {incident})")
        return "; ".join(said) or None
    if guard.kind == "containment_confirmed":
        if facts.containment == "confirmed":
            return None
        if facts.containment == "ineffective":
            return "the responder found the containment ineffective: alerts on the contained entities kept coming"
        return "the responder has not confirmed the containment yet (its watch after containment is not over)"
    if guard.kind == "response_steps_done":
        states = list(facts.step_states.get(guard.phase, ()))
        open_ = [s for s in states if s not in STEP_DONE]
        if open_:
            bad = sum(s in STEP_BAD for s in open_)
            return (
                f"{len(open_)} {guard.phase} response step(s) have not ended well"
                + (f" ({bad} failed, denied or refused)" if bad else "")
                + " (vigil actions list)"
            )
        return None
    done, total = facts.tasks.get(guard.phase, (0, 0))
    if done < total:
        phase = guard.phase.replace("_", "-")
        return f"{total - done} of {total} required {phase} task(s) are not done (vigil tasks list)"
    return None


def move(
    lifecycle: Lifecycle,
    state: str,
    *,
    to: str | None = None,
    name: str | None = None,
    resolution: str | None = None,
    facts: GuardFacts,
) -> Transition:
    """The transition from ``state`` to state ``to`` (or by its ``name``), or InvalidTransition saying why not."""
    try:
        current = IncidentState(state)
    except ValueError:
        raise InvalidTransition(
            f"the incident is in state {state!r}, which this version of Vigil does not know "
            "(a newer coordinator set it)"
        ) from None
    allowed = lifecycle.allowed_from(current)
    choices = ", ".join(f"{t.name} (to {t.to.value})" for t in allowed) or "none: it has ended"
    chosen = next(
        (t for t in allowed if (name is not None and t.name == name) or (to is not None and t.to.value == to)), None
    )
    if chosen is None:
        if to is not None:
            raise InvalidTransition(f"cannot go to {to} from {current.value}; allowed: {choices}")
        raise InvalidTransition(f"cannot {name} an incident that is {current.value}; allowed: {choices}")
    if chosen.resolution == "required":
        if resolution is None:
            raise InvalidTransition(f"{chosen.name} needs a resolution: one of {', '.join(lifecycle.resolutions)}")
        if resolution not in lifecycle.resolutions:
            raise InvalidTransition(f"resolution {resolution!r} is not one of {', '.join(lifecycle.resolutions)}")
    elif resolution is not None:
        raise InvalidTransition(f"{chosen.name} takes no resolution")
    # A guard limited to some resolutions looks at the one this move gives, else at how the incident
    # ended (closing or reopening it); an incident not resolved has none, and such a guard passes over it.
    resolved_as = resolution if chosen.resolution == "required" else None
    if resolved_as is None and lifecycle.is_ended(current):
        resolved_as = facts.resolution
    failures = [f for g in chosen.guards if (f := _guard_failure(g, facts, resolved_as))]
    if failures:
        raise InvalidTransition(f"cannot {chosen.name} yet: {'; '.join(failures)}")
    return chosen
