"""The responder's own metrics."""

from prometheus_client import Counter

STEPS = Counter(
    "vigil_responder_steps",
    "Response steps entering each state: planned, awaiting_approval, approved, denied, running, succeeded, "
    "failed, refused (a guardrail, the policy or an unfit value), simulated (a dry run: never counted as "
    "succeeded), skipped, cancelled (no longer in a revised plan), rolled_back (its lease ended).",
    ["state"],
)
TRUNCATED = Counter(
    "vigil_responder_plan_actions_truncated",
    "Runnable steps left out of a plan event past its bound (the plan record holds them all).",
)
