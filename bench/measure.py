"""What the benchmarks measure with: percentiles, a process tree's memory and CPU time, the machine.

The parsers are pure (they take the text of a ``/proc`` file); the readers around them return None
where ``/proc`` is not there to read (not Linux, or the process has gone).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_ms(seconds: Sequence[float]) -> dict[str, float | int] | None:
    """p50, p95, p99, max and mean of durations in seconds, in milliseconds, and how many; None if none."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return {
        "p50": round(percentile(ordered, 50) * 1000, 1),
        "p95": round(percentile(ordered, 95) * 1000, 1),
        "p99": round(percentile(ordered, 99) * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
        "mean": round(sum(ordered) / len(ordered) * 1000, 1),
        "count": len(ordered),
    }


def metric_sum(exposition: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` (``x_total``, ``x_sum``…) with these labels, in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        found.value
        for family in text_string_to_metric_families(exposition)
        for found in family.samples
        if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items())
    )


# ---- /proc parsers -------------------------------------------------------------------------------


def parse_vm_rss(status: str) -> int | None:
    """Resident memory in bytes from the text of ``/proc/<pid>/status`` (its ``VmRSS:`` line, in kB)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None  # a kernel thread, or a process being reaped


def parse_cpu_ticks(stat: str) -> int:
    """User + system CPU time, in clock ticks, from the text of ``/proc/<pid>/stat``.

    The command name, in parentheses, may hold spaces and parentheses itself: fields are counted
    after its last closing parenthesis (utime and stime are fields 14 and 15 of the whole line).
    """
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def parse_reaped_cpu_ticks(stat: str) -> int:
    """User + system CPU time, in clock ticks, of the process's children that ended and it waited for
    (cutime and cstime, fields 16 and 17 of ``/proc/<pid>/stat``)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[13]) + int(fields[14])


def parse_children(texts: Sequence[str]) -> list[int]:
    """Child process ids from the texts of ``/proc/<pid>/task/<tid>/children`` (one per thread)."""
    return [int(pid) for text in texts for pid in text.split()]


def parse_cpu_model(cpuinfo: str) -> str | None:
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return None


def parse_mem_total(meminfo: str) -> int | None:
    """Physical memory in bytes from the text of ``/proc/meminfo``."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


# ---- readers -------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """The process and its descendants, as they stand now."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        tasks = PROC / str(current) / "task"
        try:
            texts = [text for task in tasks.iterdir() if (text := _read(task / "children")) is not None]
        except OSError:
            continue
        pending.extend(parse_children(texts))
    return found


def rss_bytes(pid: int) -> int | None:
    """Resident memory of the process and its descendants; None when the process is gone."""
    sizes = [parse_vm_rss(text) for p in process_tree(pid) if (text := _read(PROC / str(p) / "status")) is not None]
    known = [size for size in sizes if size is not None]
    return sum(known) if known else None


def cpu_seconds(pid: int, *, tree: bool = True, reaped: bool = False) -> float | None:
    """CPU time the process (and, with ``tree``, its live descendants) has used so far; None if gone.

    ``reaped``: and its children that have ended, as the process counts them once it waited for them. A
    server that forks a child a connection (Postgres) has its whole work so counted, however many of its
    children came and went between two readings.
    """
    pids = process_tree(pid) if tree else [pid]
    stats = [text for p in pids if (text := _read(PROC / str(p) / "stat")) is not None]
    if not stats:
        return None
    ticks = sum(map(parse_cpu_ticks, stats))
    if reaped and stats[0].startswith(f"{pid} "):
        ticks += parse_reaped_cpu_ticks(stats[0])
    return ticks / os.sysconf("SC_CLK_TCK")


def parse_busy_ticks(stat: str) -> int | None:
    """Clock ticks all CPUs spent busy (not idle nor waiting on I/O), from /proc/stat's first line."""
    first = stat.split("\n", 1)[0].split()
    if not first or first[0] != "cpu":
        return None
    ticks = [int(t) for t in first[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks) - ticks[3] - ticks[4]


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine has spent busy so far, every process counted (None off Linux)."""
    ticks = parse_busy_ticks(_read(PROC / "stat") or "")
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """The machine a run measures: CPU, cores, memory, Python, and how busy it was when the run began."""
    memory = parse_mem_total(_read(PROC / "meminfo") or "")
    load: tuple[float, float, float] | None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu_model": parse_cpu_model(_read(PROC / "cpuinfo") or "") or platform.processor() or None,
        "cores": os.cpu_count(),
        "memory_gb": round(memory / 2**30, 1) if memory else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "load_average_at_start": [round(value, 2) for value in load] if load else None,
    }
