"""Benchmark of lease expiry: how late a reversible action's undo goes out after its lease ends.

``python -m bench.leases [--leases 200] [--lease 3] [--down 5] [--out FILE]``

Postgres is embedded unless DATABASE_URL is set (a fresh database is created on it and dropped).
The responder is composed in this process as its service composes it: the blocklist connector,
the effects runner woken by LISTEN/NOTIFY and polling at the service's default interval, and the
timer poller.

1. Running: ``--leases`` incidents each block one address with a ``--lease``-second lease, one
   after another, while the responder runs; every lease ends while others are being made.
2. Restart: a tenth as many leases are made, the responder stops, they fall due while it is down
   for ``--down`` seconds, and it starts again.

For each: the delay from the due time (or the restart) to the undo sent, and to it done (the
address off the served list), by Postgres's clock: percentiles and the largest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from rich.table import Table

from bench.intel import database
from services.responder import domain
from services.responder.approvals import parse_policy
from services.responder.connectors import load_connectors, parse_connectors_config
from services.responder.guardrails import parse_guardrails
from services.responder.handlers import Execution, Responder
from services.responder.leases import RepeatOffenders
from shared.consumer import HandlerContext, Inbound, write_context
from shared.db import connect, create_pool
from shared.effects import EffectRunner
from shared.events import Analysis, IncidentAnalyzed, IncidentType, Indicator, Severity
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames

PLAYBOOK = """
playbooks:
  - id: block
    title: Block the attacker
    match: {{types: [security_breach]}}
    steps:
      - id: block
        name: Block address
        phase: containment
        response: immediate
        for_each: external_ips
        connector: blocklist
        action: block
        params: {{address: {{value: "{{{{ item }}}}", type: ip}}}}
        lease: {lease}s
        undo: {{connector: blocklist, action: unblock, params: {{address: {{value: "{{{{ item }}}}", type: ip}}}}}}
"""
NAMES = TopicNames("bench.")
GUARDRAILS = """
never_block: {networks: [], hosts: []}
rate_limits: []
blast_radius: {per_step: 1000, per_incident: 1000}
"""
BASE = int(ipaddress.ip_address("203.0.113.0"))  # up to 256 leases: addresses the planner sees as external


def responder(pool: asyncpg.Pool, lease_s: int) -> Responder:
    execution = Execution(
        policy=parse_policy("rules: [{name: all, mode: auto}]"),
        guardrails=parse_guardrails(GUARDRAILS),
        connectors=load_connectors(parse_connectors_config("{}"), pool=pool, environ={}),
        repeat_offenders=RepeatOffenders(durations=(1,)),
    )
    return Responder(domain.parse_playbooks(PLAYBOOK.format(lease=lease_s)), execution)


@contextlib.asynccontextmanager
async def running(responder: Responder, pool: asyncpg.Pool, url: str) -> AsyncIterator[None]:
    settings = VigilSettings(database_url=url)
    kinds = [k for c in responder.execution.connectors.values() for k in c.effect_kinds(responder.on_effect_outcome)]
    runner = EffectRunner("responder", pool, NAMES, kinds, connect=lambda: connect(url), poll_s=settings.effects_poll_s)
    poller = TimerPoller(service="responder", pool=pool, names=NAMES, handlers=responder.timer_handlers)
    tasks = [asyncio.create_task(runner.run()), asyncio.create_task(poller.run())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def block(pool: asyncpg.Pool, responder: Responder, n: int, prefix: str) -> None:
    data = Analysis(
        type=IncidentType.SECURITY_BREACH,
        severity=Severity.SEV2,
        title="bench",
        indicators=[Indicator(kind="ipv4", value=str(ipaddress.ip_address(BASE + n)))],
        affected_hosts=[],
        affected_users=[],
        alert_count=1,
        summary="",
    )
    event = IncidentAnalyzed(source="/bench", subject=f"{prefix}-{n}", data=data)
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="responder", names=NAMES)
        await responder.handle(ctx, [Inbound(event_id=event.id, item=event, record=None)])
        await write_context(conn, ctx)


async def wait_for(pool: asyncpg.Pool, prefix: str, count: int, state: str, timeout_s: float = 300) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            found = await pool.fetchval(
                "SELECT count(*) FROM responder_leases WHERE starts_with(incident_id, $1) AND state = $2",
                prefix + "-",
                state,
            )
            if found >= count:
                return
            await asyncio.sleep(0.05)


async def delays(pool: asyncpg.Pool, prefix: str, since: Any = None) -> dict[str, dict[str, float]]:
    rows = await pool.fetch(
        """SELECT extract(epoch FROM g.at - coalesce($2::timestamptz, l.due_at))::float8 AS sent,
                  extract(epoch FROM l.reverted_at - coalesce($2::timestamptz, l.due_at))::float8 AS done
           FROM responder_leases l JOIN responder_lease_log g ON g.step_id = l.step_id AND g.change = 'expired'
           WHERE starts_with(l.incident_id, $1)""",
        prefix + "-",
        since,
    )
    return {what: summary([r[what] for r in rows]) for what in ("sent", "done")}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {
        "n": len(ordered),
        "p50": round(cuts[49], 3),
        "p90": round(cuts[89], 3),
        "p99": round(cuts[98], 3),
        "max": round(ordered[-1], 3),
    }


async def run(leases: int, lease_s: int, down_s: float) -> dict[str, Any]:
    async with database() as url:
        return await measure(url, leases=leases, lease_s=lease_s, down_s=down_s)


async def measure(url: str, *, leases: int, lease_s: int, down_s: float) -> dict[str, Any]:
    """Leases ended while the responder runs, then while it is down, on the migrated database at ``url``."""
    pool = await create_pool(url, max_size=8)
    try:
        bench = responder(pool, lease_s)
        async with running(bench, pool, url):
            for n in range(leases):
                await block(pool, bench, n, "run")
            await wait_for(pool, "run", leases, "reverted")
        running_figures = await delays(pool, "run")

        restart = max(leases // 10, 2)
        async with running(bench, pool, url):
            for n in range(restart):
                await block(pool, bench, leases + n, "down")
            await wait_for(pool, "down", restart, "active")
        await asyncio.sleep(lease_s + down_s)  # down: every lease falls due meanwhile
        restarted_at = await pool.fetchval("SELECT now()")
        async with running(responder(pool, lease_s), pool, url):
            await wait_for(pool, "down", restart, "reverted")
        restart_figures = await delays(pool, "down", since=restarted_at)
    finally:
        await pool.close()
    return {
        "lease_s": lease_s,
        "while_running_after_due_s": running_figures,
        "down_s": down_s,
        "after_restart_s": restart_figures,
    }


def add_report(table: Table, result: dict[str, Any]) -> None:
    """Rows for the benchmark's table: how late the undos went out and were done, running and after a restart."""
    table.add_section()
    table.add_row(f"[bold]Leases of {result['lease_s']} s: undo after the due time[/bold]", "p50 / p99 / max")
    for label, phase in (
        ("responder running", "while_running_after_due_s"),
        (f"after a restart ({result['down_s']:g} s down)", "after_restart_s"),
    ):
        for what in ("sent", "done"):
            figures = result[phase][what]
            table.add_row(
                f"    {label}: {what}", f"{figures['p50']:.2f} / {figures['p99']:.2f} / {figures['max']:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leases", type=int, default=200, help="Leases made and ended while running (at most 230).")
    parser.add_argument("--lease", type=int, default=3, help="Each lease's length, in seconds.")
    parser.add_argument("--down", type=float, default=5.0, help="Seconds the responder stays down past the due times.")
    parser.add_argument("--out", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    figures = asyncio.run(run(args.leases, args.lease, args.down))
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
