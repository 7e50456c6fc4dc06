"""An open incident's new alerts under a flood, in the real Postgres: its first event goes out at once;
alerts that come within its update interval wait in Postgres and go out together, in order, when it ends;
a change of severity, a repeat of a stored alert, a merge and the incident's end each publish what waits
first, so that its events still say its alerts in the order they came."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.detector import commands
from services.detector.handlers import Detector
from shared.alerts import Alert
from shared.consumer import HandlerContext, Inbound, write_context
from shared.events import (
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentState,
    IncidentStateChanged,
    IncidentUpdated,
    MergeArgs,
    MergeIncidents,
    Severity,
    StateChange,
)
from shared.topics import TopicNames
from tests.factories import alert
from tests.helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

# Long enough that a test's batches all come within it on a loaded machine.
INTERVAL = timedelta(seconds=4)


def detector() -> Detector:
    return Detector(correlation_window=timedelta(minutes=30), update_interval=INTERVAL)


async def handle(pool: asyncpg.Pool, names: TopicNames, alerts: Sequence[Alert]) -> list[Any]:
    """One batch, as the detector's consumer handles it; the events it published."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="detector", names=names)
        await detector().handle_alerts(ctx, list(alerts))
        await write_context(conn, ctx)
    return list(ctx.emitted)


async def sweep(pool: asyncpg.Pool, names: TopicNames) -> list[Any]:
    """One pass of the detector's sweep; the events it published."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="detector", names=names)
        await detector().publish_held(ctx, 100)
        await write_context(conn, ctx)
    return list(ctx.emitted)


def keys(event: IncidentUpdated) -> list[str]:
    return [a.key for a in event.data.new_alerts]


def scan(n: int, severity: str = "medium") -> Alert:
    return alert(id=f"scan-{n}", host="web-01", minutes=n, severity=severity, title="Port scan")


def _counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("vigil_detector_incident_updates_total", {"outcome": outcome}) or 0.0


async def test_alerts_within_the_interval_wait_and_go_out_together_in_order_when_it_ends(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    before = {o: _counted(o) for o in ("held", "published_later")}
    [detected] = await handle(pool, names, [scan(0)])
    assert isinstance(detected, IncidentDetected)
    assert await handle(pool, names, [scan(1)]) == []
    assert await handle(pool, names, [scan(2), scan(3)]) == []
    assert await pool.fetchval("SELECT count(*) FROM detector_held_alerts") == 2  # one row a batch
    assert await sweep(pool, names) == []  # the interval has not ended

    published: list[Any] = []

    async def swept() -> bool:
        published.extend(await sweep(pool, names))
        return bool(published)

    await eventually(swept, timeout=INTERVAL.total_seconds() + 10)
    [update] = published
    assert isinstance(update, IncidentUpdated) and update.subject == detected.subject
    assert keys(update) == [scan(1).key, scan(2).key, scan(3).key]
    assert update.data.alert_count == 4 and (update.data.part, update.data.parts) == (1, 1)
    published_at = await pool.fetchval("SELECT published_at FROM detector_incidents")
    created_at = await pool.fetchval("SELECT created_at FROM detector_incidents")
    assert published_at - created_at >= INTERVAL
    assert await pool.fetchval("SELECT count(*) FROM detector_held_alerts") == 0
    assert await sweep(pool, names) == []  # nothing twice
    assert (_counted("held") - before["held"], _counted("published_later") - before["published_later"]) == (2, 1)


async def test_a_raised_severity_goes_out_at_once_with_what_waited_before_it(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    [detected] = await handle(pool, names, [scan(0)])
    assert await handle(pool, names, [scan(1)]) == []
    [update] = await handle(pool, names, [scan(2, severity="critical")])
    assert isinstance(update, IncidentUpdated)
    assert keys(update) == [scan(1).key, scan(2).key]
    assert update.data.severity == Severity.SEV1 != detected.data.severity
    assert await pool.fetchval("SELECT count(*) FROM detector_held_alerts") == 0
    assert await handle(pool, names, [scan(3, severity="critical")]) == []  # the same severity again waits


async def test_a_repeat_of_a_stored_alert_comes_after_the_alerts_that_waited(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    await handle(pool, names, [scan(0)])
    assert await handle(pool, names, [scan(1)]) == []
    update, changed = await handle(pool, names, [scan(1)])  # sent again: a repeat of the one that waits
    assert isinstance(update, IncidentUpdated) and keys(update) == [scan(1).key]
    assert isinstance(changed, IncidentAlertsChanged)
    assert [r.key for r in changed.data.repeated] == [scan(1).key]


async def test_the_incidents_end_and_a_merge_publish_what_waits_first(pool: asyncpg.Pool, names: TopicNames) -> None:
    [first] = await handle(pool, names, [scan(0)])
    [second] = await handle(pool, names, [alert(id="db-0", host="db-01", title="Port scan")])
    db_1 = alert(id="db-1", host="db-01", minutes=1, title="Port scan")
    assert await handle(pool, names, [scan(1), db_1]) == []

    merge = MergeIncidents(
        source="/vigil/cli", subject=first.subject, data=MergeArgs(actor="carol", incidents=[second.subject])
    )
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="detector", names=names)
        await commands.apply(ctx, merge)
        await write_context(conn, ctx)
    held_updates = [e for e in ctx.emitted if isinstance(e, IncidentUpdated) and e.correlationid is None][:2]
    assert sorted((e.subject, *keys(e)) for e in held_updates) == sorted(
        [(first.subject, scan(1).key), (second.subject, db_1.key)]
    )
    # Both before anything the merge says.
    assert ctx.emitted.index(held_updates[-1]) < min(
        i for i, e in enumerate(ctx.emitted) if e not in held_updates and not isinstance(e, MergeIncidents)
    )

    assert await handle(pool, names, [scan(2)]) == []  # the survivor's next alerts wait again
    ended = IncidentStateChanged(
        source="/vigil/coordinator",
        subject=first.subject,
        data=StateChange(from_state=IncidentState.DETECTED, to_state=IncidentState.RESOLVED, actor="erin"),
    )
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="detector", names=names)
        await detector().handle(ctx, [Inbound(ended.id, ended, None)])
        await write_context(conn, ctx)
    [last] = ctx.emitted
    assert isinstance(last, IncidentUpdated) and keys(last) == [scan(2).key]
    assert await pool.fetchval("SELECT closed FROM detector_incidents WHERE id = $1", first.subject)
    assert await pool.fetchval("SELECT count(*) FROM detector_held_alerts") == 0
