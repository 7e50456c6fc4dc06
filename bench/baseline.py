"""The peer baseline: the same alert stream through a straightforward faust-streaming pipeline.

A faust App with one agent on the raw topic: faust parses each record as JSON, the agent turns each
alert into a row and writes the rows to Postgres with asyncpg, either a small batch at a time
(``stream.take``, the default) or one insert per alert (``--baseline per-event``). It is measured as
the detector is: the same native alerts are produced to the raw topic of a fresh stage first, then
the worker starts; alerts/s is N over the time from the first row stored to the N-th.

The embedded broker has no idempotent or transactional producer and makes a group join wait for
the rebalance timeout, so the app runs ``at_least_once`` with short session and rebalance timeouts
and without its web server. ``python -m bench.baseline`` runs the worker (the harness starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from bench import measure
from bench.harness import (
    LOGS_DIR,
    BenchError,
    Infrastructure,
    console,
    fresh_stage,
    produce_backlog,
    wait_stored,
)
from shared.topics import ALERTS_RAW
from vigil.demo import EstateAlerts

MODES = ("batch", "per-event")
PROJECT_DIR = Path(__file__).resolve().parent.parent
TABLE = "baseline_alerts"
CREATE_TABLE = f"""CREATE TABLE {TABLE} (
    source text NOT NULL,
    id text NOT NULL,
    title text NOT NULL,
    severity text NOT NULL,
    host text,
    body jsonb NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source, id))"""
INSERT = f"""INSERT INTO {TABLE} (source, id, title, severity, host, body)
             VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT DO NOTHING"""


def row(alert: Mapping[str, Any], text: str) -> tuple[str, str, str, str, str | None, str]:
    """The row one alert makes: its identity, what it says, and the whole of it."""
    return (alert["source"], alert["id"], alert["title"], alert["severity"], alert.get("host"), text)


# ---- the faust worker ----------------------------------------------------------------------------


def build_app(*, bootstrap_servers: str, topic: str, group: str, database_url: str, mode: str, batch: int) -> Any:
    """The faust app: one agent on ``topic`` storing every alert in ``baseline_alerts``."""
    import faust
    import orjson

    app = faust.App(
        group,
        broker=f"kafka://{bootstrap_servers}",
        processing_guarantee="at_least_once",
        web_enabled=False,
        broker_session_timeout=6.0,
        broker_rebalance_timeout=3.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        store="memory://",
        datadir=str(LOGS_DIR / "baseline" / "faust-data"),
    )
    source = app.topic(topic, key_type=bytes, key_serializer="raw", value_serializer="json")
    pools: list[asyncpg.Pool] = []

    async def pool() -> asyncpg.Pool:
        if not pools:
            created = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            assert created is not None
            pools.append(created)
        return pools[0]

    if mode == "batch":

        @app.agent(source)
        async def store_batches(stream: Any) -> None:
            async for alerts in stream.take(batch, within=1.0):
                rows = [row(alert, orjson.dumps(alert).decode()) for alert in alerts]
                await (await pool()).executemany(INSERT, rows)

    else:

        @app.agent(source)
        async def store_each(stream: Any) -> None:
            async for alert in stream:
                await (await pool()).execute(INSERT, *row(alert, orjson.dumps(alert).decode()))

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--mode", choices=MODES, default="batch")
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    import faust

    app = build_app(
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        group=args.group,
        database_url=os.environ["DATABASE_URL"],  # not on the command line: it may hold a password
        mode=args.mode,
        batch=args.batch,
    )
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


# ---- the measurement ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def worker(
    bootstrap_servers: str, topic: str, group: str, database_url: str, mode: str, batch: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The faust worker as a process of its own, like the detector; stopped with SIGTERM, then killed."""
    log_path = LOGS_DIR / "baseline" / "faust.log"
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "bench.baseline",
        *("--bootstrap-servers", bootstrap_servers, "--topic", topic, "--group", group),
        *("--mode", mode, "--batch", str(batch)),
    ]
    output = await asyncio.to_thread(open, log_path, "wb")
    with output:  # the worker has its own copy of the descriptor
        process = await asyncio.create_subprocess_exec(
            *command,
            env={**os.environ, "DATABASE_URL": database_url},
            cwd=PROJECT_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


def log_tail(lines: int = 40) -> str:
    try:
        text = (LOGS_DIR / "baseline" / "faust.log").read_text(errors="replace")
    except OSError:
        return "(no output captured)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


async def bench_baseline(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The faust pipeline on the same backlog the detector's native run reads: the straightforward one
    (an insert per alert) and, with ``--baseline both``, one that stores a batch at a time as well."""
    if args.baseline != "both":
        return await _bench_baseline(infra, args, args.baseline)
    straightforward = await _bench_baseline(infra, args, "per-event")
    return {**straightforward, "batched": await _bench_baseline(infra, args, "batch")}


async def _bench_baseline(infra: Infrastructure, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    count: int = args.alerts
    async with fresh_stage(infra, "baseline") as stage:
        topic = stage.names(ALERTS_RAW)
        factory = EstateAlerts(hosts=args.hosts, seed=args.seed, prefix="bench")
        with console.status(f"producing {count:,} native alerts to {topic}"):
            backlog = await produce_backlog(stage.settings, topic, factory, count, mode="native")
        conn = await asyncpg.connect(stage.database_url)
        try:
            await conn.execute(CREATE_TABLE)
            group = f"vigil-bench-baseline-{stage.names.prefix.strip('.')}"
            started_at = time.monotonic()
            async with worker(
                infra.kafka.bootstrap_servers, topic, group, stage.database_url, mode, args.baseline_batch
            ) as process:
                postgres_before = infra.server_cpu_seconds().get("postgres")

                def check() -> None:
                    if process.returncode is not None:
                        raise BenchError(f"the faust worker exited with {process.returncode}:\n{log_tail()}")

                def cpu() -> float | None:
                    return measure.cpu_seconds(process.pid)

                try:
                    stored = await wait_stored(
                        conn,
                        table=TABLE,
                        count=count,
                        started_at=started_at,
                        what=f"faust baseline ({mode})",
                        check=check,
                        cpu=cpu,
                        stall_s=args.stall,
                        timeout_s=args.timeout,
                    )
                except BenchError as exc:
                    raise BenchError(f"{exc}; end of the worker's output:\n{log_tail()}") from exc
                cpu_s = cpu()
                postgres_after = infra.server_cpu_seconds().get("postgres")
        finally:
            await conn.close()
    elapsed = stored.done_at - stored.first_at
    processing_cpu_s = None if cpu_s is None or stored.cpu_at_first is None else cpu_s - stored.cpu_at_first
    return {
        "pipeline": "faust-streaming",
        "faust_version": _version("faust-streaming"),
        "mode": mode,
        "batch": args.baseline_batch if mode == "batch" else 1,
        "alerts": count,
        "mean_record_bytes": round(backlog.bytes / count, 1),
        "startup_to_first_row_s": round(stored.first_at - started_at, 3),
        "processing_s": round(elapsed, 3),
        "alerts_per_s": round(count / elapsed, 1),
        "worker_cpu_us_per_alert": None if processing_cpu_s is None else round(processing_cpu_s / count * 1e6, 1),
        # As the detector's: the embedded Postgres's CPU from the worker's start, over the alerts.
        "postgres_cpu_us_per_alert": (
            None
            if postgres_before is None or postgres_after is None
            else round((postgres_after - postgres_before) / count * 1e6, 1)
        ),
    }


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
