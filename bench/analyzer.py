"""Benchmark of the analyzer: its threat-intel store with a million entries, and analyses per second.

Run by ``bench/run.py`` (``--only analyzer``), on a fresh database of the benchmark's Postgres:

1. Threat intel (``bench/intel.py``): a ``--intel-entries`` feed (a million by default) parsed, loaded
   into an empty table, loaded again unchanged, then looked up one indicator a query and a thousand
   a query.
2. Analyses: the analyzer's handler, composed as its service composes it, on a stream of incident
   events with that feed loaded: ``--analyzer-incidents`` incidents, each detected with
   ``--analyzer-alerts`` alerts and then updated with as many again, so that every incident is
   analysed twice (the second time adding to what the first gathered). The events go through in
   batches of ``--analyzer-batch``, each handled as the consume loop handles a batch: one
   transaction that records the event ids in the ledger, runs the handler on each event in its own
   savepoint and writes the analyses to the outbox. A third of the alerts name an address the feed
   lists. No broker: the relay's publishing is not part of it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.table import Table

from bench import intel as intel_bench
from services.analyzer import forensic, handlers
from services.detector.domain import summarise
from shared.alerts import Alert
from shared.consumer import HandlerContext, Inbound, write_context
from shared.db import create_pool
from shared.events import (
    AlertSummary,
    Event,
    IncidentDetected,
    IncidentSnapshot,
    IncidentType,
    IncidentUpdated,
    Severity,
)
from shared.topics import ANALYSES, TopicNames

NewDatabase = Callable[[], contextlib.AbstractAsyncContextManager[str]]
MakeAlert = Callable[[], tuple[bytes, dict[str, Any]]]
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def listed_address(i: int) -> str:
    """An address the benchmark's feed lists (``bench.intel.feed_lines``: 12 of every 20 entries)."""
    return str(ipaddress.ip_address(intel_bench.ADDRESS_BASE + (i - i % 20) + i % 12))


def stream(incidents: int, alerts: int, make_alert: MakeAlert, entries: int) -> list[Event]:
    """Each incident detected with ``alerts`` alerts, then updated with as many more."""
    events: list[Event] = []
    updates: list[Event] = []
    seq = 0
    for n in range(incidents):
        incident_id = f"bench-incident-{n:06d}"
        host = f"host-{n:05d}"
        batches: list[list[AlertSummary]] = []
        for _ in range(2):
            batch = []
            for _ in range(alerts):
                seq += 1
                _, body = make_alert()
                body = {**body, "host": host, "time": (T0 + timedelta(seconds=seq)).isoformat()}
                if seq % 3 == 0:
                    body["dst_ip"] = listed_address(seq * 7919 % entries)
                batch.append(summarise(Alert.model_validate(body)))
            batches.append(batch)
        for part, (kind, batch) in enumerate(zip((IncidentDetected, IncidentUpdated), batches, strict=True)):
            snapshot = IncidentSnapshot(
                title=batch[0].title,
                type=IncidentType.SECURITY_BREACH,
                severity=Severity.SEV2,
                classification_reason="bench",
                severity_reason="bench",
                correlation_key=f"host:{host}",
                alert_count=alerts * (part + 1),
                first_seen=batches[0][0].time,
                last_seen=batch[-1].time,
                hosts=[host],
                users=sorted({a.user for a in batch if a.user}),
                new_alerts=batch,
            )
            event = kind(source="/vigil/detector", subject=incident_id, data=snapshot)
            assert isinstance(event, IncidentDetected | IncidentUpdated)
            (events if part == 0 else updates).append(event)
    return events + updates  # every incident detected before any is updated, as a busy detector sends them


async def analyses(url: str, args: argparse.Namespace, make_alert: MakeAlert) -> dict[str, Any]:
    events = stream(args.analyzer_incidents, args.analyzer_alerts, make_alert, args.intel_entries)
    names = TopicNames("bench")
    pool = await create_pool(url, max_size=1)  # one connection: its Postgres backend's CPU time is the work's
    batch_ms: list[float] = []
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
        server = intel_bench.backend_cpu_s(backend)
        cpu = time.process_time()
        started = time.perf_counter()
        for at in range(0, len(events), args.analyzer_batch):
            batch = events[at : at + args.analyzer_batch]
            began = time.perf_counter()
            async with pool.acquire() as conn, conn.transaction():
                # As the consume loop: the ledger, the handler (a savepoint an event), the outbox.
                await conn.execute(
                    "INSERT INTO processed_events (service, event_id) SELECT 'analyzer', unnest($1::text[])",
                    [e.id for e in batch],
                )
                ctx = HandlerContext(conn=conn, service="analyzer", names=names)
                await handlers.handle(ctx, [Inbound(e.id, e, None) for e in batch])
                await write_context(conn, ctx)
            batch_ms.append((time.perf_counter() - began) * 1000)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu
        server_after = intel_bench.backend_cpu_s(backend)
        server_s = server_after - server if server is not None and server_after is not None else None
        async with pool.acquire() as conn:
            published = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE service = 'analyzer' AND topic = $1", names(ANALYSES)
            )
            # Every indicator the incidents' alerts name (an analysis carries only the worst of them).
            kinds = sorted(forensic.INDICATOR_KINDS)
            known_bad = await conn.fetchval(
                """SELECT count(*) FROM analyzer_indicators
                   WHERE kind = ANY($1::text[]) AND value IN (SELECT value FROM intel_entries)""",
                kinds,
            )
            indicators = await conn.fetchval(
                "SELECT count(*) FROM analyzer_indicators WHERE kind = ANY($1::text[])", kinds
            )
    finally:
        await pool.close()
    quantiles = statistics.quantiles(batch_ms, n=100) if len(batch_ms) > 1 else batch_ms * 99
    return {
        "incidents": args.analyzer_incidents,
        "alerts_per_event": args.analyzer_alerts,
        "events": len(events),
        "batch_size": args.analyzer_batch,
        "analyses_published": published,
        "analyses_per_s": round(len(events) / elapsed, 1),
        "alerts_per_s": round(len(events) * args.analyzer_alerts / elapsed),
        "elapsed_s": round(elapsed, 2),
        "batch_ms": {"p50": round(quantiles[49], 1), "p99": round(quantiles[98], 1)},
        "cpu_ms_per_analysis": round(cpu_s / len(events) * 1000, 2),
        "postgres_cpu_ms_per_analysis": round(server_s / len(events) * 1000, 2) if server_s is not None else None,
        "indicators": indicators,
        "indicators_listed_by_the_feed": known_bad,
    }


async def bench_analyzer(args: argparse.Namespace, new_database: NewDatabase, make_alert: MakeAlert) -> dict[str, Any]:
    async with new_database() as url:
        feed = await intel_bench.measure(url, entries=args.intel_entries, single=2000, batches=20, batch_size=1000)
        return {"intel": feed, "analyses": await analyses(url, args, make_alert)}


def _cpu(seconds: dict[str, float | None]) -> str:
    server = "?" if seconds["postgres"] is None else f"{seconds['postgres']:.2f}"
    return f"CPU: {seconds['client']:.2f} s here, {server} s Postgres"


def add_report(table: Table, result: dict[str, Any]) -> None:
    """Rows for the benchmark's table."""
    if feed := result.get("intel"):
        table.add_section()
        table.add_row(f"[bold]Threat intel: a {feed['entries']:,}-entry feed[/bold]", "")
        table.add_row("parse (plain list)", f"{feed['parse_list_s']:.2f} s ({feed['parse_list_cpu_s']:.2f} s of CPU)")
        table.add_row(
            "load into an empty table",
            f"{feed['load_s']:.2f} s ({feed['load_entries_per_s']:,} entries/s; {_cpu(feed['load_cpu_s'])})",
        )
        table.add_row("load again, unchanged", f"{feed['reload_same_feed_s']:.2f} s ({_cpu(feed['reload_cpu_s'])})")
        table.add_row(
            "lookups, one a query",
            f"{feed['single_lookups_per_s']:,}/s ({feed['single_lookup_ms']:.3f} ms each)",
        )
        table.add_row(
            f"lookups, {feed['batch_size']:,} a query",
            f"{feed['batched_indicators_per_s']:,} indicators/s ({feed['batch_ms']:.1f} ms a query)",
        )
    if found := result.get("analyses"):
        table.add_section()
        table.add_row(
            f"[bold]Analyzer: {found['incidents']:,} incidents x 2 events x {found['alerts_per_event']} alerts[/bold]",
            f"{found['batch_size']} events a transaction",
        )
        table.add_row("analyses per second", f"{found['analyses_per_s']:,.1f} ({found['alerts_per_s']:,} alerts/s)")
        table.add_row(
            "batch transaction p50 / p99", f"{found['batch_ms']['p50']:,.1f} / {found['batch_ms']['p99']:,.1f} ms"
        )
        server = found.get("postgres_cpu_ms_per_analysis")
        table.add_row(
            "CPU per analysis: analyzer / Postgres",
            f"{found['cpu_ms_per_analysis']:.2f} / {'?' if server is None else f'{server:.2f}'} ms",
        )
        table.add_row(
            "indicators / listed by the feed", f"{found['indicators']:,} / {found['indicators_listed_by_the_feed']:,}"
        )
