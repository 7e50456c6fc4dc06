"""The SQL of the responder's steps and their log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import Conn

STEP_COLUMNS = (
    "id, incident_id, plan_id, playbook, step, position, item, target_kind, name, phase, response, connector, "
    "action, params, undo, lease_s, timeout_s, retries, on_failure, risk, approval, dry_run, state, reason, "
    "policy_rule, approvals_required, approver_roles, approval_deadline, on_timeout, approvals, sent, result, "
    "dispatched_at, finished_at, created_at, updated_at"
)


async def current_plan(conn: Conn, incident_id: str) -> asyncpg.Record | None:
    """The incident's current plan, locked: one handler at a time changes an incident's response."""
    return await conn.fetchrow(
        """SELECT id, playbook, severity FROM responder_plans
           WHERE incident_id = $1 AND superseded_at IS NULL FOR UPDATE""",
        incident_id,
    )


async def lock_incident(conn: Conn, incident_id: str) -> None:
    """Serialise the changes to one incident's steps (plans, approvals, outcomes, timers)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('responder:' || $1, 0))", incident_id)


async def steps_of(conn: Conn, incident_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {STEP_COLUMNS} FROM responder_steps WHERE incident_id = $1 ORDER BY position, id", incident_id
    )


async def step(conn: Conn, step_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {STEP_COLUMNS} FROM responder_steps WHERE id = $1", step_id)


async def steps_like(conn: Conn, prefix: str) -> list[asyncpg.Record]:
    """A step by its id, or every expansion of one playbook step (`<incident>:<step>`)."""
    return await conn.fetch(
        f"""SELECT {STEP_COLUMNS} FROM responder_steps
            WHERE id = $1 OR (starts_with(id, $1 || ':') AND item IS NOT NULL)
            ORDER BY position, id""",
        prefix,
    )


async def insert_step(conn: Conn, row: dict[str, Any]) -> None:
    columns = list(row)
    placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    await conn.execute(
        f"INSERT INTO responder_steps ({', '.join(columns)}) VALUES ({placeholders})",
        *row.values(),
    )


async def keep_in_plan(conn: Conn, step_id: str, *, plan_id: str, position: int) -> None:
    await conn.execute(
        "UPDATE responder_steps SET plan_id = $2, position = $3, updated_at = now() WHERE id = $1",
        step_id,
        plan_id,
        position,
    )


async def set_approval_terms(
    conn: Conn,
    step_id: str,
    *,
    rule: str,
    required: int,
    roles: Sequence[str],
    deadline: datetime | None,
    on_timeout: str | None,
) -> None:
    await conn.execute(
        """UPDATE responder_steps
           SET policy_rule = $2, approvals_required = $3, approver_roles = $4, approval_deadline = $5,
               on_timeout = $6, updated_at = now()
           WHERE id = $1""",
        step_id,
        rule,
        required,
        list(roles),
        deadline,
        on_timeout,
    )


async def set_state(
    conn: Conn,
    step_id: str,
    *,
    incident_id: str,
    from_state: str | None,
    to_state: str,
    actor: str,
    reason: str,
    sent: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    dispatched: bool = False,
    final: bool = False,
) -> None:
    """Change a step's state and log who or what changed it and why, in the caller's transaction."""
    await conn.execute(
        """UPDATE responder_steps
           SET state = $2, reason = $3, sent = coalesce($4, sent), result = coalesce($5, result),
               dispatched_at = CASE WHEN $6 THEN now() ELSE dispatched_at END,
               finished_at = CASE WHEN $7 THEN now() ELSE finished_at END,
               updated_at = now()
           WHERE id = $1""",
        step_id,
        to_state,
        reason,
        sent,
        result,
        dispatched,
        final,
    )
    await conn.execute(
        """INSERT INTO responder_step_log (step_id, incident_id, from_state, to_state, actor, reason)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        step_id,
        incident_id,
        from_state,
        to_state,
        actor,
        reason,
    )


async def add_approval(conn: Conn, step_id: str, approval: dict[str, Any]) -> list[dict[str, Any]]:
    given: list[dict[str, Any]] = await conn.fetchval(
        """UPDATE responder_steps SET approvals = approvals || jsonb_build_array($2::jsonb), updated_at = now()
           WHERE id = $1 RETURNING approvals""",
        step_id,
        approval,
    )
    return given


async def recent_dispatches(conn: Conn, *, since: datetime) -> list[asyncpg.Record]:
    """Steps dispatched for real since then (not simulated, not refused), as rate limits count them."""
    return await conn.fetch(
        """SELECT action, coalesce(item, '') AS target, dispatched_at FROM responder_steps
           WHERE dispatched_at > $1 AND state IN ('running', 'succeeded', 'failed', 'rolled_back')""",
        since,
    )


async def incident_targets(conn: Conn, incident_id: str) -> int:
    """Targets already acted on for an incident (each expanded step dispatched for real)."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM responder_steps
           WHERE incident_id = $1 AND item IS NOT NULL AND dispatched_at IS NOT NULL
             AND state IN ('running', 'succeeded', 'failed', 'rolled_back')""",
        incident_id,
    )
    return count


async def log_of(conn: Conn, incident_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT step_id, at, from_state, to_state, actor, reason FROM responder_step_log
           WHERE incident_id = $1 ORDER BY id""",
        incident_id,
    )
