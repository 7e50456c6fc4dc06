"""Threat-intelligence feeds in real Postgres: each format loaded, replaced, looked up (networks holding
an address, expiry), many indicators in one query, a large feed through COPY, and the `vigil intel` commands."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from services.analyzer import intel
from services.analyzer.intel import Entry, FeedDefaults, load_feed, lookup
from shared.db import Conn, create_pool
from tests.unit.test_intel import MISP_EVENT, THREATFOX, indicator, stix_bundle
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's migrated database (no broker needed)."""
    pool = await create_pool(database_url, max_size=2)
    yield pool
    await pool.close()


def entry(kind: str, value: str, verdict: str = "malicious", confidence: int = 50, **more: object) -> Entry:
    return Entry(kind, value, verdict, confidence, **more)  # type: ignore[arg-type]


async def listed(conn: Conn, source: str) -> set[tuple[str, str]]:
    rows = await conn.fetch("SELECT kind, value FROM intel_entries WHERE source = $1", source)
    return {(r["kind"], r["value"]) for r in rows}


async def test_each_format_loads_and_is_found(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        feeds = {
            "list": intel.parse_list("hxxp://evil[.]example/a\n203.0.113.0/24\n"),
            "threatfox": intel.parse_csv(THREATFOX),
            "stix": intel.parse_stix(stix_bundle(indicator(1, "[domain-name:value = 'stix.example']"))),
            "misp": intel.parse_misp(json.dumps(MISP_EVENT)),
        }
        for source, entries in feeds.items():
            assert await load_feed(conn, source=source, entries=entries) == len(entries)
        found = await lookup(
            conn,
            [
                ("url", "http://evil.example/a"),
                ("ipv4", "203.0.113.9"),
                ("ipv4", "192.0.2.7"),
                ("domain", "evil.example"),
                ("domain", "stix.example"),
                ("email", "bad@evil.example"),
                ("domain", "good.example"),
            ],
        )
    sources = {key: [m.source for m in matches] for key, matches in found.items()}
    assert sources == {
        ("url", "http://evil.example/a"): ["list"],
        ("ipv4", "203.0.113.9"): ["list"],
        ("ipv4", "192.0.2.7"): ["threatfox"],
        ("domain", "evil.example"): ["threatfox", "misp"],  # the more confident first
        ("domain", "stix.example"): ["stix"],
        ("email", "bad@evil.example"): ["misp"],
        ("domain", "good.example"): [],
    }
    [network] = found["ipv4", "203.0.113.9"]
    assert (network.kind, network.value) == ("cidr", "203.0.113.0/24")  # the listed network, not the address
    assert intel.verdict_of(found["ipv4", "192.0.2.7"]) == (
        "malicious",
        100,
        ("Cobalt Strike", "CobaltStrike", "botnet_cc", "c2"),
        ("threatfox",),
    )


async def test_loading_a_feed_again_replaces_what_it_listed_and_leaves_other_feeds(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        first_seen = datetime(2024, 1, 1, tzinfo=UTC)
        await load_feed(
            conn, source="a", entries=[entry("ip", "192.0.2.1", first_seen=first_seen), entry("domain", "old.example")]
        )
        await load_feed(conn, source="b", entries=[entry("domain", "old.example")])
        later = datetime(2024, 6, 1, tzinfo=UTC)
        await load_feed(
            conn,
            source="a",
            entries=[entry("ip", "192.0.2.1", "suspicious", 70, first_seen=later), entry("domain", "new.example")],
        )
        assert await listed(conn, "a") == {("ip", "192.0.2.1"), ("domain", "new.example")}
        assert await listed(conn, "b") == {("domain", "old.example")}
        row = await conn.fetchrow("SELECT * FROM intel_entries WHERE source = 'a' AND value = '192.0.2.1'")
        assert row is not None
        assert (row["verdict"], row["confidence"], row["first_seen"]) == ("suspicious", 70, first_seen)  # earliest kept
        await load_feed(conn, source="a", entries=[entry("md5", "d41d8cd98f00b204e9800998ecf8427e")], replace=False)
        assert len(await listed(conn, "a")) == 3
        assert await conn.fetchval("SELECT entries FROM intel_sources WHERE source = 'a'") == 3


async def test_a_failed_load_changes_nothing(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await load_feed(conn, source="a", entries=[entry("ip", "192.0.2.1")])
        with pytest.raises(asyncpg.CheckViolationError):
            await load_feed(
                conn, source="a", entries=[entry("ip", "192.0.2.2"), entry("ip", "192.0.2.3", confidence=101)]
            )
        assert await listed(conn, "a") == {("ip", "192.0.2.1")}


async def test_an_address_matches_every_network_holding_it_and_not_a_neighbour(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await load_feed(
            conn,
            source="nets",
            entries=[
                entry("cidr", "10.0.0.0/8"),
                entry("cidr", "10.1.0.0/16", "suspicious", 90),
                entry("cidr", "2001:db8::/32"),
            ],
        )
        await load_feed(conn, source="hosts", entries=[entry("ip", "10.1.2.3", "benign-listed", 100)])
        found = await lookup(
            conn, [("ipv4", "10.1.2.3"), ("ipv4", "11.0.0.1"), ("ipv6", "2001:DB8::5"), ("ipv6", "2001:db9::1")]
        )
    assert sorted(m.value for m in found["ipv4", "10.1.2.3"]) == ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3"]
    assert intel.verdict_of(found["ipv4", "10.1.2.3"]).verdict == "malicious"
    assert found["ipv4", "11.0.0.1"] == []
    assert [m.value for m in found["ipv6", "2001:DB8::5"]] == ["2001:db8::/32"]
    assert found["ipv6", "2001:db9::1"] == []


async def test_expired_entries_are_ignored(db: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    async with db.acquire() as conn:
        await load_feed(
            conn,
            source="x",
            entries=[
                entry("domain", "gone.example", expires_at=now - timedelta(minutes=1)),
                entry("domain", "live.example", expires_at=now + timedelta(days=1)),
                entry("cidr", "198.51.100.0/24", expires_at=now - timedelta(minutes=1)),
            ],
        )
        found = await lookup(conn, [("domain", "gone.example"), ("domain", "live.example"), ("ip", "198.51.100.1")])
    assert [len(found[k]) for k in found] == [0, 1, 0]


async def test_many_indicators_and_a_large_feed_go_through_copy_and_the_indexes(db: asyncpg.Pool) -> None:
    base = int(ipaddress.ip_address("100.64.0.0"))
    entries = [entry("ip", str(ipaddress.ip_address(base + i))) for i in range(50_000)]
    entries += [entry("domain", f"host{i}.evil.example") for i in range(49_000)]
    entries += [entry("cidr", f"172.{16 + i // 256}.{i % 256}.0/24") for i in range(1_000)]
    async with db.acquire() as conn:
        assert await load_feed(conn, source="big", entries=entries) == 100_000
        await conn.execute("ANALYZE intel_entries")
        wanted = [("ipv4", str(ipaddress.ip_address(base + i))) for i in range(0, 100_000, 100)]  # half listed
        wanted += [("domain", f"host{i}.evil.example") for i in range(0, 98_000, 100)]
        wanted += [("ipv4", "172.17.3.200"), ("ipv4", "172.40.0.1")]
        found = await lookup(conn, wanted)
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + intel.LOOKUP_SQL,
                ["domain"],
                ["host1.evil.example"],
                [ipaddress.ip_address("172.17.3.200")],
            )
        )
    hits = {key for key, matches in found.items() if matches}
    assert len(hits) == 500 + 490 + 1
    assert [m.value for m in found["ipv4", "172.17.3.200"]] == ["172.17.3.0/24"]
    assert "intel_entries_lookup" in plan and "intel_entries_network" in plan, plan


async def invoke(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def test_the_cli_loads_a_feed_and_looks_values_up(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    feed = tmp_path / "feed.txt"
    feed.write_text("# bad domains\nevil[.]example\n192.0.2.0/24\n")
    loaded = await invoke("intel", "load", str(feed), "--source", "mine", "--format", "list", "--confidence", "80")
    assert loaded.exit_code == 0, loaded.output
    assert "2 entries loaded into mine" in loaded.output
    answer = await invoke("intel", "lookup", "192.0.2.44", "--json")
    assert answer.exit_code == 0, answer.output
    report = json.loads(answer.output)
    assert (report["verdict"], report["confidence"], report["feeds"]) == ("malicious", 80, ["mine"])
    assert report["matches"][0]["value"] == "192.0.2.0/24"
    plain = await invoke("intel", "lookup", "hxxp://good[.]example")
    assert "listed by no feed" in plain.output
    feed.write_text("evil.example\nnot an indicator\n")
    refused = await invoke("intel", "load", str(feed), "--source", "mine", "--format", "list")
    assert refused.exit_code == 1
    assert "line 2" in refused.output
    still = await invoke("intel", "lookup", "EVIL.example", "--json")
    assert json.loads(still.output)["feeds"] == ["mine"]


async def test_defaults_reach_the_database(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await load_feed(
            conn,
            source="d",
            entries=intel.parse_list("evil.example\n", defaults=FeedDefaults("suspicious", 33, ("apt-x",))),
        )
        row = await conn.fetchrow("SELECT verdict, confidence, tags, network FROM intel_entries WHERE source = 'd'")
    assert row is not None
    assert (row["verdict"], row["confidence"], row["tags"], row["network"]) == ("suspicious", 33, ["apt-x"], None)
