"""The effects runner: claims due effects, runs them outside any transaction, records each outcome once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.backoff import backoff_delay
from shared.consumer import HandlerContext, write_context
from shared.effects import repository
from shared.effects.domain import (
    Attempt,
    Effect,
    PermanentEffectError,
    Status,
    bound_result,
    describe_error,
    pick,
    settle,
)
from shared.errors import is_retriable
from shared.events import EffectCompleted, EffectOutcome
from shared.metrics import EFFECT_DURATION, EFFECTS_FINISHED, EFFECTS_PARKED, EFFECTS_QUEUED, EFFECTS_RUNNING
from shared.topics import TopicNames

log = logging.getLogger(__name__)

OutcomeHandler = Callable[[HandlerContext, Effect, EffectOutcome], Awaitable[None]]

# Candidates read per free slot, so that a busy target's backlog does not hide the others.
SCAN_FACTOR = 4


@dataclass(frozen=True)
class EffectKind:
    """One kind of side effect: how to run it and how much of it may run at once (per runner).

    ``execute`` returns a small JSON-able result; it raises PermanentEffectError for a refusal
    for good, anything else (or running past ``timeout_s``) is retried with backoff until
    ``max_attempts``, then the effect is parked. ``on_outcome`` runs in the transaction that
    records a final outcome (succeeded, failed, parked), with the service's HandlerContext, so the
    service can update its own state and emit its own events.
    """

    name: str
    execute: Callable[[Effect], Awaitable[dict[str, Any]]]
    timeout_s: float = 30.0
    max_attempts: int = 8
    concurrency: int = 8
    per_target_concurrency: int = 2
    on_outcome: OutcomeHandler | None = None
    # The least wait before a retry: a far side that answers late for what it did (a search index that
    # catches up within seconds) is asked again only once it can know.
    min_retry_s: float = 0.0
    # A target's effects done one after another in the order enqueued, a retry's wait included (a chat
    # room's posts): an effect waits while an older one to its target is pending or running.
    in_order: bool = False
    # Asked before each run: seconds to hold the effect back (not run, no attempt counted), or None to run it
    # (the responder's kill switch holds actions already queued while responses are paused).
    hold: Callable[[Effect], Awaitable[float | None]] | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_attempts < 1 or self.concurrency < 1 or self.per_target_concurrency < 1:
            raise ValueError(f"effect kind {self.name}: timeout, attempts and concurrency must be positive")


class EffectRunner:
    """Runs one service's effects; several replicas share the work through row locks and leases."""

    def __init__(
        self,
        service: str,
        pool: asyncpg.Pool,
        names: TopicNames,
        kinds: Sequence[EffectKind],
        *,
        connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
        poll_s: float = 1.0,
        lease_margin_s: float = 30.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        refresh_every_s: float = 5.0,
    ) -> None:
        self.service = service
        self.pool = pool
        self.names = names
        self.kinds = {kind.name: kind for kind in kinds}
        if len(self.kinds) != len(kinds):
            raise ValueError(f"{service}: two effect kinds share a name")
        # Its own connection (not the pool's) to LISTEN for new effects; without it, polling only.
        self.connect = connect
        self.poll_s = poll_s
        # Time to record the outcome after the call's timeout before another runner may take over.
        self.lease_margin_s = lease_margin_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.refresh_every_s = refresh_every_s
        self._wake = asyncio.Event()
        self._running: collections.Counter[str] = collections.Counter()
        self._running_by_target: collections.Counter[tuple[str, str]] = collections.Counter()
        self._in_flight: dict[asyncio.Task[None], tuple[Effect, uuid.UUID]] = {}
        self._failure: BaseException | None = None
        self._unknown_kinds: set[str] = set()
        self._claiming = True
        # Claims whose effects are leased in Postgres but not started here yet: a stop between the two (the
        # claim's commit awaited when the runner is cancelled) hands them back too.
        self._unstarted: set[uuid.UUID] = set()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.service:
            self._wake.set()

    async def run(self) -> None:
        """Claim and run effects until cancelled; a database outage is waited out, not fatal."""
        listener: asyncpg.Connection | None = None
        backoff = 0.1
        next_refresh = 0.0
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                self._wake.clear()  # before claiming: a notification during the claim is not lost
                try:
                    if self.connect is not None and (listener is None or listener.is_closed()):
                        listener = await self._listen()
                    started = await self.claim_and_start() if self._claiming else 0
                    if time.monotonic() >= next_refresh:
                        await self.refresh_gauges()
                        next_refresh = time.monotonic() + self.refresh_every_s
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    log.warning("effects runner retrying in %.1fs: %r", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                if not started:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            await self._stop(listener)

    async def drain(self, timeout_s: float) -> None:
        """Claim nothing more and give the effects in flight up to ``timeout_s`` to finish and record.

        A stopping service calls this so that a call already made is recorded rather than cut
        short and made again after the restart; what is still running afterwards is handed back
        when the runner is cancelled.
        """
        self._claiming = False
        in_flight = list(self._in_flight)
        if in_flight:
            _, running = await asyncio.wait(in_flight, timeout=timeout_s)
            if running:
                log.info(
                    "%s: %d effect(s) still running after %gs; handing them back", self.service, len(running), timeout_s
                )

    async def claim_and_start(self) -> int:
        """Claim as many due effects as there are free slots and start each; return how many started."""
        started = 0
        for kind in self.kinds.values():
            free = kind.concurrency - self._running[kind.name]
            if free <= 0:
                continue
            token = uuid.uuid4()
            self._unstarted.add(token)
            for effect in await self._claim(kind, free, token):
                self._start(kind, effect, token)
                started += 1
            self._unstarted.discard(token)  # every effect of the claim is in flight, or there was none
        return started

    async def _claim(self, kind: EffectKind, free: int, token: uuid.UUID) -> list[Effect]:
        load = {target: n for (name, target), n in self._running_by_target.items() if name == kind.name and n > 0}
        full = [target for target, n in load.items() if n >= kind.per_target_concurrency]
        async with self.pool.acquire() as conn, conn.transaction():
            candidates = await repository.due(
                conn,
                service=self.service,
                kind=kind.name,
                exclude_targets=full,
                limit=free * SCAN_FACTOR,
                in_order=kind.in_order,
            )
            chosen = pick(
                [(row["id"], row["target"]) for row in candidates],
                free=free,
                per_target=kind.per_target_concurrency,
                running=load,
            )
            if not chosen:
                return []
            effects = await repository.lease(
                conn, ids=chosen, timeout_s=kind.timeout_s, margin_s=self.lease_margin_s, token=token
            )
        for row in candidates:
            if row["status"] == "running" and row["id"] in chosen:
                log.warning(
                    "effect %d (%s): its runner's lease expired mid-attempt; running it again", row["id"], kind.name
                )
        return effects

    def _start(self, kind: EffectKind, effect: Effect, token: uuid.UUID) -> None:
        self._running[kind.name] += 1
        self._running_by_target[(kind.name, effect.target)] += 1
        EFFECTS_RUNNING.labels(self.service, kind.name).set(self._running[kind.name])
        task = asyncio.create_task(self._run_one(kind, effect, token), name=f"effect-{effect.id}")
        self._in_flight[task] = (effect, token)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        effect, _ = self._in_flight.pop(task)
        self._running[effect.kind] -= 1
        self._running_by_target[(effect.kind, effect.target)] -= 1
        if self._running_by_target[(effect.kind, effect.target)] <= 0:
            del self._running_by_target[(effect.kind, effect.target)]
        EFFECTS_RUNNING.labels(self.service, effect.kind).set(self._running[effect.kind])
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()  # recording failed for good: the runner stops with it
        self._wake.set()  # a slot is free

    async def _run_one(self, kind: EffectKind, effect: Effect, token: uuid.UUID) -> None:
        max_attempts = effect.max_attempts or kind.max_attempts
        if effect.attempts > max_attempts:
            # The last allowed attempt never recorded an outcome (its runner stopped or was lost
            # mid-call): park the effect instead of running it again, in case it is what brings
            # the runner down.
            attempt = Attempt("transient", error="the last attempt was interrupted before its outcome was recorded")
            try:
                await self._record(kind, effect, token, attempt, max_attempts, max_attempts)
            except Exception as exc:
                if is_retriable(exc):
                    raise
                # Its outcome is what fails to record (the service's hook, each time): parked as it is, for an
                # operator, without the hook, rather than bringing the service down at every restart.
                await self._park_unrecordable(kind, effect, token, exc)
            return
        if kind.hold is not None and (wait_s := await kind.hold(effect)) is not None:
            async with self.pool.acquire() as conn:
                await repository.defer(conn, effect_id=effect.id, token=token, wait_s=wait_s)
            return
        attempt = await self._execute(kind, effect)
        try:
            await self._record(kind, effect, token, attempt, effect.attempts, max_attempts)
        except Exception as exc:
            if is_retriable(exc):
                raise
            # The call was made; only its outcome fails to record (the service's hook, each time). Parked with what
            # the far side answered: neither made again when its lease ends nor bringing the service down.
            await self._park_unrecordable(kind, effect, token, exc, attempt)

    async def _park_unrecordable(
        self, kind: EffectKind, effect: Effect, token: uuid.UUID, exc: Exception, attempt: Attempt | None = None
    ) -> None:
        log.error(
            "effect %d (%s): its outcome cannot be recorded; parked without it", effect.id, kind.name, exc_info=exc
        )
        made = f"the call was made ({attempt.verdict}); " if attempt is not None else ""
        async with self.pool.acquire() as conn, conn.transaction():
            parked = await repository.finish(
                conn,
                effect_id=effect.id,
                token=token,
                status="parked",
                attempts=effect.attempts,
                error=f"{made}its outcome could not be recorded: {describe_error(exc)}",
                result=attempt.result if attempt is not None else {},
            )
        if parked:
            EFFECTS_FINISHED.labels(self.service, kind.name, "parked").inc()

    async def _execute(self, kind: EffectKind, effect: Effect) -> Attempt:
        started = time.monotonic()
        timeout_s = effect.timeout_s or kind.timeout_s
        try:
            result = await asyncio.wait_for(kind.execute(effect), timeout_s)
            return Attempt("ok", result=bound_result(result))
        except PermanentEffectError as exc:
            return Attempt("permanent", error=describe_error(exc), result=bound_result(exc.result))
        except TimeoutError:
            return Attempt("transient", error=f"timed out after {timeout_s:g}s")
        except Exception as exc:
            return Attempt(
                "transient",
                error=describe_error(exc),
                result=bound_result(getattr(exc, "result", None)),
                retry_after_s=getattr(exc, "retry_after_s", None),
            )
        finally:
            EFFECT_DURATION.labels(self.service, kind.name).observe(time.monotonic() - started)

    async def _record(
        self, kind: EffectKind, effect: Effect, token: uuid.UUID, attempt: Attempt, attempts: int, max_attempts: int
    ) -> None:
        """Record the attempt's outcome, retrying while the database is unavailable."""
        status = settle(attempt.verdict, attempts=attempts, max_attempts=max_attempts)
        delay_s = (
            max(
                backoff_delay(attempts, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s),
                kind.min_retry_s,
                # As long as the far side asked (Retry-After), within reason.
                min(attempt.retry_after_s or 0.0, self.backoff_cap_s),
            )
            if status == "pending"
            else 0.0
        )
        backoff = 0.1
        while True:
            try:
                recorded = await self._write_outcome(kind, effect, token, attempt, status, attempts, delay_s)
                break
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("effect %d: recording its outcome, retrying in %.1fs: %r", effect.id, backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if not recorded:
            EFFECTS_FINISHED.labels(self.service, kind.name, "superseded").inc()
            log.warning(
                "effect %d (%s): lease lost before the outcome (%s) was recorded; another attempt took over",
                effect.id,
                kind.name,
                status,
            )
            return
        EFFECTS_FINISHED.labels(self.service, kind.name, "retried" if status == "pending" else status).inc()
        if status == "succeeded":
            log.info("effect %d (%s to %s) succeeded, attempt %d", effect.id, kind.name, effect.target, attempts)
        elif status == "pending":
            log.warning(
                "effect %d (%s to %s) failed, attempt %d of %d, again in %.1fs: %s",
                effect.id,
                kind.name,
                effect.target,
                attempts,
                max_attempts,
                delay_s,
                attempt.error,
            )
        else:
            log.error(
                "effect %d (%s to %s) %s after %d attempt(s): %s",
                effect.id,
                kind.name,
                effect.target,
                status,
                attempts,
                attempt.error,
            )

    async def _write_outcome(
        self,
        kind: EffectKind,
        effect: Effect,
        token: uuid.UUID,
        attempt: Attempt,
        status: Status,
        attempts: int,
        delay_s: float,
    ) -> bool:
        """One transaction: the effect's new state, and for a final outcome its event and on_outcome."""
        async with self.pool.acquire() as conn, conn.transaction():
            if status == "pending":
                return await repository.reschedule(
                    conn, effect_id=effect.id, token=token, error=attempt.error, delay_s=delay_s
                )
            assert status in ("succeeded", "failed", "parked")
            if not await repository.finish(
                conn,
                effect_id=effect.id,
                token=token,
                status=status,
                attempts=attempts,
                error=attempt.error,
                result=attempt.result,
            ):
                return False
            outcome = EffectOutcome(
                effect_id=effect.id,
                service=effect.service,
                kind=effect.kind,
                key=effect.key,
                target=effect.target,
                status=status,
                attempts=attempts,
                error=attempt.error,
                result=attempt.result,
            )
            ctx = HandlerContext(conn=conn, service=self.service, names=self.names)
            ctx.emit(EffectCompleted(source=f"/vigil/{self.service}", subject=effect.subject, data=outcome))
            if kind.on_outcome is not None:
                await kind.on_outcome(ctx, effect, outcome)
            await write_context(conn, ctx)
        return True

    async def refresh_gauges(self) -> None:
        """Set the queued and parked gauges of every kind this service has effects of."""
        async with self.pool.acquire() as conn:
            rows = await repository.counts(conn, service=self.service)
        seen = {row["kind"]: row for row in rows}
        for name in self.kinds.keys() | seen.keys():
            row = seen.get(name)
            EFFECTS_QUEUED.labels(self.service, name).set(row["queued"] if row else 0)
            EFFECTS_PARKED.labels(self.service, name).set(row["parked"] if row else 0)
            if row and row["queued"] and name not in self.kinds and name not in self._unknown_kinds:
                self._unknown_kinds.add(name)
                log.warning("%s has effects of kind %s, which no runner of this version runs", self.service, name)

    async def _listen(self) -> asyncpg.Connection:
        assert self.connect is not None
        listener = await self.connect()
        try:
            await listener.add_listener(repository.NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            listener.terminate()
            raise
        return listener

    async def _stop(self, listener: asyncpg.Connection | None) -> None:
        """Stop the effects in flight and hand them back to the queue, so they run again without waiting."""
        held = list(self._in_flight.items())
        for task, _ in held:
            task.cancel()
        await asyncio.gather(*(task for task, _ in held), return_exceptions=True)
        leases = [(effect.id, token) for _, (effect, token) in held]
        unstarted = list(self._unstarted)
        if leases or unstarted:
            try:
                async with asyncio.timeout(5), self.pool.acquire() as conn:
                    released = await repository.release(conn, leases=leases)
                    released += await repository.release_claims(conn, tokens=unstarted)
                log.info("%s: handed %d effect(s) in flight back to the queue", self.service, released)
            except Exception as exc:
                log.warning(
                    "%s: could not hand back %d effect(s) in flight; they run again when their lease ends: %r",
                    self.service,
                    len(leases),
                    exc,
                )
        if listener is not None and not listener.is_closed():
            listener.terminate()
