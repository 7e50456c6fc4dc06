"""Runs the five services as child processes and restarts any that dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.settings import SERVICE_NAMES

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Keeps one process per service alive; a crash is followed by a restart with back-off."""

    def __init__(self, env: Mapping[str, str], services: tuple[str, ...] = SERVICE_NAMES) -> None:
        self.env = dict(env)
        self.children = [Child(name) for name in services]
        self._stopping = False

    async def start(self) -> None:
        for child in self.children:
            child.task = asyncio.create_task(self._keep_alive(child), name=f"supervise-{child.name}")

    async def _keep_alive(self, child: Child) -> None:
        backoff = 1.0
        while not self._stopping:
            child.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{child.name}", env=self.env
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
