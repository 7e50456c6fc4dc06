"""The audit trail on real Postgres: entries live and die with their transaction, concurrent writers keep one
chain, the table refuses changes, and `vigil audit verify` finds an entry edited, deleted or reordered behind it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from shared import audit
from shared.audit import GENESIS, Entry, export_row, hash_of, iter_entries, record, verify, verify_chain
from shared.db import connect, create_pool
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Details that must read back from jsonb exactly as they were hashed.
DETAILS: list[dict[str, Any]] = [
    {"note": "paged ana — ü, 東京", "hosts": ["web-1", "web-2"], "count": 3, "dry_run": False, "ticket": None},
    {"limit": 2**62, "nested": {"b": [1, {"c": "d"}], "a": True}},
    {},
]


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's migrated database (no broker needed)."""
    pool = await create_pool(database_url, max_size=3)
    yield pool
    await pool.close()


@pytest.fixture
def on_test_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads its settings from the environment: point it at this test's database."""
    monkeypatch.setenv("DATABASE_URL", database_url)


async def vigil(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


def said(result: Result) -> str:
    """What the command printed, its lines joined (the error console wraps at 80 columns)."""
    return " ".join(result.output.split())


async def all_entries(pool: asyncpg.Pool) -> list[Entry]:
    async with pool.acquire() as conn:
        return [entry async for entry in iter_entries(conn)]


async def seed(pool: asyncpg.Pool, n: int) -> None:
    """``n`` entries of the kinds Vigil records, each in its own transaction."""
    kinds = [
        ("coordinator", "ana", "incident.acknowledge", "ok"),
        ("responder", "system:responder", "step.refused_by_guardrail", "refused"),
        ("responder", "system:responder", "approval.timeout", "expired"),
        ("responder", "bob", "step.approve", "ok"),
    ]
    async with pool.acquire() as conn:
        for k in range(n):
            service, principal, action, outcome = kinds[k % len(kinds)]
            async with conn.transaction():
                await record(
                    conn,
                    service=service,
                    principal=principal,
                    action=action,
                    target=f"target-{k + 1}",
                    outcome=outcome,
                    detail=DETAILS[k % len(DETAILS)],
                )


async def tamper(pool: asyncpg.Pool, *statements: str) -> None:
    """Change the table as a superuser would: with its append-only trigger off."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        for statement in statements:
            await conn.execute(statement)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")


class Refused(Exception):
    """The change being recorded fails: its transaction rolls back."""


async def test_an_entry_commits_and_rolls_back_with_the_change_it_records(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await conn.execute("CREATE TABLE paused (reason text)")
        with pytest.raises(Refused):
            async with conn.transaction():
                await conn.execute("INSERT INTO paused VALUES ('drill')")
                assert await record(conn, service="responder", principal="ana", action="response.pause", target="all")
                raise Refused
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 0
        assert await conn.fetchval("SELECT count(*) FROM paused") == 0

        async with conn.transaction():
            await conn.execute("INSERT INTO paused VALUES ('incident')")
            entry_id = await record(
                conn,
                service="responder",
                principal="ana",
                action="response.pause",
                target="all",
                detail={"reason": "incident"},
            )
        assert entry_id == 1  # the rolled-back entry left no hole in the ids

        with pytest.raises(RuntimeError, match="inside the transaction"):
            await record(conn, service="responder", principal="ana", action="response.resume", target="all")

    [entry] = await all_entries(db)
    assert (entry.id, entry.principal, entry.action, entry.target, entry.outcome) == (
        1,
        "ana",
        "response.pause",
        "all",
        "ok",
    )
    assert entry.detail == {"reason": "incident"}
    assert entry.prev_hash == GENESIS
    assert entry.hash == hash_of(entry)
    assert entry.at.tzinfo is not None


async def test_record_refuses_a_snapshot_isolation_where_the_head_could_be_stale(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        for isolation in ("repeatable_read", "serializable"):
            with pytest.raises(asyncpg.FeatureNotSupportedError, match="READ COMMITTED"):
                async with conn.transaction(isolation=isolation):
                    await record(conn, service="s", principal="p", action="a.b", target="t")


async def test_concurrent_writers_on_separate_connections_keep_one_gapless_chain(
    db: asyncpg.Pool, database_url: str
) -> None:
    writers, each = 20, 20

    async def write(w: int) -> list[int]:
        conn = await connect(database_url)
        committed: list[int] = []
        try:
            for n in range(each):
                try:
                    async with conn.transaction():
                        entry_id = await record(
                            conn,
                            service="coordinator",
                            principal=f"writer-{w}",
                            action="incident.note",
                            target=f"{w}-{n}",
                            detail={"n": n},
                        )
                        await asyncio.sleep(0)  # let the others queue on the lock meanwhile
                        if n % 5 == 4:
                            raise Refused
                    committed.append(entry_id)
                except Refused:
                    pass
        finally:
            await conn.close()
        return committed

    ids = await asyncio.wait_for(asyncio.gather(*(write(w) for w in range(writers))), 120)

    kept = writers * (each - each // 5)
    assert sorted(i for per_writer in ids for i in per_writer) == list(range(1, kept + 1))
    async with db.acquire() as conn:
        report = await verify_chain(conn, batch=7)  # paging across many small batches
    assert report.problem is None
    assert (report.entries, report.head_id) == (kept, kept)
    entries = await all_entries(db)
    assert report.head_hash == entries[-1].hash
    for w in range(writers):  # each writer's entries in the order it recorded them
        targets = [e.target for e in entries if e.principal == f"writer-{w}"]
        assert targets == [f"{w}-{n}" for n in range(each) if n % 5 != 4]
    assert [e.at for e in entries] == sorted(e.at for e in entries)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET principal = 'mallory' WHERE id = 2",
        "DELETE FROM audit_log WHERE id = 2",
        "TRUNCATE audit_log",
    ],
)
async def test_the_table_refuses_changes(db: asyncpg.Pool, statement: str) -> None:
    await seed(db, 3)
    before = await all_entries(db)
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="audit_log is append-only"):
            await conn.execute(statement)
    assert await all_entries(db) == before


@pytest.mark.usefixtures("on_test_database")
async def test_verify_says_how_many_entries_and_the_head_of_an_intact_chain(db: asyncpg.Pool) -> None:
    empty = await vigil("audit", "verify")
    assert empty.exit_code == 0, empty.output
    assert said(empty) == "0 entries, chain intact"

    await seed(db, 10)
    head = (await all_entries(db))[-1]
    intact = await vigil("audit", "verify")
    assert intact.exit_code == 0, intact.output
    assert said(intact) == f"10 entries, chain intact; head: entry 10, hash {head.hash}"


@pytest.mark.usefixtures("on_test_database")
@pytest.mark.parametrize(
    ("statements", "message"),
    [
        pytest.param(
            ["UPDATE audit_log SET detail = '{\"count\": 4}' WHERE id = 5"],
            "entry 5 was edited: its hash does not match its content",
            id="edited",
        ),
        pytest.param(
            ["DELETE FROM audit_log WHERE id = 6"],
            "entry 7 does not follow entry 5 in the chain and id 6 is missing: entries were deleted",
            id="deleted",
        ),
        pytest.param(
            [
                "UPDATE audit_log SET id = 1000 WHERE id = 5",
                "UPDATE audit_log SET id = 5 WHERE id = 6",
                "UPDATE audit_log SET id = 6 WHERE id = 1000",
            ],
            "entry 5 follows entry 6 in the chain but comes before it by id: entries were reordered",
            id="reordered",
        ),
    ],
)
async def test_verify_finds_the_entry_tampered_with(db: asyncpg.Pool, statements: list[str], message: str) -> None:
    await seed(db, 10)
    await tamper(db, *statements)

    result = await vigil("audit", "verify")
    assert result.exit_code == 1, result.output
    assert said(result) == f"error: audit trail tampered with: {message}"


@pytest.mark.usefixtures("on_test_database")
async def test_a_chain_rewritten_with_fresh_hashes_fails_against_an_anchor_noted_before(db: asyncpg.Pool) -> None:
    await seed(db, 6)
    anchor = (await all_entries(db))[-1].hash

    entries = await all_entries(db)
    entries[1] = replace(entries[1], principal="mallory")
    statements = []
    for n, entry in enumerate(entries):
        linked = replace(entry, prev_hash=entries[n - 1].hash if n else GENESIS)
        entries[n] = replace(linked, hash=hash_of(linked))
        statements.append(
            f"UPDATE audit_log SET principal = '{entries[n].principal}', prev_hash = '{entries[n].prev_hash}', "
            f"hash = '{entries[n].hash}' WHERE id = {entry.id}"
        )
    # Every prev_hash is unique: move them out of the way first.
    await tamper(db, "UPDATE audit_log SET prev_hash = lpad(to_hex(id), 64, 'f'), hash = lpad(to_hex(id), 64, 'e')")
    await tamper(db, *statements)

    assert (await vigil("audit", "verify")).exit_code == 0  # what an unkeyed hash cannot show by itself
    result = await vigil("audit", "verify", "--anchor", anchor)
    assert result.exit_code == 1, result.output
    assert f"the chain no longer holds the anchor {anchor}" in said(result)


@pytest.mark.usefixtures("on_test_database")
async def test_export_prints_every_field_with_the_hashes_in_jsonl_and_csv(db: asyncpg.Pool) -> None:
    await seed(db, 9)
    entries = await all_entries(db)

    jsonl = await vigil("audit", "export")
    assert jsonl.exit_code == 0, jsonl.output
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert rows == [export_row(e) for e in entries]
    assert rows[0]["detail"] == DETAILS[0]
    # The export can be verified away from the database.
    assert verify(Entry(**{**r, "at": datetime.fromisoformat(r["at"])}) for r in rows) is None

    since, until = entries[3].at.isoformat(), entries[7].at.isoformat()
    window = await vigil("audit", "export", "--since", since, "--until", until)
    assert window.exit_code == 0, window.output
    assert [json.loads(line)["id"] for line in window.stdout.splitlines()] == [4, 5, 6, 7]

    table = await vigil("audit", "export", "--format", "csv", "--since", since)
    assert table.exit_code == 0, table.output
    parsed = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [r["id"] for r in parsed] == ["4", "5", "6", "7", "8", "9"]
    assert list(parsed[0]) == list(export_row(entries[0]))  # the same fields, in the same order
    first = entries[3]
    assert parsed[0]["principal"] == first.principal
    assert parsed[0]["action"] == first.action
    assert parsed[0]["hash"] == first.hash
    assert json.loads(parsed[0]["detail"]) == first.detail
    assert parsed[0]["detail"] == audit.canonical_json(first.detail)

    bad = await vigil("audit", "export", "--format", "xml")
    assert bad.exit_code == 1
    assert "unknown format 'xml'" in said(bad)
