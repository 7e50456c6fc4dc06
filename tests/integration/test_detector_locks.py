"""The detector's correlation-key locks: one detector at a time decides a key, and a batch of any size
takes a bounded number of Postgres' shared lock slots."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.detector import repository
from shared.db import Conn
from tests.helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

FLOOD = [f"host:flood-{n:05d}" for n in range(20_000)]  # an Alertmanager flood on as many hosts


async def _advisory_locks(conn: Conn) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
        )
    )


async def _waiting_on_a_lock(pool: asyncpg.Pool) -> bool:
    return bool(
        await pool.fetchval(
            """SELECT count(*) > 0 FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'"""
        )
    )


async def test_a_batch_of_many_keys_holds_a_bounded_number_of_locks(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await repository.lock_keys(conn, keys=FLOOD)
        assert await _advisory_locks(conn) <= repository.KEY_BUCKETS
    async with pool.acquire() as conn, conn.transaction():
        await repository.lock_keys(conn, keys=FLOOD[:10])
        assert await _advisory_locks(conn) <= 20  # a bucket and a key each


async def test_a_key_a_large_batch_holds_waits_for_it_and_other_keys_do_not_wait_for_each_other(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as flood, pool.acquire() as small, pool.acquire() as other:
        flooding = flood.transaction()
        await flooding.start()
        await repository.lock_keys(flood, keys=FLOOD)
        # A small batch with a key of the flood waits for the flood's commit.
        deciding = small.transaction()
        await deciding.start()
        waiting = asyncio.create_task(repository.lock_keys(small, keys=[FLOOD[7], "host:quiet"]))
        await eventually(lambda: _waiting_on_a_lock(pool))
        assert not waiting.done()
        await flooding.commit()
        await asyncio.wait_for(waiting, 30)
        # Two small batches on different keys go side by side; on the same key, the second waits.
        async with other.transaction():
            await asyncio.wait_for(repository.lock_keys(other, keys=[FLOOD[8]]), 30)
        async with other.transaction():
            same = asyncio.create_task(repository.lock_keys(other, keys=["host:quiet"]))
            await eventually(lambda: _waiting_on_a_lock(pool))
            await deciding.commit()
            await asyncio.wait_for(same, 30)
