"""The analyzer weighs an incident by the asset inventory: impact, asset tags, a severity recommendation."""

from __future__ import annotations

import asyncpg
import pytest

from services.analyzer import assets, intel
from services.analyzer.handlers import analyse_incident
from services.detector.domain import summarise
from shared.consumer import HandlerContext
from shared.events import IncidentAnalyzed, IncidentDetected, Severity
from shared.topics import TopicNames
from tests.factories import alert, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

INVENTORY = """
assets:
  - {kind: host, identifier: db-payments-1, business_service: payments, criticality: 1,
     data_classification: restricted, tags: [database, pci]}
  - {kind: cidr, identifier: 10.20.0.0/16, business_service: payments, criticality: 2}
users:
  - {name: svc-admin, department: it, privilege: domain_admin}
"""


async def analyse(pool: asyncpg.Pool, names: TopicNames, event: IncidentDetected) -> IncidentAnalyzed:
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="analyzer", names=names)
        await analyse_incident(ctx, event)
    [analysed] = [e for e in ctx.emitted if isinstance(e, IncidentAnalyzed)]
    return analysed


async def test_a_crown_jewel_and_a_domain_admin_make_the_analysis_recommend_sev1(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with pool.acquire() as conn:
        await assets.import_catalog(conn, assets.parse_yaml(INVENTORY, source="inventory.yaml"))
    touched = [
        summarise(alert(host="db-payments-1", user="svc-admin", src_ip="10.20.3.4")),
        summarise(alert(host="laptop-99", minutes=1)),
    ]
    event = IncidentDetected(
        source="/vigil/detector",
        subject="inc-impact",
        data=snapshot(
            severity=Severity.SEV3, new_alerts=touched, hosts=["db-payments-1", "laptop-99"], users=["svc-admin"]
        ),
    )
    analysis = (await analyse(pool, names, event)).data
    assert analysis.impact is not None
    assert analysis.impact.crown_jewels == ["db-payments-1"]
    assert analysis.impact.privileged_users == ["svc-admin"]
    assert "laptop-99" in analysis.impact.unknown_systems  # not in the inventory: listed, not dropped
    assert analysis.impact.data_at_risk == "restricted" and analysis.impact.most_critical == 1
    assert "payments" in analysis.impact.business_services
    assert {"crown-jewel", "database", "pci"} <= set(analysis.asset_tags)
    assert analysis.severity_recommendation is not None
    assert analysis.severity_recommendation.severity is Severity.SEV1
    assert any("svc-admin" in r for r in analysis.severity_recommendation.reasons)


CLOUD_AND_EDGE = """
assets:
  - {kind: cloud_resource, identifier: i-0abc123def4567890, business_service: payments, criticality: 1,
     data_classification: confidential}
  - {kind: ip, identifier: 198.51.100.20, business_service: storefront, criticality: 2}
"""


async def test_an_inventory_cloud_resource_and_public_address_are_affected_systems(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with pool.acquire() as conn:
        await assets.import_catalog(conn, assets.parse_yaml(CLOUD_AND_EDGE, source="inventory.yaml"))
    # The attacker (203.0.113.9) reaches our public storefront address and an instance GuardDuty names.
    probe = alert(host="vpn-gw", src_ip="203.0.113.9", dst_ip="198.51.100.20", resource="Instance i-0abc123def4567890")
    event = IncidentDetected(
        source="/vigil/detector",
        subject="inc-cloud",
        data=snapshot(severity=Severity.SEV3, new_alerts=[summarise(probe)], hosts=["vpn-gw"], users=["mallory"]),
    )
    analysis = (await analyse(pool, names, event)).data
    assert analysis.impact is not None
    assert analysis.impact.systems == ["i-0abc123def4567890", "198.51.100.20"]  # most critical first
    assert analysis.impact.most_critical == 1 and analysis.impact.crown_jewels == ["i-0abc123def4567890"]
    assert analysis.impact.blast_radius == 2
    assert analysis.impact.by_criticality == {1: 1, 2: 1, 3: 0, 4: 0}
    assert analysis.impact.business_services == ["payments", "storefront"]
    assert analysis.impact.data_at_risk == "confidential"
    # The attacker's address is not an unknown system of ours; the host the inventory lacks is.
    assert analysis.impact.unknown_systems == ["vpn-gw"]
    assert analysis.impact.unknown_users == ["mallory"]
    assert analysis.severity_recommendation is not None
    assert analysis.severity_recommendation.severity is Severity.SEV2


async def test_without_an_inventory_everything_is_unknown_and_nothing_is_recommended(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    event = IncidentDetected(source="/vigil/detector", subject="inc-bare", data=snapshot(severity=Severity.SEV3))
    analysis = (await analyse(pool, names, event)).data
    assert analysis.impact is not None and analysis.impact.systems == [] and analysis.impact.unknown_systems
    assert analysis.severity_recommendation is None and analysis.asset_tags == []


async def test_indicators_carry_what_threat_intelligence_says_of_them(pool: asyncpg.Pool, names: TopicNames) -> None:
    async with pool.acquire() as conn:
        feed = intel.parse_list(
            "203.0.113.0/24\n",
            kind="cidr",
            defaults=intel.FeedDefaults(verdict="malicious", confidence=90, tags=("botnet",)),
        )
        await intel.load_feed(conn, source="blocklist-de", entries=feed)
    touched = [summarise(alert(src_ip="203.0.113.7", host="web-1"))]
    event = IncidentDetected(source="/vigil/detector", subject="inc-intel", data=snapshot(new_alerts=touched))
    analysis = (await analyse(pool, names, event)).data
    by_value = {i.value: i for i in analysis.indicators}
    bad = by_value["203.0.113.7"]
    assert (bad.verdict, bad.confidence, bad.feeds, bad.tags) == ("malicious", 90, ["blocklist-de"], ["botnet"])
    assert all(i.verdict is None for v, i in by_value.items() if not v.startswith("203.0.113."))
    assert analysis.summary.endswith("known bad to threat intelligence")
