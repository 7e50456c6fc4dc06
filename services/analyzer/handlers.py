"""The analyzer's handlers: each incident event adds to the analysis; a batch's last part publishes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from services.analyzer import (
    assets,
    attack,
    domain,
    forensic,
    forensic_repository,
    history,
    intel,
    providers,
    repository,
    risk,
    rootcause,
    similar,
)
from services.analyzer.metrics import ANALYSES
from shared.consumer import BatchHandler, HandlerContext, Inbound
from shared.events import (
    AlertSummary,
    Analysis,
    Event,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentSnapshot,
    IncidentSplit,
    IncidentUpdated,
    Indicator,
    Observable,
)

SOURCE = "/vigil/analyzer"
PUBLICATION_OUTCOME = {"now": "published", "later": "deferred", "same": "unchanged"}


async def analyse_incident(
    ctx: HandlerContext,
    event: IncidentDetected | IncidentUpdated,
    *,
    noise: forensic.Noise | None = None,
    interval: timedelta = timedelta(0),
) -> None:
    """Add the event's alerts to the incident's analysis; on a batch's last part, publish it if it changed.

    ``noise`` is what extraction drops: the service passes its configured list (noise.yaml); none drops nothing.
    ``interval`` is the least time between two versions that differ only in what can wait (see
    ``domain.publication``); zero publishes every change at once.
    """
    known = await repository.get(ctx.conn, incident_id=event.subject)
    await _gather_and_publish(ctx, event, event.data, known=known, noise=noise, interval=interval)


async def reanalyse_split(ctx: HandlerContext, event: IncidentSplit, *, noise: forensic.Noise | None = None) -> None:
    """Alerts were detached: the incident is analysed again from the alerts it keeps, which the event restates."""
    snapshot = event.data.incident
    known = None
    if snapshot.part == 1:  # the first part starts again from nothing: what the detached alerts brought goes
        await forensic_repository.forget(ctx.conn, incident_id=event.subject)
        await history.forget_trace(ctx.conn, incident_id=event.subject)
    else:
        known = await repository.get(ctx.conn, incident_id=event.subject)
    # An operator detached alerts: the new analysis is published at once.
    await _gather_and_publish(ctx, event, snapshot, known=known, noise=noise, interval=timedelta(0))


async def publish_waiting(ctx: HandlerContext, *, interval: timedelta, limit: int = 100) -> int:
    """Publish the latest version of each incident's analysis that waited for its interval to end; how many."""
    due = await repository.take_due(ctx.conn, interval=interval, limit=limit)
    for waiting in due:
        await repository.mark_published(
            ctx.conn,
            incident_id=waiting.subject,
            digest=domain.analysis_digest(waiting.data),
            urgent=domain.urgent_digest(waiting.data),
        )
        ctx.emit(waiting)
    if due:
        ANALYSES.labels("published_later").inc(len(due))
    return len(due)


async def _gather_and_publish(
    ctx: HandlerContext,
    event: EventBase,
    snapshot: IncidentSnapshot,
    *,
    known: domain.Gathered | None,
    noise: forensic.Noise | None,
    interval: timedelta,
) -> None:
    gathered = domain.gather(known, snapshot)
    # Forensics: what each new alert names and where, stored once per alert (an alert carried again is not re-read).
    evidence = [forensic.evidence_of(a, noise or forensic.Noise()) for a in snapshot.new_alerts]
    recorded = await forensic_repository.record(ctx.conn, incident_id=event.subject, alerts=evidence)
    # Only alerts the incident had not seen go into its root-cause trace: an event carried again adds nothing.
    first_time = {e.key for e in recorded}
    trace = await _trace(ctx, event.subject, snapshot, [a for a in snapshot.new_alerts if a.key in first_time])
    if snapshot.part < snapshot.parts:
        await repository.save(ctx.conn, incident_id=event.subject, gathered=gathered)
        return  # one analysis per batch, once its last part is in: the responder plans once
    tallies = await forensic_repository.list_tallies(ctx.conn, incident_id=event.subject)
    named = [forensic.indicator_of(t) for t in tallies]
    observables = [o for o in named if isinstance(o, Observable)]
    gathered = replace(gathered, indicators=[i for i in named if isinstance(i, Indicator)])
    await repository.save(ctx.conn, incident_id=event.subject, gathered=gathered)
    # What the incident touches, by the asset inventory: hosts, accounts, addresses and cloud resources.
    wanted = domain.lookups(gathered, observables)
    inventory = await assets.resolve(
        ctx.conn,
        hosts=wanted.hosts,
        ips=wanted.ips,
        users=wanted.users,
        resources=wanted.resources,
        ips_if_known=wanted.ips_if_known,
        resources_if_known=wanted.resources_if_known,
    )
    found = assets.impact(inventory)
    recommendation = assets.severity_recommendation(snapshot.severity, found)
    # What threat intelligence says of each indicator: one indexed query for all of them.
    matches = await intel.lookup(ctx.conn, [(i.kind, i.value) for i in gathered.indicators])
    # And what online providers answered (cached); lookups of the rest enqueued, answers re-analyse.
    asked = (
        event
        if isinstance(event, IncidentDetected | IncidentUpdated)
        else IncidentUpdated(source=SOURCE, subject=event.subject, data=snapshot)
    )
    matches = await providers.consult(ctx.conn, asked, matches)
    indicators = [
        domain.with_verdict(i, intel.verdict_of(matches.get((i.kind, i.value), []))) for i in gathered.indicators
    ]
    threat = await _threat_analysis(ctx, event.subject, snapshot, trace, indicators, gathered, found)
    analysed = IncidentAnalyzed(
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
            observables=observables,
            **threat,
        ),
    )
    await _publish(ctx, analysed, interval=interval)


async def _publish(ctx: HandlerContext, analysed: IncidentAnalyzed, *, interval: timedelta) -> None:
    """Publish the analysis now, or keep it for the incident's timer, or not at all if it was published already."""
    incident_id = analysed.subject
    published, now = await repository.published(ctx.conn, incident_id=incident_id)
    digest, urgent = domain.analysis_digest(analysed.data), domain.urgent_digest(analysed.data)
    decided = domain.publication(published, digest=digest, urgent=urgent, now=now, interval=interval)
    ANALYSES.labels(PUBLICATION_OUTCOME[decided]).inc()
    if decided == "now":  # whatever waited is superseded
        await repository.mark_published(ctx.conn, incident_id=incident_id, digest=digest, urgent=urgent)
        ctx.emit(analysed)
    elif decided == "later":  # published by publish_waiting when the interval ends, unless superseded
        await repository.set_pending(ctx.conn, incident_id=incident_id, event=analysed)
    elif published.pending:  # back to what was published: the waiting version is void
        await repository.set_pending(ctx.conn, incident_id=incident_id, event=None)


async def _trace(
    ctx: HandlerContext, incident_id: str, snapshot: IncidentSnapshot, alerts: list[AlertSummary]
) -> rootcause.Trace:
    """Fold this event's alerts, with their ATT&CK mapping, into the incident's root-cause trace."""
    dataset, rules = attack.load_dataset(), attack.load_rules()
    known = await history.get_trace(ctx.conn, incident_id=incident_id)
    mapped = [(a, attack.map_alert(a, dataset, rules)) for a in alerts]
    trace = rootcause.fold(known, mapped)
    await history.save_trace(ctx.conn, incident_id=incident_id, title=snapshot.title, trace=trace)
    return trace


async def _threat_analysis(
    ctx: HandlerContext,
    incident_id: str,
    snapshot: IncidentSnapshot,
    trace: rootcause.Trace,
    indicators: list[Indicator],
    gathered: domain.Gathered,
    found: assets.Impact,
) -> dict[str, Any]:
    """ATT&CK, root cause, threat profile, similar past incidents and the risk, as fields of the analysis."""
    dataset = attack.load_dataset()
    cause = rootcause.root_cause(trace, dataset, indicators)
    tactics = rootcause.tactics_of(trace, dataset)
    features = similar.features(indicators, gathered.hosts, gathered.users, trace.techniques)
    shared, past = await history.shared_with(ctx.conn, incident_id=incident_id, features=features)
    await history.add_features(ctx.conn, incident_id=incident_id, features=features, seen_at=snapshot.first_seen)
    known_users = {u.name for u in found.users}
    inputs = risk.RiskInputs(
        severity=snapshot.severity,
        most_critical=min((a.criticality for a in found.systems), default=None),
        crown_jewels=[a.identifier for a in found.crown_jewels],
        unknown_systems=sum(u.kind in ("host", "ip", "resource") for u in found.unknown),
        indicators=indicators,
        tactic=(tactics[-1].stage, tactics[-1].name) if tactics else None,
        tactics_in_matrix=len(dataset.tactics),
        hosts=len(gathered.hosts),
        users=len(gathered.users),
        privileges={u.name: u.privilege for u in found.users},
        unknown_users=sum(1 for u in gathered.users if u.lower() not in known_users),
    )
    return {
        "techniques": rootcause.techniques_of(trace, dataset),
        "tactics": tactics,
        "attack_version": dataset.version,
        "root_cause": cause,
        "threat": rootcause.threat_profile(trace, dataset, indicators),
        "similar": similar.rank(shared, past, indicators),
        "risk": risk.score(inputs),
    }


def merged(run: Sequence[IncidentDetected | IncidentUpdated]) -> IncidentDetected | IncidentUpdated:
    """One incident's events of a consumed batch as one: the last event with every event's new alerts, in order.

    Snapshots are cumulative (the incident's title, type, severity and counts as they stand), so the
    last one's are the incident's; each alert is taken once.
    """
    last = run[-1]
    if len(run) == 1:
        return last
    alerts: dict[str, AlertSummary] = {}
    for event in run:
        for alert in event.data.new_alerts:
            alerts.setdefault(alert.key, alert)
    hosts = sorted({host for event in run for host in event.data.hosts})
    users = sorted({user for event in run for user in event.data.users})
    data = last.data.model_copy(update={"new_alerts": list(alerts.values()), "hosts": hosts, "users": users})
    return last.model_copy(update={"data": data})


def handler(noise: forensic.Noise, interval: timedelta = timedelta(0)) -> BatchHandler[Event]:
    """The analyzer's batch handler, with the configured noise list and publication interval.

    An incident's events in a consumed batch are analysed once, as one (``merged``): a flood that
    makes the analyzer fall behind gives it bigger batches, and each incident is analysed once per
    batch, however many updates it had. A split is taken in its place among them.
    """

    async def handle(ctx: HandlerContext, batch: Sequence[Inbound[Event]]) -> None:
        runs: dict[str, list[IncidentDetected | IncidentUpdated]] = {}

        async def flush(incident_id: str) -> None:
            if run := runs.pop(incident_id, None):
                await analyse_incident(ctx, merged(run), noise=noise, interval=interval)

        for inbound in batch:
            event = inbound.item
            if isinstance(event, IncidentDetected | IncidentUpdated):
                runs.setdefault(event.subject, []).append(event)
            elif isinstance(event, IncidentSplit):
                await flush(event.subject)  # what came before the split, first
                await reanalyse_split(ctx, event, noise=noise)
        for incident_id in list(runs):
            await flush(incident_id)

    return handle


handle = handler(forensic.Noise())  # drops nothing, publishes every change at once
