"""End to end: the five services under the supervisor, alerts published at fixed rates.

One stack starts on a fresh stage; once every service answers /readyz its memory is read (idle).
Then, for each rate of ``--rates`` (200, 1,000 and 5,000 alerts/s by default), alerts about a new
estate of ``--e2e-hosts`` hosts (new incidents, not the last phase's) are published for
``--duration`` seconds, and the benchmark waits until the pipeline has drained: every alert in an
incident event, every service's consumer group caught up with its topics, every outbox sent.

A consumer without a group reads the incidents, analyses, responses and coordination topics from
their end, and gives for each alert the time from its send to the publication of the first
incident event carrying it (carried: an alert joining an open incident may wait for its update
interval), for each alert that opened an incident the time to that incident's first event
(detected), and for each incident opened, the time from its first alert's send to the
publication of its first analysis, response plan and escalation to the commander. An event is
published when its service's producer stamps it (the record's timestamp, the same clock as the
sends): how long the benchmark's own consumer takes to fetch it is no part of the figure. Each
service's consumer lag and memory are sampled every second meanwhile.

A rate is sustained with bounded lag when the pipeline drained within ``--lag-bound`` seconds of
the last alert sent; the end-to-end throughput is the highest publish rate so sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import formats, measure
from bench.detector import modes
from bench.harness import (
    PUBLISHER_LINGER_MS,
    BenchError,
    Infrastructure,
    Services,
    Stage,
    check_generator,
    console,
    fresh_stage,
)
from shared.kafka import LagReader, make_consumer, make_producer
from shared.settings import SERVICE_NAMES
from shared.topics import ALERTS_RAW, ANALYSES, COORDINATION, INCIDENTS, RESPONSES
from vigil.demo import EstateAlerts

DETECTED, UPDATED = "vigil.incident.detected.v1", "vigil.incident.updated.v1"
# The milestones of an incident after its detection, each as the event that marks it.
MILESTONES = {
    "analysed": "vigil.incident.analyzed.v1",
    "planned": "vigil.response.planned.v1",
    "notified": "vigil.incident.escalated.v1",  # the commander on call paged, with everything gathered
}
TIMELINE_TYPES = (DETECTED, *MILESTONES.values())


@dataclass
class Phase:
    """What one rate's run sent and what the collector saw of it (times from time.time())."""

    sent: dict[str, float] = field(default_factory=dict)  # alert key -> send time
    seen: dict[str, float] = field(default_factory=dict)  # alert key -> first incident event carrying it, published
    opening: set[str] = field(default_factory=set)  # alert keys first carried by their incident's detected event
    opened: dict[str, float] = field(default_factory=dict)  # incident id -> its first alert's send time
    detected: dict[str, float] = field(default_factory=dict)  # incident id -> its detected event published
    milestones: dict[str, dict[str, float]] = field(default_factory=lambda: {name: {} for name in MILESTONES})
    events: collections.Counter[str] = field(default_factory=collections.Counter)  # event type -> how many seen
    first_key: str | None = None
    first_incident: asyncio.Future[str] | None = None

    def latencies(self) -> dict[str, dict[str, float | int] | None]:
        # Detected: the alerts that opened an incident, to its first event. Carried: every alert, to the first
        # incident event carrying it; an alert joining an open incident may wait for its update interval.
        found = {
            "detected": measure.latency_ms([self.seen[k] - self.sent[k] for k in self.opening]),
            "carried": measure.latency_ms([self.seen[k] - self.sent[k] for k in self.seen]),
        }
        for name, reached in self.milestones.items():
            found[name] = measure.latency_ms([at - self.opened[i] for i, at in reached.items()])
        return found


class Collector:
    """Reads the pipeline's topics from their end and notes, for the phase in hand, when each thing arrived."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.phase = Phase()
        self.by_type = {event_type: name for name, event_type in MILESTONES.items()}

    async def run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batches.values():
                for record in records:
                    self.note(record, record.timestamp / 1000)

    def note(self, record: Any, published: float) -> None:
        event_type = next((value.decode() for name, value in record.headers or () if name == "ce_type"), None)
        incident = record.key.decode() if record.key else ""
        phase = self.phase
        phase.events[event_type or "?"] += 1
        if event_type in (DETECTED, UPDATED):
            # The body is the incident snapshot: its new alerts, by the key the detector stored them under.
            keys = [alert["key"] for alert in orjson.loads(record.value).get("new_alerts", ())]
            ours = [key for key in keys if key in phase.sent]
            for key in ours:
                if key not in phase.seen and event_type == DETECTED:
                    phase.opening.add(key)
                phase.seen[key] = min(phase.seen.get(key, published), published)
                if key == phase.first_key and phase.first_incident and not phase.first_incident.done():
                    phase.first_incident.set_result(incident)
            if event_type == DETECTED and ours and incident not in phase.opened:
                phase.opened[incident] = min(phase.sent[key] for key in ours)
                phase.detected[incident] = published
        elif (name := self.by_type.get(event_type or "")) and incident in phase.opened:
            reached = phase.milestones[name]
            reached[incident] = min(reached.get(incident, published), published)


async def collecting(stage: Stage) -> tuple[AIOKafkaConsumer, Collector]:
    """A consumer assigned every partition of the topics the milestones travel on, from their end."""
    consumer = make_consumer(stage.settings, group_id=None)
    await consumer.start()
    partitions = [
        TopicPartition(stage.names(topic), p)
        for topic in (INCIDENTS, ANALYSES, RESPONSES, COORDINATION)
        for p in range(topic.partitions)
    ]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:
        await consumer.position(tp)  # resolve "end" now, before the first alert is sent
    return consumer, Collector(consumer)


async def publish_at_rate(
    producer: AIOKafkaProducer,
    topic: str,
    factory: EstateAlerts,
    *,
    rate: float,
    duration_s: float,
    phase: Phase,
    mode: str,
) -> tuple[float, float]:
    """Publish rate*duration alerts paced by the clock; return (first send, last send) wall times."""
    total = max(1, int(rate * duration_s))
    started = time.monotonic()
    futures = []
    first_send = last_send = 0.0
    index = 0
    while index < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while index < due:
            kafka_key, body = factory.make()
            now = datetime.now(UTC)
            key, value = formats.encode(body, now, mode)
            phase.sent[key] = last_send = now.timestamp()
            if index == 0:
                first_send = last_send
                phase.first_key = key
            futures.append(await producer.send(topic, key=kafka_key, value=value))
            index += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*futures)
    return first_send, last_send


@dataclass
class Samples:
    """The largest consumer lag and memory of each service seen while sampling."""

    lag: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)

    def add(self, lag: dict[str, int], rss_mb: dict[str, float | None]) -> None:
        for name, behind in lag.items():
            self.lag[name] = max(self.lag.get(name, 0), behind)
        for name, size in rss_mb.items():
            if size is not None:
                self.rss_mb[name] = max(self.rss_mb.get(name, 0.0), size)


async def sample_forever(lag: LagReader, services: Services, samples: Samples, every_s: float = 1.0) -> None:
    while True:
        samples.add(await lag.read(), services.rss_mb())
        await asyncio.sleep(every_s)


async def unsent(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL"))


async def wait_drained(
    conn: asyncpg.Connection, lag_of: LagReader, services: Services, phase: Phase, *, timeout_s: float
) -> float | None:
    """Wait until every alert is in an incident event, every group caught up and every outbox sent.

    Return the wall time it happened, or None if not within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    with console.status("draining") as status:
        while time.monotonic() < deadline:
            services.check_alive()
            at = time.time()
            if len(phase.seen) >= len(phase.sent):
                lag = await lag_of.read()
                # Lag first: an outbox row a service wrote before committing its offsets is seen below.
                if not any(lag.values()) and await unsent(conn) == 0:
                    return at
                status.update(f"draining: consumer lag {lag}")
            else:
                status.update(f"draining: {len(phase.seen):,}/{len(phase.sent):,} alerts seen in incident events")
            await asyncio.sleep(0.25)
    return None


async def watch_timeline(database_url: str, incident: Awaitable[str]) -> tuple[str, float, dict[str, float]]:
    """Wait until the reporter's timeline holds every TIMELINE_TYPES entry of the incident.

    Return the incident id, the wall-clock time it became complete, and each entry's event time.
    """
    incident_id = await incident
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT type, min(time) AS time FROM reporter_timeline WHERE incident_id = $1 GROUP BY type",
                incident_id,
            )
            found = {row["type"]: row["time"].timestamp() for row in rows}
            if all(t in found for t in TIMELINE_TYPES):
                return incident_id, time.time(), found
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


@dataclass
class Run:
    """The stack and the clients one end-to-end run shares between its phases."""

    args: argparse.Namespace
    mode: str
    stage: Stage
    services: Services
    conn: asyncpg.Connection
    producer: AIOKafkaProducer
    collector: Collector
    lag: LagReader  # the services' consumer lag, read over the same clients all run long
    infra: Infrastructure  # its embedded servers' CPU is measured beside the services'


async def run_phase(run: Run, index: int, rate: float) -> dict[str, Any]:
    args, stage, services = run.args, run.stage, run.services
    phase = Phase(first_incident=asyncio.get_running_loop().create_future())
    run.collector.phase = phase
    factory = EstateAlerts(hosts=args.e2e_hosts, seed=args.seed + index, site=f"r{rate:g}", prefix="bench")
    samples = Samples()
    cpu_before = services.cpu_seconds() | run.infra.server_cpu_seconds()
    bench_cpu_before = time.process_time()
    machine_before, wall_before = measure.machine_busy_seconds(), time.monotonic()
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(sample_forever(run.lag, services, samples))]
    watching: asyncio.Task[Any] | None = None
    if index == 0 and "reporter" in services.names:  # the first incident's timeline, as the reporter keeps it
        assert phase.first_incident is not None
        watching = asyncio.create_task(watch_timeline(stage.database_url, phase.first_incident))
        tasks.append(watching)
    try:
        publisher = asyncio.create_task(
            publish_at_rate(
                run.producer,
                stage.names(ALERTS_RAW),
                factory,
                rate=rate,
                duration_s=args.duration,
                phase=phase,
                mode=run.mode,
            )
        )
        tasks.append(publisher)
        with console.status(f"publishing {rate:,.0f} alerts/s for {args.duration:.0f}s") as status:
            while not publisher.done():
                services.check_alive()
                status.update(
                    f"publishing {rate:,.0f} alerts/s: {len(phase.sent):,} sent, {len(phase.seen):,} in incident events"
                )
                await asyncio.sleep(0.25)
        first_send, last_send = publisher.result()
        drained_at = await wait_drained(run.conn, run.lag, services, phase, timeout_s=args.drain_timeout)
        timeline: dict[str, Any] | None = None
        if watching is not None:
            timeline = await first_incident(watching, phase)
        cpu_s = cpu_used(cpu_before, services.cpu_seconds() | run.infra.server_cpu_seconds())
        cpu_s["bench"] = round(time.process_time() - bench_cpu_before, 2)
        # The embedded Postgres and broker are measured; servers started elsewhere are in what the machine's
        # busy time adds to these, when they run on this machine.
        machine_after = measure.machine_busy_seconds()
        if machine_before is not None and machine_after is not None:
            cpu_s["machine"] = round(machine_after - machine_before, 2)
            cpu_s["machine_capacity"] = round((time.monotonic() - wall_before) * (os.cpu_count() or 1), 2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    sent = len(phase.sent)
    publish_rate = (sent - 1) / (last_send - first_send) if last_send > first_send else None
    drained_after = None if drained_at is None else drained_at - last_send
    kept_up = drained_after is not None and drained_after <= args.lag_bound
    result: dict[str, Any] = {
        "rate_per_s": rate,
        "duration_s": args.duration,
        "hosts": args.e2e_hosts,
        "alerts_sent": sent,
        "publish_rate_per_s": None if publish_rate is None else round(publish_rate, 1),
        "alerts_seen": len(phase.seen),
        "incidents_opened": len(phase.opened),
        "incidents_reaching": {name: len(reached) for name, reached in phase.milestones.items()},
        "latency_ms": phase.latencies(),
        "drained_after_last_send_s": None if drained_after is None else round(drained_after, 3),
        "kept_up": kept_up,
        "completion_alerts_per_s": None if drained_at is None else round(sent / (drained_at - first_send), 1),
        "max_consumer_lag": samples.lag,
        "rss_mb_max": samples.rss_mb,
        "cpu_s": cpu_s,
        # How many events of each type the pipeline published meanwhile: how much work one alert makes.
        "events_published": dict(sorted(phase.events.items())),
    }
    if timeline is not None:
        result["first_incident"] = timeline
    return result


def cpu_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds each process used between two readings (None where either is missing)."""
    used: dict[str, float | None] = {}
    for name, then in before.items():
        now = after.get(name)
        used[name] = None if then is None or now is None else round(now - then, 2)
    return used


async def first_incident(watching: asyncio.Task[Any], phase: Phase) -> dict[str, Any] | None:
    """The first alert's incident on the reporter's timeline: when it was complete, and each entry's time."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(watching), 30)
    if not watching.done() or watching.cancelled() or watching.exception() is not None:
        return None
    incident_id, complete_at, found = watching.result()
    assert phase.first_key is not None
    origin = phase.sent[phase.first_key]
    return {
        "incident_id": incident_id,
        "timeline_complete_s": round(complete_at - origin, 3),
        "event_time_after_first_alert_s": {t: round(found[t] - origin, 3) for t in TIMELINE_TYPES},
    }


async def idle_memory(services: Services, *, samples: int = 3) -> dict[str, float | None]:
    """Each service's largest memory over a few seconds with nothing to do."""
    seen = Samples()
    for _ in range(samples):
        await asyncio.sleep(1.0)
        seen.add({}, services.rss_mb())
    return {name: seen.rss_mb.get(name) for name in services.names}


async def bench_end_to_end(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The end-to-end benchmark once per format mode (native only unless ``--formats`` says)."""
    results: dict[str, Any] = {}
    for mode in modes(args, default="native"):
        console.log(f"end to end on {mode} alerts")
        try:
            results[mode] = await end_to_end(infra, args, mode)
        except BenchError as exc:
            raise BenchError(f"{mode} alerts: {exc}", partial=results) from exc
    return results


async def bench_detector_latency(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The detector alone at the same rates: from an alert's send to the incident event carrying it."""
    results: dict[str, Any] = {}
    for mode in modes(args, default="native"):
        console.log(f"the detector alone on {mode} alerts")
        try:
            results[mode] = await end_to_end(infra, args, mode, names=("detector",))
        except BenchError as exc:
            raise BenchError(f"{mode} alerts: {exc}", partial=results) from exc
    return results


async def end_to_end(
    infra: Infrastructure, args: argparse.Namespace, mode: str, *, names: tuple[str, ...] = SERVICE_NAMES
) -> dict[str, Any]:
    check_generator(args.e2e_hosts, args.seed, mode)
    result: dict[str, Any] = {"formats": mode, "services": list(names), "phases": []}
    async with fresh_stage(infra, f"e2e-{mode}-{len(names)}") as stage, Services(stage, names) as services:
        with console.status(f"starting {', '.join(names)}"):
            result["services_ready_s"] = await services.wait_ready(args.ready_timeout)
        console.log(f"ready after {max(result['services_ready_s'].values()):.1f}s")
        result["memory_mb"] = {"idle": await idle_memory(services)}
        conn = await asyncpg.connect(stage.database_url)
        consumer, collector = await collecting(stage)
        producer = make_producer(stage.settings, client_id="vigil-bench", linger_ms=PUBLISHER_LINGER_MS)
        await producer.start()
        reading = asyncio.create_task(collector.run())
        try:
            async with LagReader(stage.settings, services.names) as lag:
                run = Run(args, mode, stage, services, conn, producer, collector, lag, infra)
                for index, rate in enumerate(args.rates):
                    console.log(f"end to end at {rate:,.0f} alerts/s")
                    try:
                        phase = await run_phase(run, index, rate)
                    except BenchError as exc:
                        raise BenchError(str(exc), partial=result) from exc
                    result["phases"].append(phase)
                    drained = phase["drained_after_last_send_s"]
                    console.log(
                        f"{rate:,.0f} alerts/s: {phase['alerts_sent']:,} sent, "
                        + (f"drained {drained:.1f}s after the last" if drained is not None else "not drained")
                    )
            result["memory_mb"]["after_load"] = await idle_memory(services, samples=1)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await producer.stop()
            await consumer.stop()
            await conn.close()
    loads = [phase["rss_mb_max"] for phase in result["phases"]]
    result["memory_mb"]["under_load"] = {
        name: max((load[name] for load in loads if name in load), default=None) for name in names
    }
    result["sustained_alerts_per_s"] = sustained_rate(result["phases"])
    result["lag_bound_s"] = args.lag_bound
    return result


def sustained_rate(phases: list[dict[str, Any]]) -> float | None:
    """The highest publish rate the pipeline drained within the lag bound; 0 if none (None: no phase ran)."""
    if not phases:
        return None
    return max((phase["publish_rate_per_s"] or 0.0 for phase in phases if phase["kept_up"]), default=0.0)


def parse_rates(text: str) -> list[float]:
    """``--rates 200,1000,5000``: alerts per second, one phase each, in the order given."""
    rates = [float(part) for part in text.split(",") if part.strip()]
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("rates are positive numbers, comma-separated")
    return rates
