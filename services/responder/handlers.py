"""The responder's handlers: plan from each analysis, then execute the plan's steps safely.

Every change to an incident's steps — a new or revised plan, an approval or denial, an approval
timing out, an action's outcome — runs under the incident's lock, records the step's new state
with who or what caused it, emits a ``ResponseStepChanged`` event, and then asks the ordering
rules (``steps.advance``) what runs next. An action is never executed here: it is enqueued as an
effect in the same transaction, and the effects runner executes it after commit, at most once per
step id, which the far side sees as the idempotency key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.responder import approvals, domain, guardrails, metrics, repository, steps
from services.responder.blocklist import IpNetwork
from services.responder.connectors import Connector, ConnectorError, StepCall
from services.responder.playbook import IncidentFacts, PlannedStep
from shared import timers
from shared.consumer import HandlerContext, dispatch_each
from shared.effects import Effect
from shared.effects import repository as effects
from shared.effects.domain import bound_result
from shared.errors import InvalidMessage
from shared.events import (
    ApproveStep,
    CommandRejected,
    CommandRejection,
    DenyStep,
    EffectOutcome,
    EventBase,
    IncidentAnalyzed,
    ResponsePlanned,
    ResponseStepChanged,
    Severity,
    StepChange,
    new_id,
    utcnow,
)
from shared.logs import event_ids

log = logging.getLogger(__name__)
SERVICE = "responder"
SOURCE = "/vigil/responder"
APPROVAL_TIMEOUT = "approval_timeout"
UNDO_SUFFIX = ":undo"


@dataclass(frozen=True)
class Execution:
    """What the executor needs besides the playbooks: policy, guardrails and the connectors."""

    policy: approvals.Policy
    guardrails: guardrails.Guardrails
    connectors: Mapping[str, Connector]
    own_addresses: Sequence[IpNetwork] = ()
    dry_run: bool = False


@dataclass(frozen=True)
class _TimerCause:
    """The cause of a change no event brought (a timer, an effect's outcome)."""

    subject: str
    source: str


Cause = EventBase | _TimerCause


class StepAnswerRefused(ValueError):
    """An approval or denial that does not apply; the reason goes back to the person."""


class Responder:
    def __init__(self, playbooks: Sequence[domain.Playbook], execution: Execution) -> None:
        self.playbooks = playbooks
        self.execution = execution
        self.handle = dispatch_each({IncidentAnalyzed: self.plan, ApproveStep: self.answer, DenyStep: self.answer})
        self.timer_handlers: dict[str, timers.TimerHandler] = {APPROVAL_TIMEOUT: self.on_approval_timeout}

    # ---- planning --------------------------------------------------------------------------

    async def plan(self, ctx: HandlerContext, event: IncidentAnalyzed) -> None:
        analysis = event.data
        facts = domain.incident_facts(event.subject, analysis)
        try:
            playbook = domain.select_playbook(self.playbooks, analysis.type, analysis.severity, facts)
        except domain.NoPlaybook as exc:
            raise InvalidMessage(str(exc)) from exc
        await repository.lock_incident(ctx.conn, event.subject)
        row = await repository.current_plan(ctx.conn, event.subject)
        current = (row["playbook"], Severity(row["severity"])) if row else None
        planning = domain.plan_bounded(playbook, plan_id=new_id(), facts=facts)
        existing = {r["id"]: r for r in await repository.steps_of(ctx.conn, event.subject)}
        planned = {steps.step_id(event.subject, s.step, s.item): s for s in planning.steps}
        # A new playbook or severity, or new items (hosts, addresses) to act on, revise the plan.
        if not domain.needs_new_plan(current, playbook, analysis.severity) and planned.keys() <= existing.keys():
            return
        plan = planning.plan.model_copy(
            update={"actions": [self._with_step_id(event.subject, a, planning.steps) for a in planning.plan.actions]}
        )
        self._account(event, planning)
        await ctx.conn.execute(
            "UPDATE responder_plans SET superseded_at = now() WHERE incident_id = $1 AND superseded_at IS NULL",
            event.subject,
        )
        await ctx.conn.execute(
            """INSERT INTO responder_plans (id, incident_id, playbook, incident_type, severity, actions)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            plan.plan_id,
            event.subject,
            plan.playbook,
            plan.incident_type.value,
            plan.severity.value,
            # Every expanded step, with its rendered parameters, status and reason: the full plan.
            [s.model_dump(mode="json") for s in planning.steps],
        )
        ctx.emit(ResponsePlanned(source=SOURCE, **event.caused_by(), data=plan))
        log.info("incident %s: planned %s", event.subject, plan.playbook, extra=event_ids(event))
        await self._revise(ctx, event, facts, plan.plan_id, playbook.id, planned, existing)
        await self._advance(ctx, event.subject, event)

    @staticmethod
    def _with_step_id(incident_id: str, action: Any, planned: Sequence[PlannedStep]) -> Any:
        step = next((s for s in planned if s.id == action.id), None)
        if step is None:  # the summary of actions past the bound
            return action
        return action.model_copy(
            update={
                "step_id": steps.step_id(incident_id, step.step, step.item),
                "connector": step.connector,
                "action": step.action,
                "params": step.params,
            }
        )

    async def _revise(
        self,
        ctx: HandlerContext,
        event: IncidentAnalyzed,
        facts: IncidentFacts,
        plan_id: str,
        playbook: str,
        planned: Mapping[str, PlannedStep],
        existing: Mapping[str, asyncpg.Record],
    ) -> None:
        """Add the plan's new steps; keep every step already there, never running one twice."""
        targets = _targets_per_step(planned.values())
        for sid, step in planned.items():
            old = existing.get(sid)
            if old is not None:
                await repository.keep_in_plan(ctx.conn, sid, plan_id=plan_id, position=step.position)
                if old["state"] in steps.NOT_STARTED:
                    await self._apply_policy(ctx, event, dict(old), facts, targets[step.step], "revised plan")
                continue
            await repository.insert_step(ctx.conn, _step_row(event.subject, sid, plan_id, playbook, step))
            row = dict(await repository.step(ctx.conn, sid) or {})
            row["state"] = None  # the log's first entry says where the step came from
            if step.status in ("refused", "skipped"):
                await self._change(ctx, event, row, step.status, actor="planner", reason=step.reason, final=True)
            else:
                await self._change(ctx, event, row, "planned", actor="planner", reason=f"planned by {playbook}")
                await self._apply_policy(ctx, event, row, facts, targets[step.step], "planned")
        reason = f"no longer in the plan ({playbook} at {facts.analysis.severity.value})"
        for sid, old in existing.items():
            if sid not in planned and old["state"] in steps.NOT_STARTED:
                await self._change(ctx, event, dict(old), "cancelled", actor="planner", reason=reason, final=True)

    async def _apply_policy(
        self,
        ctx: HandlerContext,
        cause: Cause,
        row: dict[str, Any],
        facts: IncidentFacts,
        targets: int,
        why: str,
    ) -> None:
        """Decide, by the approval policy, whether a step that has not started runs, waits, or never runs."""
        decision = approvals.decide(
            self.execution.policy,
            approvals.StepFacts(
                severity=facts.analysis.severity,
                risk=row["risk"],
                response=row["response"],
                action=row["action"],
                connector=row["connector"],
                asset_tags=list(facts.asset_tags),
                targets=targets,
                required_by_playbook=row["approval"] == "required",
            ),
        )
        sid, state = row["id"], row["state"]
        if decision.mode == "forbid":
            await self._change(ctx, cause, row, "refused", actor="policy", reason=decision.reason, final=True)
            return
        if decision.mode == "auto":
            if state == "awaiting_approval":
                await timers.cancel(ctx.conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subject=sid)
                await self._change(ctx, cause, row, "approved", actor="policy", reason=f"{why}: {decision.reason}")
            return
        if steps.approved_enough(decision.approvals, row["approvals"]):
            if state != "approved":
                await self._change(ctx, cause, row, "approved", actor="policy", reason=f"{why}: approved already")
            return
        deadline = utcnow() + timedelta(seconds=decision.timeout_s) if decision.timeout_s else None
        await repository.set_approval_terms(
            ctx.conn,
            sid,
            rule=decision.rule,
            required=decision.approvals,
            roles=decision.roles,
            deadline=deadline,
            on_timeout=decision.on_timeout if deadline else None,
        )
        if deadline is not None:
            await timers.schedule(ctx.conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subject=sid, due_at=deadline)
        else:
            await timers.cancel(ctx.conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subject=sid)
        if state != "awaiting_approval":
            await self._change(ctx, cause, row, "awaiting_approval", actor="policy", reason=decision.reason)

    # ---- approvals --------------------------------------------------------------------------

    async def answer(self, ctx: HandlerContext, command: ApproveStep | DenyStep) -> None:
        """An approval or denial from the commands topic; one that does not apply is rejected, with why."""
        try:
            await self.apply_answer(ctx, command)
        except StepAnswerRefused as exc:
            ctx.emit(_rejection(command, str(exc)))
            action = "step.approve" if isinstance(command, ApproveStep) else "step.deny"
            target = command.data.step_id
            ctx.audit(
                action, target, principal=command.data.actor, outcome="refused", detail={"reason": str(exc)[:500]}
            )
            log.warning("command %s on %s rejected: %s", command.id, command.data.step_id, exc)

    async def apply_answer(self, ctx: HandlerContext, command: ApproveStep | DenyStep) -> list[dict[str, Any]]:
        """Apply an approval or denial to a step, or to every awaiting item of `<incident>:<step>`."""
        answer = command.data
        try:
            incident_id = steps.incident_of(answer.step_id)
        except ValueError as exc:
            raise StepAnswerRefused(str(exc)) from exc
        if incident_id != command.subject:
            raise StepAnswerRefused(f"step {answer.step_id} is not a step of incident {command.subject}")
        await repository.lock_incident(ctx.conn, incident_id)
        rows = [dict(r) for r in await repository.steps_like(ctx.conn, answer.step_id)]
        if not rows:
            raise StepAnswerRefused(f"no step {answer.step_id}")
        if len(rows) > 1:  # all the items of one step: answer those still waiting
            rows = [r for r in rows if r["state"] == "awaiting_approval"]
            if not rows:
                raise StepAnswerRefused(f"no item of {answer.step_id} is awaiting approval")
        deny = isinstance(command, DenyStep)
        if deny and not answer.note.strip():
            raise StepAnswerRefused("a denial needs a reason (--reason)")
        changed = []
        for row in rows:
            try:
                steps.check_answer(
                    state=row["state"],
                    required=row["approvals_required"],
                    roles=row["approver_roles"],
                    given=row["approvals"],
                    actor=answer.actor,
                    role=answer.role,
                )
            except steps.ApprovalRefused as exc:
                raise StepAnswerRefused(f"{row['id']}: {exc}") from exc
            ctx.audit(
                "step.deny" if deny else "step.approve",
                row["id"],
                principal=answer.actor,
                detail={"incident": incident_id, "role": answer.role, "note": answer.note[:500]},
            )
            if deny:
                await timers.cancel(ctx.conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subject=row["id"])
                await self._change(ctx, command, row, "denied", actor=answer.actor, reason=answer.note, final=True)
            else:
                approval = steps.Approval(answer.actor, answer.role, answer.note, command.time)
                row["approvals"] = await repository.add_approval(ctx.conn, row["id"], approval.as_json())
                if steps.approved_enough(row["approvals_required"], row["approvals"]):
                    await timers.cancel(ctx.conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subject=row["id"])
                    await self._change(ctx, command, row, "approved", actor=answer.actor, reason=answer.note)
                else:
                    await self._log_only(ctx, row, actor=answer.actor, reason=f"approved ({answer.note})")
            changed.append(await repository.step(ctx.conn, row["id"]))
        await self._advance(ctx, incident_id, command)
        return [dict(r) for r in changed if r is not None]

    async def on_approval_timeout(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """Nobody answered in time: the policy's default outcome applies."""
        incident_id = steps.incident_of(timer.subject)
        await repository.lock_incident(ctx.conn, incident_id)
        found = await repository.step(ctx.conn, timer.subject)
        if found is None or found["state"] != "awaiting_approval":
            return  # answered, cancelled or skipped meanwhile
        row = dict(found)
        cause = _TimerCause(subject=incident_id, source=SOURCE)
        waited = f"no answer by {row['approval_deadline']:%Y-%m-%d %H:%M:%S %Z} (policy rule {row['policy_rule']})"
        ctx.audit(
            "approval.timeout",
            row["id"],
            principal=f"system:{SERVICE}",
            outcome="proceeded" if row["on_timeout"] == "proceed" else "denied",
            detail={"incident": incident_id, "rule": row["policy_rule"]},
        )
        if row["on_timeout"] == "proceed":
            await self._change(ctx, cause, row, "approved", actor="timeout", reason=f"{waited}: proceeds")
        else:
            await self._change(ctx, cause, row, "denied", actor="timeout", reason=f"{waited}: denied", final=True)
        await self._advance(ctx, incident_id, cause)

    # ---- execution --------------------------------------------------------------------------

    async def _advance(self, ctx: HandlerContext, incident_id: str, cause: Cause) -> None:
        """Run what the ordering rules allow now, until nothing more changes."""
        plan = await repository.current_plan(ctx.conn, incident_id)
        if plan is None:
            return
        while True:
            rows = {r["id"]: dict(r) for r in await repository.steps_of(ctx.conn, incident_id)}
            current = [
                steps.StepView(r["id"], r["position"], r["state"], r["on_failure"], r["name"])
                for r in rows.values()
                if r["plan_id"] == plan["id"]
            ]
            moves = steps.advance(current)
            if not moves:
                return
            for move in moves:
                row = rows[move.step_id]
                if move.to == "skip":
                    await self._change(ctx, cause, row, "skipped", actor="responder", reason=move.reason, final=True)
                else:
                    await self._dispatch(ctx, cause, row)

    async def _dispatch(self, ctx: HandlerContext, cause: Cause, row: dict[str, Any]) -> None:
        """Check the guardrails, then enqueue the step's effect — or simulate it, honestly."""
        if row["connector"] == "notify":
            await self._notify(ctx, cause, row)
            return
        connector = self.execution.connectors.get(row["connector"])
        if connector is None:
            reason = f"connector {row['connector']} is not available here"
            await self._change(ctx, cause, row, "refused", actor="responder", reason=reason, final=True)
            return
        now = utcnow()
        call = _call(row, key=row["id"], action=row["action"], params=row["params"], now=now)
        try:
            dispatch = connector.dispatch(call)
        except ConnectorError as exc:
            await self._change(ctx, cause, row, "refused", actor="responder", reason=str(exc), final=True)
            return
        verdict = await self._guardrails(ctx, row, now)
        sent = {"kind": dispatch.kind, "target": dispatch.target, "payload": dispatch.payload}
        if not verdict.allowed:
            actor = f"guardrail:{verdict.guardrail}"
            ctx.audit(
                "step.refused_by_guardrail",
                row["id"],
                principal=f"system:{SERVICE}",
                outcome="refused",
                detail={"incident": row["incident_id"], "guardrail": str(verdict.guardrail), "reason": verdict.reason},
            )
            await self._change(ctx, cause, row, "refused", actor=actor, reason=verdict.reason, sent=sent, final=True)
            return
        if self.execution.dry_run or row["dry_run"]:
            why = "dry run (globally)" if self.execution.dry_run else "dry run (playbook)"
            await self._change(
                ctx, cause, row, "simulated", actor="responder", reason=f"{why}: not sent", sent=sent, final=True
            )
            return
        await effects.enqueue(
            ctx.conn,
            service=SERVICE,
            kind=dispatch.kind,
            key=row["id"],
            subject=row["incident_id"],
            target=dispatch.target,
            payload=dispatch.payload,
            timeout_s=row["timeout_s"],
            max_attempts=row["retries"] + 1,
        )
        await self._change(
            ctx,
            cause,
            row,
            "running",
            actor="responder",
            reason=f"sent to {dispatch.target}",
            sent=sent,
            dispatched=True,
        )

    async def _notify(self, ctx: HandlerContext, cause: Cause, row: dict[str, Any]) -> None:
        """A message for the incident's channel: the step's event carries it to the coordinator."""
        sent = {"channel": "incident", "action": row["action"], "params": row["params"]}
        if self.execution.dry_run or row["dry_run"]:
            await self._change(
                ctx, cause, row, "simulated", actor="responder", reason="dry run: not sent", sent=sent, final=True
            )
            return
        await self._change(
            ctx, cause, row, "succeeded", actor="responder", reason="handed to the coordinator", sent=sent, final=True
        )

    async def _guardrails(self, ctx: HandlerContext, row: dict[str, Any], now: datetime) -> guardrails.Verdict:
        rails = self.execution.guardrails
        controls = await guardrails.get_controls(ctx.conn)
        longest = max((limit.window_delta for limit in rails.rate_limits), default=timedelta(0))
        recent = [
            guardrails.Execution(action=r["action"], target=r["target"], at=r["dispatched_at"])
            for r in await repository.recent_dispatches(ctx.conn, since=now - longest)
        ]
        context = guardrails.Context(
            guardrails=rails,
            now=now,
            paused=controls.paused,
            own_addresses=self.execution.own_addresses,
            recent=recent,
            incident_targets=await repository.incident_targets(ctx.conn, row["incident_id"]),
        )
        action = guardrails.Action(
            name=row["action"], target_kind=row["target_kind"] or "host", incident_id=row["incident_id"]
        )
        return guardrails.check(action, [row["item"]] if row["item"] is not None else [], context)

    async def on_effect_outcome(self, ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        """An action's outcome, recorded in the transaction that records the effect's."""
        undo = effect.key.endswith(UNDO_SUFFIX)
        sid = effect.key.removesuffix(UNDO_SUFFIX)
        await repository.lock_incident(ctx.conn, effect.subject)
        found = await repository.step(ctx.conn, sid)
        if found is None:
            log.error("effect %d: no step %s for its outcome", effect.id, sid)
            return
        row = dict(found)
        cause = _TimerCause(subject=effect.subject, source=SOURCE)
        result = {"effect_id": outcome.effect_id, "attempts": outcome.attempts, **outcome.result}
        if undo:
            if outcome.status == "succeeded":
                reason = "lease ended: undone"
                await self._change(ctx, cause, row, "rolled_back", actor="responder", reason=reason, result=result)
            else:
                log.error("step %s: its undo %s: %s", sid, outcome.status, outcome.error)
                await self._log_only(ctx, row, actor="responder", reason=f"undo {outcome.status}: {outcome.error}")
            return
        if row["state"] != "running":
            log.warning("step %s is %s; outcome %s of effect %d ignored", sid, row["state"], outcome.status, effect.id)
            return
        if outcome.status == "succeeded":
            await self._change(
                ctx, cause, row, "succeeded", actor="responder", reason="done", result=result, final=True
            )
            await self._schedule_undo(ctx, row)
        else:
            what = "refused for good" if outcome.status == "failed" else f"gave up after {outcome.attempts} attempt(s)"
            reason = f"{what}: {outcome.error or 'no reason given'}"
            await self._change(ctx, cause, row, "failed", actor="responder", reason=reason, result=result, final=True)
        await self._advance(ctx, effect.subject, cause)

    async def _schedule_undo(self, ctx: HandlerContext, row: dict[str, Any]) -> None:
        """A reversible action's undo, due when its lease ends: a durable effect that survives restarts."""
        if row["undo"] is None or row["lease_s"] is None:
            return
        undo = row["undo"]
        connector = self.execution.connectors.get(undo["connector"])
        now = utcnow()
        key = row["id"] + UNDO_SUFFIX
        try:
            if connector is None:
                raise ConnectorError(f"connector {undo['connector']} is not available here")
            dispatch = connector.dispatch(_call(row, key=key, action=undo["action"], params=undo["params"], now=now))
        except ConnectorError as exc:
            log.error("step %s: its undo cannot be scheduled: %s", row["id"], exc)
            await self._log_only(ctx, row, actor="responder", reason=f"undo not scheduled: {exc}")
            return
        await effects.enqueue(
            ctx.conn,
            service=SERVICE,
            kind=dispatch.kind,
            key=key,
            subject=row["incident_id"],
            target=dispatch.target,
            payload=dispatch.payload,
            not_before=now + timedelta(seconds=row["lease_s"]),
            timeout_s=row["timeout_s"],
        )

    # ---- leases -----------------------------------------------------------------------------

    async def change_lease(
        self, ctx: HandlerContext, step_id: str, *, actor: str, reason: str, extend_s: int | None
    ) -> dict[str, Any]:
        """Extend a succeeded reversible step's lease by ``extend_s``, or (None) end it now: its undo runs."""
        incident_id = steps.incident_of(step_id)
        await repository.lock_incident(ctx.conn, incident_id)
        found = await repository.step(ctx.conn, step_id)
        if found is None:
            raise StepAnswerRefused(f"no step {step_id}")
        row = dict(found)
        if row["lease_s"] is None or row["undo"] is None:
            raise StepAnswerRefused(f"{step_id} is not a reversible step: it has no lease")
        if row["state"] != "succeeded":
            raise StepAnswerRefused(f"{step_id} is {row['state']}: only an action in force has a lease to change")
        undo_at = await ctx.conn.fetchval(
            "SELECT not_before FROM effects WHERE service = $1 AND key = $2 AND status = 'pending'",
            SERVICE,
            step_id + UNDO_SUFFIX,
        )
        if undo_at is None:
            raise StepAnswerRefused(f"{step_id}: its undo is not waiting (already run, or not scheduled)")
        now = utcnow()
        due = now if extend_s is None else max(undo_at, now) + timedelta(seconds=extend_s)
        await effects.move_pending(ctx.conn, service=SERVICE, kind=None, key=step_id + UNDO_SUFFIX, not_before=due)
        what = "lease revoked: undone now" if extend_s is None else f"lease extended to {due:%Y-%m-%d %H:%M:%S %Z}"
        await self._log_only(ctx, row, actor=actor, reason=f"{what}" + (f": {reason}" if reason else ""))
        ctx.audit(
            "lease.revoke" if extend_s is None else "lease.extend",
            step_id,
            principal=actor,
            detail={"undo_at": due.isoformat(), "reason": reason[:500]},
        )
        log.info("step %s: %s by %s", step_id, what, actor)
        return {**row, "undo_at": due}

    # ---- recording --------------------------------------------------------------------------

    async def _change(
        self,
        ctx: HandlerContext,
        cause: Cause,
        row: dict[str, Any],
        to_state: str,
        *,
        actor: str,
        reason: str,
        sent: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        dispatched: bool = False,
        final: bool = False,
    ) -> None:
        """Record a step's new state with who and why, and announce it on the timeline."""
        from_state = row.get("state")
        await repository.set_state(
            ctx.conn,
            row["id"],
            incident_id=row["incident_id"],
            from_state=from_state,
            to_state=to_state,
            actor=actor,
            reason=reason,
            sent=sent,
            result=result,
            dispatched=dispatched,
            final=final,
        )
        row["state"] = to_state
        metrics.STEPS.labels(to_state).inc()
        ctx.emit(
            ResponseStepChanged(
                source=SOURCE,
                **_caused_by(cause, row["incident_id"]),
                data=StepChange(
                    step_id=row["id"],
                    plan_id=row["plan_id"],
                    step=row["step"],
                    phase=row["phase"],
                    name=row["name"],
                    item=row["item"],
                    connector=row["connector"],
                    action=row["action"],
                    from_state=from_state,
                    state=to_state,  # type: ignore[arg-type]  # one of steps.State
                    actor=actor,
                    reason=reason[:2000],
                    on_failure=row["on_failure"],
                    dry_run=bool(row["dry_run"]) or self.execution.dry_run,
                    sent=bound_result(sent) if sent is not None else None,
                    result=bound_result(result) if result is not None else None,
                ),
            )
        )

    async def _log_only(self, ctx: HandlerContext, row: dict[str, Any], *, actor: str, reason: str) -> None:
        """Log something that happened to a step without changing its state (one of several approvals)."""
        await ctx.conn.execute(
            """INSERT INTO responder_step_log (step_id, incident_id, from_state, to_state, actor, reason)
               VALUES ($1, $2, $3, $3, $4, $5)""",
            row["id"],
            row["incident_id"],
            row["state"],
            actor,
            reason,
        )

    def _account(self, event: IncidentAnalyzed, planning: domain.Planning) -> None:
        """Log each step that will not run, with its reason; count what the plan event leaves out."""
        ids = event_ids(event)
        for step in planning.refused:
            log.warning("incident %s: step %s refused: %s", event.subject, step.id, step.reason, extra=ids)
        for step in planning.skipped:
            log.info("incident %s: step %s skipped: %s", event.subject, step.id, step.reason, extra=ids)
        if planning.truncated:
            log.warning(
                "incident %s: %d actions past the bound of %d not listed in the plan event",
                event.subject,
                planning.truncated,
                domain.MAX_PLANNED_ACTIONS,
                extra=ids,
            )
            metrics.TRUNCATED.inc(planning.truncated)


# ---- helpers -----------------------------------------------------------------------------------


def _caused_by(cause: Cause, incident_id: str) -> dict[str, Any]:
    if isinstance(cause, EventBase):
        return cause.caused_by()
    return {"subject": incident_id}


def _rejection(command: ApproveStep | DenyStep, reason: str) -> CommandRejected:
    return CommandRejected(
        source=SOURCE,
        **command.caused_by(),
        data=CommandRejection(command_id=command.id, command=command.type, actor=command.data.actor, reason=reason),
    )


def _call(row: Mapping[str, Any], *, key: str, action: str, params: Mapping[str, Any], now: datetime) -> StepCall:
    lease = row["lease_s"]
    return StepCall(
        key=key,
        incident_id=row["incident_id"],
        step_id=row["id"],
        action=action,
        params=params,
        reason=f"incident {row['incident_id']}: {row['name']}",
        expires_at=now + timedelta(seconds=lease) if lease else None,
    )


def _targets_per_step(planned: Iterable[PlannedStep]) -> dict[str, int]:
    """How many targets each playbook step expands to: its blast radius, as the policy sees it."""
    counts: dict[str, int] = {}
    for step in planned:
        counts[step.step] = counts.get(step.step, 0) + (1 if step.item is not None else 0)
    return counts


def _step_row(incident_id: str, sid: str, plan_id: str, playbook: str, step: PlannedStep) -> dict[str, Any]:
    return {
        "id": sid,
        "incident_id": incident_id,
        "plan_id": plan_id,
        "playbook": playbook,
        "step": step.step,
        "position": step.position,
        "item": step.item,
        "target_kind": steps.TARGET_KINDS.get(step.for_each or ""),
        "name": step.name,
        "phase": step.phase,
        "response": step.response,
        "connector": step.connector,
        "action": step.action,
        "params": step.params,
        "undo": step.undo.model_dump(mode="json") if step.undo else None,
        "lease_s": step.lease_s,
        "timeout_s": step.timeout_s,
        "retries": step.retries,
        "on_failure": step.on_failure,
        "risk": step.risk,
        "dry_run": step.dry_run,
        "state": step.status if step.status in ("refused", "skipped") else "planned",
        "approval": step.approval,
    }
