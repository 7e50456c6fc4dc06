"""How the detector's cost per alert grows with what it already holds.

Two sweeps, each on a stage of its own with one detector process:

* **open incidents** (10 → 10,000): the estate grows by new hosts, one alert (one incident) each;
* **alerts per incident** (1 → 10,000): at each level ten new incidents are fed that many alerts.

At each level the same measurement follows: ``--scaling-alerts`` alerts (1,000 by default) about ten
incidents of that level, a hundred each, in ``--scaling-rounds`` rounds (10), each produced at once
and stored before the next, so that every level is measured on batches of the same shape. The cost
per alert is read from the detector's own metrics: the time its consume loop spent in batch
transactions (``vigil_handler_duration_seconds``: the handler and its writes, commit included) over
the alerts, and the process's CPU time over the same alerts (decoding and polling included). Each
level is also given relative to the first.

Every alert is an Alertmanager ``HighErrorRate`` alert about its host: it correlates by entity, so
the incidents are exactly the hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench import formats, measure
from bench.harness import BenchError, Infrastructure, Services, Stage, Stored, console, fresh_stage, wait_stored
from shared.kafka import make_producer
from shared.topics import ALERTS_RAW
from vigil.demo import KINDS

OPEN_INCIDENTS = (10, 100, 1_000, 10_000)
ALERTS_PER_INCIDENT = (1, 10, 100, 1_000, 10_000)
MEASURED_INCIDENTS = 10  # a measurement's alerts go to this many incidents, a level's own


@dataclass
class Feed:
    """Alerts for one stage, each with an id of its own; the count stored so far."""

    stage: Stage
    sent: int = 0

    async def send(self, hosts: Sequence[str], per_host: int) -> int:
        """Produce ``per_host`` alerts about each host, interleaved; return how many."""
        producer = make_producer(self.stage.settings, client_id="vigil-bench")
        await producer.start()
        try:
            futures = []
            now = datetime.now(UTC)
            for _ in range(per_host):
                for host in hosts:
                    self.sent += 1
                    body = KINDS["high_error_rate"].alert(
                        host=host, id=f"scale-{self.sent:09d}", service="checkout", n="5", labels={"env": "prod"}
                    )
                    _key, value = formats.encode(body, now, "native")
                    futures.append(await producer.send(self.stage.names(ALERTS_RAW), key=host.encode(), value=value))
            for future in futures:
                await future
        finally:
            await producer.stop()
        return per_host * len(hosts)


@dataclass(frozen=True)
class Level:
    """One step of a sweep: the alerts that bring the state there, and the incidents measured."""

    value: int
    label: str
    seed_hosts: list[str]
    seed_per_host: int
    measured: list[str]


async def store(
    conn: asyncpg.Connection, detector: Services, feed: Feed, args: argparse.Namespace, what: str
) -> Stored:
    """Wait until everything sent so far is stored."""
    before = int(await conn.fetchval("SELECT count(*) FROM detector_alerts"))
    try:
        return await wait_stored(
            conn,
            table="detector_alerts",
            count=feed.sent - before,
            started_at=time.monotonic(),
            what=what,
            check=detector.check_alive,
            cpu=lambda: detector.cpu_seconds()["detector"],
            stall_s=args.stall,
            timeout_s=args.timeout,
            before=before,
        )
    except BenchError as exc:
        raise BenchError(f"{exc}; end of its output:\n{detector.log_tail('detector')}") from exc


@dataclass(frozen=True)
class Reading:
    """The detector's own account of its work so far, and its CPU time."""

    handled: float  # records handled ok
    in_transactions_s: float
    batches: float
    cpu_s: float | None

    @classmethod
    async def take(cls, detector: Services, *, handled: int) -> Reading:
        """Once the detector counts ``handled`` records (its counters follow the commit by a moment)."""
        deadline = time.monotonic() + 10
        while True:
            exposition = await detector.metrics("detector")
            reading = cls(
                measure.metric_sum(exposition, "vigil_events_handled_total", service="detector", outcome="ok"),
                measure.metric_sum(exposition, "vigil_handler_duration_seconds_sum", service="detector"),
                measure.metric_sum(exposition, "vigil_handler_duration_seconds_count", service="detector"),
                detector.cpu_seconds()["detector"],
            )
            if reading.handled >= handled or time.monotonic() > deadline:
                return reading
            await asyncio.sleep(0.05)


async def measure_level(
    conn: asyncpg.Connection, detector: Services, feed: Feed, args: argparse.Namespace, level: Level
) -> dict[str, Any]:
    """Feed the level's measured incidents in rounds, each stored before the next; the cost per alert."""
    per_host = max(1, args.scaling_alerts // args.scaling_rounds // len(level.measured))
    before = await Reading.take(detector, handled=feed.sent)
    alerts = 0
    for _ in range(args.scaling_rounds):
        alerts += await feed.send(level.measured, per_host)
        await store(conn, detector, feed, args, f"detector, {level.label}")
    after = await Reading.take(detector, handled=feed.sent)
    handled = after.handled - before.handled
    if handled != alerts:
        raise BenchError(f"{level.label}: the detector handled {handled:.0f} records for the {alerts} alerts sent")
    cpu_s = None if after.cpu_s is None or before.cpu_s is None else after.cpu_s - before.cpu_s
    return {
        "alerts": alerts,
        "batches": int(after.batches - before.batches),
        "transaction_us_per_alert": round((after.in_transactions_s - before.in_transactions_s) / alerts * 1e6, 1),
        "cpu_us_per_alert": None if cpu_s is None else round(cpu_s / alerts * 1e6, 1),
        "open_incidents": int(await conn.fetchval("SELECT count(*) FROM detector_incidents")),
        "alerts_stored": int(await conn.fetchval("SELECT count(*) FROM detector_alerts")),
    }


async def sweep(
    infra: Infrastructure, args: argparse.Namespace, label: str, plan: Sequence[Level]
) -> list[dict[str, Any]]:
    """One detector, kept running: each level's seed stored, then its measurement."""
    rows: list[dict[str, Any]] = []
    async with fresh_stage(infra, label) as stage, Services(stage, ("detector",)) as detector:
        await detector.wait_ready(args.ready_timeout)
        conn = await asyncpg.connect(stage.database_url)
        try:
            feed = Feed(stage)
            for level in plan:
                await feed.send(level.seed_hosts, level.seed_per_host)
                await store(conn, detector, feed, args, f"detector, seeding {level.label}")
                console.log(f"{level.label}: measuring")
                rows.append({"level": level.value, **await measure_level(conn, detector, feed, args, level)})
        finally:
            await conn.close()
    relative(rows)
    return rows


def relative(rows: list[dict[str, Any]]) -> None:
    """Each row's cost as a multiple of the first row's."""
    first = rows[0]["transaction_us_per_alert"] if rows else None
    for found in rows:
        found["relative"] = round(found["transaction_us_per_alert"] / first, 2) if first else None


def open_incidents_plan(cap: int) -> list[Level]:
    """The estate grows by new hosts, an alert (an incident) each; ten of each level's new ones are measured."""
    plan, hosts = [], 0
    for level in (value for value in OPEN_INCIDENTS if value <= cap):
        new = [f"scale-{n:06d}" for n in range(hosts, level)]
        hosts = level
        step = max(1, len(new) // MEASURED_INCIDENTS)
        plan.append(Level(level, f"{level:,} open incidents", new, 1, new[::step][:MEASURED_INCIDENTS]))
    return plan


def alerts_per_incident_plan(cap: int) -> list[Level]:
    """Ten new incidents a level, each fed that level's number of alerts, then measured."""
    plan = []
    for level in (value for value in ALERTS_PER_INCIDENT if value <= cap):
        hosts = [f"grow-{level}-{n:02d}" for n in range(MEASURED_INCIDENTS)]
        plan.append(Level(level, f"{level:,} alerts per incident", hosts, level, hosts))
    return plan


async def bench_scaling(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "measured_incidents": MEASURED_INCIDENTS,
        "alerts_per_measurement": args.scaling_alerts,
        "rounds": args.scaling_rounds,
    }
    try:
        results["open_incidents"] = await sweep(infra, args, "scaling-incidents", open_incidents_plan(args.scaling_max))
        results["alerts_per_incident"] = await sweep(
            infra, args, "scaling-alerts", alerts_per_incident_plan(args.scaling_max)
        )
    except BenchError as exc:
        raise BenchError(str(exc), partial=results) from exc
    return results
