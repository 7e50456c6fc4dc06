"""`vigil up`: the whole stack on one machine, embedded broker and Postgres unless configured."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from shared import identity
from shared.db import create_pool, migrate
from shared.embedded import port_is_free, servers
from shared.kafka import make_producer
from shared.logs import configure_logging
from shared.settings import DEFAULT_HTTP_PORTS, SERVICE_NAMES, VigilSettings
from shared.topics import TopicNames, ensure_topics
from vigil.demo import run_demo
from vigil.stack_file import forget_stack, save_stack
from vigil.stopping import stop_requests
from vigil.supervisor import Supervisor, child_env, readyz_url, wait_ready

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_BROKER_PORT = 9092


TOKEN_FILE = "api.token"


def _read_token(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _save_token(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)  # only the local user reads it
    path.write_text(text + "\n")


async def ensure_local_token(conn: Any, path: Path) -> str | None:
    """Give the local user an admin token, saved where the CLI finds it; None if a valid one is there."""
    saved = await asyncio.to_thread(_read_token, path)
    if saved is not None and await identity.resolve(conn, saved) is not None:
        return None
    user = getpass.getuser()
    token = await identity.create_token(conn, name=user, role="admin", created_by="vigil up")
    await asyncio.to_thread(_save_token, path, token.text)
    return user


class PortsInUse(Exception):
    """A port a service of the stack listens on is taken: another stack runs, or another program."""


class Stopped(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM) while the stack was starting."""


async def _stop_asked() -> None:
    """Return once a stop is asked for (at once if one was)."""
    loop = asyncio.get_running_loop()
    asked: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not asked.done():
            asked.set_result(None)

    def wake() -> None:  # from the signal handler: only schedules
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle)

    undo = stop_requests.on_request(wake)
    try:
        if not stop_requests.requested:
            await asked
    finally:
        undo()


async def _until_stopped(step: Coroutine[Any, Any, T]) -> T:
    """Run one step of the start-up; a stop asked for first cancels it (it cleans up after itself) and
    raises Stopped."""
    if stop_requests.requested:
        step.close()
        raise Stopped
    work = asyncio.ensure_future(step)
    asked = asyncio.ensure_future(_stop_asked())
    abandoned = False
    try:
        await asyncio.wait({work, asked}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        asked.cancel()
        if not work.done():
            abandoned = True
            work.cancel()
            try:
                await work
            # What it raised on its way out changes nothing: everything is being stopped.
            except (Exception, asyncio.CancelledError) as exc:
                log.debug("%s, abandoned on a stop, ended with %r", work.get_coro(), exc)
    if abandoned:
        raise Stopped
    return work.result()


async def run_stack(settings: VigilSettings, *, demo: bool, demo_interval: float, console: Console) -> None:
    """Run the stack until a stop is asked for (`stop_requests`), then stop everything it started.

    A stop asked for during start-up abandons the step under way and stops what had started.
    """
    configure_logging(settings.log_level, "text", service="vigil")
    # Services that cannot listen restart for ever, and another stack's answering its readiness check
    # would make this one say it is up.
    if busy := [f"{name} :{port}" for name, port in DEFAULT_HTTP_PORTS.items() if not port_is_free(port)]:
        raise PortsInUse(f"the ports of {', '.join(busy)} are in use: another `vigil up`, or another program")
    stop_requests.install()
    with contextlib.suppress(Stopped):
        await _run(settings, demo=demo, demo_interval=demo_interval, console=console)


async def _prepare_database(settings: VigilSettings, console: Console) -> None:
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            if created := await ensure_local_token(conn, settings.data_dir / TOKEN_FILE):
                console.print(
                    f"an admin token for [b]{created}[/b] is in {settings.data_dir / TOKEN_FILE}; the CLI uses it"
                )
    finally:
        await pool.close()


async def _run(settings: VigilSettings, *, demo: bool, demo_interval: float, console: Console) -> None:
    port = DEFAULT_BROKER_PORT if port_is_free(DEFAULT_BROKER_PORT) else None
    # Starting the embedded servers blocks; a stop asked for meanwhile is acted on once they are up, and
    # stops them.
    with servers(settings.data_dir, broker_port=port) as found:
        if stop_requests.requested:
            raise Stopped
        settings.kafka.bootstrap_servers = found.bootstrap_servers
        settings.database_url = found.database_url
        if found.broker_embedded:
            console.print(f"embedded broker (memory only) on [b]{found.bootstrap_servers}[/b]")
        if found.postgres_embedded:
            console.print(f"embedded Postgres, data in [b]{(settings.data_dir / 'pgdata').resolve()}[/b]")

        await _until_stopped(_prepare_database(settings, console))
        names = TopicNames(settings.topic_prefix)
        await _until_stopped(ensure_topics(settings.kafka, names))

        env = child_env(settings.kafka.bootstrap_servers, settings.database_url)
        env.setdefault("VIGIL_LOG_FORMAT", "text")
        if demo:
            # The demo's attackers use documentation addresses and example names: the analyzer keeps them.
            env.setdefault("VIGIL_ANALYZER_DOCUMENTATION_NOISE", "false")
        supervisor = Supervisor(env)
        demo_task: asyncio.Task[None] | None = None
        producer = make_producer(settings, client_id="vigil-demo")
        save_stack(
            settings.data_dir,
            database_url=settings.database_url,
            bootstrap_servers=settings.kafka.bootstrap_servers,
        )
        try:
            await supervisor.start()
            try:
                await _until_stopped(
                    wait_ready({"reporter": readyz_url(DEFAULT_HTTP_PORTS["reporter"])}, interval_s=0.5)
                )
                ready = True
            except TimeoutError:
                ready = False
            console.print(_summary(settings, ready))
            if demo:
                await _until_stopped(producer.start())
                demo_task = asyncio.create_task(run_demo(producer, names, interval_s=demo_interval))
                console.print("demo: publishing sample alerts; try [b]vigil incidents list[/b] in another shell")
            await _stop_asked()
        finally:
            console.print("stopping…")
            if demo_task:
                demo_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await demo_task
            await producer.stop()
            await supervisor.stop()
            forget_stack(settings.data_dir)


def _summary(settings: VigilSettings, ready: bool) -> Table:
    table = Table(title="Vigil is up" if ready else "Vigil started (services still getting ready)")
    table.add_column("service")
    table.add_column("HTTP")
    for name in SERVICE_NAMES:
        port = DEFAULT_HTTP_PORTS[name]
        extra = {"reporter": " (API /api/v1/incidents)", "coordinator": " (API ack/resolve)"}.get(name, "")
        table.add_row(name, f"http://127.0.0.1:{port}/metrics{extra}")
    table.caption = f"Kafka {settings.kafka.bootstrap_servers} · Ctrl-C stops everything"
    return table
