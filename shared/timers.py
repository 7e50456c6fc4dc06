"""Durable timers: a due time persisted with the state that set it, fired by a poller that survives restarts.

A timer is written in the same transaction as the decision that needs it, so a crash cannot lose
it; at start-up the poller fires whatever fell due while the service was down (reconciliation).
Each timer fires in its own savepoint: one whose handler fails is retried with backoff and parked
after a few attempts, never holding up the others. A timer of a kind this process has no handler
for stays pending: a newer replica set it, and a newer replica will fire it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.backoff import backoff_delay
from shared.consumer import HandlerContext, write_context
from shared.db import Conn
from shared.errors import is_retriable
from shared.metrics import TIMERS_FIRED
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
# Takes the lock a timer's handler takes on its subject (an incident's, a task's), given the subject.
SubjectLock = Callable[[Conn, str], Awaitable[None]]

MAX_ATTEMPTS = 5


def retry_delay(attempt: int) -> timedelta:
    """How long a failed timer waits before its next attempt (``attempt`` = failures so far)."""
    return timedelta(seconds=backoff_delay(attempt, base_s=1.0, cap_s=300.0))


async def schedule(
    conn: Conn,
    *,
    service: str,
    kind: str,
    subject: str,
    due_at: datetime,
    payload: dict[str, Any] | None = None,
) -> None:
    """Set (or move) the one pending timer of this kind for this subject, in one round trip."""
    # The count makes the insert wait for the cancelling update (a data-modifying WITH runs when
    # its rows are read), so the pending one is out of the unique index before the new one goes in.
    # One that another transaction set meanwhile (the poller firing the last and setting the next) is
    # past this statement's snapshot: the conflict moves it instead.
    await conn.execute(
        """WITH cancelled AS (
               UPDATE timers SET cancelled_at = now()
               WHERE service = $1 AND kind = $2 AND subject = $3 AND fired_at IS NULL AND cancelled_at IS NULL
               RETURNING 1)
           INSERT INTO timers (service, kind, subject, due_at, payload)
           SELECT $1, $2, $3, $4, $5 FROM (SELECT count(*) FROM cancelled) AS moved
           ON CONFLICT (service, kind, subject) WHERE fired_at IS NULL AND cancelled_at IS NULL
           DO UPDATE SET due_at = excluded.due_at, asked_at = NULL, payload = excluded.payload""",
        service,
        kind,
        subject,
        due_at,
        payload or {},
    )


# A subject's live timers (pending or fired) are looked up by its key, LATERAL (timers_live_by_subject):
# a statement run again and again gets a generic plan, kept while the table grows, and one made while the
# table was small (a new deployment's first minutes) would otherwise read every timer of the kind for
# each subject. A subject's pending timer is then moved to the new time as a new timer would be (its
# attempts, error and parking cleared), in the insert's conflict: Postgres takes that row by the
# unique index, and waits for, then sees, whatever another transaction did to it meanwhile.
SCHEDULE_MANY = """INSERT INTO timers (service, kind, subject, due_at)
   SELECT $1, $2, w.subject, w.due_at
   FROM unnest($3::text[], $4::timestamptz[]) AS w(subject, due_at)
   LEFT JOIN LATERAL (
       SELECT true AS same FROM timers t
       WHERE t.service = $1 AND t.kind = $2 AND t.subject = w.subject AND t.cancelled_at IS NULL
         AND coalesce(t.asked_at, t.due_at) = w.due_at
       LIMIT 1) AS same_time ON true
   WHERE same_time.same IS NULL
   ON CONFLICT (service, kind, subject) WHERE fired_at IS NULL AND cancelled_at IS NULL
   DO UPDATE SET due_at = excluded.due_at, asked_at = NULL, payload = excluded.payload, attempts = 0,
                 last_error = NULL, parked_at = NULL"""


async def schedule_many(conn: Conn, *, service: str, kind: str, due: Mapping[str, datetime]) -> None:
    """Set (or move) the one pending timer of this kind for each subject, to its time, in one round trip.

    A subject whose timer for that very time is pending already (retrying too), or has fired, is left as it
    is: what restates a due time (each change of a step that keeps its due time) never makes a fired timer
    fire again, nor a failing one start its retries afresh.
    """
    if not due:
        return
    await conn.execute(
        SCHEDULE_MANY,
        service,
        kind,
        list(due),
        list(due.values()),
    )


async def cancel(conn: Conn, *, service: str, kind: str, subject: str) -> None:
    await conn.execute(
        """UPDATE timers SET cancelled_at = now()
           WHERE service = $1 AND kind = $2 AND subject = $3 AND fired_at IS NULL AND cancelled_at IS NULL""",
        service,
        kind,
        subject,
    )


# Each subject's pending timer is found by its key (LATERAL, as in SCHEDULE_MANY, and why), then updated by
# its id: a timer another transaction changes meanwhile (a retry, a parking, a move) keeps its id, is waited
# for, and is cancelled as it then stands unless it fired. The check is written so that no partial index of
# pending timers matches it: the rows are reached by their ids, never by a walk of the kind's timers.
CANCEL_MANY = """UPDATE timers t SET cancelled_at = now()
   WHERE t.id = ANY(ARRAY(
           SELECT p.id FROM unnest($3::text[]) AS s(subject) CROSS JOIN LATERAL (
               SELECT p.id FROM timers p
               WHERE p.service = $1 AND p.kind = $2 AND p.subject = s.subject
                 AND p.fired_at IS NULL AND p.cancelled_at IS NULL
               OFFSET 0) AS p))
     AND coalesce(t.fired_at, t.cancelled_at) IS NULL"""


async def cancel_many(conn: Conn, *, service: str, kind: str, subjects: Sequence[str]) -> None:
    """Cancel the pending timer of this kind of each subject, in one round trip."""
    if subjects:
        await conn.execute(CANCEL_MANY, service, kind, list(subjects))


MAX_BACKOFF_S = 30.0  # the longest wait between polls that failed for a retriable reason


class TimerPoller:
    """Fires a service's due timers, each in a transaction with the events its handler emits."""

    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        names: TopicNames,
        handlers: dict[str, TimerHandler],
        locks: Mapping[str, SubjectLock] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        """``locks``: for the kinds whose handler locks the timer's subject, how (see ``_fire_locked``)."""
        self.service = service
        self.pool = pool
        self.names = names
        self.handlers = handlers
        self.locks = {kind: lock for kind, lock in (locks or {}).items() if kind in handlers}
        self.unlocked = [kind for kind in handlers if kind not in self.locks]
        self.interval_s = interval_s

    async def run(self) -> None:
        backoff = self.interval_s
        while True:
            try:
                fired = await self.fire_due()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("timer poller retrying in %.1fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = self.interval_s
            if fired == 0:
                await asyncio.sleep(await self._until_next())

    async def _until_next(self) -> float:
        """Seconds to sleep: until the next timer falls due, at most the interval (a new timer may come sooner)."""
        try:
            async with self.pool.acquire() as conn:
                wait: float | None = await conn.fetchval(
                    """SELECT extract(epoch FROM min(due_at) - now())::float8 FROM timers
                       WHERE service = $1 AND kind = ANY($2::text[])
                         AND fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL""",
                    self.service,
                    list(self.handlers),
                )
        except Exception as exc:
            if not is_retriable(exc):
                raise
            return self.interval_s
        if wait is None:
            return self.interval_s
        # Due already, yet none was taken: another replica holds them (SKIP LOCKED) until it commits. Looked
        # at again shortly, not at once: four round trips a pass would spin for as long as it holds them.
        return self.interval_s / 4 if wait <= 0 else min(wait, self.interval_s)

    async def fire_due(self, limit: int = 100) -> int:
        """Fire timers due now; return how many were taken."""
        fired = await self._fire_batch(limit) if self.unlocked else 0
        if self.locks:
            fired += await self._fire_locked(limit)
        return fired

    async def _fire_batch(self, limit: int) -> int:
        """Fire due timers of the kinds that lock no subject in one transaction, each in its own savepoint."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, kind, subject, due_at, payload, attempts FROM timers
                   WHERE service = $1 AND kind = ANY($2::text[]) AND due_at <= now()
                     AND fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL
                   ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED""",
                self.service,
                self.unlocked,
                limit,
            )
            ctx = HandlerContext(conn=conn, service=self.service, names=self.names)
            for row in rows:
                await self._fire(ctx, row)
            await write_context(conn, ctx)
        return len(rows)

    async def _fire_locked(self, limit: int) -> int:
        """Fire due timers of the kinds that lock their subject, each in its own transaction, subject first.

        Whoever cancels or moves a timer (an approval, an acknowledgement) holds its subject's lock when it
        does: a poller that held the timer's row while it waited for the subject would deadlock with it.
        So the subject is locked first, and the timer is read again under it: one cancelled, moved or fired
        meanwhile is left alone. One transaction a timer: the poller holds one subject at a time.
        """
        async with self.pool.acquire() as conn:
            due = await conn.fetch(
                """SELECT id, kind, subject, attempts FROM timers
                   WHERE service = $1 AND kind = ANY($2::text[]) AND due_at <= now()
                     AND fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL
                   ORDER BY due_at LIMIT $3""",
                self.service,
                list(self.locks),
                limit,
            )
            fired = 0
            for candidate in due:
                async with conn.transaction():
                    try:
                        async with conn.transaction():  # a savepoint: what failed leaves the rest usable
                            await self.locks[candidate["kind"]](conn, candidate["subject"])
                    except Exception as exc:
                        if is_retriable(exc):
                            raise
                        if isinstance(exc, asyncpg.QueryCanceledError | asyncpg.LockNotAvailableError):
                            continue  # a lock or statement timeout: the subject is busy, not broken; next pass
                        # A subject its lock cannot take (a malformed one): counted like a handler's failure,
                        # then parked, never holding up the timers behind it.
                        await self._failed(conn, candidate, exc)
                        continue
                    row = await conn.fetchrow(
                        """SELECT id, kind, subject, due_at, payload, attempts FROM timers
                           WHERE id = $1 AND due_at <= now()
                             AND fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL
                           FOR UPDATE SKIP LOCKED""",
                        candidate["id"],
                    )
                    if row is None:
                        continue
                    ctx = HandlerContext(conn=conn, service=self.service, names=self.names)
                    await self._fire(ctx, row)
                    await write_context(conn, ctx)
                    fired += 1
        return fired

    async def _fire(self, ctx: HandlerContext, row: Any) -> None:
        timer = Timer(row["id"], row["kind"], row["subject"], row["due_at"], row["payload"])
        mark = ctx.mark()
        try:
            async with ctx.conn.transaction():
                # Mark first: a handler may set the next timer of the same kind for the subject.
                await ctx.conn.execute("UPDATE timers SET fired_at = now() WHERE id = $1", timer.id)
                await self.handlers[timer.kind](ctx, timer)
        except Exception as exc:
            if is_retriable(exc):
                raise  # the database itself failed: the whole poll is retried
            ctx.drop_since(mark)  # its events and audit entries go with its rolled-back writes
            await self._failed(ctx.conn, row, exc)
            return
        TIMERS_FIRED.labels(self.service, timer.kind, "fired").inc()

    async def _failed(self, conn: Conn, row: Any, exc: Exception) -> None:
        """Count a failed attempt at the timer: it is tried again later, and parked after MAX_ATTEMPTS.

        Counted on the row as it is now, and only while it is pending: another replica may have fired,
        moved or counted it since ``row`` was read.
        """
        error = f"{type(exc).__name__}: {exc}"[:2000]
        attempts = await conn.fetchval(
            """UPDATE timers SET attempts = attempts + 1, last_error = $2,
                   parked_at = CASE WHEN attempts + 1 >= $3 THEN now() END,
                   due_at = CASE WHEN attempts + 1 >= $3 THEN due_at ELSE now() + $4::interval END,
                   asked_at = coalesce(asked_at, due_at)
               WHERE id = $1 AND fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL
               RETURNING attempts""",
            row["id"],
            error,
            MAX_ATTEMPTS,
            retry_delay(row["attempts"] + 1),
        )
        if attempts is None:
            return  # fired, cancelled or parked meanwhile
        if attempts >= MAX_ATTEMPTS:
            TIMERS_FIRED.labels(self.service, row["kind"], "parked").inc()
            log.error(
                "timer %d (%s %s) parked after %d attempts: %s",
                row["id"],
                row["kind"],
                row["subject"],
                attempts,
                error,
                exc_info=exc,
            )
            return
        TIMERS_FIRED.labels(self.service, row["kind"], "retry").inc()
        log.warning(
            "timer %d (%s %s) failed, attempt %d of %d: %s",
            row["id"],
            row["kind"],
            row["subject"],
            attempts,
            MAX_ATTEMPTS,
            error,
        )
