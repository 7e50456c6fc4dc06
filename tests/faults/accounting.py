"""The accounting check after a fault: nothing lost, nothing doubled, nothing left pending, no lag.

Each check compares what was sent or done with what the services stored and published, and names
what differs; ``Accounting.table()`` prints every figure, the suite's record of the run.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared.cloudevents import decode
from shared.errors import InvalidMessage
from shared.events import (
    EffectCompleted,
    Event,
    IncidentDetected,
    IncidentEscalated,
    IncidentStateChanged,
    ResponsePlanned,
    ResponseStepChanged,
    ResponseStepsChanged,
)
from shared.kafka import group_id
from shared.settings import SERVICE_NAMES, VigilSettings
from shared.topics import ALERTS_RAW, ALL_TOPICS, TopicNames
from tests.faults.harness import Delivery, Feed, Kill, read_topic, value_digest


@dataclass(frozen=True)
class Line:
    check: str
    expected: object
    found: object
    ok: bool
    detail: str = ""


@dataclass
class Accounting:
    """Lines of the accounting table; a line whose ``ok`` is False fails the run."""

    title: str
    lines: list[Line] = field(default_factory=list)

    def expect(self, check: str, expected: object, found: object, detail: str = "") -> None:
        self.lines.append(Line(check, expected, found, expected == found, detail))

    def note(self, check: str, found: object, detail: str = "") -> None:
        """A figure that explains the run without being judged."""
        self.lines.append(Line(check, "-", found, True, detail))

    def failures(self) -> list[Line]:
        return [line for line in self.lines if not line.ok]

    def table(self) -> str:
        width = max(len(line.check) for line in self.lines)
        rows = [f"== {self.title} ==", f"{'check':<{width}}  {'expected':>10}  {'found':>10}  ok"]
        for line in self.lines:
            mark = "ok" if line.ok else "FAIL"
            rows.append(f"{line.check:<{width}}  {line.expected!s:>10}  {line.found!s:>10}  {mark}")
            if line.detail and not line.ok:
                rows.append(f"    {line.detail[:1500]}")
        return "\n".join(rows)

    def verify(self) -> None:
        print("\n" + self.table(), flush=True)
        if failed := self.failures():
            raise AssertionError(
                "accounting failed: " + "; ".join(f"{f.check}: expected {f.expected}, found {f.found}" for f in failed)
            )


# ---- alerts --------------------------------------------------------------------------------------


async def account_alerts(book: Accounting, conn: asyncpg.Connection, settings: VigilSettings, feed: Feed) -> None:
    """Every alert published is stored exactly once, its repeats as often as the topic holds it again."""
    names = TopicNames(settings.topic_prefix)
    on_topic: Counter[str] = Counter()
    foreign = 0
    for record in await read_topic(settings, names(ALERTS_RAW)):
        key = feed.by_value.get(value_digest(record.value))
        if key is None:
            foreign += 1
        else:
            on_topic[key] += 1
    sent = set(feed.keys)
    book.expect("alerts published", len(feed.keys), len(sent), "two alerts of the feed share a key")
    book.expect("alerts on the raw topic", len(sent), len(on_topic), f"missing {sorted(sent - set(on_topic))[:5]}")
    book.note("records the producer sent twice", sum(on_topic.values()) - len(on_topic))

    rows = await conn.fetch(
        """SELECT key, repeats, 'incident' AS place, incident_id FROM detector_alerts WHERE NOT retired
           UNION ALL SELECT key, repeats, 'waiting', NULL FROM detector_waiting
           UNION ALL SELECT key, repeats, 'suppressed', NULL FROM detector_suppressed_alerts
                     WHERE released_at IS NULL"""
    )
    stored: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        stored[row["key"]].append(row)
    places = Counter(row["place"] for row in rows)
    book.note(
        "alerts in incidents / waiting / suppressed", f"{places['incident']}/{places['waiting']}/{places['suppressed']}"
    )
    missing = sorted(sent - set(stored))
    book.expect("alerts lost", 0, len(missing), f"e.g. {missing[:5]}")
    twice = sorted(key for key, found in stored.items() if len(found) > 1)
    book.expect("alerts stored twice", 0, len(twice), f"e.g. {twice[:5]}")
    unknown = sorted(set(stored) - sent)
    book.expect("alerts stored that nobody sent", 0, len(unknown), f"e.g. {unknown[:5]}")
    miscounted = sorted(
        key
        for key, found in stored.items()
        if key in on_topic and sum(r["repeats"] + 1 for r in found) != on_topic[key]
    )
    book.expect("alerts whose sightings differ from the topic", 0, len(miscounted), f"e.g. {miscounted[:5]}")

    in_incidents = {row["key"]: row["incident_id"] for row in rows if row["place"] == "incident"}
    reported = {(r["key"], r["incident_id"]) for r in await conn.fetch("SELECT key, incident_id FROM reporter_alerts")}
    unreported = sorted(key for key, incident in in_incidents.items() if (key, incident) not in reported)
    book.expect("alerts missing from the reporter", 0, len(unreported), f"e.g. {unreported[:5]}")
    book.expect("records on the raw topic nobody sent", 0, foreign)


# ---- incidents and their events --------------------------------------------------------------------


def natural_keys(event: Event) -> list[tuple[object, ...]]:
    """What makes each thing an event says the one it is, apart from the event's id: two ids with one
    natural key are a duplicate. A step-changes event says several things, one per change."""
    match event:
        case IncidentDetected():
            return [("detected", event.subject)]
        case ResponsePlanned():
            return [("planned", event.data.plan_id)]
        case IncidentEscalated():
            return [("escalated", event.subject, event.data.commander, event.data.reason)]
        case IncidentStateChanged():
            return [("state", event.subject, event.data.from_state, event.data.to_state, event.data.command_id)]
        case ResponseStepChanged() | ResponseStepsChanged():
            return [("step", change.step_id, change.from_state, change.state) for change in event.changes]
        case EffectCompleted():
            return [("effect", event.data.service, event.data.kind, event.data.key)]
        case _:
            return []


async def read_events(settings: VigilSettings) -> list[Event]:
    """Every CloudEvent on Vigil's event topics, as consumers received them (redeliveries included)."""
    names = TopicNames(settings.topic_prefix)
    events: list[Event] = []
    for topic in ALL_TOPICS:
        if not topic.cloudevents:
            continue
        for record in await read_topic(settings, names(topic)):
            try:
                events.append(decode(record.value, record.headers))
            except InvalidMessage as exc:
                raise AssertionError(f"{names(topic)}@{record.offset} holds an invalid event: {exc.reason}") from exc
    return events


async def account_incidents(book: Accounting, conn: asyncpg.Connection, settings: VigilSettings) -> None:
    """Each incident has each lifecycle event once; no event was published twice under two ids."""
    events = await read_events(settings)
    by_id = Counter(event.id for event in events)
    book.note("events on the topics", len(events))
    book.note("events the relay published again (same id)", sum(n - 1 for n in by_id.values()))
    unique = {event.id: event for event in events}.values()

    twins: dict[tuple[object, ...], set[str]] = defaultdict(set)
    for event in unique:
        for key in natural_keys(event):
            twins[key].add(event.id)
    doubled = sorted((key for key, ids in twins.items() if len(ids) > 1), key=str)
    book.expect("events done twice (two ids, one meaning)", 0, len(doubled), f"e.g. {doubled[:5]}")

    incidents = [row["id"] for row in await conn.fetch("SELECT id FROM detector_incidents")]
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    for event in unique:
        kinds[event.subject][event.type] += 1
    book.note("incidents", len(incidents))

    def lacking(event_type: str, *, exactly_one: bool) -> list[str]:
        counts = [(incident, kinds[incident][event_type]) for incident in incidents]
        return [i for i, n in counts if (n != 1 if exactly_one else n < 1)]

    detected = lacking("vigil.incident.detected.v1", exactly_one=True)
    book.expect("incidents without exactly one detected", 0, len(detected), f"e.g. {detected[:5]}")
    for label, event_type in (
        ("analysed", "vigil.incident.analyzed.v1"),
        ("planned", "vigil.response.planned.v1"),
        ("escalated", "vigil.incident.escalated.v1"),
    ):
        found = lacking(event_type, exactly_one=False)
        book.expect(f"incidents never {label}", 0, len(found), f"e.g. {found[:5]}")
    paged = Counter(
        event.subject
        for event in unique
        if isinstance(event, IncidentEscalated) and event.data.reason.endswith("immediate escalation")
    )
    paged_twice = sorted(i for i, n in paged.items() if n > 1)
    book.expect("commanders paged at detection more than once", 0, len(paged_twice), f"e.g. {paged_twice[:5]}")

    timeline = await conn.fetch(
        """SELECT incident_id, count(*) FILTER (WHERE type = 'vigil.incident.detected.v1') AS detected
           FROM reporter_timeline GROUP BY incident_id"""
    )
    on_timeline = {row["incident_id"]: row["detected"] for row in timeline}
    off = sorted(i for i in incidents if on_timeline.get(i) != 1)
    book.expect("timelines without exactly one detected", 0, len(off), f"e.g. {off[:5]}")
    stored = {row["event_id"] for row in await conn.fetch("SELECT event_id FROM reporter_timeline")}
    skipped = _untimelined(unique)
    known = set(incidents)
    unrecorded = Counter(
        event.type for event in unique if event.subject in known and event.id not in stored and event.id not in skipped
    )
    # The reporter keeps every event of the topics it consumes as history, on its incident's timeline.
    handled = {t for topic in ALL_TOPICS if "reporter" in topic.consumers for t in topic.event_types}
    missed = {t: n for t, n in unrecorded.items() if t in handled}
    book.expect("events the reporter never recorded", 0, sum(missed.values()), str(missed))
    if ignored := sorted(t for t in unrecorded if t not in handled):
        book.note("event types the reporter does not keep", ", ".join(t.removeprefix("vigil.") for t in ignored))
    for service, table in (("coordinator", "coordinator_incidents"), ("reporter", "reporter_incidents")):
        column = "incident_id" if service == "coordinator" else "id"
        known = {row[0] for row in await conn.fetch(f"SELECT {column} FROM {table}")}
        book.expect(f"incidents the {service} does not know", 0, len(set(incidents) - known))


def _untimelined(events: Iterable[Event]) -> set[str]:
    """Events the reporter does not put on a timeline (commands, and what it has no line for)."""
    return {event.id for event in events if event.type.startswith("vigil.command.")}


# ---- side effects ----------------------------------------------------------------------------------


def account_deliveries(
    book: Accounting,
    *,
    what: str,
    deliveries: Sequence[Delivery],
    effects: Sequence[asyncpg.Record],
    kills: Sequence[Kill],
    owner: str,
    elsewhere: Sequence[Delivery] = (),
) -> None:
    """Each effect reached its receiver; a key delivered again is explained by its runner dying in between.

    The effects runner is effectively once: a runner killed after a call and before recording it
    calls again with the same key (the far side deduplicates). A second delivery with no kill of the
    owning service between the two would be a side effect done twice.
    """
    arrivals: dict[str, list[float]] = defaultdict(list)
    for delivery in deliveries:
        arrivals[delivery.key].append(delivery.at)
    keys = {row["key"] for row in effects}
    succeeded = {row["key"] for row in effects if row["status"] == "succeeded"}
    book.note(f"{what}: effects / keys received", f"{len(keys)}/{len(arrivals)}")
    book.expect(f"{what}: requests without an idempotency key", 0, len(arrivals.get("", [])))
    # Effects sent to another receiver (one that hung, then answered) were received there.
    never = sorted(succeeded - set(arrivals) - {delivery.key for delivery in elsewhere})
    book.expect(f"{what}: succeeded but never received", 0, len(never), f"e.g. {never[:5]}")
    stray = sorted(set(arrivals) - keys)  # every key a receiver saw has its effect
    book.expect(f"{what}: received with no effect behind it", 0, len(stray), f"e.g. {stray[:5]}")
    owner_kills = sorted(kill.at for kill in kills if kill.service == owner)
    repeated = explained = 0
    unexplained: list[str] = []
    for key, times in arrivals.items():
        times.sort()
        for earlier, later in itertools.pairwise(times):
            repeated += 1
            if any(earlier < at < later for at in owner_kills):
                explained += 1
            else:
                unexplained.append(key)
    book.note(f"{what}: sent again after the {owner} died or stopped", explained)
    book.expect(f"{what}: sent twice with no crash between", 0, len(unexplained), f"e.g. {unexplained[:5]}")


# What the effects runner records when an effect's last allowed attempt never recorded its outcome.
INTERRUPTED = "the last attempt was interrupted before its outcome was recorded"


async def account_pending(book: Accounting, conn: asyncpg.Connection, *, killed: Collection[str] = ()) -> None:
    """Nothing left in the outbox, no effect due or running, no timer overdue, no incident alert held.

    An effect whose only allowed attempt (a step with ``retries: 0``) was cut short by a kill is
    parked for an operator, by design (the far side may have acted): allowed for a killed service's
    effects, and counted apart; any other parked effect is a failure.
    """
    outbox = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE sent_at IS NULL AND parked_at IS NULL) AS unsent,
                  count(*) FILTER (WHERE parked_at IS NOT NULL AND sent_at IS NULL) AS parked
           FROM outbox"""
    )
    assert outbox is not None
    book.expect("outbox rows unsent", 0, outbox["unsent"])
    book.expect("outbox rows parked", 0, outbox["parked"])
    effects = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE status = 'pending' AND not_before <= now()) AS due,
                  count(*) FILTER (WHERE status = 'pending' AND not_before > now()) AS later,
                  count(*) FILTER (WHERE status = 'running') AS running,
                  count(*) FILTER (WHERE status = 'parked') AS parked,
                  count(*) FILTER (WHERE status = 'parked' AND last_error = $1 AND service = ANY($2::text[]))
                      AS interrupted
           FROM effects""",
        INTERRUPTED,
        list(killed),
    )
    assert effects is not None
    book.expect("effects due and not run", 0, effects["due"])
    book.expect("effects still running", 0, effects["running"])
    book.note("effects parked: their only allowed attempt cut short by a kill", effects["interrupted"])
    book.expect("effects parked for any other reason", 0, effects["parked"] - effects["interrupted"])
    book.note("effects scheduled for later (undo at a lease's end)", effects["later"])
    overdue = await conn.fetchval(
        """SELECT count(*) FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL
           AND due_at < now() - interval '10 seconds'"""
    )
    book.expect("timers overdue", 0, overdue)
    held = await conn.fetchval("SELECT count(*) FROM detector_held_alerts")
    book.expect("incident alerts held, never published", 0, held)


# ---- consumer lag ----------------------------------------------------------------------------------


def consumer_lag(settings: VigilSettings) -> dict[str, int]:
    """Each service's group: records on its topics beyond its committed offsets (kafka-python's admin client)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    names = TopicNames(settings.topic_prefix)
    servers = settings.kafka.bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="fault-lag")
    consumer = KafkaConsumer(bootstrap_servers=servers, client_id="fault-lag")
    try:
        lag: dict[str, int] = {}
        for service in SERVICE_NAMES:
            group = group_id(settings, service)
            committed = admin.list_group_offsets({group: None})[group]
            partitions = [
                TopicPartition(names(topic), p)
                for topic in ALL_TOPICS
                if service in topic.consumers
                for p in range(topic.partitions)
            ]
            ends = consumer.end_offsets(partitions)
            lag[service] = sum(max(ends[tp] - (committed[tp].offset if tp in committed else 0), 0) for tp in partitions)
        return lag
    finally:
        consumer.close()
        admin.close()


async def account_lag(book: Accounting, settings: VigilSettings) -> None:
    lag = await asyncio.to_thread(consumer_lag, settings)
    for service, behind in lag.items():
        book.expect(f"consumer lag: {service}", 0, behind)


def account_processes(
    book: Accounting,
    *,
    kills: Sequence[Kill],
    restarts: dict[str, int],
    exits: dict[str, Any],
    expected_restarts: int | None = None,
) -> None:
    killed = Counter(kill.service for kill in kills)
    book.note("kills by service", ", ".join(f"{name} {killed[name]}" for name in SERVICE_NAMES))
    expected = len(kills) if expected_restarts is None else expected_restarts
    book.expect("restarts by the supervisor", expected, sum(restarts.values()), str(restarts))
    book.expect(
        "services exiting 0 on SIGTERM", len(SERVICE_NAMES), sum(1 for code in exits.values() if code == 0), str(exits)
    )


async def account_run(
    book: Accounting, settings: VigilSettings, stack: Any, feed: Feed, *, restarts: int | None = None
) -> None:
    """The whole accounting of a run, once its stack has stopped: alerts, incidents, effects, pending, processes.

    The supervisor should have restarted services ``restarts`` times (by default, once per kill).
    """
    conn = await asyncpg.connect(settings.database_url)
    try:
        await account_alerts(book, conn, settings, feed)
        await account_incidents(book, conn, settings)
        effects = await conn.fetch("SELECT service, kind, key, status FROM effects")
        for what, receiver, owner in (
            ("response steps", stack.actions, "responder"),
            ("notifications", stack.notices, "coordinator"),
        ):
            account_deliveries(
                book,
                what=what,
                deliveries=receiver.deliveries,
                effects=_of_kinds_seen(effects, owner, receiver.deliveries),
                kills=[*stack.kills, *stack.stops],
                owner=owner,
                elsewhere=stack.hung.deliveries,
            )
        await account_pending(book, conn, killed={kill.service for kill in stack.kills})
    finally:
        await conn.close()
    account_processes(
        book, kills=stack.kills, restarts=stack.restarts(), exits=stack.exit_codes, expected_restarts=restarts
    )


def _of_kinds_seen(effects: Sequence[asyncpg.Record], service: str, deliveries: Sequence[Delivery]) -> list[Any]:
    """The service's effects of the kinds that reached the receiver: every one of them should have."""
    received = {delivery.key for delivery in deliveries}
    kinds = {e["kind"] for e in effects if e["service"] == service and e["key"] in received}
    return [e for e in effects if e["service"] == service and e["kind"] in kinds]
