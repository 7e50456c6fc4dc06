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


def _encode_json(value: object) -> bytes:
    # As for jsonb: bytes are JSON already.
    if isinstance(value, bytes):
        return value
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


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
        encoder=_encode_json,
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
            await compress_with_lz4(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied


# Every column whose large values Postgres compresses (TOAST) and does not compress with lz4 yet.
COLUMNS_NOT_LZ4 = """
    SELECT format('%I.%I', n.nspname, c.relname) AS tab, quote_ident(a.attname) AS col
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname = current_schema() AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attstorage IN ('x', 'm') AND a.attcompression IS DISTINCT FROM 'l'
    ORDER BY 1, 2"""


async def has_lz4(conn: Conn) -> bool:
    """Whether the server was built with lz4 (the embedded one is not)."""
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL default_toast_compression = 'lz4'")
    except asyncpg.InvalidParameterValueError:
        return False
    return True


async def compress_with_lz4(conn: Conn) -> int:
    """Have Postgres compress large values (event bodies, alerts, analyses) with lz4 where it can; return
    the columns changed.

    Postgres's default, pglz, costs two to three times lz4's CPU on the event bodies every service writes
    and stores (a 12 KB body: 78 against 32 µs a row). A server built without lz4 keeps pglz. Run after
    every migration, so that tables added later follow; a column already lz4 is left alone. Values written
    before keep their compression, which Postgres reads either way.
    """
    if not await has_lz4(conn):
        log.debug("this Postgres has no lz4: large values stay compressed with pglz")
        return 0
    columns = await conn.fetch(COLUMNS_NOT_LZ4)
    for row in columns:
        # Names from the catalogue, quoted by Postgres: no parameter can name a column.
        await conn.execute(f"ALTER TABLE {row['tab']} ALTER COLUMN {row['col']} SET COMPRESSION lz4")
    if columns:
        log.info("large values of %d column(s) are compressed with lz4 from now on", len(columns))
    return len(columns)


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def scratch_database(
    admin_url: str, *, prefix: str, migrated: bool = True, template: str | None = None
) -> AsyncIterator[str]:
    """Create a database of its own (for a test or a benchmark) on the admin URL's server; drop it afterwards.

    Yields its URL, with Vigil's migrations applied unless ``migrated`` is false. From a ``template``
    (``migrated_template``), it is a copy of that database, migrated already: a copy takes a fraction
    of the time all the migrations take.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        # Names cannot be parameters: these are made here, of a prefix and hex digits.
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    try:
        if migrated and template is None:
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


@contextlib.asynccontextmanager
async def migrated_template(admin_url: str, *, prefix: str) -> AsyncIterator[str]:
    """A migrated database to copy scratch databases from (``scratch_database(template=...)``); its name.

    Nothing stays connected to it: Postgres copies a database only while no session uses it.
    """
    async with scratch_database(admin_url, prefix=prefix) as url:
        yield urlsplit(url).path.lstrip("/")
