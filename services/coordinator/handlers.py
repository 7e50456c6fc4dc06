"""The coordinator's handlers: command, escalate, and move incidents through their states."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg

from services.coordinator import domain
from shared import timers
from shared.consumer import HandlerContext, dispatch_each
from shared.errors import InvalidTransition
from shared.events import (
    AcknowledgeIncident,
    CommandRejected,
    CommandRejection,
    Escalation,
    EscalationExhausted,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentEscalated,
    IncidentState,
    IncidentStateChanged,
    IncidentUpdated,
    ResolutionSuggested,
    ResolutionSuggestion,
    ResolveIncident,
    ResponseStepChanged,
    Severity,
    StateChange,
)
from shared.logs import event_ids

log = logging.getLogger(__name__)
SOURCE = "/vigil/coordinator"
SERVICE = "coordinator"
ACK_DEADLINE = "ack-deadline"
ALERTS_IN_ESCALATION = 20


class Coordinator:
    def __init__(self, oncall: domain.OnCall) -> None:
        self.oncall = oncall
        self.handle = dispatch_each(
            {
                IncidentDetected: self.on_detected,
                IncidentUpdated: self.on_updated,
                IncidentAlertsChanged: self.on_alerts_changed,
                AcknowledgeIncident: self.on_command,
                ResolveIncident: self.on_command,
                ResponseStepChanged: self.on_step_changed,
            }
        )
        self.timer_handlers: dict[str, timers.TimerHandler] = {ACK_DEADLINE: self.on_ack_deadline}

    async def on_detected(self, ctx: HandlerContext, event: IncidentDetected) -> None:
        snapshot = event.data
        rotation = domain.rotation_for(self.oncall, snapshot.type)
        commander = domain.on_shift(rotation, event.time)
        escalation = domain.escalation(
            snapshot,
            commander=commander,
            channel=self.oncall.channel,
            reason=f"new {snapshot.severity.value} {snapshot.type.value} incident: immediate escalation",
            alerts=snapshot.new_alerts[:ALERTS_IN_ESCALATION],
        )
        inserted = await ctx.conn.fetchval(
            """INSERT INTO coordinator_incidents (incident_id, state, severity, type, title, commander,
                   rotation, escalation, detected_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING true""",
            event.subject,
            IncidentState.DETECTED.value,
            snapshot.severity.value,
            snapshot.type.value,
            snapshot.title,
            commander,
            rotation.name,
            escalation.model_dump(mode="json"),
            event.time,
        )
        if not inserted:
            return
        caused = event.caused_by()
        ctx.emit(
            IncidentStateChanged(
                source=SOURCE,
                **caused,
                data=StateChange(from_state=None, to_state=IncidentState.DETECTED, actor="detector"),
            )
        )
        ctx.emit(IncidentEscalated(source=SOURCE, **caused, data=escalation))
        await self._set_ack_deadline(ctx, event.subject, snapshot.severity, step=1)
        log.info("incident %s escalated to %s", event.subject, commander, extra=event_ids(event))

    async def on_updated(self, ctx: HandlerContext, event: IncidentUpdated) -> None:
        if event.data.part > 1:
            return  # the rest of a batch's alerts: its first part carried the same severity
        row = await ctx.conn.fetchrow(
            """SELECT state, severity, commander, escalation_step FROM coordinator_incidents
               WHERE incident_id = $1 FOR UPDATE""",
            event.subject,
        )
        if row is None:
            return
        state, old = self._known(row, event.subject, "severity change not escalated")
        if state is None or old is None or state is IncidentState.RESOLVED:
            return
        new = event.data.severity
        if not domain.escalates(old, new):
            return
        escalation = domain.escalation(
            event.data,
            commander=row["commander"],
            channel=self.oncall.channel,
            reason=f"severity raised from {old.value} to {new.value}",
            alerts=event.data.new_alerts[:ALERTS_IN_ESCALATION],
        )
        await ctx.conn.execute(
            """UPDATE coordinator_incidents SET severity = $2, escalation = $3, updated_at = now()
               WHERE incident_id = $1""",
            event.subject,
            new.value,
            escalation.model_dump(mode="json"),
        )
        ctx.emit(IncidentEscalated(source=SOURCE, **event.caused_by(), data=escalation))
        if state is IncidentState.DETECTED:
            # Unacknowledged still: the walk down the rotation goes on from the current commander.
            await self._set_ack_deadline(ctx, event.subject, new, step=row["escalation_step"] + 1)

    async def on_alerts_changed(self, ctx: HandlerContext, event: IncidentAlertsChanged) -> None:
        """Every alert of a service disruption has ended: suggest that its commander resolves it.

        Only a suggestion, on the timeline: whether the service is healthy again is the commander's call.
        """
        if not event.data.all_resolved:
            return
        row = await ctx.conn.fetchrow(
            "SELECT state, commander FROM coordinator_incidents WHERE incident_id = $1", event.subject
        )
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

    async def on_step_changed(self, ctx: HandlerContext, event: ResponseStepChanged) -> None:
        """A response step failed and its playbook says escalate: page the commander again, saying which."""
        step = event.data
        if step.state != "failed" or step.on_failure != "escalate":
            return
        row = await ctx.conn.fetchrow(
            "SELECT state, commander, escalation FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE",
            event.subject,
        )
        if row is None or domain.known_state(row["state"]) in (None, IncidentState.RESOLVED):
            return
        what = f"{step.name}: {step.item}" if step.item else step.name
        escalation = Escalation.model_validate(row["escalation"]).model_copy(
            update={"commander": row["commander"], "reason": f"response step {what!r} failed: {step.reason}"}
        )
        ctx.emit(IncidentEscalated(source=SOURCE, **event.caused_by(), data=escalation))
        log.warning("incident %s: step %s failed; escalated to %s", event.subject, step.step_id, row["commander"])

    async def on_command(self, ctx: HandlerContext, command: AcknowledgeIncident | ResolveIncident) -> None:
        await self.apply_command(ctx, command)

    async def apply_command(
        self, ctx: HandlerContext, command: AcknowledgeIncident | ResolveIncident
    ) -> IncidentStateChanged | CommandRejected:
        """Apply an operator's command; an impossible one is answered with a CommandRejected event."""
        name = domain.COMMAND_NAMES[type(command)]
        row = await ctx.conn.fetchrow(
            "SELECT state FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", command.subject
        )
        try:
            if row is None:
                raise InvalidTransition(f"no incident {command.subject}")
            target = domain.transition(row["state"], name)
            current = IncidentState(row["state"])  # known: the transition was allowed from it
        except InvalidTransition as exc:
            rejected = CommandRejected(
                source=SOURCE,
                **command.caused_by(),
                data=CommandRejection(command_id=command.id, command=name, actor=command.data.actor, reason=str(exc)),
            )
            ctx.emit(rejected)
            log.warning("%s by %s rejected: %s", name, command.data.actor, exc, extra=event_ids(command))
            return rejected
        stamp = {IncidentState.ACKNOWLEDGED: "acknowledged_at", IncidentState.RESOLVED: "resolved_at"}[target]
        await ctx.conn.execute(
            f"""UPDATE coordinator_incidents SET state = $2, {stamp} = $3, updated_at = now()
                WHERE incident_id = $1""",
            command.subject,
            target.value,
            command.time,
        )
        await timers.cancel(ctx.conn, service=SERVICE, kind=ACK_DEADLINE, subject=command.subject)
        changed = IncidentStateChanged(
            source=SOURCE,
            **command.caused_by(),
            data=StateChange(
                from_state=current,
                to_state=target,
                actor=command.data.actor,
                note=command.data.note,
                command_id=command.id,
            ),
        )
        ctx.emit(changed)
        log.info(
            "incident %s %s -> %s by %s", command.subject, current, target, command.data.actor, extra=event_ids(command)
        )
        return changed

    async def on_ack_deadline(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """Nobody acknowledged in time: page the next person in the rotation with everything gathered."""
        row = await ctx.conn.fetchrow(
            "SELECT * FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE", timer.subject
        )
        if row is None:
            return
        state, severity = self._known(row, timer.subject, "acknowledgement deadline ignored")
        if state is not IncidentState.DETECTED or severity is None:
            return
        step = int(timer.payload.get("step", 1))
        rotation = next((r for r in self.oncall.rotations if r.name == row["rotation"]), self.oncall.rotations[0])
        if step >= len(rotation.members):
            await self._exhausted(ctx, timer.subject, row, rotation, severity)
            return
        previous = row["commander"]
        commander = domain.on_shift(rotation, row["detected_at"], step=step)
        escalation = Escalation.model_validate(row["escalation"]).model_copy(
            update={
                "commander": commander,
                "reason": f"not acknowledged by {previous} within the {severity.value} deadline",
            }
        )
        await ctx.conn.execute(
            """UPDATE coordinator_incidents SET commander = $2, escalation_step = $3, escalation = $4,
                   updated_at = now() WHERE incident_id = $1""",
            timer.subject,
            commander,
            step,
            escalation.model_dump(mode="json"),
        )
        ctx.emit(IncidentEscalated(source=SOURCE, subject=timer.subject, data=escalation))
        await self._set_ack_deadline(ctx, timer.subject, severity, step=step + 1)

    async def _exhausted(
        self, ctx: HandlerContext, incident_id: str, row: asyncpg.Record, rotation: domain.Rotation, severity: Severity
    ) -> None:
        """Everyone in the rotation was paged: say so once, for people to step in."""
        if row["escalation_step"] >= len(rotation.members):
            log.info("incident %s: escalation exhaustion already reported", incident_id)
            return
        exhaustion = domain.exhaustion(
            rotation, detected_at=row["detected_at"], last_commander=row["commander"], severity=severity
        )
        # A step past the rotation's end marks the exhaustion as reported.
        await ctx.conn.execute(
            "UPDATE coordinator_incidents SET escalation_step = $2, updated_at = now() WHERE incident_id = $1",
            incident_id,
            len(rotation.members),
        )
        ctx.emit(EscalationExhausted(source=SOURCE, subject=incident_id, data=exhaustion))
        log.warning(
            "incident %s: whole rotation %s paged (%s), nobody acknowledged",
            incident_id,
            rotation.name,
            ", ".join(exhaustion.paged),
        )

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

    async def _set_ack_deadline(self, ctx: HandlerContext, incident_id: str, severity: Severity, step: int) -> None:
        await timers.schedule(
            ctx.conn,
            service=SERVICE,
            kind=ACK_DEADLINE,
            subject=incident_id,
            due_at=domain.ack_deadline(self.oncall, severity, datetime.now(UTC)),
            payload={"step": step},
        )
