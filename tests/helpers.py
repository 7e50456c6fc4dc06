"""Polling with deadlines, fresh databases, producing records and running consume loops against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import embedded
from shared.consumer import BatchFence, BatchHandler, ConsumeLoop, DeadLetterGuard, Decoder
from shared.db import scratch_database
from shared.kafka import group_id, make_consumer, make_producer
from shared.settings import VigilSettings
from shared.topics import TopicNames

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll until ``check`` returns something truthy; fail with its last value at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


@contextlib.asynccontextmanager
async def running(work: Awaitable[Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``work`` (a relay, a runner, a poller) as a task until the block ends, then cancel it."""
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def empty_database(admin_url: str) -> AsyncIterator[str]:
    """Create a database with nothing in it, yield its URL, drop it."""
    async with scratch_database(admin_url, prefix="vigil_test", migrated=False) as url:
        yield url


async def produce(
    settings: VigilSettings,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes, Sequence[tuple[str, bytes | None]]]],
) -> None:
    producer = make_producer(settings, client_id="test-producer")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, key=key, value=value, headers=headers, partition=0)
    finally:
        await producer.stop()


async def read_all(settings: VigilSettings, topic: str, *, expect: int, timeout: float = 30.0) -> list[Any]:
    """Read a topic from the beginning until ``expect`` records arrived."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        partitions = await _assign_all(consumer, topic)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def _assign_all(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer._client.force_metadata_update()
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    return partitions


async def committed(settings: VigilSettings, group: str, topic: str, partition: int = 0) -> int | None:
    """The group's committed offset, read the way that works on every broker."""
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, partition))
        return offset
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def consume_loop(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    *,
    service: str,
    topics: Sequence[str],
    decoder: Decoder[Any],
    handler: BatchHandler[Any],
    guard: DeadLetterGuard | None = None,
    crashes_with: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    linger_ms: int = 0,
    batch_size: int = 2000,
) -> AsyncIterator[tuple[ConsumeLoop[Any], asyncio.Task[None]]]:
    """Run a real consume loop in a task; stop it (and its clients) on exit.

    On exit the loop must have stopped cleanly: whatever it ended with is raised in the test,
    unless the test expects the loop to crash with ``crashes_with``; then it must have.
    """
    fence = BatchFence(service)
    consumer = make_consumer(settings, *topics, group_id=group_id(settings, service), listener=fence)
    producer = make_producer(settings, client_id=service)
    await consumer.start()
    await producer.start()
    loop = ConsumeLoop(
        service=service,
        consumer=consumer,
        producer=producer,
        pool=pool,
        names=TopicNames(settings.topic_prefix),
        decoder=decoder,
        handler=handler,
        poll_ms=50,
        linger_ms=linger_ms,
        batch_size=batch_size,
        dead_letter_guard=guard,
        fence=fence,
    )
    task = asyncio.create_task(loop.run(), name=f"consume-loop-{service}")
    try:
        yield loop, task
    finally:
        loop.stop()
        try:
            await _ended(task, service=service, crashes_with=crashes_with)
        finally:
            await _closed(producer.stop(), f"the {service} producer")
            await _closed(consumer.stop(), f"the {service} consumer")


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: its chain of awaits, outermost first."""
    lines: list[str] = []
    waited: Any = task.get_coro()
    while waited is not None:
        frame = (
            getattr(waited, "cr_frame", None) or getattr(waited, "gi_frame", None) or getattr(waited, "ag_frame", None)
        )
        if frame is not None:
            lines += traceback.format_stack(frame, limit=1)
        waited = (
            getattr(waited, "cr_await", None)
            or getattr(waited, "gi_yieldfrom", None)
            or getattr(waited, "ag_await", None)
        )
    return "".join(lines) or f"{task!r}"


async def _closed(stop: Awaitable[None], what: str, *, timeout: float = 30.0) -> None:
    try:
        await asyncio.wait_for(stop, timeout)
    except TimeoutError:
        raise AssertionError(f"{what} did not stop within {timeout:g}s") from None


async def _ended(
    task: asyncio.Task[None],
    *,
    service: str,
    crashes_with: type[BaseException] | tuple[type[BaseException], ...] | None,
    timeout: float = 10.0,
) -> None:
    """Wait for a stopped loop's task; raise what it ended with unless the test expected exactly that."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        where = awaiting(task)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        cancelled = "" if done else f", nor within {timeout}s of being cancelled"
        raise AssertionError(
            f"the {service} consume loop did not stop within {timeout}s of stop(){cancelled}; it was at:\n{where}"
        )
    if task.cancelled():
        raise AssertionError(f"the {service} consume loop was cancelled instead of stopping")
    error = task.exception()
    expected = crashes_with is not None and isinstance(error, crashes_with)
    if error is not None and not expected:
        raise error
    if crashes_with is not None and error is None:
        raise AssertionError(f"the {service} consume loop was expected to crash with {crashes_with!r}; it stopped")


@contextlib.asynccontextmanager
async def serve_app(app: Any, *, name: str) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, as a service does; yield its base URL."""
    import uvicorn

    from shared.embedded import free_port

    port = free_port(within=worker_ports())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
    serving = asyncio.create_task(server.serve(), name=name)

    async def started() -> bool:
        if serving.done():
            serving.result()  # raise why it stopped
        return bool(server.started)

    try:
        await eventually(started, timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


# The shares the listening ports are cut into, one a test worker (the suites run up to four at once).
WORKER_SHARES = 8


def worker_ports() -> range:
    """This test worker's share of the listening ports. Tests run side by side, each starting servers on
    ports chosen a while before they listen (and listened on again after each restart): ports from one
    range, two tests could choose the same one, and the later to listen would find it taken."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    ports = embedded.LISTEN_PORTS
    share = len(ports) // WORKER_SHARES
    start = ports.start + (index % WORKER_SHARES) * share
    return range(start, start + share)


@contextlib.contextmanager
def vigil_up_ports() -> Iterator[None]:
    """The block runs alone among those that start `vigil up`, which listens on fixed ports (9092, 8080-8084).

    The xdist group keeps this suite's such tests on one worker; the lock also keeps out another pytest run on
    this machine, and holds should a pytest release stop honouring the group again
    (`tests/unit/test_suite_grouping.py`).
    """
    with (Path(tempfile.gettempdir()) / "vigil-up-ports.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


REPO_ROOT = Path(__file__).resolve().parents[1]


def service_env(settings: VigilSettings, *, port: int, **extra: str) -> dict[str, str]:
    """The environment of a service process a test starts: the test's broker, database and topics, a port of
    its own, text logs, and no API token to ask for (it listens on loopback only)."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
        "VIGIL_HTTP_PORT": str(port),
        "VIGIL_LOG_FORMAT": "text",
        "VIGIL_ALLOW_UNAUTHENTICATED": "true",
        **extra,
    }


async def start_module(module: str, *args: str, env: Mapping[str, str], log: IO[bytes]) -> asyncio.subprocess.Process:
    """``python -m module args`` from the repository's root, its output (both streams) into ``log``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=asyncio.subprocess.STDOUT
    )
