"""Durable timers: a due time persisted with the state that set it, fired by a poller that survives restarts.

A timer is written in the same transaction as the decision that needs it, so a crash cannot lose
it; at start-up the poller fires whatever fell due while the service was down (reconciliation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.consumer import HandlerContext
from shared.db import Conn
from shared.errors import is_retriable
from shared.outbox import write_events
from shared.topics import TopicNames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timer:
    id: int
    kind: str
    subject: str
    due_at: datetime
    payload: dict[str, Any]


TimerHandler = Callable[[HandlerContext, Timer], Awaitable[None]]


async def schedule(
    conn: Conn,
    *,
    service: str,
    kind: str,
    subject: str,
    due_at: datetime,
    payload: dict[str, Any] | None = None,
) -> None:
    """Set (or move) the one pending timer of this kind for this subject."""
    await cancel(conn, service=service, kind=kind, subject=subject)
    await conn.execute(
        "INSERT INTO timers (service, kind, subject, due_at, payload) VALUES ($1, $2, $3, $4, $5)",
        service,
        kind,
        subject,
        due_at,
        payload or {},
    )


async def cancel(conn: Conn, *, service: str, kind: str, subject: str) -> None:
    await conn.execute(
        """UPDATE timers SET cancelled_at = now()
           WHERE service = $1 AND kind = $2 AND subject = $3 AND fired_at IS NULL AND cancelled_at IS NULL""",
        service,
        kind,
        subject,
    )


class TimerPoller:
    """Fires a service's due timers, each in a transaction with the events its handler emits."""

    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        names: TopicNames,
        handlers: dict[str, TimerHandler],
        interval_s: float = 1.0,
    ) -> None:
        self.service = service
        self.pool = pool
        self.names = names
        self.handlers = handlers
        self.interval_s = interval_s

    async def run(self) -> None:
        while True:
            try:
                fired = await self.fire_due()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("timer poller retrying: %r", exc)
                fired = 0
            if fired == 0:
                await asyncio.sleep(self.interval_s)

    async def fire_due(self, limit: int = 100) -> int:
        """Fire timers due now; return how many fired."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, kind, subject, due_at, payload FROM timers
                   WHERE service = $1 AND due_at <= now() AND fired_at IS NULL AND cancelled_at IS NULL
                   ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
                self.service,
                limit,
            )
            ctx = HandlerContext(conn=conn, service=self.service, names=self.names)
            for row in rows:
                timer = Timer(row["id"], row["kind"], row["subject"], row["due_at"], row["payload"])
                # Mark first: a handler may set the next timer of the same kind for the subject.
                await conn.execute("UPDATE timers SET fired_at = now() WHERE id = $1", timer.id)
                handler = self.handlers.get(timer.kind)
                if handler is None:
                    log.error("no handler for timer kind %s; dropping timer %d", timer.kind, timer.id)
                    continue
                await handler(ctx, timer)
            await write_events(conn, service=self.service, names=self.names, events=ctx.emitted)
        return len(rows)
