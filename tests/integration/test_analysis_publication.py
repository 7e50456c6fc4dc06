"""An incident's analysis under a flood, in the real Postgres with the analyzer's own sweep: the
first version and every urgent change are published at once; versions that differ only in counts,
times and unlisted indicators wait for the incident's publication interval, and only the latest goes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from services.analyzer import forensic, handlers, service
from services.analyzer.feeds import SERVICE
from services.detector.domain import summarise
from shared import cloudevents
from shared.consumer import HandlerContext, Inbound, write_context
from shared.db import create_pool
from shared.events import IncidentAnalyzed, IncidentDetected, IncidentUpdated, Severity
from shared.service import Runtime
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import alert, snapshot
from tests.helpers import eventually, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

NAMES = TopicNames("")
# Long enough that the flood's five batches come within it on a loaded machine too.
INTERVAL = timedelta(seconds=5)


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


def event(n: int, *, created: bool = False, severity: Severity = Severity.SEV3) -> IncidentDetected | IncidentUpdated:
    """The incident's n-th batch: one new alert from a new (unlisted) address, as a flood brings them."""
    new = summarise(alert(id=f"a-{n}", minutes=n, src_ip=f"198.51.100.{n + 1}", description="scan"))
    data = snapshot(new_alerts=[new], alert_count=n + 1, severity=severity)
    kind = IncidentDetected if created else IncidentUpdated
    return kind(source="/vigil/detector", subject="inc-flood", data=data)


async def analyse(pool: asyncpg.Pool, incident_event: IncidentDetected | IncidentUpdated) -> int:
    """Handle the event as the analyzer's consumer does; return how many analyses it published."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
        await handlers.analyse_incident(ctx, incident_event, interval=INTERVAL)
        await write_context(conn, ctx)
    return sum(isinstance(e, IncidentAnalyzed) for e in ctx.emitted)


async def analyses(pool: asyncpg.Pool) -> list[IncidentAnalyzed]:
    found = []
    for row in await pool.fetch("SELECT value, headers FROM outbox ORDER BY id"):
        decoded = cloudevents.decode(row["value"], [(n, v.encode()) for n, v in row["headers"]])
        if isinstance(decoded, IncidentAnalyzed):
            found.append(decoded)
    return found


async def waiting(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT pending_event IS NOT NULL FROM analyzer_incidents"))


@contextlib.asynccontextmanager
async def sweeping(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The analyzer's background task that publishes what waited, as the service runs it."""
    runtime = Runtime(service=SERVICE, settings=VigilSettings(), pool=pool, producer=cast(Any, None), names=NAMES)
    async with running(service.publish_waiting(INTERVAL)(runtime)):
        yield


async def test_a_flood_publishes_the_first_analysis_at_once_and_then_the_latest_once_per_interval(
    db: asyncpg.Pool,
) -> None:
    before = {outcome: _counted(outcome) for outcome in ("published", "deferred", "published_later")}
    assert await analyse(db, event(0, created=True)) == 1
    # Five more batches at once: each changes counts and brings an address no feed lists.
    for n in range(1, 6):
        assert await analyse(db, event(n)) == 0
    assert await waiting(db)  # the latest version, in the incident's row
    published_at = await db.fetchval("SELECT published_at FROM analyzer_incidents")

    async with sweeping(db):
        await eventually(lambda: _count(db, 2))
    # Not before the interval since the first publication ended.
    assert await db.fetchval("SELECT max(created_at) FROM outbox") >= published_at + INTERVAL
    first, latest = await analyses(db)
    counted = {outcome: _counted(outcome) - n for outcome, n in before.items()}
    assert counted == {"published": 1, "deferred": 5, "published_later": 1}
    assert (first.data.alert_count, latest.data.alert_count) == (1, 6)  # the latest version, not each
    assert len(latest.data.indicators) == 6
    assert await db.fetchval("SELECT pending_event FROM analyzer_incidents") is None

    # Published once: with the sweep running on, nothing more is.
    async with sweeping(db):
        await asyncio.sleep(0.5)
    assert len(await analyses(db)) == 2


async def test_an_urgent_change_goes_at_once_and_voids_the_waiting_version(db: asyncpg.Pool) -> None:
    assert await analyse(db, event(0, created=True)) == 1
    assert await analyse(db, event(1)) == 0
    assert await waiting(db)
    # The detector raised the severity: the commander hears of it now, with everything gathered so far.
    assert await analyse(db, event(2, severity=Severity.SEV1)) == 1
    assert not await waiting(db)
    urgent = (await analyses(db))[-1]
    assert (urgent.data.severity, urgent.data.alert_count) == (Severity.SEV1, 3)
    # The same inputs once more publish nothing, and wait for nothing.
    assert await analyse(db, event(2, severity=Severity.SEV1)) == 0
    assert not await waiting(db)
    async with sweeping(db):  # and nothing waited to go later
        await asyncio.sleep(INTERVAL.total_seconds() + 0.5)
    assert len(await analyses(db)) == 2


async def _count(pool: asyncpg.Pool, n: int) -> bool:
    return len(await analyses(pool)) >= n


async def test_an_incidents_events_in_one_batch_are_analysed_once(db: asyncpg.Pool) -> None:
    handle = handlers.handler(forensic.Noise())
    batch = [event(0, created=True), *(event(n) for n in range(1, 5))]
    other = IncidentUpdated(
        source="/vigil/detector",
        subject="inc-other",
        data=snapshot(new_alerts=[summarise(alert(id="b-1", src_ip="198.51.100.200"))]),
    )
    async with db.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service=SERVICE, names=NAMES)
        await handle(ctx, [Inbound(e.id, e, None) for e in [*batch[:3], other, *batch[3:]]])
        await write_context(conn, ctx)
    published = {e.subject: e for e in ctx.emitted if isinstance(e, IncidentAnalyzed)}
    assert len(ctx.emitted) == 2 and set(published) == {"inc-flood", "inc-other"}
    flood = published["inc-flood"]
    # Every alert of the five events, in one analysis caused by the last of them.
    assert flood.data.alert_count == 5 and len(flood.data.indicators) == 5
    assert flood.causationid == batch[-1].id
    stored = await db.fetchval("SELECT count(*) FROM analyzer_alerts WHERE incident_id = 'inc-flood'")
    assert stored == 5


def _counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("vigil_analyzer_analyses_total", {"outcome": outcome}) or 0.0
