"""The SQL of the responder's steps and their log."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from shared.db import Conn

STEP_COLUMNS = (
    "id, incident_id, plan_id, playbook, step, position, item, target_kind, name, phase, response, connector, "
    "action, params, undo, lease_s, timeout_s, retries, on_failure, risk, approval, dry_run, state, reason, "
    "policy_rule, approvals_required, approver_roles, approval_deadline, on_timeout, approvals, sent, result, "
    "dispatched_at, finished_at, created_at, updated_at, validation, validation_reason, validated_at, "
    "lease_offence, owner, due_at, required, recovery"
)
LEASE_COLUMNS = (
    "l.step_id, l.incident_id, l.target_kind, l.target, l.action, l.state, l.offence, l.duration_s, l.started_at, "
    "l.due_at, l.reverted_at, l.revert_reason, l.undo_validation, l.changed_by, l.change_reason, l.created_at, "
    "l.updated_at, s.name, s.connector, s.undo"
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


async def hold_step(conn: Conn, step_id: str, *, reason: str) -> bool:
    """Hold a step where it is, saying why (the latest why, if held already); True the first time."""
    first: bool | None = await conn.fetchval(
        """UPDATE responder_steps s SET held_at = coalesce(s.held_at, now()), reason = $2, updated_at = now()
           FROM (SELECT held_at FROM responder_steps WHERE id = $1) AS before
           WHERE s.id = $1 RETURNING before.held_at IS NULL""",
        step_id,
        reason,
    )
    return bool(first)


async def reword_held(conn: Conn, incident_id: str, *, reason: str) -> None:
    """Say why the incident's held steps are held now (its end holds them, whatever held them first)."""
    await conn.execute(
        """UPDATE responder_steps SET reason = $2, updated_at = now()
           WHERE incident_id = $1 AND held_at IS NOT NULL""",
        incident_id,
        reason,
    )


async def ended(conn: Conn, incident_id: str) -> asyncpg.Record | None:
    """The state the incident ended in and when, or None while it is open (or reopened)."""
    return await conn.fetchrow("SELECT state, ended_at FROM responder_ended WHERE incident_id = $1", incident_id)


async def mark_ended(conn: Conn, incident_id: str, *, state: str, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO responder_ended (incident_id, state, ended_at) VALUES ($1, $2, $3)
           ON CONFLICT (incident_id) DO UPDATE SET state = EXCLUDED.state, ended_at = EXCLUDED.ended_at""",
        incident_id,
        state,
        at,
    )


async def unmark_ended(conn: Conn, incident_id: str) -> bool:
    """The incident is open again; True when it had ended."""
    removed = await conn.fetchval("DELETE FROM responder_ended WHERE incident_id = $1 RETURNING true", incident_id)
    return bool(removed)


async def save_analysis(conn: Conn, incident_id: str, analysis: dict[str, Any], *, at: datetime) -> None:
    """Keep the incident's latest analysis (an older one delivered late leaves the newer in place)."""
    await conn.execute(
        """INSERT INTO responder_analyses (incident_id, analysis, analysed_at) VALUES ($1, $2, $3)
           ON CONFLICT (incident_id) DO UPDATE SET analysis = EXCLUDED.analysis, analysed_at = EXCLUDED.analysed_at
           WHERE responder_analyses.analysed_at <= EXCLUDED.analysed_at""",
        incident_id,
        analysis,
        at,
    )


async def latest_analysis(conn: Conn, incident_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = await conn.fetchval(
        "SELECT analysis FROM responder_analyses WHERE incident_id = $1", incident_id
    )
    return found


async def held_incidents(conn: Conn) -> list[str]:
    """The incidents with held steps (by the kill switch, or while they had ended), in one order (that of
    their locks)."""
    # An ended incident's steps stay held through a resume: its reopening runs them on.
    rows = await conn.fetch(
        """SELECT DISTINCT s.incident_id FROM responder_steps s
           WHERE s.held_at IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM responder_ended e WHERE e.incident_id = s.incident_id)"""
    )
    return sorted(row["incident_id"] for row in rows)


async def release_held(conn: Conn, incident_id: str) -> None:
    """Release the incident's held steps (its lock held: as every step of it is changed)."""
    await conn.execute(
        "UPDATE responder_steps SET held_at = NULL WHERE incident_id = $1 AND held_at IS NOT NULL", incident_id
    )


async def steps_of(conn: Conn, incident_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {STEP_COLUMNS} FROM responder_steps WHERE incident_id = $1 ORDER BY position, id", incident_id
    )


async def step(conn: Conn, step_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {STEP_COLUMNS} FROM responder_steps WHERE id = $1", step_id)


async def steps_like(conn: Conn, prefix: str) -> list[asyncpg.Record]:
    """A step by its id, or every expansion of one playbook step (`<incident>:<step>`) in the incident's plans.

    A step a person asked for on demand is answered by its own id only: an answer to a plan's step is
    never one to a request someone else made.
    """
    return await conn.fetch(
        f"""SELECT {STEP_COLUMNS} FROM responder_steps
            WHERE id = $1
               OR (starts_with(id, $1 || ':') AND item IS NOT NULL AND NOT starts_with(plan_id, 'on-demand:'))
            ORDER BY position, id""",
        prefix,
    )


async def acting_on(conn: Conn, incident_id: str, step: str, item: str | None) -> asyncpg.Record | None:
    """A step of the incident doing the same playbook step on the same item that has not ended, or whose
    lease holds: another would act twice on one target (and its undo lift what the other still holds)."""
    return await conn.fetchrow(
        """SELECT s.id, s.state, l.state AS lease FROM responder_steps s
           LEFT JOIN responder_leases l ON l.step_id = s.id
           WHERE s.incident_id = $1 AND s.step = $2 AND s.item IS NOT DISTINCT FROM $3
             AND (s.state IN ('planned', 'awaiting_approval', 'approved', 'running')
                  OR l.state IN ('active', 'extended', 'permanent'))
           ORDER BY s.created_at LIMIT 1""",
        incident_id,
        step,
        item,
    )


async def acting_on_any(
    conn: Conn, incident_id: str, targets: Sequence[tuple[str, str | None]]
) -> dict[tuple[str, str | None], asyncpg.Record]:
    """``acting_on`` for several (step, item) pairs at once: the earliest such step of each pair that has one."""
    if not targets:
        return {}
    rows = await conn.fetch(
        """SELECT DISTINCT ON (s.step, s.item) s.step, s.item, s.id, s.state, l.state AS lease
           FROM responder_steps s
           JOIN unnest($2::text[], $3::text[]) AS t(step, item)
             ON s.step = t.step AND s.item IS NOT DISTINCT FROM t.item
           LEFT JOIN responder_leases l ON l.step_id = s.id
           WHERE s.incident_id = $1
             AND (s.state IN ('planned', 'awaiting_approval', 'approved', 'running')
                  OR l.state IN ('active', 'extended', 'permanent'))
           ORDER BY s.step, s.item, s.created_at""",
        incident_id,
        [step for step, _ in targets],
        [item for _, item in targets],
    )
    return {(row["step"], row["item"]): row for row in rows}


@dataclass(frozen=True)
class NewStep:
    """A step to store: its row (``responder_steps``' columns, the same for every step) and its first log entry."""

    row: Mapping[str, Any]
    reason: str
    final: bool  # the state it is stored in is one it ends in


# The SQL type of each column a new step's row sets (``NewStep.row``): the arrays its insert unnests.
NEW_STEP_TYPES = {
    "id": "text",
    "incident_id": "text",
    "plan_id": "text",
    "playbook": "text",
    "step": "text",
    "position": "integer",
    "item": "text",
    "target_kind": "text",
    "name": "text",
    "phase": "text",
    "response": "text",
    "connector": "text",
    "action": "text",
    "params": "jsonb",
    "undo": "jsonb",
    "lease_s": "integer",
    "timeout_s": "integer",
    "retries": "integer",
    "on_failure": "text",
    "risk": "text",
    "dry_run": "boolean",
    "state": "text",
    "approval": "text",
    "owner": "text",
    "due_at": "timestamptz",
    "required": "boolean",
    "recovery": "text",
}


def _cell(value: Any, sql_type: str) -> Any:
    # JSON as its text: a list in a jsonb column would be taken for another dimension of the array.
    if sql_type == "jsonb" and value is not None:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    return value


async def insert_steps(conn: Conn, new: Sequence[NewStep], *, actor: str) -> list[asyncpg.Record]:
    """Store new steps, each in the state its row says with its first log entry; return them as ``step`` reads them,
    in the order given.

    One statement for all (a column an array): each step, why it is in that state, and the log line.
    """
    if not new:
        return []
    columns = list(new[0].row)
    for step in new:
        if list(step.row) != columns:
            raise ValueError(f"step {step.row.get('id')}: its columns differ from the first step's")
    unknown = [c for c in columns if c not in NEW_STEP_TYPES]
    if unknown:
        raise ValueError(f"a new step sets columns no step is stored with: {', '.join(unknown)}")
    n = len(columns)
    names = ", ".join(columns)
    arrays = ", ".join(f"${i}::{NEW_STEP_TYPES[c]}[]" for i, c in enumerate(columns, 1))
    # Column names come from NEW_STEP_TYPES, never from input.
    query = f"""WITH s AS (
            INSERT INTO responder_steps ({names}, reason, finished_at)
            SELECT {names}, r.reason, CASE WHEN r.final THEN now() END
            FROM unnest({arrays}, ${n + 1}::text[], ${n + 2}::boolean[]) AS r({names}, reason, final)
            RETURNING {STEP_COLUMNS}),
        logged AS (
            INSERT INTO responder_step_log (step_id, incident_id, from_state, to_state, actor, reason)
            SELECT id, incident_id, NULL, state, ${n + 3}, reason FROM s)
        SELECT * FROM s"""
    rows = await conn.fetch(
        query,
        *([_cell(step.row[c], NEW_STEP_TYPES[c]) for step in new] for c in columns),
        [step.reason for step in new],
        [step.final for step in new],
        actor,
    )
    by_id = {row["id"]: row for row in rows}
    return [by_id[step.row["id"]] for step in new]


async def keep_in_plan(conn: Conn, positions: Mapping[str, int], *, plan_id: str) -> None:
    """Steps already there stay, in the revised plan at their new positions: one statement for all."""
    if not positions:
        return
    await conn.execute(
        """UPDATE responder_steps AS s SET plan_id = $1, position = k.position, updated_at = now()
           FROM unnest($2::text[], $3::int[]) AS k(id, position) WHERE s.id = k.id""",
        plan_id,
        list(positions),
        list(positions.values()),
    )


@dataclass(frozen=True)
class ApprovalTerms:
    """The approvals a step needs, and with ``wait`` (from state, actor, reason) that it starts waiting for them."""

    step_id: str
    rule: str
    required: int
    roles: Sequence[str]
    deadline: datetime | None
    on_timeout: str | None
    wait: tuple[str | None, str, str] | None = None


_SET_APPROVAL_TERMS = """WITH changed AS (
       UPDATE responder_steps
       SET policy_rule = $2, approvals_required = $3, approver_roles = $4, approval_deadline = $5,
           on_timeout = $6, updated_at = now(),
           state = CASE WHEN $7 THEN 'awaiting_approval' ELSE state END,
           reason = CASE WHEN $7 THEN $8 ELSE reason END
       WHERE id = $1
       RETURNING incident_id)
   INSERT INTO responder_step_log (step_id, incident_id, from_state, to_state, actor, reason)
   SELECT $1, incident_id, $9, 'awaiting_approval', $10, $8 FROM changed WHERE $7"""


async def set_approval_terms(conn: Conn, terms: Sequence[ApprovalTerms]) -> None:
    """Set the approvals each step needs; those that start waiting are put to ``awaiting_approval``, and
    why is logged, in the same statement. One round trip for all of them."""
    if not terms:
        return
    await conn.executemany(
        _SET_APPROVAL_TERMS,
        [
            (
                t.step_id,
                t.rule,
                t.required,
                list(t.roles),
                t.deadline,
                t.on_timeout,
                t.wait is not None,
                *((t.wait[2], t.wait[0], t.wait[1]) if t.wait is not None else ("", None, "")),
            )
            for t in terms
        ],
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
    """Change a step's state and log who or what changed it and why, in the caller's transaction (one round trip)."""
    await conn.execute(
        """WITH changed AS (
               UPDATE responder_steps
               SET state = $2, reason = $3, sent = coalesce($4, sent), result = coalesce($5, result),
                   held_at = NULL,  -- held where it stood: it stands elsewhere now, and is held again if due
                   dispatched_at = CASE WHEN $6 THEN now() ELSE dispatched_at END,
                   finished_at = CASE WHEN $7 THEN now() ELSE finished_at END,
                   updated_at = now()
               WHERE id = $1
               RETURNING 1)
           INSERT INTO responder_step_log (step_id, incident_id, from_state, to_state, actor, reason)
           SELECT $1, $8, $9, $2, $10, $3 FROM (SELECT count(*) FROM changed) AS done""",
        step_id,
        to_state,
        reason,
        sent,
        result,
        dispatched,
        final,
        incident_id,
        from_state,
        actor,
    )


async def add_approval(conn: Conn, step_id: str, approval: dict[str, Any]) -> list[dict[str, Any]]:
    given: list[dict[str, Any]] = await conn.fetchval(
        """UPDATE responder_steps SET approvals = approvals || jsonb_build_array($2::jsonb), updated_at = now()
           WHERE id = $1 RETURNING approvals""",
        step_id,
        approval,
    )
    return given


async def incident_targets(conn: Conn, incident_id: str) -> int:
    """Targets already acted on for an incident (each expanded step dispatched for real)."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM responder_steps
           WHERE incident_id = $1 AND item IS NOT NULL AND dispatched_at IS NOT NULL
             AND state IN ('running', 'succeeded', 'failed', 'rolled_back')""",
        incident_id,
    )
    return count


async def step_targets(conn: Conn, plan_id: str, step: str) -> int:
    """Targets a playbook step of a plan expands to: its for_each items."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM responder_steps WHERE plan_id = $1 AND step = $2 AND item IS NOT NULL", plan_id, step
    )
    return count


async def log_of(conn: Conn, incident_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT step_id, at, from_state, to_state, actor, reason FROM responder_step_log
           WHERE incident_id = $1 ORDER BY id""",
        incident_id,
    )


# ---- validation ---------------------------------------------------------------------------------


async def set_validation(conn: Conn, step_id: str, *, outcome: str, reason: str) -> None:
    await conn.execute(
        """UPDATE responder_steps
           SET validation = $2, validation_reason = $3,
               validated_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END, updated_at = now()
           WHERE id = $1""",
        step_id,
        outcome,
        reason,
    )


async def set_lease_terms(conn: Conn, step_id: str, *, lease_s: int, offence: int) -> None:
    await conn.execute(
        "UPDATE responder_steps SET lease_s = $2, lease_offence = $3, updated_at = now() WHERE id = $1",
        step_id,
        lease_s,
        offence,
    )


# ---- leases -------------------------------------------------------------------------------------


async def earlier_leases(conn: Conn, *, target_kind: str, target: str, since: datetime, step_id: str) -> int:
    """Leases on the same target started since then, by other steps (any incident): its earlier offences."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM responder_leases
           WHERE target_kind = $1 AND target = $2 AND started_at >= $3 AND step_id <> $4""",
        target_kind,
        target,
        since,
        step_id,
    )
    return count


async def insert_lease(
    conn: Conn,
    *,
    step_id: str,
    incident_id: str,
    target_kind: str,
    target: str,
    action: str,
    offence: int,
    duration_s: int,
    started_at: datetime,
    due_at: datetime,
) -> bool:
    """Record a new lease; False when the step has one already (its outcome was recorded before)."""
    inserted = await conn.fetchval(
        """INSERT INTO responder_leases (step_id, incident_id, target_kind, target, action, state, offence,
                                         duration_s, started_at, due_at, changed_by, change_reason)
           VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, 'responder', 'the action succeeded')
           ON CONFLICT (step_id) DO NOTHING
           RETURNING true""",
        step_id,
        incident_id,
        target_kind,
        target,
        action,
        offence,
        duration_s,
        started_at,
        due_at,
    )
    return bool(inserted)


async def lease(conn: Conn, step_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {LEASE_COLUMNS} FROM responder_leases l JOIN responder_steps s ON s.id = l.step_id "
        "WHERE l.step_id = $1",
        step_id,
    )


async def update_lease(
    conn: Conn,
    step_id: str,
    *,
    state: str,
    actor: str,
    reason: str,
    due_at: datetime | Literal["keep"] | None = "keep",
    revert_reason: str | None = None,
    reverted: bool = False,
) -> None:
    """Change a lease's state (and its end, unless ``keep``), saying who and why."""
    await conn.execute(
        """UPDATE responder_leases
           SET state = $2, changed_by = $3, change_reason = $4,
               due_at = CASE WHEN $5 THEN due_at ELSE $6 END,
               revert_reason = coalesce($7, revert_reason),
               reverted_at = CASE WHEN $8 THEN now() ELSE reverted_at END,
               updated_at = now()
           WHERE step_id = $1""",
        step_id,
        state,
        actor,
        reason,
        due_at == "keep",
        None if due_at == "keep" else due_at,
        revert_reason,
        reverted,
    )


async def set_undo_validation(conn: Conn, step_id: str, outcome: str) -> None:
    await conn.execute(
        "UPDATE responder_leases SET undo_validation = $2, updated_at = now() WHERE step_id = $1", step_id, outcome
    )


async def log_lease(conn: Conn, step_id: str, *, actor: str, change: str, reason: str, due_at: datetime | None) -> None:
    await conn.execute(
        "INSERT INTO responder_lease_log (step_id, actor, change, reason, due_at) VALUES ($1, $2, $3, $4, $5)",
        step_id,
        actor,
        change,
        reason,
        due_at,
    )


async def list_leases(
    conn: Conn, *, incident_id: str | None = None, states: Sequence[str] | None = None, limit: int = 500
) -> list[asyncpg.Record]:
    """Leases, soonest end first (permanent ones last), of one incident or all, in these states or any."""
    return await conn.fetch(
        f"""SELECT {LEASE_COLUMNS} FROM responder_leases l JOIN responder_steps s ON s.id = l.step_id
            WHERE ($1::text IS NULL OR l.incident_id = $1) AND ($2::text[] IS NULL OR l.state = ANY($2))
            ORDER BY l.due_at NULLS LAST, l.step_id
            LIMIT $3""",
        incident_id,
        list(states) if states is not None else None,
        limit,
    )


async def lease_log(conn: Conn, step_ids: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT step_id, at, actor, change, reason, due_at FROM responder_lease_log
           WHERE step_id = ANY($1::text[]) ORDER BY id""",
        list(step_ids),
    )


async def extend_blocklist_entry(conn: Conn, step_id: str, *, expires_at: datetime | None) -> None:
    """Move the end of a step's block list entry with its lease (the served list drops an expired entry)."""
    await conn.execute(
        "UPDATE responder_blocklist SET expires_at = $2 WHERE step_id = $1 AND removed_at IS NULL",
        step_id,
        expires_at,
    )


# ---- rollbacks ----------------------------------------------------------------------------------


async def running_rollback(conn: Conn, incident_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM responder_rollbacks WHERE incident_id = $1 AND state = 'running'", incident_id
    )


async def insert_rollback(
    conn: Conn, *, incident_id: str, requested_by: str, reason: str, steps: Sequence[str]
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO responder_rollbacks (incident_id, requested_by, reason, steps, state)
           VALUES ($1, $2, $3, $4, 'running') RETURNING *""",
        incident_id,
        requested_by,
        reason,
        list(steps),
    )
    assert row is not None
    return row


async def advance_rollback(conn: Conn, rollback_id: int, *, position: int, failed: str | None) -> None:
    await conn.execute(
        """UPDATE responder_rollbacks
           SET position = $2, failed = CASE WHEN $3::text IS NULL THEN failed ELSE failed || $3::text END
           WHERE id = $1""",
        rollback_id,
        position,
        failed,
    )


async def end_rollback(conn: Conn, rollback_id: int) -> str:
    state: str = await conn.fetchval(
        """UPDATE responder_rollbacks
           SET state = CASE WHEN cardinality(failed) > 0 THEN 'done_with_failures' ELSE 'done' END, ended_at = now()
           WHERE id = $1 RETURNING state""",
        rollback_id,
    )
    return state


async def rollbacks_of(conn: Conn, incident_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM responder_rollbacks WHERE incident_id = $1 ORDER BY id", incident_id)


# ---- the watch after containment ----------------------------------------------------------------


async def is_watched(conn: Conn, incident_id: str) -> bool:
    """Whether the incident has a watch in progress (unlocked: a hint, ``watching`` is the answer)."""
    return bool(
        await conn.fetchval(
            "SELECT true FROM responder_monitors WHERE incident_id = $1 AND state = 'watching' LIMIT 1", incident_id
        )
    )


async def watched_among(conn: Conn, incident_ids: Iterable[str]) -> set[str]:
    """Which of these incidents have a watch in progress (unlocked: a hint, ``watching`` is the answer)."""
    rows = await conn.fetch(
        "SELECT incident_id FROM responder_monitors WHERE incident_id = ANY($1::text[]) AND state = 'watching'",
        list(incident_ids),
    )
    return {row["incident_id"] for row in rows}


async def watching(conn: Conn, incident_id: str) -> asyncpg.Record | None:
    """The incident's watch in progress, locked."""
    return await conn.fetchrow(
        "SELECT * FROM responder_monitors WHERE incident_id = $1 AND state = 'watching' FOR UPDATE", incident_id
    )


async def last_watch(conn: Conn, incident_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM responder_monitors WHERE incident_id = $1 ORDER BY id DESC LIMIT 1", incident_id
    )


async def watched_incident(conn: Conn, monitor_id: int) -> str | None:
    incident_id: str | None = await conn.fetchval(
        "SELECT incident_id FROM responder_monitors WHERE id = $1", monitor_id
    )
    return incident_id


async def watch(conn: Conn, monitor_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM responder_monitors WHERE id = $1 FOR UPDATE", monitor_id)


async def insert_watch(
    conn: Conn,
    *,
    incident_id: str,
    started_at: datetime,
    ends_at: datetime,
    entities: list[dict[str, Any]],
    threshold: int,
) -> int:
    monitor_id: int = await conn.fetchval(
        """INSERT INTO responder_monitors (incident_id, started_at, ends_at, entities, threshold, state)
           VALUES ($1, $2, $3, $4, $5, 'watching') RETURNING id""",
        incident_id,
        started_at,
        ends_at,
        entities,
        threshold,
    )
    return monitor_id


async def add_evidence(conn: Conn, monitor_id: int, evidence: list[dict[str, Any]]) -> None:
    await conn.execute(
        "UPDATE responder_monitors SET evidence = evidence || $2::jsonb WHERE id = $1", monitor_id, evidence
    )


async def end_watch(conn: Conn, monitor_id: int, *, state: str) -> None:
    await conn.execute("UPDATE responder_monitors SET state = $2, ended_at = now() WHERE id = $1", monitor_id, state)
