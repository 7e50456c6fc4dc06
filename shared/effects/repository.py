"""The SQL of the ``effects`` table."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.db import Conn
from shared.effects.domain import RETRYABLE, Effect, FinalStatus, Status

# Delivered on commit to every runner of the service (payload: the service name).
NOTIFY_CHANNEL = "vigil_effects"

_EFFECT_COLUMNS = (
    "id, service, kind, key, subject, target, payload, attempts, not_before, created_at, timeout_s, max_attempts, runs"
)


def _effect(row: asyncpg.Record) -> Effect:
    return Effect(
        id=row["id"],
        service=row["service"],
        kind=row["kind"],
        key=row["key"],
        subject=row["subject"],
        target=row["target"],
        payload=row["payload"],
        attempts=row["attempts"],
        not_before=row["not_before"],
        created_at=row["created_at"],
        timeout_s=row["timeout_s"],
        max_attempts=row["max_attempts"],
        ran_before=row["runs"] > 1,
    )


async def enqueue(
    conn: Conn,
    *,
    service: str,
    kind: str,
    key: str,
    subject: str,
    target: str,
    payload: dict[str, Any],
    not_before: datetime | None = None,
    timeout_s: float | None = None,
    max_attempts: int | None = None,
) -> bool:
    """Add an effect inside the caller's transaction; return False if (service, kind, key) exists already.

    The runner sees it only once the transaction commits, so a rolled-back decision leaves no
    effect behind. A ``not_before`` in the future schedules it (e.g. the undo of a temporary block).
    ``timeout_s`` and ``max_attempts``, when given, override the kind's for this effect.
    """
    effect_id = await conn.fetchval(
        """INSERT INTO effects (service, kind, key, subject, target, payload, not_before, timeout_s, max_attempts)
           VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8, $9)
           ON CONFLICT (service, kind, key) DO NOTHING
           RETURNING id""",
        service,
        kind,
        key,
        subject,
        target,
        payload,
        not_before,
        timeout_s,
        max_attempts,
    )
    if effect_id is None:
        return False
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, service)
    return True


async def due(
    conn: Conn, *, service: str, kind: str, exclude_targets: Sequence[str], limit: int, in_order: bool = False
) -> list[asyncpg.Record]:
    """Lock due effects of one kind, oldest first: pending ones, and running ones whose lease expired.

    ``in_order``: an effect waits while an older one of its kind to its target is pending or running
    (waiting for a retry, or on another runner): a target's effects are done in the order enqueued.
    Call inside a transaction; rows another runner has locked are skipped, not waited for.
    """
    return await conn.fetch(_DUE_IN_ORDER if in_order else _DUE, service, kind, list(exclude_targets), limit)


_DUE = """SELECT id, target, status FROM effects e
    WHERE service = $1 AND kind = $2 AND status IN ('pending', 'running') AND not_before <= now()
      AND (status = 'pending' OR lease_until < now())
      AND target <> ALL($3::text[])
    ORDER BY not_before, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED"""
# The same, but an effect waits while an older one to its target is pending (held or waiting for a retry) or
# running, on any runner (effects_in_order).
_DUE_IN_ORDER = _DUE.replace(
    "AND target <> ALL($3::text[])",
    """AND target <> ALL($3::text[])
      AND NOT EXISTS (SELECT 1 FROM effects o WHERE o.service = e.service AND o.kind = e.kind AND o.target = e.target
                        AND o.status IN ('pending', 'running') AND o.id < e.id)""",
)


async def cancel_pending(
    conn: Conn, *, service: str, kind: str, key_prefix: str | None = None, target: str | None = None
) -> int:
    """Cancel the pending effects of a kind whose key starts so (or that go to this target): no longer to be done,
    and never retried. In the caller's transaction; a running one is left to finish. Return how many."""
    status = await conn.execute(
        """UPDATE effects SET status = 'cancelled', last_error = 'no longer to be done', finished_at = now(),
               updated_at = now()
           WHERE service = $1 AND kind = $2 AND status = 'pending'
             AND ($3::text IS NULL OR starts_with(key, $3)) AND ($4::text IS NULL OR target = $4)""",
        service,
        kind,
        key_prefix,
        target,
    )
    return int(status.split()[-1])


async def lease(conn: Conn, *, ids: Sequence[int], timeout_s: float, margin_s: float, token: uuid.UUID) -> list[Effect]:
    """Mark the locked effects running under ``token``; count the attempt.

    The lease lasts the effect's own timeout (else ``timeout_s``, the kind's) plus ``margin_s``.
    """
    rows = await conn.fetch(
        f"""UPDATE effects
            SET status = 'running', attempts = attempts + 1, runs = runs + 1, lease_token = $2,
                lease_until = now() + make_interval(secs => coalesce(timeout_s, $3) + $4), updated_at = now()
            WHERE id = ANY($1::bigint[])
            RETURNING {_EFFECT_COLUMNS}""",
        list(ids),
        token,
        timeout_s,
        margin_s,
    )
    return sorted((_effect(row) for row in rows), key=lambda e: (e.not_before, e.id))


async def finish(
    conn: Conn,
    *,
    effect_id: int,
    token: uuid.UUID,
    status: FinalStatus,
    attempts: int,
    error: str | None,
    result: dict[str, Any],
) -> bool:
    """Record a final outcome; False if the lease was lost (another runner took the effect since)."""
    updated = await conn.fetchval(
        """UPDATE effects
           SET status = $3, attempts = $4, last_error = $5, result = $6, finished_at = now(),
               lease_until = NULL, lease_token = NULL, updated_at = now()
           WHERE id = $1 AND lease_token = $2 AND status = 'running'
           RETURNING id""",
        effect_id,
        token,
        status,
        attempts,
        error,
        result,
    )
    return updated is not None


async def reschedule(conn: Conn, *, effect_id: int, token: uuid.UUID, error: str | None, delay_s: float) -> bool:
    """Put an effect back in line after a transient failure; False if the lease was lost."""
    updated = await conn.fetchval(
        """UPDATE effects
           SET status = 'pending', last_error = $3, not_before = now() + make_interval(secs => $4),
               lease_until = NULL, lease_token = NULL, updated_at = now()
           WHERE id = $1 AND lease_token = $2 AND status = 'running'
           RETURNING id""",
        effect_id,
        token,
        error,
        delay_s,
    )
    return updated is not None


async def release(conn: Conn, *, leases: Sequence[tuple[int, uuid.UUID]]) -> int:
    """Hand effects this runner holds back to the queue at once (a clean stop); return how many.

    The attempt the stop cut short is not counted: it was not the effect's failure. (A crash still
    counts, so that an effect that brings its runner down is parked, not run again and again.)
    """
    status = await conn.execute(
        """UPDATE effects e
           SET status = 'pending', not_before = now(), lease_until = NULL, lease_token = NULL,
               attempts = greatest(e.attempts - 1, 0), updated_at = now()
           FROM unnest($1::bigint[], $2::uuid[]) AS held (id, token)
           WHERE e.id = held.id AND e.lease_token = held.token AND e.status = 'running'""",
        [effect_id for effect_id, _ in leases],
        [token for _, token in leases],
    )
    return int(status.split()[-1])


async def defer(conn: Conn, *, effect_id: int, token: uuid.UUID, wait_s: float) -> bool:
    """Hand an effect back unrun, due again in ``wait_s``: neither its attempt nor its run counted."""
    updated = await conn.fetchval(
        """UPDATE effects
           SET status = 'pending', not_before = now() + make_interval(secs => $3), lease_until = NULL,
               lease_token = NULL, attempts = greatest(attempts - 1, 0), runs = greatest(runs - 1, 0),
               updated_at = now()
           WHERE id = $1 AND lease_token = $2 AND status = 'running'
           RETURNING id""",
        effect_id,
        token,
        wait_s,
    )
    return updated is not None


async def release_claims(conn: Conn, *, tokens: Sequence[uuid.UUID]) -> int:
    """Hand back every effect leased under these claims and never started (the runner stopped in between):
    neither its attempt nor its run counted."""
    if not tokens:
        return 0
    status = await conn.execute(
        """UPDATE effects
           SET status = 'pending', not_before = now(), lease_until = NULL, lease_token = NULL,
               attempts = greatest(attempts - 1, 0), runs = greatest(runs - 1, 0), updated_at = now()
           WHERE lease_token = ANY($1::uuid[]) AND status = 'running'""",
        list(tokens),
    )
    return int(status.split()[-1])


async def retry(conn: Conn, *, effect_id: int) -> Status | None:
    """Send a parked or failed effect back to `pending`, attempts reset, due now.

    Return the status the effect had (None if there is no such effect); only a parked or failed
    one is re-queued.
    """
    async with conn.transaction():
        status: Status | None = await conn.fetchval("SELECT status FROM effects WHERE id = $1 FOR UPDATE", effect_id)
        if status not in RETRYABLE:
            return status
        service = await conn.fetchval(
            """UPDATE effects
               SET status = 'pending', attempts = 0, not_before = now(), finished_at = NULL, result = NULL,
                   updated_at = now()
               WHERE id = $1
               RETURNING service""",
            effect_id,
        )
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, service)
    return status


async def move_pending(conn: Conn, *, service: str, kind: str | None, key: str, not_before: datetime) -> bool:
    """Move a pending effect (e.g. the undo of a leased action) to another due time; False if none waits."""
    moved = await conn.fetchval(
        """UPDATE effects SET not_before = $4, updated_at = now()
           WHERE service = $1 AND ($2::text IS NULL OR kind = $2) AND key = $3 AND status = 'pending'
           RETURNING id""",
        service,
        kind,
        key,
        not_before,
    )
    if moved is not None:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, service)
    return moved is not None


async def list_(
    conn: Conn, *, service: str | None = None, status: str | None = None, limit: int = 100
) -> list[asyncpg.Record]:
    """Effects for operators, newest first, optionally of one service or in one status."""
    return await conn.fetch(
        """SELECT id, service, kind, key, subject, target, status, attempts, not_before, last_error,
                  result, created_at, updated_at, finished_at
           FROM effects
           WHERE ($1::text IS NULL OR service = $1) AND ($2::text IS NULL OR status = $2)
           ORDER BY id DESC
           LIMIT $3""",
        service,
        status,
        limit,
    )


async def counts(conn: Conn, *, service: str) -> list[asyncpg.Record]:
    """Per kind: effects due now and waiting for a runner (queued), and parked ones."""
    return await conn.fetch(
        """SELECT kind,
                  count(*) FILTER (WHERE status = 'pending' AND not_before <= now()) AS queued,
                  count(*) FILTER (WHERE status = 'parked') AS parked
           FROM effects
           WHERE service = $1 AND status IN ('pending', 'parked')
           GROUP BY kind""",
        service,
    )


async def prune(pool: asyncpg.Pool, *, service: str, keep: timedelta) -> int:
    """Delete this service's succeeded, failed and cancelled effects finished longer than ``keep`` ago.

    Deleting an effect frees its idempotency key: an enqueue with the same key after that runs
    again, so ``keep`` must outlast any redelivery that could enqueue it anew. Parked effects
    stay until an operator retries them.
    """
    async with pool.acquire() as conn:
        status = await conn.execute(
            """DELETE FROM effects
               WHERE service = $1 AND status IN ('succeeded', 'failed', 'cancelled')
                 AND finished_at < now() - $2::interval""",
            service,
            keep,
        )
    return int(status.split()[-1])


async def release_pending(conn: Conn, *, service: str, kind: str, target: str) -> int:
    """Make the pending effects of a kind to a target due now (they were held for it); return how many."""
    status = await conn.execute(
        """UPDATE effects SET not_before = now(), updated_at = now()
           WHERE service = $1 AND kind = $2 AND target = $3 AND status = 'pending' AND not_before > now()""",
        service,
        kind,
        target,
    )
    return int(status.split()[-1])
