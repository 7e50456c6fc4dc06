"""The responder's handlers: each analysis may call for a (new) response plan."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.responder import domain
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
        try:
            playbook = domain.select_playbook(self.playbooks, analysis.type, analysis.severity)
        except domain.NoPlaybook as exc:
            raise InvalidMessage(str(exc)) from exc
        row = await ctx.conn.fetchrow(
            """SELECT playbook, severity FROM responder_plans
               WHERE incident_id = $1 AND superseded_at IS NULL FOR UPDATE""",
            event.subject,
        )
        current = (row["playbook"], Severity(row["severity"])) if row else None
        if not domain.needs_new_plan(current, playbook, analysis.severity):
            return
        plan = domain.plan_response(playbook, plan_id=new_id(), incident_type=analysis.type, severity=analysis.severity)
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
            [a.model_dump() for a in plan.actions],
        )
        ctx.emit(ResponsePlanned(source=SOURCE, **event.caused_by(), data=plan))
        log.info("incident %s: planned %s", event.subject, plan.playbook, extra=event_ids(event))
