"""A service whose consume loop stops on an error it cannot retry stays up for a scrape before it exits.

A handler failing on a record dead-letters that record; one failing on every record stops the loop at the
dead-letter limit, which is the error here.

The error counter (``vigil_events_handled_total{outcome="error"}``, which VigilHandlerErrors alerts on)
lives in the process: exiting at once, the service would take it along before Prometheus saw it.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import cloudevents
from shared.events import IncidentDetected
from shared.settings import VigilSettings
from shared.topics import INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import produce, service_env, start_module

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SERVICE = "crashtest"
HOLD_S = 4
WINDOW = 10  # the dead-letter window: its last record, dead too, stops the loop
ERRORS = re.compile(r'vigil_events_handled_total\{outcome="error",service="crashtest"\} (\S+)')


def _service_process() -> None:
    """A service whose handler fails on whatever it reads, as a bug would."""
    from shared.consumer import HandlerContext, Inbound, decode_cloudevent
    from shared.service import ServiceSpec, run_service

    async def broken(_ctx: HandlerContext, _batch: Sequence[Inbound[Any]]) -> None:
        raise RuntimeError("a bug in the handler")

    spec = ServiceSpec(name=SERVICE, consumes=(INCIDENTS,), decoder=decode_cloudevent, handler=broken)
    asyncio.run(run_service(spec))


async def _errors_counted(client: httpx.AsyncClient) -> float | None:
    try:
        found = ERRORS.search((await client.get("/metrics")).text)
    except httpx.HTTPError:
        return None
    return float(found.group(1)) if found else None


async def test_a_service_stopped_by_an_error_it_cannot_retry_serves_the_count_then_exits(
    settings: VigilSettings, names: TopicNames, tmp_path: Path
) -> None:
    from shared.embedded import free_port

    port = free_port()
    env = service_env(settings, port=port, VIGIL_CRASH_HOLD_S=str(HOLD_S), VIGIL_DEAD_LETTER_WINDOW=str(WINDOW))
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log_file:
        service = await start_module("tests.integration.test_crash_hold", env=env, log=log_file)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                # Counted from 0 before anything failed: an increase is seen from the first error.
                deadline = time.monotonic() + 60
                while await _errors_counted(client) != 0.0:
                    assert time.monotonic() < deadline and service.returncode is None, log_path.read_text()
                    await asyncio.sleep(0.2)
                records = [
                    cloudevents.encode(IncidentDetected(source="/vigil/detector", subject=f"inc-{n}", data=snapshot()))
                    for n in range(WINDOW)
                ]
                await produce(settings, names(INCIDENTS), [(r.key, r.value, r.headers) for r in records])
                # Served after the loop stopped: a scrape in those seconds counts it.
                while not await _errors_counted(client):
                    assert time.monotonic() < deadline and service.returncode is None, log_path.read_text()
                    await asyncio.sleep(0.2)
                assert (await client.get("/readyz")).status_code == 503  # not ready while it holds
            code = await asyncio.wait_for(service.wait(), HOLD_S + 30)
        finally:
            if service.returncode is None:
                service.send_signal(signal.SIGKILL)
                await service.wait()
    assert code != 0, log_path.read_text()  # the supervisor restarts it
    assert "a bug in the handler" in log_path.read_text()
    assert "DeadLetterLimitExceeded" in log_path.read_text()


if __name__ == "__main__":
    _service_process()
