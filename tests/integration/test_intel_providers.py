"""Online intel providers in the real Postgres, their real classes against a local server that speaks
AbuseIPDB's, VirusTotal's and GreyNoise's documented APIs: an analysis enqueues lookups (never of an
internal address, never inside its transaction), the effects runner makes them, the answers are
cached and the incident's analysis is published again, once, with the verdicts; keys stay secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import string
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
import pytest_asyncio
from pydantic import SecretStr
from typer.testing import CliRunner

from services.analyzer import assets, forensic, intel, providers
from services.analyzer.handlers import analyse_incident
from services.detector.domain import summarise
from shared import cloudevents
from shared.consumer import HandlerContext, write_context
from shared.db import create_pool
from shared.effects import EffectRunner
from shared.events import IncidentAnalyzed, IncidentDetected, IncidentUpdated, Indicator
from shared.topics import TopicNames
from tests.factories import alert, snapshot
from tests.helpers import eventually, running
from tests.intel_servers import ProviderApis, Server, serving, url_id
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

NAMES = TopicNames("")
KEYS = {"abuseipdb": "abuse-key-4f1c9e", "virustotal": "vt-key-77aa01", "greynoise": "gn-key-c0ffee"}
API_KEYS = SecretStr(",".join(f"{name}:{key}" for name, key in KEYS.items()))


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


def configured(server: Server, **more: object) -> list[providers.Configured]:
    config = intel.IntelConfig.model_validate(
        {
            "providers": {
                name: {"per_minute": 6000, "options": {"base_url": server.url(f"/{name}")}, **more}
                for name in ("abuseipdb", "virustotal", "greynoise")
            }
        }
    )
    return providers.load_providers(config, providers.parse_api_keys(API_KEYS))


def incident(subject: str, *alerts: dict[str, object]) -> IncidentDetected:
    # Without the factory's own scanning address and its description: only what each test names.
    summaries = [
        summarise(alert(minutes=n, **{"src_ip": None, "description": "outbound", **a}))  # type: ignore[arg-type]
        for n, a in enumerate(alerts)
    ]
    return IncidentDetected(source="/vigil/detector", subject=subject, data=snapshot(new_alerts=summaries))


async def analyse(pool: asyncpg.Pool, event: IncidentDetected | IncidentUpdated) -> Analysis:
    """The indicators of the analysis the event made the analyzer publish (empty if it published none)."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="analyzer", names=NAMES)
        await analyse_incident(ctx, event)
        await write_context(conn, ctx)
    published = [e for e in ctx.emitted if isinstance(e, IncidentAnalyzed)]
    assert len(published) <= 1
    return {(i.kind, i.value): i for e in published for i in e.data.indicators}


Analysis = dict[tuple[str, str], Indicator]


@contextlib.asynccontextmanager
async def runner(pool: asyncpg.Pool, online: Sequence[providers.Configured]) -> AsyncIterator[None]:
    kinds = providers.effect_kinds(online, reanalyse=analyse_incident)
    effects = EffectRunner("analyzer", pool, NAMES, kinds, poll_s=0.05, backoff_base_s=0.01, backoff_cap_s=0.02)
    async with running(effects.run()):
        yield


async def all_done(pool: asyncpg.Pool) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT count(*) > 0 AND bool_and(status IN ('succeeded', 'failed', 'parked')) FROM effects "
            "WHERE kind LIKE 'intel.provider.%'"
        )
    )


async def published(pool: asyncpg.Pool, subject: str) -> list[Analysis]:
    """The analyses of the incident in the outbox, oldest first."""
    analyses: list[Analysis] = []
    for row in await pool.fetch("SELECT value, headers FROM outbox ORDER BY id"):
        event = cloudevents.decode(row["value"], [(n, v.encode()) for n, v in row["headers"]])
        if isinstance(event, IncidentAnalyzed) and event.subject == subject:
            analyses.append({(i.kind, i.value): i for i in event.data.indicators})
    return analyses


async def republished(pool: asyncpg.Pool, subject: str) -> bool:
    return len(await published(pool, subject)) > 1


async def test_answers_arrive_through_the_effects_runner_and_publish_the_analysis_again(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's and httpcore's too
    apis = ProviderApis(KEYS)
    apis.abuseipdb["203.0.113.45"] = {"abuseConfidenceScore": 100, "totalReports": 42, "isTor": True}
    apis.greynoise["203.0.113.45"] = {"noise": True, "riot": False, "classification": "malicious", "name": "unknown"}
    apis.greynoise["198.51.100.7"] = {"noise": False, "riot": True, "classification": "benign", "name": "Google"}
    apis.virustotal["cdn-update-check.net"] = {
        "last_analysis_stats": {"harmless": 50, "malicious": 9, "suspicious": 1, "undetected": 20, "timeout": 0},
        "popular_threat_classification": {"suggested_threat_label": "trojan.cobaltstrike/beacon"},
    }
    apis.virustotal[url_id("http://cdn-update-check.net/stage2")] = {
        "last_analysis_stats": {"harmless": 70, "malicious": 1, "suspicious": 0, "undetected": 0, "timeout": 0}
    }
    async with serving(apis) as server:
        online = configured(server)
        async with db.acquire() as conn, conn.transaction():
            await providers.sync(conn, online)
        event = incident(
            "inc-online",
            {
                "src_ip": "10.0.0.5",
                "dst_ip": "203.0.113.45",
                "description": "cdn-update-check.net: beacon to http://cdn-update-check.net/stage2"
                " after a look at http://10.0.0.5/admin",
            },
            {"src_ip": "10.0.0.5", "dst_ip": "198.51.100.7", "description": "DNS answer"},
        )
        first = await analyse(db, event)
        # Nothing cached yet: the analysis goes out at once, the lookups are only enqueued.
        assert all(i.verdict is None for i in first.values()) and server.requests == []
        asked = {(r["kind"], r["payload"]["value"]) for r in await db.fetch("SELECT kind, payload FROM effects")}
        assert asked == {
            ("intel.provider.abuseipdb", "203.0.113.45"),
            ("intel.provider.abuseipdb", "198.51.100.7"),
            ("intel.provider.greynoise", "203.0.113.45"),
            ("intel.provider.greynoise", "198.51.100.7"),
            ("intel.provider.virustotal", "203.0.113.45"),
            ("intel.provider.virustotal", "198.51.100.7"),
            ("intel.provider.virustotal", "cdn-update-check.net"),
            ("intel.provider.virustotal", "http://cdn-update-check.net/stage2"),
        }  # never the internal 10.0.0.5, nor a link to it

        async with runner(db, online):
            await eventually(lambda: all_done(db))
            await eventually(lambda: republished(db, "inc-online"))
        statuses = await db.fetch("SELECT status, count(*) FROM effects GROUP BY status")
        assert [(r["status"], r["count"]) for r in statuses] == [("succeeded", 8)]
        assert {r.path for r in server.requests} >= {
            "/abuseipdb/api/v2/check",
            "/greynoise/v3/community/203.0.113.45",
            "/virustotal/api/v3/domains/cdn-update-check.net",
            f"/virustotal/api/v3/urls/{url_id('http://cdn-update-check.net/stage2')}",
        }

    # One new version, published when the last answer arrived, with every provider's verdict.
    [_, again] = await published(db, "inc-online")
    attacker = again["ipv4", "203.0.113.45"]
    assert (attacker.verdict, attacker.confidence) == ("malicious", 100)
    assert attacker.feeds == ["abuseipdb", "greynoise"] and "tor" in attacker.tags
    assert (again["ipv4", "198.51.100.7"].verdict, again["ipv4", "198.51.100.7"].tags) == ("benign-listed", ["Google"])
    domain = again["domain", "cdn-update-check.net"]
    assert (domain.verdict, domain.confidence, domain.feeds) == ("malicious", 95, ["virustotal"])
    assert domain.tags == ["trojan.cobaltstrike/beacon"]
    assert again["url", "http://cdn-update-check.net/stage2"].verdict == "suspicious"

    # Analysed again with the same inputs: the cache answers, no request, and the same analysis is not
    # published twice.
    requests = len(server.requests)
    assert await analyse(db, event) == {} and len(server.requests) == requests
    # Another incident with the same attacker: the cached answer, at once.
    other = await analyse(db, incident("inc-other", {"dst_ip": "203.0.113.45"}))
    assert other["ipv4", "203.0.113.45"].verdict == "malicious"
    assert await db.fetchval("SELECT count(*) FROM effects") == 8

    # The keys went in headers only: nowhere in the database, the events or the logs.
    stored = json.dumps(
        [
            dict(r)
            for table in ("effects", "intel_provider_cache", "intel_enrichment")
            for r in await db.fetch(f"SELECT * FROM {table}")
        ],
        default=str,
    )
    stored += "".join(bytes(r["value"]).decode() for r in await db.fetch("SELECT value FROM outbox"))
    for key in KEYS.values():
        assert key not in stored and key not in caplog.text


async def test_refusals_and_retries_and_a_lookup_shared_by_incidents(db: asyncpg.Pool, database_url: str) -> None:
    apis = ProviderApis(KEYS)
    apis.abuseipdb["203.0.113.9"] = {"abuseConfidenceScore": 40}
    async with serving(apis) as server:
        online = [c for c in configured(server) if c.provider.name == "abuseipdb"]
        async with db.acquire() as conn, conn.transaction():
            await providers.sync(conn, online)
        await analyse(db, incident("inc-a", {"dst_ip": "203.0.113.9"}))
        await analyse(db, incident("inc-b", {"dst_ip": "203.0.113.9"}))
        # Two incidents, one value: one lookup, both waiting for it.
        assert await db.fetchval("SELECT count(*) FROM effects") == 1
        assert await db.fetchval("SELECT count(*) FROM intel_provider_waits") == 2

        apis.refuse(429, times=3)  # rate-limited: tried again with backoff, answered on the 4th of 5 attempts
        async with runner(db, online):
            await eventually(lambda: all_done(db))
            await eventually(lambda: republished(db, "inc-b"))
        assert await db.fetchval("SELECT status FROM effects") == "succeeded"
        assert len(server.requests) == 4  # three refusals, then the answer
    for subject in ("inc-a", "inc-b"):
        [_, again] = await published(db, subject)
        assert again["ipv4", "203.0.113.9"].verdict == "suspicious"
    assert await db.fetchval("SELECT count(*) FROM intel_provider_waits") == 0
    async with db.acquire() as conn:
        [shown] = await providers.status(conn)
    assert (shown["name"], shown["enabled"], shown["cached"], shown["queued"], shown["day_used"]) == (
        "abuseipdb",
        True,
        1,
        0,
        1,
    )
    shown_cli = await asyncio.to_thread(
        CliRunner().invoke, cli, ["intel", "providers"], env={"DATABASE_URL": database_url}
    )
    assert shown_cli.exit_code == 0, shown_cli.output
    assert "abuseipdb  enabled  ip  6000/min, 1 of 1000 today; 1 cached, 0 queued" in shown_cli.output


async def test_a_wrong_key_fails_for_good_and_the_analysis_stays_as_it_was(db: asyncpg.Pool) -> None:
    apis = ProviderApis({**KEYS, "abuseipdb": "another-key"})
    async with serving(apis) as server:
        online = [c for c in configured(server) if c.provider.name == "abuseipdb"]
        async with db.acquire() as conn, conn.transaction():
            await providers.sync(conn, online)
        await analyse(db, incident("inc-key", {"dst_ip": "203.0.113.10"}))
        async with runner(db, online):
            await eventually(lambda: all_done(db))
    effect = await db.fetchrow("SELECT status, attempts, last_error FROM effects")
    assert effect is not None and (effect["status"], effect["attempts"]) == ("failed", 1)
    assert "HTTP 401 from abuseipdb" in effect["last_error"]
    assert len(await published(db, "inc-key")) == 1  # no verdict changed: no new version
    cached = await db.fetchrow("SELECT verdict, error, expires_at - fetched_at AS kept FROM intel_provider_cache")
    assert cached is not None and cached["verdict"] is None and "HTTP 401" in cached["error"]
    assert cached["kept"] <= providers.ERROR_TTL  # asked again soon, not a day later

    # Once the failure is no longer kept, the next incident naming the address has it asked again.
    await db.execute("UPDATE intel_provider_cache SET expires_at = now() - interval '1 second'")
    await analyse(db, incident("inc-key-again", {"dst_ip": "203.0.113.10"}))
    asked = await db.fetch("SELECT status FROM effects ORDER BY id")
    assert [r["status"] for r in asked] == ["failed", "pending"]
    assert await db.fetchval("SELECT count(*) FROM intel_provider_waits WHERE incident_id = 'inc-key-again'") == 1


async def test_no_provider_enabled_means_no_lookup_at_all(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn, conn.transaction():
        await providers.sync(conn, [])
    await analyse(db, incident("inc-quiet", {"dst_ip": "203.0.113.11"}))
    assert await db.fetchval("SELECT count(*) FROM effects") == 0
    assert await db.fetchval("SELECT count(*) FROM intel_enrichment") == 0


async def test_an_answer_that_changes_no_verdict_records_no_publication_it_did_not_send(db: asyncpg.Pool) -> None:
    async def published_digest() -> str | None:
        digest: str | None = await db.fetchval(
            "SELECT published_digest FROM analyzer_incidents WHERE incident_id = 'inc-quiet'"
        )
        return digest

    apis = ProviderApis(KEYS)  # knows nothing of the address: every answer leaves its verdict as it was
    async with serving(apis) as server:
        online = configured(server)
        async with db.acquire() as conn, conn.transaction():
            await providers.sync(conn, online)
        event = incident("inc-quiet", {"host": "web-01", "dst_ip": "203.0.113.60"})
        await analyse(db, event)
        first = await published_digest()
        # Meanwhile the inventory learns what web-01 is: the next analysis differs, by its impact alone.
        catalog = assets.parse_yaml(
            "assets: [{kind: host, identifier: web-01, criticality: 1, tags: [pci]}]", source="test"
        )
        async with db.acquire() as conn, conn.transaction():
            await assets.import_catalog(conn, catalog)
        async with runner(db, online):
            await eventually(lambda: all_done(db))
    # What is recorded as published was published: either the new version went out, or nothing is recorded.
    sent = await published(db, "inc-quiet")
    assert len(sent) == 2 or await published_digest() == first, (len(sent), first, await published_digest())


async def test_a_value_too_long_for_the_indexes_is_not_looked_up(db: asyncpg.Pool) -> None:
    """A lookup is keyed (its effect, its cached answer, who waits for it) by the value: one longer than
    intel.MAX_VALUE_BYTES, which no analysis keeps but a recheck may ask for, is left unknown to providers."""
    config = intel.IntelConfig.model_validate({"providers": {"virustotal": {"per_minute": 6000}}})
    online = providers.load_providers(config, {"virustotal": SecretStr("vt-key")})
    # Random: an index compresses a repetitive value below its bound.
    token = "".join(random.Random(1).choices(string.ascii_letters + string.digits, k=3000))
    url = f"http://evil-cdn.net/login?token={token}"
    asked: dict[tuple[str, str], list[intel.Match]] = {("url", url): [], ("domain", "evil-cdn.net"): []}
    async with db.acquire() as conn, conn.transaction():
        await providers.sync(conn, online)
        assert await providers.consult(conn, incident("inc-long"), asked, internal=()) == asked
    assert await db.fetchval("SELECT array_agg(payload->>'value') FROM effects") == ["evil-cdn.net"]


async def test_what_forensics_marks_internal_is_never_sent(db: asyncpg.Pool) -> None:
    """Names under the organisation's own DNS suffixes (noise.yaml's internal_domains), links to
    them and e-mail addresses at them are marked internal, as private addresses are: none goes to a provider."""
    config = intel.IntelConfig.model_validate({"providers": {"virustotal": {"per_minute": 6000}}})
    online = providers.load_providers(config, {"virustotal": SecretStr("vt-key")})
    event = incident(
        "inc-internal",
        {
            "description": "beacon from db01.corp.acme.com to https://wiki.corp.acme.com/hr/salaries?session=s3cr3t"
            " and mail to payroll@acme.com; then to cdn-update-check.net"
        },
    )
    noise = forensic.Noise(internal_domains=frozenset({"corp.acme.com", "acme.com"}))
    async with db.acquire() as conn, conn.transaction():
        await providers.sync(conn, online)
        ctx = HandlerContext(conn=conn, service="analyzer", names=NAMES)
        await analyse_incident(ctx, event, noise=noise)
        await write_context(conn, ctx)
    [analysis] = [e for e in ctx.emitted if isinstance(e, IncidentAnalyzed)]
    internal = {(i.kind, i.value) for i in analysis.data.indicators if i.internal}
    assert {
        ("domain", "db01.corp.acme.com"),
        ("url", "https://wiki.corp.acme.com/hr/salaries?session=s3cr3t"),
        ("email", "payroll@acme.com"),
    } <= internal
    sent = {r["value"] for r in await db.fetch("SELECT payload->>'value' AS value FROM effects")}
    assert sent == {"cdn-update-check.net"}
