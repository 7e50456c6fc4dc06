"""New response steps stored in one statement, a column an array: in order, typed as their table, each logged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio

from services.responder import repository as responder
from shared.db import connect

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(loop_scope="session")
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    yield conn
    await conn.close()


def _step(n: int, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": f"INC-1:s{n}",
        "incident_id": "INC-1",
        "plan_id": "P-1",
        "playbook": "pb",
        "step": f"s{n}",
        "position": n,
        "item": None,
        "target_kind": None,
        "name": f"step {n}",
        "phase": "containment",
        "response": "isolate",
        "connector": "webhook",
        "action": "post",
        "params": {"n": n},
        "undo": None,
        "lease_s": None,
        "timeout_s": 30,
        "retries": 1,
        "on_failure": "continue",
        "risk": "low",
        "dry_run": False,
        "state": "planned",
        "approval": "none",
        "owner": None,
        "due_at": None,
        "required": True,
        "recovery": None,
    }
    return row | overrides


async def test_the_types_a_new_step_is_stored_with_are_its_columns_types(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
           WHERE attrelid = 'responder_steps'::regclass AND attnum > 0 AND NOT attisdropped"""
    )
    types: dict[str, str] = {row[0]: row[1] for row in rows}
    expected = {"timestamptz": "timestamp with time zone"}
    assert {c: expected.get(t, t) for c, t in responder.NEW_STEP_TYPES.items()} == {
        c: types[c] for c in responder.NEW_STEP_TYPES
    }


async def test_new_steps_come_back_in_the_order_given_each_logged_once(conn: asyncpg.Connection) -> None:
    due = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    new = [
        responder.NewStep(_step(3, params={"hosts": [["a", "b"], ["c"]]}, undo={"x": [1]}), reason="r3", final=False),
        responder.NewStep(_step(1, state="refused", due_at=due, owner="ops"), reason="no target", final=True),
        responder.NewStep(_step(2, item="10.0.0.1", lease_s=60), reason="r2", final=False),
    ]
    rows = await responder.insert_steps(conn, new, actor="planner")
    assert [r["id"] for r in rows] == ["INC-1:s3", "INC-1:s1", "INC-1:s2"]
    first, refused, leased = rows
    assert first["params"] == {"hosts": [["a", "b"], ["c"]]} and first["undo"] == {"x": [1]}
    assert first["finished_at"] is None and first["reason"] == "r3"
    assert refused["state"] == "refused" and refused["finished_at"] is not None
    assert refused["due_at"] == due and refused["owner"] == "ops"
    assert leased["item"] == "10.0.0.1" and leased["lease_s"] == 60
    log = await conn.fetch("SELECT step_id, from_state, to_state, actor, reason FROM responder_step_log ORDER BY id")
    assert [tuple(r) for r in log] == [
        ("INC-1:s3", None, "planned", "planner", "r3"),
        ("INC-1:s1", None, "refused", "planner", "no target"),
        ("INC-1:s2", None, "planned", "planner", "r2"),
    ]


async def test_a_step_set_with_columns_of_its_own_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="columns differ"):
        await responder.insert_steps(
            conn,
            [
                responder.NewStep(_step(1), reason="", final=False),
                responder.NewStep({"id": "x"}, reason="", final=False),
            ],
            actor="planner",
        )
