"""The reporter's handlers: every event lands on its incident's timeline and updates the read model."""

from __future__ import annotations

from services.reporter import repository
from shared.consumer import HandlerContext, dispatch_each
from shared.events import (
    AcknowledgeIncident,
    AddNote,
    ApproveStep,
    AssignRole,
    ChangeOffered,
    ChangeState,
    CommandRejected,
    DenyStep,
    EditIncident,
    EffectCompleted,
    EscalationExhausted,
    EventBase,
    IncidentAlertsChanged,
    IncidentAnalyzed,
    IncidentAssigned,
    IncidentDetected,
    IncidentEdited,
    IncidentEscalated,
    IncidentState,
    IncidentStateChanged,
    IncidentUpdated,
    ResolutionSuggested,
    ResolveIncident,
    ResponsePlanned,
    ResponseStepChanged,
    TaskCompleted,
)
from shared.timeline import TimelineEntry, timeline_entry


async def record(ctx: HandlerContext, event: EventBase) -> None:
    """Put the event on its incident's timeline (the incident row exists already)."""
    await repository.add_timeline(ctx.conn, event=event, entry=timeline_entry(event))


async def record_if_known(ctx: HandlerContext, event: EventBase) -> None:
    """Commands name an incident id anyone may type: no row is created for an unknown one."""
    if await repository.incident_exists(ctx.conn, incident_id=event.subject):
        await record(ctx, event)


async def on_snapshot(ctx: HandlerContext, event: IncidentDetected | IncidentUpdated) -> None:
    detected = isinstance(event, IncidentDetected)
    await repository.apply_snapshot(
        ctx.conn, incident_id=event.subject, snapshot=event.data, detected=detected, at=event.time
    )
    entry = timeline_entry(event)
    if event.data.parts > 1:
        # One batch's alerts came in several events: say which this is.
        entry = TimelineEntry(entry.actor, f"{entry.summary} (part {event.data.part} of {event.data.parts})")
    await repository.add_timeline(ctx.conn, event=event, entry=entry)


async def on_alerts_changed(ctx: HandlerContext, event: IncidentAlertsChanged) -> None:
    """Repeat counts, last sightings and resolutions onto the stored alerts; one line on the timeline."""
    await repository.ensure_incident(ctx.conn, incident_id=event.subject)
    await repository.apply_alert_changes(ctx.conn, incident_id=event.subject, change=event.data)
    await record(ctx, event)


async def on_analyzed(ctx: HandlerContext, event: IncidentAnalyzed) -> None:
    await repository.set_fields(ctx.conn, incident_id=event.subject, analysis=event.data.model_dump(mode="json"))
    await record(ctx, event)


async def on_planned(ctx: HandlerContext, event: ResponsePlanned) -> None:
    await repository.set_fields(ctx.conn, incident_id=event.subject, plan=event.data.model_dump(mode="json"))
    await record(ctx, event)


async def on_escalated(ctx: HandlerContext, event: IncidentEscalated) -> None:
    await repository.set_fields(ctx.conn, incident_id=event.subject, commander=event.data.commander)
    await record(ctx, event)


STAMPS = {IncidentState.ACKNOWLEDGED: "acknowledged_at", IncidentState.RESOLVED: "resolved_at"}


async def on_edited(ctx: HandlerContext, event: IncidentEdited) -> None:
    changes = {name: change.after for name, change in event.data.changes.items()}
    await repository.apply_edits(ctx.conn, incident_id=event.subject, changes=changes)
    await record(ctx, event)


async def on_assigned(ctx: HandlerContext, event: IncidentAssigned) -> None:
    if event.data.role == "commander":
        await repository.set_fields(ctx.conn, incident_id=event.subject, commander=event.data.person)
    await record(ctx, event)


async def on_state_changed(ctx: HandlerContext, event: IncidentStateChanged) -> None:
    fields: dict[str, object] = {"state": event.data.to_state.value}
    if event.data.to_state in STAMPS:
        fields[STAMPS[event.data.to_state]] = event.time
    await repository.set_fields(ctx.conn, incident_id=event.subject, **fields)
    await record(ctx, event)


HANDLERS = {
    IncidentDetected: on_snapshot,
    IncidentUpdated: on_snapshot,
    IncidentAlertsChanged: on_alerts_changed,
    IncidentAnalyzed: on_analyzed,
    ResponsePlanned: on_planned,
    IncidentEscalated: on_escalated,
    IncidentStateChanged: on_state_changed,
    CommandRejected: record_if_known,
    AcknowledgeIncident: record_if_known,
    ResolveIncident: record_if_known,
    EscalationExhausted: record,
    ResolutionSuggested: record,
    EffectCompleted: record_if_known,
    ResponseStepChanged: record_if_known,
    IncidentEdited: on_edited,
    IncidentAssigned: on_assigned,
    ChangeOffered: record_if_known,
    TaskCompleted: record_if_known,
    ChangeState: record_if_known,
    EditIncident: record_if_known,
    AddNote: record_if_known,
    AssignRole: record_if_known,
    ApproveStep: record_if_known,
    DenyStep: record_if_known,
}
# The reporter never rejects an event, so it spares itself a savepoint per event.
handle = dispatch_each(HANDLERS, savepoints=False)  # type: ignore[arg-type]
