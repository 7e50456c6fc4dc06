"""Benchmarks of Vigil on real infrastructure, with a faust-streaming peer baseline and targets.

``python -m bench.run [--only NAME,NAME…] [--alerts N] [--rates 200,1000,5000] [--out FILE]``

By default (``make bench``), every benchmark: detector throughput on native and mixed formats
(``bench/detector.py``), the faust baseline on the same stream (``bench/baseline.py``), the
detector's cost per alert as its state grows (``bench/scaling.py``), the detector alone and then the
five services end to end at fixed rates, with latency percentiles, lag and memory
(``bench/pipeline.py``), and on Postgres alone the responder's steps (``bench/responder.py``), the
analyzer's intel and analyses (``bench/analyzer.py``), the reporter's queries (``bench/reporter.py``)
and how late leases end (``bench/leases.py``), then the reporter's stream windows
(``bench/stream.py``). ``--only`` picks some. The figures go to a table (``bench/report.py``),
judged against the targets (``bench/targets.py``), and to JSON.

Kafka and Postgres are embedded unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set. Each
benchmark gets its own database and topic prefix, both removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    analyzer,
    baseline,
    detector,
    formats,
    leases,
    measure,
    pipeline,
    reporter,
    responder,
    scaling,
    stream,
    targets,
)
from bench.harness import LOGS_DIR, RESULTS_DIR, BenchError, Infrastructure, console, database_factory, versions
from bench.harness import infrastructure as servers
from bench.report import print_report
from shared.service import settle_heap
from shared.settings import VigilSettings
from vigil.demo import EstateAlerts

DEFAULT_OUT = RESULTS_DIR / "latest.json"
Benchmark = Callable[[Infrastructure, argparse.Namespace], Awaitable[dict[str, Any]]]


async def bench_responder(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """Planning and dispatch, steps executed per second, and a slow target (``bench/responder.py``)."""
    try:
        return await responder.bench_responder(args, database_factory(infra))
    except responder.Failed as exc:
        raise BenchError(str(exc), partial=exc.partial) from exc


async def bench_analyzer(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """Threat-intel loads and lookups on a million entries, then analyses per second (``bench/analyzer.py``)."""
    alerts = EstateAlerts(hosts=args.hosts, seed=args.seed, prefix="bench")
    return await analyzer.bench_analyzer(args, database_factory(infra), alerts.make)


async def bench_stream(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The reporter's faust windows: incident events counted per second, CPU each, restart (``bench/stream.py``)."""
    options = argparse.Namespace(
        events=args.stream_events, alerts=args.stream_alerts, repeats=10, seed=args.seed, timeout=args.timeout
    )
    return {"runs": await stream.bench_on(infra.kafka, options)}


async def bench_reporter(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """The query API's queries at 100,000 incidents and 10 million alerts (``bench/reporter.py``)."""
    try:
        return await reporter.bench_reporter(args, database_factory(infra))
    except reporter.Failed as exc:
        raise BenchError(str(exc), partial=exc.partial) from exc


async def bench_leases(infra: Infrastructure, args: argparse.Namespace) -> dict[str, Any]:
    """How late each lease's undo goes out and is done, responder running and after a restart (``bench/leases.py``)."""
    async with database_factory(infra)() as url:
        return await leases.measure(url, leases=args.leases, lease_s=args.lease_s, down_s=args.lease_down_s)


# --only's names, the key of each benchmark's figures, and the benchmark, in the order they run.
BENCHMARKS: dict[str, tuple[str, Benchmark]] = {
    "throughput": ("detector_throughput", detector.bench_detector),
    "baseline": ("baseline", baseline.bench_baseline),
    "scaling": ("scaling", scaling.bench_scaling),
    "latency": ("detector_latency", pipeline.bench_detector_latency),
    "e2e": ("end_to_end", pipeline.bench_end_to_end),
    "responder": ("responder", bench_responder),
    "analyzer": ("analyzer", bench_analyzer),
    "reporter": ("reporter", bench_reporter),
    "leases": ("leases", bench_leases),
    "stream": ("stream_windows", bench_stream),
}
DEFAULT_SET = tuple(BENCHMARKS)
# Benchmarks on Postgres alone: no broker is started for a run of only these.
WITHOUT_KAFKA = ("responder", "analyzer", "reporter", "leases")


def parse_only(text: str) -> list[str]:
    chosen = list(BENCHMARKS) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(BENCHMARKS)} or all (not {', '.join(unknown)})")
    return [name for name in BENCHMARKS if name in chosen]


def rounds(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least one round (not {count})")
    return count


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only",
        type=parse_only,
        default=list(DEFAULT_SET),
        help=f"benchmarks to run, comma-separated, or all (default: {','.join(DEFAULT_SET)})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the figures as JSON")
    parser.add_argument("--seed", type=int, default=1, help="seed of the alert generator")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for a backlog to be stored (s)")
    parser.add_argument(
        "--stall",
        type=float,
        default=120.0,
        help="fail when a consumer stores, or the responder finishes, nothing for (s)",
    )
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="longest wait for a service's /readyz")
    parser.add_argument(
        "--formats",
        choices=(*formats.MODES, "both"),
        help="alerts as native JSON, in each tool's own format (mixed), or both in turn "
        "(default: both for the throughput benchmark, native end to end)",
    )
    group = parser.add_argument_group("detector throughput and the baseline")
    group.add_argument(
        "--alerts", type=int, default=100_000, help="alerts pre-produced for the detector and the baseline"
    )
    group.add_argument("--hosts", type=int, default=2000, help="hosts the pre-produced alerts are spread over")
    group.add_argument(
        "--rounds",
        type=rounds,
        default=1,
        help="runs of each format mode, taken in turn; the median is reported, and mixed against native by round",
    )
    group.add_argument(
        "--baseline",
        choices=(*baseline.MODES, "both"),
        default="both",
        help="the faust agent stores each alert (the straightforward pipeline the ratio is taken to), "
        "a batch at a time, or both in turn",
    )
    group.add_argument(
        "--baseline-batch", type=int, default=100, help="alerts a batch in the faust agent (stream.take)"
    )
    group = parser.add_argument_group("stream windows")
    group.add_argument("--stream-events", type=int, default=5000, help="incident events the faust windows count")
    group.add_argument("--stream-alerts", type=int, default=10, help="new alerts in each of those events")
    group = parser.add_argument_group("scaling")
    group.add_argument("--scaling-max", type=int, default=10_000, help="largest level of either sweep")
    group.add_argument("--scaling-alerts", type=int, default=1000, help="alerts in each level's measurement")
    group.add_argument("--scaling-rounds", type=int, default=10, help="rounds a measurement's alerts are sent in")
    group = parser.add_argument_group("end to end")
    group.add_argument(
        "--rates", type=pipeline.parse_rates, default=[200.0, 1000.0, 5000.0], help="alerts/s, one phase each"
    )
    group.add_argument("--duration", type=float, default=10.0, help="seconds of publishing at each rate")
    group.add_argument("--e2e-hosts", type=int, default=200, help="hosts each phase's alerts are spread over")
    group.add_argument(
        "--lag-bound",
        type=float,
        default=5.0,
        help="a rate is sustained if the pipeline drains within (s) of the last alert",
    )
    group.add_argument("--drain-timeout", type=float, default=120.0, help="longest wait for the pipeline to drain (s)")
    group = parser.add_argument_group("responder, analyzer, reporter (Postgres alone)")
    group.add_argument("--incidents", type=int, default=100, help="incidents in each responder scenario")
    group.add_argument("--incident-steps", type=int, default=10, help="webhook steps each incident's playbook makes")
    group.add_argument(
        "--slow-delay", type=float, default=2.0, help="seconds the slow receiver takes to answer each step"
    )
    group.add_argument(
        "--wait-slow",
        action="store_true",
        help="wait for every slow receiver's step too (incidents/2 x steps x delay / 2 s), not only the fast ones",
    )
    group.add_argument("--intel-entries", type=int, default=1_000_000, help="entries of the analyzer's intel feed")
    group.add_argument("--analyzer-incidents", type=int, default=1000, help="incidents the analyzer analyses twice")
    group.add_argument("--analyzer-alerts", type=int, default=5, help="new alerts in each incident event")
    group.add_argument("--analyzer-batch", type=int, default=100, help="incident events a transaction")
    group.add_argument("--reporter-incidents", type=int, default=100_000, help="incidents loaded for the reporter")
    group.add_argument("--reporter-alerts", type=int, default=10_000_000, help="alerts loaded for the reporter")
    group.add_argument("--reporter-repeats", type=int, default=30, help="times each reporter query is timed")
    group = parser.add_argument_group("leases (Postgres alone)")
    group.add_argument("--leases", type=int, default=200, help="leases made and ended while the responder runs")
    group.add_argument("--lease-s", type=int, default=3, help="each lease's length (s)")
    group.add_argument(
        "--lease-down-s", type=float, default=5.0, help="how long the responder is down past the due times"
    )
    return parser.parse_args(argv)


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    settings = VigilSettings()
    return {
        "benchmarks": args.only,
        "alerts": args.alerts,
        "hosts": args.hosts,
        "rounds": args.rounds,
        "seed": args.seed,
        "formats": {"detector_throughput": args.formats or "both", "end_to_end": args.formats or "native"},
        "consumer_batch_size": settings.consumer_batch_size,
        "consumer_poll_ms": settings.consumer_poll_ms,
        "gc_young_threshold": settings.gc_young_threshold,
        "baseline": {"mode": args.baseline, "batch": args.baseline_batch},
        "stream_windows": {"events": args.stream_events, "alerts_per_event": args.stream_alerts},
        "scaling": {"max": args.scaling_max, "alerts": args.scaling_alerts, "rounds": args.scaling_rounds},
        "end_to_end": {
            "rates": args.rates,
            "duration_s": args.duration,
            "hosts": args.e2e_hosts,
            "lag_bound_s": args.lag_bound,
        },
        "responder": {
            "incidents": args.incidents,
            "incident_steps": args.incident_steps,
            "slow_delay_s": args.slow_delay,
            "wait_slow": args.wait_slow,
            "effects_poll_s": settings.effects_poll_s,
        },
        "analyzer": {
            "intel_entries": args.intel_entries,
            "incidents": args.analyzer_incidents,
            "alerts_per_event": args.analyzer_alerts,
            "batch": args.analyzer_batch,
        },
        "leases": {"leases": args.leases, "lease_s": args.lease_s, "down_s": args.lease_down_s},
        "reporter": {
            "incidents": args.reporter_incidents,
            "alerts": args.reporter_alerts,
            "repeats": args.reporter_repeats,
        },
    }


def add_ratio(results: dict[str, Any]) -> None:
    """Vigil's detector throughput as a multiple of the baseline's, both on the same native alerts."""
    vigil = targets.dig(results, "detector_throughput", "native", "alerts_per_s")
    peer = targets.dig(results, "baseline", "alerts_per_s")
    if vigil and peer:
        results["baseline"]["vigil_ratio"] = round(vigil / peer, 2)
        results["baseline_ratio"] = results["baseline"]["vigil_ratio"]
    if vigil and (batched := targets.dig(results, "baseline", "batched", "alerts_per_s")):
        results["baseline"]["batched"]["vigil_ratio"] = round(vigil / batched, 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": measure.machine(),  # before anything starts: the load average is the machine's own
        "parameters": parameters(args),
        "errors": [],
    }
    # The analyzer's and responder's benchmarks run the services' handlers in this process: under the
    # garbage collector's settings each service runs under, as the figures are the services'.
    settle_heap(VigilSettings().gc_young_threshold)
    with servers(kafka_needed=any(name not in WITHOUT_KAFKA for name in args.only)) as infra:
        results["infrastructure"] = {"kafka": infra.kafka_kind, "postgres": infra.postgres_kind}
        results["machine"].update(await versions(infra))
        where = "" if infra.kafka_kind == "not used" else f" at {infra.kafka.bootstrap_servers}"
        console.log(f"kafka: {infra.kafka_kind}{where}; postgres: {infra.postgres_kind}")
        for name in args.only:
            key, bench = BENCHMARKS[name]
            console.rule(key.replace("_", " "))
            try:
                results[key] = await bench(infra, args)
            except BenchError as exc:
                if exc.partial:
                    results[key] = exc.partial
                console.print(f"[red]{key} failed:[/red]")
                console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
                results["errors"].append({"benchmark": key, "message": str(exc)})
    add_ratio(results)
    results["targets"] = targets.evaluate(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    try:
        results = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted[/red]: services, broker and Postgres stopped")
        return 130
    print_report(results)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.log(f"figures written to {out}; services' output in {LOGS_DIR}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
