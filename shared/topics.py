"""Every Kafka topic Vigil uses, declared once with who produces and who consumes it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
# The reporter's windowed counts (services/reporter/stream.py): a consumer group of their own, no ledger.
REPORTER_WINDOWS = "reporter stream windows"


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    event_types: tuple[str, ...]
    partitions: int = 6
    retention_ms: int = 7 * DAY_MS
    cloudevents: bool = True
    # Consumers that handle this topic's events idempotently by their content: their ledger need not
    # keep the events' ids for as long as the topic keeps the events.
    ledger_exempt: tuple[str, ...] = ()


ALERTS_RAW = Topic(
    name="vigil.alerts.raw",
    description="Alerts from monitoring tools and people, in Vigil's native alert JSON (not CloudEvents).",
    producers=("monitoring tools", "vigil alert send", "vigil up --demo"),
    consumers=("detector",),
    event_types=(),
    partitions=12,
    retention_ms=3 * DAY_MS,
    cloudevents=False,
)
ALERTS_DLQ = Topic(
    name="vigil.alerts.dlq",
    description="Raw alerts the detector could not accept: original bytes, reason in `vigil_dlq_*` headers.",
    producers=("detector",),
    consumers=("operators", REPORTER_WINDOWS),
    event_types=(),
    partitions=1,
    retention_ms=30 * DAY_MS,
    cloudevents=False,
)
EVENTS_DLQ = Topic(
    name="vigil.events.dlq",
    description="Events a service could not accept: original bytes and headers, reason in `vigil_dlq_*`.",
    producers=("analyzer", "responder", "coordinator", "reporter"),
    consumers=("operators", REPORTER_WINDOWS),
    event_types=(),
    partitions=1,
    retention_ms=30 * DAY_MS,
    cloudevents=False,
)
INCIDENTS = Topic(
    name="vigil.incidents",
    description="Incidents opened and updated by the detector, their alerts repeated or resolved, incidents "
    "merged into others and alerts detached into new ones.",
    producers=("detector",),
    consumers=("analyzer", "coordinator", "reporter", "responder", REPORTER_WINDOWS),
    event_types=(
        "vigil.incident.detected.v1",
        "vigil.incident.updated.v1",
        "vigil.incident.alerts_changed.v1",
        "vigil.incident.merged.v1",
        "vigil.incident.split.v1",
    ),
)
# Suppressed alerts belong to no incident, and only the reporter wants them (its alert history): a
# topic of their own spares the incidents topic's other consumers events about no incident.
ALERTS_SUPPRESSED = Topic(
    name="vigil.alerts.suppressed",
    description="Alerts the detector stored but held back from incidents (silenced, in a maintenance window or "
    "inhibited), with what held them back, and their ends while held back; keyed by what held them back "
    "(`silence:ID`, `maintenance:ID`, `inhibition:KEY`), so that one silence's events stay in order.",
    producers=("detector",),
    consumers=("reporter",),
    event_types=("vigil.alert.suppressed.v1", "vigil.alert.suppressed_resolved.v1"),
)
ANALYSES = Topic(
    name="vigil.analyses",
    description="Forensic, impact and threat analysis of incidents, and their evidence registers.",
    producers=("analyzer",),
    consumers=("responder", "coordinator", "reporter"),
    event_types=("vigil.incident.analyzed.v1", "vigil.evidence.changed.v1"),
)
RESPONSES = Topic(
    name="vigil.responses",
    description="Response plans, every change of their steps' states, the checks of their effects, leases, "
    "and the watch after containment.",
    producers=("responder",),
    consumers=("coordinator", "reporter"),
    event_types=(
        "vigil.response.planned.v1",
        "vigil.response.step_changed.v2",
        "vigil.response.step_changed.v1",
        "vigil.response.step_validated.v1",
        "vigil.response.lease_changed.v1",
        "vigil.response.containment_ineffective.v1",
        "vigil.response.containment_confirmed.v1",
    ),
)
COORDINATION = Topic(
    name="vigil.coordination",
    description="Escalations to the incident commander, incident state changes, runbook tasks made and done, "
    "suggestions to resolve, and commands rejected (by the coordinator, the responder for approvals, the "
    "detector for merges and detaches).",
    producers=("coordinator", "responder", "detector"),
    consumers=("detector", "reporter", "responder"),
    event_types=(
        "vigil.incident.escalated.v1",
        "vigil.incident.state_changed.v1",
        "vigil.command.rejected.v1",
        "vigil.incident.escalation_exhausted.v1",
        "vigil.incident.resolution_suggested.v1",
        "vigil.incident.edited.v1",
        "vigil.incident.assigned.v1",
        "vigil.incident.change_offered.v1",
        "vigil.incident.tasks_created.v1",
        "vigil.incident.tasks_cancelled.v1",
        "vigil.incident.task_done.v1",
        "vigil.incident.rollback_offered.v1",
    ),
)
EFFECTS = Topic(
    name="vigil.effects",
    description="Outcomes of side effects (webhook calls, mails, commands) run by the services' effects runners.",
    producers=("analyzer", "responder", "coordinator"),
    consumers=("reporter",),
    event_types=("vigil.effect.completed.v1",),
)
COMMANDS = Topic(
    name="vigil.commands",
    description="Operators' commands (acknowledge, resolve, change state, edit, note, assign; approve or deny "
    "a response step, run one on demand; merge incidents, detach alerts), from the API, the CLI or other tools.",
    producers=("coordinator API", "detector API", "responder API", "reporter web view", "operators' tools"),
    consumers=("coordinator", "responder", "reporter", "detector"),
    event_types=(
        "vigil.command.acknowledge.v1",
        "vigil.command.resolve.v1",
        "vigil.command.approve_step.v1",
        "vigil.command.deny_step.v1",
        "vigil.command.run_step.v1",
        "vigil.command.change_state.v1",
        "vigil.command.edit_incident.v1",
        "vigil.command.add_note.v1",
        "vigil.command.assign.v1",
        "vigil.command.merge_incidents.v1",
        "vigil.command.detach_alerts.v1",
    ),
    partitions=3,
    retention_ms=30 * DAY_MS,
    # A merge or detach applied twice is refused the second time by what it finds (already merged, the
    # alerts gone): the detector need not remember command ids for a month beside every raw record's.
    ledger_exempt=("detector",),
)

ALL_TOPICS: tuple[Topic, ...] = (
    ALERTS_RAW,
    ALERTS_DLQ,
    EVENTS_DLQ,
    INCIDENTS,
    ALERTS_SUPPRESSED,
    ANALYSES,
    RESPONSES,
    COORDINATION,
    EFFECTS,
    COMMANDS,
)


# How long after a topic's retention an id is still remembered: a record read just before it
# expired may be redelivered a little later, after a crash or a rebalance.
LEDGER_MARGIN = timedelta(days=1)


def ledger_retention(service: str) -> timedelta:
    """How long a service must remember the ids it processed: longer than any topic it consumes keeps them.

    An event older than that can no longer be redelivered, so its id may be forgotten.
    """
    consumed = [t.retention_ms for t in ALL_TOPICS if service in t.consumers and service not in t.ledger_exempt]
    if not consumed:
        return LEDGER_MARGIN
    return timedelta(milliseconds=max(consumed)) + LEDGER_MARGIN


class TopicNames:
    """Resolves declared topics to their names on one cluster (with the configured prefix)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def __call__(self, topic: Topic) -> str:
        return f"{self.prefix}{topic.name}"

    def topic_for_event(self, event_type: str) -> Topic:
        for topic in ALL_TOPICS:
            if event_type in topic.event_types:
                return topic
        raise KeyError(f"no topic carries {event_type}")


def dead_letter_topic_for(topic_name: str, names: TopicNames) -> Topic:
    """Raw alerts go to the alerts dead-letter topic; events of any other topic to the events one."""
    return ALERTS_DLQ if topic_name == names(ALERTS_RAW) else EVENTS_DLQ


async def ensure_topics(kafka: KafkaSettings, names: TopicNames) -> None:
    """Create every Vigil topic that does not exist yet; safe when several processes race."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                names(t),
                num_partitions=t.partitions,
                replication_factor=kafka.replication_factor,
                topic_configs={"retention.ms": str(t.retention_ms)},
            )
            for t in ALL_TOPICS
            if names(t) not in existing
        ]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                response = None
            # The broker answers per topic; "already exists" means another process won the race.
            failed = [
                f"{error[0]}: error {error[1]}"
                for error in getattr(response, "topic_errors", ())
                if error[1] not in (0, TopicAlreadyExistsError.errno)
            ]
            if failed:
                raise RuntimeError(f"could not create topics: {', '.join(failed)}")
            log.info("created topics %s", [t.name for t in missing])
    finally:
        await admin.close()


async def delete_topics(kafka: KafkaSettings, names: TopicNames) -> None:
    """Delete every Vigil topic under the names' prefix: what a test or benchmark run created for itself."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [names(t) for t in ALL_TOPICS if names(t) in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
