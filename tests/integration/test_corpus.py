"""Every record of the public sample corpus through the real detector, each one accounted for.

The corpus lives next to the project (``../shared/corpus/<dir>/*.jsonl``, one record a line) and
Vigil must not need it: the test is skipped, saying so, when it is absent. Each record is
published as it is, with no format header, so that the detector has to recognise it; afterwards
every record must be exactly one of: an alert stored on an incident, a record read and skipped
as not an alert, a repeat (or the resolution) of an alert stored before, the resolution of an
alert never seen (which opens nothing and is counted as such), or a dead letter with its code
and reason.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

import asyncpg
import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services.detector.adapters import ADAPTERS, Parsed, Rejected, parse_record
from services.detector.domain import BASE_SEVERITY
from services.detector.handlers import Detector, decode
from shared.alerts import Alert
from shared.events import IncidentType, Severity
from shared.kafka import group_id, make_consumer
from shared.settings import VigilSettings
from shared.topics import ALERTS_DLQ, ALERTS_RAW, TopicNames
from tests.helpers import committed, consume_loop, eventually, produce, read_all

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"sample corpus {CORPUS} is absent (Vigil does not need it)"),
]

RECORDS_METRIC = "vigil_detector_records_total"
ALERTS_METRIC = "vigil_detector_alerts_total"
# Heartbeats and test findings prove a pipe works; they must never page anyone as SEV1/SEV2.
NOT_URGENT = {"heartbeat", "test"}


class Outcome(StrEnum):
    STORED = "stored"  # raised at least one alert not stored before
    NOT_ALERT = "not_alert"  # read, and accounted as not an alert
    REPEAT = "repeat"  # only sightings or resolutions of alerts stored before
    RESOLVED_UNKNOWN = "resolved_unknown"  # only resolutions of alerts never seen
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class CorpusRecord:
    directory: str
    line: int  # 1-based, in its file
    value: bytes

    @property
    def where(self) -> str:
        return f"{self.directory}:{self.line}"


@dataclass
class Accounted:
    record: CorpusRecord
    format: str
    outcome: Outcome


@dataclass
class Ledger:
    """What the corpus, read in order, should have done to the stored alerts."""

    stored: dict[str, Alert] = field(default_factory=dict)  # key -> the alert as it first fired
    ends_resolved: set[str] = field(default_factory=set)  # stored keys whose last sighting is a resolution
    firing_sightings: int = 0
    resolutions: int = 0  # of alerts stored before
    unknown_resolutions: int = 0  # of alerts never seen

    def read(self, parsed: Parsed) -> Outcome:
        """Record the alerts of one record; return what the record amounts to."""
        new = known = 0
        for alert in parsed.alerts:
            if alert.status == "firing":
                self.firing_sightings += 1
                if alert.key in self.stored:
                    known += 1
                else:
                    self.stored[alert.key] = alert
                    new += 1
                self.ends_resolved.discard(alert.key)
            elif alert.key in self.stored:
                self.resolutions += 1
                self.ends_resolved.add(alert.key)
                known += 1
            else:
                self.unknown_resolutions += 1
        if not parsed.alerts:
            return Outcome.NOT_ALERT
        return Outcome.STORED if new else Outcome.REPEAT if known else Outcome.RESOLVED_UNKNOWN


def corpus_records() -> list[CorpusRecord]:
    """Every non-blank line of every corpus file, byte for byte, in directory and file order."""
    found: list[CorpusRecord] = []
    for path in sorted(CORPUS.glob("*/*.jsonl")):
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if line.strip():
                found.append(CorpusRecord(path.parent.name, number, line))
    return found


def recognised_format(value: bytes) -> str:
    """The format whose adapter claims the record's shape (for records it then refused)."""
    try:
        payload = json.loads(value)
    except ValueError:
        return "-"
    return next((adapter.name for adapter in ADAPTERS if adapter.matches(payload)), "-")


def records_metric() -> Counter[tuple[str, str]]:
    """vigil_detector_records by (format, outcome), as this process counted so far."""
    counts: Counter[tuple[str, str]] = Counter()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == RECORDS_METRIC:
                counts[(sample.labels["format"], sample.labels["outcome"])] += int(sample.value)
    return counts


def alerts_metric() -> Counter[str]:
    """vigil_detector_alerts by outcome, as this process counted so far."""
    counts: Counter[str] = Counter()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == ALERTS_METRIC:
                counts[sample.labels["outcome"]] += int(sample.value)
    return counts


async def topic_messages(settings: VigilSettings, topic: str) -> int:
    """How many messages the topic holds, from its offsets: no waiting for ones that never come."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        return sum(ends[tp] - starts[tp] for tp in partitions)
    finally:
        await consumer.stop()


async def _all_committed(settings: VigilSettings, topic: str, expected: int) -> bool:
    # ``produce`` writes every record to partition 0, in corpus order.
    return await committed(settings, group_id(settings, "detector"), topic, 0) == expected


def table(accounted: list[Accounted]) -> str:
    """One line per corpus directory and format: how its records were accounted for."""
    rows = Counter((a.record.directory, a.format, a.outcome) for a in accounted)
    groups = sorted({(d, f) for d, f, _ in rows})
    outcomes = list(Outcome)
    header = f"{'corpus dir':<22} {'format':<14} {'records':>7} " + " ".join(f"{o.value:>16}" for o in outcomes)
    lines = [header, "-" * len(header)]
    for directory, format_name in groups:
        counts = [rows[(directory, format_name, o)] for o in outcomes]
        lines.append(f"{directory:<22} {format_name:<14} {sum(counts):>7} " + " ".join(f"{n:>16}" for n in counts))
    totals = [sum(n for (_, _, o), n in rows.items() if o is outcome) for outcome in outcomes]
    lines.append(f"{'total':<37} {sum(totals):>7} " + " ".join(f"{n:>16}" for n in totals))
    return "\n".join(lines)


async def test_every_corpus_record_is_accounted_for(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    corpus = corpus_records()
    assert corpus, f"{CORPUS} holds no records"
    raw = names(ALERTS_RAW)
    records_before, alerts_before = records_metric(), alerts_metric()
    await produce(settings, raw, [(None, record.value, []) for record in corpus])
    detector = Detector(correlation_window=timedelta(minutes=30))
    async with consume_loop(settings, pool, service="detector", topics=[raw], decoder=decode, handler=detector.handle):
        await eventually(lambda: _all_committed(settings, raw, len(corpus)), timeout=60)
    counted, alert_outcomes = records_metric() - records_before, alerts_metric() - alerts_before

    dlq = names(ALERTS_DLQ)
    dead = await read_all(settings, dlq, expect=await topic_messages(settings, dlq))
    dead_by_value: dict[bytes, list[dict[str, bytes]]] = {}
    for message in dead:
        dead_by_value.setdefault(message.value, []).append(dict(message.headers))
    stored = {
        row["key"]: row
        for row in await pool.fetch(
            """SELECT a.key, a.source, a.title, a.repeats, a.body->>'format' AS format, a.body->>'kind' AS kind,
                      to_jsonb(a)->>'resolved_at' AS resolved_at, i.id AS incident_id
               FROM detector_alerts a LEFT JOIN detector_incidents i ON i.id = a.incident_id"""
        )
    }
    incidents = {row["id"]: row for row in await pool.fetch("SELECT * FROM detector_incidents")}

    problems: list[str] = []
    accounted: list[Accounted] = []
    ledger = Ledger()
    for record in corpus:
        if record.value in dead_by_value:
            headers = dead_by_value[record.value].pop(0)
            if not dead_by_value[record.value]:
                del dead_by_value[record.value]
            accounted.append(Accounted(record, recognised_format(record.value), Outcome.DEAD_LETTERED))
            problems += _dead_letter_problems(record, headers)
            continue
        try:
            parsed = parse_record(record.value)
        except Rejected as exc:
            accounted.append(Accounted(record, recognised_format(record.value), Outcome.DEAD_LETTERED))
            problems.append(f"{record.where}: refused ({exc.code}: {exc.reason}) but not on {dlq}")
            continue
        outcome = ledger.read(parsed)
        problems += _stored_problems(record, parsed, ledger, stored)
        accounted.append(Accounted(record, parsed.format, outcome))
    problems += [
        f"dead letter not from the corpus, or one record dead-lettered twice: {v[:120]!r}" for v in dead_by_value
    ]

    # Nothing lost, nothing counted twice: the detector's own tallies agree with the records.
    outcomes = Counter(a.outcome for a in accounted)
    if sum(outcomes.values()) != len(corpus):
        problems.append(f"{sum(outcomes.values())} records accounted for, {len(corpus)} in the corpus")
    if sum(counted.values()) != len(corpus):
        problems.append(f"{RECORDS_METRIC} counted {sum(counted.values())} records, {len(corpus)} were published")
    expected_metric: Counter[tuple[str, str]] = Counter()
    for a in accounted:
        if a.outcome is Outcome.NOT_ALERT:
            expected_metric[(a.format, "not_alert")] += 1
        elif a.outcome in (Outcome.STORED, Outcome.REPEAT, Outcome.RESOLVED_UNKNOWN):
            expected_metric[(a.format, "alerts")] += 1
    read_by_metric = {k: n for k, n in counted.items() if k[1] in ("alerts", "not_alert") and n}
    if read_by_metric != dict(expected_metric):
        problems.append(f"{RECORDS_METRIC} by format says {read_by_metric}, the records say {dict(expected_metric)}")
    if len(dead) != outcomes[Outcome.DEAD_LETTERED]:
        problems.append(f"{len(dead)} dead letters on {dlq} for {outcomes[Outcome.DEAD_LETTERED]} refused records")
    if set(stored) != set(ledger.stored):
        problems.append(
            f"alerts stored that never fired: {sorted(set(stored) - set(ledger.stored))}; "
            f"fired but not stored: {sorted(set(ledger.stored) - set(stored))}"
        )
    repeated = ledger.firing_sightings - len(ledger.stored)
    if (counted_repeats := sum(row["repeats"] for row in stored.values())) != repeated:
        problems.append(f"{counted_repeats} repeats counted on stored alerts; the corpus repeats {repeated}")
    wrongly_resolved = {
        k for k, row in stored.items() if (row["resolved_at"] is not None) != (k in ledger.ends_resolved)
    }
    if wrongly_resolved:
        problems.append(
            f"resolved when their tool says they fire, or firing when it says they ended: {wrongly_resolved}"
        )
    expected_alerts = {
        "accepted": len(ledger.stored),
        "repeat": repeated,
        "resolved": ledger.resolutions,
        "resolved_unknown": ledger.unknown_resolutions,
        "invalid": outcomes[Outcome.DEAD_LETTERED],
    }
    if (said := {k: alert_outcomes[k] for k in expected_alerts}) != expected_alerts:
        problems.append(f"{ALERTS_METRIC} by outcome says {said}, the records say {expected_alerts}")
    problems += _incident_problems(incidents, stored, ledger.stored)

    assert not problems, "\n".join([table(accounted), "", *problems])
    assert outcomes[Outcome.STORED] > 0 and incidents


def _dead_letter_problems(record: CorpusRecord, headers: dict[str, bytes]) -> list[str]:
    code = headers.get("vigil_dlq_code", b"").decode()
    reason = headers.get("vigil_dlq_reason", b"").decode()
    problems = []
    if not code or not reason.strip():
        problems.append(f"{record.where}: dead-lettered without a code or a reason ({code!r}, {reason!r})")
    if code == "unknown_format":
        problems.append(f"{record.where}: no adapter recognised it: {reason}")
    try:
        parse_record(record.value)
    except Rejected as exc:
        if exc.code != code:
            problems.append(f"{record.where}: dead-lettered as {code!r}, but the adapter refuses it as {exc.code!r}")
    else:
        problems.append(f"{record.where}: dead-lettered ({code}: {reason}) though its adapter reads it")
    return problems


def _stored_problems(
    record: CorpusRecord, parsed: Parsed, ledger: Ledger, stored: dict[str, asyncpg.Record]
) -> list[str]:
    """Each alert the record fired, or resolved after it fired, is stored on an incident as its format read it."""
    problems = []
    for alert in parsed.alerts:
        row = stored.get(alert.key)
        if alert.key not in ledger.stored:
            if row is not None:
                problems.append(f"{record.where}: the resolution of {alert.key}, never seen firing, was stored")
        elif row is None:
            problems.append(f"{record.where}: alert {alert.key} is not stored")
        elif row["incident_id"] is None:
            problems.append(f"{record.where}: alert {alert.key} belongs to no incident")
        elif (row["format"], row["source"]) != (parsed.format, alert.source):
            problems.append(
                f"{record.where}: alert {alert.key} stored as format {row['format']!r} from {row['source']!r}, "
                f"read as {parsed.format!r} from {alert.source!r}"
            )
    return problems


def _incident_problems(
    incidents: dict[str, asyncpg.Record], stored: dict[str, asyncpg.Record], alerts: dict[str, Alert]
) -> list[str]:
    """Each incident holds the alerts it says, about one entity, with a title, type and severity that fit them."""
    members: dict[str, list[Alert]] = {}
    for key, row in stored.items():
        if row["incident_id"] is not None and key in alerts:
            members.setdefault(row["incident_id"], []).append(alerts[key])
    problems = []
    for incident_id, incident in incidents.items():
        held = members.get(incident_id, [])
        where = f"incident {incident_id} ({incident['correlation_key']})"
        if not held:
            problems.append(f"{where}: holds no alert")
            continue
        if incident["alert_count"] != len(held):
            problems.append(f"{where}: alert_count {incident['alert_count']}, holds {len(held)}")
        if {a.entity for a in held} != {incident["correlation_key"]}:
            problems.append(f"{where}: holds alerts about {sorted({a.entity for a in held})}")
        title = incident["title"] or ""
        if not title.strip() or not any(a.title in title for a in held):
            problems.append(f"{where}: title {title!r} names none of its alerts")
        if incident["type"] not in IncidentType._value2member_map_ or not incident["classification_reason"]:
            problems.append(f"{where}: type {incident['type']!r} ({incident['classification_reason']!r})")
        severity = Severity(incident["severity"])
        if not incident["severity_reason"]:
            problems.append(f"{where}: {severity.value} without a reason")
        real = [a for a in held if a.kind not in NOT_URGENT]
        if not real and severity in (Severity.SEV1, Severity.SEV2):
            kinds = sorted({a.kind for a in held})
            problems.append(f"{where}: {severity.value} from {', '.join(kinds)} records only ({incident['title']!r})")
        if real:
            floor = BASE_SEVERITY[max((a.severity for a in real), key=lambda s: s.rank)]
            if severity.urgency < floor.urgency:
                problems.append(f"{where}: {severity.value}, below {floor.value} for its most severe real alert")
    return problems
