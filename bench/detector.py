"""Detector throughput: one detector process works through a backlog of raw alerts.

N alerts are produced to the raw topic first; then the detector starts and consumes the backlog.
Alerts/s is N over the time from the first row in ``detector_alerts`` to the N-th: start-up is left
out. With ``--formats both`` (the default) it runs on native alerts, then on the same mix rendered
in each tool's own format (``bench/formats.py``), and says what reading those formats costs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench import formats
from bench.harness import (
    BenchError,
    Infrastructure,
    Services,
    check_generator,
    console,
    fresh_stage,
    produce_backlog,
    wait_stored,
)
from services.detector import repository, suppression
from shared.db import connect
from shared.topics import ALERTS_RAW
from vigil.demo import EstateAlerts

# Reading tools' formats may cost at most this share of the detector's native throughput.
FORMATS_COST_LIMIT = 0.15


def modes(args: argparse.Namespace, *, default: str) -> list[str]:
    """The alert formats a benchmark runs with: ``--formats``, else its own default."""
    chosen: str = args.formats or default
    return list(formats.MODES) if chosen == "both" else [chosen]


async def bench_detector(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The throughput benchmark per format mode, ``--rounds`` times taking the modes in turn, and how mixed
    formats compare with native ones: a round's two runs are minutes apart, so their ratio is less the
    machine's drift than runs of one mode after all of the other."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for number in range(1, args.rounds + 1):
        for mode in modes(args, default="both"):
            console.log(f"detector throughput on {mode} alerts" + (f", round {number}" if args.rounds > 1 else ""))
            try:
                runs.setdefault(mode, []).append(await throughput(infra, args, mode))
            except BenchError as exc:
                raise BenchError(f"{mode} alerts: {exc}", partial=combine(runs)) from exc
    return combine(runs)


def combine(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each mode's median run (by throughput), with every round's throughput; mixed against native by round."""
    results: dict[str, Any] = {}
    for mode, done in runs.items():
        ranked = sorted(done, key=lambda run: run["alerts_per_s"])
        results[mode] = {**ranked[(len(ranked) - 1) // 2], "rounds_alerts_per_s": [r["alerts_per_s"] for r in done]}
    native, mixed = runs.get("native", []), runs.get("mixed", [])
    if native and len(native) == len(mixed):
        pairs = [compare(n, m) for n, m in zip(native, mixed, strict=True)]
        # The round whose cost is the median stands for all; each round's cost is kept beside it.
        ranked = sorted(pairs, key=lambda pair: pair["formats_cost_pct"])
        results["mixed_vs_native"] = {
            **ranked[(len(ranked) - 1) // 2],
            "rounds_formats_cost_pct": [pair["formats_cost_pct"] for pair in pairs],
        }
    return results


def compare(native: dict[str, Any], mixed: dict[str, Any]) -> dict[str, Any]:
    """Mixed formats' throughput as a share of native throughput, and the CPU each alert took."""
    ratio = mixed["alerts_per_s"] / native["alerts_per_s"]
    cpu_gap = _gap(mixed["detector_cpu_us_per_alert"], native["detector_cpu_us_per_alert"])
    reading_gap = _gap(mixed["reading_us_per_alert"], native["reading_us_per_alert"])
    return {
        "native_alerts_per_s": native["alerts_per_s"],
        "mixed_alerts_per_s": mixed["alerts_per_s"],
        "throughput_ratio": round(ratio, 3),
        "formats_cost_pct": round((1 - ratio) * 100, 1),
        "limit_pct": round(FORMATS_COST_LIMIT * 100, 1),
        "within_limit": 1 - ratio <= FORMATS_COST_LIMIT,
        "native_cpu_us_per_alert": native["detector_cpu_us_per_alert"],
        "mixed_cpu_us_per_alert": mixed["detector_cpu_us_per_alert"],
        "native_reading_us_per_alert": native["reading_us_per_alert"],
        "mixed_reading_us_per_alert": mixed["reading_us_per_alert"],
        # Of the CPU an alert of the mix costs more, what reading its format takes (the rest is carrying it).
        "reading_share_of_cpu_gap_pct": (
            round(reading_gap / cpu_gap * 100, 1) if cpu_gap and reading_gap is not None and cpu_gap > 0 else None
        ),
    }


def _gap(mixed: float | None, native: float | None) -> float | None:
    return None if mixed is None or native is None else mixed - native


async def throughput(infra: Infrastructure, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    count: int = args.alerts
    sample = check_generator(args.hosts, args.seed, mode)
    console.log(f"{mode} rendering checked: a sample of {sum(sample.values())} reads back as {sample}")
    reading = reading_cost(args.hosts, args.seed, mode)
    console.log(f"the adapters read a {mode} record in {reading['us_per_record']:.1f} us: {reading['by_format']}")
    async with fresh_stage(infra, f"throughput-{mode}") as stage:
        factory = EstateAlerts(hosts=args.hosts, seed=args.seed, prefix="bench")
        with console.status(f"producing {count:,} {mode} alerts to {stage.names(ALERTS_RAW)}"):
            backlog = await produce_backlog(stage.settings, stage.names(ALERTS_RAW), factory, count, mode=mode)
        console.log(
            f"produced {count:,} alerts ({backlog.bytes / count:,.0f} bytes each on average) in "
            f"{backlog.seconds:.1f}s ({count / backlog.seconds:,.0f}/s)"
        )
        conn = await asyncpg.connect(stage.database_url)
        try:
            suppressions = await define_suppressions(stage.database_url)
            async with Services(stage, ("detector",)) as detector:
                postgres_before = infra.server_cpu_seconds().get("postgres")

                def cpu() -> float | None:
                    return detector.cpu_seconds()["detector"]

                try:
                    stored = await wait_stored(
                        conn,
                        table="detector_alerts",
                        count=count,
                        started_at=detector.started_at,
                        what="detector",
                        check=detector.check_alive,
                        cpu=cpu,
                        stall_s=args.stall,
                        timeout_s=args.timeout,
                    )
                except BenchError as exc:
                    raise BenchError(f"{exc}; end of its output:\n{detector.log_tail('detector')}") from exc
                incidents = int(await conn.fetchval("SELECT count(*) FROM detector_incidents"))
                events = int(await conn.fetchval("SELECT count(*) FROM outbox WHERE service = 'detector'"))
                drained_s = await outbox_drained(conn, since=stored.done_at, check=detector.check_alive)
                cpu_s = cpu()
                postgres_after = infra.server_cpu_seconds().get("postgres")
        finally:
            await conn.close()

    elapsed = stored.done_at - stored.first_at
    # CPU per alert from the first stored alert on: start-up (imports, joining the group) left out.
    processing_cpu_s = None if cpu_s is None or stored.cpu_at_first is None else cpu_s - stored.cpu_at_first
    return {
        "formats": mode,
        "alerts": count,
        "suppressions_active": suppressions,
        "records_by_format": backlog.formats,
        "mean_record_bytes": round(backlog.bytes / count, 1),
        "produce_s": round(backlog.seconds, 3),
        "produce_alerts_per_s": round(count / backlog.seconds, 1),
        "startup_to_first_row_s": round(stored.first_at - detector.started_at, 3),
        "processing_s": round(elapsed, 3),
        "alerts_per_s": round(count / elapsed, 1),
        "incidents_opened": incidents,
        "outbox_events": events,
        "alerts_per_event": round(count / events, 2) if events else None,
        "outbox_drained_after_s": None if drained_s is None else round(drained_s, 3),
        "detector_cpu_s": None if cpu_s is None else round(cpu_s, 2),
        "detector_cpu_us_per_alert": None if processing_cpu_s is None else round(processing_cpu_s / count * 1e6, 1),
        # The embedded Postgres's CPU, from the detector's start (its start-up's few queries are in it too).
        "postgres_cpu_us_per_alert": (
            None
            if postgres_before is None or postgres_after is None
            else round((postgres_after - postgres_before) / count * 1e6, 1)
        ),
        "reading_us_per_alert": reading["us_per_record"],
        "reading_us_by_format": reading["by_format"],
    }


def reading_cost(hosts: int, seed: int, mode: str, count: int = 20_000) -> dict[str, Any]:
    """What the adapters alone take to read a sample of the mode's records, in this process."""
    factory = EstateAlerts(hosts=hosts, seed=seed + 2, prefix="bench")
    return formats.reading_cost([factory.make()[1] for _ in range(count)], datetime.now(UTC), mode)


# Active while the detector works, as on a real estate: every alert is checked against them (in memory,
# indexed by the fields they test); they are for hosts and services outside the benchmark's estate, so
# that none holds an alert back and the count waited for stays the alerts stored.
SILENCES = 50
WINDOWS = 10


async def define_suppressions(database_url: str) -> dict[str, int]:
    """Silences and recurring maintenance windows in force, made as the detector's API makes them."""
    conn = await connect(database_url)  # with the services' codecs: matchers are JSON
    try:
        return await _define_suppressions(conn)
    finally:
        await conn.close()


async def _define_suppressions(conn: asyncpg.Connection) -> dict[str, int]:
    now = datetime.now(UTC)
    for n in range(SILENCES):
        matchers = [f"host=decommissioned-{n:03d}"] if n % 2 else [f"host=~retired-{n:03d}-.*", "severity=low"]
        suppression.parse_matchers(matchers)  # what the API checks
        await repository.create_silence(
            conn,
            silence_id=f"bench-silence-{n}",
            matchers=matchers,
            starts_at=now - timedelta(hours=1),
            ends_at=now + timedelta(days=1),
            created_by="bench",
            comment="a host outside the estate",
        )
    for n in range(WINDOWS):
        matchers = [f"labels.service=legacy-{n}"]
        suppression.parse_matchers(matchers)
        await repository.create_window(
            conn,
            window_id=f"bench-window-{n}",
            name=f"legacy-{n} patching",
            matchers=matchers,
            starts_at=now - timedelta(days=7),
            ends_at=None,
            rrule="FREQ=DAILY",
            duration_s=4 * 3600,
            time_zone="UTC",
            created_by="bench",
            comment="a service outside the estate",
        )
    return {"silences": SILENCES, "maintenance_windows": WINDOWS}


async def outbox_drained(
    conn: asyncpg.Connection, *, since: float, check: Callable[[], None], limit_s: float = 60
) -> float | None:
    """Seconds after ``since`` at which the detector's relay had published every event (None: not within the limit)."""
    with console.status("waiting for the detector's outbox relay"):
        while time.monotonic() - since < limit_s:
            check()
            unsent = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE service = 'detector' AND sent_at IS NULL AND parked_at IS NULL"
            )
            if unsent == 0:
                return time.monotonic() - since
            await asyncio.sleep(0.2)
    return None
