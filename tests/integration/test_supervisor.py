"""`vigil up`'s supervisor keeps every service alive, says which exited, waits for readiness, stops them cleanly."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from shared.embedded import free_port
from shared.settings import VigilSettings
from tests.helpers import eventually
from vigil.supervisor import Supervisor, child_env, readyz_url, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


async def test_a_service_that_dies_is_restarted(settings: VigilSettings) -> None:
    port = free_port()
    env = child_env(settings.kafka.bootstrap_servers, settings.database_url)
    env |= {
        "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
        "VIGIL_HTTP_PORT": str(port),
        "VIGIL_REBALANCE_TIMEOUT_MS": "1000",
        "VIGIL_SESSION_TIMEOUT_MS": "6000",
    }
    supervisor = Supervisor(env, services=("responder",))
    child = supervisor.children[0]

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

    await supervisor.start()
    try:
        took = await wait_ready({"responder": readyz_url(port)}, timeout_s=60, check=lambda: None)
        assert set(took) == {"responder"} and took["responder"] > 0
        assert supervisor.exited() == []
        assert child.process is not None
        first = child.process
        os.kill(first.pid, signal.SIGKILL)
        await eventually(lambda: _restarted(child, first.pid), timeout=30)
        assert supervisor.exited() == ["responder"]  # restarted, but it did exit
        await eventually(ready, timeout=60)
    finally:
        await supervisor.stop()
    assert child.restarts == 1
    assert child.process is not None and child.process.returncode == 0  # drained on SIGTERM


async def _restarted(child: object, old_pid: int) -> bool:
    process = getattr(child, "process", None)
    return process is not None and process.pid != old_pid


async def test_waiting_for_readiness_names_who_is_not_ready_and_stops_when_told() -> None:
    silent = readyz_url(free_port())  # nobody listens there
    with pytest.raises(TimeoutError, match="not ready within 0s: detector"):
        await wait_ready({"detector": silent}, timeout_s=0.3, interval_s=0.1)

    def died() -> None:
        raise RuntimeError("the detector exited")

    with pytest.raises(RuntimeError, match="exited"):
        await wait_ready({"detector": silent}, timeout_s=30, check=died)
