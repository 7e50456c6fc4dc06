"""The reporter's handlers: every event lands as history and on its incident's timeline (one about no
incident, alerts held back from incidents, on none); some also update the read model (incident, alerts,
suppressed alerts, milestones, actions).

Events of a type this version does not know are kept too (``decode``): a newer service's events
reach the history and render generically on the timeline until a renderer is added.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from services.reporter import repository
from services.reporter.measures import milestones_reached
from services.reporter.timeline import HistoryEvent, ModelData, render
from shared import cloudevents
from shared.consumer import HandlerContext, Inbound, decode_cloudevent
from shared.errors import InvalidMessage, UnknownEventType
from shared.events import (
    AlertsSuppressed,
    AlertsSuppressedResolved,
    EventBase,
    IncidentAlertsChanged,
    IncidentAnalyzed,
    IncidentAssigned,
    IncidentDetected,
    IncidentEdited,
    IncidentEscalated,
    IncidentMerged,
    IncidentSplit,
    IncidentState,
    IncidentStateChanged,
    IncidentUpdated,
    ResponsePlanned,
    ResponseStepChanged,
    ResponseStepsChanged,
    ResponseStepValidated,
    TaskCompleted,
    TasksCancelled,
    TasksCreated,
)
from shared.timeline import detached_from, merged_in

Item = EventBase | HistoryEvent
# The envelope an event of an unknown type must still carry to be kept (CloudEvents' `time` is
# optional: without it, the time the broker took the record).
_REQUIRED = ("id", "source", "subject")


def decode(record: Any) -> tuple[str, Item]:
    """Decode a Vigil event; one of a type this version does not know becomes a bare ``HistoryEvent``."""
    try:
        return decode_cloudevent(record)
    except UnknownEventType:
        timestamp = getattr(record, "timestamp", None)
        received = datetime.fromtimestamp(timestamp / 1000, UTC) if isinstance(timestamp, int) else None
        event = foreign_event(record.value, record.headers, received=received)
        return event.id, event


def foreign_event(
    value: bytes | None, headers: cloudevents.Headers, *, received: datetime | None = None
) -> HistoryEvent:
    """The envelope and JSON object of an event of an unknown type, or InvalidMessage saying what is wrong."""
    attributes = cloudevents.attributes_of(headers)
    event_type = attributes.get("type", "")
    missing = [name for name in _REQUIRED if not attributes.get(name)]
    if missing:
        raise InvalidMessage(f"{event_type} lacks the CloudEvents attribute(s) {', '.join(missing)}")
    if not attributes.get("time"):
        if received is None:
            raise InvalidMessage(f"{event_type} has no time and the record none either")
        attributes["time"] = received.isoformat()
    try:
        time = datetime.fromisoformat(attributes["time"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidMessage(f"{event_type}: time {attributes['time']!r} is not ISO 8601") from exc
    if time.tzinfo is None:
        raise InvalidMessage(f"{event_type}: time {attributes['time']!r} has no timezone")
    try:
        # Stored in UTC: a time whose UTC is before year 1 or after 9999 could not be (0001-01-01T00:00+01:00).
        time = time.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidMessage(f"{event_type}: time {attributes['time']!r} is out of range") from exc
    try:
        # orjson, as for known types: the stdlib's json takes what the database's JSON codec cannot write
        # (a lone surrogate, an integer past 64 bits), and the event would then stop the reporter at every retry.
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"{event_type}: body is not JSON Vigil reads: {exc}") from exc
    cloudevents.refuse_nul(value or b"", attributes)
    if not isinstance(data, dict):
        raise InvalidMessage(f"{event_type}: body is not a JSON object")
    return HistoryEvent(
        id=attributes["id"],
        type=event_type,
        source=attributes["source"],
        subject=attributes["subject"],
        time=time,
        data=data,
        correlationid=attributes.get("correlationid"),
        causationid=attributes.get("causationid"),
    )


def history_of(item: Item) -> HistoryEvent:
    if isinstance(item, HistoryEvent):
        return item
    return HistoryEvent(
        id=item.id,
        type=getattr(item, "type"),  # noqa: B009 - every concrete event has its type
        source=item.source,
        subject=item.subject,
        time=item.time,
        data=ModelData(getattr(item, "data")),  # noqa: B009 - every concrete event has data
        correlationid=item.correlationid,
        causationid=item.causationid,
        model=item,
    )


# ---- read-model projections, one per event type that changes more than the timeline ----------


async def on_snapshots(ctx: HandlerContext, events: Sequence[IncidentDetected | IncidentUpdated]) -> None:
    """A run of incident events (one per incident the detector touched in a batch) in two round trips."""
    await repository.apply_snapshots(
        ctx.conn,
        changes=[
            repository.SnapshotChange(e.subject, e.data, detected=isinstance(e, IncidentDetected), at=e.time)
            for e in events
        ],
    )


async def on_alerts_changed(ctx: HandlerContext, event: IncidentAlertsChanged) -> None:
    """Repeat counts, last sightings and resolutions onto the stored alerts."""
    await repository.apply_alert_changes(ctx.conn, incident_id=event.subject, change=event.data)


async def on_suppressed(ctx: HandlerContext, event: AlertsSuppressed) -> None:
    """Alerts held back from incidents join the alert history, with what held them back."""
    await repository.apply_suppressed(ctx.conn, alerts=event.data, at=event.time)


async def on_analyses(ctx: HandlerContext, events: Sequence[IncidentAnalyzed]) -> None:
    """A run of analyses onto their incidents, in one round trip."""
    await repository.set_fields_of(
        ctx.conn,
        ("analysis", "indicators", "services"),
        [
            (
                e.subject,
                e.data.model_dump(mode="json"),
                list(dict.fromkeys(i.value for i in e.data.indicators)),
                list(e.data.impact.business_services) if e.data.impact else [],
            )
            for e in events
        ],
    )


async def on_plans(ctx: HandlerContext, events: Sequence[ResponsePlanned]) -> None:
    """A run of response plans onto their incidents, in one round trip."""
    await repository.set_fields_of(ctx.conn, ("plan",), [(e.subject, e.data.model_dump(mode="json")) for e in events])


async def on_escalated(ctx: HandlerContext, event: IncidentEscalated) -> None:
    await repository.set_fields(ctx.conn, incident_id=event.subject, commander=event.data.commander)


async def on_edited(ctx: HandlerContext, event: IncidentEdited) -> None:
    changes = {name: change.after for name, change in event.data.changes.items()}
    # The reason shown beside a severity or type a person set is theirs, not the detector's steps to the old one.
    said = f"set by {event.data.actor}: {event.data.reason}"
    await repository.apply_edits(ctx.conn, incident_id=event.subject, changes=changes, reason=said)


async def on_assigned(ctx: HandlerContext, event: IncidentAssigned) -> None:
    if event.data.role == "commander":
        await repository.set_fields(ctx.conn, incident_id=event.subject, commander=event.data.person)


async def on_state_changed(ctx: HandlerContext, event: IncidentStateChanged) -> None:
    resolution = event.data.resolution if event.data.to_state == IncidentState.RESOLVED else None
    await repository.apply_state(
        ctx.conn,
        incident_id=event.subject,
        state=event.data.to_state.value,
        milestones=milestones_reached(event.data.to_state, resolution),
        at=event.time,
        resolution=resolution,
    )


async def on_steps_changed(ctx: HandlerContext, events: Sequence[ResponseStepChanged | ResponseStepsChanged]) -> None:
    """A run of step changes (the commonest event by far) in one round trip."""
    await repository.apply_steps(
        ctx.conn, changes=[(e.subject, change, e.time) for e in events for change in e.changes]
    )


async def on_validated(ctx: HandlerContext, event: ResponseStepValidated) -> None:
    """Whether an action's effect held (an undo's check says nothing of the action's effectiveness)."""
    check = event.data
    if check.of == "action" and check.outcome in ("validated", "failed"):
        await repository.set_validated(
            ctx.conn,
            incident_id=event.subject,
            step_id=check.step_id,
            validated=check.outcome == "validated",
            at=event.time,
        )


async def on_suppressed_ended(ctx: HandlerContext, event: AlertsSuppressedResolved) -> None:
    await repository.end_suppressed(ctx.conn, ended=event.data, at=event.time)


async def on_tasks_created(ctx: HandlerContext, event: TasksCreated) -> None:
    await repository.add_tasks(ctx.conn, incident_id=event.subject, tasks=event.data.tasks, at=event.time)


async def on_task_done(ctx: HandlerContext, event: TaskCompleted) -> None:
    await repository.task_done(ctx.conn, incident_id=event.subject, done=event.data, at=event.time)


async def on_tasks_cancelled(ctx: HandlerContext, event: TasksCancelled) -> None:
    await repository.tasks_cancelled(ctx.conn, incident_id=event.subject, dropped=event.data, at=event.time)


async def on_merged(ctx: HandlerContext, event: IncidentMerged) -> None:
    """The incident merged away points at its survivor; the survivor's timeline says so (and shows its history).

    Its alerts move to the survivor, whose own events bring them there: kept here too, each would be listed
    twice in the alert history, this copy firing for ever once the survivor's had ended.
    """
    await repository.ensure_incident(ctx.conn, incident_id=event.subject)
    await repository.set_fields(ctx.conn, incident_id=event.subject, merged_into=event.data.survivor)
    await repository.drop_alerts(ctx.conn, incident_id=event.subject)
    await repository.ensure_incident(ctx.conn, incident_id=event.data.survivor)
    title = await repository.title_of(ctx.conn, incident_id=event.subject)
    await repository.add_entry(
        ctx.conn, event=event, incident_id=event.data.survivor, entry=merged_in(event, title=title)
    )


async def on_split(ctx: HandlerContext, event: IncidentSplit) -> None:
    """Detached alerts leave the incident (the new incident's own events bring them there); it is restated."""
    await repository.ensure_incident(ctx.conn, incident_id=event.subject)
    await repository.apply_split(ctx.conn, incident_id=event.subject, split=event.data)
    if event.data.incident.part == 1:
        await repository.ensure_incident(ctx.conn, incident_id=event.data.new_incident)
        await repository.add_entry(
            ctx.conn, event=event, incident_id=event.data.new_incident, entry=detached_from(event)
        )


async def on_foreign(ctx: HandlerContext, event: HistoryEvent) -> None:
    """An event of a type this version does not know may still say whether a step's action held."""
    step_id, validated = event.data.get("step_id"), event.data.get("validated")
    if isinstance(step_id, str) and isinstance(validated, bool):
        await repository.set_validated(
            ctx.conn, incident_id=event.subject, step_id=step_id, validated=validated, at=event.time
        )


Projection = Callable[[HandlerContext, Any], Awaitable[None]]
RunProjection = Callable[[HandlerContext, Sequence[Any]], Awaitable[None]]
# The commonest events: a run of consecutive ones with the same projection is applied at once, in order,
# before what follows it (incident events detected and updated make one run).
RUN_PROJECTIONS: dict[type[Item], RunProjection] = {
    IncidentDetected: on_snapshots,
    IncidentUpdated: on_snapshots,
    IncidentAnalyzed: on_analyses,
    ResponsePlanned: on_plans,
    ResponseStepChanged: on_steps_changed,
    ResponseStepsChanged: on_steps_changed,
}
PROJECTIONS: dict[type[Item], Projection] = {
    IncidentAlertsChanged: on_alerts_changed,
    AlertsSuppressed: on_suppressed,
    AlertsSuppressedResolved: on_suppressed_ended,
    IncidentEscalated: on_escalated,
    IncidentStateChanged: on_state_changed,
    IncidentEdited: on_edited,
    IncidentAssigned: on_assigned,
    ResponseStepValidated: on_validated,
    TasksCreated: on_tasks_created,
    TaskCompleted: on_task_done,
    TasksCancelled: on_tasks_cancelled,
    IncidentMerged: on_merged,
    IncidentSplit: on_split,
    HistoryEvent: on_foreign,
}


# Events whose projections update the incident's row: it is made to exist for the whole batch at once.
UPDATES_INCIDENT: tuple[type[Item], ...] = (
    IncidentDetected,
    IncidentUpdated,
    IncidentAlertsChanged,
    IncidentEdited,
    IncidentStateChanged,
)


async def handle(ctx: HandlerContext, batch: Sequence[Inbound[Item]]) -> None:
    """Keep every event as history with its timeline line, then apply the projections in order.

    The reporter never rejects an event, so it spares itself a savepoint per event.
    """
    history = [history_of(inbound.item) for inbound in batch]
    await repository.add_history(ctx.conn, events=history, entries=[render(event) for event in history])
    incidents = {inbound.item.subject for inbound in batch if isinstance(inbound.item, UPDATES_INCIDENT)}
    if incidents:
        await repository.ensure_incidents(ctx.conn, incident_ids=incidents)
    run: list[Item] = []
    run_project: RunProjection | None = None
    for inbound in batch:
        item = inbound.item
        project_run = RUN_PROJECTIONS.get(type(item))
        if run_project is not None and project_run is not run_project:  # the run ends: applied first
            await run_project(ctx, run)
            run, run_project = [], None
        if project_run is not None:
            run.append(item)
            run_project = project_run
            continue
        project = PROJECTIONS.get(type(item))
        if project is not None:
            await project(ctx, item)
    if run_project is not None:
        await run_project(ctx, run)
