"""Benchmark of the analyzer's threat-intelligence store: loading a large feed, looking indicators up.

``python -m bench.intel [--entries 1000000] [--single 2000] [--batches 20] [--batch-size 1000] [--out FILE]``

Postgres is embedded unless DATABASE_URL is set (a fresh database is created on it and dropped).

1. Parse: a plain list of ``--entries`` values (addresses, domains, networks, hashes) in memory.
2. Load: ``load_feed`` into an empty table (COPY, then the upsert), then the same feed again (every
   row conflicts and is updated) — what a refresh of an unchanged feed costs.
3. Lookups: one indicator per query, then ``--batch-size`` per query; half of the indicators are
   listed, and every address is also checked for containment in the listed networks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import random
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bench.measure import cpu_seconds
from services.analyzer import intel
from shared.db import create_pool, scratch_database
from shared.embedded import servers

ADDRESS_BASE = int(ipaddress.ip_address("100.64.0.0"))


def feed_lines(entries: int) -> Iterator[str]:
    """A list feed: 60% addresses, 30% domains, 5% /24 networks, 5% SHA-256 hashes."""
    for i in range(entries):
        share = i % 20
        if share < 12:
            yield str(ipaddress.ip_address(ADDRESS_BASE + i))
        elif share < 18:
            yield f"host{i}.evil.example"
        elif share == 18:
            yield f"{10 + (i >> 16) % 100}.{(i >> 8) % 256}.{i % 256}.0/24"
        else:
            yield f"{i:064x}"


def backend_cpu_s(pid: int) -> float | None:
    """CPU seconds a Postgres backend has used, when it runs on this machine (else None)."""
    return cpu_seconds(pid, tree=False)


def _cpu_since(client: float, server: float | None, pid: int) -> dict[str, float | None]:
    """CPU seconds since then: this process's, and its Postgres backend's. On a busy machine these say
    more than the wall-clock time, which counts the time spent waiting for a core."""
    now = backend_cpu_s(pid)
    return {
        "client": round(time.process_time() - client, 2),
        "postgres": round(now - server, 2) if now is not None and server is not None else None,
    }


def indicators(count: int, entries: int, rng: random.Random) -> list[tuple[str, str]]:
    """Indicators as the analyzer sends them, about half of them listed."""
    wanted: list[tuple[str, str]] = []
    for _ in range(count):
        i = rng.randrange(entries * 2)  # beyond ``entries``: not listed
        if rng.random() < 0.6:
            wanted.append(("ipv4", str(ipaddress.ip_address(ADDRESS_BASE + (i - i % 20) + rng.randrange(12)))))
        else:
            wanted.append(("domain", f"host{i - i % 20 + 12 + rng.randrange(6)}.evil.example"))
    return wanted


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A fresh, migrated database on DATABASE_URL's server or an embedded one; dropped afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="vigil-bench-") as folder,
        servers(Path(folder), broker=False) as found,
    ):
        async with scratch_database(found.database_url, prefix="vigil_bench") as url:
            yield url


async def run(entries: int, single: int, batches: int, batch_size: int) -> dict[str, Any]:
    async with database() as url:
        return await measure(url, entries=entries, single=single, batches=batches, batch_size=batch_size)


async def measure(url: str, *, entries: int, single: int, batches: int, batch_size: int) -> dict[str, Any]:
    """Parse, load (twice) and look up a feed of ``entries`` in the migrated database at ``url``.

    The feed stays loaded (as ``bench``), for whatever runs on the database next.
    """
    rng = random.Random(1)
    text = "\n".join(feed_lines(entries))
    started, cpu = time.perf_counter(), time.process_time()
    parsed = intel.parse_list(text)
    parse_s, parse_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    pool = await create_pool(url, max_size=1)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            started, cpu, server = time.perf_counter(), time.process_time(), backend_cpu_s(backend)
            loaded = await intel.load_feed(conn, source="bench", entries=parsed)
            load_s = time.perf_counter() - started
            load_cpu = _cpu_since(cpu, server, backend)
            started, cpu, server = time.perf_counter(), time.process_time(), backend_cpu_s(backend)
            await intel.load_feed(conn, source="bench", entries=parsed)
            reload_s = time.perf_counter() - started
            reload_cpu = _cpu_since(cpu, server, backend)
            await conn.execute("ANALYZE intel_entries")

            one_by_one = indicators(single, entries, rng)
            hits = 0
            started = time.perf_counter()
            for key in one_by_one:
                hits += bool((await intel.lookup(conn, [key]))[key])
            single_s = time.perf_counter() - started

            batched = [indicators(batch_size, entries, rng) for _ in range(batches)]
            batch_hits = 0
            started = time.perf_counter()
            for batch in batched:
                found = await intel.lookup(conn, batch)
                batch_hits += sum(1 for matches in found.values() if matches)
            batch_s = time.perf_counter() - started
    finally:
        await pool.close()
    return {
        "entries": loaded,
        "parse_list_s": round(parse_s, 2),
        "parse_list_cpu_s": round(parse_cpu_s, 2),
        "load_s": round(load_s, 2),
        "load_cpu_s": load_cpu,
        "reload_cpu_s": reload_cpu,
        "load_entries_per_s": round(loaded / load_s),
        "reload_same_feed_s": round(reload_s, 2),
        "single_lookups": single,
        "single_lookups_per_s": round(single / single_s),
        "single_lookup_ms": round(single_s / single * 1000, 3),
        "single_hit_ratio": round(hits / single, 2),
        "batch_size": batch_size,
        "batches": batches,
        "batched_indicators_per_s": round(batches * batch_size / batch_s),
        "batch_ms": round(batch_s / batches * 1000, 1),
        "batched_hit_ratio": round(batch_hits / (batches * batch_size), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=2000, help="Lookups of one indicator each.")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    figures = asyncio.run(run(args.entries, args.single, args.batches, args.batch_size))
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
