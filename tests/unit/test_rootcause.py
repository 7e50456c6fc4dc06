"""Root cause, threat profile, risk and similar incidents: pure functions of the alerts and what is known."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from services.analyzer import attack, risk, rootcause, similar
from shared.events import AlertSummary, Indicator, Severity

DATASET = attack.load_dataset()
RULES = attack.load_rules()
T0 = datetime(2026, 11, 24, 9, tzinfo=UTC)


def alert(key: str, minutes: float, **fields: Any) -> AlertSummary:
    base: dict[str, Any] = {
        "key": key,
        "source": fields.pop("source", "wazuh"),
        "format": fields.pop("format", "wazuh"),
        "title": fields.pop("title", key),
        "severity": "high",
        "time": T0 + timedelta(minutes=minutes),
    }
    return AlertSummary.model_validate(base | fields)


def trace_of(*alerts: AlertSummary, known: rootcause.Trace | None = None) -> rootcause.Trace:
    return rootcause.fold(known, [(a, attack.map_alert(a, DATASET, RULES)) for a in alerts])


# A small intrusion: brute force from outside on a bastion, a shell, credential dumping, then a
# move to the database server.
INTRUSION = [
    alert(
        "w:1",
        0,
        title="sshd: brute force trying to get access",
        host="bastion-01",
        user="root",
        src_ip="203.0.113.7",
        dst_ip="10.0.1.5",
        techniques=["T1110", "TA0006"],
    ),
    alert("f:2", 12, format="falco", source="falco", title="Terminal shell", host="bastion-01", techniques=["T1059"]),
    alert(
        "e:3", 20, format="elastic", source="elastic", title="LSASS access", host="bastion-01", techniques=["T1003.001"]
    ),
    alert(
        "s:4",
        31,
        format="suricata",
        source="suricata",
        title="SMB lateral",
        src_ip="10.0.1.5",
        dst_ip="10.0.2.9",
        host="db-01",
        techniques=["T1021.002", "TA0008"],
    ),
]
BAD = Indicator(kind="ipv4", value="203.0.113.7", verdict="malicious", confidence=90, feeds=["abuse"], tags=["APT28"])


def test_the_kill_chain_stage_is_the_furthest_tactic_with_the_path_as_evidence() -> None:
    stage = rootcause.stage(trace_of(*INTRUSION), DATASET)
    assert stage is not None
    assert (stage.subject, stage.statement) == ("TA0008", "Reached Lateral Movement (stage 10 of 14)")
    assert stage.confidence == 85  # Suricata named the tactic itself
    assert stage.evidence[0] == "tactics reached: Execution → Credential Access → Lateral Movement"


def test_a_stage_inferred_from_a_technique_of_several_tactics_is_less_sure() -> None:
    sole = rootcause.stage(trace_of(alert("a", 0, techniques=["T1003.001"])), DATASET)
    shared = rootcause.stage(trace_of(alert("a", 0, techniques=["T1078"])), DATASET)
    assert sole is not None and shared is not None
    assert sole.confidence == 70 and shared.confidence == 45
    assert shared.statement.startswith("Reached Defense Evasion")
    assert "serves other tactics too" in shared.evidence[-1]


def test_patient_zero_is_the_earliest_host_and_the_way_in_targeting_it_makes_it_surer() -> None:
    zero = rootcause.patient_zero(trace_of(*INTRUSION))
    assert zero is not None
    assert (zero.statement, zero.subject) == ("Patient zero is host bastion-01", "host:bastion-01")
    assert zero.confidence == 90  # 31 min before db-01, and the brute force targets it
    assert "the next host, db-01, was seen 31 min later" in zero.evidence
    assert "3 alert(s) name it" in zero.evidence


def test_patient_zero_is_unsure_when_two_entities_appear_at_once() -> None:
    zero = rootcause.patient_zero(trace_of(alert("a", 0, host="web-1"), alert("b", 0, host="web-2")))
    assert zero is not None and zero.confidence == 40 and zero.subject == "host:web-1"


def test_the_entry_vector_prefers_initial_access_then_brute_force_then_an_outside_address() -> None:
    phishing = alert("p", -5, title="Spearphishing link clicked", user="alice", techniques=["T1566.002"])
    entry = rootcause.entry_vector(trace_of(phishing, *INTRUSION), DATASET, [BAD])
    assert entry is not None and entry.subject == "T1566.002"
    assert entry.statement == "Entry by T1566.002 Phishing: Spearphishing Link"
    assert entry.confidence == 85 and "it is also the incident's first alert" in entry.evidence
    brute = rootcause.entry_vector(trace_of(*INTRUSION), DATASET, [BAD])
    assert brute is not None and brute.statement == "Entry by brute force of credentials from 203.0.113.7"
    assert brute.confidence == 70 and "203.0.113.7 is malicious to threat intelligence" in brute.evidence
    outside = rootcause.entry_vector(trace_of(alert("x", 0, src_ip="198.51.100.3", host="web-1")), DATASET, [])
    assert outside is not None and outside.statement == "Entry from outside address 198.51.100.3"
    unseen = rootcause.entry_vector(trace_of(alert("y", 0, host="web-1", techniques=["T1059"])), DATASET, [])
    assert unseen is not None and unseen.confidence == 20 and unseen.statement.startswith("Way in not seen")
    assert rootcause.entry_vector(trace_of(alert("z", 0, host="web-1")), DATASET, []) is None


def test_the_first_alert_is_sure_when_it_leads_and_unsure_on_a_tie() -> None:
    first = rootcause.first_alert(trace_of(*INTRUSION))
    assert first is not None and first.subject == "w:1" and first.confidence == 90
    assert "the next alert came 12 min later: Terminal shell" in first.evidence
    tie = rootcause.first_alert(trace_of(alert("a", 0), alert("b", 0)))
    assert tie is not None and tie.confidence == 50


def test_folding_in_any_order_or_batching_gives_the_same_trace() -> None:
    whole = trace_of(*INTRUSION)
    shuffled = list(INTRUSION)
    random.Random(7).shuffle(shuffled)
    in_parts = trace_of(*shuffled[2:], known=trace_of(*shuffled[:2]))
    assert rootcause.root_cause(in_parts, DATASET, [BAD]) == rootcause.root_cause(whole, DATASET, [BAD])
    assert rootcause.techniques_of(in_parts, DATASET) == rootcause.techniques_of(whole, DATASET)
    # Folding returns a new trace: what was known is left as it was.
    known = trace_of(INTRUSION[0])
    rootcause.fold(known, [(INTRUSION[1], attack.map_alert(INTRUSION[1], DATASET, RULES))])
    assert known.alerts == 1


def test_a_heartbeat_is_no_evidence_but_a_test_finding_is_analysed_like_the_attack_it_imitates() -> None:
    trace = trace_of(alert("h", -60, kind="heartbeat", host="mon-1"), *INTRUSION)
    assert trace.alerts == len(INTRUSION) and "host:mon-1" not in trace.entities
    sample = trace_of(alert("t", 0, kind="test", host="i-9", techniques=["T1110"]))
    assert set(sample.techniques) == {"T1110"} and "host:i-9" in sample.entities


def test_the_trace_of_a_large_incident_stays_bounded() -> None:
    many = [alert(f"a:{i}", i / 60, host=f"h-{i}", src_ip=f"198.51.{i // 250}.{i % 250}") for i in range(3000)]
    trace = trace_of(*many)
    assert len(trace.earliest) == rootcause.MAX_EARLIEST and len(trace.sources) == rootcause.MAX_SOURCES
    assert trace.earliest[0].key == "a:0"


def test_techniques_are_listed_earliest_first_with_names_counts_and_where_they_came_from() -> None:
    techniques = rootcause.techniques_of(trace_of(*INTRUSION), DATASET)
    assert [t.id for t in techniques] == ["T1110", "T1059", "T1003.001", "T1021.002"]
    dumping = techniques[2]
    assert dumping.name == "OS Credential Dumping: LSASS Memory" and dumping.mapped_by == ["elastic threat.*"]
    tactics = rootcause.tactics_of(trace_of(*INTRUSION), DATASET)
    assert [(t.name, t.stated) for t in tactics] == [
        ("Execution", False),
        ("Credential Access", True),
        ("Lateral Movement", True),
    ]


# ---- threat profile ------------------------------------------------------------------------------


def test_the_threat_profile_says_where_it_came_from_and_names_actors_from_feed_tags() -> None:
    cobalt = Indicator(kind="domain", value="c2.example.net", verdict="malicious", tags=["Cobalt Strike", "botnet_cc"])
    profile = rootcause.threat_profile(trace_of(*INTRUSION), DATASET, [BAD, cobalt])
    assert profile.origin == "mixed"  # from outside, then between internal machines
    assert profile.external_sources == ["203.0.113.7"]
    assert profile.actors == ["APT28 (G0007)"] and profile.malware == ["Cobalt Strike (S0154, malware)"]
    assert profile.tags == ["botnet_cc"]
    assert profile.known_bad[0] == "ipv4 203.0.113.7: malicious (90) by abuse"
    inside = rootcause.threat_profile(trace_of(alert("a", 0, host="hr-7", user="bob")), DATASET, [])
    assert inside.origin == "internal" and "no alert names an outside address" in inside.origin_evidence
    assert rootcause.threat_profile(rootcause.Trace(), DATASET, []).origin == "unknown"


# ---- risk ----------------------------------------------------------------------------------------


def test_the_risk_is_the_sum_of_its_factors_each_with_its_reason() -> None:
    scored = risk.score(
        risk.RiskInputs(
            severity=Severity.SEV2,
            most_critical=1,
            crown_jewels=["db-payments-1"],
            indicators=[BAD],
            tactic=(10, "Lateral Movement"),
            hosts=2,
            users=1,
            privileges={"svc-admin": "domain_admin", "bob": "standard"},
        )
    )
    points = {f.factor: f.points for f in scored.factors}
    assert points == {
        "severity": 18,
        "asset_criticality": 20,
        "intel": 14,
        "tactic": 11,
        "breadth": 6,
        "privilege": 15,
    }
    assert scored.score == 84 and scored.level == "critical"
    reasons = {f.factor: f.reason for f in scored.factors}
    assert reasons["privilege"] == "svc-admin is domain admin"
    assert "crown jewel db-payments-1" in reasons["asset_criticality"]
    assert sum(f.max_points for f in scored.factors) == 100


def test_a_quiet_incident_scores_low_and_unknown_systems_and_accounts_still_weigh() -> None:
    quiet = risk.score(risk.RiskInputs(severity=Severity.SEV4))
    assert (quiet.score, quiet.level) == (4, "low")
    unknown = risk.score(risk.RiskInputs(severity=Severity.SEV4, unknown_systems=2, hosts=2, users=1, unknown_users=1))
    points = {f.factor: f.points for f in unknown.factors}
    assert points["asset_criticality"] == risk.UNKNOWN_SYSTEMS_POINTS and points["privilege"] == 4
    assert unknown.level == "low" and unknown.score == 4 + 6 + 6 + 4


def _points(inputs: risk.RiskInputs, factor: str) -> tuple[int, str]:
    return next((f.points, f.reason) for f in risk.score(inputs).factors if f.factor == factor)


def test_knowing_one_more_system_or_account_never_lowers_the_risk() -> None:
    # Ten unknown hosts weigh as a middling asset; learning that one is a test box leaves nine unknown.
    unknown_only, _ = _points(risk.RiskInputs(Severity.SEV2, unknown_systems=10, hosts=10), "asset_criticality")
    one_known, why = _points(
        risk.RiskInputs(Severity.SEV2, most_critical=4, unknown_systems=9, hosts=10), "asset_criticality"
    )
    assert one_known == unknown_only == risk.UNKNOWN_SYSTEMS_POINTS
    assert why == "9 affected system(s) unknown to the asset inventory (the most critical known is criticality 4)"
    # A known asset worth more than an unknown one still decides.
    assert _points(risk.RiskInputs(Severity.SEV2, most_critical=2, unknown_systems=9), "asset_criticality")[0] == 14
    # Fifty unknown accounts, then one of them known as a standard account.
    many, _ = _points(risk.RiskInputs(Severity.SEV2, users=50, unknown_users=50), "privilege")
    one, why = _points(
        risk.RiskInputs(Severity.SEV2, users=50, unknown_users=49, privileges={"alice": "standard"}), "privilege"
    )
    assert one == many == risk.UNKNOWN_USERS_POINTS
    assert why == "49 affected account(s) unknown to the inventory (the most privileged known, alice, is standard)"
    admin = risk.RiskInputs(Severity.SEV2, users=50, unknown_users=49, privileges={"root": "admin"})
    assert _points(admin, "privilege") == (11, "root is admin")


def test_the_worst_incident_scores_at_most_100() -> None:
    worst = risk.score(
        risk.RiskInputs(
            severity=Severity.SEV1,
            most_critical=1,
            indicators=[BAD.model_copy(update={"confidence": 100})],
            tactic=(14, "Impact"),
            hosts=50,
            users=50,
            privileges={"admin": "domain_admin"},
        )
    )
    assert worst.score == 100 and worst.level == "critical"


# ---- similar incidents ---------------------------------------------------------------------------


def test_shared_features_weigh_known_bad_indicators_most_and_common_accounts_least() -> None:
    Feature = similar.Feature
    weighed = similar.weights(
        [
            Feature("ipv4", "203.0.113.7"),  # BAD: malicious to threat intelligence
            Feature("ipv4", "198.51.100.9"),
            Feature("ipv4", "10.0.1.5"),  # one of ours: a system, not an indicator
            Feature("host", "bastion-01"),
            Feature("user", "alice"),
            Feature("user", "root"),
            Feature("technique", "T1110"),
        ],
        [BAD],
    )
    assert list(weighed.values()) == [
        ("bad", 8),
        ("indicator", 4),
        ("system", 4),
        ("system", 4),
        ("account", 3),
        ("common", 1),
        ("technique", 1),
    ]


def test_a_past_incident_alike_is_described_by_what_it_shares_weightiest_first() -> None:
    Feature = similar.Feature
    shared = (Feature("technique", "T1110"), Feature("ipv4", "203.0.113.7"), Feature("technique", "T1110"))
    weighed = similar.weights(shared, [BAD])
    found = similar.describe(similar.PastIncident("inc-a", "Brute force on bastion", T0, shared), weighed)
    assert (found.incident_id, found.title, found.first_seen, found.score) == (
        "inc-a",
        "Brute force on bastion",
        T0,
        9,  # a value shared twice counts once
    )
    assert found.reason == "shares 1 known-bad indicator (203.0.113.7); 1 technique (T1110)"
    assert found.shared == ["ipv4:203.0.113.7", "technique:T1110"]
    hosts = tuple(Feature("host", f"web-{n}") for n in range(5))
    many = similar.describe(similar.PastIncident("inc-b", "Web", None, hosts), similar.weights(hosts, []))
    assert many.reason == "shares 5 affected systems (web-0, web-1, web-2 and 2 more)"


def test_the_features_looked_up_put_known_bad_indicators_first_and_are_bounded() -> None:
    plain = [Indicator(kind="domain", value=f"d{i}.example.org") for i in range(600)]
    found = similar.features([*plain, BAD], ["Bastion-01"], ["root"], ["T1110"])
    assert found[0] == similar.Feature("ipv4", "203.0.113.7")
    assert len(found) == similar.MAX_FEATURES
    placeholder = Indicator(kind="sha1", value="0" * 40)  # what some EDRs write for "no hash"
    assert similar.features([placeholder], ["web-1"], [], []) == [similar.Feature("host", "web-1")]


def test_a_feature_too_long_for_its_index_is_nothing_to_share() -> None:
    url = "http://evil-cdn.net/?t=" + "é" * 1000  # 2,023 bytes
    long = Indicator(kind="url", value=url)
    found = similar.features([long, BAD], ["web-1"], ["bob"], ["T1110"])
    assert [f.text for f in found] == ["ipv4:203.0.113.7", "host:web-1", "user:bob", "technique:T1110"]


def test_the_attack_path_goes_hop_by_hop_the_earliest_first_whatever_the_order_of_folding() -> None:
    login = alert("w:5", 40, title="login", src_ip="10.0.2.9", host="FILES-01", techniques=["T1078"])
    again = alert("s:6", 45, format="suricata", source="suricata", src_ip="10.0.1.5", dst_ip="10.0.2.9",
                  techniques=["T1570"])  # fmt: skip
    # An endpoint agent's detection names its host's own address as the destination: no hop.
    agent = alert("c:7", 50, format="crowdstrike", source="crowdstrike", host="db-01", dst_ip="10.0.2.9")
    whole = trace_of(*INTRUSION, login, again, agent)
    path = rootcause.attack_path(whole)
    assert [(s.source, s.target, s.alerts, s.lateral, s.techniques) for s in path] == [
        ("ip:203.0.113.7", "ip:10.0.1.5", 1, False, ["T1110"]),
        ("ip:10.0.1.5", "ip:10.0.2.9", 2, True, ["T1021.002", "T1570"]),
        ("ip:10.0.2.9", "host:files-01", 1, True, ["T1078"]),
    ]
    assert (path[1].first_seen, path[1].last_seen) == (T0 + timedelta(minutes=31), T0 + timedelta(minutes=45))
    shuffled = [*INTRUSION, login, again, agent]
    random.Random(3).shuffle(shuffled)
    assert rootcause.attack_path(trace_of(*shuffled[3:], known=trace_of(*shuffled[:3]))) == path
    assert rootcause.attack_path(whole, limit=2) == path[:2]
    # An alert on one host alone, or from an address to itself, is no hop.
    assert trace_of(INTRUSION[1], alert("x", 1, src_ip="10.0.0.1", dst_ip="10.0.0.1")).hops == {}


def test_a_sweep_past_the_bound_keeps_the_earliest_hops_whatever_the_order() -> None:
    sweep = [alert(f"s:{i}", i / 60, src_ip="203.0.113.7", dst_ip=f"10.9.{i // 250}.{i % 250}") for i in range(2300)]
    in_order = trace_of(*sweep)
    assert in_order.hops is not None and len(in_order.hops) == rootcause.MAX_HOPS
    shuffled = list(sweep)
    random.Random(11).shuffle(shuffled)
    batched = trace_of(*shuffled[1500:], known=trace_of(*shuffled[:1500]))
    assert batched.hops == in_order.hops
    assert rootcause.attack_path(batched)[0].target == "ip:10.9.0.0"


def test_a_trace_begun_before_hops_were_kept_makes_no_path_rather_than_half_of_one() -> None:
    stored = trace_of(*INTRUSION).model_dump(mode="json")
    del stored["hops"]
    old = rootcause.Trace.model_validate(stored)
    assert old.hops is None and rootcause.attack_path(trace_of(INTRUSION[3], known=old)) == []
    assert rootcause.Trace().hops == {} and rootcause.Trace.model_validate({}).hops == {}
