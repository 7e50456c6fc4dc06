"""A service with two consume loops in one process: each is a member of the service's group with its own
partitions, both handle batches, every record is handled once, the service is ready only with both, and
SIGTERM drains both before it exits."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared import cloudevents
from shared.events import IncidentDetected
from shared.kafka import make_producer
from shared.settings import VigilSettings
from shared.topics import INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import eventually, service_env, start_module

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SERVICE = "looptest"
RECORDS = 300


def _service_process() -> None:
    """A service whose handler notes each event it handles, and which loop handled it."""
    from shared.consumer import HandlerContext, Inbound, decode_cloudevent
    from shared.service import ServiceSpec, run_service

    async def note(ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        task = asyncio.current_task()
        await ctx.conn.executemany(
            "INSERT INTO loop_seen (event_id, loop) VALUES ($1, $2)",
            [(inbound.event_id, task.get_name() if task else "?") for inbound in batch],
        )
        await asyncio.sleep(0.05)  # a handler that waits: the other loop's batches go on meanwhile

    spec = ServiceSpec(name=SERVICE, consumes=(INCIDENTS,), decoder=decode_cloudevent, handler=note, consumer_loops=2)
    asyncio.run(run_service(spec))


async def test_two_loops_share_the_partitions_and_handle_every_record_once(
    settings: VigilSettings, names: TopicNames, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from shared.embedded import free_port

    await pool.execute("CREATE TABLE loop_seen (event_id text NOT NULL, loop text NOT NULL)")
    port = free_port()
    env = service_env(
        settings,
        port=port,
        VIGIL_CONSUMER_BATCH_SIZE="10",
        VIGIL_SESSION_TIMEOUT_MS="6000",
        VIGIL_REBALANCE_TIMEOUT_MS="3000",
    )
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log_file:
        service = await start_module("tests.integration.test_consumer_loops", env=env, log=log_file)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

                async def ready() -> bool:
                    assert service.returncode is None, log_path.read_text()
                    try:
                        return (await client.get("/readyz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await eventually(ready, timeout=60)
                producer = make_producer(settings, client_id="loop-test")
                await producer.start()
                try:
                    sent = []
                    for n in range(RECORDS):
                        event = IncidentDetected(source="/vigil/detector", subject=f"inc-{n}", data=snapshot())
                        record = cloudevents.encode(event)
                        sent.append(event.id)
                        # Keyed by incident: spread over every partition of the topic.
                        await producer.send(
                            names(INCIDENTS), key=record.key, value=record.value, headers=record.headers
                        )
                    await producer.flush()
                finally:
                    await producer.stop()
                await eventually(
                    lambda: pool.fetchval("SELECT count(DISTINCT event_id) >= $1 FROM loop_seen", RECORDS), timeout=60
                )
            service.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(service.wait(), 30)
        finally:
            if service.returncode is None:
                service.send_signal(signal.SIGKILL)
                await service.wait()
    assert code == 0, log_path.read_text()
    rows = await pool.fetch("SELECT event_id, loop FROM loop_seen")
    assert sorted(r["event_id"] for r in rows) == sorted(sent)  # each once: no record handled twice
    assert {r["loop"] for r in rows} == {"consume-0", "consume-1"}, log_path.read_text()


if __name__ == "__main__":
    _service_process()
