"""The analyzer's handlers: every incident event refreshes the incident's analysis."""

from __future__ import annotations

from services.analyzer import domain, repository
from shared.consumer import HandlerContext, dispatch_each
from shared.events import Analysis, IncidentAnalyzed, IncidentDetected, IncidentUpdated

SOURCE = "/vigil/analyzer"


async def analyse_incident(ctx: HandlerContext, event: IncidentDetected | IncidentUpdated) -> None:
    snapshot = event.data
    known = await repository.get(ctx.conn, incident_id=event.subject)
    indicators = domain.extract_indicators(snapshot.new_alerts)
    if known is not None:
        indicators = domain.merge_indicators(known.indicators, indicators)
    gathered = repository.Gathered(
        alert_count=max(snapshot.alert_count, known.alert_count if known else 0),
        hosts=sorted(set(snapshot.hosts) | set(known.hosts if known else ())),
        users=sorted(set(snapshot.users) | set(known.users if known else ())),
        indicators=indicators,
    )
    await repository.save(ctx.conn, incident_id=event.subject, gathered=gathered)
    ctx.emit(
        IncidentAnalyzed(
            source=SOURCE,
            **event.caused_by(),
            data=Analysis(
                type=snapshot.type,
                severity=snapshot.severity,
                title=snapshot.title,
                indicators=gathered.indicators,
                affected_hosts=gathered.hosts,
                affected_users=gathered.users,
                alert_count=gathered.alert_count,
                summary=domain.summarise(gathered.alert_count, gathered.hosts, gathered.users, indicators),
            ),
        )
    )


HANDLERS = {
    IncidentDetected: analyse_incident,
    IncidentUpdated: analyse_incident,
}
handle = dispatch_each(HANDLERS)  # type: ignore[arg-type]
