"""The incident lifecycle as data: states, transitions and their guards, read from ``lifecycle.yaml``.

Pure: ``move`` decides whether an incident may go from its state to another, given what the
guards look at (``GuardFacts``), and says why not — naming the states it may go to instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import InvalidTransition
from shared.events import IncidentState, Severity
from shared.yamlfile import YamlFileError, validate_yaml

DEFAULT_LIFECYCLE = Path(__file__).with_name("lifecycle.yaml")

# Response step states that count as "ended well" for a response_steps_done guard.
STEP_DONE = frozenset({"succeeded", "simulated", "skipped", "cancelled", "rolled_back"})
STEP_BAD = frozenset({"failed", "denied", "refused"})


class LifecycleError(YamlFileError):
    """A lifecycle file that cannot be used; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Guard(_Model):
    kind: Literal["response_steps_done", "tasks_done", "containment_confirmed"]
    phase: str = Field("containment", min_length=1)
    severities: list[Severity] = Field(default_factory=list, description="Only for these severities; empty: all.")


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
class GuardFacts:
    """What the guards look at for one incident."""

    severity: Severity
    # Per phase, the states of the incident's response steps in it.
    step_states: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Per phase, (required tasks done, required tasks in all).
    tasks: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # What the responder's watch after containment found: confirmed, ineffective, or None (no watch ended).
    containment: str | None = None


def _guard_failure(guard: Guard, facts: GuardFacts) -> str | None:
    if guard.severities and facts.severity not in guard.severities:
        return None
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
    failures = [f for g in chosen.guards if (f := _guard_failure(g, facts))]
    if failures:
        raise InvalidTransition(f"cannot {chosen.name} yet: {'; '.join(failures)}")
    return chosen
