"""Benchmark of the reporter's query API on a large read model: 100,000 incidents, 10 million alerts.

``python -m bench.run --only reporter [--reporter-incidents 100000] [--reporter-alerts 10000000]``

Generated incidents (with their milestones, sources, hosts, indicators, business services) and
alerts are loaded with COPY into a freshly migrated database, the full-text trigger and every index
included, then ANALYZEd. Each query the API runs is timed ``--reporter-repeats`` times with varied
parameters, through the reporter's own repository functions (the SQL the API sends), and its plan
is checked for a sequential scan of the big tables.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from services.reporter import repository
from services.reporter.queries import AlertFilter, IncidentFilter, alert_query, incident_query
from shared.db import create_pool

console = Console()

SOURCES = ("suricata", "falco", "wazuh", "crowdstrike", "guardduty", "defender", "elastic", "alertmanager")
TYPES = ("security_breach", "system_compromise", "data_leak", "service_disruption", "unknown")
SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")
STATES = ("detected", "acknowledged", "investigating", "contained", "resolved", "closed")
SERVICES = ("payments", "checkout", "search", "identity", "billing", "mail")
WORDS = tuple(
    [
        "ransomware",
        "brute",
        "force",
        "ssh",
        "login",
        "failure",
        "reverse",
        "shell",
        "exfiltration",
        "dns",
        "tunnel",
        "port",
        "scan",
        "privilege",
        "escalation",
        "credential",
        "dumping",
        "lateral",
        "movement",
        "phishing",
        "beacon",
        "malware",
        "cryptominer",
        "disk",
        "full",
        "outage",
    ]
)
END = datetime(2026, 11, 1, tzinfo=UTC)
SPAN = timedelta(days=365)


class Failed(Exception):
    def __init__(self, message: str, *, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


def _incident_rows(count: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for n in range(count):
        created = END - SPAN * (n / count) - timedelta(seconds=rng.random() * 60)
        detected = created + timedelta(seconds=rng.randint(1, 120))
        state = rng.choice(STATES)
        reached = STATES.index(state)
        acknowledged = detected + timedelta(minutes=rng.randint(1, 60)) if reached >= 1 else None
        contained = detected + timedelta(hours=rng.randint(1, 12)) if reached >= 3 else None
        resolved = detected + timedelta(hours=rng.randint(2, 96)) if reached >= 4 else None
        words = rng.sample(WORDS, 4)
        host = f"host-{rng.randrange(20_000):05d}"
        yield (
            f"inc-{n:08d}",
            " ".join(words).capitalize(),
            rng.choice(TYPES),
            rng.choice(SEVERITIES),
            state,
            "false_positive" if resolved and rng.random() < 0.2 else ("fixed" if resolved else None),
            rng.randint(1, 200),
            f"person-{rng.randrange(50)}" if acknowledged else None,
            [host],
            [f"user-{rng.randrange(5000)}"],
            sorted(set(rng.sample(SOURCES, rng.randint(1, 2)))),
            [f"rule-{rng.randrange(300)}"],
            [rng.choice(SERVICES)] if rng.random() < 0.3 else [],
            [f"198.51.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(rng.randint(1, 3))],
            f"alerts mention {words[0]}",
            "highest alert severity",
            created,
            created,
            detected,
            acknowledged,
            contained,
            resolved,
            created,
        )


INCIDENT_COPY_COLUMNS = [
    "id",
    "title",
    "type",
    "severity",
    "state",
    "resolution",
    "alert_count",
    "commander",
    "hosts",
    "users",
    "sources",
    "rules",
    "services",
    "indicators",
    "classification_reason",
    "severity_reason",
    "created_at",
    "first_alert_at",
    "detected_at",
    "acknowledged_at",
    "contained_at",
    "resolved_at",
    "updated_at",
]


def _alert_rows(count: int, incidents: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for n in range(count):
        incident = rng.randrange(incidents)
        time_ = END - SPAN * (incident / incidents) + timedelta(seconds=rng.randint(0, 3600))
        source = SOURCES[n % len(SOURCES)]
        body = {
            "key": f"{source}:{n}",
            "source": source,
            "title": f"{WORDS[n % len(WORDS)]} on host-{n % 20_000:05d}",
            "severity": "high",
            "time": time_.isoformat(),
            "host": f"host-{n % 20_000:05d}",
            "format": "native",
        }
        resolved = time_ + timedelta(minutes=30) if n % 3 == 0 else None
        yield (f"{source}:{n}", f"inc-{incident:08d}", body, time_, n % 4, None, resolved)


async def _copy(conn: Any, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]], chunk: int) -> None:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == chunk:
            await conn.copy_records_to_table(table, records=batch, columns=columns)
            batch = []
    if batch:
        await conn.copy_records_to_table(table, records=batch, columns=columns)


async def seed(pool: asyncpg.Pool, *, incidents: int, alerts: int, seed: int) -> dict[str, float]:
    """Load the generated rows with COPY; how long each part took."""
    rng = random.Random(seed)
    took: dict[str, float] = {}
    async with pool.acquire() as conn:
        started = time.perf_counter()
        await _copy(conn, "reporter_incidents", INCIDENT_COPY_COLUMNS, _incident_rows(incidents, rng), 10_000)
        took["copy_incidents_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await _copy(
            conn,
            "reporter_alerts",
            ["key", "incident_id", "body", "time", "repeats", "last_seen_at", "resolved_at"],
            _alert_rows(alerts, incidents, rng),
            50_000,
        )
        took["copy_alerts_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("ANALYZE reporter_incidents; ANALYZE reporter_alerts")
        took["analyze_s"] = time.perf_counter() - started
    return took


Probe = Callable[[Any, random.Random], Awaitable[Any]]


def probes(incidents: int) -> dict[str, tuple[Probe, Callable[[random.Random], tuple[str, list[Any]]] | None]]:
    """Each query the API runs, with the SQL to EXPLAIN where it is one statement."""

    def pick(rng: random.Random) -> str:
        return f"inc-{rng.randrange(incidents):08d}"

    def listing(make: Callable[[random.Random], IncidentFilter], **kw: Any) -> Any:
        async def run(conn: Any, rng: random.Random) -> Any:
            return await repository.list_incidents(conn, filters=make(rng), limit=100, **kw)

        def sql(rng: random.Random) -> tuple[str, list[Any]]:
            return incident_query(repository.INCIDENT_COLUMNS, make(rng), limit=100, **kw)

        return run, sql

    async def deep_page(conn: Any, rng: random.Random) -> Any:
        after = None
        for _ in range(20):  # the 20th page of 100
            _, after = await repository.list_incidents(conn, filters=IncidentFilter(), limit=100, after=after)
        return after

    async def one_incident(conn: Any, rng: random.Random) -> Any:
        incident_id = pick(rng)
        return (
            await repository.get_incident(conn, incident_id=incident_id),
            await repository.list_alerts(conn, incident_id=incident_id),
            await repository.list_actions(conn, incident_id=incident_id),
            await repository.list_timeline(conn, incident_id=incident_id),
        )

    def alerts(make: Callable[[random.Random], AlertFilter]) -> Any:
        async def run(conn: Any, rng: random.Random) -> Any:
            return await repository.list_alert_history(conn, filters=make(rng), limit=100)

        def sql(rng: random.Random) -> tuple[str, list[Any]]:
            return alert_query("key", make(rng), after=None, limit=100)

        return run, sql

    def window(rng: random.Random) -> tuple[datetime, datetime]:
        start = END - SPAN * rng.random()
        return start, start + timedelta(days=7)

    return {
        "newest page": listing(lambda rng: IncidentFilter()),
        "by state": listing(lambda rng: IncidentFilter(states=(rng.choice(STATES),))),
        "by severity and type": listing(
            lambda rng: IncidentFilter(severities=(rng.choice(SEVERITIES),), types=(rng.choice(TYPES),))
        ),
        "by source": listing(lambda rng: IncidentFilter(source=rng.choice(SOURCES))),
        "by business service": listing(lambda rng: IncidentFilter(service=rng.choice(SERVICES))),
        "by commander": listing(lambda rng: IncidentFilter(commander=f"person-{rng.randrange(50)}")),
        "by asset": listing(lambda rng: IncidentFilter(asset=f"host-{rng.randrange(20_000):05d}")),
        "by indicator": listing(
            lambda rng: IncidentFilter(indicator=f"198.51.{rng.randrange(256)}.{rng.randrange(256)}")
        ),
        "by time range (a week)": listing(lambda rng: IncidentFilter(since=window(rng)[0], until=window(rng)[1])),
        "full text, one word": listing(lambda rng: IncidentFilter(text=rng.choice(WORDS))),
        "full text, two words": listing(lambda rng: IncidentFilter(text=" ".join(rng.sample(WORDS, 2)))),
        "sorted by severity": listing(lambda rng: IncidentFilter(), sort="severity", order="asc"),
        "sorted by alert count": listing(lambda rng: IncidentFilter(), sort="alert_count", order="desc"),
        "20 pages by cursor": (deep_page, None),
        "one incident, everything": (one_incident, None),
        "alert history page": alerts(lambda rng: AlertFilter()),
        "alert history by source": alerts(lambda rng: AlertFilter(source=rng.choice(SOURCES))),
        "alerts of one incident": alerts(lambda rng: AlertFilter(incident_id=pick(rng))),
    }


async def _seq_scans(conn: Any, sql: str, args: list[Any]) -> list[str]:
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") == "Seq Scan":
            found.append(node.get("Relation Name", "?"))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


async def bench_reporter(
    args: argparse.Namespace, fresh_database: Callable[[], AbstractAsyncContextManager[str]]
) -> dict[str, Any]:
    incidents, alerts, repeats = args.reporter_incidents, args.reporter_alerts, args.reporter_repeats
    result: dict[str, Any] = {"incidents": incidents, "alerts": alerts, "repeats": repeats}
    async with fresh_database() as url:
        pool = await create_pool(url, max_size=2)
        try:
            console.log(f"loading {incidents:,} incidents and {alerts:,} alerts with COPY")
            result["load"] = await seed(pool, incidents=incidents, alerts=alerts, seed=args.seed)
            async with pool.acquire() as conn:
                result["database_mb"] = round(
                    await conn.fetchval("SELECT pg_database_size(current_database())") / 2**20
                )
                result["queries"] = await _measure(conn, probes(incidents), repeats, args.seed)
        finally:
            await pool.close()
    slow = [name for name, q in result["queries"].items() if q["seq_scans"]]
    if slow:
        raise Failed(f"sequential scans of a big table in: {', '.join(slow)}", partial=result)
    return result


async def _measure(conn: Any, queries: dict[str, Any], repeats: int, seed_: int) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    for name, (run, sql) in queries.items():
        rng = random.Random(seed_)
        await run(conn, rng)  # warm the cache, as a running service would be
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            await run(conn, rng)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        scans = await _seq_scans(conn, *sql(random.Random(seed_))) if sql else []
        measured[name] = {
            "p50_ms": round(statistics.median(timings), 2),
            "p95_ms": round(timings[min(len(timings) - 1, int(len(timings) * 0.95))], 2),
            "max_ms": round(timings[-1], 2),
            "seq_scans": [s for s in scans if s in ("reporter_incidents", "reporter_alerts")],
        }
        console.log(f"{name}: p50 {measured[name]['p50_ms']} ms, p95 {measured[name]['p95_ms']} ms")
    return measured


def add_report(table: Table, result: dict[str, Any]) -> None:
    table.add_section()
    table.add_row(f"[bold]Reporter queries, {result['incidents']:,} incidents / {result['alerts']:,} alerts[/bold]", "")
    if load := result.get("load"):
        table.add_row(
            "COPY incidents / alerts",
            f"{load['copy_incidents_s']:.1f} s / {load['copy_alerts_s']:.1f} s ({result.get('database_mb', '?')} MB)",
        )
    for name, q in result.get("queries", {}).items():
        scans = f" [red]seq scan {', '.join(q['seq_scans'])}[/red]" if q["seq_scans"] else ""
        table.add_row(f"  {name} p50 / p95", f"{q['p50_ms']:.1f} / {q['p95_ms']:.1f} ms{scans}")
