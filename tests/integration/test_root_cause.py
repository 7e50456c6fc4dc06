"""Root cause, threat and risk of incidents made from the public sample corpus, through the real services.

The corpus's records go through the real detector (its consume loop on the real broker), its
incidents through the outbox to the real analyzer's consume loop; what the analyzer published is
read back from its outbox. The corpus lives next to the project and Vigil must not need it: the
test is skipped, saying so, when it is absent. Then the coordinator takes an analysis: its page
carries the analysis, and so does every page after it.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.analyzer import assets, attack, history, intel, similar
from services.analyzer.handlers import analyse_incident
from services.analyzer.handlers import handle as analyzer_handle
from services.analyzer.rootcause import Trace
from services.analyzer.similar import Feature
from services.coordinator.handlers import ACK_DEADLINE, SERVICE, Coordinator
from services.coordinator.notifications import parse_notifications
from services.coordinator.service import load_oncall
from services.detector.adapters import parse_record
from services.detector.domain import summarise
from services.detector.handlers import Detector, decode
from shared import cloudevents
from shared.consumer import HandlerContext, decode_cloudevent, write_context
from shared.db import connect
from shared.events import Analysis, IncidentAnalyzed, IncidentDetected, IncidentEscalated, Indicator
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import ALERTS_RAW, INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import committed, consume_loop, eventually, produce
from tests.unit.test_intel import indicator as stix_indicator
from tests.unit.test_intel import stix_bundle

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(150)]
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"sample corpus {CORPUS} is absent (Vigil does not need it)"
)
DATASET = attack.load_dataset()


def corpus_lines() -> list[bytes]:
    return [
        line for path in sorted(CORPUS.glob("*/*.jsonl")) for line in path.read_bytes().splitlines() if line.strip()
    ]


async def outbox_events(pool: asyncpg.Pool, service: str) -> list[Any]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = $1 ORDER BY id", service)
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


async def relay(settings: VigilSettings, pool: asyncpg.Pool, service: str) -> int:
    """Publish what the service left in its outbox, as its relay would."""
    producer = make_producer(settings, client_id=f"{service}-relay-test")
    await producer.start()
    try:
        outbox = OutboxRelay(
            service=service, pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        return (await outbox.publish_pending()).sent
    finally:
        await producer.stop()


async def committed_total(settings: VigilSettings, group: str, topic: str) -> int:
    return sum([await committed(settings, group, topic, partition) or 0 for partition in range(12)])


async def analyse_corpus(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> dict[str, Analysis]:
    """Every corpus record through the detector, its incidents through the analyzer: the last analysis of each."""
    raw = names(ALERTS_RAW)
    lines = corpus_lines()
    await produce(settings, raw, [(None, line, []) for line in lines])
    detector = Detector(correlation_window=timedelta(minutes=30))
    async with consume_loop(settings, pool, service="detector", topics=[raw], decoder=decode, handler=detector.handle):
        await eventually(
            lambda: _is(committed_total(settings, group_id(settings, "detector"), raw), len(lines)), timeout=60
        )
    incident_events = await relay(settings, pool, "detector")
    assert incident_events > 0
    incidents = names(INCIDENTS)
    async with consume_loop(
        settings, pool, service="analyzer", topics=[incidents], decoder=decode_cloudevent, handler=analyzer_handle
    ):
        await eventually(
            lambda: _is(committed_total(settings, group_id(settings, "analyzer"), incidents), incident_events),
            timeout=60,
        )
    analyses: dict[str, Analysis] = {}
    for event in await outbox_events(pool, "analyzer"):
        if isinstance(event, IncidentAnalyzed):
            analyses[event.subject] = event.data
    return analyses


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


def one(analyses: dict[str, Analysis], **wanted: Any) -> tuple[str, Analysis]:
    """The incident whose analysis names the given host (or user) among the affected."""
    found = [
        (incident_id, a)
        for incident_id, a in analyses.items()
        if ("host" not in wanted or wanted["host"] in a.affected_hosts)
        and ("user" not in wanted or wanted["user"] in a.affected_users)
    ]
    assert len(found) == 1, f"{len(found)} incidents match {wanted}: {[a.title for _, a in found]}"
    return found[0]


@needs_corpus
async def test_corpus_incidents_get_attack_mapping_root_cause_threat_risk_and_alike_incidents(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with pool.acquire() as conn:
        # A feed that lists the address GuardDuty's samples attack from, tagged with a group ATT&CK knows.
        feed = intel.parse_list(
            "198.51.100.0\n",
            kind="ip",
            defaults=intel.FeedDefaults(verdict="malicious", confidence=80, tags=("APT28",)),
        )
        await intel.load_feed(conn, source="test-feed", entries=feed)
    analyses = await analyse_corpus(settings, pool, names)
    assert analyses

    for incident_id, analysis in analyses.items():
        assert analysis.risk is not None and analysis.root_cause is not None and analysis.threat is not None
        assert analysis.risk.score == min(100, sum(f.points for f in analysis.risk.factors)), incident_id
        assert [f.factor for f in analysis.risk.factors] == [
            "severity",
            "asset_criticality",
            "intel",
            "tactic",
            "breadth",
            "privilege",
        ]
        assert analysis.attack_version == DATASET.version
        for technique in analysis.techniques:
            assert technique.mapped_by and technique.alerts >= 1
            if known := DATASET.technique(technique.id):
                assert technique.name.endswith(known.name)

    # Wazuh's rule.mitre: brute force, Credential Access, the way the tool said it.
    _, wazuh = one(analyses, host="localhost.localdomain")
    [brute] = [t for t in wazuh.techniques if t.id == "T1110"]
    assert (brute.name, brute.mapped_by, brute.tactics) == ("Brute Force", ["wazuh rule.mitre"], ["TA0006"])
    assert wazuh.root_cause is not None and wazuh.root_cause.stage is not None
    assert wazuh.root_cause.stage.subject == "TA0006" and wazuh.root_cause.stage.confidence == 85

    # GuardDuty names a finding type, no technique: Vigil's rule maps it; the attacker is outside and known bad.
    _, ssh = one(analyses, host="i-99999999")
    assert [(t.id, t.mapped_by) for t in ssh.techniques] == [("T1110.001", ["rule guardduty-ssh-brute-force"])]
    assert ssh.root_cause is not None
    assert ssh.root_cause.entry_vector is not None
    assert ssh.root_cause.entry_vector.statement == "Entry by brute force of credentials from 198.51.100.0"
    assert "198.51.100.0 is malicious to threat intelligence" in ssh.root_cause.entry_vector.evidence
    assert ssh.root_cause.patient_zero is not None and ssh.root_cause.patient_zero.subject == "host:i-99999999"
    assert ssh.threat is not None and ssh.threat.origin == "external" and ssh.threat.actors == ["APT28 (G0007)"]
    # Its path: from the attacker's address to the instance it tried.
    assert [(h.source, h.target, h.lateral) for h in ssh.attack_path][:1] == [
        ("ip:198.51.100.0", "host:i-99999999", False)
    ]
    assert ssh.attack_path_hops == len(ssh.attack_path)
    assert ssh.risk is not None
    intel_factor = next(f for f in ssh.risk.factors if f.factor == "intel")
    assert intel_factor.points == 14 and "malicious" in intel_factor.reason

    # Past incidents alike, with the reason: Defender's two detections of the same techniques, two
    # Suricata incidents of one machine; whichever was analysed second finds the first.
    reasons = {s.reason: (incident_id, s.incident_id) for incident_id, a in analyses.items() for s in a.similar}
    regsvr = reasons["shares 3 techniques (T1218, T1218.010, T1218.011)"]
    assert {analyses[i].title for i in regsvr} == {"Regsvr32 Rundll32 Image Loads Abnormal Extension"}
    machine = reasons["shares 1 affected system (192.168.1.146)"]
    assert all("192.168.1.146" in str(analyses[i].indicators) for i in machine)
    # An account every machine has is no likeness.
    assert not [s for a in analyses.values() for s in a.similar if "(root)" in s.reason]

    # Falco's tags name the tactic; Vigil's rule for the shell names the technique.
    _, falco = one(analyses, host="falco-xczjd")
    assert {t.id for t in falco.techniques} == {"T1059"}
    assert falco.root_cause is not None and falco.root_cause.stage is not None
    assert falco.root_cause.stage.statement == "Reached Execution (stage 4 of 14)"

    # Defender's techniques and category: Defense Evasion.
    _, defender = one(analyses, host="testdevice.testdomain.com")
    assert {"T1218", "T1218.010", "T1218.011"} <= {t.id for t in defender.techniques}
    assert defender.root_cause is not None and defender.root_cause.stage is not None
    assert defender.root_cause.stage.subject == "TA0005"

    # Every analysed incident's trace and features are stored, for the next analysis and for alike lookups.
    assert await pool.fetchval("SELECT count(*) FROM analyzer_traces") == len(analyses)
    assert await pool.fetchval(
        "SELECT count(*) FROM analyzer_incident_features WHERE kind = 'technique' AND value = 'T1110.001'"
    )


NOTIFICATIONS = """
channels:
  webhook: {url: "https://paging.example.com/vigil", secret_env: NOTIFY_SECRET}
people:
  alice@example.com: {}
  bob@example.com: {}
  carol@example.com: {}
routes:
  escalation: {default: [webhook]}
  default: {default: [webhook]}
"""


@needs_corpus
async def test_the_commanders_pages_carry_the_analysis(pool: asyncpg.Pool, names: TopicNames) -> None:
    oncall = load_oncall()
    notices = parse_notifications(
        textwrap.dedent(NOTIFICATIONS), source="test", environ={"NOTIFY_SECRET": "a-secret-of-some-length-here"}
    )
    coordinator = Coordinator(oncall, notices=notices)
    detected = IncidentDetected(source="/vigil/detector", subject="inc-ssh", data=snapshot(hosts=["i-99999999"]))
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=names)
        await coordinator.on_detected(ctx, detected)
        await write_context(conn, ctx)
    [first_page] = [e for e in ctx.emitted if isinstance(e, IncidentEscalated)]
    assert first_page.data.analysis is None  # nothing analysed yet

    # The real analyzer analyses the incident, made of the corpus's GuardDuty SSH brute force.
    [ssh_line] = [line for line in corpus_lines() if b"SSHBruteForce" in line]
    alerts = [summarise(a) for a in parse_record(ssh_line).alerts]
    incident = IncidentDetected(
        source="/vigil/detector",
        subject="inc-ssh",
        data=snapshot(new_alerts=alerts, hosts=["i-99999999"], users=[], first_seen=alerts[0].time),
    )
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="analyzer", names=names)
        await analyse_incident(ctx, incident)
    [analysed] = [e for e in ctx.emitted if isinstance(e, IncidentAnalyzed)]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=names)
        await coordinator.on_analyzed(ctx, analysed)
        await write_context(conn, ctx)

    # The update in the commander's conversation says the risk and the root cause.
    updates = await pool.fetch("SELECT payload FROM effects WHERE key LIKE 'inc-ssh:update:analysis-%'")
    assert len(updates) == 1
    sent = str(updates[0]["payload"])
    assert "Entry by brute force of credentials from 198.51.100.0" in sent and "Risk " in sent

    # The next page down the rotation carries the analysis too.
    await pool.execute("UPDATE timers SET due_at = now() - interval '1 minute' WHERE kind = $1", ACK_DEADLINE)
    poller = TimerPoller(
        service=SERVICE, pool=pool, names=names, handlers=coordinator.timer_handlers, locks=coordinator.timer_locks
    )
    assert await poller.fire_due() == 1
    events = await outbox_events(pool, SERVICE)
    second_page = [e for e in events if isinstance(e, IncidentEscalated)][-1]
    assert second_page.data.commander != first_page.data.commander
    assert second_page.data.analysis is not None and second_page.data.analysis.risk == analysed.data.risk
    assert second_page.data.analysis.root_cause == analysed.data.root_cause
    pages = await pool.fetch("SELECT key, payload FROM effects WHERE key LIKE 'inc-ssh:escalation:step-1:%'")
    assert pages and all("Patient zero: Patient zero is host i-99999999" in str(p["payload"]) for p in pages)


FEED_ADDRESSES = {
    "list": "49.88.112.76",
    "csv": "59.11.81.231",
    "stix": "1.183.190.110",
    "misp": "72.5.123.29",
}
INVENTORY = """
assets:
  - kind: host
    identifier: i-99999999
    owner: platform-team
    business_service: payments
    criticality: 1
    data_classification: restricted
    tags: [crown-jewel]
"""


@needs_corpus
async def test_feeds_of_every_format_and_an_inventory_weigh_the_corpus_incidents(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    csv_feed = (
        '# "first_seen_utc","ioc_id","ioc_value","ioc_type","threat_type","fk_malware","malware_alias",'
        '"malware_printable","last_seen_utc","confidence_level","reference","tags","anonymous","reporter"\n'
        f'"2024-03-01 10:00:00", "1", "{FEED_ADDRESSES["csv"]}:22", "ip:port", "botnet_cc", "elf.mirai", "None",'
        ' "Mirai", "", "75", "", "ssh", "0", "abuse_ch"\n'
    )
    stix_feed = stix_bundle(
        stix_indicator(7, f"[ipv4-addr:value = '{FEED_ADDRESSES['stix']}']", indicator_types=["malicious-activity"])
    )
    misp_feed = {
        "Event": {
            "uuid": "5e5d1d8a-0000-4000-8000-000000000007",
            "info": "SSH scanners",
            "date": "2024-02-01",
            "Attribute": [{"uuid": "s-1", "type": "ip-src", "value": FEED_ADDRESSES["misp"], "to_ids": True}],
        }
    }
    async with pool.acquire() as conn:
        feeds = {
            "list": intel.parse_list(FEED_ADDRESSES["list"] + "\n", defaults=intel.FeedDefaults(verdict="suspicious")),
            "csv": intel.parse_csv(csv_feed),
            "stix": intel.parse_stix(stix_feed),
            "misp": intel.parse_misp(json.dumps(misp_feed)),
        }
        for source, entries in feeds.items():
            assert await intel.load_feed(conn, source=f"{source}-feed", entries=entries) == 1, source
        async with conn.transaction():
            await assets.import_catalog(conn, assets.parse(INVENTORY, source="inventory.yaml", format_name="yaml"))
    analyses = await analyse_corpus(settings, pool, names)

    # Each format's entry reached the indicator the corpus's alerts name, with its feed.
    found = {i.value: i for a in analyses.values() for i in a.indicators if i.value in FEED_ADDRESSES.values()}
    for source, address in FEED_ADDRESSES.items():
        assert address in found, f"no corpus incident names {address} ({source})"
        assert found[address].feeds == [f"{source}-feed"] and found[address].verdict is not None, found[address]
    # The inventory's crown jewel weighs the GuardDuty incident on it.
    _, ssh = one(analyses, host="i-99999999")
    assert ssh.impact is not None
    assert (ssh.impact.systems, ssh.impact.business_services, ssh.impact.crown_jewels) == (
        ["i-99999999"],
        ["payments"],
        ["i-99999999"],
    )
    assert (ssh.impact.most_critical, ssh.impact.data_at_risk) == (1, "restricted")
    assert ssh.severity_recommendation is not None and ssh.severity_recommendation.reasons


async def test_the_most_alike_past_incidents_are_scored_in_postgres_most_alike_then_most_recent_first(
    pool: asyncpg.Pool,
) -> None:
    host, bad, root = Feature("host", "web-1"), Feature("ipv4", "203.0.113.7"), Feature("user", "root")
    t0 = datetime(2026, 11, 24, 9, tzinfo=UTC)
    weighed = similar.weights([host, bad, root], [Indicator(kind="ipv4", value=bad.value, verdict="malicious")])
    async with pool.acquire() as conn:
        traced = {
            "inc-bad": ([host, bad], t0),  # 12
            "inc-root": ([root], t0),  # 1: below MIN_SCORE, not alike
            "inc-undated": ([host, root], None),  # 5, its time unknown: after those dated
            **{f"inc-{n}": ([host], t0 + timedelta(hours=n)) for n in range(5)},  # 4 each, the later first
            "inc-now": ([host, bad, root], t0),  # the incident itself: never alike itself
        }
        for incident_id, (features, seen) in traced.items():
            await history.add_features(conn, incident_id=incident_id, features=features, seen_at=seen or t0)
            await history.save_trace(conn, incident_id=incident_id, title=f"{incident_id} title", trace=Trace())
            # The trace's time is its earliest alert's; set here as each case needs it.
            await conn.execute("UPDATE analyzer_traces SET first_seen = $2 WHERE incident_id = $1", incident_id, seen)
        # Its trace is gone (a detach forgets it): not a past incident to name.
        await history.add_features(conn, incident_id="inc-untraced", features=[host, bad], seen_at=t0)
        alike = await history.most_alike(conn, incident_id="inc-now", weighed=weighed)
        assert await history.most_alike(conn, incident_id="inc-now", weighed={}) == []
    assert [(p.incident_id, sorted(p.shared)) for p in alike] == [
        ("inc-bad", [host, bad]),
        ("inc-undated", [host, root]),
        ("inc-4", [host]),
        ("inc-3", [host]),
        ("inc-2", [host]),
    ]
    assert len(alike) == similar.MAX_SIMILAR
    assert [similar.describe(p, weighed).score for p in alike] == [12, 5, 4, 4, 4]
    assert alike[0].title == "inc-bad title"
