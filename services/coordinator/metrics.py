"""The coordinator's own metrics."""

from prometheus_client import Counter

NOTIFICATIONS = Counter(
    "vigil_coordinator_notifications",
    "Notices whose delivery ended, by channel (as configured), kind (escalation, update, ...) and outcome: "
    "succeeded, failed (refused for good) or parked (out of attempts).",
    ["channel", "kind", "outcome"],
)

UNADDRESSED = Counter(
    "vigil_coordinator_notices_unaddressed",
    "Notices decided for someone the notifications file has no address for (not sent to them), by kind: "
    "each one, however often the logs said so (a decision undone and made again counts again).",
    ["kind"],
)
