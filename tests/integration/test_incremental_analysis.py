"""A large incident's analysis stays incremental, in the real Postgres: each indicator keeps its verdict, a
batch looks up in threat intelligence only what it names (and a bounded few whose verdict a feed change
may have outdated), and the analysis carries the worst indicators with the counts of all of them."""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from services.analyzer import assets, domain, forensic, forensic_repository, handlers, intel, retrohunt
from services.analyzer.feeds import SERVICE
from services.detector.domain import summarise
from shared import cloudevents
from shared.consumer import HandlerContext, Inbound, write_context
from shared.db import create_pool
from shared.events import (
    MAX_ANALYSIS_AFFECTED,
    MAX_ANALYSIS_INDICATORS,
    MAX_ANALYSIS_OBSERVABLES,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentMerged,
    IncidentSplit,
    IncidentUpdated,
    Indicator,
    MergeRecord,
    SplitRecord,
)
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import alert, snapshot
from tests.helpers import eventually
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

NAMES = TopicNames("")
Key = tuple[str, str]


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[set[Key]]:
    """What each analysis asks threat intelligence, one set per lookup."""
    lookups: list[set[Key]] = []
    look_up = intel.lookup

    async def counting(conn: asyncpg.Connection, values: Sequence[Key]) -> dict[Key, list[intel.Match]]:
        lookups.append(set(values))
        return await look_up(conn, values)

    monkeypatch.setattr(intel, "lookup", counting)
    return lookups


def batch(
    subject: str, first: int, addresses: Sequence[str], *, created: bool = False
) -> IncidentDetected | IncidentUpdated:
    """The incident's alerts ``first`` onwards, one from each address (and nothing else named)."""
    alerts = [
        summarise(alert(id=f"{subject}-{first + n}", minutes=first + n, src_ip=address, description="scan"))
        for n, address in enumerate(addresses)
    ]
    data = snapshot(new_alerts=alerts, alert_count=first + len(alerts), severity="SEV2")
    if created:
        return IncidentDetected(source="/vigil/detector", subject=subject, data=data)
    return IncidentUpdated(source="/vigil/detector", subject=subject, data=data)


async def analyse(pool: asyncpg.Pool, event: IncidentDetected | IncidentUpdated) -> list[IncidentAnalyzed]:
    """Handle the event as the analyzer's consumer does; the analyses it published."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
        await handlers.analyse_incident(ctx, event)
        await write_context(conn, ctx)
    return [e for e in ctx.emitted if isinstance(e, IncidentAnalyzed)]


async def load(pool: asyncpg.Pool, source: str, *entries: intel.Entry) -> None:
    async with pool.acquire() as conn:
        await intel.load_feed(conn, source=source, entries=entries)


def listed(value: str, verdict: intel.Verdict, confidence: int) -> intel.Entry:
    return intel.Entry("ip", value, verdict, confidence, ("botnet",))


async def stored(pool: asyncpg.Pool, subject: str) -> list[Indicator]:
    """Every indicator the analyzer keeps of the incident, with its verdict."""
    async with pool.acquire() as conn:
        rows = await forensic_repository.list_indicators(conn, incident_id=subject)
    return [
        Indicator.model_validate({k: v for k, v in row.items() if k != "looked_up_at"})
        for row in rows
        if row["kind"] in forensic.INDICATOR_KINDS
    ]


async def counts_agree(pool: asyncpg.Pool) -> bool:
    """The counts the triggers keep are those of the rows."""
    kept = await pool.fetch(
        "SELECT incident_id, kind, verdict, internal, n FROM analyzer_indicator_counts WHERE n <> 0 ORDER BY 1, 2, 3, 4"
    )
    counted = await pool.fetch(
        """SELECT incident_id, kind, coalesce(intel_verdict, '') AS verdict, internal, count(*) AS n
           FROM analyzer_indicators GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""
    )
    return [tuple(r) for r in kept] == [tuple(r) for r in counted]


ADDRESSES = [f"198.51.{n // 250}.{n % 250 + 1}" for n in range(MAX_ANALYSIS_INDICATORS + 60)]


async def test_a_large_incident_carries_its_worst_indicators_and_counts_every_one(
    db: asyncpg.Pool, asked: list[set[Key]]
) -> None:
    await load(
        db,
        "blocklist",
        listed("198.51.1.5", "malicious", 90),
        listed("198.51.0.7", "malicious", 60),
        listed("198.51.0.200", "suspicious", 70),
        listed("198.51.0.9", "benign-listed", 80),
    )
    # Seen again in later alerts: the most sighted of those no feed lists.
    addresses = [*ADDRESSES, "198.51.0.50", "198.51.0.50", "198.51.0.60"]
    [first] = await analyse(db, batch("inc-large", 0, addresses, created=True))
    analysis = first.data

    assert len(analysis.indicators) == MAX_ANALYSIS_INDICATORS
    head = [(i.value, i.verdict, i.count) for i in analysis.indicators[:6]]
    assert head == [
        ("198.51.1.5", "malicious", 1),
        ("198.51.0.7", "malicious", 1),
        ("198.51.0.200", "suspicious", 1),
        ("198.51.0.9", "benign-listed", 1),
        ("198.51.0.50", None, 3),
        ("198.51.0.60", None, 2),
    ]
    # Exactly those the pure order puts first of every indicator the incident has.
    every = await stored(db, "inc-large")
    assert len(every) == len(ADDRESSES)
    assert analysis.indicators == domain.worst_first(every)
    assert analysis.indicator_count == len(ADDRESSES) and analysis.indicators_by_kind == {"ipv4": len(ADDRESSES)}
    assert analysis.indicators_by_verdict == {"benign-listed": 1, "malicious": 2, "suspicious": 1}
    assert analysis.summary.endswith(
        f"; {len(ADDRESSES)} indicators ({len(ADDRESSES)} ipv4); 3 known bad to threat intelligence"
    )
    assert analysis.risk is not None
    [intel_factor] = [f for f in analysis.risk.factors if f.factor == "intel"]
    assert intel_factor.reason == "2 indicator(s) malicious to threat intelligence (confidence up to 90)"
    assert await counts_agree(db)

    # The same alerts again: nothing looked up, the same analysis, not published twice.
    assert await analyse(db, batch("inc-large", 0, addresses)) == []
    assert asked[-1] == set()
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1


SPRAYED_INVENTORY = """
assets: [{kind: host, identifier: web-259, criticality: 1}]
users: [{name: user0259, privilege: domain_admin}]
"""


async def test_a_spray_carries_the_most_relevant_hosts_accounts_and_observables_and_counts_them_all(
    db: asyncpg.Pool,
) -> None:
    async with db.acquire() as conn:
        await assets.import_catalog(conn, assets.parse_yaml(SPRAYED_INVENTORY, source="inventory.yaml"))
    # More hosts and accounts than an analysis carries, each tried once, a shell's command line each;
    # root tried on three hosts. The crown jewel and the domain admin sort last by name.
    tried = [(f"web-{n:03d}", f"user{n:04d}") for n in range(MAX_ANALYSIS_AFFECTED + 60)]
    tried += [(f"web-{n:03d}", "root") for n in range(3)]
    alerts = [
        summarise(
            alert(
                id=f"spray-{n}",
                minutes=n,
                host=host,
                user=account,
                src_ip="45.9.148.7",
                title="sshd: authentication failed",
                description="Failed password",
                labels={"command_line": f"sshd: {account} [priv]"},
            )
        )
        for n, (host, account) in enumerate(tried)
    ]
    data = snapshot(new_alerts=alerts, alert_count=len(alerts), hosts=[], users=[], severity="SEV2")
    [analysed] = await analyse(db, IncidentDetected(source="/vigil/detector", subject="inc-spray", data=data))
    analysis = analysed.data

    assert (analysis.affected_host_count, analysis.affected_user_count) == (260, 261)
    assert len(analysis.affected_hosts) == len(analysis.affected_users) == MAX_ANALYSIS_AFFECTED
    assert "web-259" in analysis.affected_hosts and {"user0259", "root"} <= set(analysis.affected_users)
    assert analysis.observables_by_kind == {"command_line": 261, "user": 261}
    kinds = [o.kind for o in analysis.observables]
    assert kinds == ["command_line"] * MAX_ANALYSIS_OBSERVABLES + ["user"] * MAX_ANALYSIS_OBSERVABLES
    root = next(o for o in analysis.observables if o.kind == "user")
    assert (root.value, root.count) == ("root", 3)  # the most sighted first
    assert analysis.summary.startswith("263 alerts on 260 hosts and 261 users; ")


async def test_a_batch_looks_up_only_the_indicators_its_alerts_name(db: asyncpg.Pool, asked: list[set[Key]]) -> None:
    first = [f"198.51.0.{n}" for n in range(1, 101)]
    await analyse(db, batch("inc-growing", 0, first, created=True))
    assert asked == [{("ipv4", a) for a in first}]

    # Two new addresses and one seen before (its provenance changes): those three, not the other 99.
    second = ["198.51.0.50", "198.51.1.1", "198.51.1.2"]
    [analysis] = await analyse(db, batch("inc-growing", 100, second))
    assert asked[1] == {("ipv4", a) for a in second}
    assert analysis.data.indicator_count == 102
    assert {i.value: i.count for i in analysis.data.indicators}["198.51.0.50"] == 2
    assert await counts_agree(db)


async def test_a_feed_loaded_after_an_analysis_reaches_its_indicators_on_a_later_batch(
    db: asyncpg.Pool, asked: list[set[Key]]
) -> None:
    [first] = await analyse(db, batch("inc-late", 0, ["45.77.12.9", "198.51.0.1"], created=True))
    assert all(i.verdict is None for i in first.data.indicators)

    await load(db, "late-feed", listed("45.77.12.9", "malicious", 85))
    # The next batch names another address: the old ones are looked up again, the feed having changed.
    [later] = await analyse(db, batch("inc-late", 2, ["198.51.0.2"]))
    assert asked[-1] == {("ipv4", "198.51.0.2"), ("ipv4", "45.77.12.9"), ("ipv4", "198.51.0.1")}
    attacker = later.data.indicators[0]
    assert (attacker.value, attacker.verdict, attacker.confidence, attacker.feeds) == (
        "45.77.12.9",
        "malicious",
        85,
        ["late-feed"],
    )
    assert later.data.indicators_by_verdict == {"malicious": 1}

    # Looked up since the feed changed: not again. Loaded again unchanged: nothing changed, nothing asked.
    await analyse(db, batch("inc-late", 3, ["198.51.0.3"]))
    assert asked[-1] == {("ipv4", "198.51.0.3")}
    await load(db, "late-feed", listed("45.77.12.9", "malicious", 85))
    await analyse(db, batch("inc-late", 4, ["198.51.0.4"]))
    assert asked[-1] == {("ipv4", "198.51.0.4")}
    assert await counts_agree(db)


async def outbox_analyses(pool: asyncpg.Pool, subject: str) -> list[IncidentAnalyzed]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = $1 ORDER BY id", SERVICE)
    decoded = [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]
    return [e for e in decoded if isinstance(e, IncidentAnalyzed) and e.subject == subject]


async def test_a_feed_that_comes_to_list_an_indicator_has_its_quiet_incident_analysed_again(
    db: asyncpg.Pool, asked: list[set[Key]]
) -> None:
    [first] = await analyse(db, batch("inc-quiet", 0, ["45.77.9.9", "45.77.9.10"], created=True))
    assert {i.value: i.verdict for i in first.data.indicators}.get("45.77.9.9") in (None, "unknown")
    await analyse(db, batch("inc-other", 0, ["45.77.8.8"], created=True))
    # One that named it too, then was merged into another: its alerts are the survivor's.
    await analyse(db, batch("inc-gone", 0, ["45.77.9.9"], created=True))
    merge = MergeRecord(survivor="inc-other", merged=["inc-gone"], actor="vera", command_id="c-9", alerts=1)
    async with db.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
        await handlers.handle(ctx, [Inbound("e-9", IncidentMerged(source="/t", subject="inc-gone", data=merge), None)])
        await write_context(conn, ctx)
    # The incident goes quiet; then a feed comes to list one of its addresses.
    async with db.acquire() as conn, conn.transaction():
        await intel.load_feed(conn, source="botnets", entries=[listed("45.77.9.9", "malicious", 90)])
        hunted = REGISTRY.get_sample_value("vigil_analyzer_retro_hunts_total") or 0
        # Only the incident that names it: the other is left alone, and so is the one merged away.
        assert await retrohunt.hunt(conn, source="botnets", service=SERVICE) == ["inc-quiet"]
        assert REGISTRY.get_sample_value("vigil_analyzer_retro_hunts_total") == hunted + 1
    poller = TimerPoller(
        service=SERVICE,
        pool=db,
        names=NAMES,
        handlers={retrohunt.RECHECK: handlers.recheck_intel},
        locks={retrohunt.RECHECK: retrohunt.lock_incident},
    )
    before = len(await outbox_analyses(db, "inc-quiet"))
    assert await poller.fire_due() == 1
    *_, again = await outbox_analyses(db, "inc-quiet")
    assert len(await outbox_analyses(db, "inc-quiet")) == before + 1
    verdicts = {i.value: i.verdict for i in again.data.indicators}
    assert verdicts["45.77.9.9"] == "malicious"
    # As its last event left it: the same title, severity and alerts, nothing added.
    assert (again.data.title, again.data.severity, again.data.alert_count) == (
        first.data.title,
        first.data.severity,
        first.data.alert_count,
    )
    # A feed that lists it again, unchanged, changes no verdict: nothing new is published.
    async with db.acquire() as conn, conn.transaction():
        await intel.load_feed(conn, source="botnets", entries=[listed("45.77.9.9", "malicious", 90)])
        await retrohunt.hunt(conn, source="botnets", service=SERVICE)
    await poller.fire_due()
    assert len(await outbox_analyses(db, "inc-quiet")) == before + 1


async def test_vigil_intel_load_says_which_incidents_name_what_the_feed_lists(
    db: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await analyse(db, batch("inc-named", 0, ["45.77.7.7"], created=True))
    feed = tmp_path / "c2.txt"
    feed.write_text("45.77.7.7\n45.77.7.8\n")
    monkeypatch.setenv("DATABASE_URL", database_url)
    loaded = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["intel", "load", str(feed), "--source", "c2", "--format", "list", "--verdict", "malicious"],
    )
    assert loaded.exit_code == 0, loaded.output
    assert "2 entries loaded into c2" in loaded.output
    assert "1 incident(s) name what it lists" in loaded.output and "inc-named" in loaded.output
    due = "SELECT subject FROM timers WHERE kind = $1 AND fired_at IS NULL AND cancelled_at IS NULL"
    assert [r["subject"] for r in await db.fetch(due, retrohunt.RECHECK)] == ["inc-named"]


async def test_a_changed_feed_is_caught_up_over_a_few_batches(
    db: asyncpg.Pool, asked: list[set[Key]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "INTEL_RECHECKS", 5)
    old = [f"45.77.0.{n}" for n in range(1, 13)]
    await analyse(db, batch("inc-caught-up", 0, old, created=True))
    await load(db, "refreshed", *(listed(a, "suspicious", 40) for a in old))

    rechecked: list[set[Key]] = []
    for n in range(4):
        await analyse(db, batch("inc-caught-up", 12 + n, [f"198.51.0.{n + 1}"]))
        rechecked.append(asked[-1] - {("ipv4", f"198.51.0.{n + 1}")})
    # At most five a batch; every old one by the third; none more after.
    assert [len(r) for r in rechecked] == [5, 5, 2, 0]
    assert set().union(*rechecked) == {("ipv4", a) for a in old}
    [verdicts] = await db.fetch(
        "SELECT array_agg(DISTINCT intel_verdict) AS v FROM analyzer_indicators WHERE value LIKE '45.77.%'"
    )
    assert verdicts["v"] == ["suspicious"]


async def test_a_verdict_is_looked_up_again_when_its_feed_expires_and_when_it_counts_again(
    db: asyncpg.Pool, asked: list[set[Key]]
) -> None:
    async with db.acquire() as conn:
        expiry = await conn.fetchval("SELECT now() + interval '1 second'")
        await intel.load_feed(
            conn, source="short-lived", entries=[listed("45.77.12.9", "malicious", 70)], expires_at=expiry
        )
    [first] = await analyse(db, batch("inc-expiry", 0, ["45.77.12.9"], created=True))
    assert first.data.indicators[0].verdict == "malicious"

    # Not loaded again in time: past its expiry, the feed no longer counts.
    await eventually(lambda: db.fetchval("SELECT now() > $1", expiry))
    [lapsed] = await analyse(db, batch("inc-expiry", 1, ["198.51.0.1"]))
    assert ("ipv4", "45.77.12.9") in asked[-1]
    assert {i.value: i.verdict for i in lapsed.data.indicators}["45.77.12.9"] is None

    # Loaded again, the same content: the feed counts again, and the verdict is back on the next batch.
    await load(db, "short-lived", listed("45.77.12.9", "malicious", 70))
    [back] = await analyse(db, batch("inc-expiry", 2, ["198.51.0.2"]))
    assert ("ipv4", "45.77.12.9") in asked[-1]
    assert back.data.indicators[0].value == "45.77.12.9" and back.data.indicators[0].verdict == "malicious"


async def test_detaching_alerts_counts_again_from_the_alerts_kept(db: asyncpg.Pool) -> None:
    await analyse(db, batch("inc-split", 0, ["198.51.0.1", "198.51.0.2", "198.51.0.3"], created=True))
    kept = batch("inc-split", 0, ["198.51.0.1"]).data.model_copy(update={"alert_count": 1})
    record = SplitRecord(new_incident="inc-new", detached=["a", "b"], actor="vera", command_id="c-1", incident=kept)
    split = IncidentSplit(source="/vigil/detector", subject="inc-split", data=record)
    async with db.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
        await handlers.reanalyse_split(ctx, split)
        await write_context(conn, ctx)
    [analysis] = [e for e in ctx.emitted if isinstance(e, IncidentAnalyzed)]
    assert analysis.data.indicator_count == 1 and [i.value for i in analysis.data.indicators] == ["198.51.0.1"]
    assert await counts_agree(db)


async def test_an_incidents_own_detached_or_merged_alerts_never_make_it_a_past_incident_alike(
    db: asyncpg.Pool,
) -> None:
    async def features_of(subject: str) -> set[str]:
        rows = await db.fetch("SELECT kind, value FROM analyzer_incident_features WHERE incident_id = $1", subject)
        return {f"{r['kind']}:{r['value']}" for r in rows}

    await analyse(db, batch("inc-parted", 0, ["198.51.0.1", "198.51.0.2"], created=True))
    assert {"ipv4:198.51.0.1", "ipv4:198.51.0.2"} <= await features_of("inc-parted")
    # The alert naming 198.51.0.2 is detached: the incident no longer has that address to share.
    kept = batch("inc-parted", 0, ["198.51.0.1"]).data.model_copy(update={"alert_count": 1})
    record = SplitRecord(new_incident="inc-new", detached=["a"], actor="vera", command_id="c-1", incident=kept)
    async with db.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
        await handlers.handle(
            ctx, [Inbound("e-1", IncidentSplit(source="/t", subject="inc-parted", data=record), None)]
        )
        await write_context(conn, ctx)
    parted = await features_of("inc-parted")
    assert "ipv4:198.51.0.1" in parted and "ipv4:198.51.0.2" not in parted

    # Merged away, it is the survivor now: nothing of it is left to be found alike.
    merge = MergeRecord(survivor="inc-survivor", merged=["inc-parted"], actor="vera", command_id="c-2", alerts=1)
    async with db.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
        await handlers.handle(
            ctx, [Inbound("e-2", IncidentMerged(source="/t", subject="inc-parted", data=merge), None)]
        )
        await write_context(conn, ctx)
    assert await features_of("inc-parted") == set()


async def test_an_alert_naming_values_longer_than_an_index_holds_is_analysed(db: asyncpg.Pool) -> None:
    """A URL with a 3,000-character token and an account of 1,000 CJK characters (3,000 bytes) fit the raw
    record a summary carries whole, but no btree index: they are left out and the rest analysed."""
    # Random: an index compresses a repetitive value below its bound.
    token = "".join(random.Random(1).choices(string.ascii_letters + string.digits, k=3000))
    url = f"http://evil-cdn.net/login?token={token}"
    name = "".join(chr(0x4E00 + n) for n in range(1000))
    raw = {"http": {"url": url}, "user": {"name": name}, "process": {"name": "curl"}}
    a = summarise(alert(id="long", src_ip="45.77.12.9", description="", raw=raw))
    event = IncidentDetected(source="/vigil/detector", subject="inc-long", data=snapshot(new_alerts=[a]))
    [analysis] = await analyse(db, event)
    named = {(i.kind, i.value) for i in analysis.data.indicators} | {
        (o.kind, o.value) for o in analysis.data.observables
    }
    assert {("domain", "evil-cdn.net"), ("ipv4", "45.77.12.9"), ("process", "curl")} <= named
    assert not {kind for kind, _ in named} & {"url", "user"}
    longest = await db.fetchval("SELECT max(octet_length(value)) FROM analyzer_indicators")
    assert longest < intel.MAX_VALUE_BYTES
    assert await db.fetchval("SELECT count(*) FROM analyzer_incident_features WHERE incident_id = 'inc-long'") > 0
