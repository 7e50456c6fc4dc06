"""Keeps the shared plumbing tables small: old processed-event ids and published outbox rows."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg

from shared.errors import is_retriable

log = logging.getLogger(__name__)

# Longer than any topic's retention (at most 7 days, dead-letter topics aside, which are not
# consumed by services): an event older than this can no longer be redelivered.
KEEP_PROCESSED = timedelta(days=8)
KEEP_SENT = timedelta(hours=1)


async def prune(
    pool: asyncpg.Pool,
    *,
    service: str,
    keep_processed: timedelta = KEEP_PROCESSED,
    keep_sent: timedelta = KEEP_SENT,
) -> tuple[int, int]:
    """Delete this service's expired ledger and outbox rows; return how many of each."""
    async with pool.acquire() as conn:
        processed = await conn.execute(
            "DELETE FROM processed_events WHERE service = $1 AND processed_at < now() - $2::interval",
            service,
            keep_processed,
        )
        sent = await conn.execute(
            "DELETE FROM outbox WHERE service = $1 AND sent_at < now() - $2::interval", service, keep_sent
        )
    return int(processed.split()[-1]), int(sent.split()[-1])


async def run(pool: asyncpg.Pool, *, service: str, every_s: float = 300.0) -> None:
    """Prune every few minutes until cancelled; a database outage only delays it."""
    while True:
        try:
            processed, sent = await prune(pool, service=service)
            if processed or sent:
                log.info("pruned %d processed ids and %d published outbox rows", processed, sent)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("housekeeping postponed: %r", exc)
        await asyncio.sleep(every_s)
