"""The effects runner against the real Postgres and broker, a real HTTP server, SMTP server and commands.

Run as ``python -m tests.integration.test_effects runner DATABASE_URL SERVICE`` this module is the
crash test's runner process, which the test kills mid-call; with ``service`` instead, a service
composed by ``run_service`` with effect kinds in its spec (settings from the environment).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from http import HTTPStatus
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY

from shared import cloudevents
from shared.consumer import HandlerContext
from shared.db import connect, create_pool
from shared.effects import Effect, EffectKind, EffectRunner, TransientEffectError, enqueue, http_target, prune, retry
from shared.effects import repository as effects_repository
from shared.effects.builtin import IDEMPOTENCY_ENV, http_request, run_command, send_mail
from shared.effects.domain import message_id
from shared.embedded import free_port
from shared.events import EffectCompleted, EffectOutcome
from shared.kafka import make_producer
from shared.outbox import OutboxRelay
from shared.settings import VigilSettings
from shared.timers import Timer, TimerPoller, schedule
from shared.topics import EFFECTS, TopicNames
from tests.helpers import eventually, read_all, service_env, start_module

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SERVICE = "responder"
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- a far side that counts requests per Idempotency-Key ----------------------------------------


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    key: str | None
    body: bytes


class FarSide:
    """An HTTP server on 127.0.0.1 (a free port): records each request, answers as told, can hold requests."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: dict[str, int] = {}  # path -> status (200 unless told)
        self.gates: dict[str, asyncio.Event] = {}  # path -> requests wait until the gate opens
        self.waiting: collections.Counter[str] = collections.Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._held: set[asyncio.Event] = set()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def target(self) -> str:
        return http_target(self.url("/"))

    def keys(self, path: str) -> list[str | None]:
        return [r.key for r in self.received if r.path == path]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for gate in self._held:
            gate.set()  # let held requests finish (their clients may be gone)
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = await reader.readline()
            if not request_line:
                return  # the client gave up before it sent its request (its own timeout ran out)
            method, path, _ = request_line.decode().split(" ", 2)
            headers: list[tuple[str, str]] = []
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers.append((name.strip().lower(), value.strip()))
            length = next((int(v) for n, v in headers if n == "content-length"), 0)
            body = await reader.readexactly(length)
            keys = [v for n, v in headers if n == "idempotency-key"]
            key = keys[0] if len(keys) == 1 else (f"{len(keys)} keys: {keys}" if keys else None)
            self.received.append(Received(method, path, key, body))
            gate = self.gates.get(path)
            if gate is not None:
                self._held.add(gate)
                self.waiting[path] += 1
                try:
                    await gate.wait()
                finally:
                    self.waiting[path] -= 1
            status = self.answers.get(path, 200)
            answer = json.dumps({"seen": len(self.keys(path))}).encode()
            writer.write(
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (a killed runner): nothing to answer
        finally:
            writer.close()
            self._handlers.discard(task)


@contextlib.asynccontextmanager
async def far_side() -> AsyncIterator[FarSide]:
    server = FarSide()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# ---- helpers -----------------------------------------------------------------------------------


def make_runner(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, kinds: Sequence[EffectKind], **options: Any
) -> EffectRunner:
    options = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "poll_s": 0.2, **options}
    return EffectRunner(SERVICE, pool, names, kinds, connect=lambda: asyncpg.connect(settings.database_url), **options)


@contextlib.asynccontextmanager
async def running(*runners: EffectRunner) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run the runners in tasks; stop them on exit, failing the test if one failed."""
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def add(
    pool: asyncpg.Pool,
    *,
    kind: str = "http_request",
    key: str | None = None,
    target: str,
    payload: dict[str, Any],
    subject: str = "inc-1",
    not_before: datetime | None = None,
) -> str:
    """Enqueue one effect in its own transaction; return its key."""
    key = key or f"test:{uuid.uuid4()}"
    async with pool.acquire() as conn, conn.transaction():
        assert await enqueue(
            conn,
            service=SERVICE,
            kind=kind,
            key=key,
            subject=subject,
            target=target,
            payload=payload,
            not_before=not_before,
        )
    return key


def post(server: FarSide, path: str, body: Any = None) -> dict[str, Any]:
    return {"method": "POST", "url": server.url(path), "body": body or {"incident": "inc-1"}}


async def effect_row(pool: asyncpg.Pool, key: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM effects WHERE key = $1", key)
    assert row is not None
    return row


async def reaches(pool: asyncpg.Pool, key: str, status: str) -> asyncpg.Record:
    """Wait until the effect with this key is in ``status``; return its row."""

    async def row_in_status() -> asyncpg.Record | None:
        row = await effect_row(pool, key)
        return row if row["status"] == status else None

    row = await eventually(row_in_status)
    assert row is not None
    return row


def finished(kind: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "vigil_effects_finished_total", {"service": SERVICE, "kind": kind, "outcome": outcome}
        )
        or 0.0
    )


async def outcomes_in_outbox(pool: asyncpg.Pool) -> list[EffectOutcome]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = $1 ORDER BY id", SERVICE)
    events = [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]
    return [e.data for e in events if isinstance(e, EffectCompleted)]


# ---- enqueue -----------------------------------------------------------------------------------


async def test_enqueue_is_idempotent_and_rolls_back_with_its_transaction(pool: asyncpg.Pool) -> None:
    args: dict[str, Any] = {
        "service": SERVICE,
        "kind": "http_request",
        "key": "notify:inc-1",
        "subject": "inc-1",
        "target": "hooks.example.com",
        "payload": {"url": "https://hooks.example.com/x"},
    }
    async with pool.acquire() as conn, conn.transaction():
        assert await enqueue(conn, **args) is True
        assert await enqueue(conn, **args) is False
    async with pool.acquire() as conn, conn.transaction():
        assert await enqueue(conn, **{**args, "payload": {"other": True}}) is False  # the first one stands
        assert await enqueue(conn, **{**args, "kind": "send_mail"}) is True  # unique per kind
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            assert await enqueue(conn, **{**args, "key": "notify:inc-2"}) is True
            raise RuntimeError("the state change that called for it failed")
    rows = await pool.fetch("SELECT kind, key, status, attempts, payload FROM effects ORDER BY id")
    assert [(r["kind"], r["key"], r["status"], r["attempts"]) for r in rows] == [
        ("http_request", "notify:inc-1", "pending", 0),
        ("send_mail", "notify:inc-1", "pending", 0),
    ]
    assert rows[0]["payload"] == {"url": "https://hooks.example.com/x"}


# ---- HTTP --------------------------------------------------------------------------------------


async def test_http_effect_runs_once_and_its_outcome_reaches_the_effects_topic(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    seen_in_transaction: list[tuple[str, str]] = []

    async def on_outcome(ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        # Inside the recording transaction: the effect's new status is visible on this connection.
        assert ctx.conn.is_in_transaction()
        status = await ctx.conn.fetchval("SELECT status FROM effects WHERE id = $1", effect.id)
        seen_in_transaction.append((outcome.status, status))

    succeeded_before = finished("http_request", "succeeded")
    async with far_side() as server:
        payload = {**post(server, "/hook", {"incident": "inc-1", "n": 1}), "headers": {"idempotency-key": "forged"}}
        key = await add(pool, target=server.target, payload=payload)
        runner = make_runner(settings, pool, names, [http_request(on_outcome=on_outcome)])
        async with running(runner):
            row = await reaches(pool, key, "succeeded")
            producer = make_producer(settings, client_id="effects-test")
            await producer.start()
            try:
                relay = OutboxRelay(
                    service=SERVICE, pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
                )
                await relay.publish_pending()
            finally:
                await producer.stop()
        assert server.keys("/hook") == [key]
        assert json.loads(server.received[0].body) == {"incident": "inc-1", "n": 1}

    assert row["attempts"] == 1 and row["last_error"] is None and row["finished_at"] is not None
    assert row["result"] == {"status_code": 200, "body": '{"seen": 1}'}
    assert seen_in_transaction == [("succeeded", "succeeded")]
    assert finished("http_request", "succeeded") == succeeded_before + 1

    records = await read_all(settings, names(EFFECTS), expect=1)
    assert len(records) == 1
    event = cloudevents.decode(records[0].value, records[0].headers)
    assert isinstance(event, EffectCompleted)
    assert event.subject == "inc-1" and records[0].key == b"inc-1"
    assert event.source == f"/vigil/{SERVICE}"
    assert event.data == EffectOutcome(
        effect_id=row["id"],
        service=SERVICE,
        kind="http_request",
        key=key,
        target=server.target,
        status="succeeded",
        attempts=1,
        result={"status_code": 200, "body": '{"seen": 1}'},
    )


async def test_a_crash_between_the_call_and_the_record_repeats_the_call_with_the_same_key(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:
        server.gates["/crash"] = asyncio.Event()  # the first call arrives and gets no answer
        key = await add(pool, target=server.target, payload=post(server, "/crash"))
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.test_effects",
            "runner",
            settings.database_url,
            SERVICE,
            cwd=REPO_ROOT,
        )
        try:
            await eventually(lambda: _true(server.waiting["/crash"] == 1))
        finally:
            worker.kill()  # the far side has the call; the runner dies before it can record anything
            await worker.wait()
        row = await effect_row(pool, key)
        assert (row["status"], row["attempts"], row["finished_at"]) == ("running", 1, None)

        del server.gates["/crash"]  # the far side answers from now on
        # Time passes: the dead runner's lease runs out.
        await pool.execute("UPDATE effects SET lease_until = now() - interval '1 second' WHERE key = $1", key)
        async with running(make_runner(settings, pool, names, [http_request()])):
            row = await reaches(pool, key, "succeeded")

        assert server.keys("/crash") == [key, key]  # two calls, one key: the far side can deduplicate
    assert row["attempts"] == 2
    [outcome] = await outcomes_in_outbox(pool)
    assert (outcome.status, outcome.attempts, outcome.key) == ("succeeded", 2, key)


async def test_a_late_runner_cannot_record_over_a_newer_attempt(pool: asyncpg.Pool) -> None:
    key = await add(pool, target="hooks.example.com", payload={"url": "https://hooks.example.com/x"})
    first, second = uuid.uuid4(), uuid.uuid4()

    async def claim(token: uuid.UUID) -> Effect:
        async with pool.acquire() as conn, conn.transaction():
            [row] = await effects_repository.due(
                conn, service=SERVICE, kind="http_request", exclude_targets=[], limit=10
            )
            [effect] = await effects_repository.lease(conn, ids=[row["id"]], timeout_s=30, margin_s=30, token=token)
        return effect

    effect = await claim(first)
    await pool.execute("UPDATE effects SET lease_until = now() - interval '1 second' WHERE key = $1", key)
    assert (await claim(second)).attempts == 2  # the lease ran out: another runner took over

    async with pool.acquire() as conn:
        assert not await effects_repository.finish(
            conn, effect_id=effect.id, token=first, status="succeeded", attempts=1, error=None, result={}
        )
        assert not await effects_repository.reschedule(conn, effect_id=effect.id, token=first, error="x", delay_s=0)
        assert (await effect_row(pool, key))["status"] == "running"
        assert await effects_repository.finish(
            conn, effect_id=effect.id, token=second, status="succeeded", attempts=2, error=None, result={}
        )
    row = await effect_row(pool, key)
    assert (row["status"], row["attempts"], row["lease_token"]) == ("succeeded", 2, None)


async def interrupted_in_its_last_attempt(pool: asyncpg.Pool, key: str) -> None:
    """Its runner died during the second (and, allowed two, last) attempt, and that lease has run out."""
    await pool.execute(
        """UPDATE effects SET status = 'running', attempts = 2, lease_token = gen_random_uuid(),
               lease_until = now() - interval '1 second'
           WHERE key = $1""",
        key,
    )


async def test_an_effect_whose_last_attempt_was_interrupted_is_parked_not_run_again(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:
        key = await add(pool, target=server.target, payload=post(server, "/hook"))
        await interrupted_in_its_last_attempt(pool, key)
        async with running(make_runner(settings, pool, names, [http_request(max_attempts=2)])):
            row = await reaches(pool, key, "parked")
        assert server.keys("/hook") == []
    assert row["attempts"] == 2
    assert row["last_error"] == "the last attempt was interrupted before its outcome was recorded"
    [outcome] = await outcomes_in_outbox(pool)
    assert (outcome.status, outcome.attempts) == ("parked", 2)


async def test_transient_failures_are_retried_then_parked_and_an_operator_retry_succeeds(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    retried_before = finished("http_request", "retried")
    async with far_side() as server:
        server.answers["/flaky"] = 503
        key = await add(pool, target=server.target, payload=post(server, "/flaky"))
        runner = make_runner(settings, pool, names, [http_request(max_attempts=3)])
        async with running(runner):
            row = await reaches(pool, key, "parked")
            assert server.keys("/flaky") == [key, key, key]
            assert row["attempts"] == 3
            assert row["last_error"].startswith(f"TransientEffectError: HTTP 503 from {server.target}")
            assert row["result"]["status_code"] == 503
            assert finished("http_request", "retried") == retried_before + 2

            listed = await vigil("effects", "list", "--status", "parked", "--json", settings=settings)
            assert [(e["id"], e["status"], e["attempts"]) for e in json.loads(listed)] == [(row["id"], "parked", 3)]
            table = await vigil("effects", "list", settings=settings)
            assert server.target in table and "parked" in table and "HTTP 503" in table
            assert "0 effect(s)" in await vigil("effects", "list", "--status", "failed", settings=settings)
            server.answers["/flaky"] = 200  # the far side is fixed, then the operator retries
            assert "re-queued" in await vigil("effects", "retry", str(row["id"]), settings=settings)
            row = await reaches(pool, key, "succeeded")
        assert server.keys("/flaky") == [key] * 4
    assert row["attempts"] == 1  # reset by the retry
    assert [(o.status, o.attempts) for o in await outcomes_in_outbox(pool)] == [("parked", 3), ("succeeded", 1)]


async def test_a_refusal_for_good_fails_after_one_attempt(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:
        server.answers["/bad"] = 400
        key = await add(pool, target=server.target, payload=post(server, "/bad"))
        async with running(make_runner(settings, pool, names, [http_request(max_attempts=5)])):
            row = await reaches(pool, key, "failed")
        assert server.keys("/bad") == [key]
    assert row["attempts"] == 1
    assert row["last_error"].startswith("PermanentEffectError: HTTP 400")
    [outcome] = await outcomes_in_outbox(pool)
    assert (outcome.status, outcome.result["status_code"]) == ("failed", 400)
    # Already failed, so a second enqueue with the same key does nothing: the key identifies the effect.
    async with pool.acquire() as conn:
        assert not await enqueue(
            conn, service=SERVICE, kind="http_request", key=key, subject="inc-1", target="x", payload={}
        )


async def test_a_call_that_outlives_its_timeout_is_retried_with_the_same_key(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:
        server.gates["/slow"] = asyncio.Event()  # never answers
        key = await add(pool, target=server.target, payload=post(server, "/slow"))
        # Long enough for each attempt's request to reach the far side on a busy machine.
        async with running(make_runner(settings, pool, names, [http_request(timeout_s=1.0, max_attempts=2)])):
            row = await reaches(pool, key, "parked")
        assert server.keys("/slow") == [key, key]
        server.gates["/slow"].set()
    assert row["last_error"] == "timed out after 1s"


async def test_an_effect_may_carry_its_own_timeout_and_attempts(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """A playbook step's timeout and retries travel with its effect and win over the kind's."""
    async with far_side() as server:
        server.gates["/slow"] = asyncio.Event()  # never answers
        key = f"test:{uuid.uuid4()}"
        async with pool.acquire() as conn, conn.transaction():
            assert await enqueue(
                conn,
                service=SERVICE,
                kind="http_request",
                key=key,
                subject="inc-1",
                target=server.target,
                payload=post(server, "/slow"),
                # Long enough for the request to reach the far side on a loaded machine; far shorter than 60 s.
                timeout_s=1.5,
                max_attempts=1,
            )
        async with running(make_runner(settings, pool, names, [http_request(timeout_s=60, max_attempts=8)])):
            row = await reaches(pool, key, "parked")
        server.gates["/slow"].set()
    assert server.keys("/slow") == [key]
    assert (row["attempts"], row["last_error"]) == (1, "timed out after 1.5s")


async def test_a_slow_target_does_not_hold_up_another(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as slow, far_side() as fast:
        slow.gates["/hook"] = asyncio.Event()
        slow_keys = [await add(pool, target=slow.target, payload=post(slow, "/hook")) for _ in range(3)]
        fast_key = await add(pool, target=fast.target, payload=post(fast, "/hook"))
        kind = http_request(concurrency=4, per_target_concurrency=1, timeout_s=30)
        async with running(make_runner(settings, pool, names, [kind])):
            await reaches(pool, fast_key, "succeeded")
            # The slow target holds its one slot; its other effects wait, without holding up the fast one.
            assert len(slow.received) == 1 and slow.waiting["/hook"] == 1
            statuses = [(await effect_row(pool, k))["status"] for k in slow_keys]
            assert sorted(statuses) == ["pending", "pending", "running"]
            slow.gates["/hook"].set()
            for key in slow_keys:
                await reaches(pool, key, "succeeded")
        assert sorted(k or "" for k in slow.keys("/hook")) == sorted(slow_keys)


async def test_two_runners_share_the_work_without_running_an_effect_twice(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    other_pool = await create_pool(settings.database_url, max_size=3)  # the second replica's own pool
    try:
        async with far_side() as server:
            server.gates["/gate"] = asyncio.Event()
            first = make_runner(settings, pool, names, [http_request(concurrency=4, per_target_concurrency=8)])
            second = make_runner(settings, other_pool, names, [http_request(concurrency=4, per_target_concurrency=8)])
            async with running(first, second):
                gated = [await add(pool, target=server.target, payload=post(server, "/gate")) for _ in range(8)]
                # Each runner takes at most four at a time: eight calls in flight means both are working.
                await eventually(lambda: _true(server.waiting["/gate"] == 8))
                free = [await add(pool, target=server.target, payload=post(server, "/free")) for _ in range(40)]
                server.gates["/gate"].set()

                async def all_succeeded() -> bool:
                    count = await pool.fetchval("SELECT count(*) FROM effects WHERE status = 'succeeded'")
                    return bool(count == len(gated) + len(free))

                await eventually(all_succeeded)
            calls = collections.Counter(r.key for r in server.received)
        assert calls == dict.fromkeys(gated + free, 1)  # every effect called exactly once
        attempts = await pool.fetch("SELECT attempts FROM effects")
        assert {r["attempts"] for r in attempts} == {1}
        assert len(await outcomes_in_outbox(pool)) == len(gated) + len(free)
    finally:
        await other_pool.close()


# ---- mail and commands -------------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


async def test_a_mail_carries_a_message_id_derived_from_its_key(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    await asyncio.to_thread(controller.start)
    try:
        kind = send_mail(host="127.0.0.1", port=controller.port, sender="vigil@example.com", timeout_s=10)
        key = await add(
            pool,
            kind="send_mail",
            target="ic@example.com",
            payload={"to": ["ic@example.com"], "subject": "SEV1: reverse shell on bastion-01", "body": "Ack it."},
        )
        async with running(make_runner(settings, pool, names, [kind])):
            row = await reaches(pool, key, "succeeded")
    finally:
        await asyncio.to_thread(controller.stop)
    [mail] = inbox.messages
    assert mail["Message-ID"] == message_id(key)
    assert (mail["To"], mail["From"], mail["Subject"]) == (
        "ic@example.com",
        "vigil@example.com",
        "SEV1: reverse shell on bastion-01",
    )
    assert str(mail.get_payload()).strip() == "Ack it."
    assert row["result"] == {"message_id": message_id(key), "recipients": 1, "refused": {}}


async def test_a_command_gets_the_key_in_its_arguments_and_environment(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    script = f"import os, sys; print(sys.argv[1]); print(os.environ['{IDEMPOTENCY_ENV}']); print(sorted(os.environ))"
    ok = await add(
        pool,
        kind="run_command",
        target="python",
        payload={"argv": [sys.executable, "-c", script, "--request={idempotency_key}"]},
    )
    refused = await add(
        pool,
        kind="run_command",
        target="python",
        payload={"argv": [sys.executable, "-c", "import sys; sys.exit(3)"], "permanent_exit_codes": [3]},
    )
    kind = run_command(allowed={sys.executable}, env={"LANG": "C.UTF-8"}, max_attempts=3)
    async with running(make_runner(settings, pool, names, [kind])):
        done = await reaches(pool, ok, "succeeded")
        failed = await reaches(pool, refused, "failed")
    argument, variable, environment = done["result"]["stdout"].splitlines()
    assert argument == f"--request={ok}"
    assert variable == ok
    # The service's own environment (database and broker credentials) does not reach the command.
    assert set(json.loads(environment.replace("'", '"'))) <= {"LANG", "PATH", IDEMPOTENCY_ENV, "LC_CTYPE"}
    assert done["result"]["exit_code"] == 0
    assert (failed["attempts"], failed["result"]["exit_code"]) == (1, 3)


# ---- scheduled effects -------------------------------------------------------------------------


async def test_an_effect_not_before_a_future_time_waits_for_it(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:
        later = await add(
            pool,
            target=server.target,
            payload=post(server, "/unblock"),
            not_before=datetime.now(UTC) + timedelta(hours=1),
        )
        now = await add(pool, target=server.target, payload=post(server, "/block"))
        async with running(make_runner(settings, pool, names, [http_request()])):
            await reaches(pool, now, "succeeded")
            row = await effect_row(pool, later)
            assert (row["status"], row["attempts"]) == ("pending", 0)  # the runner went past it
            assert server.keys("/unblock") == []
            # The hour passes.
            await pool.execute("UPDATE effects SET not_before = now() WHERE key = $1", later)
            await reaches(pool, later, "succeeded")
        assert server.keys("/unblock") == [later]


async def test_a_timer_handler_enqueues_an_effect(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:

        async def lease_expired(ctx: HandlerContext, timer: Timer) -> None:
            await enqueue(
                ctx.conn,
                service=SERVICE,
                kind="http_request",
                key=f"unblock:{timer.subject}:{timer.payload['address']}",
                subject=timer.subject,
                target=server.target,
                payload=post(server, "/unblock", {"address": timer.payload["address"]}),
            )

        async with pool.acquire() as conn, conn.transaction():
            await schedule(
                conn,
                service=SERVICE,
                kind="block_lease",
                subject="inc-1",
                due_at=datetime.now(UTC) - timedelta(seconds=1),
                payload={"address": "203.0.113.45"},
            )
        poller = TimerPoller(service=SERVICE, pool=pool, names=names, handlers={"block_lease": lease_expired})
        assert await poller.fire_due() == 1
        key = "unblock:inc-1:203.0.113.45"
        async with running(make_runner(settings, pool, names, [http_request()])):
            await reaches(pool, key, "succeeded")
        assert server.keys("/unblock") == [key]
        assert json.loads(server.received[0].body) == {"address": "203.0.113.45"}


async def test_a_service_whose_spec_lists_effect_kinds_runs_them(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, tmp_path: Path
) -> None:
    env = service_env(settings, port=free_port())
    log_path = tmp_path / "service.log"
    async with far_side() as server:
        key = await add(pool, target=server.target, payload=post(server, "/hook"))
        with log_path.open("wb") as log_file:
            service = await start_module("tests.integration.test_effects", "service", env=env, log=log_file)
            try:
                row = await reaches(pool, key, "succeeded")
                # Published by the service's own outbox relay.
                records = await read_all(settings, names(EFFECTS), expect=1)
            finally:
                service.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(service.wait(), 30)
                except TimeoutError:
                    service.kill()
                    await service.wait()
                    raise
        assert code == 0, log_path.read_text()
        assert server.keys("/hook") == [key]
    assert row["attempts"] == 1
    [event] = [cloudevents.decode(r.value, r.headers) for r in records]
    assert isinstance(event, EffectCompleted) and (event.data.key, event.data.status) == (key, "succeeded")


# ---- stopping, failing, pruning ----------------------------------------------------------------


async def test_a_stopped_runner_hands_its_effects_back_at_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:
        server.gates["/hook"] = asyncio.Event()
        key = await add(pool, target=server.target, payload=post(server, "/hook"))
        async with running(make_runner(settings, pool, names, [http_request(timeout_s=30)])):
            await eventually(lambda: _true(server.waiting["/hook"] == 1))
        row = await effect_row(pool, key)
        # Back in line, due now, with no lease to wait out; the call the stop cut short is not counted as an
        # attempt, but as a run: it may have reached the far side.
        assert (row["status"], row["attempts"], row["runs"], row["lease_until"]) == ("pending", 0, 1, None)
        del server.gates["/hook"]
        async with running(make_runner(settings, pool, names, [http_request()])):
            row = await reaches(pool, key, "succeeded")
        assert server.keys("/hook") == [key, key]
    assert row["attempts"] == 1


async def test_a_runner_stopped_between_claiming_and_starting_hands_the_claim_back(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    class Paused(EffectRunner):
        """Stops after its claim is committed, before it starts the effects: where a stop can come."""

        claimed = asyncio.Event()

        async def _claim(self, kind: EffectKind, free: int, token: uuid.UUID) -> list[Effect]:
            effects = await super()._claim(kind, free, token)
            self.claimed.set()
            await asyncio.Event().wait()  # cancelled here
            return effects

    async with far_side() as server:
        key = await add(pool, target=server.target, payload=post(server, "/hook"))
        kinds = [http_request(timeout_s=30)]
        runner = Paused(SERVICE, pool, names, kinds, connect=lambda: asyncpg.connect(settings.database_url))
        async with running(runner):
            await asyncio.wait_for(runner.claimed.wait(), 10)
            assert (await effect_row(pool, key))["status"] == "running"  # leased for 30 s and more
        row = await effect_row(pool, key)
        # Never started: neither an attempt nor a run.
        assert (row["status"], row["attempts"], row["runs"], row["lease_until"]) == ("pending", 0, 0, None)
        async with running(make_runner(settings, pool, names, [http_request()])):
            await reaches(pool, key, "succeeded")
        assert server.keys("/hook") == [key]


async def test_a_draining_runner_records_the_calls_in_flight_and_claims_nothing_new(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with far_side() as server:
        server.gates["/slow"] = asyncio.Event()
        server.gates["/stuck"] = asyncio.Event()
        slow = await add(pool, target=server.target, payload=post(server, "/slow"))
        stuck = await add(pool, target=server.target + "-b", payload=post(server, "/stuck"))
        runner = make_runner(settings, pool, names, [http_request(timeout_s=30)])
        async with running(runner):
            await eventually(lambda: _true(server.waiting["/slow"] == 1 and server.waiting["/stuck"] == 1))
            draining = asyncio.create_task(runner.drain(2.0))
            await asyncio.sleep(0)  # the drain has begun: nothing more is claimed
            later = await add(pool, target=server.target, payload=post(server, "/later"))
            await asyncio.sleep(0.3)
            server.gates["/slow"].set()
            await draining
        # The call that answered within the grace is recorded once; the one that did not is handed back.
        assert (await effect_row(pool, slow))["status"] == "succeeded"
        assert ((await effect_row(pool, stuck))["status"], (await effect_row(pool, stuck))["attempts"]) == (
            "pending",
            0,
        )
        assert ((await effect_row(pool, later))["status"], server.keys("/later")) == ("pending", [])
        assert server.keys("/slow") == [slow]
        server.gates["/stuck"].set()


async def test_an_effect_whose_outcome_hook_fails_is_parked_at_once_never_made_again(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async def broken(ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        await ctx.conn.execute("UPDATE effects SET target = 'changed' WHERE id = $1", effect.id)
        raise RuntimeError("bug in the service's hook")

    async with far_side() as server:
        key = await add(pool, target=server.target, payload=post(server, "/hook"))
        runner = make_runner(settings, pool, names, [http_request(max_attempts=3, on_outcome=broken)])
        async with running(runner) as [task]:
            row = await reaches(pool, key, "parked")
            assert not task.done()  # the service goes on
        assert server.keys("/hook") == [key]  # made once: not again when its lease would have ended
    assert (
        row["last_error"]
        == "the call was made (ok); its outcome could not be recorded: RuntimeError: bug in the service's hook"
    )
    assert row["result"], "what the far side answered is kept"
    # The hook's recording rolled back whole (its write too): no outcome is told.
    assert row["target"] == server.target
    assert await outcomes_in_outbox(pool) == []


async def test_an_effect_of_a_kind_nobody_runs_is_left_alone_and_counted(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    key = await add(pool, kind="retired_kind", target="x", payload={})
    runner = make_runner(settings, pool, names, [http_request()])
    await runner.refresh_gauges()
    assert await runner.claim_and_start() == 0
    assert (await effect_row(pool, key))["status"] == "pending"
    assert REGISTRY.get_sample_value("vigil_effects_queued", {"service": SERVICE, "kind": "retired_kind"}) == 1


async def test_retry_and_prune_touch_only_what_they_may(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    keys = {
        status: await add(pool, target="x", payload={}, key=f"k-{status}")
        for status in ("succeeded", "failed", "parked", "pending", "old-succeeded", "old-failed")
    }
    for label, key in keys.items():
        status = label.removeprefix("old-")
        age = "2 days" if label.startswith("old-") else "1 minute"
        await pool.execute(
            f"""UPDATE effects SET status = $2, attempts = 3,
                   finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() - interval '{age}' END
                WHERE key = $1""",
            key,
            status,
        )
    async with pool.acquire() as conn:
        assert await retry(conn, effect_id=(await effect_row(pool, keys["pending"]))["id"]) == "pending"
        assert await retry(conn, effect_id=-1) is None
    pending_id = str((await effect_row(pool, keys["pending"]))["id"])
    refused = await vigil("effects", "retry", pending_id, settings=settings, exit_code=1)
    assert "only a parked or failed effect can be retried" in refused
    assert "no effect 999999" in await vigil("effects", "retry", "999999", settings=settings, exit_code=1)
    assert (await effect_row(pool, keys["pending"]))["attempts"] == 3  # not touched

    assert await prune(pool, service=SERVICE, keep=timedelta(days=1)) == 2
    assert await prune(pool, service="another", keep=timedelta(days=1)) == 0
    left = {r["key"] for r in await pool.fetch("SELECT key FROM effects")}
    assert left == {keys["succeeded"], keys["failed"], keys["parked"], keys["pending"]}

    async with pool.acquire() as conn:
        assert await retry(conn, effect_id=(await effect_row(pool, keys["failed"]))["id"]) == "failed"
    row = await effect_row(pool, keys["failed"])
    assert (row["status"], row["attempts"], row["finished_at"]) == ("pending", 0, None)


# ---- helpers, continued ------------------------------------------------------------------------


async def _true(value: bool) -> bool:
    return value


async def vigil(*args: str, settings: VigilSettings, exit_code: int = 0) -> str:
    """Run the `vigil` command against the test's database; return its output (stdout, then stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")),
        *args,
        env={**os.environ, "DATABASE_URL": settings.database_url, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == exit_code, stderr.decode()
    return stdout.decode() + stderr.decode()


def _runner_process(database_url: str, service: str) -> None:
    """Run an effects runner until killed (the crash test's runner process)."""

    async def main() -> None:
        pool = await create_pool(database_url, max_size=2)
        kind = http_request(timeout_s=60)
        await EffectRunner(service, pool, TopicNames(""), [kind], poll_s=0.1).run()

    asyncio.run(main())


def _service_process() -> None:
    """Run a service whose spec lists an effect kind, until SIGTERM."""
    from shared.consumer import decode_cloudevent, dispatch_each
    from shared.service import ServiceSpec, run_service

    spec = ServiceSpec(
        name=SERVICE,
        consumes=(EFFECTS,),
        decoder=decode_cloudevent,
        handler=dispatch_each({}),
        effects=lambda _rt: (http_request(),),
    )
    asyncio.run(run_service(spec))


async def test_an_interrupted_effect_whose_outcome_hook_keeps_failing_is_parked_without_it(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async def broken(ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        raise RuntimeError("bug in the service's hook")

    async with far_side() as server:
        key = await add(pool, target=server.target, payload=post(server, "/hook"))
        # The hook failed at its last attempt's outcome and stopped the runner, at every restart since.
        await interrupted_in_its_last_attempt(pool, key)
        runner = make_runner(settings, pool, names, [http_request(max_attempts=2, on_outcome=broken)])
        async with running(runner) as [task]:
            row = await reaches(pool, key, "parked")
            assert not task.done()  # the service goes on
        assert server.keys("/hook") == []
    assert row["last_error"] == "its outcome could not be recorded: RuntimeError: bug in the service's hook"
    assert await outcomes_in_outbox(pool) == []  # the hook did not run to its end: no outcome is told


if __name__ == "__main__":
    if sys.argv[1] == "runner":
        _runner_process(*sys.argv[2:4])
    else:
        _service_process()


async def test_an_in_order_kind_does_a_targets_effects_in_the_order_enqueued_through_retries_and_held_ones(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """A room's posts: the first fails once and waits out its retry (as long as its far side asks); the one
    after it, due at once, waits for it. One held for later holds those after it until it is released."""
    done: list[str] = []
    failed_once: set[str] = set()

    async def execute(effect: Effect) -> dict[str, Any]:
        if effect.payload.get("flaky") and effect.key not in failed_once:
            failed_once.add(effect.key)
            raise TransientEffectError("not yet", retry_after_s=0.5)
        done.append(effect.key)
        return {}

    kind = EffectKind(name="in_order", execute=execute, in_order=True, per_target_concurrency=1)
    first = await add(pool, kind="in_order", target="room-a", payload={"flaky": True})
    second = await add(pool, kind="in_order", target="room-a", payload={})
    elsewhere = await add(pool, kind="in_order", target="room-b", payload={})
    held = await add(
        pool, kind="in_order", target="room-c", payload={}, not_before=datetime.now(UTC) + timedelta(days=1)
    )
    behind = await add(pool, kind="in_order", target="room-c", payload={})
    async with running(make_runner(settings, pool, names, [kind])):
        await reaches(pool, second, "succeeded")
        await reaches(pool, elsewhere, "succeeded")
        assert (await effect_row(pool, behind))["status"] == "pending"  # behind one held for later
        async with pool.acquire() as conn:
            assert (
                await effects_repository.release_pending(conn, service=SERVICE, kind="in_order", target="room-c") == 1
            )
        await reaches(pool, behind, "succeeded")
    assert done.index(first) < done.index(second)
    assert done.index(held) < done.index(behind)
    retried = await effect_row(pool, first)
    assert retried["attempts"] == 2
