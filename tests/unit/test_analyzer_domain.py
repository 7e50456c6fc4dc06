"""The analyzer's pure gathering: every part of an incident's alerts adds to what is known."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from services.analyzer import attack, domain, forensic, risk, rootcause
from services.analyzer.assets import Asset, Found, Inventory, Unknown, User, impact
from services.analyzer.forensic import AlertEvidence, Named, Sighting
from services.analyzer.handlers import merged
from services.analyzer.intel import Match
from services.detector.domain import summarise
from shared import cloudevents
from shared.events import (
    MAX_ANALYSIS_AFFECTED,
    MAX_ANALYSIS_INDICATORS,
    MAX_ANALYSIS_OBSERVABLES,
    AlertSummary,
    Analysis,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentSnapshot,
    IncidentType,
    IncidentUpdated,
    Indicator,
    Observable,
    Severity,
)
from tests.factories import T0, alert, snapshot


def _summary(n: int, **overrides: object) -> AlertSummary:
    base: dict[str, object] = {
        "key": f"suricata:{n}",
        "source": "suricata",
        "title": "ET SCAN Potential SSH Scan",
        "description": f"Inbound SSH scan from 203.0.113.{n}",
        "severity": "medium",
        "time": T0,
        "host": "web-01",
        "src_ip": f"198.51.100.{n}",
    }
    base.update(overrides)
    return AlertSummary.model_validate(base)


def _part(part: int, parts: int, alerts: list[AlertSummary], *, alert_count: int = 4) -> IncidentSnapshot:
    return snapshot(new_alerts=alerts, part=part, parts=parts, alert_count=alert_count)


def test_every_part_adds_its_hosts_and_users() -> None:
    first = domain.gather(None, _part(1, 2, [_summary(1), _summary(2)]))
    both = domain.gather(first, _part(2, 2, [_summary(3, host="web-02", user="mallory"), _summary(4)]))
    assert both.alert_count == 4
    # Hosts and users come from the alerts too: a snapshot may list only the first of many.
    assert both.hosts == ["web-01", "web-02"]
    assert both.users == ["deploy", "mallory"]


def test_indicators_of_every_alert_without_repeats() -> None:
    found = domain.extract_indicators([_summary(1), _summary(2), _summary(1, key="suricata:again")])
    addresses = {i.value: i for i in found if i.kind == "ipv4"}
    assert set(addresses) == {"198.51.100.1", "198.51.100.2", "203.0.113.1", "203.0.113.2"}
    assert addresses["198.51.100.1"].count == 2  # two alerts named it


def test_a_part_carrying_no_new_indicator_keeps_what_was_known() -> None:
    known = domain.gather(None, _part(1, 1, [_summary(1)]))
    again = domain.gather(known, _part(1, 1, [_summary(1)], alert_count=1))
    assert again.indicators == known.indicators
    assert again.alert_count == 4  # never goes back


def test_every_part_adds_the_resources_its_alerts_are_about() -> None:
    first = domain.gather(None, _part(1, 2, [_summary(1, resource="Instance i-0abc"), _summary(2)]))
    assert first.resources == ["Instance i-0abc"]
    both = domain.gather(first, _part(2, 2, [_summary(3, resource="S3Bucket exports"), _summary(4)]))
    assert both.resources == ["Instance i-0abc", "S3Bucket exports"]


def test_the_inventory_is_asked_of_every_address_and_resource_the_incident_names() -> None:
    # Not only the indicators the last analysis carried: every address the alerts name.
    gathered = domain.Gathered(
        alert_count=2, hosts=["web-01"], users=["deploy"], indicators=[], resources=["Instance i-0abc"]
    )
    addresses = [
        Named("ipv4", "10.1.2.3", internal=True),
        Named("ipv4", "198.51.100.7", internal=False),
        Named("ipv6", "2001:db8::7", internal=False),
    ]
    observables = [
        Observable(kind="cloud_resource", value="arn:aws:s3:::exports"),
        Observable(kind="process", value="sh"),
    ]
    wanted = domain.lookups(gathered, addresses, observables)
    assert (wanted.hosts, wanted.users) == (["web-01"], ["deploy"])
    # Inside addresses and what the alerts are about: unknown when not listed.
    assert (wanted.ips, wanted.resources) == (["10.1.2.3"], ["Instance i-0abc"])
    # Public addresses and ids named in passing: ours when listed, else not an unknown system of ours.
    assert wanted.ips_if_known == ["198.51.100.7", "2001:db8::7"]
    assert wanted.resources_if_known == ["arn:aws:s3:::exports"]


def test_the_analysis_carries_the_blast_radius_by_criticality_and_unknown_accounts() -> None:
    bucket = Asset(kind="cloud_resource", identifier="arn:aws:s3:::exports", criticality=1)
    edge = Asset(kind="cidr", identifier="198.51.100.0/24", criticality=2)
    db = Asset(kind="host", identifier="db-1", criticality=1, data_classification="restricted")
    found = impact(
        Inventory(
            assets=(
                Found("resource", "S3Bucket arn:aws:s3:::exports", bucket),
                Found("ip", "198.51.100.7", edge, "cidr"),
                Found("ip", "198.51.100.9", edge, "cidr"),
                Found("host", "DB-1", db),
            ),
            users=(User(name="alice"),),
            unknown=(Unknown("host", "laptop-9"), Unknown("user", "mallory"), Unknown("resource", "Instance i-9")),
        )
    )
    summary = domain.impact_summary(found)
    assert summary.systems == ["arn:aws:s3:::exports", "db-1", "198.51.100.0/24"]
    assert summary.blast_radius == 3
    assert summary.by_criticality == {1: 2, 2: 1, 3: 0, 4: 0}
    assert summary.most_critical == 1 and summary.data_at_risk == "restricted"
    assert summary.users == ["alice"] and summary.unknown_users == ["mallory"]
    assert summary.unknown_systems == ["laptop-9", "Instance i-9"]
    # On the wire the criticalities are JSON keys, and read back as numbers.
    assert type(summary).model_validate_json(summary.model_dump_json()) == summary


# ---- the indicators an analysis carries, and their counts ----------------------------------------


def _indicator(
    value: str,
    verdict: str | None = None,
    confidence: int | None = None,
    *,
    kind: str = "ipv4",
    count: int = 1,
    internal: bool = False,
) -> Indicator:
    return Indicator.model_validate(
        {
            "kind": kind,
            "value": value,
            "verdict": verdict,
            "confidence": confidence,
            "count": count,
            "internal": internal,
        }
    )


def test_the_worst_indicators_come_first_the_most_confident_then_the_most_sighted() -> None:
    strong_and_often = _indicator("198.51.100.1", "malicious", 90, count=7)
    strong = _indicator("198.51.100.2", "malicious", 90)
    weak = _indicator("198.51.100.3", "malicious", 40, count=50)
    suspicious = _indicator("cdn-update-check.net", "suspicious", 100, kind="domain", count=9)
    benign = _indicator("198.51.100.4", "benign-listed", 80, count=90)
    often = _indicator("198.51.100.5", count=99)
    by_name = [_indicator("a.example", kind="domain"), _indicator("198.51.100.6"), _indicator("198.51.100.7")]
    ordered = [strong_and_often, strong, weak, suspicious, benign, often, *by_name]
    assert domain.worst_first(reversed(ordered)) == ordered
    assert domain.worst_first(ordered, limit=3) == ordered[:3]


def _flood() -> list[Indicator]:
    """An incident of 1,000 unlisted addresses, 250 malicious ones and a few more known bad."""
    return [
        *(_indicator(f"198.51.{n // 250}.{n % 250}", count=n % 5 + 1) for n in range(1000)),
        *(_indicator(f"45.77.{n // 250}.{n % 250}", "malicious", 50 + n % 40) for n in range(250)),
        # Known bad, and the least confident: not carried. One of ours, one reserved (outside all the same),
        # and a name inside the organisation (outside too: only addresses are ours).
        _indicator("10.0.0.5", "malicious", 10, internal=True),
        _indicator("198.18.0.1", "suspicious", 10, internal=True),
        _indicator("intranet.corp", "suspicious", 10, kind="domain", internal=True),
    ]


def test_the_counts_cover_every_indicator_though_the_analysis_carries_the_worst() -> None:
    every = _flood()
    counts = domain.counts_of(every)
    carried = domain.worst_first(every)
    assert len(carried) == MAX_ANALYSIS_INDICATORS and {i.verdict for i in carried} == {"malicious"}
    assert counts.total == 1253 and counts.by_kind == {"domain": 1, "ipv4": 1252}
    assert counts.by_verdict == {"malicious": 251, "suspicious": 2} and counts.known_bad == 253
    assert counts.known_bad_outside == 252  # not 10.0.0.5
    # What is said of the incident is what all its indicators make of it.
    summary = domain.summarise(1500, ["web-01"], [], carried, counts)
    assert summary == domain.summarise(1500, ["web-01"], [], every)
    assert summary.endswith("; 1253 indicators (1 domain, 1252 ipv4); 253 known bad to threat intelligence")
    cut = risk.RiskInputs(severity=Severity.SEV2, indicators=carried, verdict_counts=counts.by_verdict)
    assert risk.score(cut) == risk.score(risk.RiskInputs(severity=Severity.SEV2, indicators=every))
    dataset = attack.load_dataset()
    threat = rootcause.threat_profile(rootcause.Trace(), dataset, carried, known_bad_outside=counts.known_bad_outside)
    assert threat == rootcause.threat_profile(rootcause.Trace(), dataset, every)
    assert "252 indicator(s) known bad to threat intelligence" in threat.origin_evidence


def test_counts_from_the_stored_groups_are_those_of_the_indicators() -> None:
    every = _flood()
    groups = Counter((i.kind, i.verdict, i.internal) for i in every)
    stored = [domain.IndicatorGroup(*key, n) for key, n in groups.items()]
    assert domain.bad_and_internal(stored) == 2  # 10.0.0.5 and 198.18.0.1: asked for by value
    assert domain.indicator_counts(stored, ["10.0.0.5", "198.18.0.1"]) == domain.counts_of(every)


def test_a_verdict_needs_looking_up_again_when_the_first_of_what_gave_it_expires() -> None:
    def match(source: str, expires_at: datetime | None = None) -> Match:
        return Match(source, "ip", "45.77.12.9", "malicious", 80, (), None, None, expires_at)

    feeds = {"blocklist": T0 + timedelta(hours=48)}
    assert domain.verdict_expiry([], feeds) is None
    assert domain.verdict_expiry([match("mine")], feeds) is None  # until a feed changes
    assert domain.verdict_expiry([match("blocklist")], feeds) == T0 + timedelta(hours=48)
    answer = match("abuseipdb", T0 + timedelta(hours=24))  # a provider's answer, for its TTL
    assert domain.verdict_expiry([match("blocklist"), answer], feeds) == T0 + timedelta(hours=24)


def test_threat_intelligences_addresses_are_the_analyzers_by_version() -> None:
    assert domain.indicator_key("ip", "45.77.12.9") == ("ipv4", "45.77.12.9")
    assert domain.indicator_key("ip", "2001:db8::7") == ("ipv6", "2001:db8::7")
    assert domain.indicator_key("domain", "cdn-update-check.net") == ("domain", "cdn-update-check.net")


# ---- what an analysis carries of a large incident ------------------------------------------------


def _spray(accounts: list[str], hosts: int) -> list[AlertEvidence]:
    """An SSH password spray: one alert per account tried, each on one of ``hosts`` hosts, as Wazuh names it."""
    alerts = []
    for n, account in enumerate(accounts):
        address = f"45.9.148.{n % 250}"
        sightings = (
            Sighting("user", account, "user"),
            Sighting("user", account, "raw.data.srcuser"),
            Sighting("ipv4", address, "src_ip"),
            Sighting("ipv4", address, "raw.full_log"),
            Sighting("process", "/usr/sbin/sshd", "raw.data.process"),
            Sighting("command_line", f"sshd: {account} [priv]", "raw.data.command"),
        )
        host = f"web-{n % hosts:03d}"
        time = T0 + timedelta(seconds=n)
        alerts.append(
            AlertEvidence(
                f"wazuh:{n}", time, "wazuh", "wazuh", "sshd: authentication failed", "medium", host, account, sightings
            )
        )
    return alerts


def test_a_spray_over_thousands_of_accounts_carries_the_most_relevant_and_counts_them_all() -> None:
    # 5,200 accounts tried once and root 20 times, over 300 hosts. The privileged account and the crown
    # jewel sort last by name.
    accounts = [*(f"user{n:05d}" for n in range(5199)), "zz-admin", *(["root"] * 20)]
    evidence = _spray(accounts, hosts=300)
    found = [forensic.indicator_of(t) for t in forensic.tally(evidence)]
    every_indicator = [i for i in found if isinstance(i, Indicator)]
    indicators, counts = domain.worst_first(every_indicator), domain.counts_of(every_indicator)
    observables = [o for o in found if isinstance(o, Observable)]
    gathered = domain.Gathered(
        alert_count=len(evidence),
        hosts=sorted({e.host for e in evidence if e.host}),
        users=sorted({e.user for e in evidence if e.user}),
        indicators=indicators,
    )
    jewel = Asset(kind="host", identifier="web-299", criticality=1)
    inventory = Inventory(
        assets=(Found("host", "web-299", jewel),), users=(User(name="zz-admin", privilege="domain_admin"),)
    )

    carried = domain.carried(gathered, observables, inventory)
    analysed = IncidentAnalyzed(
        source="/vigil/analyzer",
        subject="inc-spray",
        data=Analysis(
            type=IncidentType.SECURITY_BREACH,
            severity=Severity.SEV2,
            title="SSH password spray",
            indicators=indicators,
            affected_hosts=carried.hosts,
            affected_users=carried.users,
            affected_host_count=carried.host_count,
            affected_user_count=carried.user_count,
            alert_count=gathered.alert_count,
            summary=domain.summarise(gathered.alert_count, gathered.hosts, gathered.users, indicators, counts),
            observables=carried.observables,
            observables_by_kind=carried.observables_by_kind,
            indicator_count=counts.total,
            indicators_by_kind=counts.by_kind,
        ),
    )
    # Well inside what the broker takes (1 MiB), as the outbox sends it; every one carried was not.
    assert len(cloudevents.encode(analysed).value) < 256 * 1024
    analysis = analysed.data
    every_one = {"affected_hosts": gathered.hosts, "affected_users": gathered.users, "observables": observables}
    assert len(analysis.model_copy(update=every_one).model_dump_json()) > 1024 * 1024

    # Nothing hidden: the counts are of every host, account and observable.
    assert (analysis.affected_host_count, analysis.affected_user_count) == (300, 5201)
    assert analysis.observables_by_kind == {"command_line": 5201, "process": 1, "user": 5201}
    assert analysis.summary == "5220 alerts on 300 hosts and 5201 users; 250 indicators (250 ipv4)"
    # The most relevant are carried: what the inventory rates highest, then the most sighted.
    assert len(analysis.affected_hosts) == len(analysis.affected_users) == MAX_ANALYSIS_AFFECTED
    assert analysis.affected_hosts[-1] == "web-299" and analysis.affected_hosts == sorted(analysis.affected_hosts)
    assert {"zz-admin", "root"} <= set(analysis.affected_users)
    by_kind = Counter(o.kind for o in analysis.observables)
    assert by_kind == {"command_line": MAX_ANALYSIS_OBSERVABLES, "process": 1, "user": MAX_ANALYSIS_OBSERVABLES}
    users = [(o.value, o.count) for o in analysis.observables if o.kind == "user"]
    assert users[:3] == [("root", 20), ("user00000", 1), ("user00001", 1)]  # the most sighted, then by name
    # The same incident carries the same, whatever order its observables come in.
    assert domain.carried(gathered, observables[::-1], inventory) == carried


def test_a_small_incident_carries_every_host_and_account_as_before() -> None:
    gathered = domain.Gathered(alert_count=2, hosts=["web-02", "web-01"], users=["root"], indicators=[])
    carried = domain.carried(gathered, [Observable(kind="user", value="root", count=2)], Inventory())
    assert (carried.hosts, carried.users) == (["web-02", "web-01"], ["root"])
    assert (carried.host_count, carried.user_count, carried.observables_by_kind) == (2, 1, {"user": 1})


# ---- when an analysis is published ------------------------------------------------------------


def _analysis(**overrides: object) -> Analysis:
    fields: dict[str, object] = {
        "type": IncidentType.SECURITY_BREACH,
        "severity": Severity.SEV3,
        "title": "brute force on web-01",
        "indicators": [Indicator(kind="ipv4", value="198.51.100.7", count=1)],
        "affected_hosts": ["web-01"],
        "affected_users": [],
        "alert_count": 1,
        "summary": "1 alert",
    }
    return Analysis.model_validate({**fields, **overrides})


def _decide(before: Analysis, after: Analysis, *, seconds_since: float, interval: float = 10) -> str:
    published = domain.Published(
        digest=domain.analysis_digest(before), urgent=domain.urgent_digest(before), at=T0, pending=False
    )
    return domain.publication(
        published,
        digest=domain.analysis_digest(after),
        urgent=domain.urgent_digest(after),
        now=T0 + timedelta(seconds=seconds_since),
        interval=timedelta(seconds=interval),
    )


def test_the_first_analysis_is_published_at_once() -> None:
    first = _analysis()
    decided = domain.publication(
        domain.Published(),
        digest=domain.analysis_digest(first),
        urgent=domain.urgent_digest(first),
        now=T0,
        interval=timedelta(seconds=10),
    )
    assert decided == "now"


def test_the_same_analysis_is_not_published_again() -> None:
    assert _decide(_analysis(), _analysis(), seconds_since=3600) == "same"


def test_counts_and_unlisted_indicators_wait_for_the_interval() -> None:
    more = _analysis(
        alert_count=40,
        summary="40 alerts",
        affected_hosts=["web-01", "web-02"],
        indicators=[
            Indicator(kind="ipv4", value="198.51.100.7", count=30),
            Indicator(kind="ipv4", value="203.0.113.5"),
        ],
    )
    assert _decide(_analysis(), more, seconds_since=2) == "later"
    assert _decide(_analysis(), more, seconds_since=10) == "now"  # the interval has passed
    assert _decide(_analysis(), more, seconds_since=2, interval=0) == "now"  # no interval: every change


def test_a_verdict_among_the_indicators_an_analysis_does_not_carry_is_heard_of_at_once() -> None:
    flagged = Indicator(kind="ipv4", value="198.51.100.7", verdict="malicious", confidence=90, count=1)
    whole = _analysis(indicators=[flagged], indicator_count=1, indicators_by_verdict={"malicious": 1})
    # Carrying every indicator, its counts say nothing the verdicts do not: the digest is as it was.
    assert domain.urgent_digest(whole) == domain.urgent_digest(_analysis(indicators=[flagged]))
    cut = whole.model_copy(update={"indicator_count": 900})
    more = cut.model_copy(update={"indicators_by_verdict": {"malicious": 2}, "indicator_count": 901})
    assert _decide(cut, more, seconds_since=1) == "now"
    assert _decide(cut, cut.model_copy(update={"indicator_count": 901}), seconds_since=1) == "later"


def test_what_the_commander_must_hear_goes_at_once() -> None:
    flagged = Indicator(kind="ipv4", value="198.51.100.7", verdict="malicious", confidence=90, feeds=["abuse.ch"])
    urgent = [
        _analysis(severity=Severity.SEV1),
        _analysis(type=IncidentType.DATA_LEAK),
        _analysis(indicators=[flagged]),
        _analysis(asset_tags=["crown-jewel"]),
        _analysis(risk={"score": 80, "level": "critical", "factors": []}),
        _analysis(
            tactics=[{"id": "TA0006", "name": "Credential Access", "stage": 7, "first_seen": T0, "stated": True}]
        ),
        _analysis(severity_recommendation={"severity": "SEV2", "reasons": ["crown jewel"]}),
    ]
    for after in urgent:
        assert _decide(_analysis(), after, seconds_since=1) == "now", after


def test_an_incidents_events_in_a_batch_are_analysed_as_one() -> None:
    a1, a2, a3 = (summarise(alert(id=f"a{n}", minutes=n)) for n in (1, 2, 3))
    first = IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot(new_alerts=[a1]))
    second = IncidentUpdated(
        source="/vigil/detector",
        subject="inc-1",
        data=snapshot(new_alerts=[a2, a1], alert_count=2, hosts=["web-02"], severity=Severity.SEV2),
    )
    third = IncidentUpdated(source="/vigil/detector", subject="inc-1", data=snapshot(new_alerts=[a3], alert_count=3))
    one = merged([first, second, third])
    assert one.id == third.id and isinstance(one, IncidentUpdated)  # caused by the last event
    assert [a.key for a in one.data.new_alerts] == [a1.key, a2.key, a3.key]  # in order, each once
    assert one.data.hosts == ["web-01", "web-02"] and one.data.alert_count == 3
    assert one.data.severity == third.data.severity  # the incident as it stands, the last snapshot's
    assert merged([first]) is first


def test_the_impact_of_a_spray_over_thousands_of_unknown_accounts_is_bounded_and_counted() -> None:
    unknown = tuple(Unknown(kind="user", value=f"user{n:05d}") for n in range(5000)) + tuple(
        Unknown(kind="host", value=f"host{n:04d}") for n in range(300)
    )
    found = impact(Inventory(unknown=unknown))
    summary = domain.impact_summary(found)
    assert len(summary.unknown_users) == len(summary.unknown_systems) == MAX_ANALYSIS_AFFECTED
    assert (summary.unknown_user_count, summary.unknown_system_count, summary.user_count) == (5000, 300, 0)
    assert summary.unknown_users[0] == "user00000"
    assert len(summary.model_dump_json()) < 32 * 1024
