"""Transactional outbox: events are written with the state they describe and published after commit.

One relay per service publishes at a time (a session advisory lock on the relay's own connection),
so an incident's events leave in the order they were written. The relay holds no pool connection
and no row lock while it waits for the broker: it reads a batch, lets the connection go, publishes,
then marks what was sent. A row the broker refuses for good (too large, or any non-retriable
error) is parked with its error while the rows behind it flow; an operator re-queues it with
`vigil outbox retry ID` once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.cloudevents import encode
from shared.db import Conn
from shared.errors import is_retriable
from shared.events import EventBase
from shared.metrics import OUTBOX_BACKLOG, OUTBOX_PARKED, OUTBOX_PUBLISHED
from shared.topics import TopicNames

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "vigil_outbox"
# A row that fails while the rows around it are published is parked after this many tries; when
# every row fails (the broker is down) nothing is counted and the relay just waits.
MAX_ATTEMPTS = 5


async def write_events(
    conn: Conn, *, service: str, names: TopicNames, events: Sequence[EventBase], notify: bool = True
) -> None:
    """Add events to the outbox inside the caller's transaction; the relay publishes them after commit.

    ``notify``: wake the relay, wherever it runs, on commit. A writer in the process whose relay leads
    wakes it itself after the commit (``OutboxRelay.wake``), a round trip less.
    """
    if not events:
        return
    rows = []
    for event in events:
        record = encode(event)
        topic = names(names.topic_for_event(getattr(event, "type")))  # noqa: B009
        headers = [[name, value.decode()] for name, value in record.headers]
        rows.append((service, topic, record.key, record.value, headers, event.id))
    await conn.copy_records_to_table(
        "outbox",
        records=rows,
        columns=["service", "topic", "key", "value", "headers", "event_id"],
    )
    if notify:  # delivered on commit, so the relay wakes up only when there is something to send
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, service)


@dataclass(frozen=True)
class PublishReport:
    """What one pass of the relay did with the rows it read."""

    sent: int
    parked: int
    failed: int


class OutboxRelay:
    """Publishes a service's outbox rows in id order and marks them sent."""

    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        batch_size: int = 1000,
        idle_wait_s: float = 1.0,
        refresh_every_s: float = 5.0,
        standby_wait_s: float = 2.0,
    ) -> None:
        self.service = service
        self.pool = pool
        self.producer = producer
        # The relay's own connection (not the pool's): it holds the leader lock and listens.
        self.connect = connect
        self.batch_size = batch_size
        self.idle_wait_s = idle_wait_s
        self.refresh_every_s = refresh_every_s
        self.standby_wait_s = standby_wait_s
        self._wake = asyncio.Event()
        # Holding the relay lock: writers in this process wake it themselves, without a notification.
        self.leading = False

    def wake(self) -> None:
        """Publish what was just committed now, rather than at the next notification or idle wait."""
        self._wake.set()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.service:
            self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; a broker or database outage is waited out, not fatal."""
        backoff = 0.1
        while True:
            try:
                await self._lead()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("outbox relay retrying in %.1fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _lead(self) -> None:
        """Take the service's relay lock on an own connection, then publish while holding it."""
        conn = await self.connect()
        try:
            while True:
                if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"outbox:{self.service}"):
                    break
                await asyncio.sleep(self.standby_wait_s)  # another replica publishes; stand by
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self.leading = True
            next_refresh = 0.0
            backoff = 0.1
            while not conn.is_closed():
                # Cleared before looking, so that a wake while publishing is not lost: it makes another look.
                self._wake.clear()
                try:
                    # Before publishing: while the broker is down every pass fails there, and the backlog (what
                    # VigilOutboxStuck watches) must still grow on /metrics.
                    if time.monotonic() >= next_refresh:
                        await self.refresh_backlog()
                        next_refresh = time.monotonic() + self.refresh_every_s
                    report = await self.publish_pending()
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    log.warning("outbox publishing retrying in %.1fs: %r", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                if report.sent + report.parked < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.idle_wait_s)
            # The lock went with the connection: start over and compete for it again.
            raise ConnectionError("the outbox relay's connection closed")
        finally:
            self.leading = False
            if not conn.is_closed():
                with contextlib.suppress(Exception):  # closing releases the lock and the listener anyway
                    await conn.close(timeout=5)

    async def flush(self) -> int:
        """Publish every row left, holding the relay's lock; return how many went.

        A stopping service calls this once its relay, consumer and background work have ended: rows
        written in the last moments go now rather than at the next start. Where another replica
        holds the lock, it publishes them, and this returns 0.
        """
        conn = await self.connect()
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"outbox:{self.service}"):
                return 0
            sent = 0
            while True:
                report = await self.publish_pending()
                sent += report.sent
                if report.sent + report.parked < self.batch_size:
                    return sent
        finally:
            with contextlib.suppress(Exception):  # closing releases the lock anyway
                await conn.close(timeout=5)

    async def publish_pending(self) -> PublishReport:
        """Publish one batch of unsent rows, mark them sent and park those refused for good.

        Raises the first retriable error after recording what did succeed, so that the caller
        backs off; the failed rows stay pending and are tried again in order.
        """
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT id, topic, key, value, headers, attempts FROM outbox
                   WHERE service = $1 AND sent_at IS NULL AND parked_at IS NULL
                   ORDER BY id LIMIT $2""",
                self.service,
                self.batch_size,
            )
        if not rows:
            return PublishReport(0, 0, 0)
        outcomes = await self._send(rows)
        sent = [row["id"] for row, error in zip(rows, outcomes, strict=True) if error is None]
        failed = [(row, error) for row, error in zip(rows, outcomes, strict=True) if error is not None]
        to_park = [
            (row["id"], _describe(error))
            for row, error in failed
            if not is_retriable(error) or (sent and row["attempts"] + 1 >= MAX_ATTEMPTS)
        ]
        retried = [row["id"] for row, error in failed if is_retriable(error) and sent]
        # No transaction: each update stands alone (a row sent is sent, whatever becomes of the others),
        # and the commonest pass, every row sent, is then one round trip.
        async with self.pool.acquire() as conn:
            if sent:
                await conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", sent)
            if to_park:
                await conn.executemany(
                    "UPDATE outbox SET parked_at = now(), error = $2, attempts = attempts + 1 WHERE id = $1", to_park
                )
            if retried:
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, error = 'retriable failure' "
                    "WHERE id = ANY($1::bigint[]) AND parked_at IS NULL",
                    retried,
                )
        OUTBOX_PUBLISHED.labels(self.service).inc(len(sent))
        for row_id, error in to_park:
            OUTBOX_PARKED.labels(self.service).inc()
            log.error("outbox row %d parked (vigil outbox retry %d re-queues it): %s", row_id, row_id, error)
        parked_ids = {row_id for row_id, _ in to_park}
        retriable = [error for row, error in failed if row["id"] not in parked_ids]
        if retriable:
            raise retriable[0]
        return PublishReport(sent=len(sent), parked=len(to_park), failed=len(failed))

    async def _send(self, rows: Sequence[asyncpg.Record]) -> list[BaseException | None]:
        """Hand every row to the producer, then wait for the broker; one outcome per row."""
        pending: list[asyncio.Future[Any] | BaseException] = []
        for row in rows:
            try:
                pending.append(
                    await self.producer.send(
                        row["topic"],
                        key=row["key"],
                        value=row["value"],
                        headers=[(name, value.encode()) for name, value in row["headers"]],
                    )
                )
            except Exception as exc:  # refused before it left, e.g. larger than max_request_size
                pending.append(exc)
        outcomes: list[BaseException | None] = []
        for item in pending:
            if isinstance(item, BaseException):
                outcomes.append(item)
                continue
            try:
                await item
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def refresh_backlog(self) -> None:
        async with self.pool.acquire() as conn:
            backlog = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE service = $1 AND sent_at IS NULL AND parked_at IS NULL",
                self.service,
            )
        OUTBOX_BACKLOG.labels(self.service).set(backlog)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


# ---- operators ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParkedRow:
    id: int
    service: str
    topic: str
    event_id: str
    key: str
    size: int
    attempts: int
    error: str | None
    parked_at: datetime


async def list_parked(conn: Conn, *, service: str | None = None) -> list[ParkedRow]:
    """Return the parked rows, oldest first."""
    rows = await conn.fetch(
        """SELECT id, service, topic, event_id, key, octet_length(value) AS size, attempts, error, parked_at
           FROM outbox WHERE sent_at IS NULL AND parked_at IS NOT NULL AND ($1::text IS NULL OR service = $1)
           ORDER BY id""",
        service,
    )
    return [
        ParkedRow(
            id=r["id"],
            service=r["service"],
            topic=r["topic"],
            event_id=r["event_id"],
            key=bytes(r["key"]).decode("utf-8", "replace"),
            size=r["size"],
            attempts=r["attempts"],
            error=r["error"],
            parked_at=r["parked_at"],
        )
        for r in rows
    ]


async def retry_parked(conn: Conn, *, row_id: int) -> bool:
    """Put a parked row back in line; return False when no parked row has that id."""
    done = await conn.fetchval(
        """UPDATE outbox SET parked_at = NULL, attempts = 0, error = NULL
           WHERE id = $1 AND parked_at IS NOT NULL AND sent_at IS NULL RETURNING service""",
        row_id,
    )
    if done is not None:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, done)
    return done is not None
