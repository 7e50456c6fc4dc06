"""Postgres plumbing: the connection pool and versioned migrations applied under an advisory lock."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # What repository functions take: a plain connection or one borrowed from the pool.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.Connection

log = logging.getLogger(__name__)

# Any fixed number works; every Vigil process agrees on it so only one migrates at a time.
MIGRATION_LOCK_ID = 0x56494749  # "VIGI"


def _encode_jsonb(value: object) -> bytes:
    # bytes are JSON already (e.g. a pydantic model_dump_json()): no second serialisation.
    if isinstance(value, bytes):
        return b"\x01" + value
    return b"\x01" + orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _decode_jsonb(data: bytes) -> object:
    return _loads(data[1:])  # first byte: jsonb format version


def _loads(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # what orjson refuses but JSON allows: integers beyond 64 bits


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary codecs, so that COPY (binary only) can write JSON columns too.
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS),
        decoder=_loads,
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release a pooled connection as it is: nothing Vigil does on one outlives its transaction.

    Session state (LISTEN, a session advisory lock held for long) lives on connections of its own
    (``connect``), and the one session lock taken on a pooled connection, the migrations', is released
    before the connection goes back. asyncpg's default reset (unlock all, CLOSE ALL, UNLISTEN *, RESET ALL)
    would be a round trip on every release for nothing; a transaction left open is still rolled back
    before this runs. ``tests/unit/test_pooled_sessions.py`` keeps the rule.
    """


async def create_pool(database_url: str, *, max_size: int = 5, **kwargs: Any) -> asyncpg.Pool:
    """Open a pool whose connections read and write JSON columns as Python objects."""
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=max_size, init=_init_connection, reset=_keep_session, **kwargs
    )
    assert pool is not None
    return pool


async def connect(database_url: str, **kwargs: Any) -> asyncpg.Connection:
    """Open one connection outside any pool, with the pool's JSON codecs (for long-lived roles)."""
    conn: asyncpg.Connection = await asyncpg.connect(database_url, **kwargs)
    try:
        await _init_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


def migration_files() -> list[tuple[int, str, str]]:
    """Return (version, name, sql) for every migration shipped with Vigil, in order."""
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the migrations this database lacks, one transaction each; return the names applied."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                applied.append(name)
                log.info("applied migration %s", name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, *, prefix: str, migrated: bool = True) -> AsyncIterator[str]:
    """Create a database of its own (for a test or a benchmark) on the admin URL's server; drop it afterwards.

    Yields its URL, with Vigil's migrations applied unless ``migrated`` is false.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    try:
        if migrated:
            pool = await create_pool(url, max_size=1)
            try:
                await migrate(pool)
            finally:
                await pool.close()
        yield url
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
