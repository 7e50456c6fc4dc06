"""The coordinator's handlers: command, escalate, and move incidents through their states."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.coordinator import (
    digests,
    domain,
    escalation,
    lifecycle,
    metrics,
    notifications,
    rooms,
    schedules,
    tasks,
    ticketing,
)
from services.coordinator.escalation import in_working_hours
from shared import timers
from shared.consumer import HandlerContext, dispatch_each
from shared.db import Conn
from shared.effects import Effect
from shared.errors import InvalidTransition
from shared.events import (
    AcknowledgeIncident,
    AddNote,
    AlertSummary,
    AnalysisBrief,
    Assignment,
    AssignRole,
    ChangeOffer,
    ChangeOffered,
    ChangeState,
    CommandArgs,
    CommandRejected,
    CommandRejection,
    ContainmentConfirmed,
    ContainmentIneffective,
    EditIncident,
    EffectOutcome,
    Escalation,
    EscalationExhausted,
    EventBase,
    FieldChange,
    IncidentAlertsChanged,
    IncidentAnalyzed,
    IncidentAssigned,
    IncidentDetected,
    IncidentEdited,
    IncidentEdits,
    IncidentEscalated,
    IncidentMerged,
    IncidentSnapshot,
    IncidentSplit,
    IncidentState,
    IncidentStateChanged,
    IncidentType,
    IncidentUpdated,
    OpenedTask,
    ResolutionSuggested,
    ResolutionSuggestion,
    ResolveIncident,
    ResponseLeaseChanged,
    ResponsePlanned,
    ResponseStepChanged,
    ResponseStepsChanged,
    ResponseStepValidated,
    RollbackOffer,
    RollbackOffered,
    Severity,
    StateChange,
    StateCommand,
    StepChange,
    TaskCompleted,
    TaskDone,
    TasksCancelled,
    TasksCreated,
    TasksDropped,
    TasksOpened,
)
from shared.logs import event_ids

log = logging.getLogger(__name__)
SOURCE = "/vigil/coordinator"
SERVICE = "coordinator"
ACK_DEADLINE = "ack-deadline"
STATUS_UPDATE = "status-update"
STEP_DUE = "response-step-due"
# Where nobody has said they are on it yet: a move out of these counts as its actor's acknowledgement.
UNACKNOWLEDGED = frozenset({IncidentState.DETECTED, IncidentState.TRIAGED})
# HandlerContext.read: the incidents of a run of updates, locked and read at once (``lock_updated``).
UPDATED_ROWS = "coordinator.updated_rows"
_UPDATED_COLUMNS = (
    "state, severity, commander, escalation_step, edited_by, type, state_times, roles, services,"
    " escalation -> 'analysis' AS analysis"
)
ALERTS_IN_ESCALATION = 20
# HandlerContext.read: the incidents of a run of step changes that ``on_step_changed`` reads, locked and read at
# once (``record_steps``); and what it reads of each.
STEP_INCIDENTS = "coordinator.step_incidents"
STEP_INCIDENT_COLUMNS = "state, commander, escalation, title, severity"
STEP_STATES_READ = frozenset({"failed", "awaiting_approval"})


# The runbook phases whose tasks' clocks start when an incident enters a state.
PHASES_STARTED: dict[IncidentState, tuple[tasks.Phase, ...]] = {
    IncidentState.INVESTIGATING: ("investigation",),
    IncidentState.CONTAINED: ("remediation",),
    IncidentState.ERADICATED: ("recovery",),
    IncidentState.RECOVERED: ("closure",),
    IncidentState.RESOLVED: ("closure", "post_mortem"),
}


def phases_started(state_times: Mapping[str, Any]) -> set[tasks.Phase]:
    """The runbook phases an incident has begun, by the states it has entered (triage from the start)."""
    started: set[tasks.Phase] = {"triage"}
    for state in state_times:
        if (known := domain.known_state(state)) is not None:
            started.update(PHASES_STARTED.get(known, ()))
    return started


Command = AcknowledgeIncident | ResolveIncident | ChangeState | EditIncident | AddNote | AssignRole
Outcome = IncidentStateChanged | IncidentEdited | IncidentAssigned | CommandRejected | None


async def _lock_incident(conn: Conn, incident_id: str) -> None:
    await conn.execute("SELECT 1 FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", incident_id)


async def _step_incident(conn: Conn, incident_id: str) -> asyncpg.Record | None:
    """An incident as a step's change needs it, locked."""
    return await conn.fetchrow(
        f"SELECT {STEP_INCIDENT_COLUMNS} FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", incident_id
    )


async def _lock_step_incident(conn: Conn, subject: str) -> None:
    """A step's deadline: its subject is ``<incident id>|<step id>``."""
    await _lock_incident(conn, subject.partition("|")[0])


# The most people who reported a problem one incident writes back to: reports name anyone, in any number.
MAX_REPORTERS = 50


class Coordinator:
    def __init__(
        self,
        oncall: schedules.OnCallConfig,
        lifecycle_: lifecycle.Lifecycle | None = None,
        templates: Sequence[tasks.TaskTemplate] | None = None,
        notices: notifications.NotificationsConfig | None = None,
        escalation_: escalation.EscalationFile | None = None,
        tickets: ticketing.TicketingConfig | None = None,
        public_url: str | None = None,
        digests_: Mapping[str, digests.Digest] | None = None,
    ) -> None:
        self.oncall = oncall
        self.tickets = tickets or ticketing.NONE
        self.digests = dict(digests_ or {})
        self.public_url = public_url
        self.notices = notices or notifications.load_notifications()
        self.escalation = escalation_ or escalation.load_escalation()
        self.lifecycle = lifecycle_ or lifecycle.load_lifecycle()
        self.templates = list(templates) if templates is not None else tasks.load_templates()
        self.handle = dispatch_each(
            {
                IncidentDetected: self.on_detected,
                IncidentUpdated: self.on_updated,
                IncidentAlertsChanged: self.on_alerts_changed,
                AcknowledgeIncident: self.on_command,
                ResolveIncident: self.on_command,
                ChangeState: self.on_command,
                EditIncident: self.on_command,
                AddNote: self.on_command,
                AssignRole: self.on_command,
                ResponseStepChanged: self.on_step_changed,
                ResponseStepsChanged: self.on_step_changed,
                ResponseStepValidated: self.on_step_validated,
                ResponseLeaseChanged: self.on_lease_changed,
                ContainmentIneffective: self.on_containment,
                ContainmentConfirmed: self.on_containment,
                IncidentAnalyzed: self.on_analyzed,
                ResponsePlanned: self.on_planned,
                IncidentMerged: self.on_merged,
                IncidentSplit: self.on_split,
            },
            # Step changes are the commonest event by far: a run of them is recorded in one round trip; a
            # run of incident updates has its incidents locked and read in one.
            runs={
                ResponseStepChanged: self.record_steps,
                ResponseStepsChanged: self.record_steps,
                IncidentUpdated: self.lock_updated,
            },
        )
        self.timer_handlers: dict[str, timers.TimerHandler] = {
            ACK_DEADLINE: self.on_ack_deadline,
            STATUS_UPDATE: self.on_status_update_due,
            tasks.TASK_DUE: self.on_task_due,
            STEP_DUE: self.on_step_due,
            digests.TIMER: self.on_digest_due,
        }
        # The rows their handlers lock, as whoever acknowledges, resolves or finishes a task does.
        self.timer_locks: dict[str, timers.SubjectLock] = {
            ACK_DEADLINE: _lock_incident,
            STATUS_UPDATE: _lock_incident,
            STEP_DUE: _lock_step_incident,
            tasks.TASK_DUE: tasks.lock_task,
        }

    async def on_detected(self, ctx: HandlerContext, event: IncidentDetected) -> None:
        snapshot = event.data
        services = domain.services_of(snapshot.new_alerts)
        schedule = self._schedule_for(snapshot.type.value, snapshot.severity.value, services)
        commander = schedules.on_call(schedule, event.time).person
        escalation = domain.escalation(
            snapshot,
            commander=commander,
            channel=self.oncall.channel,
            reason=f"new {snapshot.severity.value} {snapshot.type.value} incident: immediate escalation",
            alerts=snapshot.new_alerts[:ALERTS_IN_ESCALATION],
        )
        inserted = await ctx.conn.fetchval(
            """INSERT INTO coordinator_incidents (incident_id, state, severity, type, title, commander,
                   rotation, escalation, detected_at, firing, last_alert_at, services)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING RETURNING true""",
            event.subject,
            IncidentState.DETECTED.value,
            snapshot.severity.value,
            snapshot.type.value,
            snapshot.title,
            commander,
            schedule.name,
            escalation.model_dump(mode="json"),
            event.time,
            _firing(snapshot),
            _last_seen(snapshot, event),
            services,
        )
        if not inserted:
            return
        await self._note_reporters(ctx, event.subject, snapshot.severity.value, snapshot.new_alerts)
        await self._log_transition(
            ctx, event.subject, at=event.time, before=None, after=IncidentState.DETECTED, actor="detector"
        )
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET roles = $2 WHERE incident_id = $1",
            event.subject,
            {"commander": commander},
        )
        made = await tasks.create_tasks(
            ctx.conn,
            self.templates,
            incident_id=event.subject,
            incident_type=snapshot.type,
            severity=snapshot.severity,
            commander=commander,
            now=event.time,
        )
        self._tell_tasks(ctx, event, made)
        caused = event.caused_by()
        ctx.emit(
            IncidentStateChanged(
                source=SOURCE,
                **caused,
                data=StateChange(
                    from_state=None,
                    to_state=IncidentState.DETECTED,
                    actor="detector",
                    ended=self.lifecycle.is_ended(IncidentState.DETECTED),
                ),
            )
        )
        await self._escalate(ctx, event.subject, escalation, "step-0", caused)
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET paged = jsonb_build_array($2::text) WHERE incident_id = $1",
            event.subject,
            commander,
        )
        await self._set_ack_deadline(
            ctx, event.subject, snapshot.severity, step=1, incident_type=snapshot.type.value, services=services
        )
        log.info("incident %s escalated to %s", event.subject, commander, extra=event_ids(event))

    async def lock_updated(self, ctx: HandlerContext, events: Sequence[IncidentUpdated]) -> None:
        """Lock and read, in one statement, the incidents a run of updates may escalate (``on_updated``);
        then, in one more, count the alerts every part of the run brings (the closure guards read them)."""
        ids = sorted({e.subject for e in events})  # one order for every replica's locks
        rows = await ctx.conn.fetch(
            f"""SELECT incident_id, {_UPDATED_COLUMNS} FROM coordinator_incidents
                WHERE incident_id = ANY($1::text[]) ORDER BY incident_id FOR UPDATE""",
            ids,
        )
        # Only a batch's first part is looked at (``on_updated``); the later parts' rows are not kept.
        first_parts = {e.subject for e in events if e.data.part == 1}
        ctx.read[UPDATED_ROWS] = {row["incident_id"]: row for row in rows if row["incident_id"] in first_parts}
        brought: dict[str, tuple[int, datetime]] = {}
        named: dict[str, list[str]] = {}  # the services the run's alerts name, by incident
        for e in events:
            firing, seen = brought.get(e.subject, (0, _last_seen(e.data, e)))
            brought[e.subject] = (firing + _firing(e.data), max(seen, _last_seen(e.data, e)))
            if services := domain.services_of(e.data.new_alerts):
                named[e.subject] = domain.with_services(named.get(e.subject, []), services)
        await ctx.conn.execute(
            # A count never taken (an incident from before it) stays unknown: NULL plus new alerts is NULL.
            """UPDATE coordinator_incidents c
               SET firing = c.firing + u.firing, last_alert_at = greatest(c.last_alert_at, u.seen)
               FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS u (incident_id, firing, seen)
               WHERE c.incident_id = u.incident_id""",
            list(brought),
            [firing for firing, _ in brought.values()],
            [seen for _, seen in brought.values()],
        )
        for incident_id, services in named.items():  # rare: alerts that name a service
            await self._add_services(ctx, incident_id, services)
            # Read again by ``on_updated``: a severity this run raises is paged by the policy of these services.
            ctx.read[UPDATED_ROWS].pop(incident_id, None)

    async def _add_services(self, ctx: HandlerContext, incident_id: str, services: Sequence[str]) -> None:
        """Services the incident concerns, learnt since: the escalation policy is chosen by them from now on."""
        await ctx.conn.execute(
            f"""UPDATE coordinator_incidents
                SET services = (SELECT array_agg(s ORDER BY n) FROM (
                    SELECT s, min(n) AS n FROM unnest(services || $2::text[]) WITH ORDINALITY AS t(s, n)
                    GROUP BY s ORDER BY min(n) LIMIT {domain.MAX_SERVICES}) AS kept)
                WHERE incident_id = $1 AND NOT services @> $2::text[]""",
            incident_id,
            list(services),
        )

    async def on_updated(self, ctx: HandlerContext, event: IncidentUpdated) -> None:
        await self._note_reporters(ctx, event.subject, event.data.severity.value, event.data.new_alerts)
        if event.data.part > 1:
            return  # the rest of a batch's alerts: its first part carried the same severity
        # Read with its run (``lock_updated``) unless an update before it in the run read it: it may
        # have raised the severity since.
        locked: dict[str, asyncpg.Record] = ctx.read.get(UPDATED_ROWS, {})
        row = locked.pop(event.subject, None) or await ctx.conn.fetchrow(
            f"SELECT {_UPDATED_COLUMNS} FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", event.subject
        )
        if row is None:
            return
        state, old = self._known(row, event.subject, "severity change not escalated")
        if state is None or old is None or self.lifecycle.is_ended(state):
            return
        new = event.data.severity
        if not domain.escalates(old, new):
            return
        if self._offered(ctx, event, row, old, new, by="detector", reason=event.data.severity_reason):
            return
        escalation = domain.escalation(
            event.data,
            commander=row["commander"],
            channel=self.oncall.channel,
            reason=f"severity raised from {old.value} to {new.value}",
            alerts=event.data.new_alerts[:ALERTS_IN_ESCALATION],
            analysis=AnalysisBrief.model_validate(row["analysis"]) if row["analysis"] else None,
        )
        await self._raise_severity(ctx, event, row, state, new, escalation, f"severity-{new.value}")

    def _offered(
        self,
        ctx: HandlerContext,
        event: EventBase,
        row: asyncpg.Record,
        old: Severity,
        new: Severity,
        *,
        by: str,
        reason: str,
    ) -> bool:
        """A person set the severity: another view of it is offered to them, never applied over it."""
        person = row["edited_by"].get("severity")
        if person is None:
            return False
        offer = ChangeOffer(
            field="severity",
            current=old.value,
            offered=new.value,
            by=by,
            reason=f"{reason} (the severity was set by {person})",
        )
        ctx.emit(ChangeOffered(source=SOURCE, **event.caused_by(), data=offer))
        return True

    async def _raise_severity(
        self,
        ctx: HandlerContext,
        event: IncidentUpdated | IncidentAnalyzed,
        row: asyncpg.Record,
        state: IncidentState,
        new: Severity,
        escalation: Escalation,
        discriminator: str,
    ) -> None:
        """Store the higher severity, page the commander with it, add the runbook's tasks for it."""
        await ctx.conn.execute(
            """UPDATE coordinator_incidents SET severity = $2, escalation = $3, updated_at = now()
               WHERE incident_id = $1""",
            event.subject,
            new.value,
            escalation.model_dump(mode="json"),
        )
        await self._escalate(ctx, event.subject, escalation, discriminator, event.caused_by())
        # A higher severity may call for more of the runbook: its tasks are added, the others kept.
        made = await tasks.create_tasks(
            ctx.conn,
            self.templates,
            incident_id=event.subject,
            incident_type=IncidentType(row["type"]),
            severity=new,
            commander=row["commander"],
            now=event.time,
            started=phases_started(row["state_times"]),
            roles=row["roles"],
        )
        self._tell_tasks(ctx, event, made)
        if state is IncidentState.DETECTED:
            # Unacknowledged still: the walk down the rotation goes on from the current commander.
            await self._set_ack_deadline(
                ctx,
                event.subject,
                new,
                step=row["escalation_step"] + 1,
                incident_type=row["type"],
                services=row["services"],
            )

    async def on_alerts_changed(self, ctx: HandlerContext, event: IncidentAlertsChanged) -> None:
        """Keep the incident's firing count and last sighting; and when every alert of a service disruption
        has ended, suggest that its commander resolves it.

        Only a suggestion, on the timeline: whether the service is healthy again is the commander's call.
        """
        change = event.data
        repeated = max((r.last_seen for r in change.repeated), default=None)
        row = await ctx.conn.fetchrow(
            # The detector's count is of every alert after the change, the batch's new ones too: it
            # replaces what the snapshots added up.
            """UPDATE coordinator_incidents
               SET firing = $2, last_alert_at = greatest(last_alert_at, $3)
               WHERE incident_id = $1 RETURNING state, commander""",
            event.subject,
            change.firing,
            min(repeated, event.time) if repeated is not None else None,
        )
        if not change.all_resolved:
            return
        if row is None:
            log.info("incident %s: its alerts all resolved, but it is unknown here", event.subject)
            return
        state = domain.known_state(row["state"])
        if state is None or state is IncidentState.RESOLVED:
            return
        reason = (
            f"all {event.data.alert_count} alert(s) have resolved; once the service is confirmed healthy, "
            f"resolve the incident (vigil resolve {event.subject})"
        )
        ctx.emit(
            ResolutionSuggested(
                source=SOURCE,
                **event.caused_by(),
                data=ResolutionSuggestion(commander=row["commander"], reason=reason),
            )
        )
        log.info("incident %s: all alerts resolved; suggested %s resolves it", event.subject, row["commander"])

    async def record_steps(
        self, ctx: HandlerContext, events: Sequence[ResponseStepChanged | ResponseStepsChanged]
    ) -> None:
        """Each step of a runbook phase as it stands (the lifecycle's guards and the overdue timers read
        them), for a run of step changes in one pipelined round trip, in their order; and, in one more, the
        timer of each such step not done yet that has a due time: its owner is told when it is overdue (the
        timer finds it done by then, or not).

        And the incidents of the run's steps that wait for approval or failed (``on_step_changed`` reads
        each, under its lock): in one round trip, in one order, rather than one per step.
        """
        changes = [(e.subject, change) for e in events for change in e.changes]
        asking = sorted({subject for subject, change in changes if change.state in STEP_STATES_READ})
        rows = (
            await ctx.conn.fetch(
                f"""SELECT incident_id, {STEP_INCIDENT_COLUMNS} FROM coordinator_incidents
                    WHERE incident_id = ANY($1::text[]) ORDER BY incident_id FOR UPDATE""",
                asking,
            )
            if asking
            else []
        )
        # Read again for every run: a run re-run in its own savepoint (another event refused) lost its locks.
        ctx.read[STEP_INCIDENTS] = dict.fromkeys(asking) | {row["incident_id"]: row for row in rows}
        phased = [(subject, change) for subject, change in changes if change.phase is not None]
        if not phased:
            return
        due = {  # a step's latest change in the run sets its timer
            f"{subject}|{change.step_id}": change.due_at
            for subject, change in phased
            if change.due_at is not None and change.state not in lifecycle.STEP_DONE | lifecycle.STEP_BAD
        }
        await timers.schedule_many(ctx.conn, service=SERVICE, kind=STEP_DUE, due=due)
        await ctx.conn.executemany(
            """INSERT INTO coordinator_response_steps (incident_id, step_id, phase, state, required, name, owner)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (incident_id, step_id)
               DO UPDATE SET state = excluded.state, required = excluded.required, name = excluded.name,
                             owner = excluded.owner, updated_at = now()""",
            [
                (
                    subject,
                    change.step_id,
                    change.phase,
                    change.state,
                    change.required,
                    change.name + (f": {change.item}" if change.item else ""),
                    change.owner,
                )
                for subject, change in phased
            ],
        )

    async def on_step_changed(self, ctx: HandlerContext, event: ResponseStepChanged | ResponseStepsChanged) -> None:
        """Each of the event's step changes, in order (``on_step``)."""
        for step in event.changes:
            await self.on_step(ctx, event, step)

    async def on_step(self, ctx: HandlerContext, event: EventBase, step: StepChange) -> None:
        """A message step sent is relayed; a step waiting for approval asks the commander; a response step
        that failed and whose playbook says escalate pages the commander again, saying which.

        Its state and its due timer are recorded already (``record_steps``)."""
        if step.connector == "notify" and step.state == "succeeded":
            await self._relay_message(ctx, event.subject, step)
            return
        if step.state not in STEP_STATES_READ:
            return
        read: dict[str, Any] = ctx.read.get(STEP_INCIDENTS, {})
        row = read[event.subject] if event.subject in read else await _step_incident(ctx.conn, event.subject)
        state = domain.known_state(row["state"]) if row else None
        if row is None or state is None or self.lifecycle.is_ended(state):
            return
        if step.state == "awaiting_approval":
            # One request per playbook step of a plan, however many items (addresses, hosts) it expands to;
            # a later plan (new alerts) that adds items, or puts the step back to waiting, asks again.
            notice = notifications.step_notice(
                event.subject, step, title=row["title"], severity=row["severity"], recipients=[row["commander"]]
            )
            if notice is not None:
                notice = replace(notice, discriminator=f"{step.plan_id}:{step.step}")
                await notifications.notify(ctx.conn, self.notices, notice)
            return
        if step.on_failure != "escalate":
            return
        what = f"{step.name}: {step.item}" if step.item else step.name
        escalation = Escalation.model_validate(row["escalation"]).model_copy(
            update={"commander": row["commander"], "reason": f"response step {what!r} failed: {step.reason}"}
        )
        read.pop(event.subject, None)  # its row changes: the run's next step reads it again
        await self._escalate(ctx, event.subject, escalation, f"step-failed-{step.step_id}", event.caused_by())
        log.warning("incident %s: step %s failed; escalated to %s", event.subject, step.step_id, row["commander"])

    async def on_step_validated(self, ctx: HandlerContext, event: ResponseStepValidated) -> None:
        """The check after an action: one that failed is not an action that ended well, and the commander hears."""
        check = event.data
        if check.of == "action":
            await ctx.conn.execute(
                """UPDATE coordinator_response_steps SET validation = $3, updated_at = now()
                   WHERE incident_id = $1 AND step_id = $2""",
                event.subject,
                check.step_id,
                check.outcome,
            )
        if check.outcome != "failed":
            return
        what = f"{check.name}: {check.item}" if check.item else check.name
        subject = "its undo" if check.of == "undo" else "its effect"
        reason = f"response step {what!r}: {subject} is not confirmed: {check.reason}"
        await self._escalate_to_commander(ctx, event, reason, f"validation-failed-{check.step_id}-{check.of}")

    async def on_lease_changed(self, ctx: HandlerContext, event: ResponseLeaseChanged) -> None:
        """An undo that failed is escalated, never hidden: the action is still in force."""
        lease = event.data
        await ctx.conn.execute(
            """UPDATE coordinator_response_steps SET lease = $3, updated_at = now()
               WHERE incident_id = $1 AND step_id = $2""",
            event.subject,
            lease.step_id,
            lease.state,
        )
        if lease.change != "revert_failed":
            return
        what = f"{lease.name}: {lease.target}" if lease.target else lease.name
        reason = f"the undo of {what!r} failed; the action is still in force: {lease.reason}"
        await self._escalate_to_commander(ctx, event, reason, f"revert-failed-{event.id}")

    async def on_step_due(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """A step a person owns (a recovery step) is past its due time and not done: the commander hears."""
        incident_id, _, step_id = timer.subject.partition("|")
        step = await ctx.conn.fetchrow(
            """SELECT name, owner, state, required FROM coordinator_response_steps
               WHERE incident_id = $1 AND step_id = $2""",
            incident_id,
            step_id,
        )
        if step is None or step["state"] in lifecycle.STEP_DONE | lifecycle.STEP_BAD:
            return
        owner = f" (owner {step['owner']})" if step["owner"] else ""
        required = "required " if step["required"] else ""
        reason = f"{required}response step {step['name']!r}{owner} is overdue: due {timer.due_at:%Y-%m-%d %H:%M %Z}"
        await self._escalate_to_commander(ctx, incident_id, reason, f"step-due-{step_id}")

    async def on_containment(self, ctx: HandlerContext, event: ContainmentIneffective | ContainmentConfirmed) -> None:
        """The watch after containment ended: ineffective pages the commander with the evidence; confirmed is told."""
        ineffective = isinstance(event, ContainmentIneffective)
        verdict = "ineffective" if ineffective else "confirmed"
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET containment = $2, updated_at = now() WHERE incident_id = $1",
            event.subject,
            verdict,
        )
        watch = event.data
        if not ineffective:
            await self._update(ctx, event.subject, f"containment-{event.id}", f"containment confirmed: {watch.reason}")
            return
        seen = "; ".join(f"{e.title} ({e.kind} {e.value}, {e.time:%H:%M:%S})" for e in watch.evidence[:3])
        reason = f"containment ineffective: {watch.reason}" + (f"; e.g. {seen}" if seen else "")
        await self._escalate_to_commander(ctx, event, reason, f"containment-ineffective-{event.id}")

    async def _offer_rollback(self, ctx: HandlerContext, command: EventBase, row: asyncpg.Record) -> None:
        """A false positive with actions still in force: offer to roll them back (nothing is undone unasked)."""
        in_force = [
            r["step_id"]
            for r in await ctx.conn.fetch(
                """SELECT step_id FROM coordinator_response_steps
                   WHERE incident_id = $1 AND lease IN ('active', 'extended', 'permanent') ORDER BY step_id""",
                command.subject,
            )
        ]
        if not in_force:
            return
        offer = RollbackOffer(
            leases=in_force,
            reason=f"resolved as a false positive with {len(in_force)} action(s) still in force",
            command=f"vigil response rollback {command.subject}",
        )
        ctx.emit(RollbackOffered(source=SOURCE, **command.caused_by(), data=offer))
        text = f"{offer.reason}: roll them back with `{offer.command}` (vigil lease list {command.subject})"
        # Told though the incident has just ended: the offer is what is left to decide.
        notice = notifications.Notice(
            kind="update",
            incident_id=command.subject,
            discriminator=f"rollback-offer-{command.id}",
            severity=row["severity"],
            recipients=[row["commander"]],
            data={"title": row["title"], "reason": text},
        )
        await notifications.notify(ctx.conn, self.notices, notice)

    async def _escalate_to_commander(
        self, ctx: HandlerContext, cause: EventBase | str, reason: str, discriminator: str
    ) -> None:
        """Page the open incident's commander again, with what is known of it and this reason.

        ``cause`` is the event that calls for it, or (for a timer) the incident's id.
        """
        incident_id = cause if isinstance(cause, str) else cause.subject
        caused = {"subject": cause} if isinstance(cause, str) else cause.caused_by()
        row = await ctx.conn.fetchrow(
            "SELECT state, commander, escalation FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE",
            incident_id,
        )
        state = domain.known_state(row["state"]) if row else None
        if row is None or state is None or self.lifecycle.is_ended(state):
            log.info("incident %s: not escalated (unknown here, or ended): %s", incident_id, reason)
            return
        escalation = Escalation.model_validate(row["escalation"]).model_copy(
            update={"commander": row["commander"], "reason": reason}
        )
        await self._escalate(ctx, incident_id, escalation, discriminator, caused)
        log.warning("incident %s: %s; escalated to %s", incident_id, reason, row["commander"])

    async def on_command(self, ctx: HandlerContext, command: Command) -> None:
        await self.apply_command(ctx, command)

    async def apply_command(self, ctx: HandlerContext, command: Command) -> Outcome:
        """Apply an operator's command, and put it on the audit trail, whether it was applied or refused."""
        outcome = await self._apply(ctx, command)
        detail: dict[str, str] = {}
        if isinstance(outcome, CommandRejected):
            detail["reason"] = outcome.data.reason[:500]
        elif isinstance(outcome, IncidentStateChanged):
            detail = {"from": str(outcome.data.from_state), "to": outcome.data.to_state.value}
            if outcome.data.resolution:
                detail["resolution"] = outcome.data.resolution
        elif isinstance(outcome, IncidentEdited):
            detail = {name: f"{c.before} -> {c.after}" for name, c in outcome.data.changes.items()}
        elif isinstance(outcome, IncidentAssigned):
            detail = {"person": outcome.data.person, "role": outcome.data.role}
        ctx.audit(
            f"incident.{_command_name(command)}",
            command.subject,
            principal=command.data.actor,
            outcome="refused" if isinstance(outcome, CommandRejected) else "ok",
            detail=detail,
        )
        return outcome

    async def _apply(self, ctx: HandlerContext, command: Command) -> Outcome:
        """Apply an operator's command; an impossible one is answered with a CommandRejected event."""
        row = await ctx.conn.fetchrow(
            "SELECT * FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", command.subject
        )
        try:
            if row is None:
                raise InvalidTransition(f"no incident {command.subject}")
            if row["merged_into"] is not None:
                # Reopening or moving it would split its history from the alerts that went on.
                raise InvalidTransition(
                    f"incident {command.subject} was merged into {row['merged_into']}: act on that one"
                )
            match command:
                case AcknowledgeIncident() | ResolveIncident() | ChangeState():
                    return await self._change_state(ctx, command, row)
                case EditIncident():
                    return await self._edit(ctx, command, row)
                case AssignRole():
                    return await self._assign(ctx, command, row)
                case AddNote():
                    if command.data.status_update:
                        await self._post_status_update(ctx, command, row)
                    return None  # the command itself is the note, on the timeline
        except InvalidTransition as exc:
            rejected = CommandRejected(
                source=SOURCE,
                **command.caused_by(),
                data=CommandRejection(
                    command_id=command.id, command=_command_name(command), actor=command.data.actor, reason=str(exc)
                ),
            )
            ctx.emit(rejected)
            log.warning("%s by %s rejected: %s", command.type, command.data.actor, exc, extra=event_ids(command))
            return rejected
        raise AssertionError(f"unhandled command {command.type}")  # the match covers every Command

    async def _change_state(
        self, ctx: HandlerContext, command: AcknowledgeIncident | ResolveIncident | ChangeState, row: asyncpg.Record
    ) -> IncidentStateChanged | None:
        facts = await self._guard_facts(ctx, command.subject, row, now=command.time)
        data: CommandArgs | StateCommand = command.data
        needed = self._policy_for(row["type"], row["severity"], row["services"]).acknowledgements
        acks: list[str] = list(row["acks"])
        known = domain.known_state(row["state"])  # a newer version's state: the lifecycle refuses the move below
        if (
            isinstance(command, AcknowledgeIncident)
            and known is not None
            and known not in UNACKNOWLEDGED
            and not self.lifecycle.is_ended(known)
            and len(acks) < needed
        ):
            # Moved on by fewer people than the policy wants on it: this one's acknowledgement counts where it
            # stands, and the paging stops once there are enough.
            await self._count_acknowledgement(ctx, command.subject, acks, data.actor, needed)
            return None
        if isinstance(command, ChangeState):
            move = lifecycle.move(
                self.lifecycle, row["state"], to=command.data.to_state, resolution=data.resolution, facts=facts
            )
        else:
            name = "acknowledge" if isinstance(command, AcknowledgeIncident) else "resolve"
            # `vigil resolve` without a resolution means it was fixed.
            resolution = (data.resolution or "fixed") if name == "resolve" else data.resolution
            move = lifecycle.move(self.lifecycle, row["state"], name=name, resolution=resolution, facts=facts)
            data = data.model_copy(update={"resolution": resolution})
        current, target = IncidentState(row["state"]), move.to
        if (current in UNACKNOWLEDGED or len(acks) < needed) and not self.lifecycle.is_ended(target):
            # Whoever moves it on is on it, by whichever command: one acknowledgement of those the policy wants.
            if current in UNACKNOWLEDGED and target is IncidentState.ACKNOWLEDGED and len({*acks, data.actor}) < needed:
                # The policy wants several people on it: this one counts, the chain goes on.
                await self._count_acknowledgement(ctx, command.subject, acks, data.actor, needed)
                return None
            acks = list(dict.fromkeys([*acks, data.actor]))
        stamps = {IncidentState.ACKNOWLEDGED: "acknowledged_at", IncidentState.RESOLVED: "resolved_at"}
        await ctx.conn.execute(
            f"""UPDATE coordinator_incidents
                SET state = $2, resolution = coalesce($4, resolution),
                    state_times = jsonb_set(state_times, ARRAY[$2::text],
                                            coalesce(state_times -> $2, to_jsonb($3::timestamptz))),
                    {stamps[target] + " = coalesce(" + stamps[target] + ", $3)," if target in stamps else ""}
                    acks = $5, updated_at = now()
                WHERE incident_id = $1""",
            command.subject,
            target.value,
            command.time,
            data.resolution,
            acks,
        )
        # The walk down the rotation stops once as many people as the policy wants are on it, or it is over.
        if len(acks) >= needed or self.lifecycle.is_ended(target):
            await timers.cancel(ctx.conn, service=SERVICE, kind=ACK_DEADLINE, subject=command.subject)
        if self.lifecycle.is_ended(target):
            await timers.cancel(ctx.conn, service=SERVICE, kind=STATUS_UPDATE, subject=command.subject)
        elif current is IncidentState.DETECTED:
            await self._remind_later(ctx, command.subject, row["severity"], number=1)
        elif self.lifecycle.is_ended(current):  # reopened: the reminders go on, numbered on from the last
            sent = await ctx.conn.fetchval(
                """SELECT max((payload ->> 'number')::int) FROM timers
                   WHERE service = $1 AND kind = $2 AND subject = $3 AND fired_at IS NOT NULL""",
                SERVICE,
                STATUS_UPDATE,
                command.subject,
            )
            await self._remind_later(ctx, command.subject, row["severity"], number=(sent or 0) + 1)
        for phase in PHASES_STARTED.get(target, ()):
            await tasks.start_phase(ctx.conn, incident_id=command.subject, phase=phase, now=command.time)
        if data.resolution in ("false_positive", "duplicate"):
            why = f"resolved as {data.resolution}"
            dropped = await tasks.cancel_open(ctx.conn, incident_id=command.subject, actor=data.actor, note=why)
            await self._tell_dropped(ctx, command, dropped, actor=data.actor, reason=why)
        if data.resolution == "false_positive":
            await self._offer_rollback(ctx, command, row)
        await self._log_transition(
            ctx,
            command.subject,
            at=command.time,
            before=current,
            after=target,
            actor=data.actor,
            reason=data.note,
            transition=move.name,
            resolution=data.resolution,
            command_id=command.id,
        )
        changed = IncidentStateChanged(
            source=SOURCE,
            **command.caused_by(),
            data=StateChange(
                from_state=current,
                to_state=target,
                actor=data.actor,
                note=data.note,
                command_id=command.id,
                transition=move.name,
                resolution=data.resolution,
                ended=self.lifecycle.is_ended(target),
            ),
        )
        ctx.emit(changed)
        if current is IncidentState.CLOSED:  # reopened: its room again (or a new one) first, where this is said
            await rooms.reopen(
                ctx.conn,
                self.notices,
                incident_id=command.subject,
                title=row["title"],
                severity=row["severity"],
                commander=row["commander"],
            )
        notice = notifications.state_changed_notice(
            command.subject, changed.data, title=row["title"], severity=row["severity"], recipients=[row["commander"]]
        )
        await notifications.notify(ctx.conn, self.notices, notice)
        if target is IncidentState.CLOSED:
            await rooms.archive(ctx.conn, self.notices, incident_id=command.subject, because=command.id)
        if self.lifecycle.is_ended(target) and not self.lifecycle.is_ended(current):
            await self._tell_reporters_resolved(ctx, command.subject, row["severity"], data.resolution or "fixed")
        log.info("incident %s %s -> %s by %s", command.subject, current, target, data.actor, extra=event_ids(command))
        return changed

    async def _edit(self, ctx: HandlerContext, command: EditIncident, row: asyncpg.Record) -> IncidentEdited:
        edit = command.data
        wanted = {"severity": edit.severity, "type": edit.type, "title": edit.title}
        changes = {
            field: FieldChange(before=row[field], after=str(value))
            for field, value in wanted.items()
            if value is not None and str(value) != row[field]
        }
        if not changes:
            raise InvalidTransition("nothing to change: give a new severity, type or title")
        # What every later page says of the incident (a reminder, the next step of the chain, a reassignment):
        # the person's severity, type and title, with their reason in place of the detector's.
        said = f"set by {edit.actor}: {edit.reason}"
        carried: dict[str, Any] = {field: change.after for field, change in changes.items()}
        if "severity" in changes:
            carried["severity_reason"] = said
        if "type" in changes:
            carried["classification_reason"] = said
        escalation_ = Escalation.model_validate({**row["escalation"], **carried})
        await ctx.conn.execute(
            """UPDATE coordinator_incidents
               SET severity = coalesce($2, severity), type = coalesce($3, type), title = coalesce($4, title),
                   edited_by = edited_by || $5, escalation = $6, updated_at = now()
               WHERE incident_id = $1""",
            command.subject,
            changes["severity"].after if "severity" in changes else None,
            changes["type"].after if "type" in changes else None,
            changes["title"].after if "title" in changes else None,
            {field: edit.actor for field in changes},
            escalation_.model_dump(mode="json"),
        )
        edited = IncidentEdited(
            source=SOURCE,
            **command.caused_by(),
            data=IncidentEdits(actor=edit.actor, reason=edit.reason, changes=changes, command_id=command.id),
        )
        ctx.emit(edited)
        if "severity" in changes or "title" in changes:
            now_titled = changes["title"].after if "title" in changes else row["title"]
            now_severe = changes["severity"].after if "severity" in changes else row["severity"]
            action = {"action": "update", "topic": rooms.topic(now_severe, now_titled, row["commander"])}
            key = f"edit:{command.id}"
            await rooms.in_room(ctx.conn, self.notices, incident_id=command.subject, key=key, action=action)
        # Corrected on the record after the fact (a review raising the severity of an incident that is over):
        # nobody is paged, and no room opens that nothing would archive.
        if (
            "severity" in changes
            and domain.escalates(Severity(row["severity"]), Severity(changes["severity"].after))
            and not self._ended(row)
        ):
            escalation = escalation_.model_copy(
                update={
                    "reason": f"severity raised by {edit.actor} from {row['severity']} to "
                    f"{changes['severity'].after}: {edit.reason}",
                }
            )
            await self._escalate(ctx, command.subject, escalation, f"edit-{command.id}", command.caused_by())
        return edited

    async def _assign(self, ctx: HandlerContext, command: AssignRole, row: asyncpg.Record) -> IncidentAssigned:
        assignment = command.data
        if row["roles"].get(assignment.role) == assignment.person:
            raise InvalidTransition(f"{assignment.person} is the {assignment.role} already")
        await ctx.conn.execute(
            """UPDATE coordinator_incidents
               SET roles = roles || jsonb_build_object($2::text, $3::text),
                   commander = CASE WHEN $2 = 'commander' THEN $3 ELSE commander END, updated_at = now()
               WHERE incident_id = $1""",
            command.subject,
            assignment.role,
            assignment.person,
        )
        await tasks.assign_role(ctx.conn, incident_id=command.subject, role=assignment.role, person=assignment.person)
        assigned = IncidentAssigned(source=SOURCE, **command.caused_by(), data=assignment)
        ctx.emit(assigned)
        # Whoever has a role on it is in its room; a new commander is named in its topic.
        update: dict[str, Any] = {"action": "update", "invite": rooms.emails(self.notices, [assignment.person])}
        if assignment.role == "commander":
            update["topic"] = rooms.topic(row["severity"], row["title"], assignment.person)
        key = f"assign:{command.id}"
        await rooms.in_room(ctx.conn, self.notices, incident_id=command.subject, key=key, action=update)
        if assignment.role == "commander" and not self._ended(row):  # an incident that is over pages nobody
            escalation = Escalation.model_validate(row["escalation"]).model_copy(
                update={
                    "commander": assignment.person,
                    "reason": f"made incident commander by {assignment.actor}"
                    + (f": {assignment.note}" if assignment.note else ""),
                }
            )
            await self._escalate(ctx, command.subject, escalation, f"assigned-{command.id}", command.caused_by())
        return assigned

    async def _guard_facts(
        self, ctx: HandlerContext, incident_id: str, row: asyncpg.Record, *, now: datetime
    ) -> lifecycle.GuardFacts:
        steps: dict[str, list[str]] = {}
        leases: list[lifecycle.Lease] = []
        for step in await ctx.conn.fetch(
            # A step whose check failed did not end well, whatever its far side answered.
            # A step its playbook does not require does not hold the incident up; its lease, though, is
            # an action in force all the same.
            """SELECT step_id, phase, required, name, lease,
                      CASE WHEN validation = 'failed' THEN 'failed' ELSE state END AS state
               FROM coordinator_response_steps WHERE incident_id = $1 ORDER BY step_id""",
            incident_id,
        ):
            if step["required"]:
                steps.setdefault(step["phase"], []).append(step["state"])
            if step["lease"] is not None:
                leases.append(lifecycle.Lease(step["step_id"], step["name"] or step["step_id"], step["lease"]))
        severity = domain.known_severity(row["severity"]) or Severity.SEV1  # unknown: hold it to the strictest
        return lifecycle.GuardFacts(
            severity=severity,
            step_states=steps,
            tasks=await self._task_facts(ctx, incident_id),
            containment=row["containment"],
            incident_id=incident_id,
            resolution=row["resolution"],
            firing=row["firing"],
            last_alert_at=row["last_alert_at"],
            now=now,
            leases=leases,
        )

    async def _task_facts(self, ctx: HandlerContext, incident_id: str) -> dict[str, tuple[int, int]]:
        return tasks.required_progress(await tasks.list_tasks(ctx.conn, incident_id))

    @staticmethod
    def _tell_tasks(ctx: HandlerContext, cause: EventBase, made: Sequence[tasks.Task]) -> None:
        """The tasks made now, for the reporter's follow-ups and the timeline; nothing when none were."""
        if not made:
            return
        opened = [
            OpenedTask(task_id=t.id, phase=t.phase, title=t.title, owner=t.owner, required=t.required, due_at=t.due_at)
            for t in made
        ]
        ctx.emit(TasksCreated(source=SOURCE, **cause.caused_by(), data=TasksOpened(tasks=opened)))

    async def _tell_dropped(
        self, ctx: HandlerContext, cause: EventBase, dropped: Sequence[tasks.Task], *, actor: str, reason: str
    ) -> None:
        """The open tasks cancelled now, so that nobody is still asked for them (their tickets closed too)."""
        if dropped:
            data = TasksDropped(task_ids=[t.id for t in dropped], actor=actor, reason=reason)
            ctx.emit(TasksCancelled(source=SOURCE, **cause.caused_by(), data=data))
        for task in dropped:
            await ticketing.close_ticket(ctx.conn, self.tickets, task)

    async def on_task_done(self, ctx: HandlerContext, task: tasks.Task) -> None:
        """A task was done (over the API): on the timeline and the audit trail, with who and the note."""
        ctx.audit("task.done", str(task.id), principal=task.done_by or "unknown", detail={"incident": task.incident_id})
        done = TaskDone(
            task_id=task.id,
            phase=task.phase,
            title=task.title,
            actor=task.done_by or "unknown",
            note=task.note,
            required=task.required,
        )
        ctx.emit(TaskCompleted(source=SOURCE, subject=task.incident_id, data=done))
        await ticketing.close_ticket(ctx.conn, self.tickets, task)

    async def on_task_added(self, ctx: HandlerContext, task: tasks.Task) -> None:
        """An operator added a task: a follow-up the ticketing file syncs is opened as a ticket in its tracker."""
        if self.tickets.syncs(task):
            title = await ctx.conn.fetchval(
                "SELECT title FROM coordinator_incidents WHERE incident_id = $1", task.incident_id
            )
            await ticketing.open_ticket(
                ctx.conn, self.tickets, task, incident_title=title or task.incident_id, public_url=self.public_url
            )

    async def on_ticket_outcome(self, ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        """A ticket opened is kept on its task (`vigil tasks list` shows it); one not opened or closed is logged."""
        task_id = effect.payload.get("task_id")
        if outcome.status == "succeeded" and effect.kind == ticketing.OPEN and outcome.result:
            ticket = {name: str(outcome.result[name]) for name in ("tracker", "ref", "url") if name in outcome.result}
            # Locked as finishing the task locks it: one done meanwhile is seen here, or sees the ticket.
            row = await ctx.conn.fetchrow(
                "UPDATE coordinator_tasks SET ticket = $2, updated_at = now() WHERE id = $1 RETURNING *",
                task_id,
                ticket,
            )
            log.info("incident %s: task %s is ticket %s", effect.subject, task_id, ticket.get("ref"))
            if row is not None:
                await ticketing.close_ticket(ctx.conn, self.tickets, tasks.task_of(row))  # done before it opened
        elif outcome.status != "succeeded":
            log.error(
                "incident %s: task %s: %s %s: %s", effect.subject, task_id, effect.kind, outcome.status, outcome.error
            )

    async def on_task_due(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """A task is overdue: tell the commander, once, with what it is and whose it is."""
        overdue = await tasks.on_task_due(ctx, timer)
        if overdue is None:
            return
        incident_id = overdue.task.incident_id
        row = await ctx.conn.fetchrow(
            "SELECT state, resolution, merged_into, commander, escalation FROM coordinator_incidents"
            " WHERE incident_id = $1",
            incident_id,
        )
        state = domain.known_state(row["state"]) if row else None
        if row is None or state is None or row["merged_into"] is not None:
            return
        # Once resolved, only its post-mortem's work is still due (it comes after); once closed, nothing is.
        if self.lifecycle.is_ended(state) and (state is IncidentState.CLOSED or overdue.task.phase != "post_mortem"):
            return
        escalation = Escalation.model_validate(row["escalation"]).model_copy(
            update={"commander": row["commander"], "reason": overdue.reason}
        )
        await self._escalate(ctx, incident_id, escalation, f"task-overdue-{overdue.task.id}", {"subject": incident_id})

    async def _note_reporters(
        self, ctx: HandlerContext, incident_id: str, severity: str, alerts: Sequence[AlertSummary]
    ) -> None:
        """The people who reported a problem the incident now holds: noted once each, and told it is handled.

        Only while the incident is open and its own (an update can race its resolution or its merge), and
        no more than MAX_REPORTERS of them: anyone who may send alerts could name any number.
        """
        config = self.notices.file.reporters
        if config is None:
            return
        found = domain.reporters(alerts, domains=config.domains)
        if not found:
            return
        rows = await ctx.conn.fetch(
            """INSERT INTO coordinator_reporters (incident_id, address, alert_key, reported_at, thread_of)
               SELECT $1, u.address, u.alert_key, u.reported_at, $1
               FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS u (address, alert_key, reported_at)
               WHERE EXISTS (SELECT 1 FROM coordinator_incidents i WHERE i.incident_id = $1
                             AND i.merged_into IS NULL AND NOT i.state = ANY($5::text[]))
                 AND (SELECT count(*) FROM coordinator_reporters r WHERE r.incident_id = $1) < $6
               ON CONFLICT DO NOTHING RETURNING address, reported_at""",
            incident_id,
            [r.address for r in found],
            [r.alert_key for r in found],
            [r.reported_at for r in found],
            [state.value for state in IncidentState if self.lifecycle.is_ended(state)],
            MAX_REPORTERS,
        )
        for row in rows:
            notice = notifications.Notice(
                kind="reporter_received",
                incident_id=incident_id,
                discriminator=notifications.RECEIVED,
                severity=severity,
                recipients=[row["address"]],
                data={"reported_at": domain.report_time(row["reported_at"])},
            )
            await notifications.notify_reporters(ctx.conn, self.notices, notice, thread_of=incident_id)

    async def _tell_reporters_resolved(
        self, ctx: HandlerContext, incident_id: str, severity: str, resolution: str
    ) -> None:
        """Once per incident and reporter: reopened and resolved again, they are not written to twice."""
        await self._tell_reporters(ctx, incident_id, severity, "reporter_resolved", "resolved", resolution=resolution)

    async def _tell_reporters(
        self, ctx: HandlerContext, incident_id: str, severity: str, kind: str, discriminator: str, **data: str
    ) -> None:
        """Write to each person who reported a problem the incident holds, if the notifications file says so."""
        reporters = self.notices.file.reporters
        if reporters is None or notifications.WORD_BACK_OF[kind] not in reporters.when:
            return
        rows = await ctx.conn.fetch(
            """SELECT address, reported_at, thread_of FROM coordinator_reporters WHERE incident_id = $1
               ORDER BY address""",
            incident_id,
        )
        for row in rows:
            notice = notifications.Notice(
                kind=kind,
                incident_id=incident_id,
                discriminator=discriminator,
                severity=severity,
                recipients=[row["address"]],
                data={"reported_at": domain.report_time(row["reported_at"]), **data},
            )
            await notifications.notify_reporters(ctx.conn, self.notices, notice, thread_of=row["thread_of"])

    async def _log_transition(
        self,
        ctx: HandlerContext,
        incident_id: str,
        *,
        at: datetime,
        before: IncidentState | None,
        after: IncidentState,
        actor: str,
        reason: str = "",
        transition: str | None = None,
        resolution: str | None = None,
        command_id: str | None = None,
    ) -> None:
        await ctx.conn.execute(
            """INSERT INTO coordinator_transitions
                   (incident_id, at, from_state, to_state, transition, actor, reason, resolution, command_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            incident_id,
            at,
            before.value if before else None,
            after.value,
            transition,
            actor,
            reason,
            resolution,
            command_id,
        )
        if before is None:
            await ctx.conn.execute(
                "UPDATE coordinator_incidents SET state_times = jsonb_build_object($2::text, $3::timestamptz) "
                "WHERE incident_id = $1",
                incident_id,
                after.value,
                at,
            )

    async def _count_acknowledgement(
        self, ctx: HandlerContext, incident_id: str, acks: list[str], actor: str, needed: int
    ) -> None:
        """One more person on the incident, its state left as it is; enough of them stop the paging."""
        acks = list(dict.fromkeys([*acks, actor]))
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET acks = $2, updated_at = now() WHERE incident_id = $1", incident_id, acks
        )
        log.info("incident %s: %d of %d acknowledgements", incident_id, len(acks), needed)
        if len(acks) >= needed:
            await timers.cancel(ctx.conn, service=SERVICE, kind=ACK_DEADLINE, subject=incident_id)

    async def on_ack_deadline(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """Nobody acknowledged in time: the incident's escalation policy pages its next step."""
        row = await ctx.conn.fetchrow(
            "SELECT * FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", timer.subject
        )
        if row is None:
            return
        state, severity = self._known(row, timer.subject, "acknowledgement deadline ignored")
        if state is None or self.lifecycle.is_ended(state) or severity is None:
            return
        policy = self._policy_for(row["type"], severity.value, row["services"])
        if len(row["acks"]) >= policy.acknowledgements:  # as many people on it as the policy wants
            return
        chain = escalation.pages(policy)
        step = int(timer.payload.get("step", 1))
        schedule = self.oncall.schedules.get(row["rotation"]) or self._schedule_for(
            row["type"], row["severity"], row["services"]
        )
        # Whom the schedule pages, in order, as it stood when the incident was detected.
        order = schedules.escalation_order(schedule, row["detected_at"])
        paged: list[str] = list(row["paged"])
        now = datetime.now(UTC)
        target = None
        while step < len(chain) and target is None:
            page = chain[step]
            if page.working_hours and not in_working_hours(self.escalation.working_hours, now):
                step += 1
                continue
            target = escalation.resolve(page, order=order, paged=paged, on_call_elsewhere=self._elsewhere(page, now))
            if target is None:
                step += 1
        if target is None:  # the chain ran out: the fallback hears, and the timeline says so
            await self._exhausted(ctx, timer.subject, row, schedule.name, paged or order, severity, policy)
            return
        previous = row["commander"]
        commander = target.recipient if target.becomes_commander else previous
        reason = f"not acknowledged by {previous} within the {severity.value} deadline"
        if not target.becomes_commander:
            reason += f"; {target.recipient} told (policy {policy.name})"
        escalation_ = Escalation.model_validate(row["escalation"]).model_copy(
            update={"commander": commander, "reason": reason}
        )
        await ctx.conn.execute(
            """UPDATE coordinator_incidents
               SET commander = $2, escalation_step = $3, escalation = $4, paged = paged || to_jsonb($5::text),
                   roles = roles || jsonb_build_object('commander', $2::text), updated_at = now()
               WHERE incident_id = $1""",
            timer.subject,
            commander,
            step,
            escalation_.model_dump(mode="json"),
            target.recipient,
        )
        if target.becomes_commander:
            await tasks.assign_role(ctx.conn, incident_id=timer.subject, role="commander", person=commander)
        recipients = None if target.becomes_commander else [target.recipient]
        await self._escalate(
            ctx, timer.subject, escalation_, f"step-{step}", {"subject": timer.subject}, recipients=recipients
        )
        await self._set_ack_deadline(
            ctx, timer.subject, severity, step=step + 1, incident_type=row["type"], services=row["services"]
        )

    async def _post_status_update(self, ctx: HandlerContext, command: AddNote, row: asyncpg.Record) -> None:
        """Where the incident stands, as a person told it: to its commander, the people with a role on it and
        the severity's stakeholders; the next reminder to send one is counted from now."""
        severity = domain.known_severity(row["severity"])
        audience = escalation.stakeholders(self.escalation, severity) if severity else []
        notice = notifications.Notice(
            kind="status_update",
            incident_id=command.subject,
            discriminator=command.id,  # each update heard once, however often its command is delivered
            severity=row["severity"],
            recipients=list(dict.fromkeys([row["commander"], *row["roles"].values(), *audience])),
            data={
                "title": row["title"],
                "state": row["state"],
                "message": command.data.note,
                "actor": command.data.actor,
                "commander": row["commander"],
            },
        )
        await notifications.notify(ctx.conn, self.notices, notice)
        await self._tell_reporters(
            ctx, command.subject, row["severity"], "reporter_update", command.id, message=command.data.note
        )
        # The reminder pending, if any (none before anyone is on it, nor once it ended), is moved.
        number = await ctx.conn.fetchval(
            """SELECT (payload ->> 'number')::int FROM timers WHERE service = $1 AND kind = $2 AND subject = $3
               AND fired_at IS NULL AND cancelled_at IS NULL""",
            SERVICE,
            STATUS_UPDATE,
            command.subject,
        )
        if number is not None:
            await self._remind_later(ctx, command.subject, row["severity"], number=number)

    async def _remind_later(self, ctx: HandlerContext, incident_id: str, severity: str, *, number: int) -> None:
        known = domain.known_severity(severity)
        every = escalation.status_update_every(self.escalation, known) if known else None
        if every is not None:
            await timers.schedule(
                ctx.conn,
                service=SERVICE,
                kind=STATUS_UPDATE,
                subject=incident_id,
                due_at=datetime.now(UTC) + every,
                payload={"number": number},
            )

    async def on_status_update_due(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """Remind the commander of an open incident to tell people where it stands, then again later."""
        row = await ctx.conn.fetchrow(
            "SELECT state, severity, title, commander FROM coordinator_incidents WHERE incident_id = $1",
            timer.subject,
        )
        state = domain.known_state(row["state"]) if row else None
        if row is None or state is None or self.lifecycle.is_ended(state):
            return
        number = int(timer.payload.get("number", 1))
        notice = notifications.Notice(
            kind="reminder",
            incident_id=timer.subject,
            discriminator=f"status-{number}",
            severity=row["severity"],
            recipients=[row["commander"]],
            data={
                "title": row["title"],
                "state": row["state"],
                "reason": f"time for status update {number}: say where the incident stands "
                f'(vigil note {timer.subject} "..." --status-update)',
            },
        )
        await notifications.notify(ctx.conn, self.notices, notice)
        await self._remind_later(ctx, timer.subject, row["severity"], number=number + 1)

    async def on_analyzed(self, ctx: HandlerContext, event: IncidentAnalyzed) -> None:
        """New analysis goes to the commander as an update in the incident's conversation, not a new page.

        The escalation keeps it too, so that every later page (the next in the rotation, a raised
        severity) carries the analysis.
        """
        brief = domain.analysis_brief(event.data)
        carried = brief.model_dump(mode="json")
        if event.data.impact is not None and event.data.impact.business_services:
            await self._add_services(ctx, event.subject, event.data.impact.business_services)
        await ctx.conn.execute(
            """UPDATE coordinator_incidents SET escalation = jsonb_set(escalation, '{analysis}', $2)
               WHERE incident_id = $1 AND jsonb_typeof(escalation) = 'object'""",
            event.subject,
            carried,
        )
        # Keyed by what it says: a repeated analysis that says nothing new is not sent again.
        await self._update(
            ctx,
            event.subject,
            f"analysis-{domain.analysis_digest(brief)}",
            f"analysis: {event.data.summary}",
            analysis=carried,
        )
        if event.data.severity_recommendation is not None:
            await self._recommended(ctx, event)

    async def _recommended(self, ctx: HandlerContext, event: IncidentAnalyzed) -> None:
        """The analyzer finds the severity too low: raise it and page again — or, if a person set it, offer it."""
        recommendation = event.data.severity_recommendation
        assert recommendation is not None
        row = await ctx.conn.fetchrow(
            """SELECT state, severity, commander, escalation, escalation_step, edited_by, type, state_times, roles,
                      services
               FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE""",
            event.subject,
        )
        if row is None:
            return
        state, current = self._known(row, event.subject, "severity recommendation not applied")
        new = recommendation.severity
        if state is None or current is None or self.lifecycle.is_ended(state) or not domain.escalates(current, new):
            return
        reasons = "; ".join(recommendation.reasons)
        if self._offered(ctx, event, row, current, new, by="analyzer", reason=reasons):
            return
        escalation = Escalation.model_validate(row["escalation"]).model_copy(
            update={
                "severity": new,
                "reason": f"severity raised from {current.value} to {new.value} by impact: {reasons}",
            }
        )
        ctx.audit(
            "incident.severity_raised",
            event.subject,
            principal=f"system:{SERVICE}",
            detail={"from": current.value, "to": new.value, "by": "analyzer", "reasons": reasons[:500]},
        )
        await self._raise_severity(ctx, event, row, state, new, escalation, f"impact-{new.value}")

    async def on_planned(self, ctx: HandlerContext, event: ResponsePlanned) -> None:
        plan = event.data
        waiting = sum(a.requires_approval for a in plan.actions)
        reason = f"response plan {plan.playbook_title!r}: {len(plan.actions)} action(s), {waiting} awaiting approval"
        await self._update(ctx, event.subject, f"plan-{plan.plan_id}", reason)

    async def _relay_message(self, ctx: HandlerContext, incident_id: str, step: StepChange) -> None:
        """A playbook's `notify` step: its message goes to the incident's people (its `to`, else the commander)."""
        params = (step.sent or {}).get("params", {})
        text = str(params.get("text") or params.get("message") or step.name)
        to = params.get("to")
        await self._update(ctx, incident_id, f"notify-{step.step_id}", text, recipients=[str(to)] if to else None)

    async def _update(
        self,
        ctx: HandlerContext,
        incident_id: str,
        discriminator: str,
        reason: str,
        *,
        recipients: list[str] | None = None,
        analysis: dict[str, Any] | None = None,
    ) -> None:
        row = await ctx.conn.fetchrow(
            "SELECT state, severity, title, commander FROM coordinator_incidents WHERE incident_id = $1", incident_id
        )
        state = domain.known_state(row["state"]) if row else None
        if row is None or state is None or self.lifecycle.is_ended(state):
            return
        notice = notifications.Notice(
            kind="update",
            incident_id=incident_id,
            discriminator=discriminator,
            severity=row["severity"],
            recipients=recipients or [row["commander"]],
            data={"title": row["title"], "reason": reason, **({"analysis": analysis} if analysis else {})},
        )
        await notifications.notify(ctx.conn, self.notices, notice)

    async def on_merged(self, ctx: HandlerContext, event: IncidentMerged) -> None:
        """An incident was merged into another: it ends (resolved, as merged), its pages and tasks stop, its
        people hear where it went, roles the survivor lacks carry over, and the survivor's commander is told."""
        merge = event.data
        row = await ctx.conn.fetchrow(
            "SELECT * FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", event.subject
        )
        if row is None:
            log.info("incident %s merged into %s, but it is unknown here", event.subject, merge.survivor)
            return
        if row["merged_into"] is not None:
            return  # told before
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET merged_into = $2, updated_at = now() WHERE incident_id = $1",
            event.subject,
            merge.survivor,
        )
        people = list(dict.fromkeys([row["commander"], *row["roles"].values()]))
        state = domain.known_state(row["state"])
        why = f"merged into incident {merge.survivor}" + (f": {merge.note}" if merge.note else "")
        if state is not None and not self.lifecycle.is_ended(state):
            await self._end_merged(ctx, event, row, state, why)
        notice = notifications.Notice(
            kind="update",
            incident_id=event.subject,
            discriminator=f"merged-{merge.survivor}",
            severity=row["severity"],
            recipients=people,
            data={"title": row["title"], "reason": f"{why} (by {merge.actor}); follow it there"},
        )
        await notifications.notify(ctx.conn, self.notices, notice)
        await self._carry_roles(ctx, event, row)
        await self._hand_on_reporters(ctx, event.subject, merge.survivor)
        await rooms.archive(ctx.conn, self.notices, incident_id=event.subject, because=f"merged-{merge.survivor}")
        await self._update(
            ctx,
            merge.survivor,
            f"merged-{event.subject}",
            f"incident {event.subject} ({row['title']}) merged into this one by {merge.actor} with its "
            f"{merge.alerts} alert(s)" + (f": {merge.note}" if merge.note else ""),
        )
        log.info("incident %s merged into %s by %s", event.subject, merge.survivor, merge.actor, extra=event_ids(event))

    async def _hand_on_reporters(self, ctx: HandlerContext, merged: str, survivor: str) -> None:
        """Those who reported a problem the merged incident held hear of the survivor's resolution, in their own
        conversation, not of this one's end by merge; at once if the survivor was resolved already."""
        # Locked as a command resolving the survivor locks it: its resolution sees them, or they see it.
        row = await ctx.conn.fetchrow(
            "SELECT state, severity, resolution FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", survivor
        )
        moved = await ctx.conn.fetchval(
            """WITH moved AS (
                   INSERT INTO coordinator_reporters (incident_id, address, alert_key, reported_at, thread_of)
                   SELECT $2, address, alert_key, reported_at, thread_of FROM coordinator_reporters
                   WHERE incident_id = $1 ON CONFLICT DO NOTHING RETURNING 1)
               SELECT count(*) FROM moved""",
            merged,
            survivor,
        )
        state = domain.known_state(row["state"]) if row else None
        if moved and row is not None and state is not None and self.lifecycle.is_ended(state):
            await self._tell_reporters_resolved(ctx, survivor, row["severity"], row["resolution"] or "fixed")

    async def _end_merged(
        self, ctx: HandlerContext, event: IncidentMerged, row: asyncpg.Record, state: IncidentState, why: str
    ) -> None:
        """Resolve an incident merged away, resolution `merged`: no lifecycle guard holds back a merge."""
        merge = event.data
        target = IncidentState.RESOLVED
        await ctx.conn.execute(
            """UPDATE coordinator_incidents
               SET state = $2, resolution = 'merged', resolved_at = coalesce(resolved_at, $3),
                   state_times = jsonb_set(state_times, ARRAY[$2::text],
                                           coalesce(state_times -> $2, to_jsonb($3::timestamptz))),
                   updated_at = now()
               WHERE incident_id = $1""",
            event.subject,
            target.value,
            event.time,
        )
        for kind in (ACK_DEADLINE, STATUS_UPDATE):
            await timers.cancel(ctx.conn, service=SERVICE, kind=kind, subject=event.subject)
        dropped = await tasks.cancel_open(ctx.conn, incident_id=event.subject, actor=merge.actor, note=why)
        await self._tell_dropped(ctx, event, dropped, actor=merge.actor, reason=why)
        await self._log_transition(
            ctx,
            event.subject,
            at=event.time,
            before=state,
            after=target,
            actor=merge.actor,
            reason=why,
            transition="merge",
            resolution="merged",
            command_id=merge.command_id,
        )
        ctx.emit(
            IncidentStateChanged(
                source=SOURCE,
                **event.caused_by(),
                data=StateChange(
                    from_state=state,
                    to_state=target,
                    actor=merge.actor,
                    note=why,
                    command_id=merge.command_id,
                    transition="merge",
                    resolution="merged",
                    ended=True,  # over, whatever the lifecycle's ends: its alerts and response are the survivor's
                ),
            )
        )

    async def _carry_roles(self, ctx: HandlerContext, event: IncidentMerged, row: asyncpg.Record) -> None:
        """Roles the survivor has nobody in (a scribe, a communications lead) go to whoever held them here."""
        survivor = await ctx.conn.fetchrow(
            "SELECT roles FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", event.data.survivor
        )
        if survivor is None:
            log.info(
                "incident %s: its survivor %s is unknown here; no roles carried", event.subject, event.data.survivor
            )
            return
        missing = {
            role: person
            for role, person in row["roles"].items()
            if role not in survivor["roles"] and role != "commander"  # the survivor's commander leads it
        }
        if not missing:
            return
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET roles = roles || $2, updated_at = now() WHERE incident_id = $1",
            event.data.survivor,
            missing,
        )
        for role, person in sorted(missing.items()):
            await tasks.assign_role(ctx.conn, incident_id=event.data.survivor, role=role, person=person)
            assignment = Assignment(
                actor=event.data.actor, person=person, role=role, note=f"carried over from incident {event.subject}"
            )
            ctx.emit(
                IncidentAssigned(
                    source=SOURCE, **(event.caused_by() | {"subject": event.data.survivor}), data=assignment
                )
            )

    async def on_split(self, ctx: HandlerContext, event: IncidentSplit) -> None:
        """Alerts were detached into a new incident (paged as any new one): the commander here is told."""
        split = event.data
        if split.incident.parts == 1:
            # The alerts it keeps, restated whole: as many firing at most (their statuses are as they came
            # in; the next change of its alerts brings the detector's own count).
            await ctx.conn.execute(
                "UPDATE coordinator_incidents SET firing = least(firing, $2) WHERE incident_id = $1",
                event.subject,
                _firing(split.incident),
            )
        if split.incident.part > 1:
            return
        await self._update(
            ctx,
            event.subject,
            f"split-{split.new_incident}",
            f"{len(split.detached)} alert(s) detached into incident {split.new_incident} by {split.actor}"
            + (f": {split.note}" if split.note else ""),
        )

    def _elsewhere(self, page: escalation.Page, now: datetime) -> str | None:
        """Who is on call in the schedule a `schedule:NAME` page names."""
        if not page.notify.startswith("schedule:"):
            return None
        other = self.oncall.schedules.get(page.notify.removeprefix("schedule:"))
        return schedules.on_call(other, now).person if other is not None else None

    def _policy_for(self, incident_type: str, severity: str, services: Sequence[str]) -> escalation.Policy:
        return escalation.policy_for(self.escalation, incident_type=incident_type, severity=severity, services=services)

    async def _exhausted(
        self,
        ctx: HandlerContext,
        incident_id: str,
        row: asyncpg.Record,
        schedule: str,
        paged: list[str],
        severity: Severity,
        policy: escalation.Policy,
    ) -> None:
        """Everyone in the chain was paged and nobody acknowledged: the fallback hears, once."""
        if row["exhausted_at"] is not None:
            log.info("incident %s: escalation exhaustion already reported", incident_id)
            return
        exhaustion = domain.exhaustion(schedule, paged=paged, last_commander=row["commander"], severity=severity)
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET exhausted_at = now(), updated_at = now() WHERE incident_id = $1",
            incident_id,
        )
        ctx.emit(EscalationExhausted(source=SOURCE, subject=incident_id, data=exhaustion))
        ctx.audit(
            "escalation.exhausted",
            incident_id,
            principal=f"system:{SERVICE}",
            outcome="exhausted",
            detail={"paged": ", ".join(paged), "fallback": ", ".join(policy.fallback.notify)},
        )
        notice = notifications.exhausted_notice(
            incident_id, exhaustion, title=row["title"], recipients=policy.fallback.notify
        )
        await notifications.notify(ctx.conn, self.notices, notice)
        log.warning(
            "incident %s: everyone of schedule %s paged (%s), nobody acknowledged; told %s",
            incident_id,
            schedule,
            ", ".join(exhaustion.paged),
            ", ".join(policy.fallback.notify),
        )

    async def _escalate(
        self,
        ctx: HandlerContext,
        incident_id: str,
        escalation_: Escalation,
        discriminator: str,
        caused: dict[str, Any],
        *,
        recipients: list[str] | None = None,
    ) -> None:
        """Page the escalation's commander (or ``recipients``): the event for the timeline, the notice once.

        Paged at a severity that calls for a room, the incident gets one first: the page is its first post.
        """
        ctx.emit(IncidentEscalated(source=SOURCE, **caused, data=escalation_))
        await rooms.open_room(
            ctx.conn,
            self.notices,
            incident_id=incident_id,
            title=escalation_.title,
            severity=escalation_.severity.value,
            commander=escalation_.commander,
        )
        notice = notifications.escalation_notice(
            incident_id, escalation_, discriminator=discriminator, recipients=recipients
        )
        await notifications.notify(ctx.conn, self.notices, notice)

    def _ended(self, row: asyncpg.Record) -> bool:
        """Whether the incident's row says it is over, by the lifecycle in force."""
        state = domain.known_state(row["state"])
        return state is not None and self.lifecycle.is_ended(state)

    def ended_states(self) -> list[str]:
        """The states in which an incident is over, by the lifecycle in force."""
        return [state.value for state in IncidentState if self.lifecycle.is_ended(state)]

    async def on_digest_due(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """A review digest's time: the period that ended then, summed up and sent; then its next time is set."""
        digest = self.digests.get(timer.subject)
        if digest is None:
            log.warning("digest %s is not configured here: not sent (another coordinator's has it?)", timer.subject)
            return
        now = datetime.now(UTC)
        end = digests.scheduled_time(timer.payload, timer.due_at)
        data = await digests.gather(ctx.conn, digest, end=end, ended=self.ended_states(), now=now)
        notice = notifications.Notice(
            kind="digest",
            incident_id=f"digest-{digest.name}",  # each digest's mails one conversation
            discriminator=end.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ"),
            severity=digests.highest_severity(data),
            recipients=list(digest.to),
            data=data,
        )
        if not notifications.plan(self.notices.file, notice)[0]:
            log.warning("digest %s reaches nobody: no route of the notifications file takes it to them", digest.name)
        await notifications.notify(ctx.conn, self.notices, notice)
        # Down past several of its times: the next is the next to come, not each one missed.
        following = digest.next_after(max(end, now))
        if following is not None:
            await timers.schedule(
                ctx.conn,
                service=SERVICE,
                kind=digests.TIMER,
                subject=digest.name,
                due_at=following,
                payload=digests.scheduled(following),
            )
        opened, resolved = data["opened"], data["resolved"]
        log.info("digest %s for %s: %d opened, %d resolved", digest.name, data["period"], opened, resolved)

    async def on_room_outcome(self, ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        """A room opened, or something done in it; a room that cannot be opened is given up (logged, with why)."""
        if effect.kind == rooms.IN_ROOM and "action" not in effect.payload:
            await self.on_notice_outcome(ctx, effect, outcome)  # a notice posted there
        elif outcome.status != "succeeded":
            log.error("incident %s: %s %s: %s", effect.subject, effect.kind, outcome.status, outcome.error)
            if effect.kind == rooms.OPEN:
                dropped = await rooms.give_up(ctx.conn, incident_id=effect.subject, name=effect.payload["name"])
                log.error("incident %s: no room; %d post(s) waiting for it cancelled", effect.subject, dropped)
        elif effect.kind == rooms.OPEN:
            channel_id = str(outcome.result.get("channel_id", ""))
            waiting = await rooms.opened(
                ctx.conn, incident_id=effect.subject, name=effect.payload["name"], channel_id=channel_id
            )
            name = effect.payload["name"]
            log.info("incident %s: room %s open; %d post(s) go there now", effect.subject, name, waiting)

    async def on_notice_outcome(self, ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        """Count each notice's outcome; one not delivered is also on the timeline (its EffectCompleted) and logged."""
        key = notifications.parse_key(outcome.key)
        metrics.NOTIFICATIONS.labels(key.channel, key.kind, outcome.status).inc()
        if outcome.status != "succeeded":
            log.error(
                "incident %s: %s notice to %s by %s %s: %s",
                effect.subject,
                key.kind,
                key.recipient,
                key.channel,
                outcome.status,
                outcome.error,
            )

    def _schedule_for(self, incident_type: str, severity: str, services: Sequence[str]) -> schedules.Schedule:
        return schedules.route(self.oncall, incident_type=incident_type, severity=severity, services=services)

    @staticmethod
    def _known(row: asyncpg.Record, incident_id: str, outcome: str) -> tuple[IncidentState | None, Severity | None]:
        """Return the row's state and severity, None for either one this version does not know (logged)."""
        state = domain.known_state(row["state"])
        severity = domain.known_severity(row["severity"])
        if state is None or severity is None:
            log.warning(
                "incident %s: %s: its state %r or severity %r is unknown to this version of Vigil "
                "(a newer coordinator wrote it); leaving it to a coordinator that knows it",
                incident_id,
                outcome,
                row["state"],
                row["severity"],
            )
        return state, severity

    async def _set_ack_deadline(
        self,
        ctx: HandlerContext,
        incident_id: str,
        severity: Severity,
        *,
        step: int,
        incident_type: str,
        services: Sequence[str],
    ) -> None:
        """When the policy's next page (or, past its last, the fallback) is due, from now."""
        policy = self._policy_for(incident_type, severity.value, services)
        chain = escalation.pages(policy)
        wait = chain[step].after if step < len(chain) else escalation.fallback_after(policy)
        await timers.schedule(
            ctx.conn,
            service=SERVICE,
            kind=ACK_DEADLINE,
            subject=incident_id,
            due_at=datetime.now(UTC) + wait,
            payload={"step": step},
        )


def _firing(snapshot: IncidentSnapshot) -> int:
    """How many of the alerts a snapshot brings are firing."""
    return sum(a.status == "firing" for a in snapshot.new_alerts)


def _last_seen(snapshot: IncidentSnapshot, event: EventBase) -> datetime:
    """When the incident's alerts were last seen, as a snapshot says: never after the event that says it
    (a tool's clock ahead of ours would otherwise hold a quiet period off)."""
    return min(snapshot.last_seen, event.time)


def _command_name(command: Command) -> str:
    """`vigil.command.change_state.v1` -> `change_state`; acknowledge and resolve keep their names."""
    return command.type.removeprefix("vigil.command.").rsplit(".", 1)[0]
