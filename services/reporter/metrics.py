"""The reporter's Prometheus metrics, refreshed from the read model: incidents by severity, type and
state (all and open ones), the time-to-X of every incident as histograms, and open incidents past
an SLA target. Labels are bounded: severities, types, states, measures; never ids.

The histograms are built from the stored milestones on each refresh rather than observed as events
pass, so a redelivered event or a restart never counts an incident twice.

The stream aggregations' gauges (``vigil_stream_*``) are read from their faust tables at each scrape: the
last complete window of each, sources and reasons bounded to the most frequent ones.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.reporter import repository, windows
from services.reporter.aggregates import IncidentTimes, open_breaches
from services.reporter.measures import MEASURES, Measure, SlaTargets, durations, load_sla
from services.reporter.windows import FlappingAlert, Window, WindowSpec
from shared.errors import is_retriable
from shared.service import Runtime

log = logging.getLogger(__name__)

INCIDENTS = Gauge("vigil_incidents", "Incidents by severity, type and state.", ["severity", "type", "state"])
OPEN_INCIDENTS = Gauge(
    "vigil_incidents_open",
    "Incidents not resolved or closed, by severity, type and state.",
    ["severity", "type", "state"],
)
SLA_BREACHING = Gauge(
    "vigil_incidents_sla_breaching",
    "Open incidents whose clock has run past their severity's SLA target, by measure.",
    ["severity", "measure"],
)
# Seconds to days: a SEV1 acknowledged in a minute and a SEV4 resolved in a month both fall in a bucket.
TIME_BUCKETS: tuple[float, ...] = (
    1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 43200,
    86400, 172800, 259200, 604800, 1209600, 2592000,
)  # fmt: skip
HISTOGRAM_HELP: dict[Measure, str] = {
    "time_to_detect": "Seconds from an incident's first alert to its detection.",
    "time_to_acknowledge": "Seconds from detection to acknowledgement.",
    "time_to_contain": "Seconds from detection to containment.",
    "time_to_recover": "Seconds from detection to recovery.",
    "time_to_resolve": "Seconds from detection to resolution.",
}


class ResponseTimes(Collector):
    """Histograms of each time-to-X by severity and type, from the last refresh of the read model."""

    def __init__(self) -> None:
        self._incidents: Sequence[IncidentTimes] = ()

    def update(self, incidents: Sequence[IncidentTimes]) -> None:
        self._incidents = incidents

    def collect(self) -> Iterator[Metric]:
        yield from histograms(self._incidents)


def histograms(incidents: Iterable[IncidentTimes]) -> list[HistogramMetricFamily]:
    """One histogram family per measure, a series per (severity, type) seen."""
    counts: dict[Measure, dict[tuple[str, str], list[float]]] = {m: {} for m in MEASURES}
    for incident in incidents:
        labels = (incident.severity or "unknown", incident.type or "unknown")
        for measure, seconds in durations(incident.milestones).items():
            if seconds is not None:
                counts[measure].setdefault(labels, []).append(seconds)
    families = []
    for measure, series in counts.items():
        family = HistogramMetricFamily(
            f"vigil_incident_{measure}_seconds", HISTOGRAM_HELP[measure], labels=["severity", "type"]
        )
        for labels, values in sorted(series.items()):
            buckets = [(_le(bound), float(sum(v <= bound for v in values))) for bound in TIME_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            family.add_metric(list(labels), buckets, sum_value=sum(values))
        families.append(family)
    return families


def _le(bound: float) -> str:
    return f"{float(bound)}"


RESPONSE_TIMES = ResponseTimes()
REGISTRY.register(RESPONSE_TIMES)


async def refresh_gauges(runtime: Runtime, interval_s: float = 5.0, histograms_every: int = 6) -> None:
    """Keep the incident gauges within a few seconds of the read model, the histograms within half a minute."""
    sla = load_sla(runtime.settings.sla_file)
    rounds = 0
    while True:
        try:
            async with runtime.pool.acquire() as conn:
                counts = await repository.count_by_labels(conn)
                if rounds % histograms_every == 0:
                    RESPONSE_TIMES.update(await repository.list_incident_times(conn))
                opened = await repository.list_incident_times(conn, open_only=True)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("incident gauges not refreshed: %r", exc)
        else:
            publish(counts, opened, sla, now=datetime.now(UTC))
        rounds += 1
        await asyncio.sleep(interval_s)


def publish(
    counts: Sequence[tuple[str, str, str, int]], opened: Sequence[IncidentTimes], sla: SlaTargets, *, now: datetime
) -> None:
    INCIDENTS.clear()
    OPEN_INCIDENTS.clear()
    for severity, incident_type, state, n in counts:
        INCIDENTS.labels(severity, incident_type, state).set(n)
        if state not in ("resolved", "closed"):
            OPEN_INCIDENTS.labels(severity, incident_type, state).set(n)
    SLA_BREACHING.clear()
    for (severity, measure), n in open_breaches(opened, sla=sla, now=now).items():
        SLA_BREACHING.labels(severity, measure).set(n)


# ---- stream aggregations (services/reporter/stream.py) --------------------------------------------

STREAM_EVENTS = Counter(
    "vigil_stream_events",
    "Records the stream aggregations read, by topic (without prefix) and outcome: counted, nothing (nothing to "
    "count), stale (its windows had expired already), skipped (an event type this version does not know), invalid.",
    ["topic", "outcome"],
)
STREAM_RESTARTS = Counter(
    "vigil_stream_restarts", "Times the stream aggregations stopped on an error and were started again."
)
# Sources and reasons on /metrics beyond the most frequent ones are summed as `other`.
STREAM_LABEL_LIMIT = 20


class WindowSource(Protocol):
    """What the stream aggregations show /metrics: whether they run, and their windows now."""

    @property
    def ready(self) -> bool: ...

    def now(self) -> float: ...

    def windows(self, spec: WindowSpec) -> list[Window]: ...

    def flapping(self) -> list[FlappingAlert]: ...


class StreamWindows(Collector):
    """Gauges of the stream aggregations' last complete windows, read from their tables at each scrape."""

    def __init__(self) -> None:
        self.running = False  # this process runs the stream aggregations (VIGIL_STREAM_ENABLED)
        self.source: WindowSource | None = None  # their tables, while the app is up

    def collect(self) -> Iterator[Metric]:
        yield from stream_families(self.source, running=self.running)


def stream_families(source: WindowSource | None, *, running: bool = True) -> list[Metric]:
    """One family per windowed measure, a series per bounded label set; none while the app is not up.

    ``vigil_stream_ready`` has a series only where the aggregations should run: a reporter without them is
    not one whose aggregations are down.
    """
    ready = GaugeMetricFamily(
        "vigil_stream_ready",
        "1 when the stream aggregations run and have recovered their tables, 0 while they start or restart.",
    )
    alerts = GaugeMetricFamily(
        "vigil_stream_alerts_last_minute",
        "Alerts in the last complete minute (by the events' time), by source and outcome: accepted, deduplicated, "
        "resolved, dead_lettered.",
        labels=["source", "outcome"],
    )
    incidents = GaugeMetricFamily(
        "vigil_stream_incidents_opened_last_hour",
        "Incidents opened in the last complete hour (by the events' time), by type and severity.",
        labels=["type", "severity"],
    )
    dead_minute = GaugeMetricFamily(
        "vigil_stream_dead_letters_last_minute",
        "Dead letters in the last complete minute, by topic (alerts, events) and reason code.",
        labels=["topic", "reason"],
    )
    dead_hour = GaugeMetricFamily(
        "vigil_stream_dead_letters_last_hour",
        "Dead letters in the last complete hour, by topic (alerts, events) and reason code.",
        labels=["topic", "reason"],
    )
    flapping = GaugeMetricFamily(
        "vigil_stream_alerts_flapping",
        "Alerts that changed state more often than the threshold in the current or the last flapping window, "
        "by source.",
        labels=["source"],
    )
    families: list[Metric] = [ready, alerts, incidents, dead_minute, dead_hour, flapping]
    if running:
        ready.add_metric([], 1.0 if source is not None and source.ready else 0.0)
    if source is None:
        return families
    now = source.now()
    minute, hour = windows.ALERTS.size_s, windows.INCIDENTS.size_s
    counted = windows.last_complete(source.windows(windows.ALERTS), minute, now=now)
    for key, n in sorted(windows.bounded(counted, position=0, limit=STREAM_LABEL_LIMIT).items()):
        alerts.add_metric(list(key), n)
    for key, n in sorted(windows.last_complete(source.windows(windows.INCIDENTS), hour, now=now).items()):
        incidents.add_metric(list(key), n)
    dead = source.windows(windows.DEAD_LETTERS)
    for family, size in ((dead_minute, minute), (dead_hour, hour)):
        counted = windows.last_complete(windows.roll_up(dead, size), size, now=now)
        for key, n in sorted(windows.bounded(counted, position=1, limit=STREAM_LABEL_LIMIT).items()):
            family.add_metric(list(key), n)
    by_source: collections.Counter[tuple[str, ...]] = collections.Counter((a.source,) for a in source.flapping())
    for (name,), n in sorted(windows.bounded(by_source, position=0, limit=STREAM_LABEL_LIMIT).items()):
        flapping.add_metric([name], n)
    return families


STREAM_WINDOWS = StreamWindows()
REGISTRY.register(STREAM_WINDOWS)
