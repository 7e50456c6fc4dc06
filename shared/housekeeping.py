"""Keeps the shared plumbing tables small: expired processed-event ids, published outbox rows, old timers."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg

from shared import effects, idempotency
from shared.errors import is_retriable
from shared.topics import ledger_retention

log = logging.getLogger(__name__)

KEEP_SENT = timedelta(hours=1)
KEEP_TIMERS = timedelta(days=30)
# Finished effects keep their idempotency key this long: re-enqueueing the same key is a no-op.
KEEP_EFFECTS = timedelta(days=30)


async def prune(
    pool: asyncpg.Pool,
    *,
    service: str,
    keep_processed: timedelta | None = None,
    keep_sent: timedelta = KEEP_SENT,
) -> tuple[int, int]:
    """Delete this service's expired ledger and outbox rows; return how many of each.

    The ledger keeps an id longer than any topic the service consumes keeps the event
    (``shared.topics.ledger_retention``): until then the event may be redelivered.
    """
    if keep_processed is None:
        keep_processed = ledger_retention(service)
    async with pool.acquire() as conn:
        processed = await conn.execute(
            "DELETE FROM processed_events WHERE service = $1 AND processed_at < now() - $2::interval",
            service,
            keep_processed,
        )
        sent = await conn.execute(
            "DELETE FROM outbox WHERE service = $1 AND sent_at < now() - $2::interval", service, keep_sent
        )
        await conn.execute(
            """DELETE FROM timers WHERE service = $1 AND coalesce(fired_at, cancelled_at) < now() - $2::interval
               AND (fired_at IS NOT NULL OR cancelled_at IS NOT NULL)""",
            service,
            KEEP_TIMERS,
        )
        # Remembered answers to API requests are not per service; any service may prune them.
        await conn.execute(
            "DELETE FROM api_idempotency WHERE created_at < now() - make_interval(days => $1)",
            idempotency.RETENTION_DAYS,
        )
    return int(processed.split()[-1]), int(sent.split()[-1])


async def run(pool: asyncpg.Pool, *, service: str, every_s: float = 300.0) -> None:
    """Prune every few minutes until cancelled; a database outage only delays it."""
    while True:
        try:
            processed, sent = await prune(pool, service=service)
            finished = await effects.prune(pool, service=service, keep=KEEP_EFFECTS)
            if processed or sent or finished:
                log.info(
                    "pruned %d processed ids, %d published outbox rows and %d finished effects",
                    processed,
                    sent,
                    finished,
                )
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("housekeeping postponed: %r", exc)
        await asyncio.sleep(every_s)
