"""The detector's handlers: raw alerts become incidents, repeats and resolutions; resolved incidents close."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from services.detector import adapters, classification, domain, repository
from services.detector.adapters import FORMAT_HEADER, Parsed, Rejected
from services.detector.classification import Classifier
from services.detector.metrics import ALERTS, INCIDENTS_OPENED, RECORDS
from shared.alerts import Alert
from shared.consumer import HandlerContext, Inbound, decode_cloudevent
from shared.events import (
    AlertRepeat,
    AlertResolution,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentState,
    IncidentStateChanged,
    IncidentUpdated,
    new_id,
)
from shared.logs import event_ids
from shared.topics import ALERTS_RAW

log = logging.getLogger(__name__)
SOURCE = "/vigil/detector"
# Each retry follows another replica's commit of some of the same alerts: a few are plenty.
STORE_ATTEMPTS = 3


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
    _records(parsed.format, "alerts" if parsed.alerts else "not_alert").inc()
    # A redelivered record is a no-op; the same alert sent again in a new record is a repeat.
    where = f"{record.topic}\x1f{record.partition}\x1f{record.offset}\x1f".encode()
    return f"raw:{hashlib.sha256(where + (record.value or b'')).hexdigest()[:32]}", parsed


@functools.cache
def _records(format_name: str, outcome: str) -> Any:
    # A metric's child per label pair, looked up once: decoding is the detector's hottest path.
    return RECORDS.labels(format_name, outcome)


@dataclass
class Stored:
    """What one batch of alerts did to the stored alerts and incidents."""

    changes: list[domain.IncidentChange] = field(default_factory=list)
    repeated: dict[str, repository.StoredAlert] = field(default_factory=dict)  # by key
    resolved: dict[str, repository.StoredAlert] = field(default_factory=dict)  # by key
    known_before: set[str] = field(default_factory=set)  # keys stored before this batch
    tallies: dict[str, repository.AlertTally] = field(default_factory=dict)  # by incident id


ENDED = frozenset({IncidentState.RESOLVED, IncidentState.CLOSED})


class Detector:
    def __init__(self, *, correlation_window: timedelta, classifier: Classifier | None = None) -> None:
        self.window = correlation_window
        self.classifier = classifier or classification.shipped()

    async def handle(self, ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        alerts = [alert for inbound in batch if isinstance(inbound.item, Parsed) for alert in inbound.item.alerts]
        if alerts:
            await self.handle_alerts(ctx, alerts)
        for inbound in batch:
            event = inbound.item
            # Over (resolved or closed): later alerts open a new incident. A reopened one stays as it is
            # here; its new alerts go to a new incident, to merge if they belong together.
            if isinstance(event, IncidentStateChanged) and event.data.to_state in ENDED:
                await repository.close_incident(ctx.conn, incident_id=event.subject)

    async def handle_alerts(self, ctx: HandlerContext, alerts: list[Alert]) -> None:
        stored = await self._store(ctx, alerts)
        self._account(alerts, stored)
        for change in stored.changes:
            self._emit_snapshots(ctx, change)
        self._emit_alert_changes(ctx, stored)

    def _account(self, alerts: list[Alert], stored: Stored) -> None:
        """Count every sighting under one outcome and log what changed no incident."""
        firing = sum(a.status == "firing" for a in alerts)
        accepted = sum(len(c.alerts) for c in stored.changes)
        ALERTS.labels("accepted").inc(accepted)
        if firing > accepted:  # every other firing sighting was counted on an alert stored before
            ALERTS.labels("repeat").inc(firing - accepted)
            log.info(
                "%d sighting(s) of %d alert(s) stored before: counted as repeats",
                firing - accepted,
                len(stored.repeated),
            )
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

    def _emit_snapshots(self, ctx: HandlerContext, change: domain.IncidentChange) -> None:
        parts = domain.snapshots(change)
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

    async def _store(self, ctx: HandlerContext, alerts: list[Alert]) -> Stored:
        """Store the alerts in a savepoint, again if another replica stored some of them meanwhile."""
        attempt = 1
        while True:
            try:
                async with ctx.conn.transaction():
                    return await self._store_once(ctx, alerts)
            except asyncpg.UniqueViolationError as exc:
                # Another replica committed one of these alerts between our look-up and our COPY:
                # looked up again, it is a repeat.
                if exc.constraint_name != "detector_alerts_live_key" or attempt == STORE_ATTEMPTS:
                    raise
                attempt += 1
                log.info("alerts stored meanwhile by another detector; looking again (%s)", exc.detail)

    async def _store_once(self, ctx: HandlerContext, alerts: list[Alert]) -> Stored:
        """Count firing alerts stored before as repeats, correlate and store the others; then resolve.

        Within a batch an alert's last sighting says how it stands: fired, then resolved, it ends
        resolved; resolved, then fired again, it ends firing.
        """
        stored = Stored()
        firing = [a for a in alerts if a.status == "firing"]
        if firing:
            stored.known_before, stored.repeated, stored.changes = await self._store_firing(ctx, firing)
        last = {a.key: a for a in alerts}  # the last sighting of each alert in the batch
        ended = {key: domain.resolution_time(a) for key, a in last.items() if a.status == "resolved"}
        if ended:
            stored.resolved = await repository.resolve_alerts(ctx.conn, resolutions=ended)
            fired = {a.key for a in firing}
            stored.known_before |= {key for key in stored.resolved if key not in fired}
        touched = {a.incident_id for a in (*stored.repeated.values(), *stored.resolved.values())}
        if touched:
            stored.tallies = await repository.tally_alerts(ctx.conn, incident_ids=touched)
        return stored

    async def _store_firing(
        self, ctx: HandlerContext, alerts: list[Alert]
    ) -> tuple[set[str], dict[str, repository.StoredAlert], list[domain.IncidentChange]]:
        """Count the alerts stored before as repeats; correlate and store the others.

        Returns the keys stored before, the alerts repeated (stored before or twice in the batch) and the changes.
        """
        # An alert's processed id expires long before its source stops re-sending it (an
        # Alertmanager fingerprint lives for weeks): a stored key is a repeat, not a new alert.
        sightings = Counter(a.key for a in alerts)
        repeats = await repository.count_repeats(ctx.conn, sightings=sightings)
        first_sightings: dict[str, Alert] = {}
        for alert in alerts:
            if alert.key not in repeats:
                first_sightings.setdefault(alert.key, alert)
        fresh = list(first_sightings.values())
        stored_before = set(repeats)
        if not fresh:
            return stored_before, repeats, []
        keys = {domain.correlation_key(a) for a in fresh}
        open_incidents = await repository.get_open_by_keys(ctx.conn, keys=keys)
        changes = domain.correlate(fresh, open_incidents, window=self.window, new_id=new_id, classifier=self.classifier)
        await repository.upsert_incidents(ctx.conn, incidents=[c.incident for c in changes])
        await repository.insert_alerts(
            ctx.conn,
            alerts=[(a, c.incident.id, c.type_rules.get(a.key)) for c in changes for a in c.alerts],
        )
        # The same alert twice in one batch: stored once, the other sightings counted on it.
        again = {key: n - 1 for key, n in sightings.items() if n > 1 and key not in repeats}
        if again:
            repeats.update(await repository.count_repeats(ctx.conn, sightings=again))
        return stored_before, repeats, changes
