"""The composition root every service shares: connect, migrate, consume, relay, serve, stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import housekeeping, identity, statistics
from shared.consumer import (
    BatchFence,
    BatchHandler,
    ConsumeLoop,
    DeadLetterGuard,
    Decoder,
    HandlerContext,
    write_context,
)
from shared.db import connect, create_pool, migrate
from shared.effects import EffectKind, EffectRunner
from shared.errors import is_retriable
from shared.kafka import group_id, make_consumer, make_producer
from shared.logs import configure_logging
from shared.outbox import OutboxRelay
from shared.settings import VigilSettings
from shared.topics import Topic, TopicNames, ensure_topics

log = logging.getLogger(__name__)

# How long a stopping service waits for the batch in hand to be handled and committed; past it the batch
# is rolled back and redelivered after the restart. Short enough that, with the closing steps after it, a
# service exits within 10 s of SIGTERM however big its batch or busy its machine.
DRAIN_TIMEOUT_S = 6
# How long a stopping service lets the side effects in flight finish and record their outcome
# (alongside the drain): one cut short is made again after the restart, with the same key.
EFFECTS_DRAIN_TIMEOUT_S = 5.0
# Past the drain, each remaining step of a stop (tasks ending, clients and pool closing) gets this long:
# a step that hangs is named in the log and left to the process's exit, which ends it anyway.
CLOSE_TIMEOUT_S = 3.0


@dataclass
class Runtime:
    """The connected resources of one running service, handed to its routes and background tasks."""

    service: str
    settings: VigilSettings
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    names: TopicNames
    loops: list[ConsumeLoop[Any]] = field(default_factory=list)
    probe: DatabaseProbe | None = None
    # What the service's own set-up opened (a connection of its own): closed, each by name, at shutdown.
    closers: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)


class DatabaseProbe:
    """Answers "is Postgres up?" on its own connection, so /readyz never queues behind a busy pool."""

    def __init__(self, database_url: str, *, timeout_s: float = 2.0) -> None:
        self.database_url = database_url
        self.timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> bool:
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await asyncpg.connect(self.database_url)
                    return bool(await self._conn.fetchval("SELECT true"))
            except Exception as exc:
                log.warning("readiness: database check failed: %r", exc)
                await self.close()
                return False

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # never waits: the probe may be closing because the server is gone


async def check_startup(runtime: Runtime) -> None:
    """Refuse to serve on a non-loopback address without authentication, unless told so explicitly."""
    settings = runtime.settings
    if identity.is_loopback(settings.http_host):
        return
    async with runtime.pool.acquire() as conn:
        tokens = await identity.active_tokens(conn)
    if tokens == 0 and not settings.allow_unauthenticated:
        raise RuntimeError(
            f"{runtime.service} would serve on {settings.http_host} with no API token to check: create one "
            "(vigil tokens create --name NAME --role admin) or, for a local experiment only, set "
            "VIGIL_ALLOW_UNAUTHENTICATED=true"
        )
    if settings.allow_unauthenticated:
        # Allowed, but never silently: anyone who can reach the port is an administrator.
        log.warning(
            "%s serves on %s with VIGIL_ALLOW_UNAUTHENTICATED: requests without a token act as admin",
            runtime.service,
            settings.http_host,
        )


BackgroundTask = Callable[[Runtime], Coroutine[Any, Any, None]]
# A sweep's step: publish, through the outbox, at most ``limit`` of what fell due; returns how many.
SweepStep = Callable[[HandlerContext, int], Awaitable[int]]


def sweeper(step: SweepStep, *, what: str, period_s: float, limit: int = 100) -> BackgroundTask:
    """A task that runs ``step`` in a transaction of its own: again at once while it finds ``limit``, else
    after ``period_s``. What waits is in Postgres, so a restart publishes it as well."""

    async def sweep(runtime: Runtime) -> None:
        while True:
            try:
                async with runtime.pool.acquire() as conn, conn.transaction():
                    ctx = HandlerContext(conn=conn, service=runtime.service, names=runtime.names)
                    done = await step(ctx, limit)
                    await write_context(conn, ctx)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("%s retrying: %r", what, exc)
                done = 0
            if done < limit:
                await asyncio.sleep(period_s)

    return sweep


INGEST_PREFIX = "/api/v1/alerts"
# Trackers' webhooks carry whole issues, whose text may name a NUL: only what the route reads of them is stored.
WEBHOOK_PREFIX = "/api/v1/tickets/"


@dataclass
class ServiceSpec:
    """What makes one service different from another: its topics, decoding, handlers and routes."""

    name: str
    consumes: Sequence[Topic]
    decoder: Decoder[Any]
    handler: BatchHandler[Any]
    routers: Callable[[Runtime], Sequence[APIRouter]] = lambda _rt: ()
    background: Sequence[BackgroundTask] = field(default_factory=tuple)
    # Side effects its handlers enqueue (shared/effects); a runner starts when there are any.
    # Built with the runtime, as some kinds work on the service's own database, before consuming starts.
    effects: Callable[[Runtime], Sequence[EffectKind]] = lambda _rt: ()
    # How long a poll that found records waits for more (VIGIL_CONSUMER_LINGER_MS overrides it).
    linger_ms: int = 0
    # Consume loops in the process (VIGIL_CONSUMER_LOOPS overrides it): a handler that waits on Postgres for
    # much of a batch leaves the process idle meanwhile, and another loop's batch can use that time.
    consumer_loops: int = 1


# A request Postgres undid for a conflict (a deadlock, a serialization failure) is answered 503 with this.
CONFLICT_RETRY_AFTER_S = 1
# A request that found the database unavailable (down, restarting, out of connections) is answered 503 with this.
UNAVAILABLE_RETRY_AFTER_S = 5
NUL_REFUSED = "the request holds a NUL character (\\u0000), which no text Vigil stores or looks up can"


def _holds_nul(body: bytes) -> bool:
    return b"\x00" in body or b"\\u0000" in body


def build_app(runtime: Runtime, routers: Sequence[APIRouter]) -> FastAPI:
    """The service's HTTP surface: health, readiness, Prometheus metrics and its own API."""
    app = FastAPI(title=f"Vigil {runtime.service}", version="1")
    app.state.runtime = runtime
    limit = runtime.settings.api_max_bytes

    @app.middleware("http")
    async def bounded(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # The HTTP ingest reads alerts against its own, larger limit (and refuses NUL per record, saying
        # which); every other body is small.
        if request.url.path.startswith(INGEST_PREFIX):
            return await call_next(request)
        too_large = JSONResponse({"detail": f"the body is over {limit} bytes"}, status_code=413)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                return too_large
            body = await request.body() if int(declared) else b""
        else:
            # A chunked body declares no length: read as it comes, and refused once over the limit, before
            # any route (and its authentication) would have read it all.
            received = bytearray()
            async for chunk in request.stream():
                received += chunk
                if len(received) > limit:
                    return too_large
            body = bytes(received)
            request._body = body  # what the route reads: the stream is spent
        # Postgres text holds no NUL: refused here, not only where it is stored (a command a service passes
        # on as an event would be refused by the service that reads it, after this one said yes).
        if body and _holds_nul(body) and not request.url.path.startswith(WEBHOOK_PREFIX):
            return JSONResponse({"detail": NUL_REFUSED}, status_code=422)
        return await call_next(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(response: Response) -> dict[str, object]:
        checks: dict[str, bool] = {
            "database": await runtime.probe.check() if runtime.probe else True,
            "consumer": all(loop.ready for loop in runtime.loops),
        }
        ready = all(checks.values())
        response.status_code = 200 if ready else 503
        return {"ready": ready, "checks": checks}

    from shared.auth import require  # here: shared.auth builds on this module's Runtime

    # Open by default (Prometheus scrapes without a token); VIGIL_PROTECT_METRICS asks for a viewer's.
    guard = [require(runtime, "incidents.read")] if runtime.settings.protect_metrics else []

    @app.get("/metrics", include_in_schema=False, dependencies=guard)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    async def unstorable_text(request: Request, exc: asyncpg.CharacterNotInRepertoireError) -> JSONResponse:
        # Postgres text holds no NUL character: a request naming one (in its path, query or body) is refused,
        # whatever the route, rather than failing as a server error. The transaction was rolled back.
        log.info("%s %s refused: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": NUL_REFUSED},
            status_code=422,
        )

    @app.exception_handler(asyncpg.DeadlockDetectedError)
    @app.exception_handler(asyncpg.SerializationError)
    async def conflicted(request: Request, exc: asyncpg.PostgresError) -> JSONResponse:
        # Concurrent work on the same thing (a timer firing as an approval comes) made Postgres undo this
        # request's transaction: nothing of it stayed, so sending it again (the same idempotency key) is safe.
        log.info("%s %s undone by a conflict, to be sent again: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the request met concurrent work and was undone; send it again"},
            status_code=503,
            headers={"Retry-After": str(CONFLICT_RETRY_AFTER_S)},
        )

    @app.exception_handler(OSError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.TooManyConnectionsError)
    @app.exception_handler(asyncpg.exceptions.OperatorInterventionError)
    async def unavailable(request: Request, exc: Exception) -> Response:
        # Postgres down, restarting or out of connections (or another peer unreachable): a failure that passes,
        # answered as one an API client backs off from and retries; anything else is the bug it looks like.
        if not is_retriable(exc):
            raise exc
        log.warning("%s %s: unavailable for now: %r", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "a database or peer this request needs is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        )

    for router in routers:
        app.include_router(router)
    document = app.openapi

    def openapi() -> dict[str, Any]:
        schema = document()  # built once, then cached by FastAPI on app.openapi_schema
        _document_own_refusals(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document_own_refusals(schema: dict[str, Any]) -> None:
    """Say in the OpenAPI document that a 422's ``detail`` is FastAPI's list of field errors, or, when a
    route refuses a value its model let through (a bad matcher, a duration, ids that differ), a sentence,
    or the problems of a rules file."""
    refusal = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
    if refusal is None or "anyOf" in refusal["properties"]["detail"]:
        return
    fields = refusal["properties"]["detail"]
    refusal["properties"]["detail"] = {
        "anyOf": [fields, {"type": "string"}, {"type": "object"}],
        "title": "Detail",
        "description": "The fields at fault, or why the route refused the request, in words.",
    }


async def run_service(spec: ServiceSpec, settings: VigilSettings | None = None) -> None:
    """Run one service until SIGTERM/SIGINT, then drain, commit, flush and close."""
    settings = settings or VigilSettings()
    configure_logging(settings.log_level, settings.log_format, service=spec.name)
    names = TopicNames(settings.topic_prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, max_size=settings.pool_size_for(spec.name))
        stack.push_async_callback(_bounded(pool.close, "the database pool", otherwise=pool.terminate))
        probe = DatabaseProbe(settings.database_url)
        stack.push_async_callback(_bounded(probe.close, "the database probe"))
        await migrate(pool)

        producer = make_producer(settings, client_id=f"vigil-{spec.name}")  # started below, once topics exist
        runtime = Runtime(service=spec.name, settings=settings, pool=pool, producer=producer, names=names, probe=probe)
        await check_startup(runtime)  # no serving beyond loopback without authentication
        # Before consuming: a handler may enqueue effects of these kinds from its first batch.
        kinds = spec.effects(runtime)
        for what, close in runtime.closers:  # after the consumer and the effects runner that use them
            stack.push_async_callback(_bounded(close, what))
        # Timers and effects need Postgres only: what fell due while the service was down (a lease's
        # end, a deadline) is acted on now, not after the broker connections and the group join.
        early = {asyncio.create_task(task(runtime), name=task.__name__) for task in spec.background}
        effects: EffectRunner | None = None
        if kinds:
            effects = EffectRunner(
                spec.name,
                pool,
                names,
                kinds,
                connect=lambda: connect(settings.database_url),
                poll_s=settings.effects_poll_s,
                backoff_base_s=settings.effects_backoff_base_s,
                backoff_cap_s=settings.effects_backoff_cap_s,
            )
            early.add(asyncio.create_task(effects.run(), name="effects"))
        try:
            await ensure_topics(settings.kafka, names)
            await producer.start()
            stack.push_async_callback(_bounded(producer.stop, "the producer"))
            # Each loop a member of the group, as replicas are: its own partitions, in order, its own fence.
            members: list[tuple[BatchFence, AIOKafkaConsumer]] = []
            for _ in range(settings.consumer_loops or spec.consumer_loops):
                fence = BatchFence(spec.name)
                consumer = make_consumer(
                    settings, *(names(t) for t in spec.consumes), group_id=group_id(settings, spec.name), listener=fence
                )
                members.append((fence, consumer))
                stack.push_async_callback(_bounded(consumer.stop, "the consumer"))
            await asyncio.gather(*(consumer.start() for _fence, consumer in members))
        except BaseException:
            for started in early:
                started.cancel()
            await asyncio.gather(*early, return_exceptions=True)
            raise
        runtime.loops = [
            ConsumeLoop(
                service=spec.name,
                consumer=consumer,
                producer=producer,
                pool=pool,
                names=names,
                decoder=spec.decoder,
                handler=spec.handler,
                batch_size=settings.consumer_batch_size,
                poll_ms=settings.consumer_poll_ms,
                linger_ms=spec.linger_ms if settings.consumer_linger_ms is None else settings.consumer_linger_ms,
                dead_letter_guard=DeadLetterGuard(ratio=settings.dead_letter_ratio, window=settings.dead_letter_window),
                fence=fence,
            )
            for fence, consumer in members
        ]

        server = uvicorn.Server(
            uvicorn.Config(
                build_app(runtime, spec.routers(runtime)),
                host=settings.http_host,
                port=settings.port_for(spec.name),
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        # The service's own SIGTERM handler drains the consumer; uvicorn must not take the signal.
        server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        relay = OutboxRelay(
            service=spec.name, pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        for consume_loop in runtime.loops:
            consume_loop.relay = relay

        settle_heap(settings.gc_young_threshold)
        tasks = {
            *(asyncio.create_task(loop.run(), name=f"consume-{n}") for n, loop in enumerate(runtime.loops)),
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(housekeeping.run(pool, service=spec.name), name="housekeeping"),
            asyncio.create_task(statistics.run(pool), name="statistics"),
            asyncio.create_task(server.serve(), name="http"),
            asyncio.create_task(stop.wait(), name="stop-signal"),
        }
        tasks |= early
        log.info(
            "%s running: http://%s:%d (metrics, healthz, readyz)",
            spec.name,
            settings.http_host,
            settings.port_for(spec.name),
        )
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        consuming = {task for task in tasks if task.get_name().startswith("consume-")}
        failed = [t for t in consuming & done if not t.cancelled() and t.exception() is not None]
        if failed:
            # Its error counter is on /metrics only while the process lives: held up for a scrape (not ready,
            # the rest running), so that the alert on it can fire; a SIGTERM ends the wait.
            log.error(
                "%s: consuming stopped on %r; exiting in %gs", spec.name, failed[0].exception(), settings.crash_hold_s
            )
            signalled = next(task for task in tasks if task.get_name() == "stop-signal")
            await asyncio.wait({signalled}, timeout=settings.crash_hold_s)

        # Stop consuming first so the batches in hand finish and commit, then the rest.
        for consume_loop in runtime.loops:
            consume_loop.stop()
        server.should_exit = True
        finishing = asyncio.create_task(effects.drain(EFFECTS_DRAIN_TIMEOUT_S)) if effects is not None else None
        if not all(task.done() for task in consuming):
            _drained, undrained = await asyncio.wait(consuming, timeout=DRAIN_TIMEOUT_S)
            if undrained:
                log.warning(
                    "%s: the batch in hand did not finish within %ds of stopping; abandoned, it will be redelivered",
                    spec.name,
                    DRAIN_TIMEOUT_S,
                )
        if finishing is not None:
            await finishing
        # Everything that writes outbox rows ends first, then the relay; what it left is flushed last.
        publishing = next(task for task in tasks if task.get_name() == "outbox-relay")
        writers = tasks - {publishing}
        for task in writers:
            task.cancel()
        ended, stuck = await asyncio.wait(writers, timeout=CLOSE_TIMEOUT_S)
        publishing.cancel()
        relay_ended, relay_stuck = await asyncio.wait({publishing}, timeout=CLOSE_TIMEOUT_S)
        ended |= relay_ended
        stuck |= relay_stuck
        if stuck:
            log.warning(
                "%s: %s did not end within %gs of being cancelled; left to the process's exit",
                spec.name,
                ", ".join(sorted(task.get_name() for task in stuck)),
                CLOSE_TIMEOUT_S,
            )
        await _flush(relay, spec.name)
        ordered = sorted(ended, key=lambda task: task not in done)  # what ended first is the likely cause
        failures = [
            (task, error) for task in ordered if not task.cancelled() and (error := task.exception()) is not None
        ]
        for task, error in failures:
            log.error("%s task %s failed", spec.name, task.get_name(), exc_info=error)
        if failures:
            raise failures[0][1]
        log.info("%s stopped", spec.name)


async def _flush(relay: OutboxRelay, service: str) -> None:
    """The outbox rows written while the service stopped, published now; else at the next start."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            sent = await relay.flush()
    except Exception as exc:
        log.warning("%s: outbox rows left unpublished at stop, sent at the next start: %r", service, exc)
        return
    if sent:
        log.info("%s: %d outbox row(s) written while stopping published", service, sent)


def _bounded(
    close: Callable[[], Awaitable[None]], what: str, *, otherwise: Callable[[], None] | None = None
) -> Callable[[], Awaitable[None]]:
    """``close``, given CLOSE_TIMEOUT_S; past it, ``otherwise`` (a forceful close), and a line in the log."""

    async def bounded_close() -> None:
        try:
            await asyncio.wait_for(close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            then = "closed forcefully" if otherwise is not None else "left to the process's exit"
            log.warning("%s did not close within %gs; %s", what, CLOSE_TIMEOUT_S, then)
            if otherwise is not None:
                otherwise()

    return bounded_close


def settle_heap(young_threshold: int) -> None:
    """Keep what start-up made out of the garbage collector's passes, and let those passes come less often.

    What a service holds from its start to its end (modules, models, rules, caches) would otherwise be
    walked again at each full pass; a handler's batch is short-lived and its objects are freed by their
    reference counts, so passes every few hundred allocations mostly walk what is about to be freed.
    """
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def main(build: Callable[[VigilSettings], ServiceSpec]) -> None:
    """Entry point of `python -m services.<name>`: exit non-zero on a crash so the supervisor restarts it."""
    settings = VigilSettings()
    asyncio.run(run_service(build(settings), settings))
