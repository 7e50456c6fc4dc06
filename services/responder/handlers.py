"""The responder's handlers: each analysis may call for a (new) response plan."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.responder import domain, metrics
from shared.consumer import HandlerContext, dispatch_each
from shared.errors import InvalidMessage
from shared.events import IncidentAnalyzed, ResponsePlanned, Severity, new_id
from shared.logs import event_ids

log = logging.getLogger(__name__)
SOURCE = "/vigil/responder"


class Responder:
    def __init__(self, playbooks: Sequence[domain.Playbook]) -> None:
        self.playbooks = playbooks
        self.handle = dispatch_each({IncidentAnalyzed: self.plan})

    async def plan(self, ctx: HandlerContext, event: IncidentAnalyzed) -> None:
        analysis = event.data
        facts = domain.incident_facts(event.subject, analysis)
        try:
            playbook = domain.select_playbook(self.playbooks, analysis.type, analysis.severity, facts)
        except domain.NoPlaybook as exc:
            raise InvalidMessage(str(exc)) from exc
        row = await ctx.conn.fetchrow(
            """SELECT playbook, severity FROM responder_plans
               WHERE incident_id = $1 AND superseded_at IS NULL FOR UPDATE""",
            event.subject,
        )
        current = (row["playbook"], Severity(row["severity"])) if row else None
        # New indicators alone do not re-plan: only a change of playbook or severity does.
        if not domain.needs_new_plan(current, playbook, analysis.severity):
            return
        planning = domain.plan_bounded(playbook, plan_id=new_id(), facts=facts)
        plan = planning.plan
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

    def _account(self, event: IncidentAnalyzed, planning: domain.Planning) -> None:
        """Log each step that will not run, with its reason, and count every step's outcome."""
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
        metrics.STEPS.labels("planned").inc(len(planning.runnable) - planning.truncated)
        metrics.STEPS.labels("refused").inc(len(planning.refused))
        metrics.STEPS.labels("skipped").inc(len(planning.skipped))
        metrics.STEPS.labels("truncated").inc(planning.truncated)
