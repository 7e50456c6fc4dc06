"""Reversible actions are leases: they end on time (also after a restart), and people extend them,
make them permanent or revoke them; a target leased again gets a longer lease each time.

Against the real Postgres, with the effects runner and the timer poller as the responder runs them
(LISTEN/NOTIFY, the service's poll interval). How late each lease ended is recorded (printed, and
kept as the test's `revert_delays_s` property), never asserted: speed is measured in `bench.leases`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest

from services.reporter import repository as reporter_repository
from services.reporter.handlers import handle as reporter_handle
from services.reporter.measures import DEFAULT_SLA
from services.reporter.reports import postmortem
from services.responder import api, blocklist, domain
from services.responder.approvals import parse_policy
from services.responder.connectors import load_connectors, parse_connectors_config
from services.responder.guardrails import parse_guardrails
from services.responder.handlers import Execution, Responder
from services.responder.leases import RepeatOffenders
from shared.consumer import HandlerContext, Inbound, write_context
from shared.db import connect
from shared.effects import EffectRunner
from shared.events import Analysis, IncidentAnalyzed, IncidentDetected, IncidentType, Indicator, Severity
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import eventually, serve_app
from tests.integration.test_merge import outbox_events
from tests.integration.test_response_execution import GUARDRAILS, handle, vigil_cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

PLAYBOOK = """
playbooks:
  - id: block
    title: Block the attackers
    match: {{types: [security_breach]}}
    steps:
      - id: block
        name: Block address
        phase: containment
        response: immediate
        for_each: external_ips
        connector: blocklist
        action: block
        params: {{address: {{value: "{{{{ item }}}}", type: ip}}}}
        lease: {lease}
        undo: {{connector: blocklist, action: unblock, params: {{address: {{value: "{{{{ item }}}}", type: ip}}}}}}
"""


def lease_responder(pool: asyncpg.Pool, *, lease: str = "2s", ladder: Sequence[int] = (1,)) -> Responder:
    execution = Execution(
        policy=parse_policy("rules: [{name: all, mode: auto}]"),
        guardrails=parse_guardrails(GUARDRAILS),
        connectors=load_connectors(parse_connectors_config("{}"), pool=pool, environ={}),
        repeat_offenders=RepeatOffenders(durations=tuple(ladder)),
    )
    return Responder(domain.parse_playbooks(PLAYBOOK.format(lease=lease)), execution)


@contextlib.asynccontextmanager
async def responder_running(
    responder: Responder, settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> AsyncIterator[None]:
    """The responder's effects runner and timer poller, configured as the service configures them."""
    kinds = [k for c in responder.execution.connectors.values() for k in c.effect_kinds(responder.on_effect_outcome)]
    runner = EffectRunner(
        "responder",
        pool,
        names,
        kinds,
        connect=lambda: connect(settings.database_url),
        poll_s=settings.effects_poll_s,
        backoff_base_s=0.05,
        backoff_cap_s=0.1,
    )
    poller = TimerPoller(
        service="responder", pool=pool, names=names, handlers=responder.timer_handlers, locks=responder.timer_locks
    )
    tasks = [asyncio.create_task(runner.run()), asyncio.create_task(poller.run())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def breach(incident: str, ips: Sequence[str]) -> IncidentAnalyzed:
    data = Analysis(
        type=IncidentType.SECURITY_BREACH,
        severity=Severity.SEV2,
        title="brute force",
        indicators=[Indicator(kind="ipv4", value=ip) for ip in ips],
        affected_hosts=[],
        affected_users=[],
        alert_count=1,
        summary="",
    )
    return IncidentAnalyzed(source="/t", subject=incident, data=data)


async def lease_states(pool: asyncpg.Pool, incident: str) -> dict[str, str]:
    rows = await pool.fetch("SELECT target, state FROM responder_leases WHERE incident_id = $1", incident)
    return {r["target"]: r["state"] for r in rows}


def all_are(pool: asyncpg.Pool, incident: str, count: int, *states: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await lease_states(pool, incident)
        return len(found) == count and set(found.values()) <= set(states)

    return check


async def revert_delays(pool: asyncpg.Pool, incident: str, since: object = None) -> dict[str, list[float]]:
    """Seconds from each lease's due time (or ``since``, a restart) to its undo sent and done, by Postgres's clock."""
    rows = await pool.fetch(
        """SELECT extract(epoch FROM g.at - coalesce($2::timestamptz, l.due_at))::float8 AS sent,
                  extract(epoch FROM l.reverted_at - coalesce($2::timestamptz, l.due_at))::float8 AS done
           FROM responder_leases l JOIN responder_lease_log g ON g.step_id = l.step_id AND g.change = 'expired'
           WHERE l.incident_id = $1""",
        incident,
        since,
    )
    return {"sent": sorted(r["sent"] for r in rows), "done": sorted(r["done"] for r in rows)}


def recorded(record_property: Callable[[str, object], None], name: str, delays: dict[str, list[float]]) -> None:
    figures = {
        what: {"n": len(d), "min": round(min(d), 3), "median": round(statistics.median(d), 3), "max": round(max(d), 3)}
        for what, d in delays.items()
    }
    record_property(name, json.dumps(figures))
    print(f"{name}: {json.dumps(figures)}")


async def test_leases_end_on_time_while_the_responder_runs_and_each_undo_is_checked(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, record_property: Callable[[str, object], None]
) -> None:
    ips = [f"203.0.113.{n}" for n in range(1, 6)]
    responder = lease_responder(pool, lease="2s")
    await handle(pool, names, responder, breach("inc-t", ips))
    async with responder_running(responder, settings, pool, names):
        await eventually(all_are(pool, "inc-t", len(ips), "active"))
        async with pool.acquire() as conn:
            assert await blocklist.list_active(conn, kind="ip") == sorted(ips)
        await eventually(all_are(pool, "inc-t", len(ips), "reverted"))
        await eventually(lambda: _undos_checked(pool, "inc-t"))
    async with pool.acquire() as conn:
        assert await blocklist.list_active(conn, kind="ip") == []
    assert set((await _column(pool, "inc-t", "undo_validation")).values()) == {"validated"}
    assert set((await _column(pool, "inc-t", "revert_reason")).values()) == {"expired"}
    states = await pool.fetch("SELECT state FROM responder_steps WHERE incident_id = 'inc-t'")
    assert {r["state"] for r in states} == {"rolled_back"}
    delays = await revert_delays(pool, "inc-t")
    assert len(delays["sent"]) == len(ips) and all(d >= 0 for d in delays["sent"])  # never before its due time
    recorded(record_property, "revert_delays_s", delays)


async def test_a_lease_that_fell_due_while_the_responder_was_down_ends_as_it_starts(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, record_property: Callable[[str, object], None]
) -> None:
    responder = lease_responder(pool, lease="1s")
    await handle(pool, names, responder, breach("inc-d", ["198.51.99.1", "198.51.99.2"]))
    async with responder_running(responder, settings, pool, names):
        await eventually(all_are(pool, "inc-d", 2, "active"))
    # The responder is down: the leases fall due with nobody to act on them.
    await eventually(lambda: _past_due(pool, "inc-d"))
    assert set((await lease_states(pool, "inc-d")).values()) == {"active"}
    restarted_at = await pool.fetchval("SELECT now()")
    async with responder_running(lease_responder(pool, lease="1s"), settings, pool, names):
        await eventually(all_are(pool, "inc-d", 2, "reverted"))
    delays = await revert_delays(pool, "inc-d", since=restarted_at)
    assert len(delays["done"]) == 2 and all(d >= 0 for d in delays["sent"])
    recorded(record_property, "revert_after_restart_s", delays)


async def test_people_extend_make_permanent_and_revoke_leases_and_who_and_why_are_kept(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    responder = lease_responder(pool, lease="1h")
    await handle(pool, names, responder, breach("inc-p", ["192.0.2.10", "192.0.2.11"]))
    async with responder_running(responder, settings, pool, names):
        await eventually(all_are(pool, "inc-p", 2, "active"))
    steps = {
        r["item"]: r["id"] for r in await pool.fetch("SELECT id, item FROM responder_steps WHERE incident_id = 'inc-p'")
    }
    first, second = steps["192.0.2.10"], steps["192.0.2.11"]
    due = await pool.fetchval("SELECT due_at FROM responder_leases WHERE step_id = $1", first)
    runtime = Runtime(service="responder", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    async with serve_app(build_app(runtime, api.routers(runtime, responder)), name="responder-api") as base:
        async with httpx.AsyncClient(base_url=base) as client:
            extend = {"actor": "alice", "extend": "2h", "reason": "still scanning"}
            once = {"Idempotency-Key": "extend-once"}
            extended = await client.post(f"/api/v1/steps/{first}/lease", json=extend, headers=once)
            assert extended.status_code == 200, extended.text
            assert extended.json()["state"] == "extended"
            # Its answer lost (a timeout), the client sends it again with its key: the lease moves once.
            retried = await client.post(f"/api/v1/steps/{first}/lease", json=extend, headers=once)
            assert (retried.status_code, retried.json()) == (200, extended.json())
            both = await client.post(
                f"/api/v1/steps/{first}/lease", json={"actor": "a", "extend": "1h", "revoke": True}
            )
            assert both.status_code == 422
        out = await vigil_cli(
            "lease", "make-permanent", second, "--reason", "known botnet controller", responder_url=base
        )
        assert "permanent" in out
        refused = await vigil_cli("lease", "extend", second, "--by", "1h", responder_url=base, code=1)
        assert "the lease is permanent: there is no end to move" in refused
        listed = json.loads(await vigil_cli("lease", "list", "inc-p", "--json", responder_url=base))
        by_step = {lease["step_id"]: lease for lease in listed}
        assert by_step[first]["state"] == "extended" and by_step[first]["changed_by"] == "alice"
        assert by_step[first]["change_reason"] == "still scanning"
        assert by_step[second]["state"] == "permanent" and by_step[second]["due_at"] is None
        assert [(e["actor"], e["change"]) for e in by_step[second]["log"]] == [
            ("responder", "created"),
            ("carol", "made_permanent"),
        ]
        table = await vigil_cli("lease", "list", responder_url=base)
        assert "permanent" in table and "never" in table and "known botnet controller" in table
        # The extended lease's timer and block list entry moved with it; the permanent one's have no end.
        new_due = await pool.fetchval("SELECT due_at FROM responder_leases WHERE step_id = $1", first)
        assert new_due - due == timedelta(hours=2)
        assert await _timer_due(pool, first) == new_due and await _timer_due(pool, second) is None
        ends = {
            r["step_id"]: r["expires_at"]
            for r in await pool.fetch("SELECT step_id, expires_at FROM responder_blocklist")
        }
        assert ends == {first: new_due, second: None}

        await vigil_cli("lease", "revoke", second, "--reason", "the controller was taken down", responder_url=base)
        again = await vigil_cli("lease", "revoke", second, responder_url=base, code=1)
        assert "only a lease in force can change" in again
    async with responder_running(responder, settings, pool, names):
        await eventually(lambda: _lease_is(pool, second, "reverted"))
    async with pool.acquire() as conn:
        assert await blocklist.list_active(conn, kind="ip") == ["192.0.2.10"]
    revoked = await pool.fetchval("SELECT revert_reason FROM responder_leases WHERE step_id = $1", second)
    assert revoked == "revoked"
    audited = await pool.fetch("SELECT action, principal FROM audit_log WHERE action LIKE 'lease.%' ORDER BY id")
    assert [(r["action"], r["principal"]) for r in audited] == [
        ("lease.extend", "alice"),
        ("lease.make_permanent", "carol"),
        ("lease.revoke", "carol"),
    ]


async def test_a_target_blocked_again_within_the_window_gets_a_longer_lease_each_time(
    pool: asyncpg.Pool, names: TopicNames, settings: VigilSettings
) -> None:
    responder = lease_responder(pool, lease="10s", ladder=(60, 600, 3600))
    for n in range(4):
        incident = f"inc-r{n}"
        await handle(pool, names, responder, breach(incident, ["203.0.113.99"]))
        async with responder_running(responder, settings, pool, names):
            await eventually(all_are(pool, incident, 1, "active"))
        # The incident ends, its block is undone; the address comes back in the next one.
        step_id = await pool.fetchval("SELECT step_id FROM responder_leases WHERE incident_id = $1", incident)
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="responder", names=names)
            await responder.change_lease(ctx, step_id, actor="alice", reason="incident over", change="revoke")
            await write_context(conn, ctx)
        async with responder_running(responder, settings, pool, names):
            await eventually(partial(_lease_is, pool, step_id, "reverted"))
    rows = await pool.fetch("SELECT incident_id, duration_s, offence FROM responder_leases ORDER BY incident_id")
    assert [(r["duration_s"], r["offence"]) for r in rows] == [(60, 1), (600, 2), (3600, 3), (3600, 4)]
    # The block list entry carried each lease's end.
    spans = await pool.fetch(
        "SELECT extract(epoch FROM expires_at - created_at)::int AS span FROM responder_blocklist ORDER BY id"
    )
    assert [r["span"] for r in spans] == [60, 600, 3600, 3600]


async def _undos_checked(pool: asyncpg.Pool, incident: str) -> bool:
    found = await _column(pool, incident, "undo_validation")
    return bool(found) and all(v not in (None, "pending") for v in found.values())


async def _column(pool: asyncpg.Pool, incident: str, column: str) -> dict[str, object]:
    rows = await pool.fetch(f"SELECT target, {column} AS value FROM responder_leases WHERE incident_id = $1", incident)
    return {r["target"]: r["value"] for r in rows}


async def _past_due(pool: asyncpg.Pool, incident: str) -> bool:
    return bool(
        await pool.fetchval(
            """SELECT bool_and(due_at < now() - interval '500 milliseconds')
               FROM responder_leases WHERE incident_id = $1""",
            incident,
        )
    )


async def _lease_is(pool: asyncpg.Pool, step_id: str, state: str) -> bool:
    return bool(await pool.fetchval("SELECT state = $2 FROM responder_leases WHERE step_id = $1", step_id, state))


async def _timer_due(pool: asyncpg.Pool, step_id: str) -> object:
    return await pool.fetchval(
        """SELECT due_at FROM timers
           WHERE kind = 'lease_expiry' AND subject = $1 AND fired_at IS NULL AND cancelled_at IS NULL""",
        step_id,
    )


async def test_the_reporter_tells_what_the_responder_did_from_its_own_events(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """The real responder's events (blocks, their checks, their leases ending and the undos' checks) on the
    reporter's timeline, in its post-mortem and in its effectiveness figure."""
    ips = ["203.0.113.21", "203.0.113.22"]
    responder = lease_responder(pool, lease="1s")
    await handle(pool, names, responder, breach("inc-told", ips))
    async with responder_running(responder, settings, pool, names):
        await eventually(all_are(pool, "inc-told", len(ips), "reverted"))
        await eventually(lambda: _undos_checked(pool, "inc-told"))
    detected = IncidentDetected(
        source="/vigil/detector", subject="inc-told", data=snapshot(title="Brute force from two addresses")
    )
    events = [detected, breach("inc-told", ips), *await outbox_events(pool, "responder")]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter_handle(ctx, [Inbound[Any](event_id=e.id, item=e, record=None) for e in events])
        await write_context(conn, ctx)
    async with pool.acquire() as conn:
        timeline = [t["summary"] for t in await reporter_repository.list_timeline(conn, incident_id="inc-told")]
        bundle = await reporter_repository.incident_bundle(conn, incident_id="inc-told")
        [times] = [t for t in await reporter_repository.list_incident_times(conn) if t.id == "inc-told"]
    for ip in ips:
        for line in (
            f"step 'Block address: {ip}' validated: listed=True",
            f"lease of 'block' on {ip} created, now active: in force until",
            f"lease of 'block' on {ip} expired, now reverting: the lease ended",
            f"lease of 'block' on {ip} reverted, now reverted: lease ended: undone",
            f"undo of step 'Block address: {ip}' validated: listed=False",
        ):
            assert any(t.startswith(line) for t in timeline), f"{line!r} is not on the timeline"
    assert not any(line.startswith("vigil.") for line in timeline), "every event says what it means"
    assert bundle is not None
    report = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=datetime.now(UTC))
    for ip in ips:
        assert f"| {ip} | rolled_back |" in report.replace("containment | ", "")
    assert "yes, validated" in report
    # Both blocks ran and held: the incident's effectiveness is whole.
    assert (times.executed, times.validated) == (len(ips), len(ips))
