"""Transactional outbox: events are written with the state they describe and published after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.cloudevents import encode
from shared.db import Conn
from shared.errors import is_retriable
from shared.events import EventBase
from shared.metrics import OUTBOX_BACKLOG, OUTBOX_PUBLISHED
from shared.topics import TopicNames

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "vigil_outbox"


async def write_events(conn: Conn, *, service: str, names: TopicNames, events: Sequence[EventBase]) -> None:
    """Add events to the outbox inside the caller's transaction; the relay publishes them after commit."""
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
    # Delivered on commit, so the relay wakes up only when there is something to send.
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, service)


class OutboxRelay:
    """Publishes a service's outbox rows in id order and marks them sent."""

    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        batch_size: int = 1000,
        idle_wait_s: float = 1.0,
        refresh_every_s: float = 5.0,
    ) -> None:
        self.service = service
        self.pool = pool
        self.producer = producer
        self.batch_size = batch_size
        self.idle_wait_s = idle_wait_s
        self.refresh_every_s = refresh_every_s
        self._wake = asyncio.Event()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.service:
            self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; a broker or database outage is waited out, not fatal."""
        listener = await self.pool.acquire()
        try:
            await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            backoff = 0.1
            next_refresh = 0.0
            while True:
                try:
                    sent = await self.publish_pending()
                    if time.monotonic() >= next_refresh:
                        await self.refresh_backlog()
                        next_refresh = time.monotonic() + self.refresh_every_s
                    backoff = 0.1
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    log.warning("outbox relay retrying in %.1fs: %r", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if sent < self.batch_size:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.idle_wait_s)
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            await self.pool.release(listener)

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows and mark them sent; return how many were sent."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Replicas of a service take turns, so that an incident's events leave in order.
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", f"outbox:{self.service}"):
                return 0
            rows = await conn.fetch(
                """SELECT id, topic, key, value, headers FROM outbox
                   WHERE service = $1 AND sent_at IS NULL
                   ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
                self.service,
                self.batch_size,
            )
            if not rows:
                return 0
            futures = [
                await self.producer.send(
                    row["topic"],
                    key=row["key"],
                    value=row["value"],
                    headers=[(name, value.encode()) for name, value in row["headers"]],
                )
                for row in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        OUTBOX_PUBLISHED.labels(self.service).inc(len(rows))
        return len(rows)

    async def refresh_backlog(self) -> None:
        async with self.pool.acquire() as conn:
            backlog = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE service = $1 AND sent_at IS NULL", self.service
            )
        OUTBOX_BACKLOG.labels(self.service).set(backlog)
