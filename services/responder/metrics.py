"""The responder's own metrics."""

from prometheus_client import Counter, Histogram

STEPS = Counter(
    "vigil_responder_steps",
    "Response steps entering each state: planned, awaiting_approval, approved, denied, running, succeeded, "
    "failed, refused (a guardrail, the policy or an unfit value), simulated (a dry run: never counted as "
    "succeeded), skipped, cancelled (no longer in a revised plan), rolled_back (its lease ended).",
    ["state"],
)
ACTIONS = Counter(
    "vigil_responder_actions",
    "Response actions that ended, by connector and outcome: succeeded, failed, refused, denied, simulated, "
    "skipped, cancelled.",
    ["connector", "outcome"],
)
# The states in which a step has ended, each an outcome of ACTIONS.
ACTION_OUTCOMES = frozenset({"succeeded", "failed", "refused", "denied", "simulated", "skipped", "cancelled"})
UNPLANNED = Counter(
    "vigil_responder_unplanned",
    "Analyses no playbook matches (by type and severity): nothing is planned for them; steps may still be run "
    "on demand.",
    ["type", "severity"],
)
TRUNCATED = Counter(
    "vigil_responder_plan_actions_truncated",
    "Runnable steps left out of a plan event past its bound (the plan record holds them all).",
)
VALIDATIONS = Counter(
    "vigil_responder_validations",
    "Checks of an action's (of=action) or an undo's (of=undo) effect, by outcome: validated, failed, unchecked "
    "(no check configured).",
    ["of", "outcome"],
)
LEASES = Counter(
    "vigil_responder_lease_changes",
    "Lease changes: created, extended, made_permanent, revoked, expired, rolled_back, reverted, revert_failed.",
    ["change"],
)
LEASE_EXPIRY_DELAY = Histogram(
    "vigil_responder_lease_expiry_delay_seconds",
    "How late a lease's end was acted on (its undo sent), after its due time.",
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
)
WATCHES = Counter(
    "vigil_responder_containment_watches",
    "Watches after containment, by how they ended: confirmed (quiet) or ineffective (alerts kept coming).",
    ["outcome"],
)
