"""Pure analysis of an incident's alerts: indicators of compromise and what is affected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ioc_finder import find_iocs

from services.analyzer.assets import Impact, Recommendation
from services.analyzer.intel import Assessment
from shared import events
from shared.events import AlertSummary, IncidentSnapshot, Indicator

# ioc-finder result keys -> Vigil indicator kinds
_IOC_KINDS = {
    "ipv4s": "ipv4",
    "ipv6s": "ipv6",
    "domains": "domain",
    "urls": "url",
    "md5s": "md5",
    "sha1s": "sha1",
    "sha256s": "sha256",
    "email_addresses": "email",
}
MAX_TEXT = 20_000


def alert_text(alert: AlertSummary) -> str:
    return "\n".join([alert.title, alert.description, *alert.labels.values()])[:MAX_TEXT]


def extract_indicators(alerts: Sequence[AlertSummary]) -> list[Indicator]:
    """Return the indicators found in the alerts' text and address fields, without repeats."""
    found: dict[tuple[str, str], Indicator] = {}
    for alert in alerts:
        for address in (alert.src_ip, alert.dst_ip):
            if address:
                kind = "ipv4" if address.version == 4 else "ipv6"
                found.setdefault((kind, str(address)), Indicator(kind=kind, value=str(address)))
        iocs = find_iocs(
            alert_text(alert),
            parse_domain_from_url=False,
            parse_from_url_path=False,
            included_ioc_types=list(_IOC_KINDS),
        )
        for key, kind in _IOC_KINDS.items():
            for value in iocs.get(key, ()):
                found.setdefault((kind, value), Indicator(kind=kind, value=value))  # type: ignore[arg-type]
    return sorted(found.values(), key=lambda i: (i.kind, i.value))


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


def gather(known: Gathered | None, snapshot: IncidentSnapshot) -> Gathered:
    """Add one incident event (one part of a batch's alerts) to what was gathered before."""
    indicators = extract_indicators(snapshot.new_alerts)
    # Its alerts name hosts and users too: a snapshot may list only the first of thousands.
    hosts = {*snapshot.hosts, *(a.host for a in snapshot.new_alerts if a.host)}
    users = {*snapshot.users, *(a.user for a in snapshot.new_alerts if a.user)}
    if known is None:
        return Gathered(snapshot.alert_count, sorted(hosts), sorted(users), indicators)
    return Gathered(
        alert_count=max(snapshot.alert_count, known.alert_count),
        hosts=sorted(hosts.union(known.hosts)),
        users=sorted(users.union(known.users)),
        indicators=merge_indicators(known.indicators, indicators),
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
        privileged_users=[u.name for u in found.privileged_users],
        business_services=list(found.business_services),
        crown_jewels=[a.identifier for a in found.crown_jewels],
        most_critical=min((a.criticality for a in found.systems), default=None),
        data_at_risk=found.data_at_risk,
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
