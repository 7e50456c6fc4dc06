"""The responder's own metrics."""

from prometheus_client import Counter

STEPS = Counter(
    "vigil_responder_steps",
    "Playbook steps of new plans, after for_each expansion, by outcome: planned (carried by the plan event), "
    "refused (a value failed its type or a template failed), skipped (a false condition or nothing to "
    "iterate) or truncated (runnable, but past the plan event's bound).",
    ["outcome"],
)
