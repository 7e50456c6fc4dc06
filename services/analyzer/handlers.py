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
from services.analyzer.metrics import ANALYSES, INTEL_LOOKUPS
from shared import events, timers
from shared.consumer import BatchHandler, HandlerContext, Inbound
from shared.events import (
    AlertSummary,
    Analysis,
    Event,
    EventBase,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentMerged,
    IncidentSnapshot,
    IncidentSplit,
    IncidentUpdated,
    Indicator,
    Observable,
)

SOURCE = "/vigil/analyzer"
PUBLICATION_OUTCOME = {"now": "published", "later": "deferred", "same": "unchanged"}
# Indicators whose kept verdict may be out of date (a feed changed since, or what gave it expired) that
# one analysis looks up again, the longest unchecked first: a refreshed feed reaches every indicator of
# a 10,000-indicator incident over its next batches, none of which does more than this much extra.
INTEL_RECHECKS = 500


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
    kept = await repository.get(ctx.conn, incident_id=event.subject)
    await _gather_and_publish(ctx, event, event.data, kept=kept, noise=noise, interval=interval)


async def reanalyse_split(ctx: HandlerContext, event: IncidentSplit, *, noise: forensic.Noise | None = None) -> None:
    """Alerts were detached: the incident is analysed again from the alerts it keeps, which the event restates."""
    snapshot = event.data.incident
    kept = await repository.get(ctx.conn, incident_id=event.subject)
    if snapshot.part == 1:  # the first part starts again from nothing: what the detached alerts brought goes
        await forensic_repository.forget(ctx.conn, incident_id=event.subject)
        await history.forget_trace(ctx.conn, incident_id=event.subject)
        await history.forget_features(ctx.conn, incident_id=event.subject)
        kept = replace(kept, gathered=None)
    # An operator detached alerts: the new analysis is published at once.
    await _gather_and_publish(ctx, event, snapshot, kept=kept, noise=noise, interval=timedelta(0))


async def recheck_intel(ctx: HandlerContext, timer: timers.Timer, *, noise: forensic.Noise | None = None) -> None:
    """A threat-intelligence feed came to list an indicator the incident holds (``retrohunt``): the incident
    is analysed again as its latest event left it, its indicators looked up again, and a new version published
    at once if it changed."""
    kept = await repository.get(ctx.conn, incident_id=timer.subject)
    snapshot = await repository.last_snapshot(ctx.conn, incident_id=timer.subject)
    if kept.gathered is None or snapshot is None:
        return  # merged into another since, or analysed before its snapshot was kept
    named = [(kind, value) for kind, value in timer.payload.get("named", [])]
    event = IncidentUpdated(source=SOURCE, subject=timer.subject, data=snapshot)
    await _gather_and_publish(ctx, event, snapshot, kept=kept, noise=noise, interval=timedelta(0), look_up_again=named)


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
    kept: repository.Kept,
    noise: forensic.Noise | None,
    interval: timedelta,
    look_up_again: Sequence[tuple[str, str]] = (),
) -> None:
    """``kept``: the incident's row as the analysis began (``gathered`` None starts from nothing).
    ``look_up_again``: indicators the incident holds already, to be looked up with what the event names."""
    gathered = domain.gather(kept.gathered, snapshot)
    # Forensics: what each new alert names and where, stored once per alert (an alert carried again is not re-read).
    evidence = [forensic.evidence_of(a, noise or forensic.Noise()) for a in snapshot.new_alerts]
    recorded = await forensic_repository.record(ctx.conn, incident_id=event.subject, alerts=evidence)
    # Only alerts the incident had not seen go into its root-cause trace: an event carried again adds nothing.
    first_time = {e.key for e in recorded}
    trace = await _trace(ctx, event.subject, snapshot, [a for a in snapshot.new_alerts if a.key in first_time])
    if snapshot.part < snapshot.parts:
        # The snapshot kept is the last part's: a recheck between the parts would analyse half a batch.
        await repository.save(ctx.conn, incident_id=event.subject, gathered=gathered, snapshot=None)
        return  # one analysis per batch, once its last part is in: the responder plans once
    asked = (
        event
        if isinstance(event, IncidentDetected | IncidentUpdated)
        else IncidentUpdated(source=SOURCE, subject=event.subject, data=snapshot)
    )
    await _look_up(ctx, asked, sorted({*forensic.indicator_keys(recorded), *look_up_again}))
    # The worst indicators, with their kept verdicts, and how many there are in all: never every row.
    worst = await forensic_repository.list_worst(
        ctx.conn, incident_id=event.subject, limit=events.MAX_ANALYSIS_INDICATORS
    )
    indicators = [
        domain.with_verdict(i, assessment)
        for tally, assessment in worst
        if isinstance(i := forensic.indicator_of(tally), Indicator)
    ]
    counts = await _counts(ctx, event.subject)
    observables = [
        o
        for t in await forensic_repository.list_observables(ctx.conn, incident_id=event.subject)
        if isinstance(o := forensic.indicator_of(t), Observable)
    ]
    gathered = replace(gathered, indicators=indicators)
    await repository.save(ctx.conn, incident_id=event.subject, gathered=gathered, snapshot=snapshot)
    # What the incident touches, by the asset inventory: hosts, accounts, addresses and cloud resources.
    addresses = await forensic_repository.list_addresses(ctx.conn, incident_id=event.subject)
    wanted = domain.lookups(gathered, addresses, observables)
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
    # Bounded, with the counts of all: every host, account and observable of a large incident would not fit.
    carried = domain.carried(gathered, observables, inventory)
    threat = await _threat_analysis(ctx, event.subject, snapshot, trace, indicators, counts, gathered, found)
    analysed = IncidentAnalyzed(
        source=SOURCE,
        **event.caused_by(),
        data=Analysis(
            type=snapshot.type,
            severity=snapshot.severity,
            title=snapshot.title,
            indicators=indicators,
            affected_hosts=carried.hosts,
            affected_users=carried.users,
            affected_host_count=carried.host_count,
            affected_user_count=carried.user_count,
            alert_count=gathered.alert_count,
            summary=domain.summarise(gathered.alert_count, gathered.hosts, gathered.users, indicators, counts),
            impact=domain.impact_summary(found),
            asset_tags=domain.asset_tags(found),
            severity_recommendation=domain.recommendation_of(recommendation),
            observables=carried.observables,
            observables_by_kind=carried.observables_by_kind,
            indicator_count=counts.total,
            indicators_by_kind=counts.by_kind,
            indicators_by_verdict=counts.by_verdict,
            **threat,
        ),
    )
    await _publish(ctx, analysed, kept, interval=interval)


async def _look_up(
    ctx: HandlerContext, event: IncidentDetected | IncidentUpdated, named: list[tuple[str, str]]
) -> None:
    """Look indicators up in threat intelligence and keep each one's verdict with it.

    Not every indicator of the incident: those this batch ``named``, those online providers answered
    for since, and at most ``INTEL_RECHECKS`` whose verdict may be out of date (a feed changed since it
    was looked up, or what gave it expired). The others keep the verdict they have.
    """
    incident_id = event.subject
    # Read before the batch's lookups: what they find is at least this new.
    feeds = await ctx.once("intel.feeds", lambda: intel.feed_state(ctx.conn))
    answered = [
        domain.indicator_key(kind, value)
        for kind, value in await forensic_repository.take_answered(ctx.conn, incident_id=incident_id)
    ]
    # The batch's new indicators, never looked up yet, come first of those due: they do not count in the bound.
    naming = set(named)
    due = await forensic_repository.list_due(
        ctx.conn, incident_id=incident_id, changed=feeds.changed, limit=INTEL_RECHECKS + len(naming)
    )
    due = [key for key in due if key not in naming][:INTEL_RECHECKS]
    reasons = {key: "recheck" for key in due} | {key: "answered" for key in answered} | {key: "named" for key in named}
    for reason in ("named", "answered", "recheck"):
        INTEL_LOOKUPS.labels(reason).inc(sum(r == reason for r in reasons.values()))
    # One indexed query for all of them; then what online providers answered (cached), lookups of
    # the rest enqueued (their answers analyse the incident again). Called with nothing to look up
    # too: the providers keep the incident's latest event for that.
    matches = await intel.lookup(ctx.conn, list(reasons))
    enabled = await ctx.once("intel.providers", lambda: providers.enabled_providers(ctx.conn))
    # What forensics marked internal is never sent to a provider.
    internal: set[tuple[str, str]] = set()
    if enabled:
        internal = await forensic_repository.list_internal(ctx.conn, incident_id=incident_id, keys=list(matches))
    matches = await providers.consult(ctx.conn, event, matches, enabled=enabled, internal=internal)
    verdicts = [
        domain.LookedUp(kind, value, intel.verdict_of(found), domain.verdict_expiry(found, feeds.expiries))
        for (kind, value), found in matches.items()
    ]
    await forensic_repository.save_verdicts(ctx.conn, incident_id=incident_id, verdicts=verdicts, checked=feeds.changed)


async def _counts(ctx: HandlerContext, incident_id: str) -> domain.IndicatorCounts:
    """How many indicators the incident has in all, by kind and by verdict."""
    groups = await forensic_repository.count_indicators(ctx.conn, incident_id=incident_id)
    bad_internal = (
        await forensic_repository.list_bad_internal(ctx.conn, incident_id=incident_id)
        if domain.bad_and_internal(groups)
        else []
    )
    return domain.indicator_counts(groups, bad_internal)


async def _publish(
    ctx: HandlerContext, analysed: IncidentAnalyzed, kept: repository.Kept, *, interval: timedelta
) -> None:
    """Publish the analysis now, or keep it for the incident's timer, or not at all if it was published already.

    What was published is as ``kept`` read it: the row is locked, and nothing between changes what it says.
    """
    incident_id = analysed.subject
    published, now = kept.published, kept.now
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
    counts: domain.IndicatorCounts,
    gathered: domain.Gathered,
    found: assets.Impact,
) -> dict[str, Any]:
    """ATT&CK, root cause, threat profile, similar past incidents and the risk, as fields of the analysis.

    ``indicators`` are the incident's worst (known bad first), ``counts`` count every one.
    """
    dataset = attack.load_dataset()
    cause = rootcause.root_cause(trace, dataset, indicators)
    tactics = rootcause.tactics_of(trace, dataset)
    features = similar.features(indicators, gathered.hosts, gathered.users, trace.techniques)
    weighed = similar.weights(features, indicators)
    alike = await history.most_alike(ctx.conn, incident_id=incident_id, weighed=weighed)
    await history.add_features(ctx.conn, incident_id=incident_id, features=features, seen_at=snapshot.first_seen)
    known_users = {u.name for u in found.users}
    inputs = risk.RiskInputs(
        severity=snapshot.severity,
        most_critical=min((a.criticality for a in found.systems), default=None),
        crown_jewels=[a.identifier for a in found.crown_jewels],
        unknown_systems=sum(u.kind in ("host", "ip", "resource") for u in found.unknown),
        indicators=indicators,
        verdict_counts=counts.by_verdict,
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
        "threat": rootcause.threat_profile(trace, dataset, indicators, known_bad_outside=counts.known_bad_outside),
        "attack_path": rootcause.attack_path(trace),
        "attack_path_hops": len(trace.hops) if trace.hops is not None else None,
        "similar": [similar.describe(incident, weighed) for incident in alike],
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
            elif isinstance(event, IncidentMerged):
                await flush(event.subject)
                # Its alerts are the survivor's now: it is no past incident for the survivor, nor any
                # other, to be found alike; nor is it analysed again when a feed lists what it named.
                await history.forget_features(ctx.conn, incident_id=event.subject)
                await repository.forget_snapshot(ctx.conn, incident_id=event.subject)
        for incident_id in list(runs):
            await flush(incident_id)

    return handle


handle = handler(forensic.Noise())  # drops nothing, publishes every change at once
