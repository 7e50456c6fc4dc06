"""The responder's handlers: plan from each analysis, then execute the plan's steps safely.

Every change to an incident's steps — a new or revised plan, an approval or denial, an approval
timing out, an action's outcome — runs under the incident's lock, records the step's new state
with who or what caused it, publishes it (one cause's changes in one ``ResponseStepsChanged``), and asks the ordering
rules (``steps.advance``) what runs next. An action is never executed here: it is enqueued as an
effect in the same transaction, and the effects runner executes it after commit, at most once per
step id, which the far side sees as the idempotency key.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from services.responder import approvals, domain, guardrails, leases, metrics, monitor, repository, steps
from services.responder.blocklist import IpNetwork
from services.responder.connectors import Connector, ConnectorError, StepCall, Validating
from services.responder.guardrails import RateLimiter
from services.responder.playbook import IncidentFacts, PlannedStep, duration_seconds
from shared import identity, timers
from shared.consumer import HandlerContext, Inbound, dispatch_each
from shared.db import Conn
from shared.effects import Effect, EffectKind
from shared.effects import repository as effects
from shared.effects.domain import bound_result
from shared.events import (
    Analysis,
    ApproveStep,
    CommandRejected,
    CommandRejection,
    ContainmentConfirmed,
    ContainmentIneffective,
    ContainmentWatch,
    DenyStep,
    EffectOutcome,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentMerged,
    IncidentStateChanged,
    IncidentUpdated,
    LeaseChange,
    ResponseLeaseChanged,
    ResponsePlanned,
    ResponseStepsChanged,
    ResponseStepValidated,
    RunStep,
    Severity,
    StepChange,
    StepChanges,
    StepValidation,
    ValidationOutcome,
    WatchedEntity,
    new_id,
    utcnow,
)
from shared.logs import event_ids

log = logging.getLogger(__name__)
SERVICE = "responder"
SOURCE = "/vigil/responder"
APPROVAL_TIMEOUT = "approval_timeout"
LEASE_EXPIRY = "lease_expiry"
WATCH_END = "containment_watch_end"
UNDO_SUFFIX = ":undo"
VALIDATE_SUFFIX = ":validate"
# HandlerContext.read: the batch's incidents with new alerts that are under watch (a hint: ``watching`` decides).
WATCHED = "responder.watched"
# While responses are paused, an action already queued is looked at again this often (held, not run).
PAUSED_HOLD_S = 5.0
# The kill switch as last read serves the runs of this long: a pause reaches queued actions within it, and a
# busy runner reads it once, not once an action.
PAUSE_READ_S = 1.0


def effect_kinds(responder: Responder, pool: asyncpg.Pool) -> list[EffectKind]:
    """What the connectors run through the effects runner, each action held while responses are paused."""
    hold = held_while_paused(pool)
    kinds = [k for c in responder.execution.connectors.values() for k in c.effect_kinds(responder.on_effect_outcome)]
    return [replace(kind, hold=hold) for kind in kinds]


def held_while_paused(pool: asyncpg.Pool) -> Callable[[Effect], Awaitable[float | None]]:
    """The effects runner's check before each run: while responses are paused, an action waits, wherever it
    stands (queued, or waiting for its retry); an undo (a lease ending) and a check of what was done go on."""

    read: list[tuple[float, bool]] = []  # (when, paused) of the last read

    async def hold(effect: Effect) -> float | None:
        if effect.key.endswith((UNDO_SUFFIX, VALIDATE_SUFFIX)):
            return None
        if not read or time.monotonic() - read[0][0] > PAUSE_READ_S:
            async with pool.acquire() as conn:
                controls = await guardrails.get_controls(conn)
            read[:] = [(time.monotonic(), controls.paused)]
        return PAUSED_HOLD_S if read[0][1] else None

    return hold


@dataclass(frozen=True)
class Execution:
    """What the executor needs besides the playbooks: policy, guardrails and the connectors."""

    policy: approvals.Policy
    guardrails: guardrails.Guardrails
    connectors: Mapping[str, Connector]
    own_addresses: Sequence[IpNetwork] = ()
    dry_run: bool = False
    repeat_offenders: leases.RepeatOffenders = field(default_factory=leases.RepeatOffenders)
    watch: monitor.Watch = field(default_factory=monitor.Watch)
    # Counts the guardrails' rate limits; needed when any is configured (the service gives it its pool).
    rate_limiter: RateLimiter | None = None


@dataclass(frozen=True)
class _TimerCause:
    """The cause of a change no event brought (a timer, an effect's outcome)."""

    subject: str
    source: str


Cause = EventBase | _TimerCause


async def _is_watched(ctx: HandlerContext, incident_id: str) -> bool:
    """Whether the incident is under watch, as the batch's one look found (``Responder.handle``), else asked."""
    watched: set[str] | None = ctx.read.get(WATCHED)
    if watched is None:
        return await repository.is_watched(ctx.conn, incident_id)
    return incident_id in watched


class StepAnswerRefused(ValueError):
    """An approval or denial that does not apply; the reason goes back to the person."""


async def _lock_nothing(conn: Conn, subject: str) -> None:
    """For a timer fired alone in a transaction of its own, whose handler takes the locks it needs."""


async def _lock_watched_incident(conn: Conn, monitor_id: str) -> None:
    """The lock of the incident a containment watch is about; none for what is no watch (its handler says why)."""
    if not (monitor_id.isascii() and monitor_id.isdigit() and len(monitor_id) <= 18):
        return
    incident_id = await repository.watched_incident(conn, int(monitor_id))
    if incident_id is not None:
        await repository.lock_incident(conn, incident_id)


async def _lock_step_incident(conn: Conn, step_id: str) -> None:
    """The lock of the incident a step belongs to; none for what is no step id (its handler says why)."""
    try:
        incident_id = steps.incident_of(step_id)
    except ValueError:
        return
    await repository.lock_incident(conn, incident_id)


class Responder:
    def __init__(self, playbooks: Sequence[domain.Playbook], execution: Execution) -> None:
        self.playbooks = playbooks
        self.execution = execution
        self._handle_each = dispatch_each(
            {
                IncidentAnalyzed: self.plan,
                ApproveStep: self.answer,
                DenyStep: self.answer,
                IncidentDetected: self.on_alerts,
                IncidentUpdated: self.on_alerts,
                IncidentMerged: self.on_merged,
                IncidentStateChanged: self.on_state_changed,
                RunStep: self.run_step,
            }
        )
        self.timer_handlers: dict[str, timers.TimerHandler] = {
            APPROVAL_TIMEOUT: self.on_approval_timeout,
            LEASE_EXPIRY: self.on_lease_expiry,
            WATCH_END: self.on_watch_end,
            guardrails.RESUMED: self.on_resumed,
        }
        # Their handlers lock the step's incident, as whoever answers an approval or changes a lease does.
        self.timer_locks: dict[str, timers.SubjectLock] = {
            APPROVAL_TIMEOUT: _lock_step_incident,
            LEASE_EXPIRY: _lock_step_incident,
            WATCH_END: _lock_watched_incident,  # then the watch's row, as new alerts on a watched entity do
            # It locks every held incident in turn: alone in its transaction, holding no other timer's row.
            guardrails.RESUMED: _lock_nothing,
        }

    async def handle(self, ctx: HandlerContext, batch: Sequence[Inbound[Any]]) -> None:
        # Most incidents are under no watch: which of those with new alerts in the batch are, in one look.
        alerted = {
            i.item.subject
            for i in batch
            if isinstance(i.item, IncidentDetected | IncidentUpdated) and i.item.data.new_alerts
        }
        if alerted:
            ctx.read[WATCHED] = await repository.watched_among(ctx.conn, alerted)
        await self._handle_each(ctx, batch)

    # ---- planning --------------------------------------------------------------------------

    async def plan(self, ctx: HandlerContext, event: IncidentAnalyzed) -> None:
        analysis = event.data
        facts = domain.incident_facts(event.subject, analysis)
        await repository.lock_incident(ctx.conn, event.subject)
        # What a step asked for on demand is rendered and judged from, as the plan's steps are.
        await repository.save_analysis(ctx.conn, event.subject, analysis.model_dump(mode="json"), at=event.time)
        try:
            playbook = domain.select_playbook(self.playbooks, analysis.type, analysis.severity, facts)
        except domain.NoPlaybook as exc:
            metrics.UNPLANNED.labels(analysis.type.value, analysis.severity.value).inc()
            log.warning("incident %s: %s; nothing planned", event.subject, exc, extra=event_ids(event))
            return
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
            # The plan before is superseded first (the count waits for it), in the same round trip.
            """WITH superseded AS (
                   UPDATE responder_plans SET superseded_at = now() WHERE incident_id = $2 AND superseded_at IS NULL
                   RETURNING 1)
               INSERT INTO responder_plans (id, incident_id, playbook, incident_type, severity, actions)
               SELECT $1, $2, $3, $4, $5, $6 FROM (SELECT count(*) FROM superseded) AS before""",
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

    async def on_merged(self, ctx: HandlerContext, event: IncidentMerged) -> None:
        """Merged away: its steps not started are cancelled; the survivor's plan, made from all the
        alerts, is the one that goes on. What already ran stays, its leases included."""
        merge = event.data
        reason = f"incident merged into {merge.survivor} by {merge.actor}; the survivor's plan goes on"
        # As every change to the incident's steps: a step an approval or an outcome starts meanwhile is
        # seen started, never cancelled while its action runs (its outcome, lease and undo would be lost).
        await repository.lock_incident(ctx.conn, event.subject)
        for old in await repository.steps_of(ctx.conn, event.subject):
            if old["state"] in steps.NOT_STARTED:
                row = dict(old)
                await timers.cancel(ctx.conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subject=row["id"])
                await self._change(ctx, event, row, "cancelled", actor=merge.actor, reason=reason, final=True)

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
        policy = _PolicyWrites()
        kept = {sid: step.position for sid, step in planned.items() if sid in existing}
        await repository.keep_in_plan(ctx.conn, kept, plan_id=plan_id)
        # The new steps are stored at once, each with its first log entry, which says where it came from.
        new: dict[str, repository.NewStep] = {}
        # A step run on demand may act on a target the revised plan now names: not acted on twice (and the
        # plan's undo would lift what that step's lease still holds).
        wanted = [(step.step, step.item) for sid, step in planned.items() if sid not in existing]
        busy = await repository.acting_on_any(ctx.conn, event.subject, wanted)
        for sid, step in planned.items():
            if sid not in existing:
                fresh = _step_row(event.subject, sid, plan_id, playbook, step)
                held = busy.get((step.step, step.item)) if fresh["state"] == "planned" else None
                if held is not None:
                    fresh["state"] = "skipped"
                    how = (
                        f"its lease is {held['lease']}"
                        if held["lease"] and held["state"] not in steps.NOT_STARTED | {"running"}
                        else held["state"]
                    )
                    reason = f"step {held['id']} does this already ({how})"
                else:
                    reason = step.reason
                planned_now = fresh["state"] == "planned"
                why = f"planned by {playbook}" if planned_now else reason
                new[sid] = repository.NewStep(fresh, reason=why, final=not planned_now)
        inserted = await repository.insert_steps(ctx.conn, list(new.values()), actor="planner")
        stored = dict(zip(new, inserted, strict=True))
        for sid, step in planned.items():
            old = existing.get(sid)
            if old is not None:
                if old["state"] in steps.NOT_STARTED and step.status in ("refused", "skipped"):
                    # The revised plan would not run it (its condition no longer holds): not run, approved or not.
                    policy.cancelled.append(sid)
                    await self._change(
                        ctx, event, dict(old), step.status, actor="planner", reason=step.reason, final=True
                    )
                elif old["state"] in steps.NOT_STARTED:
                    await self._apply_policy(ctx, event, dict(old), facts, targets[step.step], "revised plan", policy)
                continue
            row = dict(stored[sid])
            if new[sid].final:
                self._announce(ctx, event, row, from_state=None, actor="planner", reason=new[sid].reason)
            else:
                await self._apply_policy(
                    ctx, event, row, facts, targets[step.step], "planned", policy, planned=new[sid].reason
                )
        await policy.write(ctx.conn)
        reason = f"no longer in the plan ({playbook} at {facts.analysis.severity.value})"
        for sid, old in existing.items():
            # A step a person asked for is no plan's to cancel.
            if sid not in planned and old["state"] in steps.NOT_STARTED and not _on_demand(old):
                await self._change(ctx, event, dict(old), "cancelled", actor="planner", reason=reason, final=True)

    async def _apply_policy(
        self,
        ctx: HandlerContext,
        cause: Cause,
        row: dict[str, Any],
        facts: IncidentFacts,
        targets: int,
        why: str,
        policy: _PolicyWrites,
        *,
        planned: str | None = None,
    ) -> None:
        """Decide, by the approval policy, whether a step that has not started runs, waits, or never runs.

        The approval terms and timeouts it sets go to ``policy``, written once the plan's steps are decided.
        ``planned``: the planner's reason for a step it has just planned and not announced yet. A step the
        policy makes wait at once (most of a plan's) is announced once, new to awaiting approval, rather
        than planned and then waiting: half the events of a plan, for every consumer.
        """
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

        def announce_planned() -> None:
            if planned is not None:
                self._announce(ctx, cause, row, from_state=None, actor="planner", reason=planned)

        if decision.mode == "forbid":
            announce_planned()
            await self._change(ctx, cause, row, "refused", actor="policy", reason=decision.reason, final=True)
            return
        if decision.mode == "auto":
            announce_planned()
            if state == "awaiting_approval":
                policy.cancelled.append(sid)
                await self._change(ctx, cause, row, "approved", actor="policy", reason=f"{why}: {decision.reason}")
            return
        # Approvals given under other terms count only from the roles these allow.
        if steps.approved_enough(decision.approvals, row["approvals"], decision.roles):
            announce_planned()
            if state != "approved":
                await self._change(ctx, cause, row, "approved", actor="policy", reason=f"{why}: approved already")
            return
        if state == "awaiting_approval" and _same_terms(row, decision):
            announce_planned()
            return  # waiting on the same terms: its deadline stands, counted from when it was first asked
        deadline = utcnow() + timedelta(seconds=decision.timeout_s) if decision.timeout_s else None
        waits = state != "awaiting_approval"  # if not waiting yet, it starts to, in the same statement
        policy.terms.append(
            repository.ApprovalTerms(
                sid,
                rule=decision.rule,
                required=decision.approvals,
                roles=decision.roles,
                deadline=deadline,
                on_timeout=decision.on_timeout if deadline else None,
                wait=(state, "policy", decision.reason) if waits else None,
            )
        )
        if deadline is not None:
            policy.due[sid] = deadline
        else:
            policy.cancelled.append(sid)
        if waits:
            row["state"] = "awaiting_approval"
            if planned is not None:  # new, and waiting from the start: one change (it was planned all the same)
                metrics.STEPS.labels("planned").inc()
                self._announce(ctx, cause, row, from_state=None, actor="policy", reason=f"{planned}; {decision.reason}")
            else:
                self._announce(ctx, cause, row, from_state=state, actor="policy", reason=decision.reason)

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
        # Every item answered, or none: each is checked before any is changed, so that a refusal of one
        # never leaves the others half answered under a rejected command.
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
        changed = []
        for row in rows:
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
                if steps.approved_enough(row["approvals_required"], row["approvals"], row["approver_roles"]):
                    await timers.cancel(ctx.conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subject=row["id"])
                    await self._change(ctx, command, row, "approved", actor=answer.actor, reason=answer.note)
                else:
                    await self._log_only(ctx, row, actor=answer.actor, reason=f"approved ({answer.note})")
            changed.append(await repository.step(ctx.conn, row["id"]))
        await self._advance(ctx, incident_id, command)
        return [dict(r) for r in changed if r is not None]

    # ---- on demand ---------------------------------------------------------------------------

    async def run_step(self, ctx: HandlerContext, command: RunStep) -> None:
        """A step asked for on the commands topic; one that cannot run is rejected, with why.

        The topic is trusted as the API's record is (who may write to it is the broker's to say); the
        role the command claims must still be one that may run steps."""
        try:
            if not identity.allows(command.data.role, "steps.run"):
                raise StepAnswerRefused(
                    f"role {command.data.role or '(none)'!r} may not run steps; {identity.least_role('steps.run')} may"
                )
            await self.run_on_demand(ctx, command)
        except StepAnswerRefused as exc:
            ctx.emit(_rejection(command, str(exc)))
            ctx.audit(
                "step.run",
                command.data.step,
                principal=command.data.actor,
                outcome="refused",
                detail={"incident": command.subject, "reason": str(exc)[:500]},
            )
            log.warning("command %s on %s rejected: %s", command.id, command.subject, exc)

    async def run_on_demand(self, ctx: HandlerContext, command: RunStep) -> dict[str, Any]:
        """Add a playbook step a person asks for to the incident, beside its plan ("contain now"), and run it
        as any step runs: the approval policy, the guardrails, the lease and the check after it all apply."""
        asked = command.data
        incident_id = command.subject
        token = hashlib.sha256(command.id.encode()).hexdigest()[:10]
        sid = f"{incident_id}:{asked.step.partition('.')[2]}:run-{token}"
        await repository.lock_incident(ctx.conn, incident_id)
        if (done := await repository.step(ctx.conn, sid)) is not None:
            return dict(done)  # asked before: this is the same request again, whatever happened since
        try:
            lease_s = duration_seconds(asked.lease) if asked.lease else None
        except ValueError as exc:
            raise StepAnswerRefused(f"lease {asked.lease!r}: {exc}") from exc
        if (ended := await repository.ended(ctx.conn, incident_id)) is not None:
            raise StepAnswerRefused(f"incident {incident_id} is {ended['state']}: reopen it to act on it")
        facts = await self._facts(ctx, incident_id)
        try:
            playbook, planned = domain.on_demand(
                self.playbooks, asked.step, facts, step_id=sid, item=asked.item, lease_s=lease_s
            )
        except domain.OnDemandRefused as exc:
            raise StepAnswerRefused(str(exc)) from exc
        if (same := await repository.acting_on(ctx.conn, incident_id, planned.step, planned.item)) is not None:
            how = (
                f"its lease is {same['lease']}"
                if same["state"] not in steps.NOT_STARTED | {"running"}
                else same["state"]
            )
            raise StepAnswerRefused(f"step {same['id']} does this already ({how}): answer or change that one")
        why = f"run on demand by {asked.actor}" + (f": {asked.note}" if asked.note else "")
        row = _step_row(incident_id, sid, f"{domain.ON_DEMAND}{token}", playbook.id, planned)
        [stored] = await repository.insert_steps(
            ctx.conn, [repository.NewStep(row, reason=why, final=False)], actor=asked.actor
        )
        fresh = dict(stored)
        self._announce(ctx, command, fresh, from_state=None, actor=asked.actor, reason=why)
        ctx.audit(
            "step.run",
            sid,
            principal=asked.actor,
            detail={"incident": incident_id, "step": asked.step, "item": planned.item, "note": asked.note[:500]},
        )
        policy = _PolicyWrites()
        await self._apply_policy(ctx, command, fresh, facts, 1 if planned.item else 0, "asked for", policy)
        await policy.write(ctx.conn)
        await self._advance(ctx, incident_id, command)
        return dict(await repository.step(ctx.conn, sid) or fresh)

    async def _facts(self, ctx: HandlerContext, incident_id: str) -> IncidentFacts:
        """What a step asked for on demand is rendered and judged from: the incident's latest analysis (its
        severity and assets decide who must approve, so without it nothing is run)."""
        stored = await repository.latest_analysis(ctx.conn, incident_id)
        if stored is None:
            raise StepAnswerRefused(
                f"no analysis of incident {incident_id} is stored yet (the next comes with its next alerts): its "
                "severity and assets decide who must approve a step"
            )
        return domain.incident_facts(incident_id, Analysis.model_validate(stored))

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
        """Run what the ordering rules allow now; once containment is over, watch that it holds."""
        settled = await self._advance_steps(ctx, incident_id, cause)
        await self._maybe_watch(ctx, incident_id, settled)

    async def _advance_steps(self, ctx: HandlerContext, incident_id: str, cause: Cause) -> list[dict[str, Any]] | None:
        """Run what the ordering rules allow now, until nothing more changes; a step asked for on demand
        runs as soon as it may, whatever the plan's order.

        Returns the steps as they stand then (the current plan's and those asked for on demand), as read last;
        None when responses are paused and what remains waits.
        """
        plan = await repository.current_plan(ctx.conn, incident_id)
        plan_id = plan["id"] if plan is not None else None
        while True:
            rows = {r["id"]: dict(r) for r in await repository.steps_of(ctx.conn, incident_id)}
            current = [
                steps.StepView(r["id"], r["position"], r["state"], r["on_failure"], r["name"])
                for r in rows.values()
                if r["plan_id"] == plan_id
            ]
            moves = steps.advance(current) + [
                steps.Move(r["id"], "dispatch")
                for r in rows.values()
                if _on_demand(r) and r["state"] in ("planned", "approved")
            ]
            if not moves:
                return [r for r in rows.values() if r["plan_id"] == plan_id or _on_demand(r)]
            held = False
            for move in moves:
                row = rows[move.step_id]
                if move.to == "skip":
                    await self._change(ctx, cause, row, "skipped", actor="responder", reason=move.reason, final=True)
                else:
                    held = not await self._dispatch(ctx, cause, row) or held
            if held:  # responses are paused: the rest waits for the resume, which runs this incident on
                return None

    async def on_state_changed(self, ctx: HandlerContext, event: IncidentStateChanged) -> None:
        """The coordinator moved the incident. Once it has ended, no action step of it starts: one whose turn
        comes (an approval given late, an approval's time out that proceeds, a late analysis's new step) is
        held. Reopened, its held steps run on. Notices, hand-overs to people and undos go on either way."""
        change = event.data
        await repository.lock_incident(ctx.conn, event.subject)
        if change.ends_incident():
            await repository.mark_ended(ctx.conn, event.subject, state=change.to_state.value, at=event.time)
            # Steps the kill switch held stay held past a resume now: they say so.
            await repository.reword_held(ctx.conn, event.subject, reason=_ended_reason(change.to_state, event.time))
            return
        if not await repository.unmark_ended(ctx.conn, event.subject):
            return
        log.info("incident %s reopened (%s by %s): its held steps run on", event.subject, change.to_state, change.actor)
        await repository.release_held(ctx.conn, event.subject)
        await self._advance(ctx, event.subject, event)

    async def on_resumed(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """Responses resumed: the steps the pause held run on, each incident in its turn."""
        cause = _TimerCause(subject=timer.subject, source=SOURCE)
        # Each incident's lock before its steps' rows, as everyone else takes them.
        for incident_id in await repository.held_incidents(ctx.conn):
            await repository.lock_incident(ctx.conn, incident_id)
            await repository.release_held(ctx.conn, incident_id)
            await self._advance(ctx, incident_id, cause)

    async def _dispatch(self, ctx: HandlerContext, cause: Cause, row: dict[str, Any]) -> bool:
        """Check the guardrails, then enqueue the step's effect — or simulate it, honestly.

        Returns False when responses are paused, or the incident has ended: the step is held as it stands,
        for the resume (or the reopening) to run on.
        """
        if row["connector"] == "notify":
            await self._notify(ctx, cause, row)
            return True
        if row["connector"] == "manual":
            await self._hand_over(ctx, cause, row)
            return True
        if (ended := await repository.ended(ctx.conn, row["incident_id"])) is not None:
            reason = _ended_reason(ended["state"], ended["ended_at"])
            self._hold(ctx, row, reason, await repository.hold_step(ctx.conn, row["id"], reason=reason))
            return False
        connector = self.execution.connectors.get(row["connector"])
        if connector is None:
            reason = f"connector {row['connector']} is not available here"
            await self._change(ctx, cause, row, "refused", actor="responder", reason=reason, final=True)
            return True
        now = utcnow()
        if row["undo"] is not None and row["lease_s"] is not None:
            # Decided as it is sent: the block list entry (and a webhook's body) carries when it ends.
            row["lease_s"], row["lease_offence"] = await self._lease_terms(ctx, row, now)
            await repository.set_lease_terms(ctx.conn, row["id"], lease_s=row["lease_s"], offence=row["lease_offence"])
        call = _call(row, key=row["id"], action=row["action"], params=row["params"], now=now)
        try:
            dispatch = connector.dispatch(call)
        except ConnectorError as exc:
            await self._change(ctx, cause, row, "refused", actor="responder", reason=str(exc), final=True)
            return True
        verdict = await self._guardrails(ctx, row, now)
        sent = {"kind": dispatch.kind, "target": dispatch.target, "payload": dispatch.payload}
        if verdict.guardrail == "kill_switch":
            self._hold(ctx, row, verdict.reason, await repository.hold_step(ctx.conn, row["id"], reason=verdict.reason))
            return False
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
            return True
        if self.execution.dry_run or row["dry_run"]:
            why = "dry run (globally)" if self.execution.dry_run else "dry run (playbook)"
            await self._change(
                ctx, cause, row, "simulated", actor="responder", reason=f"{why}: not sent", sent=sent, final=True
            )
            return True
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
        return True

    @staticmethod
    def _hold(ctx: HandlerContext, row: dict[str, Any], reason: str, first: bool) -> None:
        """Log and audit a step held where it stands, the first time it is held (a step held stays held)."""
        if not first:
            return
        log.warning("step %s %s", row["id"], reason)  # the reason starts "held: …"
        ctx.audit(
            "step.held",
            row["id"],
            principal=f"system:{SERVICE}",
            outcome="held",
            detail={"incident": row["incident_id"], "reason": reason},
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

    async def _hand_over(self, ctx: HandlerContext, cause: Cause, row: dict[str, Any]) -> None:
        """A step a person does: it waits, running, until its owner says it is done (or failed)."""
        if self.execution.dry_run or row["dry_run"]:
            await self._change(ctx, cause, row, "simulated", actor="responder", reason="dry run", final=True)
            return
        due = f", due {row['due_at']:%Y-%m-%d %H:%M %Z}" if row["due_at"] else ""
        reason = f"handed to {row['owner']}{due}: vigil recovery done {row['id']}"
        await self._change(ctx, cause, row, "running", actor="responder", reason=reason, dispatched=True)

    async def complete(
        self, ctx: HandlerContext, step_id: str, *, actor: str, note: str, failed: bool
    ) -> dict[str, Any]:
        """Its owner (or anyone allowed) says a manual step is done, or failed; the note is the evidence."""
        try:
            incident_id = steps.incident_of(step_id)
        except ValueError as exc:
            raise StepAnswerRefused(str(exc)) from exc
        await repository.lock_incident(ctx.conn, incident_id)
        found = await repository.step(ctx.conn, step_id)
        if found is None:
            raise StepAnswerRefused(f"no step {step_id}")
        row = dict(found)
        if row["connector"] != "manual":
            raise StepAnswerRefused(f"{step_id} is done by its connector ({row['connector']}), not by a person")
        if row["state"] != "running":
            raise StepAnswerRefused(f"{step_id} is {row['state']}: only a step handed to its owner can be marked done")
        if not note.strip():
            raise StepAnswerRefused("say what was done, or why it failed (--note): it is the step's evidence")
        cause = _TimerCause(subject=incident_id, source=SOURCE)
        state = "failed" if failed else "succeeded"
        await self._change(ctx, cause, row, state, actor=actor, reason=note, final=True)
        if not failed:
            check = f"confirmed by {actor}"
            await self._record_check(ctx, row, of="action", outcome="validated", check=check, reason=note)
        ctx.audit("step.done" if not failed else "step.failed", step_id, principal=actor, detail={"note": note[:500]})
        await self._advance(ctx, incident_id, cause)
        return dict(await repository.step(ctx.conn, step_id) or {})

    async def _guardrails(self, ctx: HandlerContext, row: dict[str, Any], now: datetime) -> guardrails.Verdict:
        rails = self.execution.guardrails
        controls = await guardrails.get_controls(ctx.conn)
        context = guardrails.Context(
            guardrails=rails,
            now=now,
            paused=controls.paused,
            own_addresses=self.execution.own_addresses,
            incident_targets=await repository.incident_targets(ctx.conn, row["incident_id"]),
            step_targets=await repository.step_targets(ctx.conn, row["plan_id"], row["step"])
            if row["item"] is not None
            else 0,
        )
        action = guardrails.Action(
            name=row["action"], target_kind=row["target_kind"] or "host", incident_id=row["incident_id"]
        )
        targets = [row["item"]] if row["item"] is not None else []
        # The rate limits count what other transactions dispatch too: the limiter does, on its own connection.
        verdict = guardrails.check_all_but_rates(action, targets, context)
        if not verdict.allowed or not rails.rate_limits:
            return verdict
        limiter = self.execution.rate_limiter
        if limiter is None:
            raise RuntimeError("rate limits are configured but the responder was given no rate limiter")
        simulated = self.execution.dry_run or row["dry_run"]
        return await limiter.take(row["id"], action, targets, rails.rate_limits, now=now, reserve=not simulated)

    async def on_effect_outcome(self, ctx: HandlerContext, effect: Effect, outcome: EffectOutcome) -> None:
        """An action's, an undo's or a check's outcome, recorded in the transaction that records the effect's."""
        key = effect.key
        checked = key.endswith(VALIDATE_SUFFIX)
        key = key.removesuffix(VALIDATE_SUFFIX)
        undo = key.endswith(UNDO_SUFFIX)
        sid = key.removesuffix(UNDO_SUFFIX)
        await repository.lock_incident(ctx.conn, effect.subject)
        found = await repository.step(ctx.conn, sid)
        if found is None:
            log.error("effect %d: no step %s for its outcome", effect.id, sid)
            return
        row = dict(found)
        cause = _TimerCause(subject=effect.subject, source=SOURCE)
        result = {"effect_id": outcome.effect_id, "attempts": outcome.attempts, **outcome.result}
        if checked:
            await self._on_checked(ctx, row, outcome, of="undo" if undo else "action")
            return
        if undo:
            await self._on_undone(ctx, cause, row, outcome, result)
            return
        # A step whose action gave up, then went through when an operator retried its effect (`vigil effects
        # retry`): the action is in force, so the step is done, checked and leased like any other.
        retried = row["state"] == "failed" and outcome.status == "succeeded" and row["dispatched_at"] is not None
        if row["state"] != "running" and not retried:
            log.warning("step %s is %s; outcome %s of effect %d ignored", sid, row["state"], outcome.status, effect.id)
            return
        if outcome.status == "succeeded":
            done = f"done after a retry of its effect ({outcome.attempts} attempt(s) in all)" if retried else "done"
            await self._change(ctx, cause, row, "succeeded", actor="responder", reason=done, result=result, final=True)
            await self._validate(ctx, row, of="action", result=outcome.result)
            await self._start_lease(ctx, row)
        else:
            what = "refused for good" if outcome.status == "failed" else f"gave up after {outcome.attempts} attempt(s)"
            reason = f"{what}: {outcome.error or 'no reason given'}"
            await self._change(ctx, cause, row, "failed", actor="responder", reason=reason, result=result, final=True)
        await self._advance(ctx, effect.subject, cause)

    # ---- validation -------------------------------------------------------------------------

    async def _validate(
        self, ctx: HandlerContext, row: dict[str, Any], *, of: Literal["action", "undo"], result: Mapping[str, Any]
    ) -> None:
        """Enqueue the check that proves an action's (or its undo's) effect, as its own effect after it."""
        spec = row["undo"] if of == "undo" else {"connector": row["connector"], "action": row["action"]}
        params = row["undo"]["params"] if of == "undo" else row["params"]
        connector = self.execution.connectors.get(spec["connector"])
        key = row["id"] + (UNDO_SUFFIX if of == "undo" else "") + VALIDATE_SUFFIX
        call = _call(row, key=key, action=spec["action"], params=params, now=utcnow())
        try:
            dispatch = connector.validation(call, result) if isinstance(connector, Validating) else None
        except ConnectorError as exc:
            await self._record_check(ctx, row, of=of, outcome="failed", check="", reason=f"cannot be checked: {exc}")
            return
        if dispatch is None:
            reason = f"no check is configured for {spec['connector']} {spec['action']}"
            await self._record_check(ctx, row, of=of, outcome="unchecked", check="", reason=reason)
            return
        await effects.enqueue(
            ctx.conn,
            service=SERVICE,
            kind=dispatch.kind,
            key=key,
            subject=row["incident_id"],
            target=dispatch.target,
            payload=dispatch.payload,
        )
        if of == "undo":
            await repository.set_undo_validation(ctx.conn, row["id"], "pending")
        else:
            await repository.set_validation(
                ctx.conn, row["id"], outcome="pending", reason=f"checking ({dispatch.kind})"
            )

    async def _on_checked(
        self, ctx: HandlerContext, row: dict[str, Any], outcome: EffectOutcome, *, of: Literal["action", "undo"]
    ) -> None:
        found = {k: v for k, v in outcome.result.items() if k in ("check_url", "status_code", "listed", "exit_code")}
        check = ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or outcome.kind
        if outcome.status == "succeeded":
            await self._record_check(
                ctx, row, of=of, outcome="validated", check=check, reason="", evidence=outcome.result
            )
            return
        reason = outcome.error or "the check did not pass"
        if outcome.status == "parked":
            reason = f"not confirmed after {outcome.attempts} attempt(s): {reason}"
        await self._record_check(ctx, row, of=of, outcome="failed", check=check, reason=reason, evidence=outcome.result)

    async def _record_check(
        self,
        ctx: HandlerContext,
        row: dict[str, Any],
        *,
        of: Literal["action", "undo"],
        outcome: ValidationOutcome,
        check: str,
        reason: str,
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        """Mark the action (or the lease's undo) validated, failed or unchecked, log it, and say so."""
        if of == "undo":
            await repository.set_undo_validation(ctx.conn, row["id"], outcome)
        else:
            await repository.set_validation(ctx.conn, row["id"], outcome=outcome, reason=reason)
        what = "undo" if of == "undo" else "action"
        await self._log_only(
            ctx, row, actor="validation", reason=f"{what} {outcome}" + (f": {reason}" if reason else "")
        )
        metrics.VALIDATIONS.labels(of, outcome).inc()
        if outcome == "failed":
            log.warning("step %s: its %s's effect is not confirmed: %s", row["id"], what, reason)
        action = row["undo"]["action"] if of == "undo" else row["action"]
        connector = row["undo"]["connector"] if of == "undo" else row["connector"]
        ctx.emit(
            ResponseStepValidated(
                source=SOURCE,
                subject=row["incident_id"],
                data=StepValidation(
                    step_id=row["id"],
                    step=row["step"],
                    name=row["name"],
                    phase=row["phase"],
                    item=row["item"],
                    connector=connector,
                    action=action,
                    of=of,
                    outcome=outcome,
                    check=check[:500],
                    reason=reason[:2000],
                    evidence=bound_result(dict(evidence or {})),
                ),
            )
        )

    # ---- leases -----------------------------------------------------------------------------

    async def _lease_terms(self, ctx: HandlerContext, row: dict[str, Any], now: datetime) -> tuple[int, int]:
        """How long a reversible step's lease holds, longer for a repeat offender; (seconds, offence)."""
        policy = self.execution.repeat_offenders
        earlier = 0
        if row["target_kind"] in policy.kinds and row["item"] is not None:
            earlier = await repository.earlier_leases(
                ctx.conn,
                target_kind=row["target_kind"],
                target=row["item"],
                since=now - policy.window,
                step_id=row["id"],
            )
        return leases.lease_terms(row["lease_s"], target_kind=row["target_kind"], earlier=earlier, policy=policy)

    async def _start_lease(self, ctx: HandlerContext, row: dict[str, Any]) -> None:
        """A reversible action in force: its lease, and the durable timer that ends it (it survives restarts)."""
        if row["undo"] is None or row["lease_s"] is None:
            return
        now = utcnow()
        due = now + timedelta(seconds=row["lease_s"])
        created = await repository.insert_lease(
            ctx.conn,
            step_id=row["id"],
            incident_id=row["incident_id"],
            target_kind=row["target_kind"] or "",
            target=row["item"] or "",
            action=row["action"],
            offence=row["lease_offence"] or 1,
            duration_s=row["lease_s"],
            started_at=now,
            due_at=due,
        )
        if not created:
            return
        await timers.schedule(ctx.conn, service=SERVICE, kind=LEASE_EXPIRY, subject=row["id"], due_at=due)
        offence = row["lease_offence"] or 1
        reason = f"in force until {due:%Y-%m-%d %H:%M:%S %Z}" + (f" (offence {offence})" if offence > 1 else "")
        await repository.log_lease(ctx.conn, row["id"], actor="responder", change="created", reason=reason, due_at=due)
        await self._lease_event(ctx, row["id"], change="created", actor="responder", reason=reason)

    async def on_lease_expiry(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """A lease's end came (or came while the responder was down): its undo goes out now."""
        await repository.lock_incident(ctx.conn, steps.incident_of(timer.subject))
        found = await repository.lease(ctx.conn, timer.subject)
        if found is None or found["state"] not in ("active", "extended"):
            return  # made permanent, revoked or rolled back meanwhile
        late = (utcnow() - timer.due_at).total_seconds()
        metrics.LEASE_EXPIRY_DELAY.observe(max(late, 0.0))
        await self._revert(ctx, timer.subject, change="expired", actor="lease", reason="the lease ended")

    async def _revert(
        self,
        ctx: HandlerContext,
        step_id: str,
        *,
        change: Literal["expired", "revoked", "rolled_back"],
        actor: str,
        reason: str,
    ) -> bool:
        """Send a leased action's undo now, as an effect with its own idempotency key; False if it cannot go."""
        row = dict(await repository.step(ctx.conn, step_id) or {})
        undo = row["undo"]
        key = step_id + UNDO_SUFFIX
        await timers.cancel(ctx.conn, service=SERVICE, kind=LEASE_EXPIRY, subject=step_id)
        connector = self.execution.connectors.get(undo["connector"])
        try:
            if connector is None:
                raise ConnectorError(f"connector {undo['connector']} is not available here")
            dispatch = connector.dispatch(
                _call(row, key=key, action=undo["action"], params=undo["params"], now=utcnow())
            )
        except ConnectorError as exc:
            why = f"{reason}; the undo cannot be sent: {exc}"
            await repository.update_lease(
                ctx.conn, step_id, state="revert_failed", actor=actor, reason=why, revert_reason=change
            )
            await repository.log_lease(ctx.conn, step_id, actor=actor, change="revert_failed", reason=why, due_at=None)
            await self._lease_event(ctx, step_id, change="revert_failed", actor=actor, reason=why)
            return False
        queued = await effects.enqueue(
            ctx.conn,
            service=SERVICE,
            kind=dispatch.kind,
            key=key,
            subject=row["incident_id"],
            target=dispatch.target,
            payload=dispatch.payload,
            timeout_s=row["timeout_s"],
        )
        if not queued:  # an undo that ran before (and failed, or was parked) goes again, with the same key
            effect_id = await ctx.conn.fetchval(
                "SELECT id FROM effects WHERE service = $1 AND kind = $2 AND key = $3", SERVICE, dispatch.kind, key
            )
            await effects.retry(ctx.conn, effect_id=effect_id)
        await repository.update_lease(
            ctx.conn, step_id, state="reverting", actor=actor, reason=reason, revert_reason=change
        )
        await repository.log_lease(ctx.conn, step_id, actor=actor, change=change, reason=reason, due_at=utcnow())
        await self._lease_event(ctx, step_id, change=change, actor=actor, reason=reason)
        return True

    async def _on_undone(
        self, ctx: HandlerContext, cause: Cause, row: dict[str, Any], outcome: EffectOutcome, result: dict[str, Any]
    ) -> None:
        """The undo ran: the lease is reverted (then checked), or its failure is said and escalated."""
        sid = row["id"]
        lease = await repository.lease(ctx.conn, sid)
        why = lease["revert_reason"] if lease is not None else "expired"
        if outcome.status == "succeeded":
            reason = {"expired": "lease ended: undone", "revoked": "lease revoked: undone"}.get(
                why, "rolled back: undone"
            )
            if lease is not None:
                await repository.update_lease(
                    ctx.conn, sid, state="reverted", actor="responder", reason=reason, reverted=True
                )
                await repository.log_lease(
                    ctx.conn, sid, actor="responder", change="reverted", reason=reason, due_at=None
                )
                await self._lease_event(ctx, sid, change="reverted", actor="responder", reason=reason)
            if row["state"] == "succeeded":
                await self._change(ctx, cause, row, "rolled_back", actor="responder", reason=reason, result=result)
            await self._validate(ctx, row, of="undo", result=outcome.result)
        else:
            reason = f"undo {outcome.status} after {outcome.attempts} attempt(s): {outcome.error or 'no reason given'}"
            log.error("step %s: %s", sid, reason)
            await self._log_only(ctx, row, actor="responder", reason=reason)
            if lease is not None:
                await repository.update_lease(ctx.conn, sid, state="revert_failed", actor="responder", reason=reason)
                await repository.log_lease(
                    ctx.conn, sid, actor="responder", change="revert_failed", reason=reason, due_at=None
                )
                await self._lease_event(ctx, sid, change="revert_failed", actor="responder", reason=reason)
        await self._rollback_next(ctx, row["incident_id"], undone=sid, failed=outcome.status != "succeeded")

    async def change_lease(
        self,
        ctx: HandlerContext,
        step_id: str,
        *,
        actor: str,
        reason: str,
        change: leases.Change,
        by_s: int | None = None,
    ) -> dict[str, Any]:
        """Extend a lease by ``by_s``, make it permanent, or revoke it (its undo runs now); who and why are kept."""
        try:
            incident_id = steps.incident_of(step_id)
        except ValueError as exc:
            raise StepAnswerRefused(str(exc)) from exc
        await repository.lock_incident(ctx.conn, incident_id)
        found = await repository.lease(ctx.conn, step_id)
        if found is None:
            step = await repository.step(ctx.conn, step_id)
            if step is None:
                raise StepAnswerRefused(f"no step {step_id}")
            if step["undo"] is None:
                raise StepAnswerRefused(f"{step_id} is not a reversible step: it has no lease")
            raise StepAnswerRefused(f"{step_id} is {step['state']}: only an action in force has a lease to change")
        try:
            leases.check_change(found["state"], change)
        except leases.LeaseRefused as exc:
            raise StepAnswerRefused(f"{step_id}: {exc}") from exc
        now = utcnow()
        row = dict(await repository.step(ctx.conn, step_id) or {})
        if change == "revoke":
            what = "lease revoked: undone now"
            await self._revert(ctx, step_id, change="revoked", actor=actor, reason=reason or "revoked")
            due: datetime | None = now
        elif change == "extend":
            assert by_s is not None
            due = leases.extended_due(found["due_at"], now, timedelta(seconds=by_s))
            what = f"lease extended to {due:%Y-%m-%d %H:%M:%S %Z}"
            await timers.schedule(ctx.conn, service=SERVICE, kind=LEASE_EXPIRY, subject=step_id, due_at=due)
            await repository.update_lease(ctx.conn, step_id, state="extended", actor=actor, reason=reason, due_at=due)
            await repository.extend_blocklist_entry(ctx.conn, step_id, expires_at=due)
            await repository.log_lease(ctx.conn, step_id, actor=actor, change="extended", reason=reason, due_at=due)
            await self._lease_event(ctx, step_id, change="extended", actor=actor, reason=reason)
        else:
            due = None
            what = "lease made permanent: no undo until revoked"
            await timers.cancel(ctx.conn, service=SERVICE, kind=LEASE_EXPIRY, subject=step_id)
            await repository.update_lease(ctx.conn, step_id, state="permanent", actor=actor, reason=reason, due_at=None)
            await repository.extend_blocklist_entry(ctx.conn, step_id, expires_at=None)
            await repository.log_lease(
                ctx.conn, step_id, actor=actor, change="made_permanent", reason=reason, due_at=None
            )
            await self._lease_event(ctx, step_id, change="made_permanent", actor=actor, reason=reason)
        await self._log_only(ctx, row, actor=actor, reason=what + (f": {reason}" if reason else ""))
        ctx.audit(
            f"lease.{change}",
            step_id,
            principal=actor,
            detail={"undo_at": due.isoformat() if due else None, "reason": reason[:500]},
        )
        log.info("step %s: %s by %s", step_id, what, actor)
        return {**dict(await repository.lease(ctx.conn, step_id) or {}), "undo_at": due}

    async def _lease_event(self, ctx: HandlerContext, step_id: str, *, change: str, actor: str, reason: str) -> None:
        lease = await repository.lease(ctx.conn, step_id)
        assert lease is not None
        metrics.LEASES.labels(change).inc()
        ctx.emit(
            ResponseLeaseChanged(
                source=SOURCE,
                subject=lease["incident_id"],
                data=LeaseChange(
                    step_id=step_id,
                    name=lease["name"],
                    target_kind=lease["target_kind"],
                    target=lease["target"],
                    action=lease["action"],
                    state=lease["state"],
                    change=change,  # type: ignore[arg-type]  # one of LeaseChange.change
                    actor=actor,
                    reason=reason[:2000],
                    due_at=lease["due_at"],
                    offence=lease["offence"],
                    duration_s=lease["duration_s"],
                ),
            )
        )

    # ---- the watch after containment ---------------------------------------------------------

    async def _maybe_watch(
        self, ctx: HandlerContext, incident_id: str, settled: list[dict[str, Any]] | None = None
    ) -> None:
        """Every containment step has ended and some acted: watch the incident's new alerts for what they contained.

        The plan's steps and those run on demand both: a block a person asked for is watched as the plan's are.
        ``settled``: those steps as they stand, read already (``_advance_steps``); read here when not given."""
        rows = settled
        if rows is None:
            plan = await repository.current_plan(ctx.conn, incident_id)
            plan_id = plan["id"] if plan is not None else None
            rows = [
                dict(r)
                for r in await repository.steps_of(ctx.conn, incident_id)
                if r["plan_id"] == plan_id or _on_demand(r)
            ]
        entities = monitor.contained_entities(rows)
        if not entities:  # containment not over, or it acted on nothing: nothing to watch, whether watched or not
            return
        if await repository.watching(ctx.conn, incident_id) is not None:
            return
        last = await repository.last_watch(ctx.conn, incident_id)
        if last is not None and {(e.kind, e.value) for e in entities} <= {
            (e["kind"], e["value"]) for e in last["entities"]
        }:
            return  # these were watched already; only a revised plan that contains more starts another watch
        now = utcnow()
        watch = self.execution.watch
        ends = now + watch.period
        monitor_id = await repository.insert_watch(
            ctx.conn,
            incident_id=incident_id,
            started_at=now,
            ends_at=ends,
            entities=[e.model_dump() for e in entities],
            threshold=watch.threshold,
        )
        if (watched := ctx.read.get(WATCHED)) is not None:
            watched.add(incident_id)  # the batch's later alerts of the incident are looked at
        await timers.schedule(ctx.conn, service=SERVICE, kind=WATCH_END, subject=str(monitor_id), due_at=ends)
        log.info("incident %s: containment over; watching %d entities until %s", incident_id, len(entities), ends)

    async def on_alerts(self, ctx: HandlerContext, event: IncidentDetected | IncidentUpdated) -> None:
        """New alerts of an incident under watch: those naming a contained entity are evidence it did not hold."""
        # Most incidents are under no watch: one look, without the incident's lock, says so. An alert
        # committed before a watch starts is not evidence against it anyway.
        if not event.data.new_alerts or not await _is_watched(ctx, event.subject):
            return
        await repository.lock_incident(ctx.conn, event.subject)
        watched = await repository.watching(ctx.conn, event.subject)
        if watched is None:
            return
        entities = [WatchedEntity.model_validate(e) for e in watched["entities"]]
        found = monitor.evidence(event.data.new_alerts, entities, since=watched["started_at"])
        if not found:
            return
        await repository.add_evidence(ctx.conn, watched["id"], [e.model_dump(mode="json") for e in found])
        seen = len(watched["evidence"]) + len(found)
        log.warning("incident %s: %d alert(s) on contained entities since containment", event.subject, seen)
        if seen >= watched["threshold"]:
            await self._end_watch(ctx, watched["id"], ineffective=True)

    async def on_watch_end(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        """The watch's period passed: containment held, unless it was found ineffective before."""
        await self._end_watch(ctx, int(timer.subject), ineffective=False)

    async def _end_watch(self, ctx: HandlerContext, monitor_id: int, *, ineffective: bool) -> None:
        watched = await repository.watch(ctx.conn, monitor_id)
        if watched is None or watched["state"] != "watching":
            return
        state = "ineffective" if ineffective else "confirmed"
        await repository.end_watch(ctx.conn, monitor_id, state=state)
        await timers.cancel(ctx.conn, service=SERVICE, kind=WATCH_END, subject=str(monitor_id))
        fresh = await repository.watch(ctx.conn, monitor_id)
        assert fresh is not None
        evidence = list(fresh["evidence"])
        entities = ", ".join(f"{e['kind']} {e['value']}" for e in fresh["entities"])
        if ineffective:
            reason = f"{len(evidence)} alert(s) on contained entities ({entities}) since containment"
        else:
            reason = f"no more than {len(evidence)} alert(s) on {entities} in the watch after containment"
        data = ContainmentWatch(
            started_at=fresh["started_at"],
            ended_at=fresh["ended_at"],
            entities=fresh["entities"],
            threshold=fresh["threshold"],
            matched=len(evidence),
            evidence=evidence[: monitor.MAX_EVIDENCE],
            reason=reason[:2000],
        )
        event_class = ContainmentIneffective if ineffective else ContainmentConfirmed
        ctx.emit(event_class(source=SOURCE, subject=fresh["incident_id"], data=data))
        metrics.WATCHES.labels(state).inc()
        log.info("incident %s: containment %s: %s", fresh["incident_id"], state, reason)
        # What was contained while this watch ran (a step run on demand) is watched in turn.
        await self._maybe_watch(ctx, fresh["incident_id"])

    # ---- rollback ---------------------------------------------------------------------------

    async def rollback(self, ctx: HandlerContext, incident_id: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Undo an incident's actions in force, one at a time, in reverse order of execution."""
        await repository.lock_incident(ctx.conn, incident_id)
        if await repository.running_rollback(ctx.conn, incident_id) is not None:
            raise StepAnswerRefused(f"incident {incident_id} is being rolled back already")
        in_force = await repository.list_leases(ctx.conn, incident_id=incident_id, states=sorted(leases.UNDOABLE))
        if not in_force:
            raise StepAnswerRefused(f"incident {incident_id} has no reversible action in force to roll back")
        executed = {r["id"]: r for r in await repository.steps_of(ctx.conn, incident_id)}
        order = sorted(
            (lease["step_id"] for lease in in_force),
            key=lambda sid: (executed[sid]["dispatched_at"], executed[sid]["finished_at"], sid),
            reverse=True,
        )
        rollback = await repository.insert_rollback(
            ctx.conn, incident_id=incident_id, requested_by=actor, reason=reason, steps=order
        )
        ctx.audit(
            "response.rollback", incident_id, principal=actor, detail={"steps": len(order), "reason": reason[:500]}
        )
        log.info("incident %s: rolling back %d action(s) for %s", incident_id, len(order), actor)
        await self._rollback_next(ctx, incident_id)
        return dict(rollback)

    async def _rollback_next(
        self, ctx: HandlerContext, incident_id: str, *, undone: str | None = None, failed: bool = False
    ) -> None:
        """Undo the rollback's next action, once the one before it has its outcome."""
        rollback = await repository.running_rollback(ctx.conn, incident_id)
        if rollback is None:
            return
        position, order = rollback["position"], list(rollback["steps"])
        if undone is not None:
            if position >= len(order) or order[position] != undone:
                return  # an undo of this incident outside the rollback (a lease ending): the rollback waits on
            position += 1
            await repository.advance_rollback(
                ctx.conn, rollback["id"], position=position, failed=undone if failed else None
            )
        while position < len(order):
            lease = await repository.lease(ctx.conn, order[position])
            if lease is not None and lease["state"] in leases.UNDOABLE:
                why = f"rollback by {rollback['requested_by']}" + (
                    f": {rollback['reason']}" if rollback["reason"] else ""
                )
                if await self._revert(
                    ctx, order[position], change="rolled_back", actor=rollback["requested_by"], reason=why
                ):
                    return  # its outcome moves the rollback on
                await repository.advance_rollback(
                    ctx.conn, rollback["id"], position=position + 1, failed=order[position]
                )
            else:
                await repository.advance_rollback(ctx.conn, rollback["id"], position=position + 1, failed=None)
            position += 1
        state = await repository.end_rollback(ctx.conn, rollback["id"])
        log.info("incident %s: rollback %d %s", incident_id, rollback["id"], state.replace("_", " "))

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
        self._announce(ctx, cause, row, from_state=from_state, actor=actor, reason=reason, sent=sent, result=result)

    def _announce(
        self,
        ctx: HandlerContext,
        cause: Cause,
        row: dict[str, Any],
        *,
        from_state: str | None,
        actor: str,
        reason: str,
        sent: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Count a step's change to the state it is in now and put it on the timeline."""
        to_state = row["state"]
        metrics.STEPS.labels(to_state).inc()
        if to_state in metrics.ACTION_OUTCOMES:
            metrics.ACTIONS.labels(row.get("connector") or "none", to_state).inc()
        change = StepChange(
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
            required=row.get("required", True),
            owner=row.get("owner"),
            due_at=row.get("due_at"),
            dry_run=bool(row["dry_run"]) or self.execution.dry_run,
            sent=bound_result(sent) if sent is not None else None,
            result=bound_result(result) if result is not None else None,
        )
        # One cause's run of changes (a plan's dozens of step decisions) goes out as one event.
        event = ResponseStepsChanged(
            source=SOURCE, **_caused_by(cause, row["incident_id"]), data=StepChanges(changes=[change])
        )
        ctx.emit_folded(event, domain.fold_step_changes)

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


def _on_demand(row: Mapping[str, Any] | asyncpg.Record) -> bool:
    """A step a person asked for, beside the incident's plan."""
    return str(row["plan_id"]).startswith(domain.ON_DEMAND)


def _ended_reason(state: str, at: datetime) -> str:
    return (
        f"held: the incident was {state} at {at:%Y-%m-%d %H:%M:%S %Z}; "
        "no action starts on an ended incident (reopen it to run this step)"
    )


def _caused_by(cause: Cause, incident_id: str) -> dict[str, Any]:
    if isinstance(cause, EventBase):
        return cause.caused_by()
    return {"subject": incident_id}


def _rejection(command: ApproveStep | DenyStep | RunStep, reason: str) -> CommandRejected:
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


def _same_terms(row: Mapping[str, Any], decision: approvals.Decision) -> bool:
    """The step already waits on the terms the policy decides now (rule, approvals, roles, on timeout)."""
    return (
        row["policy_rule"] == decision.rule
        and row["approvals_required"] == decision.approvals
        and list(row["approver_roles"] or ()) == list(decision.roles)
        and row["on_timeout"] == (decision.on_timeout if decision.timeout_s else None)
        and (row["approval_deadline"] is not None) == bool(decision.timeout_s)
    )


@dataclass
class _PolicyWrites:
    """What the approval policy decided for a plan's steps: written in three round trips once all are decided,
    not three per step."""

    terms: list[repository.ApprovalTerms] = field(default_factory=list)
    due: dict[str, datetime] = field(default_factory=dict)  # approval timeouts set (or moved)
    cancelled: list[str] = field(default_factory=list)  # approval timeouts no longer wanted

    async def write(self, conn: Conn) -> None:
        await repository.set_approval_terms(conn, self.terms)
        await timers.schedule_many(conn, service=SERVICE, kind=APPROVAL_TIMEOUT, due=self.due)
        await timers.cancel_many(conn, service=SERVICE, kind=APPROVAL_TIMEOUT, subjects=self.cancelled)


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
        "owner": step.owner,
        "due_at": utcnow() + timedelta(seconds=step.due_s) if step.due_s else None,
        "required": step.required,
        "recovery": step.recovery,
    }
