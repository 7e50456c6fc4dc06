"""Benchmark of the reporter's stream aggregations: incident events per second the faust agents count, the CPU
each event costs, and how long a restart takes to read the tables back from their changelogs.

``python -m bench.stream [--events 5000] [--alerts 10] [--repeats 10] [--out FILE]``

The broker is embedded unless ``KAFKA_BOOTSTRAP_SERVERS`` is set (then it and the other ``KAFKA_*`` settings
are used); topics get a fresh prefix. A backlog of incident events, as the detector publishes them, is
produced first: per incident one ``vigil.incident.detected.v1`` then ``updated`` events, each with
``--alerts`` new alerts over three sources, and ``alerts_changed`` events with ``--repeats`` repeats and a
resolution; one event in ten is a dead letter. The stream aggregations are then started, as the reporter
starts them, in this process, and timed from their first tally to the last (start-up excluded).

Each run is made twice: with one record per batch (what Vigil does on the embedded broker, whose end offsets
would otherwise stop the recovery short: ``KAFKA_EXACT_END_OFFSETS``) and with batches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.reporter.metrics import STREAM_EVENTS
from services.reporter.stream import StreamAggregations
from shared import cloudevents
from shared.embedded import EmbeddedBroker
from shared.events import (
    AlertRepeat,
    AlertResolution,
    AlertsChange,
    AlertSummary,
    EventBase,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentSnapshot,
    IncidentType,
    IncidentUpdated,
    Severity,
)
from shared.kafka import make_producer
from shared.settings import KafkaSettings, VigilSettings
from shared.topics import ALERTS_DLQ, INCIDENTS, TopicNames, ensure_topics

SOURCES = ("falco", "suricata", "wazuh")


@contextlib.contextmanager
def broker() -> Iterator[KafkaSettings]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield KafkaSettings()
        return
    with EmbeddedBroker() as embedded:
        yield KafkaSettings(bootstrap_servers=embedded.bootstrap_servers)


def _snapshot(n: int, alerts: list[AlertSummary], at: datetime) -> IncidentSnapshot:
    return IncidentSnapshot(
        title=f"incident {n}",
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV2,
        classification_reason="bench",
        severity_reason="bench",
        correlation_key=f"host:h{n}",
        alert_count=len(alerts),
        first_seen=at,
        last_seen=at,
        new_alerts=alerts,
    )


def backlog(events: int, alerts: int, repeats: int, seed: int) -> tuple[list[EventBase], int]:
    """Incident events as the detector publishes them, and how many dead letters to add."""
    rng = random.Random(seed)
    at = datetime.now(UTC)
    produced: list[EventBase] = []
    n = 0
    while len(produced) < events:
        n += 1
        incident = f"inc-{n}"
        keys: list[str] = []
        for part in range(3):
            batch = [f"{rng.choice(SOURCES)}:{incident}-{part}-{i}" for i in range(alerts)]
            keys += batch
            summaries = [
                AlertSummary(key=k, source=k.partition(":")[0], title="t", severity="high", time=at) for k in batch
            ]
            kind = IncidentDetected if part == 0 else IncidentUpdated
            produced.append(kind(source="/vigil/detector", subject=incident, time=at, data=_snapshot(n, summaries, at)))
        change = AlertsChange(
            repeated=[AlertRepeat(key=k, repeats=1, last_seen=at) for k in rng.sample(keys, min(repeats, len(keys)))],
            resolved=[AlertResolution(key=rng.choice(keys), resolved_at=at)],
            firing=len(keys) - 1,
            alert_count=len(keys),
        )
        produced.append(IncidentAlertsChanged(source="/vigil/detector", subject=incident, time=at, data=change))
    return produced[:events], events // 10


async def produce(settings: VigilSettings, names: TopicNames, events: list[EventBase], dead: int) -> None:
    producer = make_producer(settings, client_id="bench-stream")
    await producer.start()
    try:
        sent = []
        for event in events:
            record = cloudevents.encode(event)
            sent.append(
                await producer.send(names(INCIDENTS), key=record.key, value=record.value, headers=record.headers)
            )
        for _ in range(dead):
            headers = [("vigil_dlq_code", b"not_json"), ("vigil_format", b"falco")]
            sent.append(await producer.send(names(ALERTS_DLQ), value=b"{not json", headers=headers))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def read_so_far() -> float:
    return sum(
        sample.value
        for family in STREAM_EVENTS.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@contextlib.asynccontextmanager
async def running(settings: VigilSettings) -> AsyncIterator[StreamAggregations]:
    stream = StreamAggregations(settings)
    task = asyncio.create_task(stream.run())
    try:
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def alerts_counted(stream: StreamAggregations) -> int:
    return sum(int(w.value) for w in stream.view.windows(stream.view.specs["alerts"]))


def flapping_kept(stream: StreamAggregations) -> int:
    return len(stream.view.windows(stream.view.specs["flapping"]))


async def wait_for(check: Any, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the stream aggregations did not finish in time")
        await asyncio.sleep(0.05)


async def run_once(kafka: KafkaSettings, args: argparse.Namespace, *, exact: bool) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    settings = VigilSettings(
        topic_prefix=prefix,
        session_timeout_ms=6000,
        rebalance_timeout_ms=1000,
        kafka=kafka.model_copy(update={"exact_end_offsets": exact}),
    )
    names = TopicNames(prefix)
    await ensure_topics(settings.kafka, names)
    events, dead = backlog(args.events, args.alerts, args.repeats, args.seed)
    expected_alerts = _alert_total(events) + dead
    # Every resolution of an alert not resolved before is a state change the flapping table keeps.
    resolved_keys = {r.key for e in events if isinstance(e, IncidentAlertsChanged) for r in e.data.resolved}
    await produce(settings, names, events, dead)
    records = len(events) + dead
    figures: dict[str, Any] = {"one_record_per_batch": not exact, "events": len(events), "dead_letters": dead}

    async with running(settings) as stream:
        await wait_for(lambda: stream.view.ready, timeout=120)
        baseline = read_so_far()
        await wait_for(lambda: read_so_far() > baseline, timeout=60)
        started, cpu = time.monotonic(), time.process_time()
        await wait_for(
            lambda: alerts_counted(stream) >= expected_alerts and flapping_kept(stream) >= len(resolved_keys),
            timeout=args.timeout,
        )
        seconds, cpu_s = time.monotonic() - started, time.process_time() - cpu
        figures |= {
            "seconds": round(seconds, 2),
            "records_per_s": round(records / seconds),
            "alerts_per_s": round(expected_alerts / seconds),
            "cpu_us_per_record": round(cpu_s / records * 1e6),
            "cpu_us_per_alert": round(cpu_s / expected_alerts * 1e6),
        }
        table_entries = {name: len(stream.view.windows(spec)) for name, spec in stream.view.specs.items()}
    figures["table_windows"] = table_entries
    # A restart reads every table back from its changelog.
    started = time.monotonic()
    async with running(settings) as stream:
        await wait_for(lambda: stream.view.ready and alerts_counted(stream) > 0, timeout=180)
        figures["restart_to_ready_s"] = round(time.monotonic() - started, 2)
        figures["recovered_exactly"] = alerts_counted(stream) == expected_alerts and flapping_kept(stream) == len(
            resolved_keys
        )
    return figures


def _alert_total(events: list[EventBase]) -> int:
    """The alerts the events count (new, repeated, resolved), as the stream's alerts table sums them."""
    total = 0
    for event in events:
        if isinstance(event, IncidentDetected | IncidentUpdated):
            total += len(event.data.new_alerts)
        elif isinstance(event, IncidentAlertsChanged):
            total += len(event.data.repeated) + len(event.data.resolved)
    return total


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    with broker() as kafka:
        return await bench_on(kafka, args)


async def bench_on(kafka: KafkaSettings, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both runs on the given broker: one record per batch, then batches."""
    return [await run_once(kafka, args, exact=exact) for exact in (False, True)]


def add_report(table: Any, runs: list[dict[str, Any]]) -> None:
    """The stream aggregations' rows of the harness's table."""
    for run in runs:
        table.add_section()
        how = "one record per batch (embedded broker)" if run["one_record_per_batch"] else "batches (Apache Kafka)"
        table.add_row(f"[bold]Reporter stream windows (faust), {how}[/bold]", "")
        table.add_row("incident events counted", f"{run['records_per_s']:,}/s")
        table.add_row("alerts they carry, counted", f"{run['alerts_per_s']:,}/s")
        table.add_row("CPU per event", f"{run['cpu_us_per_record']:,} us")
        table.add_row("restart: tables read back from the changelogs", f"{run['restart_to_ready_s']} s")
        table.add_row("recovered exactly", "yes" if run["recovered_exactly"] else "NO")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="incident events in the backlog")
    parser.add_argument("--alerts", type=int, default=10, help="new alerts in each detected or updated event")
    parser.add_argument("--repeats", type=int, default=10, help="repeated alerts in each alerts_changed event")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = asyncio.run(bench(args))
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
