"""The analyzer's handlers: each incident event adds to the analysis; a batch's last part publishes it."""

from __future__ import annotations

from services.analyzer import assets, domain, intel, repository
from shared.addresses import is_internal
from shared.consumer import HandlerContext, dispatch_each
from shared.events import Analysis, IncidentAnalyzed, IncidentDetected, IncidentUpdated

SOURCE = "/vigil/analyzer"


async def analyse_incident(ctx: HandlerContext, event: IncidentDetected | IncidentUpdated) -> None:
    snapshot = event.data
    known = await repository.get(ctx.conn, incident_id=event.subject)
    gathered = domain.gather(known, snapshot)
    await repository.save(ctx.conn, incident_id=event.subject, gathered=gathered)
    if snapshot.part < snapshot.parts:
        return  # one analysis per batch, once its last part is in: the responder plans once
    # What the incident touches, by the asset inventory (addresses inside the incident, hosts, accounts).
    internal = [i.value for i in gathered.indicators if i.kind in ("ipv4", "ipv6") and is_internal(i.value)]
    inventory = await assets.resolve(ctx.conn, hosts=gathered.hosts, ips=internal, users=gathered.users, resources=[])
    found = assets.impact(inventory)
    recommendation = assets.severity_recommendation(snapshot.severity, found)
    # What threat intelligence says of each indicator: one indexed query for all of them.
    matches = await intel.lookup(ctx.conn, [(i.kind, i.value) for i in gathered.indicators])
    indicators = [
        domain.with_verdict(i, intel.verdict_of(matches.get((i.kind, i.value), []))) for i in gathered.indicators
    ]
    ctx.emit(
        IncidentAnalyzed(
            source=SOURCE,
            **event.caused_by(),
            data=Analysis(
                type=snapshot.type,
                severity=snapshot.severity,
                title=snapshot.title,
                indicators=indicators,
                affected_hosts=gathered.hosts,
                affected_users=gathered.users,
                alert_count=gathered.alert_count,
                summary=domain.summarise(gathered.alert_count, gathered.hosts, gathered.users, indicators),
                impact=domain.impact_summary(found),
                asset_tags=domain.asset_tags(found),
                severity_recommendation=domain.recommendation_of(recommendation),
            ),
        )
    )


HANDLERS = {
    IncidentDetected: analyse_incident,
    IncidentUpdated: analyse_incident,
}
handle = dispatch_each(HANDLERS)  # type: ignore[arg-type]
