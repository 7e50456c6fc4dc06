"""The reporter's windowed stream aggregations: a faust app in the reporter's process and event loop.

Two agents, at least once:

1. ``tally`` reads the incidents topic and both dead-letter topics (consumer group
   ``<prefix>vigil-reporter-stream``, apart from the reporter's consume loop) and turns each record into
   tallies (``services/reporter/windows.py``): which key of which aggregate it counts toward, at its own time.
   Each tally goes to the app's ``tallies`` topic, keyed by aggregate and key, so that every key is counted
   on one partition, in order, by one replica.
2. ``count`` adds each tally to its aggregate's table: tumbling windows relative to the tally's timestamp (the
   event's time), expiring, backed by a changelog topic. On a start the tables are read back from their
   changelogs: the counts survive restarts without Postgres.

Offsets are committed after the tallies and the changelog writes are acknowledged, so a crash counts the
events since the last commit (every few seconds) again: a count may run over, never under. No standby
replicas are kept: with more than one reporter, each one's /metrics holds the keys it counts (their sum is
the whole) and its API those keys only.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import faust

from services.reporter import windows
from services.reporter.metrics import STREAM_EVENTS, STREAM_RESTARTS, STREAM_WINDOWS
from services.reporter.windows import Aggregate, FlappingAlert, Tally, Window, WindowSpec
from shared import cloudevents
from shared.errors import InvalidMessage, UnknownEventType, is_retriable
from shared.service import Runtime
from shared.settings import KafkaSettings, VigilSettings
from shared.topics import ALERTS_DLQ, EVENTS_DLQ, INCIDENTS, TopicNames, ensure_topics

log = logging.getLogger(__name__)


class NoHttpClient:
    """The stream app's HTTP client class (faust's ``HttpClient``): it makes no HTTP requests, and says so."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the reporter's stream app makes no HTTP requests")


class _AiohttpClientPlaceholder(ModuleType):
    """Stands for ``aiohttp.client`` while faust's types are read: it has the one name they take, nothing else."""

    ClientSession = NoHttpClient

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{self.__name__}.{name}: aiohttp is not loaded while faust's types are read")


def _read_faust_types() -> None:
    """Read faust's types without loading aiohttp's HTTP client, unless something else loaded it already.

    faust imports aiohttp's client to name a type (faust/types/web.py) and as its default HTTP client class:
    8 MB of the reporter's memory, for an HTTP client and a web server its app never starts (``web_enabled=False``,
    no livecheck, ``HttpClient=NoHttpClient``). While faust's types are read, a placeholder answers for that
    name; afterwards ``import aiohttp`` loads the real package for whoever needs it.
    """
    if "aiohttp" in sys.modules or "faust.types" in sys.modules:
        return
    package, client = _AiohttpClientPlaceholder("aiohttp"), _AiohttpClientPlaceholder("aiohttp.client")
    package.__path__ = []  # a package, so that ``aiohttp.client`` is looked up as its submodule
    sys.modules["aiohttp"], sys.modules["aiohttp.client"] = package, client
    try:
        importlib.import_module("faust.types")
    finally:
        for name, placeholder in (("aiohttp", package), ("aiohttp.client", client)):
            if sys.modules.get(name) is placeholder:
                del sys.modules[name]


_read_faust_types()

APP_NAME = "vigil-reporter-stream"
# Partitions of the tallies topic and of each table's changelog: the most reporters that share the counting.
PARTITIONS = 4
# How long a stopped app waits before it starts again.
RESTART_DELAY_S = 5.0
# The tally agent reads up to this many records, or what came within this long, at a time.
TAKE_RECORDS = 500
TAKE_WITHIN_S = 0.5
CHECK_S = 1.0
# Longest wait for the app to commit and stop: the reporter's stop waits for it.
STOP_TIMEOUT_S = 5


class WindowView:
    """The stream tables as they stand, for the API and /metrics; empty until the app runs and has recovered."""

    def __init__(self, *, flapping_window_s: int, flapping_threshold: int, clock: Callable[[], float] = time.time):
        self.specs: dict[Aggregate, WindowSpec] = {
            "alerts": windows.ALERTS,
            "incidents": windows.INCIDENTS,
            "dead_letters": windows.DEAD_LETTERS,
            "flapping": windows.flapping_spec(flapping_window_s),
        }
        self.threshold = flapping_threshold
        self.clock = clock
        self._tables: Mapping[Aggregate, Any] = {}
        self._ready: Callable[[], bool] = lambda: False

    def attach(self, tables: Mapping[Aggregate, Any], ready: Callable[[], bool]) -> None:
        self._tables, self._ready = tables, ready

    def detach(self) -> None:
        self._tables, self._ready = {}, lambda: False

    @property
    def ready(self) -> bool:
        return bool(self._tables) and self._ready()

    def now(self) -> float:
        return self.clock()

    def windows(self, spec: WindowSpec) -> list[Window]:
        table = self._tables.get(spec.aggregate)
        if table is None or not self.ready:
            return []
        # The store of a windowed table: ((key, (start, end)), value), every window of every key.
        return windows.read_windows(list(table.table.data.items()), spec, now=self.now())

    def flapping(self) -> list[FlappingAlert]:
        spec = self.specs["flapping"]
        return windows.flapping_alerts(self.windows(spec), threshold=self.threshold, size_s=spec.size_s, now=self.now())


def _credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """The Kafka settings' TLS and SASL, as faust takes them."""
    options = kafka.client_options()
    context = cast(ssl.SSLContext | None, options.get("ssl_context"))
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=cast(str | None, options.get("sasl_plain_username")),
            password=cast(str | None, options.get("sasl_plain_password")),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism or "PLAIN",
        )
    return None


def _headers(headers: Any) -> Sequence[tuple[str, bytes]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


class StreamAggregations:
    """Builds, runs and (after a failure) restarts the faust app; ``view`` reads its tables."""

    def __init__(self, settings: VigilSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.names = TopicNames(settings.topic_prefix)
        self.app_id = f"{settings.topic_prefix}{APP_NAME}"
        self.view = WindowView(
            flapping_window_s=settings.stream_flapping_window_s,
            flapping_threshold=settings.stream_flapping_threshold,
            clock=clock,
        )
        self.app: faust.App | None = None

    def build(self) -> tuple[faust.App, dict[Aggregate, Any]]:
        """A new faust app with its topics, tables and agents (one per start: a stopped app is not started again)."""
        settings, kafka = self.settings, self.settings.kafka
        session_s = settings.session_timeout_ms / 1000
        app = faust.App(
            self.app_id,
            broker=[f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")],
            broker_credentials=_credentials(kafka),
            store="memory://",
            # faust makes a data directory even for tables in memory: not in the working directory.
            datadir=Path(tempfile.gettempdir()) / f"{self.app_id}-data",
            web_enabled=False,
            HttpClient=NoHttpClient,
            autodiscover=False,
            # The embedded broker has no transactional producer; at least once is what the tables need.
            processing_guarantee="at_least_once",
            broker_session_timeout=session_s,
            broker_heartbeat_interval=min(3.0, session_s / 3),
            broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
            consumer_auto_offset_reset="earliest",
            topic_partitions=PARTITIONS,
            topic_replication_factor=kafka.replication_factor,
            topic_disable_leader=True,
            # Stopping commits what was acknowledged and does not wait for the rest: a crashed consumer never
            # drains, and what was not acknowledged is read again at the next start.
            stream_wait_empty=False,
            table_standby_replicas=0,
            # See KafkaSettings.exact_end_offsets: on the embedded broker, one record per batch.
            producer_max_batch_size=16384 if kafka.exact_end_offsets else 1,
        )
        names = self.names
        sources = app.topic(
            names(INCIDENTS), names(ALERTS_DLQ), names(EVENTS_DLQ), key_serializer="raw", value_serializer="raw"
        )
        tallies = app.topic(
            f"{self.app_id}-tallies",
            key_serializer="raw",
            value_serializer="json",
            partitions=PARTITIONS,
            retention=timedelta(days=1),
            internal=True,
        )
        tables: dict[Aggregate, Any] = {
            spec.aggregate: app.Table(spec.aggregate, default=_default(spec), partitions=PARTITIONS)
            .tumbling(spec.size_s, expires=spec.expires_s)
            .relative_to_stream()
            for spec in self.view.specs.values()
        }
        read, specs = self._tallies_of, self.view.specs

        @app.agent(sources, name="tally")
        async def tally(stream: faust.StreamT[bytes]) -> None:
            # A batch of records at a time: a count touched by many of them is sent once. The records are
            # acknowledged after the batch, and its tallies go out before their offsets are committed.
            batches = cast(faust.Stream[bytes], stream).take_events(TAKE_RECORDS, within=TAKE_WITHIN_S)
            async for batch in batches:
                found = [t for event in batch for t in read(event.message)]
                for combined in windows.combine(found, specs):
                    await tallies.send(key=combined.partition_key, value=combined.to_json(), timestamp=combined.at)

        @app.agent(tallies, name="count")
        async def count(stream: faust.StreamT[dict[str, Any]]) -> None:
            async for value in stream:
                add(tables, Tally.from_json(value))

        return app, tables

    def _tallies_of(self, message: Any) -> list[Tally]:
        """The tallies of one record still in their windows; a record that cannot be read counts for nothing."""
        topic = message.topic.removeprefix(self.names.prefix)
        now = self.view.now()
        # Written before every window kept began, it is older still by its own time: a topic read from its
        # beginning (a first start) goes by without decoding what no window keeps.
        if message.timestamp and message.timestamp < windows.horizon(self.view.specs.values(), now=now):
            STREAM_EVENTS.labels(topic, "stale").inc()
            return []
        try:
            if topic == INCIDENTS.name:
                found = windows.event_tallies(cloudevents.decode(message.value, _headers(message.headers)))
            else:
                kind: windows.DeadLetterTopic = "alerts" if topic == ALERTS_DLQ.name else "events"
                found = windows.dead_letter_tallies(kind, _headers(message.headers), received=message.timestamp)
        except UnknownEventType:
            STREAM_EVENTS.labels(topic, "skipped").inc()
            return []
        except InvalidMessage as exc:
            # The reporter's consume loop dead-letters it; here it is only not counted.
            log.info("stream: %s[%d]@%d not counted: %s", message.topic, message.partition, message.offset, exc)
            STREAM_EVENTS.labels(topic, "invalid").inc()
            return []
        fresh = [t for t in found if not windows.expired(t, self.view.specs[t.aggregate], now=now)]
        STREAM_EVENTS.labels(topic, "counted" if fresh else "stale" if found else "nothing").inc()
        return fresh

    async def run(self, _runtime: Runtime | None = None) -> None:
        """Run the app until cancelled; one that stops on an error is started again, its tables recovered."""
        _quiet_faust()
        STREAM_WINDOWS.running = True
        try:
            await self._run()
        finally:
            STREAM_WINDOWS.running = False

    async def _run(self) -> None:
        await self._ensure_topics()
        while True:
            app, tables = self.build()
            self.app = app
            before = asyncio.all_tasks()
            try:
                await app.start()
                recovery = app.tables.recovery  # type: ignore[attr-defined] # faust's TableManager has one
                self.view.attach(tables, ready=recovery.completed.is_set)
                STREAM_WINDOWS.source = self.view
                # mode tells a crash only by a flag; a second's delay to notice is nothing to a restart.
                while not (app.crashed or app.should_stop):  # noqa: ASYNC110
                    await asyncio.sleep(CHECK_S)
                log.error("stream aggregations stopped (%r); starting them again", app.crash_reason)
            except Exception:
                log.exception("stream aggregations failed; starting them again")
            finally:
                self.view.detach()
                if STREAM_WINDOWS.source is self.view:
                    STREAM_WINDOWS.source = None
                await _stop(app)
                await _reap(before)
            STREAM_RESTARTS.inc()
            await asyncio.sleep(RESTART_DELAY_S)

    async def _ensure_topics(self) -> None:
        """The topics read must exist with their partitions before faust subscribes (a broker may create them)."""
        while True:
            try:
                await ensure_topics(self.settings.kafka, self.names)
                return
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("stream aggregations: topics not checked yet: %r", exc)
                await asyncio.sleep(RESTART_DELAY_S)


async def _stop(app: faust.App) -> None:
    """Stop the app, committing what it counted; never hold up the reporter's own stop (a broker gone)."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await app.stop()
    except TimeoutError:
        log.warning("stream aggregations not stopped within %ds; left behind", STOP_TIMEOUT_S)
    except Exception as exc:
        # A crashed app can fail to stop (faust refuses to flush a crashed producer holding records): the
        # restart must still come. What it had not sent is the next app's, from the last committed offsets.
        log.warning("stream aggregations did not stop cleanly: %r", exc)


async def _reap(before: set[asyncio.Task[Any]]) -> None:
    """Cancel what a stopped app left running: after a crash, mode's method-queue workers of its consumer
    thread stay behind on this loop, pending for ever (and reported when collected)."""
    left = [task for task in asyncio.all_tasks() - before if not task.done() and _of_faust(task)]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=STOP_TIMEOUT_S)


def _of_faust(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and any(f"{os.sep}{package}{os.sep}" in code.co_filename for package in ("mode", "faust"))


def _default(spec: WindowSpec) -> Callable[[], Any]:
    return dict if spec.aggregate == "flapping" else int


def add(tables: Mapping[Aggregate, Any], tally: Tally) -> None:
    """Add one tally to its table's window (the one of the tally's timestamp: the stream's event)."""
    table = tables[tally.aggregate]
    key = tally.table_key
    if tally.aggregate == "flapping":
        before = windows.Flapping.from_json(table[key].current())
        after = windows.flap(before, tally.changes)
        if windows.worth_writing(before, after):
            table[key] = after.to_json()
    else:
        table[key] += tally.count


def _quiet_faust() -> None:
    # faust and mode log every child service's start and stop at INFO: a page per start.
    for name in ("faust", "mode"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
