"""Pure rendering of events into timeline entries: who caused an event, and what it means."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import (
    AcknowledgeIncident,
    CommandRejected,
    EffectCompleted,
    EscalationExhausted,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEscalated,
    IncidentStateChanged,
    IncidentUpdated,
    ResolveIncident,
    ResponsePlanned,
)


@dataclass(frozen=True)
class TimelineEntry:
    actor: str
    summary: str


def service_of(event: EventBase) -> str:
    """`/vigil/coordinator/api` -> `coordinator`."""
    parts = event.source.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0] == "vigil" else event.source


def timeline_entry(event: EventBase) -> TimelineEntry:
    """Say who caused an event and what it means, in one line."""
    actor = service_of(event)
    match event:
        case IncidentDetected(data=d):
            summary = f"{d.severity.value} {d.type.value} detected: {d.title} ({d.classification_reason})"
        case IncidentUpdated(data=d):
            summary = f"{len(d.new_alerts)} more alert(s), {d.alert_count} in all; now {d.severity.value}"
        case IncidentAnalyzed(data=d):
            summary = f"analysis: {d.summary}"
        case ResponsePlanned(data=d):
            waiting = sum(a.requires_approval for a in d.actions)
            summary = f"plan {d.playbook!r}: {len(d.actions)} actions, {waiting} awaiting approval"
        case IncidentEscalated(data=d):
            summary = f"escalated to {d.commander} via {d.channel}: {d.reason}"
        case IncidentStateChanged(data=d):
            actor = d.actor
            before = d.from_state.value if d.from_state else "new"
            summary = f"state {before} -> {d.to_state.value}" + (f": {d.note}" if d.note else "")
        case EscalationExhausted(data=d):
            summary = (
                f"escalation exhausted: {len(d.paged)} people of rotation {d.rotation!r} paged "
                f"({', '.join(d.paged)}), nobody acknowledged"
            )
        case EffectCompleted(data=d):
            summary = f"{d.kind} to {d.target} {d.status} after {d.attempts} attempt(s)" + (
                f": {d.error}" if d.error else ""
            )
        case CommandRejected(data=d):
            actor = d.actor
            summary = f"{d.command} rejected: {d.reason}"
        case AcknowledgeIncident(data=d) | ResolveIncident(data=d):
            actor = d.actor
            verb = "acknowledge" if isinstance(event, AcknowledgeIncident) else "resolve"
            summary = f"{verb} requested" + (f": {d.note}" if d.note else "")
        case _:
            summary = getattr(event, "type", event.source)
    return TimelineEntry(actor=actor, summary=summary)
