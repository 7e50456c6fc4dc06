"""Operators' merge and detach commands, applied by the detector, which owns incidents and their alerts.

A command comes from the detector's API (applied at once, then published as the record) or from the
commands topic (another tool). Either way it is applied in the caller's transaction, its events go
through the outbox, and it is audited, applied or refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.detector import domain, merging, publication, repository
from services.detector.classification import Classifier
from services.detector.correlation import CorrelationRules
from services.detector.merging import Refused
from services.detector.metrics import COMMANDS
from shared.consumer import HandlerContext
from shared.events import (
    AlertRepeat,
    AlertResolution,
    CommandRejected,
    CommandRejection,
    DetachAlerts,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentMerged,
    IncidentSnapshot,
    IncidentSplit,
    IncidentUpdated,
    MergeIncidents,
    MergeRecord,
    SplitRecord,
    new_id,
)
from shared.logs import event_ids

log = logging.getLogger(__name__)
SOURCE = "/vigil/detector"
Command = MergeIncidents | DetachAlerts
# What a split event says besides the incident's snapshot: its detached keys (at most 200 of at
# most 500 characters each, every character escaped at worst) and a few short fields.
SPLIT_OVERHEAD_BYTES = 8 * 1024


@dataclass(frozen=True)
class Applied:
    """What an applied command did, as the API answers it."""

    incident_id: str
    command_id: str
    alert_count: int
    severity: str
    merged: list[str] = field(default_factory=list)
    alerts_moved: int = 0
    new_incident_id: str | None = None
    detached: list[str] = field(default_factory=list)


async def apply(
    ctx: HandlerContext,
    command: Command,
    *,
    classifier: Classifier | None = None,
    correlations: CorrelationRules | None = None,
    make_id: Callable[[], str] = new_id,
) -> Applied | CommandRejected:
    """Apply a merge or detach; a refused one is answered with a CommandRejected event. Both are audited.

    ``correlations``: the rules in force (the shipped ones by default), for the titles and severities they set.
    """
    name = "merge" if isinstance(command, MergeIncidents) else "detach"
    # The alerts its incidents hold go out first, as they stand: the command's events follow them.
    named = command.data.incidents if isinstance(command, MergeIncidents) else []
    await publication.publish_held_of(ctx, [command.subject, *named])
    try:
        async with ctx.conn.transaction():  # a refusal leaves nothing half done
            if isinstance(command, MergeIncidents):
                applied = await _merge(ctx, command, classifier, correlations)
            else:
                applied = await _detach(ctx, command, classifier, correlations, make_id)
    except Refused as exc:
        reason = str(exc)
        rejected = CommandRejected(
            source=SOURCE,
            **command.caused_by(),
            data=CommandRejection(command_id=command.id, command=name, actor=command.data.actor, reason=reason),
        )
        ctx.emit(rejected)
        ctx.audit(
            f"incident.{name}",
            command.subject,
            principal=command.data.actor,
            outcome="refused",
            detail={"reason": reason[:500]},
        )
        log.warning("%s by %s refused: %s", command.type, command.data.actor, reason, extra=event_ids(command))
        COMMANDS.labels(name, "refused").inc()
        return rejected
    detail = (
        {"merged": ", ".join(applied.merged), "alerts": applied.alerts_moved}
        if name == "merge"
        else {"new_incident": applied.new_incident_id, "alerts": len(applied.detached)}
    )
    ctx.audit(f"incident.{name}", command.subject, principal=command.data.actor, detail=detail)
    COMMANDS.labels(name, "applied").inc()
    return applied


async def _merge(
    ctx: HandlerContext, command: MergeIncidents, classifier: Classifier | None, correlations: CorrelationRules | None
) -> Applied:
    survivor_id = command.subject
    found = await repository.lock_for_command(ctx.conn, ids=[survivor_id, *command.data.incidents])
    merged = merging.check_merge(survivor_id, command.data.incidents, {i: s for i, (s, _) in found.items()})
    survivor = found[survivor_id][1]
    others = [found[i][1] for i in merged]
    combined = merging.combine(survivor, others, classifier, correlations=correlations)
    moved = await repository.move_alerts(ctx.conn, from_ids=merged, to_id=survivor_id)
    await repository.upsert_incidents(ctx.conn, incidents=[combined])
    await repository.mark_merged(ctx.conn, ids=merged, survivor=survivor_id)
    keys = await repository.move_keys(ctx.conn, merged={i.id: i.correlation_key for i in others}, survivor=combined)
    moved_counts = {i.id: i.alert_count for i in others}
    caused = command.caused_by()
    for incident_id in merged:
        record = MergeRecord(
            survivor=survivor_id,
            merged=merged,
            actor=command.data.actor,
            note=command.data.note,
            command_id=command.id,
            alerts=moved_counts[incident_id],
            correlation_keys=keys[incident_id],
        )
        # Said of the incident merged away, on its partition: after every earlier event of it.
        ctx.emit(IncidentMerged(source=SOURCE, **(caused | {"subject": incident_id}), data=record))
    # The survivor's consumers (analysis, the commander, the read model) take the moved alerts as new ones,
    # then how they stand: repeated, resolved.
    change = domain.IncidentChange(
        combined,
        created=False,
        alerts=[m.alert for m in moved],
        type_rules={m.alert.key: m.type_rule for m in moved if m.type_rule},
    )
    _emit_snapshots(ctx, change, caused)
    await _emit_standing(ctx, survivor_id, moved, caused)
    log.info(
        "incidents %s merged into %s by %s: %d alert(s) moved",
        ", ".join(merged),
        survivor_id,
        command.data.actor,
        len(moved),
        extra=event_ids(command),
    )
    return Applied(
        incident_id=survivor_id,
        command_id=command.id,
        alert_count=combined.alert_count,
        severity=combined.severity.value,
        merged=merged,
        alerts_moved=len(moved),
    )


async def _detach(
    ctx: HandlerContext,
    command: DetachAlerts,
    classifier: Classifier | None,
    correlations: CorrelationRules | None,
    make_id: Callable[[], str],
) -> Applied:
    incident_id = command.subject
    found = await repository.lock_for_command(ctx.conn, ids=[incident_id])
    if incident_id not in found:
        raise Refused(f"no incident {incident_id}")
    standing, incident = found[incident_id]
    if standing.merged_into is not None:
        raise Refused(f"incident {incident_id} was merged into {standing.merged_into}: detach from that one")
    if standing.closed:
        raise Refused(f"incident {incident_id} has ended: its alerts are not detached")
    held = await repository.live_alerts(ctx.conn, incident_id=incident_id)
    keys = merging.check_detach(incident_id, command.data.alerts, (h.alert.key for h in held))
    leaving = set(keys)
    kept = [h.alert for h in held if h.alert.key not in leaving]
    detached = [h.alert for h in held if h.alert.key in leaving]
    new_incident_id = make_id()
    split = merging.split(
        incident, kept, detached, new_incident_id=new_incident_id, classifier=classifier, correlations=correlations
    )
    following = merging.keys_following(
        await repository.merged_keys_of(ctx.conn, incident_id=incident_id),
        kept,
        detached,
        reasons={h.alert.key: h.reason for h in held},
    )
    await repository.upsert_incidents(ctx.conn, incidents=[split.kept.incident, split.detached.incident])
    await repository.detach_alerts(ctx.conn, keys=keys, from_id=incident_id, to_id=new_incident_id, following=following)
    caused = command.caused_by()
    # The incident restated with every alert it keeps: consumers that gather per incident start again.
    parts = domain.snapshots(split.kept, max_bytes=domain.MAX_EVENT_BYTES - SPLIT_OVERHEAD_BYTES)
    first: IncidentSplit | None = None
    for snapshot in parts:
        record = SplitRecord(
            new_incident=new_incident_id,
            detached=keys,
            actor=command.data.actor,
            note=command.data.note,
            command_id=command.id,
            incident=snapshot,
        )
        event = IncidentSplit(
            source=SOURCE, **(caused if first is None else caused | {"correlationid": first.id}), data=record
        )
        first = first or event
        ctx.emit(event)
    _emit_snapshots(ctx, split.detached, caused | {"subject": new_incident_id})
    await _emit_standing(ctx, new_incident_id, [h for h in held if h.alert.key in leaving], caused)
    log.info(
        "%d alert(s) of incident %s detached into %s by %s",
        len(keys),
        incident_id,
        new_incident_id,
        command.data.actor,
        extra=event_ids(command),
    )
    return Applied(
        incident_id=incident_id,
        command_id=command.id,
        alert_count=split.kept.incident.alert_count,
        severity=split.kept.incident.severity.value,
        new_incident_id=new_incident_id,
        detached=keys,
    )


async def _emit_standing(
    ctx: HandlerContext, incident_id: str, moved: list[repository.HeldAlert], caused: dict[str, Any]
) -> None:
    """Say how moved alerts stand in their new incident (sent again, resolved), as a batch of alerts would."""
    repeated = [AlertRepeat(key=m.alert.key, repeats=m.repeats, last_seen=m.last_seen_at) for m in moved if m.repeats]
    resolved = [AlertResolution(key=m.alert.key, resolved_at=m.resolved_at) for m in moved if m.resolved_at]
    if not repeated and not resolved:
        return
    tally = (await repository.tally_alerts(ctx.conn, incident_ids=[incident_id]))[incident_id]
    parts = domain.alerts_changes(repeated, resolved, firing=tally.firing, alert_count=tally.alerts, all_resolved=False)
    first = IncidentAlertsChanged(source=SOURCE, **(caused | {"subject": incident_id}), data=parts[0])
    ctx.emit(first)
    for data in parts[1:]:
        ctx.emit(
            IncidentAlertsChanged(
                source=SOURCE, **(caused | {"subject": incident_id, "correlationid": first.id}), data=data
            )
        )


def _emit_snapshots(ctx: HandlerContext, change: domain.IncidentChange, caused: dict[str, Any]) -> None:
    """The change's snapshots, as the detector emits those of a batch: the rest of its alerts follow the first."""
    parts: list[IncidentSnapshot] = domain.snapshots(change)
    event_class = IncidentDetected if change.created else IncidentUpdated
    first = event_class(source=SOURCE, **caused, data=parts[0])
    ctx.emit(first)
    for snapshot in parts[1:]:
        ctx.emit(IncidentUpdated(source=SOURCE, **(caused | {"correlationid": first.id}), data=snapshot))
