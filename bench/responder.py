"""Benchmark of the responder executing playbook steps: planning and dispatch, steps/s, a slow target.

``python -m bench.run --only responder [--incidents 100] [--incident-steps 10] [--slow-delay 2]``

The responder is composed in this process as its service composes it: the playbooks, an approval
policy that runs everything at once, guardrails, the webhook connector (every request signed) and
the effects runner with its kinds' default concurrency, against a real Postgres. Each
``IncidentAnalyzed`` is handled in its own transaction, as the consume loop handles a batch. The
webhook receivers run in another process, as a far side would: they verify every signature with
``verify_signature``, record when each idempotency key arrived, and answer 200.

1. Planning and dispatch: every incident planned and its steps enqueued with the runner stopped,
   so nothing can have been sent while the handler ran; then the runner works off that backlog.
2. Execution: the runner runs while the incidents arrive; steps/s and enqueue -> succeeded latency.
3. A slow target: as (1), but every other incident's steps go to a receiver that answers after
   ``--slow-delay``; the fast receiver's steps/s is compared with (1)'s backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from bench.measure import percentile
from services.responder import domain
from services.responder.approvals import parse_policy
from services.responder.connectors import WebhookConfig, WebhookConnector, load_connectors, parse_connectors_config
from services.responder.guardrails import BlastRadius, Guardrails, load_guardrails
from services.responder.handlers import SERVICE, Execution, Responder
from services.responder.steps import FINAL
from shared.consumer import HandlerContext, Inbound
from shared.db import connect, create_pool
from shared.effects import EffectKind, EffectRunner
from shared.effects.domain import verify_signature
from shared.events import Analysis, IncidentAnalyzed, IncidentType, Severity
from shared.outbox import write_events
from shared.settings import VigilSettings
from shared.topics import TopicNames

console = Console()

FAST_ACTION = "isolate_host"
SLOW_ACTION = "collect_forensics"
SECRET_ENV = "VIGIL_BENCH_WEBHOOK_SECRET"
# The outbox rows are written as the consume loop writes them; no relay publishes them here.
NAMES = TopicNames("bench-responder.")

# One step, expanded once per affected host: all of an incident's expansions are dispatched at once.
PLAYBOOKS = f"""
playbooks:
  - id: bench-fast
    title: Isolate the affected hosts
    match: {{types: [system_compromise]}}
    steps:
      - id: isolate
        name: Isolate host
        phase: containment
        response: immediate
        for_each: affected_hosts
        connector: webhook
        action: {FAST_ACTION}
        params: {{host: {{value: "{{{{ item }}}}", type: hostname}}}}
        risk: high
  - id: bench-slow
    title: Collect evidence from the affected hosts
    match: {{types: [data_leak]}}
    steps:
      - id: collect
        name: Collect forensics
        phase: investigation
        response: tactical
        for_each: affected_hosts
        connector: webhook
        action: {SLOW_ACTION}
        params: {{host: {{value: "{{{{ item }}}}", type: hostname}}}}
"""

POLICY = "rules: [{name: all, mode: auto}]"


def guardrails_for(steps_per_incident: int) -> Guardrails:
    """The shipped guardrails without rate limits (they would refuse a benchmark's volume by design)."""
    shipped = load_guardrails()
    radius = BlastRadius(
        per_step=max(shipped.blast_radius.per_step, steps_per_incident),
        per_incident=max(shipped.blast_radius.per_incident, steps_per_incident),
    )
    return shipped.model_copy(update={"rate_limits": [], "blast_radius": radius})


class Failed(Exception):
    """The responder benchmark could not complete, or its results are wrong; the message says why."""

    def __init__(self, message: str, *, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


# ---- the far side: webhook receivers in their own process ------------------------------------


@dataclass
class FarSide:
    """One receiver: verifies each request's signature, records each key's arrivals, answers after a delay."""

    secret: bytes
    delay_s: float
    received: dict[str, list[float]] = field(default_factory=dict)
    refused: int = 0
    hung_up: int = 0  # callers gone before their answer: the runner stopped with the call in flight
    in_flight: int = 0
    most_in_flight: int = 0

    def take_stats(self) -> dict[str, Any]:
        """What arrived since the last call, and forget it: each scenario reads its own."""
        stats = {
            "received": self.received,
            "refused": self.refused,
            "hung_up": self.hung_up,
            "most_in_flight": self.most_in_flight,
        }
        self.received, self.refused, self.hung_up, self.most_in_flight = {}, 0, 0, self.in_flight
        return stats

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if request_line.startswith(b"GET /stats "):
                await _answer(writer, 200, json.dumps(self.take_stats()).encode())
                return
            arrived = time.time()
            key = headers.get("idempotency-key")
            signed = verify_signature(
                self.secret, headers.get("x-vigil-timestamp"), headers.get("x-vigil-signature"), body, now=arrived
            )
            if key is None or not signed:
                self.refused += 1
                await _answer(writer, 401)
                return
            self.received.setdefault(key, []).append(arrived)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
            try:
                await _answer(writer, 200)
            except ConnectionError:
                self.hung_up += 1
        finally:
            writer.close()


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes = b"") -> None:
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    writer.write(head.encode() + b"connection: close\r\n\r\n" + body)
    await writer.drain()


def _serve_far_sides(secret: bytes, delays: Sequence[float], ports: Connection) -> None:
    """The receivers' process: one server per delay; sends their ports, then serves until terminated."""
    asyncio.run(_far_sides(secret, delays, ports))


async def _far_sides(secret: bytes, delays: Sequence[float], ports: Connection) -> None:
    servers = []
    for delay in delays:
        side = FarSide(secret, delay)
        servers.append(await asyncio.start_server(side.handle, "127.0.0.1", 0, backlog=1024))
    ports.send([server.sockets[0].getsockname()[1] for server in servers])
    await asyncio.Event().wait()


@dataclass(frozen=True)
class Receivers:
    fast_port: int
    slow_port: int

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/hooks"

    async def take_stats(self, port: int) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await client.get(f"http://127.0.0.1:{port}/stats")
        answer.raise_for_status()
        stats: dict[str, Any] = answer.json()
        return stats


@contextlib.contextmanager
def receivers(secret: bytes, slow_delay_s: float) -> Iterator[Receivers]:
    """Start the fast and the slow receiver in another process; stop it on exit."""
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    process = spawn.Process(
        target=_serve_far_sides, args=(secret, [0.0, slow_delay_s], theirs), name="bench-receivers", daemon=True
    )
    process.start()
    try:
        started = time.monotonic()
        while not ours.poll(0.1):
            if not process.is_alive() or time.monotonic() - started > 60:
                raise Failed(f"the webhook receivers did not start (exit code {process.exitcode})")
        fast, slow = ours.recv()
        yield Receivers(fast_port=fast, slow_port=slow)
    finally:
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)


# ---- the responder, as its service composes it ------------------------------------------------


@dataclass(frozen=True)
class Composed:
    responder: Responder
    kinds: list[EffectKind]


def compose(pool: asyncpg.Pool, far: Receivers, secret: str, steps_per_incident: int) -> Composed:
    config = parse_connectors_config(
        json.dumps(
            {
                "webhook": {
                    "url": far.url(far.fast_port),
                    "actions": {SLOW_ACTION: {"url": far.url(far.slow_port)}},
                    "secret_env": SECRET_ENV,
                }
            }
        ),
        source="bench connectors",
    )
    connectors = load_connectors(config, pool=pool, environ={SECRET_ENV: secret})
    execution = Execution(
        policy=parse_policy(POLICY),
        guardrails=guardrails_for(steps_per_incident),
        connectors=connectors,
    )
    responder = Responder(domain.parse_playbooks(PLAYBOOKS), execution)
    kinds = [kind for c in connectors.values() for kind in c.effect_kinds(responder.on_effect_outcome)]
    return Composed(responder, kinds)


def runner_for(composed: Composed, pool: asyncpg.Pool, database_url: str, settings: VigilSettings) -> EffectRunner:
    """The runner as the service builds it: woken by NOTIFY, the settings' poll and backoff."""
    return EffectRunner(
        SERVICE,
        pool,
        NAMES,
        composed.kinds,
        connect=lambda: connect(database_url),
        poll_s=settings.effects_poll_s,
        backoff_base_s=settings.effects_backoff_base_s,
        backoff_cap_s=settings.effects_backoff_cap_s,
    )


@contextlib.asynccontextmanager
async def running(runner: EffectRunner) -> AsyncIterator[asyncio.Task[None]]:
    """Run the effects runner until the block ends; its own failure is raised, not lost."""
    task = asyncio.create_task(runner.run(), name="effects")
    try:
        yield task
    finally:
        task.cancel()
        [outcome] = await asyncio.gather(task, return_exceptions=True)
        if isinstance(outcome, Exception):
            raise Failed(f"the effects runner failed: {outcome!r}") from outcome


def incidents(prefix: str, count: int, steps: int, *, slow_share: bool) -> list[IncidentAnalyzed]:
    """``count`` analysed incidents of ``steps`` hosts each; with ``slow_share``, every other one is slow."""
    events = []
    for i in range(count):
        slow = slow_share and i % 2 == 1
        analysis = Analysis(
            type=IncidentType.DATA_LEAK if slow else IncidentType.SYSTEM_COMPROMISE,
            severity=Severity.SEV2,
            title=f"bench incident {i}",
            indicators=[],
            affected_hosts=[f"h{i:04d}-{j:03d}" for j in range(steps)],
            affected_users=[],
            alert_count=1,
            summary="",
        )
        events.append(IncidentAnalyzed(source="/bench", subject=f"{prefix}-{i:04d}", data=analysis))
    return events


@dataclass(frozen=True)
class Handled:
    incident_id: str
    handler_s: float  # the handler and its outbox write, inside the transaction
    transaction_s: float  # acquire, handler, commit
    committed_at: float  # wall clock: from then on the runner can see the incident's steps


async def handle_all(pool: asyncpg.Pool, responder: Responder, events: Sequence[IncidentAnalyzed]) -> list[Handled]:
    """Handle each event in its own transaction, one after another, as the consume loop would."""
    handled = []
    for event in events:
        started = time.perf_counter()
        async with pool.acquire() as conn:
            async with conn.transaction():
                ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
                before = time.perf_counter()
                await responder.handle(ctx, [Inbound(event_id=event.id, item=event, record=None)])
                await write_events(conn, service=SERVICE, names=NAMES, events=ctx.emitted)
                handler_s = time.perf_counter() - before
                if ctx.rejected:
                    raise Failed(f"{event.subject}: the responder refused the analysis: {ctx.rejected[0][2]}")
            committed_at = time.time()
        handled.append(Handled(event.subject, handler_s, time.perf_counter() - started, committed_at))
    return handled


# ---- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    id: str
    incident_id: str
    action: str
    state: str
    succeeded_at: float | None  # when its success was recorded (the recording transaction's start)
    attempts: int | None


async def read_steps(pool: asyncpg.Pool) -> list[Step]:
    rows = await pool.fetch(
        """SELECT s.id, s.incident_id, s.action, s.state, l.at AS succeeded_at, e.attempts
           FROM responder_steps s
           LEFT JOIN responder_step_log l ON l.step_id = s.id AND l.to_state = 'succeeded'
           LEFT JOIN effects e ON e.service = $1 AND e.key = s.id""",
        SERVICE,
    )
    return [
        Step(
            r["id"],
            r["incident_id"],
            r["action"],
            r["state"],
            r["succeeded_at"].timestamp() if r["succeeded_at"] is not None else None,
            r["attempts"],
        )
        for r in rows
    ]


async def wait_succeeded(
    pool: asyncpg.Pool, runner: asyncio.Task[None], *, action: str, count: int, timeout_s: float, stall_s: float
) -> None:
    """Wait until ``count`` steps of ``action`` have succeeded; fail on a step that ends otherwise, or a stall."""
    started = last_change = time.monotonic()
    last = -1
    with console.status(f"waiting for {count:,} {action} steps") as status:
        while True:
            if runner.done():
                failure = None if runner.cancelled() else runner.exception()
                raise Failed(f"the effects runner stopped: {failure!r}") from failure
            row = await pool.fetchrow(
                """SELECT count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                          count(*) FILTER (WHERE state = ANY($2::text[]) AND state <> 'succeeded') AS other
                   FROM responder_steps WHERE action = $1""",
                action,
                list(FINAL),
            )
            assert row is not None
            if row["other"]:
                ended = await pool.fetch(
                    "SELECT id, state, reason FROM responder_steps "
                    "WHERE action = $1 AND state = ANY($2::text[]) AND state <> 'succeeded' LIMIT 3",
                    action,
                    list(FINAL),
                )
                raise Failed(
                    f"{row['other']} {action} step(s) ended otherwise than succeeded, e.g. "
                    + "; ".join(f"{r['id']} {r['state']}: {r['reason']}" for r in ended)
                )
            succeeded = int(row["succeeded"])
            if succeeded >= count:
                return
            now = time.monotonic()
            if succeeded != last:
                last, last_change = succeeded, now
            if now - last_change > stall_s:
                raise Failed(f"{action}: {succeeded:,}/{count:,} steps succeeded, none more for {stall_s:.0f}s")
            if now - started > timeout_s:
                raise Failed(f"{action}: {succeeded:,}/{count:,} steps succeeded within {timeout_s:.0f}s")
            status.update(f"{action}: {succeeded:,}/{count:,} steps succeeded")
            await asyncio.sleep(0.1)


def ms(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of durations in seconds, in milliseconds."""
    ordered = sorted(values)
    return {
        "p50": round(percentile(ordered, 50) * 1000, 1),
        "p99": round(percentile(ordered, 99) * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


def handler_figures(handled: Sequence[Handled]) -> dict[str, Any]:
    span = handled[-1].committed_at - handled[0].committed_at + handled[0].transaction_s
    return {
        "incidents": len(handled),
        "handler_ms": ms([h.handler_s for h in handled]),
        "transaction_ms": ms([h.transaction_s for h in handled]),
        "all_enqueued_s": round(span, 3),
    }


def check_delivered(steps: Sequence[Step], received: dict[str, list[float]], refused: int, what: str) -> None:
    """Every succeeded step was received exactly once, in one attempt; nothing else arrived; nothing forged."""
    ids = {s.id for s in steps}
    if refused:
        raise Failed(f"{what}: the receiver refused {refused} request(s) for a bad signature")
    if strangers := sorted(set(received) - ids):
        raise Failed(f"{what}: keys received that are no step of the scenario: {strangers[:3]}")
    for step in steps:
        arrivals = len(received.get(step.id, []))
        if step.state == "succeeded" and (arrivals != 1 or step.attempts != 1):
            raise Failed(f"{what}: step {step.id} succeeded, received {arrivals} time(s) in {step.attempts} attempt(s)")
        if arrivals > 1:
            raise Failed(f"{what}: step {step.id} received {arrivals} times")


def execution_figures(
    steps: Sequence[Step], received: dict[str, list[float]], committed: dict[str, float], *, since: float | None = None
) -> dict[str, Any]:
    """Steps/s from the first enqueue (or ``since``) to the last success, and each step's latencies."""
    done = [s for s in steps if s.succeeded_at is not None]
    if not done:
        return {"steps_succeeded": 0}
    start = since if since is not None else min(committed[s.incident_id] for s in steps)
    last = max(s.succeeded_at for s in done if s.succeeded_at is not None)
    to_received = [received[s.id][0] - committed[s.incident_id] for s in done]
    to_succeeded = [s.succeeded_at - committed[s.incident_id] for s in done if s.succeeded_at is not None]
    return {
        "steps_succeeded": len(done),
        "elapsed_s": round(last - start, 3),
        "steps_per_s": round(len(done) / (last - start), 1) if last > start else None,
        "enqueue_to_received_ms": ms(to_received),
        "enqueue_to_succeeded_ms": ms(to_succeeded),
    }


# ---- the three scenarios ----------------------------------------------------------------------


# A fresh, migrated database, dropped when the block ends: its URL.
NewDatabase = Callable[[], contextlib.AbstractAsyncContextManager[str]]


@dataclass(frozen=True)
class Setup:
    args: argparse.Namespace
    far: Receivers
    secret: str
    settings: VigilSettings
    new_database: NewDatabase

    @property
    def steps_per_incident(self) -> int:
        return int(self.args.incident_steps)


@contextlib.asynccontextmanager
async def composed_on_fresh_database(setup: Setup) -> AsyncIterator[tuple[str, asyncpg.Pool, Composed]]:
    async with setup.new_database() as url:
        pool = await create_pool(url, max_size=setup.settings.pool_size_for(SERVICE))
        try:
            yield url, pool, compose(pool, setup.far, setup.secret, setup.steps_per_incident)
        finally:
            await pool.close()


async def dispatch_scenario(setup: Setup) -> dict[str, Any]:
    """(1) Plan and enqueue every incident with the runner stopped; then let it work off the backlog."""
    args = setup.args
    async with composed_on_fresh_database(setup) as (url, pool, composed):
        events = incidents("dispatch", args.incidents, setup.steps_per_incident, slow_share=False)
        with console.status(f"planning {len(events)} incidents, the effects runner stopped"):
            handled = await handle_all(pool, composed.responder, events)
        expected = len(events) * setup.steps_per_incident
        enqueued = int(await pool.fetchval("SELECT count(*) FROM effects WHERE status = 'pending'"))
        running_steps = int(await pool.fetchval("SELECT count(*) FROM responder_steps WHERE state = 'running'"))
        sent_meanwhile = await setup.far.take_stats(setup.far.fast_port)
        if enqueued != expected or running_steps != expected:
            raise Failed(f"dispatch: {enqueued} effects pending and {running_steps} steps running, not {expected}")
        if sent_meanwhile["received"]:
            raise Failed(f"dispatch: {len(sent_meanwhile['received'])} requests arrived with no runner running")

        cpu_started = time.process_time()
        runner_started = time.time()
        async with running(runner_for(composed, pool, url, setup.settings)) as runner:
            await wait_succeeded(
                pool, runner, action=FAST_ACTION, count=expected, timeout_s=args.timeout, stall_s=args.stall
            )
        cpu_s = time.process_time() - cpu_started
        steps = await read_steps(pool)
    stats = await setup.far.take_stats(setup.far.fast_port)
    check_delivered(steps, stats["received"], stats["refused"], "dispatch")
    committed = {h.incident_id: h.committed_at for h in handled}
    backlog = execution_figures(steps, stats["received"], committed, since=runner_started)
    return {
        **handler_figures(handled),
        "steps_enqueued": enqueued,
        "steps_enqueued_per_s": round(enqueued / handler_figures(handled)["all_enqueued_s"], 1),
        "requests_while_planning": len(sent_meanwhile["received"]),
        "backlog": {
            "steps_succeeded": backlog["steps_succeeded"],
            "elapsed_s": backlog["elapsed_s"],
            "steps_per_s": backlog["steps_per_s"],
            "most_in_flight": stats["most_in_flight"],
            "bench_cpu_s": round(cpu_s, 2),
            # The runner is all this process does meanwhile: what executing one step costs it.
            "cpu_ms_per_step": round(cpu_s / expected * 1000, 1),
        },
    }


async def live_scenario(setup: Setup) -> dict[str, Any]:
    """(2) The runner runs while the incidents arrive one after another: steps/s and latency."""
    args = setup.args
    async with composed_on_fresh_database(setup) as (url, pool, composed):
        events = incidents("live", args.incidents, setup.steps_per_incident, slow_share=False)
        expected = len(events) * setup.steps_per_incident
        cpu_started = time.process_time()
        async with running(runner_for(composed, pool, url, setup.settings)) as runner:
            with console.status(f"planning {len(events)} incidents while their steps run"):
                handled = await handle_all(pool, composed.responder, events)
            await wait_succeeded(
                pool, runner, action=FAST_ACTION, count=expected, timeout_s=args.timeout, stall_s=args.stall
            )
        cpu_s = time.process_time() - cpu_started
        steps = await read_steps(pool)
    stats = await setup.far.take_stats(setup.far.fast_port)
    check_delivered(steps, stats["received"], stats["refused"], "live")
    committed = {h.incident_id: h.committed_at for h in handled}
    return {
        **handler_figures(handled),
        **execution_figures(steps, stats["received"], committed),
        "most_in_flight": stats["most_in_flight"],
        "bench_cpu_s": round(cpu_s, 2),
    }


async def slow_target_scenario(setup: Setup, dispatch: dict[str, Any] | None) -> dict[str, Any]:
    """(3) As (1), but every other incident's steps go to a slow receiver: the fast one's steps/s against (1)'s.

    A backlog, so that the fast steps/s is the runner's and not how fast incidents arrive.
    """
    args = setup.args
    async with composed_on_fresh_database(setup) as (url, pool, composed):
        events = incidents("slow", args.incidents, setup.steps_per_incident, slow_share=True)
        slow_events = [e for e in events if e.data.type == IncidentType.DATA_LEAK]
        fast_expected = (len(events) - len(slow_events)) * setup.steps_per_incident
        slow_expected = len(slow_events) * setup.steps_per_incident
        with console.status(f"planning {len(events)} incidents, half of them for the slow receiver"):
            handled = await handle_all(pool, composed.responder, events)
        cpu_started = time.process_time()
        runner_started = time.time()
        async with running(runner_for(composed, pool, url, setup.settings)) as runner:
            await wait_succeeded(
                pool, runner, action=FAST_ACTION, count=fast_expected, timeout_s=args.timeout, stall_s=args.stall
            )
            fast_done_at = time.time()
            cpu_s = time.process_time() - cpu_started
            slow_by_then = int(
                await pool.fetchval(
                    "SELECT count(*) FROM responder_steps WHERE action = $1 AND state = 'succeeded'", SLOW_ACTION
                )
            )
            if args.wait_slow:
                await wait_succeeded(
                    pool,
                    runner,
                    action=SLOW_ACTION,
                    count=slow_expected,
                    timeout_s=args.timeout,
                    stall_s=max(args.stall, 4 * args.slow_delay),
                )
        steps = await read_steps(pool)
    fast_stats = await setup.far.take_stats(setup.far.fast_port)
    slow_stats = await setup.far.take_stats(setup.far.slow_port)
    fast_steps = [s for s in steps if s.action == FAST_ACTION]
    slow_steps = [s for s in steps if s.action == SLOW_ACTION]
    check_delivered(fast_steps, fast_stats["received"], fast_stats["refused"], "slow target, fast receiver")
    check_delivered(slow_steps, slow_stats["received"], slow_stats["refused"], "slow target, slow receiver")
    committed = {h.incident_id: h.committed_at for h in handled}
    fast = execution_figures(fast_steps, fast_stats["received"], committed, since=runner_started)
    slow = execution_figures(slow_steps, slow_stats["received"], committed, since=runner_started)
    result: dict[str, Any] = {
        **handler_figures(handled),
        "slow_delay_s": args.slow_delay,
        "fast": {
            "steps": fast_expected,
            "steps_per_s": fast["steps_per_s"],
            "elapsed_s": fast["elapsed_s"],
            "most_in_flight": fast_stats["most_in_flight"],
        },
        "slow": {
            "steps": slow_expected,
            "succeeded_when_fast_done": slow_by_then,
            "received_when_stopped": len(slow_stats["received"]),
            "succeeded_when_stopped": slow["steps_succeeded"],
            "most_in_flight": slow_stats["most_in_flight"],
            "steps_per_s": slow.get("steps_per_s") if args.wait_slow else None,
        },
        "fast_done_after_s": round(fast_done_at - runner_started, 3),
        # Every step executed until the fast ones were done, slow ones included, as in (1)'s figure.
        "cpu_ms_per_step": round(cpu_s / (fast_expected + slow_by_then) * 1000, 1),
    }
    backlog_rate = (dispatch or {}).get("backlog", {}).get("steps_per_s")
    if backlog_rate and fast["steps_per_s"]:
        result["fast_vs_backlog_ratio"] = round(fast["steps_per_s"] / backlog_rate, 2)
    return result


async def bench_responder(args: argparse.Namespace, new_database: NewDatabase) -> dict[str, Any]:
    """Run the three scenarios, each on a fresh database; what completed is kept when one fails."""
    secret = secrets.token_urlsafe(24)
    settings = VigilSettings()
    results: dict[str, Any] = {"incidents": args.incidents, "steps_per_incident": args.incident_steps}
    with receivers(secret.encode(), args.slow_delay) as far:
        setup = Setup(args=args, far=far, secret=secret, settings=settings, new_database=new_database)
        webhook = next(
            k
            for k in WebhookConnector(WebhookConfig(), secret=None).effect_kinds(None)
            if k.name == WebhookConnector.kind
        )
        results["webhook_concurrency"] = {
            "per_runner": webhook.concurrency,
            "per_target": webhook.per_target_concurrency,
        }
        scenarios: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("dispatch", lambda: dispatch_scenario(setup)),
            ("live", lambda: live_scenario(setup)),
            ("slow_target", lambda: slow_target_scenario(setup, results.get("dispatch"))),
        ]
        for name, scenario in scenarios:
            console.log(f"responder: {name.replace('_', ' ')}")
            try:
                results[name] = await scenario()
            except Failed as exc:
                raise Failed(f"{name}: {exc}", partial=results) from exc
    return results


# ---- report -----------------------------------------------------------------------------------


def _ms(figures: dict[str, float] | None) -> str:
    if not figures:
        return "-"
    return f"{figures['p50']:,.1f} / {figures['p99']:,.1f} ms"


def _rate(value: float | None, unit: str = "steps/s") -> str:
    return "-" if value is None else f"{value:,.0f} {unit}"


def add_report(table: Table, result: dict[str, Any]) -> None:
    """Rows for the benchmark's table: one section per scenario."""
    concurrency = result.get("webhook_concurrency", {})
    table.add_section()
    table.add_row(
        f"[bold]Responder: {result['incidents']} incidents x {result['steps_per_incident']} webhook steps[/bold]",
        f"runner: {concurrency.get('per_runner', '?')} at once, {concurrency.get('per_target', '?')} per target",
    )
    if dispatch := result.get("dispatch"):
        table.add_row("(1) plan + enqueue: handler p50 / p99", _ms(dispatch["handler_ms"]))
        table.add_row("    transaction incl. commit p50 / p99", _ms(dispatch["transaction_ms"]))
        table.add_row(
            "    all incidents planned and enqueued in",
            f"{dispatch['all_enqueued_s']:.2f} s ({_rate(dispatch['steps_enqueued_per_s'], 'steps/s')})",
        )
        table.add_row("    requests sent while planning", f"{dispatch['requests_while_planning']}")
        backlog = dispatch["backlog"]
        table.add_row(
            "    then the backlog executed at", f"{_rate(backlog['steps_per_s'])} ({backlog['elapsed_s']:.2f} s)"
        )
        table.add_row("    responder CPU per executed step", f"{backlog['cpu_ms_per_step']:.1f} ms")
    if live := result.get("live"):
        table.add_row("(2) steps executed, enqueue -> succeeded", _rate(live.get("steps_per_s")))
        table.add_row("    enqueue -> received p50 / p99", _ms(live.get("enqueue_to_received_ms")))
        table.add_row("    enqueue -> succeeded p50 / p99", _ms(live.get("enqueue_to_succeeded_ms")))
        table.add_row("    handler p50 / p99 while steps run", _ms(live["handler_ms"]))
        table.add_row(
            "    all enqueued / all succeeded after",
            f"{live['all_enqueued_s']:.2f} s / {live.get('elapsed_s', 0):.2f} s",
        )
    if slow := result.get("slow_target"):
        fast = slow["fast"]
        ratio = slow.get("fast_vs_backlog_ratio")
        table.add_row(
            f"(3) as (1), half to a receiver taking {slow['slow_delay_s']:g} s",
            _rate(fast["steps_per_s"], "steps/s fast") + (f" ({ratio:.2f} x (1))" if ratio is not None else ""),
        )
        s = slow["slow"]
        table.add_row(
            "    slow steps succeeded meanwhile",
            f"{s['succeeded_when_fast_done']} of {s['steps']} in {slow['fast_done_after_s']:.1f} s",
        )
        table.add_row("    most in flight: fast / slow receiver", f"{fast['most_in_flight']} / {s['most_in_flight']}")
        table.add_row("    responder CPU per executed step", f"{slow['cpu_ms_per_step']:.1f} ms")
        if s.get("steps_per_s") is not None:
            table.add_row("    slow receiver, all its steps", _rate(s["steps_per_s"]))
