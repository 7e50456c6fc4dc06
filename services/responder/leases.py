"""Pure rules of a reversible action's lease: how long it holds, and which changes its state allows.

A lease is active from the moment its action succeeded until its due time, when its undo runs.
People may extend it, make it permanent (no undo until revoked) or revoke it (undo now). An
indicator blocked again within the repeat window gets a longer lease each time, as Wazuh's
repeated offenders do: the n-th lease on a target within the window holds at least the n-th
duration of the ladder (the last one is the cap), and never less than its playbook step says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from shared.events import LeaseState

# Leases still in force: their undo has not run.
IN_FORCE: frozenset[str] = frozenset({"active", "extended", "permanent"})
# What a rollback undoes: the leases in force, and those whose undo failed (the action is still there).
UNDOABLE: frozenset[str] = IN_FORCE | {"revert_failed"}
# What counts as a repeat offender: indicators (a host isolated twice is not escalated).
INDICATOR_KINDS: frozenset[str] = frozenset({"ip", "domain", "url", "sha256"})

Change = Literal["extend", "make_permanent", "revoke"]


@dataclass(frozen=True)
class RepeatOffenders:
    """The ladder of lease durations for a target leased again within ``window``."""

    window: timedelta = timedelta(days=30)
    durations: tuple[int, ...] = (3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600)
    kinds: frozenset[str] = INDICATOR_KINDS

    def __post_init__(self) -> None:
        if not self.durations or any(d <= 0 for d in self.durations):
            raise ValueError("the repeat-offender durations must be positive, and there must be at least one")
        if list(self.durations) != sorted(self.durations):
            raise ValueError("the repeat-offender durations must not shrink: each offence holds at least as long")


def lease_terms(
    step_lease_s: int, *, target_kind: str | None, earlier: int, policy: RepeatOffenders
) -> tuple[int, int]:
    """Return (duration in seconds, offence number) of a new lease on a target with ``earlier`` leases in the window."""
    if target_kind not in policy.kinds:
        return step_lease_s, 1
    ladder = policy.durations[min(earlier, len(policy.durations) - 1)]
    return max(step_lease_s, ladder), earlier + 1


class LeaseRefused(ValueError):
    """The change does not apply to the lease as it stands; the message says why."""


def check_change(state: str, change: Change) -> None:
    """Raise LeaseRefused unless a lease in ``state`` may take ``change``."""
    if state not in IN_FORCE:
        raise LeaseRefused(f"the lease is {state.replace('_', ' ')}: only a lease in force can change")
    if change == "extend" and state == "permanent":
        raise LeaseRefused("the lease is permanent: there is no end to move (revoke it to undo the action)")
    if change == "make_permanent" and state == "permanent":
        raise LeaseRefused("the lease is permanent already")


def extended_due(due_at: datetime | None, now: datetime, by: timedelta) -> datetime:
    """The new end of a lease extended ``by``: from its current end, or from now if that has passed."""
    return max(due_at or now, now) + by


def state_after(change: Change) -> LeaseState:
    return {"extend": "extended", "make_permanent": "permanent", "revoke": "reverting"}[change]  # type: ignore[return-value]
