"""Migrations: five processes starting at once on a fresh database apply each migration once."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import asyncpg
import pytest

from shared.db import COLUMNS_NOT_LZ4, compress_with_lz4, create_pool, has_lz4, migrate, migration_files
from tests.helpers import empty_database

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 5

# One Vigil process starting up: connect, wait for the word, migrate, print what it applied.
MIGRATING_PROCESS = """
import asyncio, json, sys

from shared.db import create_pool, migrate


async def main(url):
    pool = await create_pool(url, max_size=1)
    try:
        print("connected", flush=True)
        sys.stdin.readline()
        print(json.dumps(await migrate(pool)), flush=True)
    finally:
        await pool.close()


asyncio.run(main(sys.argv[1]))
"""


async def test_five_processes_migrating_a_fresh_database_at_once_apply_each_migration_once(
    postgres_admin_url: str, database_url: str
) -> None:
    migrations = migration_files()
    async with empty_database(postgres_admin_url) as url:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                MIGRATING_PROCESS,
                url,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(PROCESSES)
        ]
        try:
            # Every process is connected before any starts, so that their migrations overlap.
            for process in processes:
                assert process.stdout is not None
                if await process.stdout.readline() != b"connected\n":
                    _, err = await process.communicate()
                    raise AssertionError(f"a migrating process did not connect:\n{err.decode()}")
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
                process.stdin.close()
            outputs = await asyncio.gather(*(process.communicate() for process in processes))
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

        failed = [err.decode() for process, (_, err) in zip(processes, outputs, strict=True) if process.returncode]
        assert not failed, "\n\n".join(failed)
        applied = [name for out, _ in outputs for name in json.loads(out.decode().splitlines()[-1])]
        assert sorted(applied) == [name for _, name, _ in migrations]  # each by exactly one process

        conn = await asyncpg.connect(url)
        try:
            recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
            concurrent = await schema(conn)
        finally:
            await conn.close()
    assert [(r["version"], r["name"]) for r in recorded] == [(version, name) for version, name, _ in migrations]

    created = {t for _, _, sql in migrations for t in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", sql)}
    assert created and created <= {table for table, *_ in concurrent["columns"]}
    # The same schema as one process migrating alone (the fixture's database).
    reference = await asyncpg.connect(database_url)
    try:
        assert concurrent == await schema(reference)
    finally:
        await reference.close()


async def schema(conn: asyncpg.Connection) -> dict[str, set[tuple[str, ...]]]:
    """Tables and columns, indexes and constraints of the public schema, comparable across databases."""
    columns = await conn.fetch(
        """SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
           FROM information_schema.columns WHERE table_schema = 'public'"""
    )
    indexes = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    constraints = await conn.fetch(
        """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace"""
    )
    return {
        "columns": {tuple(r) for r in columns},
        "indexes": {tuple(r) for r in indexes},
        "constraints": {tuple(r) for r in constraints},
    }


async def test_upgrading_records_the_incidents_that_ended_before_for_the_responder(postgres_admin_url: str) -> None:
    """The coordination topic may no longer hold the moves that ended older incidents: the migration reads them."""
    async with empty_database(postgres_admin_url) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, sql in migration_files():
                if version < 39:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
            for incident, state, resolved in (
                ("inc-open", "investigating", None),
                ("inc-resolved", "resolved", "2026-11-01T10:00:00Z"),
                ("inc-closed", "closed", "2026-11-02T10:00:00Z"),
            ):
                await conn.execute(
                    """INSERT INTO coordinator_incidents (incident_id, state, severity, type, title, commander,
                           rotation, escalation, detected_at, resolved_at)
                       VALUES ($1, $2, 'SEV2', 'system_compromise', 't', 'alice', 'sec', '{}', now(),
                               $3::text::timestamptz)""",
                    incident,
                    state,
                    resolved,
                )
        finally:
            await conn.close()
        pool = await create_pool(url, max_size=1)
        try:
            assert (await migrate(pool))[0] == "0039_responder_ended.sql"
            rows = await pool.fetch("SELECT incident_id, state FROM responder_ended ORDER BY incident_id")
        finally:
            await pool.close()
    assert [tuple(r) for r in rows] == [("inc-closed", "closed"), ("inc-resolved", "resolved")]


async def test_large_values_are_compressed_with_lz4_where_postgres_has_it(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        if not await has_lz4(conn):
            pytest.skip("this Postgres is built without lz4 (the embedded one is): see the test beside this one")
        assert await conn.fetch(COLUMNS_NOT_LZ4) == [], "every compressible column compresses with lz4 after migrating"
        assert await compress_with_lz4(conn) == 0  # nothing left to change: a second run alters nothing
        # A large event body as the outbox keeps it: compressed, with lz4.
        body = json.dumps({"new_alerts": [{"title": f"alert {i}", "description": "x" * 50} for i in range(200)]})
        row_id = await conn.fetchval(
            """INSERT INTO outbox (service, topic, key, value, headers, event_id)
               VALUES ('t', 't', 'k', $1, '[]', 'lz4-check') RETURNING id""",
            body.encode(),
        )
        assert await conn.fetchval("SELECT pg_column_compression(value) FROM outbox WHERE id = $1", row_id) == "lz4"


async def test_without_lz4_large_values_keep_postgres_default_and_migrating_still_works(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        if await has_lz4(conn):
            pytest.skip("this Postgres has lz4: the test beside this one checks it is used")
        before = await conn.fetch(COLUMNS_NOT_LZ4)
        assert await compress_with_lz4(conn) == 0
        assert await conn.fetch(COLUMNS_NOT_LZ4) == before
        assert any(row["tab"].endswith(".outbox") and row["col"] == "value" for row in before)
