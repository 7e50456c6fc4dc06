"""Prometheus metrics of the shared plumbing; label values are bounded, never ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("vigil_events_consumed", "Records fetched from Kafka.", ["service", "topic"])
EVENTS_HANDLED = Counter(
    "vigil_events_handled",
    "Records by outcome: ok, duplicate (already handled), invalid (dead-lettered), skipped (an event type "
    "this version does not know), retry, error.",
    ["service", "outcome"],
)
EVENTS_DEAD_LETTERED = Counter(
    "vigil_events_dead_lettered",
    "Records sent to a dead-letter topic, by machine-readable reason (the vigil_dlq_code header).",
    ["service", "topic", "reason"],
)
HANDLER_DURATION = Histogram(
    "vigil_handler_duration_seconds",
    "Time to handle one batch: database transaction including the handler and outbox writes.",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "vigil_batch_size",
    "Records handled in one transaction.",
    ["service"],
    buckets=(1, 5, 10, 50, 100, 500, 1000, 2000, 5000),
)
CONSUMER_LAG = Gauge(
    "vigil_consumer_lag", "Records behind the partition's high watermark.", ["service", "topic", "partition"]
)
OUTBOX_BACKLOG = Gauge("vigil_outbox_backlog", "Outbox events not yet published.", ["service"])
OUTBOX_PUBLISHED = Counter("vigil_outbox_published", "Outbox events published to Kafka.", ["service"])
TIMERS_FIRED = Counter(
    "vigil_timers", "Durable timers by outcome: fired, retry (handler failed), parked.", ["service", "kind", "outcome"]
)
OUTBOX_PARKED = Counter(
    "vigil_outbox_parked", "Outbox events the broker refused for good, parked for an operator.", ["service"]
)
EFFECTS_QUEUED = Gauge(
    "vigil_effects_queued",
    "Side effects due and waiting for a runner (scheduled ones count once due).",
    ["service", "kind"],
)
EFFECTS_PARKED = Gauge(
    "vigil_effects_parked",
    "Side effects given up after their retries, waiting for an operator (`vigil effects retry`).",
    ["service", "kind"],
)
EFFECTS_RUNNING = Gauge("vigil_effects_running", "Side effects this process is executing now.", ["service", "kind"])
EFFECTS_FINISHED = Counter(
    "vigil_effects_finished",
    "Side-effect attempts by outcome: succeeded, failed (refused for good), parked (gave up after its "
    "retries), retried (failed, tried again later), superseded (lease lost before recording: another "
    "attempt took over).",
    ["service", "kind", "outcome"],
)
EFFECT_DURATION = Histogram(
    "vigil_effect_duration_seconds",
    "Time one side-effect attempt took: the call until its result, error or timeout.",
    ["service", "kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
