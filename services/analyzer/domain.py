"""Pure analysis of an incident's alerts: indicators of compromise and what is affected."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from services.analyzer import forensic
from services.analyzer.assets import Impact, Recommendation
from services.analyzer.intel import Assessment
from shared import events
from shared.events import AlertSummary, IncidentSnapshot, Indicator, Observable

MAX_TEXT = 20_000


def alert_text(alert: AlertSummary) -> str:
    return "\n".join([alert.title, alert.description, *alert.labels.values()])[:MAX_TEXT]


def extract_indicators(alerts: Sequence[AlertSummary], noise: forensic.Noise | None = None) -> list[Indicator]:
    """Return the indicators the alerts name, without repeats, each with where it was found."""
    tallies = forensic.tally([forensic.evidence_of(a, noise or forensic.Noise()) for a in alerts])
    return [i for t in tallies if isinstance(i := forensic.indicator_of(t), Indicator)]


def merge_indicators(known: Iterable[Indicator], new: Iterable[Indicator]) -> list[Indicator]:
    merged = {(i.kind, i.value): i for i in known}
    for indicator in new:
        merged.setdefault((indicator.kind, indicator.value), indicator)
    return sorted(merged.values(), key=lambda i: (i.kind, i.value))


@dataclass(frozen=True)
class Gathered:
    """What the analyzer knows of an incident: everything every event so far carried."""

    alert_count: int
    hosts: list[str]
    users: list[str]
    indicators: list[Indicator]
    resources: list[str] = field(default_factory=list)  # the alerts' resource fields, as the adapters wrote them


def gather(known: Gathered | None, snapshot: IncidentSnapshot) -> Gathered:
    """Add one incident event (one part of a batch's alerts) to what was gathered before."""
    # Its indicators are the forensic analysis's (services/analyzer/forensic.py), read once per alert.
    # Its alerts name hosts and users too: a snapshot may list only the first of thousands.
    hosts = {*snapshot.hosts, *(a.host for a in snapshot.new_alerts if a.host)}
    users = {*snapshot.users, *(a.user for a in snapshot.new_alerts if a.user)}
    resources = {a.resource for a in snapshot.new_alerts if a.resource}
    if known is None:
        return Gathered(snapshot.alert_count, sorted(hosts), sorted(users), [], sorted(resources))
    return Gathered(
        alert_count=max(snapshot.alert_count, known.alert_count),
        hosts=sorted(hosts.union(known.hosts)),
        users=sorted(users.union(known.users)),
        indicators=known.indicators,
        resources=sorted(resources.union(known.resources)),
    )


@dataclass(frozen=True)
class Lookups:
    """What to look up in the asset inventory for an incident, and what it means when the inventory lacks it."""

    hosts: list[str]
    users: list[str]
    resources: list[str]  # what the alerts are about: unknown when not listed
    resources_if_known: list[str]  # ids the alerts mention anywhere: affected only when listed
    ips: list[str]  # internal addresses: unknown when not listed
    ips_if_known: list[str]  # public ones: the organisation's own when listed, else the other side's


def lookups(gathered: Gathered, observables: Sequence[Observable]) -> Lookups:
    """Every host, account, address and cloud resource the incident names, for the inventory.

    A public address the inventory does not list is the attacker's (or a bystander's), not an unknown
    system of ours; one it lists is ours, and affected. A cloud resource id found in a tool's record
    may be the finding's own or another account's: it counts only when listed.
    """
    addresses = [i for i in gathered.indicators if i.kind in ("ipv4", "ipv6")]
    return Lookups(
        hosts=gathered.hosts,
        users=gathered.users,
        resources=gathered.resources,
        resources_if_known=[o.value for o in observables if o.kind == "cloud_resource"],
        ips=[i.value for i in addresses if i.internal],
        ips_if_known=[i.value for i in addresses if not i.internal],
    )


def summarise(alert_count: int, hosts: Sequence[str], users: Sequence[str], indicators: Sequence[Indicator]) -> str:
    """One line an incident commander can read at a glance."""
    kinds = Counter(i.kind for i in indicators)
    by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    known_bad = sum(i.verdict in ("malicious", "suspicious") for i in indicators)
    return (
        f"{alert_count} alert{'s' * (alert_count != 1)} on {len(hosts)} host{'s' * (len(hosts) != 1)} "
        f"and {len(users)} user{'s' * (len(users) != 1)}; {len(indicators)} indicators"
        + (f" ({by_kind})" if by_kind else "")
        + (f"; {known_bad} known bad to threat intelligence" if known_bad else "")
    )


def impact_summary(found: Impact) -> events.Impact:
    """The impact as the analysis event carries it: names, not the inventory's records."""
    return events.Impact(
        systems=[a.identifier for a in found.systems],
        unknown_systems=[u.value for u in found.unknown if u.kind in ("host", "ip", "resource")],
        users=[u.name for u in found.users],
        unknown_users=[u.value for u in found.unknown if u.kind == "user"],
        privileged_users=[u.name for u in found.privileged_users],
        business_services=list(found.business_services),
        crown_jewels=[a.identifier for a in found.crown_jewels],
        most_critical=min((a.criticality for a in found.systems), default=None),
        data_at_risk=found.data_at_risk,
        blast_radius=found.blast_radius,
        by_criticality=found.by_criticality,
    )


def asset_tags(found: Impact) -> list[str]:
    """The affected assets' tags, and `crown-jewel` for the most critical ones, for playbooks to match on."""
    tags = {t for a in found.systems for t in a.tags}
    if found.crown_jewels:
        tags.add("crown-jewel")
    return sorted(tags)


def recommendation_of(found: Recommendation | None) -> events.SeverityRecommendation | None:
    if found is None:
        return None
    return events.SeverityRecommendation(severity=found.severity, reasons=list(found.reasons))


def with_verdict(indicator: Indicator, assessment: Assessment) -> Indicator:
    """The indicator with what the feeds that list it say; as it was when none does."""
    if assessment.verdict is None:
        return indicator
    return indicator.model_copy(
        update={
            "verdict": assessment.verdict,
            "confidence": assessment.confidence,
            "feeds": list(assessment.feeds),
            "tags": list(assessment.tags),
        }
    )


# ---- when an analysis is published ------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """The analysis last published for an incident, by digest, and when."""

    digest: str | None = None  # the whole analysis
    urgent: str | None = None  # what is published at once when it changes (``urgent_digest``)
    at: datetime | None = None
    pending: bool = False  # a later version waits for the incident's publication timer


Publication = Literal["same", "now", "later"]


def analysis_digest(analysis: events.Analysis) -> str:
    return hashlib.sha256(analysis.model_dump_json().encode()).hexdigest()


def urgent_digest(analysis: events.Analysis) -> str:
    """A digest of what the commander and the responder must hear of at once.

    The type, the severity and the analyzer's recommendation, the risk level, every verdict threat
    intelligence gives, the tactics reached and the tags of the assets touched. Counts, times and
    indicators no feed lists change with every alert of a flood; they can wait for the interval.
    """
    view = {
        "type": analysis.type.value,
        "severity": analysis.severity.value,
        "recommendation": analysis.severity_recommendation.severity.value if analysis.severity_recommendation else None,
        "risk": analysis.risk.level if analysis.risk else None,
        "verdicts": sorted((i.kind, i.value, i.verdict) for i in analysis.indicators if i.verdict),
        "tactics": [t.id for t in analysis.tactics],
        "asset_tags": sorted(analysis.asset_tags),
    }
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()


def publication(published: Published, *, digest: str, urgent: str, now: datetime, interval: timedelta) -> Publication:
    """Publish an analysis ``now``, ``later`` (when the interval since the last one ends), or not (``same``).

    The first analysis, one whose urgent part changed and one after a quiet interval go at once;
    one that changed only in what can wait goes at most once per interval per incident, the latest
    version then. The same analysis again is not published twice.
    """
    if digest == published.digest:
        return "same"
    if published.at is None or urgent != published.urgent or now - published.at >= interval:
        return "now"
    return "later"
