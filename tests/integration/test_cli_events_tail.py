"""`vigil events tail` shows what happens from when it starts, not what the topics held before."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys

from shared import cloudevents
from shared.events import IncidentDetected
from shared.kafka import make_producer
from shared.settings import VigilSettings
from shared.topics import INCIDENTS, TopicNames
from tests.factories import snapshot


async def test_the_tail_starts_at_the_end_even_inside_the_last_batch(
    settings: VigilSettings, names: TopicNames
) -> None:
    producer = make_producer(settings, client_id="test-tail", linger_ms=50)
    await producer.start()

    async def send(*subjects: str) -> None:
        sent = []
        for subject in subjects:  # sent together: one batch, whose first offset the embedded broker ends at
            record = cloudevents.encode(IncidentDetected(source="/vigil/detector", subject=subject, data=snapshot()))
            sent.append(
                await producer.send(
                    names(INCIDENTS), key=record.key, value=record.value, headers=record.headers, partition=0
                )
            )
        await asyncio.gather(*sent)

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers}
    env |= {"VIGIL_TOPIC_PREFIX": settings.topic_prefix, "VIGIL_LOG_LEVEL": "WARNING"}
    tail = None
    try:
        await send(*(f"before-{n}" for n in range(5)))
        await asyncio.sleep(1)
        tail = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vigil.cli", "events", "tail", "--json", env=env, stdout=asyncio.subprocess.PIPE
        )
        assert tail.stdout is not None

        async def first_line() -> bytes:
            while True:
                line = await tail.stdout.readline()  # type: ignore[union-attr]
                if line.strip():
                    return line

        reading = asyncio.create_task(first_line())
        for n in range(60):  # until the tail, assigned and at the end, shows one
            await send(f"after-{n}")
            done, _ = await asyncio.wait({reading}, timeout=0.5)
            if done:
                break
        first = json.loads(await asyncio.wait_for(reading, 10))
        assert first["subject"].startswith("after-"), f"the tail showed {first['subject']}, sent before it started"
    finally:
        await producer.stop()
        if tail is not None and tail.returncode is None:
            tail.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tail.wait(), 10)
