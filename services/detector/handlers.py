"""The detector's handlers: raw alerts become incidents, repeats and resolutions; resolved incidents close."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from services.detector import (
    adapters,
    classification,
    commands,
    correlation,
    domain,
    heartbeats,
    merging,
    publication,
    repository,
    suppression,
)
from services.detector.adapters import FORMAT_HEADER, Parsed, Rejected
from services.detector.classification import Classifier
from services.detector.correlation import CorrelationError, CorrelationRules
from services.detector.heartbeats import HeartbeatWatch
from services.detector.metrics import (
    ALERTS,
    ALERTS_BY_SOURCE,
    HEARTBEAT_SEEN,
    INCIDENT_UPDATES,
    INCIDENTS_OPENED,
    RECORDS,
    RULE_RELOADS,
    SOURCE_LABELS,
)
from services.detector.suppressor import SERVICE, SUPPRESSION_ENDED, Suppressions
from shared import timers
from shared.alerts import Alert
from shared.consumer import HandlerContext, Inbound, decode_cloudevent
from shared.errors import InvalidMessage, Raced
from shared.events import (
    AlertRepeat,
    AlertResolution,
    AlertsSuppressed,
    AlertsSuppressedResolved,
    AlertSummary,
    DetachAlerts,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentStateChanged,
    IncidentUpdated,
    MergeIncidents,
    new_id,
)
from shared.logs import event_ids
from shared.topics import ALERTS_RAW

log = logging.getLogger(__name__)
SOURCE = "/vigil/detector"
# What another replica may have committed between our look-up and our write, were a lock missed.
RACED = frozenset(
    {"detector_alerts_live_key", "detector_alerts_pkey", "detector_incidents_collecting_key", "detector_waiting_pkey"}
)


def decode(record: Any) -> tuple[str, Parsed | Any]:
    """Raw records are read by the adapter of their format; everything else is a CloudEvent."""
    if not record.topic.endswith(ALERTS_RAW.name):
        return decode_cloudevent(record)
    named = next((value for name, value in record.headers or () if name == FORMAT_HEADER), None)
    format_name = named.decode("utf-8", "replace") if named else None
    try:
        parsed = adapters.parse_record(record.value, format_name=format_name)
    except Rejected as exc:
        _records(format_name if format_name in adapters.FORMATS else "unknown", exc.code).inc()
        ALERTS.labels("invalid").inc()
        raise
    # Read records are counted a batch at a time (Detector.handle): an increment takes a lock.
    # A redelivered record is a no-op; the same alert sent again in a new record is a repeat.
    where = f"{record.topic}\x1f{record.partition}\x1f{record.offset}\x1f".encode()
    return f"raw:{hashlib.sha256(where + (record.value or b'')).hexdigest()[:32]}", parsed


@functools.cache
def _records(format_name: str, outcome: str) -> Any:
    # A metric's child per label pair, looked up once: decoding is the detector's hottest path.
    return RECORDS.labels(format_name, outcome)


def _count_records(records: Sequence[Parsed]) -> None:
    """Count a batch's records read by format and outcome: one increment per pair, not per record."""
    for (format_name, outcome), n in Counter(
        (p.format, "alerts" if p.alerts else "not_alert") for p in records
    ).items():
        _records(format_name, outcome).inc(n)


_labelled_sources: set[str] = set()


def _source_label(source: str) -> str:
    """The source as a metric label: its own for the first SOURCE_LABELS sources seen, then ``other``."""
    if source not in _labelled_sources:
        if len(_labelled_sources) >= SOURCE_LABELS:
            return "other"
        _labelled_sources.add(source)
    return source


def _count_sources(alerts: Sequence[Alert]) -> None:
    """Count a batch's alerts by source and format: one increment per pair, not per alert."""
    pairs = Counter((a.source, a.format) for a in alerts)
    for (source, format_name), n in pairs.items():
        # A native alert may say any format: only the formats Vigil reads are labels of their own.
        format_label = format_name if format_name in adapters.FORMATS else "other"
        ALERTS_BY_SOURCE.labels(_source_label(source), format_label).inc(n)


@dataclass
class Stored:
    """What one batch of alerts did to the stored alerts and incidents."""

    changes: list[domain.IncidentChange] = field(default_factory=list)
    repeated: dict[str, repository.StoredAlert] = field(default_factory=dict)  # by key
    resolved: dict[str, repository.StoredAlert] = field(default_factory=dict)  # by key
    known_before: set[str] = field(default_factory=set)  # keys stored before this batch
    tallies: dict[str, repository.AlertTally] = field(default_factory=dict)  # by incident id
    waiting: int = 0  # new alerts waiting for their correlation rule's condition
    released: int = 0  # alerts that waited before and joined the incident their rule opened now
    held: Counter[str] = field(default_factory=Counter)  # suppressed sightings by outcome
    suppressed: list[domain.Held] = field(default_factory=list)  # the alerts held back, as stored
    suppressed_ended: list[repository.EndedSuppressed] = field(default_factory=list)  # held back, now resolved
    alert_bytes: dict[str, int] = field(default_factory=dict)  # by key: each new alert's JSON, as stored
    publications: dict[str, domain.Publication] = field(default_factory=dict)  # by incident id, as stored before


# How often the correlation rules file is looked at for a change (one stat call).
RULES_CHECK_S = 5.0


class RulesSource:
    """The correlation rules in force, re-read when their file changes or when asked.

    A broken change is refused and logged with its lines; the rules in force stay.
    """

    def __init__(self, path: Path | None, *, rules: CorrelationRules | None = None) -> None:
        self.path = path
        self._rules = rules if rules is not None else correlation.load_rules(path)
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime if self.path else None
        except OSError:
            return None

    def current(self) -> CorrelationRules:
        """The rules in force, after a look at the file at most every RULES_CHECK_S seconds."""
        now = time.monotonic()
        if self.path is not None and now - self._checked >= RULES_CHECK_S:
            self._checked = now
            mtime = self._stat()
            if mtime != self._mtime:
                self._mtime = mtime
                # A broken edit is logged and counted by reload, and the rules in force stay: it must not
                # stop the batch (nor the detector) that happened to look at the file.
                with contextlib.suppress(CorrelationError):
                    self.reload()
        return self._rules

    def reload(self) -> CorrelationRules:
        """Read the file again; raise CorrelationError (and keep the rules in force) when it is broken."""
        if self.path is None:
            return self._rules
        try:
            self._rules = correlation.load_rules(self.path)
        except CorrelationError as exc:
            RULE_RELOADS.labels("refused").inc()
            log.error("correlation rules %s refused, the rules in force stay: %s", self.path, "; ".join(exc.problems))
            raise
        self._mtime = self._stat()
        RULE_RELOADS.labels("loaded").inc()
        log.info("correlation rules %s loaded: %d correlation(s)", self.path, len(self._rules))
        return self._rules


class Detector:
    def __init__(
        self,
        *,
        correlation_window: timedelta,
        classifier: Classifier | None = None,
        correlation_rules: RulesSource | None = None,
        suppressions: Suppressions | None = None,
        heartbeat_watch: HeartbeatWatch | None = None,
        update_interval: timedelta = timedelta(0),
    ) -> None:
        self.window = correlation_window
        self.update_interval = update_interval  # least time between two events with an incident's new alerts
        self.heartbeat_watch = heartbeat_watch or HeartbeatWatch()
        self.classifier = classifier or classification.shipped()
        self.correlation = correlation_rules or RulesSource(None, rules=correlation.NONE)
        self.suppressions = suppressions or Suppressions(suppression.load_inhibition())
        self.timer_handlers: dict[str, timers.TimerHandler] = {
            SUPPRESSION_ENDED: self.on_suppression_ended,
            heartbeats.TIMER: self.on_heartbeat_missing,
        }

    async def handle(self, ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        records = [inbound.item for inbound in batch if isinstance(inbound.item, Parsed)]
        _count_records(records)
        alerts = [alert for parsed in records for alert in parsed.alerts]
        if alerts:
            _count_sources(alerts)
            await self.handle_alerts(ctx, alerts)
        for inbound in batch:
            event = inbound.item
            # Over (resolved or closed): later alerts open a new incident. A reopened one stays as it is
            # here; its new alerts go to a new incident, to merge if they belong together.
            if isinstance(event, IncidentStateChanged) and event.data.ends_incident():
                # What joined before it ended goes out first: the incident's history is whole.
                await publication.publish_held_of(ctx, [event.subject])
                await repository.close_incident(ctx.conn, incident_id=event.subject)
            elif isinstance(event, MergeIncidents | DetachAlerts):
                await self._command(ctx, inbound, event)

    async def _command(
        self, ctx: HandlerContext, inbound: Inbound[Any], command: MergeIncidents | DetachAlerts
    ) -> None:
        """Apply an operator's command; one whose content is refused is dead-lettered, the rest go on."""
        mark = ctx.mark()
        try:
            async with ctx.conn.transaction():  # a savepoint: commands are few, and this one's writes go if refused
                await commands.apply(ctx, command, classifier=self.classifier, correlations=self.correlation.current())
        except InvalidMessage as exc:
            ctx.drop_since(mark)
            ctx.reject(inbound, exc)

    async def on_suppression_ended(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """A silence, window or inhibiting alert ended: the alerts it held back that still fire go on to incidents."""
        released = await self.suppressions.ended(ctx.conn, timer.subject, timer.due_at)
        if released:
            # Judged again at the end's time at the earliest: this host's clock may be behind Postgres', and
            # would find the occurrence that just ended still on.
            await self.handle_alerts(ctx, released, not_before=timer.due_at)

    async def handle_alerts(
        self, ctx: HandlerContext, alerts: list[Alert], *, not_before: datetime | None = None
    ) -> None:
        """Store and correlate a batch of alerts; ``not_before``: suppression is judged no earlier than then."""
        if any(a.kind == "heartbeat" for a in alerts):
            resumed = await self._note_heartbeats(ctx, [a for a in alerts if a.kind == "heartbeat"])
            alerts = [a for a in alerts if a.kind != "heartbeat"] + resumed
            if not alerts:
                return
        stored = await self._store(ctx, alerts, not_before)
        self._account(alerts, stored)
        await self._publish_changes(ctx, stored)
        self._emit_alert_changes(ctx, stored)
        if stored.suppressed:
            self._emit_suppressed(ctx, stored.suppressed)
        if stored.suppressed_ended:
            self._emit_suppressed_ended(ctx, stored.suppressed_ended)

    async def _note_heartbeats(self, ctx: HandlerContext, beats: list[Alert]) -> list[Alert]:
        """A tool's heartbeat says its alerting works: noted (when last seen, how often), never an incident.

        Its absence is the alarm: each firing sighting moves the heartbeat's timer (``on_heartbeat_missing``).
        Returns the alerts raised while a heartbeat seen now was missing, resolved.
        """
        last = {a.key: a for a in beats}
        ended = {key: domain.resolution_time(a) for key, a in last.items() if a.status == "resolved"}
        seen = await repository.record_heartbeats(ctx.conn, beats=beats, ended=ended, learning=heartbeats.LEARNING)
        ALERTS.labels("heartbeat").inc(len(beats))
        now = time.time()
        for beat in last.values():
            if beat.status == "firing":
                HEARTBEAT_SEEN.labels(_source_label(beat.source)).set(now)
        watch = self.heartbeat_watch
        if not watch.enabled:
            return []
        await timers.schedule_many(
            ctx.conn,
            service=SERVICE,
            kind=heartbeats.TIMER,
            due={row["key"]: watch.due(row["last_seen_at"], row["interval_s"]) for row in seen},
        )
        resumed = [row for row in seen if row["resumed_alert"] is not None]
        for row in resumed:
            log.warning("heartbeat %s came back; missing since %s", row["key"], row["resumed_since"])
        return [
            heartbeats.missing_alert(row, alert_id=row["resumed_alert"], since=row["resumed_since"], status="resolved")
            for row in resumed
        ]

    async def on_heartbeat_missing(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """A heartbeat's patience ran out: unless it came meanwhile, Vigil raises an alert about it."""
        beat = await repository.lock_heartbeat(ctx.conn, key=timer.subject)
        watch = self.heartbeat_watch
        if beat is None or beat["missed_alert"] is not None or beat["last_seen_at"] is None or not watch.enabled:
            return
        since = watch.due(beat["last_seen_at"], beat["interval_s"])
        if since > timer.due_at:  # seen since this timer was set: its next timer is pending
            return
        alert_id = heartbeats.missing_alert_id(beat["key"], since)
        await repository.mark_heartbeat_missing(ctx.conn, key=beat["key"], since=since, alert_id=alert_id)
        log.warning("heartbeat %s missing since %s: raising an alert", beat["key"], since)
        await self.handle_alerts(ctx, [heartbeats.missing_alert(beat, alert_id=alert_id, since=since, status="firing")])

    def _account(self, alerts: list[Alert], stored: Stored) -> None:
        """Count every sighting under one outcome and log what changed no incident."""
        firing = sum(a.status == "firing" for a in alerts)
        accepted = sum(len(c.alerts) for c in stored.changes) - stored.released
        ALERTS.labels("accepted").inc(accepted)
        if stored.waiting:
            ALERTS.labels("waiting").inc(stored.waiting)
        for outcome, sightings in stored.held.items():  # silenced, maintenance, inhibited
            ALERTS.labels(outcome).inc(sightings)
        repeated = firing - accepted - stored.waiting - stored.held.total()
        if repeated > 0:  # every other firing sighting was counted on an alert stored before
            ALERTS.labels("repeat").inc(repeated)
            log.info("%d sighting(s) of alert(s) stored before: counted as repeats", repeated)
        # A resolution is of an alert stored before, or fired earlier in the batch; else never seen.
        fired: set[str] = set()
        unknown: list[str] = []
        for alert in alerts:
            if alert.status == "firing":
                fired.add(alert.key)
            elif alert.key in stored.known_before or alert.key in fired:
                ALERTS.labels("resolved").inc()
            else:
                ALERTS.labels("resolved_unknown").inc()
                unknown.append(alert.key)
        if unknown:
            log.info(
                "%d resolution(s) of alert(s) never seen, not stored: %s",
                len(unknown),
                ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""),
            )

    async def _publish_changes(self, ctx: HandlerContext, stored: Stored) -> None:
        """Publish each incident's new alerts now, or hold them until its update interval ends.

        An incident whose stored alerts changed (repeated, resolved) publishes what it holds first: its
        events then name its alerts in the order they came.
        """
        touched = stored.tallies.keys()
        at_once = domain.publishing_now(
            stored.changes, stored.publications, touched=touched, interval=self.update_interval
        )
        created = {c.incident.id for c in stored.changes if c.created}  # their first event goes out as it is
        now = {
            c.incident.id: c.incident for c in stored.changes if at_once[c.incident.id] and c.incident.id not in created
        }
        held: dict[str, list[bytes]] = {}  # by id: the summaries of each of its changes, to wait
        for change in stored.changes:
            if not at_once[change.incident.id]:
                summaries = domain.change_summaries(change, alert_bytes=stored.alert_bytes)
                held.setdefault(change.incident.id, []).append(publication.summaries_json(summaries))
        taking = [i for i in now if (known := stored.publications.get(i)) is not None and known.held]
        waited: dict[str, list[AlertSummary]] = {}
        if now or held:
            waited = await repository.publish_and_hold(
                ctx.conn,
                published=list(now.values()),
                taking=taking,
                holding=[(incident_id, alerts) for incident_id, batches in held.items() for alerts in batches],
            )
        for change in stored.changes:
            incident_id = change.incident.id
            if incident_id in held:
                continue
            if incident_id in waited:
                publication.emit_held(
                    ctx,
                    change.incident,
                    [*waited.pop(incident_id), *domain.change_summaries(change, alert_bytes=stored.alert_bytes)],
                )
            else:
                self._emit_snapshots(ctx, change, stored.alert_bytes)
        if now:
            INCIDENT_UPDATES.labels("published").inc(len(now))
        if held:
            INCIDENT_UPDATES.labels("held").inc(len(held))
        # Incidents with no new alerts whose stored alerts changed: what they hold goes out before that change.
        holding = [
            incident_id for incident_id in touched if stored.tallies[incident_id].held and incident_id not in now
        ]
        if holding:
            await publication.publish_held_of(ctx, holding)

    async def publish_held(self, ctx: HandlerContext, limit: int) -> int:
        """Publish the alerts held by incidents whose update interval has ended (at most ``limit``); how many."""
        return await publication.publish_due(ctx, interval=self.update_interval, limit=limit)

    def _emit_snapshots(self, ctx: HandlerContext, change: domain.IncidentChange, alert_bytes: dict[str, int]) -> None:
        parts = domain.snapshots(change, alert_bytes=alert_bytes)
        event_class = IncidentDetected if change.created else IncidentUpdated
        first = event_class(source=SOURCE, subject=change.incident.id, data=parts[0])
        ctx.emit(first)
        for snapshot in parts[1:]:
            # The rest of the batch's alerts, after the first part: same key, same partition, in order.
            ctx.emit(IncidentUpdated(source=SOURCE, subject=first.subject, correlationid=first.id, data=snapshot))
        if change.created:
            INCIDENTS_OPENED.labels(change.incident.type.value, change.incident.severity.value).inc()
            log.info(
                "incident %s opened: %s %s (%s)",
                change.incident.id,
                change.incident.severity.value,
                change.incident.type.value,
                change.incident.classification_reason,
                extra=event_ids(first),
            )

    def _emit_alert_changes(self, ctx: HandlerContext, stored: Stored) -> None:
        """One event (in bounded parts) per incident whose stored alerts were repeated or resolved."""
        by_incident: dict[str, tuple[list[AlertRepeat], list[AlertResolution]]] = {}
        for alert in stored.repeated.values():
            repeated, _ = by_incident.setdefault(alert.incident_id, ([], []))
            repeated.append(AlertRepeat(key=alert.key, repeats=alert.repeats, last_seen=alert.last_seen_at))
        for alert in stored.resolved.values():
            _, resolved = by_incident.setdefault(alert.incident_id, ([], []))
            assert alert.resolved_at is not None  # just resolved
            resolved.append(AlertResolution(key=alert.key, resolved_at=alert.resolved_at))
        for incident_id, (repeated, resolved) in by_incident.items():
            tally = stored.tallies[incident_id]
            all_resolved = (
                bool(resolved)
                and tally.type is not None
                and domain.suggests_resolving(tally.type, closed=tally.closed, firing=tally.firing)
            )
            parts = domain.alerts_changes(
                repeated, resolved, firing=tally.firing, alert_count=tally.alerts, all_resolved=all_resolved
            )
            first = IncidentAlertsChanged(source=SOURCE, subject=incident_id, data=parts[0])
            ctx.emit(first)
            for data in parts[1:]:
                ctx.emit(IncidentAlertsChanged(source=SOURCE, subject=incident_id, correlationid=first.id, data=data))
            if all_resolved:
                log.info(
                    "incident %s: all %d alert(s) resolved; the commander may resolve it",
                    incident_id,
                    tally.alerts,
                    extra=event_ids(first),
                )

    def _emit_suppressed(self, ctx: HandlerContext, held: list[domain.Held]) -> None:
        """One event (in bounded parts) per silence, window or inhibiting alert that held alerts back."""
        for subject, parts in domain.suppressed_events(held):
            # Keyed by what held them back: a suppressed alert has no incident, and one silence's
            # events then stay in order on one partition.
            first = AlertsSuppressed(source=SOURCE, subject=subject, data=parts[0])
            ctx.emit(first)
            for data in parts[1:]:
                ctx.emit(AlertsSuppressed(source=SOURCE, subject=subject, correlationid=first.id, data=data))

    def _emit_suppressed_ended(self, ctx: HandlerContext, ended: list[repository.EndedSuppressed]) -> None:
        """Held-back alerts that ended, under the subject they were held back under."""
        rows = [(e.kind, e.suppressed_by, e.key, str(e.occurrence), e.resolved_at) for e in ended]
        for subject, parts in domain.suppressed_endings(rows):
            first = AlertsSuppressedResolved(source=SOURCE, subject=subject, data=parts[0])
            ctx.emit(first)
            for data in parts[1:]:
                ctx.emit(AlertsSuppressedResolved(source=SOURCE, subject=subject, correlationid=first.id, data=data))

    async def _store(self, ctx: HandlerContext, alerts: list[Alert], not_before: datetime | None = None) -> Stored:
        """Store the alerts; the whole batch runs again if another replica stored some of them meanwhile.

        No savepoint of its own (two round trips on every batch for a rare race): the consume loop rolls
        the batch back and runs it again, and the second pass finds the other replica's alerts stored.
        """
        try:
            return await self._store_once(ctx, alerts, not_before)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name not in RACED:
                raise
            log.info("alerts stored meanwhile by another detector; the batch runs again (%s)", exc.detail)
            raise Raced(f"another detector stored some of these alerts meanwhile ({exc.constraint_name})") from exc

    async def _store_once(self, ctx: HandlerContext, alerts: list[Alert], not_before: datetime | None) -> Stored:
        """Count firing alerts stored before as repeats, correlate and store the others; then resolve.

        Within a batch an alert's last sighting says how it stands: fired, then resolved, it ends
        resolved; resolved, then fired again, it ends firing.
        """
        stored = Stored()
        firing = [a for a in alerts if a.status == "firing"]
        if firing:
            stored.known_before, stored.repeated, stored.changes = await self._store_firing(
                ctx, firing, stored, not_before
            )
        last = {a.key: a for a in alerts}  # the last sighting of each alert in the batch
        ended = {key: domain.resolution_time(a) for key, a in last.items() if a.status == "resolved"}
        if ended:
            stored.resolved = await repository.resolve_alerts(ctx.conn, resolutions=ended)
            fired = {a.key for a in firing}
            stored.known_before |= {key for key in stored.resolved if key not in fired}
            waited = await repository.resolve_waiting(ctx.conn, resolutions=ended)
            stored.known_before |= {key for key in waited if key not in fired}
            stored.suppressed_ended = await self.suppressions.resolve(ctx.conn, ended)
            stored.known_before |= {e.key for e in stored.suppressed_ended}
        touched = {a.incident_id for a in (*stored.repeated.values(), *stored.resolved.values())}
        if touched:
            stored.tallies = await repository.tally_alerts(ctx.conn, incident_ids=touched)
        return stored

    async def _store_firing(
        self, ctx: HandlerContext, alerts: list[Alert], stored: Stored, not_before: datetime | None
    ) -> tuple[set[str], dict[str, repository.StoredAlert], list[domain.IncidentChange]]:
        """Count the alerts stored before as repeats; store the suppressed ones; correlate the others.

        Returns the keys stored before, the alerts repeated (stored before or twice in the batch) and the
        changes; counts in ``stored`` the alerts that wait for their correlation rule's condition.
        """
        rules = self.correlation.current()
        routes = {a.key: rules.route(a) for a in alerts}
        # One detector at a time decides a key, however many consume the topic: the lock is held
        # until commit, and every look-up below sees what another committed before.
        await repository.lock_keys(ctx.conn, keys={domain.correlation_key(a, routes[a.key]) for a in alerts})
        # An alert's processed id expires long before its source stops re-sending it (an
        # Alertmanager fingerprint lives for weeks): a stored key is a repeat, not a new alert.
        # One waiting for its rule's condition is counted where it waits, whatever it routes to now: a rule
        # took it when it came first, and what that rule reads of it (or the rules themselves) may have
        # changed since; it is never stored a second time, live, beside its waiting self.
        sightings = Counter(a.key for a in alerts)
        repeats, waiting_before = await repository.count_repeats(ctx.conn, sightings=sightings)
        stored_before = {*repeats, *waiting_before}
        first_sightings: dict[str, Alert] = {}
        for alert in alerts:
            if alert.key not in stored_before:
                first_sightings.setdefault(alert.key, alert)
        # Silenced, in maintenance or inhibited: stored with what suppressed it, in no incident.
        fresh, stored.suppressed = await self.suppressions.hold_back(
            ctx.conn, list(first_sightings.values()), firing=alerts, held=stored.held, not_before=not_before
        )
        if not fresh:
            return stored_before, repeats, []
        keyed = {a.key: domain.correlation_key(a, routes[a.key]) for a in fresh}
        open_incidents = await repository.get_open_by_keys(ctx.conn, keys=set(keyed.values()))
        # A key (an entity, or a rule's group) without an open incident of its own may have been merged
        # into one that is open: its alerts join the survivor, after the rest of the batch.
        unowned = set(keyed.values()) - open_incidents.keys()
        survivors = await repository.get_open_survivors(ctx.conn, keys=unowned) if unowned else {}
        merged_away = [a for a in fresh if keyed[a.key] in survivors]
        plain = [a for a in fresh if keyed[a.key] not in survivors] if merged_away else fresh
        groups = {
            route.key
            for route in routes.values()
            if route is not None and route.key not in open_incidents and route.key not in survivors
        }
        waiting = await repository.get_waiting(ctx.conn, group_keys=groups) if groups else {}
        # What a condition reads of the waiting alerts is enough to judge it; the alerts are read
        # only for the groups that open an incident now.
        opening = domain.groups_opening(plain, routes, waiting, open_incidents)
        if opening:
            waiting.update(await repository.get_waiting(ctx.conn, group_keys=opening, alerts=True))
        correlated = domain.correlate_all(
            plain,
            open_incidents,
            window=self.window,
            new_id=new_id,
            classifier=self.classifier,
            rules=rules,
            routes=routes,
            waiting=waiting,
        )
        changes = correlated.changes
        if merged_away:
            changes = merging.correlate_merged(
                merged_away,
                survivors,
                changes,
                window=self.window,
                new_id=new_id,
                classifier=self.classifier,
                rules=rules,
                routes=routes,
            )
        stored.publications = await repository.upsert_incidents(
            ctx.conn, incidents=[c.incident for c in changes], created=[c.incident.id for c in changes if c.created]
        )
        # Each alert serialised once: its row's body, and the measure of what its events carry.
        bodies = {a.key: repository.alert_json(a) for c in changes for a in c.alerts}
        stored.alert_bytes = {key: len(body) for key, body in bodies.items()}
        await repository.insert_alerts(
            ctx.conn,
            alerts=[
                (a, c.incident.id, c.type_rules.get(a.key), c.reasons.get(a.key)) for c in changes for a in c.alerts
            ],
            bodies=bodies,
        )
        if correlated.taken:
            await repository.take_waiting(ctx.conn, group_keys=correlated.taken)
        if correlated.waiting:
            await repository.add_waiting(ctx.conn, placed=correlated.waiting)
        stored.waiting = len(correlated.waiting)
        stored.released = sum(len(waiting.get(key, ())) for key in correlated.taken)
        # The same alert twice in one batch: stored once (or set waiting), the other sightings counted on it.
        again = {key: n - 1 for key, n in sightings.items() if n > 1 and key not in stored_before}
        if again:
            repeats.update((await repository.count_repeats(ctx.conn, sightings=again))[0])
        return stored_before, repeats, changes
