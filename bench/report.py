"""The run's figures for people: rich tables, the machine first and the targets last."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from bench import analyzer, formats, leases, reporter, responder, stream
from bench.harness import console
from bench.targets import MISS, PASS
from shared.settings import SERVICE_NAMES


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if abs(value) >= 100 else f"{value:,.3g}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def print_report(results: dict[str, Any]) -> None:
    console.print(machine_table(results))
    figures = Table(title="Vigil benchmark", show_lines=False)
    figures.add_column("Figure")
    figures.add_column("Value", justify="right")
    throughput = results.get("detector_throughput", {})
    for mode in formats.MODES:
        if mode in throughput:
            add_throughput(figures, mode, throughput[mode])
    if comparison := throughput.get("mixed_vs_native"):
        add_comparison(figures, comparison)
    if baseline := results.get("baseline"):
        add_baseline(figures, baseline)
    if results.get("responder"):
        responder.add_report(figures, results["responder"])
    if results.get("analyzer"):
        analyzer.add_report(figures, results["analyzer"])
    if results.get("leases"):
        leases.add_report(figures, results["leases"])
    if results.get("reporter"):
        reporter.add_report(figures, results["reporter"])
    if results.get("stream_windows"):
        stream.add_report(figures, results["stream_windows"]["runs"])
    for error in results.get("errors", []):
        figures.add_section()
        figures.add_row(f"[red]{error['benchmark']} failed[/red]", Text(error["message"].splitlines()[0][:80]))
    if figures.row_count:
        console.print(figures)
    if scaling := results.get("scaling"):
        console.print(scaling_table(scaling))
    for mode, alone in results.get("detector_latency", {}).items():
        console.print(phases_table(mode, alone))
    for mode, e2e in results.get("end_to_end", {}).items():
        console.print(phases_table(mode, e2e))
        console.print(memory_table(mode, e2e))
    if results.get("targets"):
        console.print(targets_table(results["targets"]))


def machine_table(results: dict[str, Any]) -> Table:
    machine = results.get("machine", {})
    table = Table(title="Machine", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("CPU", f"{machine.get('cpu_model') or '?'}, {machine.get('cores')} cores")
    table.add_row("memory", fmt(machine.get("memory_gb"), " GB"))
    table.add_row("Python", fmt(machine.get("python")))
    table.add_row("Postgres", f"{fmt(machine.get('postgres'))} ({results.get('infrastructure', {}).get('postgres')})")
    table.add_row("broker", f"{fmt(machine.get('broker'))} ({results.get('infrastructure', {}).get('kafka')})")
    load = machine.get("load_average_at_start")
    table.add_row("load average at start (1, 5, 15 min)", ", ".join(map(str, load)) if load else "-")
    return table


def add_throughput(table: Table, mode: str, throughput: dict[str, Any]) -> None:
    table.add_section()
    table.add_row(f"[bold]Detector throughput, {mode} alerts[/bold]", "")
    table.add_row("alerts pre-produced", fmt(throughput["alerts"]))
    if mode != "native":
        table.add_row("records by format", ", ".join(f"{k} {v:,}" for k, v in throughput["records_by_format"].items()))
    table.add_row("mean record size", fmt(throughput["mean_record_bytes"], " bytes"))
    table.add_row("detector throughput", fmt(throughput["alerts_per_s"], " alerts/s"))
    if len(rounds := throughput.get("rounds_alerts_per_s", [])) > 1:
        table.add_row("each round (median above)", ", ".join(f"{r:,.0f}" for r in rounds))
    table.add_row("processing time", fmt(throughput["processing_s"], " s"))
    table.add_row("start-up to first stored alert", fmt(throughput["startup_to_first_row_s"], " s"))
    table.add_row("incidents opened", fmt(throughput["incidents_opened"]))
    table.add_row("events in the outbox", fmt(throughput["outbox_events"]))
    table.add_row("outbox drained after the last alert", fmt(throughput["outbox_drained_after_s"], " s"))
    table.add_row("detector CPU seconds", fmt(throughput["detector_cpu_s"], " s"))
    table.add_row("detector CPU per alert (after start-up)", fmt(throughput["detector_cpu_us_per_alert"], " us"))
    table.add_row("Postgres CPU per alert (embedded only)", fmt(throughput.get("postgres_cpu_us_per_alert"), " us"))
    if (reading := throughput.get("reading_us_per_alert")) is not None:
        by_format = ", ".join(f"{k} {v:.1f}" for k, v in throughput["reading_us_by_format"].items())
        table.add_row(
            "adapters alone per record (no I/O)", f"{reading:.1f} us" + (f" ({by_format})" if mode != "native" else "")
        )


def add_comparison(table: Table, comparison: dict[str, Any]) -> None:
    table.add_section()
    table.add_row("[bold]Mixed formats against native[/bold]", "")
    table.add_row(
        "detector throughput mixed / native",
        f"{comparison['mixed_alerts_per_s']:,.0f} / {comparison['native_alerts_per_s']:,.0f} alerts/s "
        f"= {comparison['throughput_ratio']:.2f}",
    )
    verdict = "[green]within[/green]" if comparison["within_limit"] else "[red]over[/red]"
    table.add_row(
        "throughput the formats cost",
        f"{comparison['formats_cost_pct']:.1f}% ({verdict} the {comparison['limit_pct']:.0f}% limit)",
    )
    if len(costs := comparison.get("rounds_formats_cost_pct", [])) > 1:
        table.add_row("each round (median above)", ", ".join(f"{c:.1f}%" for c in costs))
    table.add_row(
        "detector CPU per alert mixed / native",
        f"{fmt(comparison['mixed_cpu_us_per_alert'])} / {fmt(comparison['native_cpu_us_per_alert'])} us",
    )
    if comparison.get("mixed_reading_us_per_alert") is not None:
        share = comparison.get("reading_share_of_cpu_gap_pct")
        table.add_row(
            "adapters alone per record mixed / native",
            f"{comparison['mixed_reading_us_per_alert']:.1f} / {comparison['native_reading_us_per_alert']:.1f} us"
            + (f" ({share:.0f}% of the CPU gap)" if share is not None else ""),
        )


def add_baseline(table: Table, baseline: dict[str, Any]) -> None:
    table.add_section()
    how = f"batches of {baseline['batch']}" if baseline["mode"] == "batch" else "an insert per alert"
    table.add_row(f"[bold]Peer baseline: faust-streaming {baseline.get('faust_version') or ''}, {how}[/bold]", "")
    table.add_row("alerts pre-produced (native)", fmt(baseline["alerts"]))
    table.add_row("baseline throughput", fmt(baseline["alerts_per_s"], " alerts/s"))
    table.add_row("start-up to first stored alert", fmt(baseline["startup_to_first_row_s"], " s"))
    table.add_row("worker CPU per alert (after start-up)", fmt(baseline["worker_cpu_us_per_alert"], " us"))
    table.add_row("Postgres CPU per alert (embedded only)", fmt(baseline.get("postgres_cpu_us_per_alert"), " us"))
    table.add_row("Vigil's detector / baseline (native alerts)", fmt(baseline.get("vigil_ratio"), "x"))
    if batched := baseline.get("batched"):
        add_baseline(table, batched)


def scaling_table(scaling: dict[str, Any]) -> Table:
    table = Table(
        title=f"Detector cost per alert as its state grows ({scaling['alerts_per_measurement']:,} alerts "
        f"about {scaling['measured_incidents']} incidents per measurement)"
    )
    for column in ("State before the measurement", "Transaction per alert", "CPU per alert", "x first", "Batches"):
        table.add_column(column, justify="right" if column != "State before the measurement" else "left")
    for key, label in (("open_incidents", "open incidents"), ("alerts_per_incident", "alerts per incident")):
        rows = scaling.get(key) or []
        if rows:
            table.add_section()
        for found in rows:
            table.add_row(
                f"{found['level']:,} {label}",
                fmt(found["transaction_us_per_alert"], " us"),
                fmt(found["cpu_us_per_alert"], " us"),
                fmt(found["relative"]),
                fmt(found["batches"]),
            )
    return table


def _p(latency: dict[str, Any] | None) -> str:
    if not latency:
        return "-"
    return f"{latency['p50']:,.0f} / {latency['p95']:,.0f} / {latency['p99']:,.0f}"


def phases_table(mode: str, e2e: dict[str, Any]) -> Table:
    bound = e2e["lag_bound_s"]
    names = e2e.get("services", ["detector", "analyzer", "responder", "coordinator", "reporter"])
    alone = names == ["detector"]
    what = "The detector alone" if alone else "End to end, five services"
    table = Table(title=f"{what}, {mode} alerts (latency p50 / p95 / p99 ms; lag bound {bound:g} s)")
    milestones = () if alone else ("analysed", "planned", "notified")
    for column in (
        "Rate",
        "Published",
        "alert -> detected",
        "alert -> carried",
        *(f"-> {name}" for name in milestones),
        "Drained after",
        "Bounded lag",
        "Completion",
    ):
        table.add_column(column, justify="right")
    for phase in e2e.get("phases", []):
        latency = phase["latency_ms"]
        table.add_row(
            fmt(phase["rate_per_s"], "/s"),
            fmt(phase["publish_rate_per_s"], "/s"),
            _p(latency["detected"]),
            _p(latency.get("carried")),
            *(_p(latency[name]) for name in milestones),
            fmt(phase["drained_after_last_send_s"], " s"),
            "[green]yes[/green]" if phase["kept_up"] else "[red]no[/red]",
            fmt(phase["completion_alerts_per_s"], "/s"),
        )
    summaries = []
    for phase in e2e.get("phases", []):
        reached = ", ".join(f"{n:,} {name}" for name, n in phase["incidents_reaching"].items())
        summaries.append(
            f"{phase['rate_per_s']:,.0f}/s: {phase['alerts_sent']:,} alerts, {phase['incidents_opened']:,} incidents "
            f"({reached}), max lag {max(phase['max_consumer_lag'].values(), default=0):,} records, "
            + cpu_summary(phase.get("cpu_s", {}))
        )
    sustained = fmt(e2e.get("sustained_alerts_per_s"), " alerts/s")
    table.caption = "; ".join([f"sustained with bounded lag: {sustained}", *summaries])
    first = next((phase.get("first_incident") for phase in e2e.get("phases", []) if "first_incident" in phase), None)
    if first:
        table.caption += (
            f"; first incident complete on the reporter's timeline after {first['timeline_complete_s']:.2f} s"
        )
    return table


def cpu_summary(cpu_s: dict[str, float | None]) -> str:
    """Where a phase's CPU went, the largest first, and how busy the machine was: where the time goes."""
    spent = sorted(
        ((name, seconds) for name, seconds in cpu_s.items() if seconds is not None and not name.startswith("machine")),
        key=lambda item: -item[1],
    )
    said = "CPU s " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in spent)
    machine, capacity = cpu_s.get("machine"), cpu_s.get("machine_capacity")
    if machine is not None and capacity:
        said += f" (the machine {machine:.1f} of {capacity:.1f})"
    return said


def memory_table(mode: str, e2e: dict[str, Any]) -> Table:
    memory = e2e.get("memory_mb", {})
    table = Table(title=f"Memory (RSS, process tree) per service, MB, end to end on {mode} alerts")
    for column in ("Service", "Idle", "Under load (max)", "After load"):
        table.add_column(column, justify="right" if column != "Service" else "left")
    for name in SERVICE_NAMES:
        table.add_row(
            name,
            fmt(memory.get("idle", {}).get(name)),
            fmt(memory.get("under_load", {}).get(name)),
            fmt(memory.get("after_load", {}).get(name)),
        )
    return table


def targets_table(verdicts: list[dict[str, Any]]) -> Table:
    table = Table(title="Targets")
    for column in ("Figure", "Value", "Target", "Verdict"):
        table.add_column(column, justify="left" if column == "Figure" else "right")
    for verdict in verdicts:
        colour = {PASS: "green", MISS: "red"}.get(verdict["verdict"], "yellow")
        unit = f" {verdict['unit']}" if verdict["unit"] and verdict["unit"] != "x" else verdict["unit"]
        table.add_row(
            verdict["figure"],
            fmt(verdict["value"], unit),
            verdict["target"],
            f"[{colour}]{verdict['verdict']}[/{colour}]",
        )
    return table
