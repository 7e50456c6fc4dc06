"""Keeps the planner's statistics of tables that grow fast current, so that the plans made on them hold.

A statement a service runs again and again is planned once for all (a generic plan), on what the
planner knows of its tables, and the plan is kept until that changes. Autovacuum analyses a table
once a tenth of it has changed, but only when it next visits, up to a minute later
(``autovacuum_naptime``). On a new database, a plan made while a table was nearly empty reads it
whole, however large it has grown meanwhile: counting a batch's repeats read every stored alert,
2.6 ms a batch at 1,000 alerts/s instead of 0.2. So every service looks every few seconds and
analyses the tables it may that hold at least twice the rows they held when last analysed; the new
statistics make Postgres plan the statements again. Past a few thousand rows a table doubles more
slowly than autovacuum visits, and this has nothing left to do.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from shared.errors import is_retriable

log = logging.getLogger(__name__)

# A table is analysed once it holds this many rows and twice those it held when last analysed.
MIN_ROWS = 500
GROWTH = 2.0
EVERY_S = 2.0
# Every service agrees on it: one of them analyses a table at a time, the others skip it.
ANALYZE_LOCK_ID = 0x56494741  # "VIGA"
# Autovacuum may be analysing the table: then it is left to it, not waited for.
LOCK_TIMEOUT = "100ms"

# The tables of the service's schemas that it may analyse (it owns them), grown since last analysed
# (reltuples is -1 for a table never analysed; n_live_tup counts every row committed, whoever wrote it),
# with their indexed columns: what a plan's choice between reading the table and reading an index
# depends on, besides the table's size. The other columns (long text, JSON) would cost most of the
# time, and a plan reads nothing of them; autovacuum analyses them when it comes.
GROWN = """SELECT c.oid::int AS oid, format('%I.%I', n.nspname, c.relname) AS name,
                  (SELECT string_agg(DISTINCT quote_ident(a.attname), ', ')
                   FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                   WHERE i.indrelid = c.oid) AS columns
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_stat_user_tables s ON s.relid = c.oid
           WHERE n.nspname = ANY (current_schemas(false)) AND pg_has_role(c.relowner, 'USAGE')
             AND s.n_live_tup >= greatest($1::float8, $2::float8 * c.reltuples)
           ORDER BY s.n_live_tup DESC"""


async def analyze_grown(pool: asyncpg.Pool, *, min_rows: int = MIN_ROWS, growth: float = GROWTH) -> list[str]:
    """Analyse the tables that have grown ``growth`` times since last analysed (and hold ``min_rows``);
    return their names. A table another Vigil process or autovacuum is analysing is skipped."""
    analysed: list[str] = []
    async with pool.acquire() as conn:
        grown = await conn.fetch(GROWN, min_rows, growth)
        for row in grown:
            try:
                async with conn.transaction():
                    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", ANALYZE_LOCK_ID, row["oid"]):
                        continue
                    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    # Names cannot be parameters; these are the catalog's, quoted by Postgres (%I, quote_ident).
                    columns = f" ({row['columns']})" if row["columns"] else ""
                    await conn.execute(f"ANALYZE {row['name']}{columns}")
            except asyncpg.LockNotAvailableError:
                continue
            analysed.append(row["name"])
    return analysed


async def run(pool: asyncpg.Pool, *, every_s: float = EVERY_S) -> None:
    """Analyse grown tables every few seconds until cancelled; a database outage only delays it."""
    while True:
        try:
            if analysed := await analyze_grown(pool):
                log.debug("analysed %s, grown since last analysed", ", ".join(analysed))
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("analysing grown tables postponed: %r", exc)
        await asyncio.sleep(every_s)
