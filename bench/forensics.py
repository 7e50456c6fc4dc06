"""Benchmark of the analyzer's forensics: reading alerts, and analysing an incident as it grows.

``python -m bench.forensics [--alerts 10000] [--batch 200] [--attackers 10000] [--out FILE]``

Postgres is embedded unless DATABASE_URL is set (a fresh database is created on it and dropped).

1. Extraction: every alert of the sample corpus (``../shared/corpus``, when present) read by
   ``forensic.evidence_of`` with the shipped noise list, and Wazuh-like alerts with a raw record.
2. Incremental analysis: one incident grows to ``--alerts`` alerts in batches of ``--batch``, each batch
   one incident event through the analyzer's handler in one transaction, the alerts coming from
   ``--attackers`` addresses. A batch reads its own alerts and looks up only the values they name; the
   analysis carries the worst indicators and the counts of all. What grows with the incident's
   distinct addresses is the asset inventory's lookup of every one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.intel import database
from services.analyzer import forensic
from services.analyzer.handlers import analyse_incident
from services.detector.adapters import Rejected, parse_record
from services.detector.domain import summarise
from shared.alerts import Alert
from shared.consumer import HandlerContext
from shared.db import create_pool
from shared.events import AlertSummary, IncidentDetected, IncidentSnapshot, IncidentType, IncidentUpdated, Severity
from shared.topics import TopicNames

CORPUS = Path(__file__).parents[2] / "shared" / "corpus"
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def wazuh_like(n: int, attackers: int = 1 << 24) -> AlertSummary:
    """A Wazuh sshd alert from one of ``attackers`` addresses, with the raw record Wazuh sends."""
    a = n % attackers
    attacker = f"45.{(a >> 16) % 256}.{(a >> 8) % 256}.{a % 256}"
    raw = {
        "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
        "rule": {"level": 10, "description": "sshd: brute force", "id": "5712", "groups": ["sshd"]},
        "agent": {"id": "004", "name": "web-01", "ip": "10.0.1.132"},
        "full_log": f"sshd[2100]: Failed password for root from {attacker} port 4022 ssh2",
        "data": {"srcip": attacker, "dstuser": "root"},
        "location": "/var/log/auth.log",
    }
    alert = Alert(
        id=str(n),
        source="wazuh",
        title="sshd: brute force",
        description=raw["full_log"],  # type: ignore[arg-type]
        severity="high",  # type: ignore[arg-type]
        time=T0 + timedelta(seconds=n),
        host="web-01",
        user="root",
        src_ip=attacker,  # type: ignore[arg-type]
        raw=raw,
        format="wazuh",
    )
    return summarise(alert)


def corpus() -> list[AlertSummary]:
    found = []
    for file in sorted(CORPUS.glob("*/*.jsonl")):
        for line in file.read_bytes().splitlines():
            try:
                found += [summarise(a) for a in parse_record(line).alerts]
            except Rejected:
                continue  # records no adapter reads (the corpus keeps a few on purpose)
    return found


def extraction(alerts: list[AlertSummary], rounds: int) -> dict[str, float]:
    noise = forensic.shipped_noise()
    started = time.perf_counter()
    for _ in range(rounds):
        for alert in alerts:
            forensic.evidence_of(alert, noise)
    seconds = time.perf_counter() - started
    return {"alerts": len(alerts) * rounds, "alerts_per_s": round(len(alerts) * rounds / seconds, 1)}


def _event(n: int, alerts: list[AlertSummary], count: int) -> IncidentDetected | IncidentUpdated:
    snapshot = IncidentSnapshot(
        title="sshd brute force",
        type=IncidentType.SECURITY_BREACH,
        severity=Severity.SEV2,
        classification_reason="bench",
        severity_reason="bench",
        correlation_key="host:web-01",
        alert_count=count,
        first_seen=T0,
        last_seen=alerts[-1].time,
        hosts=["web-01"],
        users=["root"],
        new_alerts=alerts,
    )
    kind = IncidentDetected if n == 0 else IncidentUpdated
    return kind(source="/vigil/detector", subject="inc-bench", data=snapshot)


async def growth(total: int, batch: int, attackers: int) -> dict[str, Any]:
    alerts = [wazuh_like(n, attackers) for n in range(total)]
    async with database() as url:
        pool = await create_pool(url, max_size=2)
        try:
            seconds: list[float] = []
            for n, start in enumerate(range(0, total, batch)):
                event = _event(n, alerts[start : start + batch], start + batch)
                began = time.perf_counter()
                async with pool.acquire() as conn, conn.transaction():
                    ctx = HandlerContext(conn=conn, service="analyzer", names=TopicNames(""))
                    await analyse_incident(ctx, event, noise=forensic.shipped_noise())
                seconds.append(time.perf_counter() - began)
        finally:
            await pool.close()
    return {
        "alerts": total,
        "batch": batch,
        "attackers": attackers,
        "first_batches_ms": round(statistics.mean(seconds[:5]) * 1000, 1),
        "last_batches_ms": round(statistics.mean(seconds[-5:]) * 1000, 1),
        "alerts_per_s": round(total / sum(seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=10_000, help="Alerts the incident grows to.")
    parser.add_argument("--batch", type=int, default=200, help="Alerts per incident event.")
    parser.add_argument("--attackers", type=int, default=10_000, help="Distinct source addresses of the alerts.")
    parser.add_argument("--out", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    figures: dict[str, Any] = {"wazuh_like": extraction([wazuh_like(n) for n in range(1000)], rounds=1)}
    if sample := corpus():
        figures["corpus"] = extraction(sample, rounds=5)
    figures["incremental"] = asyncio.run(growth(args.alerts, args.batch, args.attackers))
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
