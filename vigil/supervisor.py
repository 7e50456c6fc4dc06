"""Runs the five services as child processes, restarts any that dies, and waits for them to be ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.settings import SERVICE_NAMES

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Keeps one process per service alive; a crash is followed by a restart with back-off.

    ``env_for`` adds variables for one service (its own port, say); with ``log_dir`` each service's
    output is appended to ``<log_dir>/<service>.log`` instead of the supervisor's own.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        services: tuple[str, ...] = SERVICE_NAMES,
        *,
        env_for: Mapping[str, Mapping[str, str]] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.env = dict(env)
        self.env_for = {name: dict(extra) for name, extra in (env_for or {}).items()}
        self.log_dir = log_dir
        self.children = [Child(name) for name in services]
        self._stopping = False

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def exited(self) -> list[str]:
        """The services whose process has exited since start(), restarted since or not."""
        return [
            child.name
            for child in self.children
            if child.restarts or (child.process is not None and child.process.returncode is not None)
        ]

    async def start(self) -> None:
        for child in self.children:
            child.task = asyncio.create_task(self._keep_alive(child), name=f"supervise-{child.name}")

    async def _keep_alive(self, child: Child) -> None:
        backoff = 1.0
        while not self._stopping:
            env = self.env | self.env_for.get(child.name, {})
            # A session of its own: a Ctrl-C at the terminal reaches the supervisor alone, which stops the
            # services (SIGTERM: they drain and commit). Reaching them too, it killed those still importing,
            # each with a KeyboardInterrupt traceback, and the supervisor, not stopping yet, restarted them.
            command = (sys.executable, "-m", f"services.{child.name}")
            if self.log_dir is None:
                child.process = await asyncio.create_subprocess_exec(*command, env=env, start_new_session=True)
            else:
                output = await asyncio.to_thread(open, self.log_dir / f"{child.name}.log", "ab")
                with output:  # the child has its own copy of the descriptor
                    child.process = await asyncio.create_subprocess_exec(
                        *command, env=env, stdout=output, stderr=output, start_new_session=True
                    )
            if self._stopping:  # stop() began while this one was being spawned
                child.process.send_signal(signal.SIGTERM)
                await child.process.wait()
                return
            started = asyncio.get_running_loop().time()
            code = await child.process.wait()
            if self._stopping:
                return
            child.restarts += 1
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 1.0
            log.warning("%s exited with %s; restarting in %.0fs", child.name, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every child (they drain and commit), then SIGKILL whatever is left."""
        self._stopping = True
        running = [c.process for c in self.children if c.process and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), timeout_s)
        except TimeoutError:
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for child in self.children:
            if child.task:
                child.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.task


def child_env(bootstrap_servers: str, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers
    env["DATABASE_URL"] = database_url
    return env


def readyz_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/readyz"


async def wait_ready(
    urls: Mapping[str, str],
    *,
    timeout_s: float = 120.0,
    interval_s: float = 0.2,
    check: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Poll each service's /readyz until it answers 200; return how many seconds each took.

    ``check`` runs before every round and may raise (a service died, say). Raises TimeoutError naming
    the services still not ready after ``timeout_s``.
    """
    started = time.monotonic()
    took: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if check is not None:
                check()
            for name, url in urls.items():
                if name in took:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        took[name] = time.monotonic() - started
            if len(took) == len(urls):
                return took
            if time.monotonic() - started > timeout_s:
                waiting = sorted(set(urls) - set(took))
                raise TimeoutError(f"not ready within {timeout_s:.0f}s: {', '.join(waiting)}")
            await asyncio.sleep(interval_s)
