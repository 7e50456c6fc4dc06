"""A lease that ends while the responder is down is undone as the responder process starts again.

The responder runs as its own process (`python -m services.responder`) against the real broker and
Postgres: it plans from an analysis published on the broker, a person approves the block over its
API, the process stops, the lease falls due, and a new process reconciles the schedule at start-up.
The delay from the new process's launch (interpreter start included) is recorded, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.responder import blocklist
from shared import cloudevents
from shared.embedded import free_port
from shared.events import Analysis, IncidentAnalyzed, IncidentType, Indicator, Severity
from shared.settings import VigilSettings
from shared.topics import ANALYSES, TopicNames
from tests.helpers import eventually, produce, service_env, start_module

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


@contextlib.asynccontextmanager
async def responder_process(env: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as out:
        process = await start_module("services.responder", env=env, log=out)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
                raise
    assert code == 0, f"the responder exited with {code}; see {log}"


async def test_a_lease_due_while_the_responder_was_down_is_undone_as_it_starts(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    names: TopicNames,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    approvals = tmp_path / "approvals.yaml"
    approvals.write_text("rules: [{name: anyone, mode: approve, approvals: 1}]\n")
    port = free_port()
    env = service_env(settings, port=port, VIGIL_RESPONDER_APPROVALS=str(approvals))
    log = tmp_path / "responder.log"
    analysis = Analysis(
        type=IncidentType.SECURITY_BREACH,
        severity=Severity.SEV2,
        title="credential stuffing",
        indicators=[Indicator(kind="ipv4", value="203.0.113.50")],
        affected_hosts=[],
        affected_users=[],
        alert_count=40,
        summary="",
    )
    record = cloudevents.encode(IncidentAnalyzed(source="/vigil/analyzer", subject="inc-down", data=analysis))
    async with responder_process(env, log):
        await produce(settings, names(ANALYSES), [(record.key, record.value, record.headers)])
        step_id = await eventually(
            lambda: pool.fetchval(
                "SELECT id FROM responder_steps WHERE step = 'block-ip' AND state = 'awaiting_approval'"
            ),
            timeout=60,
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            body = {"step_id": step_id, "actor": "alice", "role": "commander", "note": "block it"}
            approved = await client.post(f"/api/v1/steps/{step_id}/approve", json=body)
            assert approved.status_code == 200, approved.text
        await eventually(
            lambda: pool.fetchval("SELECT state = 'active' FROM responder_leases WHERE step_id = $1", step_id)
        )
    # The responder is down. The shipped block holds 24 hours: its end is moved to a second from now,
    # as if the responder had been down for a day when it fell due.
    await pool.execute("UPDATE responder_leases SET due_at = now() + interval '1 second' WHERE step_id = $1", step_id)
    await pool.execute(
        """UPDATE timers SET due_at = now() + interval '1 second'
           WHERE kind = 'lease_expiry' AND subject = $1 AND fired_at IS NULL AND cancelled_at IS NULL""",
        step_id,
    )
    await eventually(
        lambda: pool.fetchval(
            "SELECT due_at < now() - interval '1 second' FROM responder_leases WHERE step_id = $1", step_id
        )
    )
    assert await pool.fetchval("SELECT state FROM responder_leases WHERE step_id = $1", step_id) == "active"
    async with pool.acquire() as conn:
        assert await blocklist.list_active(conn, kind="ip") == ["203.0.113.50"]

    launched_at = await pool.fetchval("SELECT clock_timestamp()")
    async with responder_process(env, log):
        await eventually(
            lambda: pool.fetchval("SELECT state = 'reverted' FROM responder_leases WHERE step_id = $1", step_id),
            timeout=60,
        )
    async with pool.acquire() as conn:
        assert await blocklist.list_active(conn, kind="ip") == []
    lease = await pool.fetchrow(
        """SELECT l.revert_reason, extract(epoch FROM g.at - $2::timestamptz)::float8 AS sent,
                  extract(epoch FROM l.reverted_at - $2::timestamptz)::float8 AS done
           FROM responder_leases l JOIN responder_lease_log g ON g.step_id = l.step_id AND g.change = 'expired'
           WHERE l.step_id = $1""",
        step_id,
        launched_at,
    )
    assert lease is not None and lease["revert_reason"] == "expired"
    figures = {"undo_sent_after_launch_s": round(lease["sent"], 3), "undone_after_launch_s": round(lease["done"], 3)}
    record_property("restart_revert", json.dumps(figures))
    print(f"restart_revert: {json.dumps(figures)}")
