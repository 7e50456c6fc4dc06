"""Pure analysis of an incident's alerts: indicators of compromise and what is affected."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from services.analyzer import forensic
from services.analyzer.assets import PRIVILEGED, Impact, Inventory, Recommendation
from services.analyzer.intel import Assessment, Match
from shared import events
from shared.addresses import is_external
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
    indicators: list[Indicator]  # those the last analysis carried, the worst; every one is in forensic_repository
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


def lookups(gathered: Gathered, addresses: Sequence[forensic.Named], observables: Sequence[Observable]) -> Lookups:
    """Every host, account, address and cloud resource the incident names, for the inventory.

    ``addresses`` are every address its alerts name (not only those its analysis carries). A public
    address the inventory does not list is the attacker's (or a bystander's), not an unknown system of
    ours; one it lists is ours, and affected. A cloud resource id found in a tool's record may be the
    finding's own or another account's: it counts only when listed.
    """
    addresses = [a for a in addresses if a.kind in ADDRESS_KINDS]
    return Lookups(
        hosts=gathered.hosts,
        users=gathered.users,
        resources=gathered.resources,
        resources_if_known=[o.value for o in observables if o.kind == "cloud_resource"],
        ips=[i.value for i in addresses if i.internal],
        ips_if_known=[i.value for i in addresses if not i.internal],
    )


# ---- the hosts, accounts and observables an analysis carries, and how many there are ------------


def most_sighted_key(observable: Observable) -> tuple[int, str]:
    """The order of an analysis' observables of one kind: the most sighted first; the value makes it total."""
    return -(observable.count or 0), observable.value


def most_relevant(names: Sequence[str], ahead: Iterable[str], limit: int = events.MAX_ANALYSIS_AFFECTED) -> list[str]:
    """At most ``limit`` of ``names``, in their order: those ``ahead`` names (in any case) are kept first."""
    if len(names) <= limit:
        return list(names)
    rank: dict[str, int] = {}
    for name in ahead:
        rank.setdefault(name.strip().lower(), len(rank))
    unranked = len(rank)
    kept = sorted(range(len(names)), key=lambda n: (rank.get(names[n].strip().lower(), unranked), n))[:limit]
    return [names[n] for n in sorted(kept)]


@dataclass(frozen=True)
class Carried:
    """What an analysis carries of an incident's hosts, accounts and observables, and how many there are in all."""

    hosts: list[str]
    users: list[str]
    observables: list[Observable]
    host_count: int
    user_count: int
    observables_by_kind: dict[str, int]


def carried(gathered: Gathered, observables: Sequence[Observable], inventory: Inventory) -> Carried:
    """The most relevant of the incident's hosts, accounts and observables (``observables``: every one its
    alerts name), bounded: a spray over thousands of accounts must still fit one event.

    Hosts the inventory rates most critical are kept first; accounts it says are privileged, then those
    it lists, then the most sighted; of each kind of observable, the most sighted.
    """
    by_kind: dict[str, list[Observable]] = {}
    for observable in observables:
        by_kind.setdefault(observable.kind, []).append(observable)
    kept = [
        o
        for kind in sorted(by_kind)
        for o in sorted(by_kind[kind], key=most_sighted_key)[: events.MAX_ANALYSIS_OBSERVABLES]
    ]
    listed_hosts = sorted(
        (f for f in inventory.assets if f.kind == "host"), key=lambda f: (f.asset.criticality, f.looked_up)
    )
    listed_users = sorted(inventory.users, key=lambda u: (u.privilege not in PRIVILEGED, u.name))
    sighted_users = sorted(by_kind.get("user", []), key=most_sighted_key)
    return Carried(
        hosts=most_relevant(gathered.hosts, [f.looked_up for f in listed_hosts]),
        users=most_relevant(gathered.users, [*(u.name for u in listed_users), *(o.value for o in sighted_users)]),
        observables=kept,
        host_count=len(gathered.hosts),
        user_count=len(gathered.users),
        observables_by_kind={kind: len(of_kind) for kind, of_kind in sorted(by_kind.items())},
    )


# ---- the indicators an analysis carries, and how many there are --------------------------------

BAD_VERDICTS = ("malicious", "suspicious")
ADDRESS_KINDS = ("ipv4", "ipv6")
# The worst verdict first; none (no feed lists it) last.
VERDICT_ORDER: Mapping[str | None, int] = {"malicious": 0, "suspicious": 1, "benign-listed": 2, None: 3}


def worst_first_key(indicator: Indicator) -> tuple[int, int, int, str, str]:
    """The order of an analysis' indicators (and of the SQL that picks them, analyzer_indicators_worst).

    The worst verdict, then the most confident (risk weighs the most confident known-bad one), then
    the most sighted; kind and value make it total.
    """
    return (
        VERDICT_ORDER[indicator.verdict],
        -(indicator.confidence or 0),
        -(indicator.count or 0),
        indicator.kind,
        indicator.value,
    )


def worst_first(indicators: Iterable[Indicator], limit: int = events.MAX_ANALYSIS_INDICATORS) -> list[Indicator]:
    """The ``limit`` worst indicators, worst first."""
    return sorted(indicators, key=worst_first_key)[:limit]


@dataclass(frozen=True)
class IndicatorGroup:
    """How many of an incident's indicators share a kind, a verdict and whether they are internal."""

    kind: str
    verdict: str | None
    internal: bool
    count: int


@dataclass(frozen=True)
class IndicatorCounts:
    """How many indicators an incident has in all, by kind and by verdict, however few its analysis carries."""

    by_kind: Mapping[str, int]
    by_verdict: Mapping[str, int]  # malicious, suspicious, benign-listed; the rest no feed lists
    known_bad_outside: int  # known bad and not an address of ours (rootcause.threat_profile)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    @property
    def known_bad(self) -> int:
        return sum(self.by_verdict.get(v, 0) for v in BAD_VERDICTS)


def bad_and_internal(groups: Iterable[IndicatorGroup]) -> int:
    """How many known-bad addresses are marked internal: those may be ours (``indicator_counts`` asks)."""
    return sum(g.count for g in groups if g.verdict in BAD_VERDICTS and g.internal and g.kind in ADDRESS_KINDS)


def indicator_counts(groups: Iterable[IndicatorGroup], bad_internal: Iterable[str] = ()) -> IndicatorCounts:
    """The counts of an incident's indicators, from their groups.

    ``bad_internal`` are the known-bad addresses marked internal: the ones among them that are not
    external (``shared.addresses``; a reserved address is internal to forensics yet external there)
    are not known bad from outside.
    """
    groups = list(groups)
    by_kind: Counter[str] = Counter()
    by_verdict: Counter[str] = Counter()
    for g in groups:
        by_kind[g.kind] += g.count
        if g.verdict is not None:
            by_verdict[g.verdict] += g.count
    ours = sum(not is_external(value) for value in bad_internal)
    known_bad = sum(by_verdict[v] for v in BAD_VERDICTS)
    return IndicatorCounts(dict(sorted(by_kind.items())), dict(sorted(by_verdict.items())), known_bad - ours)


def counts_of(indicators: Iterable[Indicator]) -> IndicatorCounts:
    """The counts of every indicator of an incident, from all of them."""
    indicators = list(indicators)
    groups = Counter((i.kind, i.verdict, i.internal) for i in indicators)
    bad_internal = [i.value for i in indicators if i.verdict in BAD_VERDICTS and i.internal and i.kind in ADDRESS_KINDS]
    return indicator_counts((IndicatorGroup(*key, n) for key, n in groups.items()), bad_internal)


def summarise(
    alert_count: int,
    hosts: Sequence[str],
    users: Sequence[str],
    indicators: Sequence[Indicator],
    counts: IndicatorCounts | None = None,
) -> str:
    """One line an incident commander can read at a glance.

    ``counts``: of all the incident's indicators, when ``indicators`` are only the worst of them.
    """
    counts = counts if counts is not None else counts_of(indicators)
    by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.by_kind.items()))
    return (
        f"{alert_count} alert{'s' * (alert_count != 1)} on {len(hosts)} host{'s' * (len(hosts) != 1)} "
        f"and {len(users)} user{'s' * (len(users) != 1)}; {counts.total} indicators"
        + (f" ({by_kind})" if by_kind else "")
        + (f"; {counts.known_bad} known bad to threat intelligence" if counts.known_bad else "")
    )


def impact_summary(found: Impact) -> events.Impact:
    """The impact as the analysis event carries it: names, not the inventory's records, each list bounded
    (systems most critical first) and counted: a spray over 80,000 unknown accounts must still fit one event."""
    cap = events.MAX_ANALYSIS_AFFECTED
    unknown_systems = [u.value for u in found.unknown if u.kind in ("host", "ip", "resource")]
    unknown_users = [u.value for u in found.unknown if u.kind == "user"]
    return events.Impact(
        systems=[a.identifier for a in found.systems[:cap]],
        unknown_systems=unknown_systems[:cap],
        unknown_system_count=len(unknown_systems),
        users=[u.name for u in found.users[:cap]],
        user_count=len(found.users),
        unknown_users=unknown_users[:cap],
        unknown_user_count=len(unknown_users),
        privileged_users=[u.name for u in found.privileged_users[:cap]],
        business_services=list(found.business_services[:cap]),
        crown_jewels=[a.identifier for a in found.crown_jewels[:cap]],
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


# ---- threat intelligence's verdicts, kept per indicator ----------------------------------------


@dataclass(frozen=True)
class LookedUp:
    """What threat intelligence said of one of an incident's indicators, and until when that holds."""

    kind: str
    value: str
    assessment: Assessment
    expires_at: datetime | None  # when the first of what gave the verdict stops counting; None: until a feed changes


def verdict_expiry(matches: Iterable[Match], feed_expiries: Mapping[str, datetime]) -> datetime | None:
    """When a verdict needs looking up again: the first expiry of a matched entry, its feed, or a provider's answer."""
    times = [m.expires_at for m in matches if m.expires_at is not None]
    times += [feed_expiries[m.source] for m in matches if m.source in feed_expiries]
    return min(times, default=None)


def indicator_key(intel_kind: str, value: str) -> tuple[str, str]:
    """An indicator's (kind, value) as the analyzer names it, from threat intelligence's (``ip`` -> ``ipv4``)."""
    if intel_kind == "ip":
        return f"ipv{ipaddress.ip_address(value).version}", value
    return intel_kind, value


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
    view: dict[str, object] = {
        "type": analysis.type.value,
        "severity": analysis.severity.value,
        "recommendation": analysis.severity_recommendation.severity.value if analysis.severity_recommendation else None,
        "risk": analysis.risk.level if analysis.risk else None,
        "verdicts": sorted((i.kind, i.value, i.verdict) for i in analysis.indicators if i.verdict),
        "tactics": [t.id for t in analysis.tactics],
        "asset_tags": sorted(analysis.asset_tags),
    }
    if analysis.indicator_count is not None and analysis.indicator_count > len(analysis.indicators):
        # Verdicts of indicators the analysis does not carry change only its counts.
        view["verdict_counts"] = sorted(analysis.indicators_by_verdict.items())
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
