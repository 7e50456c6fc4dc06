"""The fault suite's harness: the five services under the supervisor, local receivers, an alert feed.

The services run as processes under `vigil up`'s supervisor (`vigil/supervisor.py`), which restarts
one that dies; the responder's webhook connector and the coordinator's webhook channel point at
``Receiver`` endpoints in the test process, which answer every request and note each idempotency key
they see; the feed publishes sample alerts (`vigil/demo.py`) in their tools' own formats (`bench/formats.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import formats
from shared.embedded import free_port
from shared.kafka import make_consumer, make_producer
from shared.settings import SERVICE_NAMES, VigilSettings
from tests.helpers import serve_app, worker_ports
from vigil.demo import EstateAlerts

# Every random choice of the suite (alerts, which service dies, when) comes from this seed.
SEED = 20261126

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Delivery:
    """One request a receiver answered."""

    key: str  # its Idempotency-Key header
    path: str
    at: float  # time.monotonic() when it arrived


class Receiver:
    """A connector's far side: answers 200 to every request and notes the idempotency key of each.

    ``hangs`` picks requests it holds without answering until ``release`` is set, as a target that
    stopped responding does.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.deliveries: list[Delivery] = []
        self.hangs: Callable[[str, bytes], bool] = lambda _path, _body: False
        self.held = 0
        self.release = asyncio.Event()
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        self.deliveries.append(Delivery(headers.get("idempotency-key", ""), scope["path"], time.monotonic()))
        if self.hangs(scope["path"], body):
            self.held += 1
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    def keys(self) -> Counter[str]:
        return Counter(delivery.key for delivery in self.deliveries)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Receiver]:
        async with serve_app(self, name=f"receiver-{self.name}") as url:
            self.url = url
            try:
                yield self
            finally:
                self.release.set()  # a held request must not keep uvicorn from stopping


@dataclass(frozen=True)
class Kill:
    service: str
    pid: int
    at: float  # time.monotonic()


ON_CALL_PEOPLE = tuple(f"{name}@example.com" for name in ("alice", "bob", "carol", "dave", "erin", "frank"))
WEBHOOK_SECRET = "fault-suite-webhook-secret-0123456789"
NOTIFY_SECRET = "fault-suite-notify-secret-0123456789"


def write_config(
    folder: Path, *, actions_url: str, notify_url: str, hung_url: str = "", hung_actions: Sequence[str] = ()
) -> dict[str, str]:
    """Connectors, approvals and notifications that send every step and notice to the receivers.

    With ``hung_url``, the ``hung_actions`` go there instead, and so does a second channel (Slack)
    that every notice takes besides the webhook.
    """
    actions = ", ".join(f"{action}: {{url: {hung_url}/actions}}" for action in hung_actions)
    connectors = folder / "connectors.yaml"
    connectors.write_text(
        f"webhook:\n  url: {actions_url}/actions\n  actions: {{{actions}}}\n  secret_env: VIGIL_WEBHOOK_SECRET\n"
        "command:\n  actions: {}\nplugins: {}\n"
    )
    # Every step proceeds at once, so that response steps run while services die.
    approvals = folder / "approvals.yaml"
    approvals.write_text("rules:\n  - {name: everything, mode: auto}\n")
    # The shipped on-call file's people, each reached at the channel's own address.
    people = ", ".join(f"{name}: {{}}" for name in ON_CALL_PEOPLE)
    channels = "webhook, slack" if hung_url else "webhook"
    notifications = folder / "notifications.yaml"
    notifications.write_text(
        f"channels:\n  webhook: {{url: {notify_url}/notify, secret_env: VIGIL_NOTIFY_WEBHOOK_SECRET}}\n"
        + (f"  slack: {{url: {hung_url}/slack}}\n" if hung_url else "")
        + f"people: {{{people}}}\ngroups: {{}}\nroutes:\n  default: {{default: [{channels}]}}\n"
    )
    return {
        "VIGIL_RESPONDER_CONNECTORS": str(connectors),
        "VIGIL_RESPONDER_APPROVALS": str(approvals),
        "VIGIL_NOTIFICATIONS": str(notifications),
        "VIGIL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "VIGIL_NOTIFY_WEBHOOK_SECRET": NOTIFY_SECRET,
    }


class Stack:
    """The five services as processes under the supervisor, each on its own port, logs in ``folder``."""

    def __init__(
        self,
        settings: VigilSettings,
        folder: Path,
        *,
        extra_env: dict[str, str] | None = None,
        hung_actions: Sequence[str] = (),
    ) -> None:
        from vigil.supervisor import Supervisor

        self.settings = settings
        self.folder = folder
        self.ports = {name: free_port(within=worker_ports()) for name in SERVICE_NAMES}
        self.kills: list[Kill] = []
        # SIGTERMs: a stopping effects runner cancels its calls in flight and they run again afterwards.
        self.stops: list[Kill] = []
        self.actions = Receiver("actions")
        self.notices = Receiver("notices")
        # A target that stops answering: the hung actions and a second notification channel go there.
        self.hung = Receiver("hung")
        self.hung.hangs = lambda _path, _body: True
        self.hung_actions = tuple(hung_actions)
        self.extra_env = extra_env or {}
        self.supervisor: Supervisor | None = None
        self.exit_codes: dict[str, int | None] = {}

    def env(self) -> dict[str, str]:
        settings = self.settings
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "DATABASE_URL": settings.database_url,
            "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
            "VIGIL_SESSION_TIMEOUT_MS": "6000",
            "VIGIL_REBALANCE_TIMEOUT_MS": "1000",
            "VIGIL_CONSUMER_POLL_MS": "50",
            "VIGIL_LOG_FORMAT": "text",
            "VIGIL_ALLOW_UNAUTHENTICATED": "true",
            "VIGIL_ANALYZER_DOCUMENTATION_NOISE": "false",
            # Failed effects are retried within the run, not minutes later.
            "VIGIL_EFFECTS_BACKOFF_BASE_S": "0.5",
            "VIGIL_EFFECTS_BACKOFF_CAP_S": "5",
            **write_config(
                self.folder,
                actions_url=self.actions.url,
                notify_url=self.notices.url,
                hung_url=self.hung.url if self.hung_actions else "",
                hung_actions=self.hung_actions,
            ),
            **self.extra_env,
        }

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Stack]:
        from vigil.supervisor import Supervisor

        async with self.actions.serving(), self.notices.serving(), self.hung.serving():
            self.supervisor = Supervisor(
                self.env(),
                env_for={name: {"VIGIL_HTTP_PORT": str(port)} for name, port in self.ports.items()},
                log_dir=self.folder,
            )
            await self.supervisor.start()
            approving = asyncio.create_task(self._approve_forever(), name="approver")
            try:
                await self.wait_ready(SERVICE_NAMES, timeout=180)
                yield self
            finally:
                approving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await approving
                await self.supervisor.stop(timeout_s=30)
                self.exit_codes = {
                    child.name: child.process.returncode if child.process else None
                    for child in self.supervisor.children
                }

    async def _approve_forever(self) -> None:
        """The commander on duty: approves the webhook steps waiting for a person, through the API.

        Steps a playbook marks `approval: required` wait for a person whatever the policy says; this
        one answers within a second or two, whatever is being killed meanwhile. Only the webhook's,
        whose calls the receiver counts: the blocklist's, one per address, would multiply the work.
        """
        import asyncpg

        conn: asyncpg.Connection | None = None
        try:
            async with httpx.AsyncClient(base_url=self.url("responder", ""), timeout=10) as client:
                while True:
                    await asyncio.sleep(1)
                    try:
                        if conn is None or conn.is_closed():
                            conn = await asyncpg.connect(self.settings.database_url)
                        # `<incident>:<step>` answers every waiting item of the step at once.
                        groups = await conn.fetch(
                            """SELECT DISTINCT incident_id || ':' || step AS id
                               FROM responder_steps WHERE state = 'awaiting_approval' AND connector = 'webhook'"""
                        )
                        for row in groups:
                            answer = {"step_id": row["id"], "actor": "alice@example.com", "role": "commander"}
                            await client.post(f"/api/v1/steps/{row['id']}/approve", json=answer)
                    except (
                        OSError,
                        httpx.HTTPError,
                        asyncpg.PostgresError,
                        asyncpg.InterfaceError,
                        asyncpg.InternalClientError,
                    ):
                        # The responder or Postgres is down for now: the next round tries again, on a new
                        # connection (one a restart cut mid-query can be left unusable, yet not closed).
                        if conn is not None:
                            conn.terminate()
                            conn = None
                        continue
        finally:
            if conn is not None:
                conn.terminate()

    async def ready(self, service: str) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(self.url(service, "/readyz"))).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_ready(self, services: Sequence[str], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(services)
        while waiting:
            waiting = [name for name in waiting if not await self.ready(name)]
            if waiting and time.monotonic() > deadline:
                raise AssertionError(f"not ready within {timeout}s: {waiting}\n{self.log_tail()}")
            if waiting:
                await asyncio.sleep(0.5)

    def pid(self, service: str) -> int:
        assert self.supervisor is not None
        process = self.supervisor.child(service).process
        assert process is not None and process.returncode is None, f"{service} is not running"
        return process.pid

    def kill(self, service: str) -> Kill:
        """SIGKILL the service's process now: no draining, no commit, no flush."""
        pid = self.pid(service)
        os.kill(pid, signal.SIGKILL)
        kill = Kill(service, pid, time.monotonic())
        self.kills.append(kill)
        return kill

    def rss_mb(self, service: str) -> float:
        """The service process's resident memory."""
        for line in Path(f"/proc/{self.pid(service)}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS for {service}")

    def restarts(self) -> dict[str, int]:
        assert self.supervisor is not None
        return {child.name: child.restarts for child in self.supervisor.children}

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.folder.glob("*.log"))
        )


# ---- the alert feed ------------------------------------------------------------------------------


@dataclass
class Feed:
    """What was published: each alert's key as the detector stores it, and how many of each format."""

    keys: list[str] = field(default_factory=list)
    by_value: dict[str, str] = field(default_factory=dict)  # sha256 of the record -> alert key
    formats: Counter[str] = field(default_factory=Counter)


def value_digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


class EstateFactory(EstateAlerts):
    """The sample alerts over a small estate: a few attackers and internal addresses, not thousands.

    Each distinct address becomes an indicator and, for containment playbooks, a step per address:
    a fresh address per alert would make every plan hundreds of steps long.
    """

    def address(self, kind: str) -> str:
        n = self.rng.randrange(8)
        return f"10.20.0.{n + 1}" if kind == "internal" else f"203.0.113.{n + 1}"


async def feed_alerts(
    settings: VigilSettings,
    topic: str,
    *,
    count: int,
    waves: int,
    every_s: float,
    hosts: int,
    seed: int = SEED,
    out: Feed,
) -> Feed:
    """Publish ``count`` alerts in ``waves`` bursts ``every_s`` apart, mixed formats, keyed by host.

    Bursts, as tools send when something breaks: each is a batch or two for the detector, one
    update per incident, rather than an update per alert.
    """
    factory = EstateFactory(hosts=hosts, seed=seed)
    factory.run = f"{seed:x}"[-6:]  # ids the same on every run, as the rest of the seeded feed
    producer = make_producer(settings, client_id="fault-feed")
    await producer.start()
    try:
        for wave in range(waves):
            started = time.monotonic()
            pending = []
            for _ in range(count // waves + (1 if wave < count % waves else 0)):
                kafka_key, alert = factory.make()
                key, value = formats.encode(alert, datetime.now(UTC), "mixed")
                out.keys.append(key)
                out.by_value[value_digest(value)] = key
                out.formats[formats.format_for(alert, "mixed").name] += 1
                pending.append(await producer.send(topic, key=kafka_key, value=value))
            await asyncio.gather(*pending)
            if wave < waves - 1:
                await asyncio.sleep(max(every_s - (time.monotonic() - started), 0))
    finally:
        await producer.stop()
    return out


async def read_topic(settings: VigilSettings, topic: str) -> list[Any]:
    """Every record of a topic, from the beginning to its end as of now."""
    from aiokafka import TopicPartition

    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


# ---- waiting for the dust to settle ------------------------------------------------------------------

# Our receivers answer at once: an effect running longer than this belongs to a runner that died.
DEAD_RUNNER_S = 20


@dataclass
class Settled:
    seconds: float
    leases_ended: int  # effects of a killed runner whose lease the test ended early


async def settle(stack: Stack, *, alerts: int, timeout: float) -> Settled:
    """Wait until every alert is stored, every group caught up and nothing is left to send or run.

    The lease of an effect a killed runner held lasts its step's timeout (up to hours) before another
    attempt may take it: the test ends such leases at once, as if that time had passed.
    """
    import asyncpg

    from tests.faults.accounting import consumer_lag

    started = time.monotonic()
    conn = await asyncpg.connect(stack.settings.database_url)
    ended = 0
    last: tuple[object, ...] | None = None
    try:
        while True:
            ended += int(
                (
                    await conn.execute(
                        """UPDATE effects SET lease_until = now()
                           WHERE status = 'running' AND lease_until > now()
                             AND updated_at < now() - make_interval(secs => $1)""",
                        DEAD_RUNNER_S,
                    )
                ).split()[-1]
            )
            state = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM detector_alerts WHERE NOT retired)
                        + (SELECT count(*) FROM detector_waiting)
                        + (SELECT count(*) FROM detector_suppressed_alerts WHERE released_at IS NULL) AS alerts,
                          (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL) AS unsent,
                          (SELECT coalesce(max(id), 0) FROM outbox) AS outbox_head,
                          (SELECT count(*) FROM effects WHERE status = 'running'
                               OR (status = 'pending' AND not_before <= now())) AS effects,
                          (SELECT count(*) FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL
                               AND parked_at IS NULL AND due_at < now()) AS timers,
                          (SELECT count(*) FROM responder_steps
                               WHERE state = 'awaiting_approval' AND connector = 'webhook')
                        + (SELECT count(*) FROM analyzer_incidents WHERE pending_event IS NOT NULL)
                        + (SELECT count(DISTINCT incident_id) FROM detector_held_alerts) AS waiting"""
            )
            assert state is not None
            lag = await asyncio.to_thread(consumer_lag, stack.settings)
            now = (tuple(state.values()), tuple(lag.values()))
            busy = state["unsent"] or state["effects"] or state["timers"] or state["waiting"]
            # A service killed last may still wait out its restart back-off, or be starting: settled means
            # all five serve again (and so take SIGTERM as a request to drain, not as the end of an import).
            down = [name for name in SERVICE_NAMES if not await stack.ready(name)]
            quiet = state["alerts"] >= alerts and not busy and not down
            if quiet and not any(lag.values()) and now == last:
                return Settled(time.monotonic() - started, ended)
            last = now
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"not settled within {timeout}s: {dict(state)}, lag {lag}, down {down}\n{stack.log_tail()}"
                )
            await asyncio.sleep(2)
    finally:
        await conn.close()
