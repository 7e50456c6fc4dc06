"""The one consume loop every Vigil service runs.

fetch a batch -> decode and validate -> one Postgres transaction (record event ids as processed,
run the handler on the new ones, write outgoing events to the outbox) -> dead-letter the invalid
-> commit offsets. Offsets are committed last, so a crash anywhere before means redelivery, and
the processed-id ledger turns redelivery into a no-op.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from shared import audit, cloudevents
from shared.db import Conn
from shared.errors import DeadLetterLimitExceeded, InvalidMessage, UnknownEventType, is_retriable
from shared.events import Event, EventBase
from shared.metrics import (
    BATCH_SIZE,
    CONSUMER_LAG,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    EVENTS_HANDLED,
    HANDLER_DURATION,
)
from shared.outbox import OutboxRelay, write_events
from shared.topics import TopicNames, dead_letter_topic_for

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# The most of a record's value a dead letter carries: well under the producer's 1 MiB request limit.
DEAD_LETTER_MAX_BYTES = 512 * 1024
# And of its key and own headers: with the value's share and Vigil's headers, within that limit.
DEAD_LETTER_MAX_KEY_BYTES = 16 * 1024
DEAD_LETTER_MAX_HEADER_BYTES = 256 * 1024


@dataclass(frozen=True)
class Inbound(Generic[T]):
    """A decoded, valid message and the record it came from."""

    event_id: str
    item: T
    record: Any


Decoder = Callable[[Any], tuple[str, T]]


def decode_cloudevent(record: Any) -> tuple[str, Event]:
    """Decode a Vigil event record; its CloudEvents id is its idempotency key."""
    event = cloudevents.decode(record.value, record.headers)
    return event.id, event


@dataclass(frozen=True)
class AuditNote:
    """An audit entry a handler asks for; the service and the chain are filled in when it is written."""

    action: str
    target: str
    principal: str
    outcome: str
    detail: dict[str, Any]


@dataclass
class HandlerContext:
    """What a handler may touch inside the batch's transaction."""

    conn: Conn
    service: str
    names: TopicNames
    emitted: list[EventBase] = field(default_factory=list)
    rejected: list[tuple[str, Any, InvalidMessage]] = field(default_factory=list)
    audited: list[AuditNote] = field(default_factory=list)
    # What handlers read once per batch (configuration, a feed's state), by name: see ``once``.
    read: dict[str, Any] = field(default_factory=dict)
    # emitted[:fold_floor] was queued before the latest savepoint: ``emit_folded`` never changes it, so
    # that a rolled-back savepoint takes all it added with it (``drop_since`` only cuts the list).
    fold_floor: int = 0

    async def once(self, name: str, read: Callable[[], Awaitable[R]]) -> R:
        """``read()``'s answer, asked once per batch: for what may change between batches but need not
        be read again for every event of one (a rolled-back batch is read again with a new context)."""
        if name not in self.read:
            self.read[name] = await read()
        answer: R = self.read[name]
        return answer

    def emit(self, event: EventBase) -> None:
        """Queue an event for the outbox; it is written in this transaction."""
        self.emitted.append(event)

    def emit_folded(self, event: EventBase, fold: Callable[[EventBase, EventBase], EventBase | None]) -> None:
        """Queue an event, or fold it into the one queued last when ``fold(last, event)`` gives the two as
        one (None: they are not one): a handler's run of like changes goes out as one event."""
        if len(self.emitted) > self.fold_floor and (folded := fold(self.emitted[-1], event)) is not None:
            self.emitted[-1] = folded
        else:
            self.emitted.append(event)

    def audit(
        self,
        action: str,
        target: str,
        *,
        principal: str,
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue an audit entry; it is written with the events, last in this transaction (shared/audit.py).

        Checked now, inside the handler: an entry an event's content makes unwritable (a blank actor, a
        detail too large) fails that event, dead-lettered, not the batch's commit at every restart.
        """
        try:
            checked = audit.checked_entry(
                principal=principal, action=action, target=target, outcome=outcome, detail=detail
            )
        except ValueError as exc:
            raise InvalidMessage(f"cannot be audited: {exc}", code="unauditable") from exc
        self.audited.append(AuditNote(action, target, principal, outcome, checked))

    def mark(self) -> tuple[int, int]:
        """Where the queues stand, to drop what a rolled-back savepoint queued (``drop_since``)."""
        self.fold_floor = len(self.emitted)
        return len(self.emitted), len(self.audited)

    def drop_since(self, mark: tuple[int, int]) -> None:
        del self.emitted[mark[0] :]
        del self.audited[mark[1] :]

    def reject(self, inbound: Inbound[Any], reason: str | InvalidMessage) -> None:
        """Dead-letter one message whose content the handler refused."""
        error = reason if isinstance(reason, InvalidMessage) else InvalidMessage(reason)
        self.rejected.append((inbound.event_id, inbound.record, error))


async def write_context(conn: Conn, ctx: HandlerContext, *, notify: bool = True) -> None:
    """Write what the handlers queued, in their transaction: the events to the outbox, then (last, as the
    audit chain's lock is held until commit) the audit entries. ``notify``: see ``write_events``."""
    await write_events(conn, service=ctx.service, names=ctx.names, events=ctx.emitted, notify=notify)
    for note in ctx.audited:
        await audit.record(
            conn,
            service=ctx.service,
            principal=note.principal,
            action=note.action,
            target=note.target,
            outcome=note.outcome,
            detail=note.detail,
        )


BatchHandler = Callable[[HandlerContext, Sequence[Inbound[T]]], Awaitable[None]]
EventHandler = Callable[[HandlerContext, Any], Awaitable[None]]


RunHandler = Callable[[HandlerContext, Sequence[Any]], Awaitable[None]]


def dispatch_each(
    table: dict[type[EventBase], EventHandler],
    *,
    savepoints: bool = True,
    runs: Mapping[type[EventBase], RunHandler] | None = None,
) -> BatchHandler[Event]:
    """Build a batch handler that calls the table's handler for each event.

    An event type missing from the table is skipped: a topic may carry events this service
    does not care about. With ``savepoints``, a handler raising InvalidMessage dead-letters just
    that event: the batch runs in one savepoint, and only when one of its events is refused is it
    run again with a savepoint for each event (a savepoint costs two round trips, and refusals are
    rare). Handlers that never reject an event can go without even the one.

    ``runs``: for a type in it, a run of consecutive events of that type is first given whole to its
    run handler (what can be done for all of them in one statement, in their order), then each event
    to its own handler.
    """
    grouped = runs or {}

    def handled(batch: Sequence[Inbound[Event]]) -> list[tuple[Inbound[Event], EventHandler]]:
        return [(inbound, handler) for inbound in batch if (handler := table.get(type(inbound.item))) is not None]

    async def each(ctx: HandlerContext, calls: Sequence[tuple[Inbound[Event], EventHandler]]) -> None:
        start = 0
        while start < len(calls):
            kind = type(calls[start][0].item)
            end = start + 1
            if kind in grouped:
                while end < len(calls) and type(calls[end][0].item) is kind:
                    end += 1
                await grouped[kind](ctx, [inbound.item for inbound, _handler in calls[start:end]])
            for inbound, handler in calls[start:end]:
                await handler(ctx, inbound.item)
            start = end

    async def handle(ctx: HandlerContext, batch: Sequence[Inbound[Event]]) -> None:
        calls = handled(batch)
        if not savepoints:
            await each(ctx, calls)
            return
        mark = ctx.mark()
        try:
            async with ctx.conn.transaction():
                await each(ctx, calls)
            return
        except InvalidMessage:
            ctx.drop_since(mark)  # what the batch queued goes with its rolled-back writes
        for call in calls:
            mark = ctx.mark()
            try:
                async with ctx.conn.transaction():
                    await each(ctx, [call])
            except InvalidMessage as exc:
                ctx.drop_since(mark)  # its events and audit entries go with its rolled-back writes
                ctx.reject(call[0], exc)

    return handle


class DeadLetterGuard:
    """Stops a consumer whose recent messages are mostly dead-lettered.

    Each message is judged once, when its batch is handled. The window is persisted with the batch
    (``consumer_guards``), so a consumer restarting in a loop resumes its judgement instead of
    dead-lettering another window's worth of a topic after every restart; and a batch that trips
    the guard rolls back, so it is judged the same way again after the restart.
    """

    def __init__(self, *, ratio: float, window: int, verdicts: str = "") -> None:
        self.ratio = ratio
        self.window = window
        self._recent: collections.deque[bool] = collections.deque((v == "1" for v in verdicts), maxlen=window)
        self._dead = sum(self._recent)

    def copy(self) -> DeadLetterGuard:
        return DeadLetterGuard(ratio=self.ratio, window=self.window, verdicts=self.state)

    @property
    def state(self) -> str:
        """The window as stored: '1' for a dead letter, '0' for a handled message, oldest first."""
        return "".join("1" if dead else "0" for dead in self._recent)

    @property
    def dead(self) -> int:
        return self._dead

    def record(self, dead: Sequence[bool]) -> None:
        for is_dead in dead:
            if len(self._recent) == self.window and self._recent[0]:
                self._dead -= 1
            self._recent.append(is_dead)
            self._dead += is_dead
        if len(self._recent) >= self.window and self._dead / len(self._recent) > self.ratio:
            raise DeadLetterLimitExceeded(
                f"{self._dead} of the last {len(self._recent)} messages were dead-lettered "
                f"(limit {self.ratio:.0%}); stopping instead of emptying the topic into the dead-letter queue"
            )


class BatchFence(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds a rebalance until the batch in hand is handled and its offsets committed.

    aiokafka awaits ``on_partitions_revoked`` before the member rejoins, while its generation is
    still valid: waiting there for the batch means no partition is handled by two members at once.
    A batch stuck retrying releases the fence between attempts, so a rebalance abandons it instead.
    """

    def __init__(self, service: str) -> None:
        self.lock = asyncio.Lock()
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            if revoked:
                log.info("partitions revoked after the batch in hand: %s", sorted(map(str, revoked)))
            # Their lag is another member's to say now: a value left here would stand for good, and the
            # lag alert takes the highest any member says.
            for tp in revoked:
                CONSUMER_LAG.remove(self.service, tp.topic, str(tp.partition))  # none set yet: nothing to remove

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(map(str, assigned)))


class ConsumeLoop(Generic[T]):
    """Consumes topics for one service with at-least-once, idempotent, transactional handling."""

    def __init__(
        self,
        *,
        service: str,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        names: TopicNames,
        decoder: Decoder[T],
        handler: BatchHandler[T],
        batch_size: int = 2000,
        poll_ms: int = 200,
        linger_ms: int = 0,
        dead_letter_guard: DeadLetterGuard | None = None,
        fence: BatchFence,
    ) -> None:
        self.service = service
        # At 0 from the start: an alert on its increase sees the first error (a series born at 1 shows none).
        EVENTS_HANDLED.labels(service, "error")
        self.consumer = consumer
        self.producer = producer
        self.pool = pool
        self.names = names
        self.decoder = decoder
        self.handler = handler
        self.batch_size = batch_size
        self.poll_ms = poll_ms
        self.linger_ms = linger_ms
        self.guard = dead_letter_guard or DeadLetterGuard(ratio=0.5, window=1000)
        self._guard_loaded = False
        self._stopping = asyncio.Event()
        self._warned: set[str] = set()
        # Per partition, the last offset the guard has judged: a batch run again (its dead letters not yet
        # acknowledged, say) is not judged twice, or each retry would count its dead letters once more.
        self._judged_to: dict[tuple[str, int], int] = {}
        self._parked_to: dict[tuple[str, int], int] = {}  # the last record dead-lettered alone, per partition
        self.fence = fence  # the consumer's rebalance listener: make_consumer(..., listener=fence)
        self.relay: OutboxRelay | None = None  # the service's relay, woken directly while it leads
        self._ended = False

    @property
    def ready(self) -> bool:
        """Consuming: partitions assigned, and not stopped on an error (``run`` ended)."""
        return not self._ended and bool(self.consumer.assignment())

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stopping.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._ended = True

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            batch = await self._fetch()
            if not batch:
                continue
            async with self.fence.lock:
                # A rebalance may have taken partitions between the fetch and now: leave them alone.
                assigned = self.consumer.assignment()
                batch = {tp: records for tp, records in batch.items() if tp in assigned}
                if not batch:
                    continue
                try:
                    try:
                        await self.process(batch)
                    except Exception as exc:
                        if is_retriable(exc) or isinstance(exc, DeadLetterLimitExceeded):
                            raise
                        # The same records would fail the same way after every restart and stop their
                        # partitions: the batch again in halves, until the record that fails is alone.
                        log.warning("%s: a batch failed (%r); handling it in parts to find why", self.service, exc)
                        await self._isolate([(tp, record) for tp, records in batch.items() for record in records])
                    backoff = 0.1
                    continue
                except Exception as exc:
                    if not is_retriable(exc):
                        EVENTS_HANDLED.labels(self.service, "error").inc(sum(len(m) for m in batch.values()))
                        raise
                    EVENTS_HANDLED.labels(self.service, "retry").inc(sum(len(m) for m in batch.values()))
                    log.warning("batch failed, retrying in %.1fs without committing: %r", backoff, exc)
                    for tp, records in batch.items():
                        # A partition revoked meanwhile needs no seek: its new owner starts from the commit.
                        with contextlib.suppress(IllegalStateError):
                            self.consumer.seek(tp, records[0].offset)
            # Outside the fence: a rebalance during the back-off abandons the batch.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _isolate(self, items: list[tuple[TopicPartition, Any]]) -> None:
        """Handle the records, in order, in ever smaller parts; one that fails alone is dead-lettered.

        Each part commits its own offsets, and parts go in arrival order, so a partition's offsets only
        move forward. A retriable failure is raised for the caller's retry (the ledger absorbs what the
        parts before it handled); the dead-letter guard still stops a consumer whose every record fails.
        """
        part: dict[TopicPartition, list[Any]] = {}
        for tp, record in items:
            part.setdefault(tp, []).append(record)
        try:
            await self.process(part)
            return
        except Exception as exc:
            if is_retriable(exc) or isinstance(exc, DeadLetterLimitExceeded):
                raise
            if len(items) == 1:
                await self._park(*items[0], exc)
                return
        middle = len(items) // 2
        await self._isolate(items[:middle])
        await self._isolate(items[middle:])

    async def _park(self, tp: TopicPartition, record: Any, exc: Exception) -> None:
        """Dead-letter a record its handler fails on, with the failure, and go on past it."""
        log.error(
            "%s: the handler fails on %s[%d]@%d; dead-lettered",
            self.service,
            record.topic,
            record.partition,
            record.offset,
            exc_info=exc,
        )
        where = (record.topic, record.partition)
        if record.offset <= self._parked_to.get(where, -1):
            # Dead-lettered already, and the batch fetched again after a later part's retriable failure.
            await self._commit({tp: [record]})
            return
        failure = InvalidMessage(f"the handler failed on it: {type(exc).__name__}: {exc}"[:1000], code="handler_failed")
        if record.offset > self._judged_to.get(where, -1):  # each record judged once, as in a batch
            async with self.pool.acquire() as conn, conn.transaction():
                judged = await self._judge(conn, [True])
            self.guard = judged
            self._judged_to[where] = record.offset
        await self._dead_letter([(record, failure)])
        self._parked_to[where] = record.offset
        EVENTS_HANDLED.labels(self.service, "invalid").inc()
        await self._commit({tp: [record]})

    async def _fetch(self) -> dict[TopicPartition, list[Any]]:
        """Records as they come; with a linger, what else comes within it too, up to the batch size.

        A handler that works per incident, or per batch, does less per record in a bigger batch: the
        linger trades that much latency for throughput when records arrive a few at a time.
        """
        batch: dict[TopicPartition, list[Any]] = await self.consumer.getmany(
            timeout_ms=self.poll_ms, max_records=self.batch_size
        )
        if not batch or self.linger_ms <= 0:
            return batch
        taken = sum(map(len, batch.values()))
        deadline = time.monotonic() + self.linger_ms / 1000
        while taken < self.batch_size and not self._stopping.is_set():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = await self.consumer.getmany(timeout_ms=left_ms, max_records=self.batch_size - taken)
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                taken += len(records)
        return batch

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Handle one fetched batch end to end; offsets are committed only when all of it is done."""
        valid: list[Inbound[T]] = []
        invalid: list[tuple[Any, InvalidMessage]] = []
        arrival: list[tuple[Any, Inbound[T] | None]] = []  # the batch in order, with None for an invalid record
        skipped = 0
        for tp, records in batch.items():
            EVENTS_CONSUMED.labels(self.service, tp.topic).inc(len(records))
            for record in records:
                try:
                    event_id, item = self.decoder(record)
                except UnknownEventType as exc:
                    # A newer producer's event: not ours to judge, and not bad input either.
                    skipped += 1
                    self._warn_once(exc.reason, record)
                except InvalidMessage as exc:
                    invalid.append((record, exc))
                    arrival.append((record, None))
                except Exception as exc:
                    # Decoding is pure: what fails on one record would fail again on every retry and stop
                    # the partition. Dead-lettered with the failure, and logged whole for whoever fixes it.
                    log.exception("%s: a record of %s could not be decoded", self.service, record.topic)
                    failure = InvalidMessage(f"could not be decoded: {type(exc).__name__}: {exc}", code="undecodable")
                    invalid.append((record, failure))
                    arrival.append((record, None))
                else:
                    valid.append(Inbound(event_id, item, record))
                    arrival.append((record, valid[-1]))

        started = time.perf_counter()
        fresh, rejected = await self._handle_in_transaction(valid, invalid, arrival)
        HANDLER_DURATION.labels(self.service).observe(time.perf_counter() - started)
        BATCH_SIZE.labels(self.service).observe(len(valid))

        dead = invalid + rejected
        await self._dead_letter(dead)

        EVENTS_HANDLED.labels(self.service, "ok").inc(fresh - len(rejected))
        EVENTS_HANDLED.labels(self.service, "duplicate").inc(len(valid) - fresh)
        EVENTS_HANDLED.labels(self.service, "invalid").inc(len(dead))
        EVENTS_HANDLED.labels(self.service, "skipped").inc(skipped)
        await self._commit(batch)

    def _warn_once(self, reason: str, record: Any) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("skipping %s[%d]@%d and its like: %s", record.topic, record.partition, record.offset, reason)

    async def _handle_in_transaction(
        self,
        valid: list[Inbound[T]],
        invalid: list[tuple[Any, InvalidMessage]],
        arrival: list[tuple[Any, Inbound[T] | None]],
    ) -> tuple[int, list[tuple[Any, InvalidMessage]]]:
        if not valid and not invalid:
            return 0, []
        async with self.pool.acquire() as conn, conn.transaction():
            if not self._guard_loaded:
                stored = await conn.fetchval("SELECT verdicts FROM consumer_guards WHERE service = $1", self.service)
                self.guard = DeadLetterGuard(ratio=self.guard.ratio, window=self.guard.window, verdicts=stored or "")
                self._guard_loaded = True
            ctx = HandlerContext(conn=conn, service=self.service, names=self.names)
            fresh: list[Inbound[T]] = []
            if valid:
                ids = list(dict.fromkeys(inbound.event_id for inbound in valid))
                inserted = await conn.fetch(
                    """INSERT INTO processed_events (service, event_id)
                       SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING event_id""",
                    self.service,
                    ids,
                )
                new_ids = {row["event_id"] for row in inserted}
                for inbound in valid:
                    if inbound.event_id in new_ids:
                        new_ids.discard(inbound.event_id)  # a repeat inside the batch is a duplicate too
                        fresh.append(inbound)
                if fresh:
                    await self.handler(ctx, fresh)
                if ctx.rejected:
                    # Not processed: if the dead letter is lost before the offset commit, the
                    # redelivered event is rejected (and dead-lettered) again, not taken for a duplicate.
                    await conn.execute(
                        "DELETE FROM processed_events WHERE service = $1 AND event_id = ANY($2::text[])",
                        self.service,
                        [event_id for event_id, _record, _reason in ctx.rejected],
                    )
            # Each message judged once, in arrival order: dead-lettered or handled; duplicates not at all, nor
            # what an earlier run of this batch judged.
            rejected_ids = {event_id for event_id, _record, _reason in ctx.rejected}
            fresh_ids = {id(inbound) for inbound in fresh}
            judged_to = self._judged_to
            verdicts = [
                item is None or item.event_id in rejected_ids
                for record, item in arrival
                if (item is None or id(item) in fresh_ids)
                and record.offset > judged_to.get((record.topic, record.partition), -1)
            ]
            judged = await self._judge(conn, verdicts)
            # This process's relay, leading, is woken below once committed; any other by notification.
            relay = self.relay if self.relay is not None and self.relay.leading else None
            await write_context(conn, ctx, notify=relay is None)
        self.guard = judged  # only once committed: a batch retried is judged once
        for record, _item in arrival:
            where = (record.topic, record.partition)
            judged_to[where] = max(judged_to.get(where, -1), record.offset)
        if relay is not None and ctx.emitted:
            relay.wake()
        return len(fresh), [(record, error) for _event_id, record, error in ctx.rejected]

    async def _judge(self, conn: Conn, verdicts: list[bool]) -> DeadLetterGuard:
        """Judge this batch's messages once; raising here rolls the batch back, dead letters unsent."""
        had_dead = self.guard.dead > 0
        judged = self.guard.copy()
        judged.record(verdicts)
        # Only a window that holds, or held, a dead letter is worth a write.
        if judged.dead or had_dead:
            await conn.execute(
                """INSERT INTO consumer_guards (service, verdicts) VALUES ($1, $2)
                   ON CONFLICT (service) DO UPDATE SET verdicts = EXCLUDED.verdicts, updated_at = now()""",
                self.service,
                judged.state,
            )
        return judged

    async def _dead_letter(self, dead: list[tuple[Any, InvalidMessage]]) -> None:
        if not dead:
            return
        futures = []
        for record, error in dead:
            reason = error.reason
            log.warning(
                "dead-lettering %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                reason,
                extra={"topic": record.topic, "offset": record.offset, "incident_id": _key(record)},
            )
            own = list(record.headers or ())
            own_bytes = sum(len(name) + len(raw or b"") for name, raw in own)
            if own_bytes > DEAD_LETTER_MAX_HEADER_BYTES:
                # With them, the dead letter could be more than a producer may send, and the loop would crash
                # on the record at every restart: they stay on its topic, at the offset the headers name.
                own = [("vigil_dlq_headers_dropped", f"{len(own)} headers, {own_bytes} bytes".encode())]
            headers = [*own, *dead_letter_headers(self.service, record, reason, code=error.code)]
            key = record.key[:DEAD_LETTER_MAX_KEY_BYTES] if record.key else record.key
            value = record.value
            if value is not None and len(value) > DEAD_LETTER_MAX_BYTES:
                # Whole, it is more than a producer may send: the dead letter would fail and the loop
                # crash on the same record after every restart. Its head goes, with its size and digest;
                # the whole record stays on its topic at the offset the headers name.
                headers += [
                    ("vigil_dlq_truncated", str(len(value)).encode()),
                    ("vigil_dlq_sha256", hashlib.sha256(value).hexdigest().encode()),
                ]
                value = value[:DEAD_LETTER_MAX_BYTES]
            futures.append(
                await self.producer.send(
                    self.names(dead_letter_topic_for(record.topic, self.names)),
                    key=key,
                    value=value,
                    headers=headers,
                )
            )
            EVENTS_DEAD_LETTERED.labels(self.service, record.topic, error.code).inc()
        await asyncio.gather(*futures)

    async def _commit(self, batch: dict[TopicPartition, list[Any]]) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The partitions moved to another member, which will redeliver; the ledger absorbs it.
            log.warning("offset commit skipped after a rebalance: %r", exc)
        for tp, records in batch.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(
                    max(highwater - records[-1].offset - 1, 0)
                )


def _key(record: Any) -> str | None:
    return record.key.decode("utf-8", "replace") if record.key else None


def dead_letter_headers(service: str, record: Any, reason: str, *, code: str = "invalid") -> list[tuple[str, bytes]]:
    """Return the headers that say why, where and when a record was dead-lettered."""
    return [
        ("vigil_dlq_code", code.encode()),
        ("vigil_dlq_reason", reason.encode()[:4000]),
        ("vigil_dlq_service", service.encode()),
        ("vigil_dlq_topic", record.topic.encode()),
        ("vigil_dlq_partition", str(record.partition).encode()),
        ("vigil_dlq_offset", str(record.offset).encode()),
        ("vigil_dlq_time", datetime.now(UTC).isoformat().encode()),
    ]
