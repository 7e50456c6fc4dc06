"""Pure rendering of events into timeline entries: who caused an event, and what it means."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from shared.events import (
    AcknowledgeIncident,
    AddNote,
    AlertCorrelation,
    AlertRepeat,
    AlertResolution,
    AlertsSuppressed,
    AlertsSuppressedResolved,
    AlertSummary,
    ApproveStep,
    AssignRole,
    ChangeOffered,
    ChangeState,
    CommandRejected,
    ContainmentConfirmed,
    ContainmentIneffective,
    ContainmentWatch,
    DenyStep,
    DetachAlerts,
    EditIncident,
    EffectCompleted,
    EscalationExhausted,
    EventBase,
    EvidenceChanged,
    IncidentAlertsChanged,
    IncidentAnalyzed,
    IncidentAssigned,
    IncidentDetected,
    IncidentEdited,
    IncidentEscalated,
    IncidentMerged,
    IncidentSplit,
    IncidentStateChanged,
    IncidentUpdated,
    MergeIncidents,
    ResolutionSuggested,
    ResolveIncident,
    ResponseLeaseChanged,
    ResponsePlanned,
    ResponseStepChanged,
    ResponseStepsChanged,
    ResponseStepValidated,
    RollbackOffered,
    RunStep,
    StepChange,
    TaskCompleted,
    TasksCancelled,
    TasksCreated,
)

# How many alert keys one timeline line names before it says how many more there are.
KEYS_NAMED = 3
# How many distinct reasons alerts joined an incident for a line names, and how long each may be.
REASONS_NAMED = 3
REASON_CHARS = 120


@dataclass(frozen=True)
class TimelineEntry:
    actor: str
    summary: str


def service_of(event: EventBase) -> str:
    """`/vigil/coordinator/api` -> `coordinator`."""
    parts = event.source.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0] == "vigil" else event.source


# How a lesson for the post-mortem reads on the timeline and in the report.
LESSONS = {"went_well": "went well", "went_badly": "went badly"}


def timeline_entry(event: EventBase) -> TimelineEntry:
    """Say who caused an event and what it means, in one line."""
    actor = service_of(event)
    match event:
        case IncidentDetected(data=d):
            summary = f"{d.severity.value} {d.type.value} detected: {d.title} ({d.classification_reason})"
        case IncidentUpdated(data=d):
            why = _why_joined(d.new_alerts)
            summary = f"{len(d.new_alerts)} more alert(s){why}, {d.alert_count} in all; now {d.severity.value}"
        case AlertsSuppressedResolved(data=d):
            named = _listing([e.key for e in d.alerts[:KEYS_NAMED]], len(d.alerts))
            summary = f"{len(d.alerts)} alert(s) held back by {d.kind} {d.id} ended ({named})"
            summary += f" (part {d.part} of {d.parts})" if d.parts > 1 else ""
        case AlertsSuppressed(data=d):
            named = _listing([a.key for a in d.alerts[:KEYS_NAMED]], len(d.alerts))
            by = d.suppressed_by
            # An inhibition's reason names the inhibiting alert; a silence's or window's, not its id.
            ref = {"silence": f" (silence {by.id})", "maintenance": f" (window {by.id})"}.get(by.kind, "")
            summary = f"{len(d.alerts)} alert(s) held back from incidents ({named}): {by.reason}{ref}"
            if d.parts > 1:
                summary += f" (part {d.part} of {d.parts})"
        case IncidentAlertsChanged(data=d):
            summary = _alerts_changed(d.repeated, d.resolved, firing=d.firing, alert_count=d.alert_count)
            if d.all_resolved:
                summary += "; every alert has resolved: the incident may be resolved"
            if d.parts > 1:
                summary += f" (part {d.part} of {d.parts})"
        case ResolutionSuggested(data=d):
            summary = f"suggests {d.commander} resolves the incident: {d.reason}"
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
            summary = f"state {before} -> {d.to_state.value}"
            summary += f" ({d.resolution})" if d.resolution else ""
            summary += f": {d.note}" if d.note else ""
        case EscalationExhausted(data=d):
            summary = (
                f"escalation exhausted: {len(d.paged)} people of rotation {d.rotation!r} paged "
                f"({', '.join(d.paged)}), nobody acknowledged"
            )
        case ResponseStepChanged(data=d):
            actor = d.actor
            summary = _step_changed(d)
        case ResponseStepsChanged(data=d):
            actor = ", ".join(dict.fromkeys(c.actor for c in d.changes))
            summary = _steps_changed(d.changes)
        case ResponseStepValidated(data=d):
            what = f"{d.name}: {d.item}" if d.item else d.name
            done = "undo of step" if d.of == "undo" else "step"
            summary = f"{done} {what!r} {d.outcome}" + (f": {d.check}" if d.check else "")
            summary += f" ({d.reason})" if d.reason and d.outcome != "validated" else ""
        case ResponseLeaseChanged(data=d):
            actor = d.actor
            on = f" on {d.target}" if d.target else ""
            summary = f"lease of {d.action!r}{on} {d.change.replace('_', ' ')}, now {d.state.replace('_', ' ')}"
            if d.due_at is not None and d.state in ("active", "extended") and not d.reason:
                summary += f", undone at {d.due_at.isoformat(timespec='seconds')}"
            if d.change == "created" and d.offence > 1:
                summary += f" (offence {d.offence}: {d.duration_s} s)"
            summary += f": {d.reason}" if d.reason else ""
        case ContainmentIneffective(data=d):
            summary = f"containment ineffective: {_watched(d)}" + (f"; {d.reason}" if d.reason else "")
        case ContainmentConfirmed(data=d):
            summary = f"containment confirmed: {_watched(d)}"
        case RollbackOffered(data=d):
            summary = f"rollback of {len(d.leases)} action(s) still in force offered ({d.command}): {d.reason}"
        case ApproveStep(data=d) | DenyStep(data=d):
            actor = d.actor
            verb = "approval" if isinstance(event, ApproveStep) else "denial"
            summary = (
                f"{verb} of step {d.step_id}" + (f" as {d.role}" if d.role else "") + (f": {d.note}" if d.note else "")
            )
        case EvidenceChanged(data=d):
            actor = d.actor
            item = f"evidence #{d.item_id} {d.name!r} (SHA-256 {d.sha256[:16]}…)"
            if d.action == "registered":
                size = f", {d.size_bytes} bytes" if d.size_bytes is not None else ""
                summary = f"{item} registered{size}, kept at {d.location}; custodian {d.custodian}"
            elif d.action == "transferred":
                summary = f"{item} handed to {d.custodian}"
            else:
                summary = f"{item} checked: its hash {'matches' if d.verified else 'DOES NOT match'}"
            summary += f": {d.note}" if d.note else ""
        case RunStep(data=d):
            actor = d.actor
            summary = f"run of step {d.step}" + (f" on {d.item}" if d.item else "") + " requested"
            summary += f" for {d.lease}" if d.lease else ""
            summary += f": {d.note}" if d.note else ""
        case EffectCompleted(data=d):
            summary = f"{d.kind} to {d.target} {d.status} after {d.attempts} attempt(s)" + (
                f": {d.error}" if d.error else ""
            )
        case IncidentEdited(data=d):
            actor = d.actor
            changed = ", ".join(f"{name} {c.before} -> {c.after}" for name, c in d.changes.items())
            summary = f"edited: {changed}: {d.reason}"
        case IncidentAssigned(data=d):
            summary = f"{d.person} is the {d.role}, assigned by {d.actor}" + (f": {d.note}" if d.note else "")
        case ChangeOffered(data=d):
            summary = f"{d.by} offers {d.field} {d.offered} (now {d.current}), not applied: {d.reason}"
        case TasksCreated(data=d):
            required = sum(t.required for t in d.tasks)
            titles = _listing([t.title for t in d.tasks[:KEYS_NAMED]], len(d.tasks))
            summary = f"{len(d.tasks)} runbook task(s) made, {required} required: {titles}"
        case TasksCancelled(data=d):
            actor = d.actor
            summary = f"{len(d.task_ids)} open task(s) cancelled: {d.reason}"
        case TaskCompleted(data=d):
            actor = d.actor
            summary = f"{d.phase.replace('_', '-')} task done: {d.title}" + (f": {d.note}" if d.note else "")
        case AddNote(data=d):
            actor = d.actor
            kind = "status update" if d.status_update else LESSONS.get(d.lesson or "", "note")
            summary = f"{kind}: {d.note}"
        case ChangeState(data=d):
            actor = d.actor
            summary = f"move to {d.to_state} requested" + (f": {d.note}" if d.note else "")
        case EditIncident(data=d):
            actor = d.actor
            summary = f"edit requested: {d.reason}"
        case AssignRole(data=d):
            actor = d.actor
            summary = f"assign {d.person} as {d.role} requested"
        case CommandRejected(data=d):
            actor = d.actor
            summary = f"{d.command} rejected: {d.reason}"
        case IncidentMerged(data=d):
            actor = d.actor
            summary = f"merged into incident {d.survivor} with its {d.alerts} alert(s)" + (
                f": {d.note}" if d.note else ""
            )
        case IncidentSplit(data=d):
            actor = d.actor
            named = _listing(d.detached[:KEYS_NAMED], len(d.detached))
            summary = f"{len(d.detached)} alert(s) detached into incident {d.new_incident} ({named})" + (
                f": {d.note}" if d.note else ""
            )
        case MergeIncidents(data=d):
            actor = d.actor
            summary = f"merge of {', '.join(d.incidents)} into this incident requested" + (
                f": {d.note}" if d.note else ""
            )
        case DetachAlerts(data=d):
            actor = d.actor
            summary = f"detach of {len(d.alerts)} alert(s) requested" + (f": {d.note}" if d.note else "")
        case AcknowledgeIncident(data=d) | ResolveIncident(data=d):
            actor = d.actor
            verb = "acknowledge" if isinstance(event, AcknowledgeIncident) else "resolve"
            summary = f"{verb} requested" + (f": {d.note}" if d.note else "")
        case _:
            summary = getattr(event, "type", event.source)
    return TimelineEntry(actor=actor, summary=summary)


def merged_in(event: IncidentMerged, *, title: str | None = None) -> TimelineEntry:
    """The survivor's line for an incident merged into it."""
    d = event.data
    named = f" ({title})" if title else ""
    return TimelineEntry(
        actor=d.actor,
        summary=f"incident {event.subject}{named} merged into this one with its {d.alerts} alert(s)"
        + (f": {d.note}" if d.note else ""),
    )


def detached_from(event: IncidentSplit) -> TimelineEntry:
    """The new incident's line: where its alerts came from."""
    d = event.data
    return TimelineEntry(
        actor=d.actor,
        summary=f"opened from {len(d.detached)} alert(s) detached from incident {event.subject}"
        + (f": {d.note}" if d.note else ""),
    )


def _alerts_changed(
    repeated: Sequence[AlertRepeat], resolved: Sequence[AlertResolution], *, firing: int, alert_count: int
) -> str:
    """Say which alerts were sent again and which ended, naming a few of each."""
    said = []
    if repeated:
        named = [f"{r.key} seen {r.repeats + 1} times" for r in repeated[:KEYS_NAMED]]
        said.append(f"{len(repeated)} alert(s) sent again ({_listing(named, len(repeated))})")
    if resolved:
        named = [r.key for r in resolved[:KEYS_NAMED]]
        said.append(f"{len(resolved)} resolved ({_listing(named, len(resolved))})")
    return f"{'; '.join(said) or 'alerts unchanged'}; {firing} of {alert_count} still firing"


def _step_changed(change: StepChange) -> str:
    """`step 'block address: 203.0.113.7' awaiting approval: containment needs approval`."""
    summary = f"step {_step_named(change)!r} {change.state.replace('_', ' ')}"
    summary += f": {change.reason}" if change.reason else ""
    if change.state == "failed" and change.on_failure == "escalate":
        summary += " (its playbook escalates this failure)"
    return summary


def _steps_changed(changes: Sequence[StepChange]) -> str:
    """One cause's step changes, grouped by the state they went to and why: `12 steps changed: 10
    awaiting approval ('block address: 203.0.113.7', … and 7 more): …; 2 planned (…)`."""
    if len(changes) == 1:
        return _step_changed(changes[0])
    groups: dict[tuple[str, str], list[StepChange]] = {}
    for change in changes:
        groups.setdefault((change.state, change.reason), []).append(change)
    parts = []
    for (state, reason), group in list(groups.items())[:REASONS_NAMED]:
        named = _listing([repr(_step_named(c)) for c in group[:KEYS_NAMED]], len(group))
        part = f"{len(group)} {state.replace('_', ' ')} ({named})"
        part += f": {_cut(reason)}" if reason else ""
        if escalating := sum(c.state == "failed" and c.on_failure == "escalate" for c in group):
            part += f" ({escalating} escalated by their playbook)"
        parts.append(part)
    if len(groups) > REASONS_NAMED:
        rest = sum(len(group) for group in list(groups.values())[REASONS_NAMED:])
        parts.append(f"and {rest} more")
    return f"{len(changes)} steps changed: " + "; ".join(parts)


def _step_named(change: StepChange) -> str:
    return f"{change.name}: {change.item}" if change.item else change.name


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _why_joined(alerts: Sequence[AlertSummary]) -> str:
    """Say why alerts joined their incident, naming a few distinct reasons: `` (rule r: user=alice)``."""
    reasons = list(dict.fromkeys(_reason(a.correlation) for a in alerts if a.correlation is not None))
    if not reasons:
        return ""
    named = reasons[:REASONS_NAMED]
    more = f" and {len(reasons) - len(named)} more" if len(reasons) > len(named) else ""
    return f" ({'; '.join(named)}{more})"


def _reason(correlation: AlertCorrelation) -> str:
    """`rule brute-force-then-login: user=alice`; the fallback: `entity host=web-01`."""
    values = ", ".join(f"{name}={value}" for name, value in correlation.key.items())
    if correlation.type == "entity":
        said = f"entity {values}" if values else "entity"
    else:
        said = f"rule {correlation.rule}" + (f": {values}" if values else "")
    return _cut(said)


def _watched(watch: ContainmentWatch) -> str:
    """Say what the watch after containment saw of the contained entities."""
    entities = [f"{e.kind} {e.value}" for e in watch.entities[:KEYS_NAMED]]
    said = f"{watch.matched} alert(s) on {_listing(entities, len(watch.entities))}"
    return (
        said + f" between {watch.started_at.astimezone(UTC):%H:%M:%S} and {watch.ended_at.astimezone(UTC):%H:%M:%S} UTC"
    )


def _listing(named: list[str], total: int) -> str:
    return ", ".join(named) + (f" and {total - len(named)} more" if total > len(named) else "")
