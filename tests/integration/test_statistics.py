"""Tables that grow fast from empty are analysed as they grow, so that the plans made on them hold (real Postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from shared import statistics
from shared.db import create_pool

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=3)
    yield pool
    await pool.close()


async def analysed_once_grown(pool: asyncpg.Pool, table: str, *, seconds: float = 15.0) -> list[str]:
    """Run the analysis until it takes ``table``: a session's row counts reach the statistics within a second
    or so of its commit. Returns every table analysed in that pass."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        analysed = await statistics.analyze_grown(pool)
        if table in analysed or asyncio.get_running_loop().time() > deadline:
            return analysed
        await asyncio.sleep(0.2)


async def counted(pool: asyncpg.Pool, table: str, *, changes: int, seconds: float = 15.0) -> None:
    """Wait until the statistics count ``changes`` rows inserted and deleted in ``table``."""
    deadline = asyncio.get_running_loop().time() + seconds
    query = "SELECT n_tup_ins + n_tup_del FROM pg_stat_user_tables WHERE relname = $1"
    while (await pool.fetchval(query, table) or 0) < changes:
        assert asyncio.get_running_loop().time() < deadline, f"the statistics never counted {changes} rows of {table}"
        await asyncio.sleep(0.2)


async def flush_counts(conn: asyncpg.Connection) -> None:
    """Have the session's row counts reach the statistics now: an idle session sends them 10 s later."""
    if conn.get_server_version() >= (15, 0):
        await conn.execute("SELECT pg_stat_force_next_flush()")


async def plan_of(conn: asyncpg.Connection, statement: str) -> str:
    return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE {statement}"))


async def test_a_plan_made_on_a_nearly_empty_table_reads_by_index_once_the_grown_table_is_analysed(
    db: asyncpg.Pool, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            # Autovacuum would analyse it too, at a moment of its own: here only the analysis under test does.
            """CREATE TABLE sightings (key text PRIMARY KEY, repeats int NOT NULL DEFAULT 0)
               WITH (autovacuum_enabled = false)"""
        )
        await conn.execute("INSERT INTO sightings (key) SELECT 'k' || n FROM generate_series(1, 10) AS n")
        # As a statement run again and again is planned (a generic plan), on the table as it is now.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(
            """PREPARE repeats_of(text[]) AS
               SELECT s.key, s.repeats FROM sightings s JOIN unnest($1) AS c(key) ON s.key = c.key"""
        )
        assert "Seq Scan on sightings" in await plan_of(conn, "repeats_of('{k1}')")

        await conn.execute("INSERT INTO sightings (key) SELECT 'k' || n FROM generate_series(11, 50000) AS n")
        await flush_counts(conn)
        assert "Seq Scan on sightings" in await plan_of(conn, "repeats_of('{k1}')"), "the plan is kept as made"

        assert "public.sightings" in await analysed_once_grown(db, "public.sightings")
        assert await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'sightings'") >= 40_000
        plan = await plan_of(conn, "repeats_of('{k1}')")  # the same prepared statement, planned again
        assert "Index" in plan and "Seq Scan" not in plan, plan
    finally:
        await conn.close()


async def test_a_table_whose_size_holds_is_not_analysed_again_however_many_rows_come_and_go(
    db: asyncpg.Pool,
) -> None:
    await db.execute(
        "CREATE TABLE waiting_room (id bigserial PRIMARY KEY, body text) WITH (autovacuum_enabled = false)"
    )
    await db.execute("INSERT INTO waiting_room (body) SELECT 'x' FROM generate_series(1, 1000)")
    assert "public.waiting_room" in await analysed_once_grown(db, "public.waiting_room")

    for _ in range(10):  # ten times its size in and out: it holds 1,000 rows throughout
        await db.execute(
            """WITH gone AS (DELETE FROM waiting_room WHERE id IN (SELECT id FROM waiting_room LIMIT 1000) RETURNING 1)
               INSERT INTO waiting_room (body) SELECT 'y' FROM gone"""
        )
    await counted(db, "waiting_room", changes=21_000)
    assert "public.waiting_room" not in await statistics.analyze_grown(db)


async def test_a_table_another_process_is_analysing_is_left_to_it(db: asyncpg.Pool, database_url: str) -> None:
    await db.execute("CREATE TABLE busy (id int PRIMARY KEY) WITH (autovacuum_enabled = false)")
    await db.execute("INSERT INTO busy SELECT generate_series(1, 1000)")
    oid = await db.fetchval("SELECT 'busy'::regclass::oid::int")
    await counted(db, "busy", changes=1000)
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1, $2)", statistics.ANALYZE_LOCK_ID, oid)
        assert "public.busy" not in await statistics.analyze_grown(db)
        await other.execute("SELECT pg_advisory_unlock($1, $2)", statistics.ANALYZE_LOCK_ID, oid)
        assert "public.busy" in await statistics.analyze_grown(db)
    finally:
        await other.close()


async def test_a_table_autovacuum_is_analysing_is_not_waited_for(db: asyncpg.Pool, database_url: str) -> None:
    await db.execute("CREATE TABLE visited (id int PRIMARY KEY) WITH (autovacuum_enabled = false)")
    await db.execute("INSERT INTO visited SELECT generate_series(1, 1000)")
    await counted(db, "visited", changes=1000)
    other = await asyncpg.connect(database_url)
    try:
        # The lock ANALYZE takes, as autovacuum (or a person) analysing it would hold it.
        async with other.transaction():
            await other.execute("LOCK TABLE visited IN SHARE UPDATE EXCLUSIVE MODE")
            started = asyncio.get_running_loop().time()
            assert "public.visited" not in await statistics.analyze_grown(db)
            assert asyncio.get_running_loop().time() - started < 5, "it waited for the lock"
        assert "public.visited" in await statistics.analyze_grown(db)
    finally:
        await other.close()
