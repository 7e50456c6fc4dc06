"""Merging incidents and detaching alerts, through the real services, broker and Postgres.

The detector, analyzer, coordinator and reporter run as their service specs wire them (consume loops
on their topics, with their handlers), their outboxes relayed to the broker; operators act through
the detector's API, or publish the command on the commands topic as another tool would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from rich.console import Console
from typer.testing import CliRunner, Result

from services.analyzer import service as analyzer_service
from services.coordinator import service as coordinator_service
from services.detector import commands
from services.detector import service as detector_service
from services.detector.correlation import SHIPPED_CORRELATIONS
from services.detector.handlers import Detector, RulesSource
from services.reporter import repository as read_model
from services.reporter import service as reporter_service
from shared import cloudevents, identity
from shared.alerts import Alert
from shared.consumer import HandlerContext
from shared.db import connect
from shared.events import (
    Assignment,
    AssignRole,
    CommandRejected,
    DetachAlerts,
    DetachArgs,
    EventBase,
    IncidentMerged,
    IncidentState,
    IncidentStateChanged,
    MergeArgs,
    MergeIncidents,
    StateChange,
)
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, COMMANDS, COORDINATION, EVENTS_DLQ, TopicNames
from tests.factories import alert, alert_dict
from tests.helpers import committed, consume_loop, eventually, produce, read_all, serve_app
from vigil import cli as cli_module
from vigil.cli import app as cli_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

RELAYED = ("detector", "analyzer", "coordinator")
T = TypeVar("T")


async def _relay(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    """Publish the services' outboxes as their relays do, until cancelled."""
    producer = make_producer(settings, client_id="merge-test-relay")
    await producer.start()
    try:
        relays = [
            OutboxRelay(service=s, pool=pool, producer=producer, connect=lambda: connect(settings.database_url))
            for s in RELAYED
        ]
        while True:
            for relay in relays:
                await relay.publish_pending()
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def pipeline(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[None]:
    """The detector, analyzer, coordinator and reporter consuming as their specs say, their events relayed."""
    # Their consume loops only, not their background tasks: the detector and the analyzer publish each
    # change at once (nothing waits for an update or publication interval, whose sweeps are such tasks).
    at_once = settings.model_copy(update={"analyzer_publish_interval_s": 0.0, "detector_update_interval_s": 0.0})
    specs = [
        detector_service.spec(at_once),
        analyzer_service.spec(at_once),
        coordinator_service.spec(settings),
        reporter_service.spec(settings),
    ]
    async with contextlib.AsyncExitStack() as stack:
        for spec in specs:
            await stack.enter_async_context(
                consume_loop(
                    settings,
                    pool,
                    service=spec.name,
                    topics=[names(t) for t in spec.consumes],
                    decoder=spec.decoder,
                    handler=spec.handler,
                )
            )
        relaying = asyncio.create_task(_relay(settings, pool), name="relay")
        try:
            yield
        finally:
            relaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relaying


@contextlib.asynccontextmanager
async def detector_app(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[FastAPI]:
    """The detector's real app (its spec's routers on build_app) on the test database."""
    producer = make_producer(settings, client_id="detector-api-test")
    await producer.start()
    try:
        runtime = Runtime(service="detector", settings=settings, pool=pool, producer=producer, names=names)
        yield build_app(runtime, detector_service.spec(settings).routers(runtime))
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def detector_api(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> AsyncIterator[httpx.AsyncClient]:
    """The detector's app with authentication on, over HTTP in process."""
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    async with (
        detector_app(secured, pool, names) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://detector") as client,
    ):
        yield client


async def token(pool: asyncpg.Pool, name: str, role: identity.Role = "commander") -> dict[str, str]:
    async with pool.acquire() as conn:
        made = await identity.create_token(conn, name=name, role=role, created_by="test")
    return {"Authorization": f"Bearer {made.text}"}


async def send_alerts(settings: VigilSettings, names: TopicNames, alerts: Sequence[dict[str, Any]]) -> None:
    await produce(settings, names(ALERTS_RAW), [(None, json.dumps(a).encode(), []) for a in alerts])


async def incident_of(pool: asyncpg.Pool, host: str) -> str | None:
    found: str | None = await pool.fetchval(
        "SELECT id FROM detector_incidents WHERE correlation_key = $1 AND NOT closed", f"host:{host}"
    )
    return found


async def until(check: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0) -> T:
    """What ``check`` returns once it returns something (``eventually``, typed for checks that may say None)."""
    found = await eventually(check, timeout=timeout)
    assert found is not None
    return found


async def opened(pool: asyncpg.Pool, host: str) -> str:
    """The open incident of a host, once the detector opened it."""
    return await until(lambda: incident_of(pool, host))


async def analysed(pool: asyncpg.Pool, incident_id: str, **wanted: Any) -> dict[str, Any] | None:
    """The reporter's view of the incident once its analysis says what ``wanted`` says."""
    async with pool.acquire() as conn:
        shown = await read_model.get_incident(conn, incident_id=incident_id)
    analysis = shown and shown["analysis"]
    if not analysis or any(analysis.get(k) != v for k, v in wanted.items()):
        return None
    return shown


async def outbox_events(pool: asyncpg.Pool, service: str) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = $1 ORDER BY id", service)
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


def indicator_values(analysis: dict[str, Any]) -> set[str]:
    return {i["value"] for i in analysis["indicators"]}


async def test_an_n_way_merge_carries_alerts_analysis_and_history_to_the_survivor(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    hosts = {"web-01": "45.61.136.1", "web-02": "45.61.136.2", "web-03": "45.61.136.3"}
    first = [
        alert_dict(
            host=host,
            title="Port scan detected",
            description=f"scan from {address}",
            src_ip=address,
            user=f"svc-{host}",
            time=f"2026-11-24T09:0{n}:00Z",
        )
        for n, (host, address) in enumerate(hosts.items())
    ]
    async with pipeline(settings, pool, names):
        await send_alerts(settings, names, first)
        ids = {host: await opened(pool, host) for host in hosts}
        survivor, b, c = ids["web-01"], ids["web-02"], ids["web-03"]
        for incident_id in ids.values():
            await eventually(lambda i=incident_id: analysed(pool, i, alert_count=1))  # type: ignore[misc]
        await eventually(lambda: pool.fetchval("SELECT count(*) = 3 FROM coordinator_incidents"))
        # One alert was sent again, another ended: they stand so in the survivor too.
        repeated_key, ended_key = (f"{a['source']}:{a['id']}" for a in first[1:])
        await send_alerts(settings, names, [first[1], {**first[2], "status": "resolved"}])
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) = 2 FROM detector_alerts WHERE repeats = 1 OR resolved_at IS NOT NULL"
            )
        )
        # Someone took notes on one of them: the survivor has no scribe, so they carry over.
        scribe = AssignRole(
            source="/tools/chat", subject=b, data=Assignment(actor="erin", person="sam@example.com", role="scribe")
        )
        await produce(settings, names(COMMANDS), [(b.encode(), *_record(scribe))])
        await eventually(
            lambda: pool.fetchval("SELECT roles ? 'scribe' FROM coordinator_incidents WHERE incident_id = $1", b)
        )
        open_tasks_of_b = await pool.fetchval(
            "SELECT count(*) FROM coordinator_tasks WHERE incident_id = $1 AND state = 'open'", b
        )
        assert open_tasks_of_b > 0

        # The actor is whoever authenticated, not the name in the body.
        async with detector_api(settings, pool, names) as api:
            response = await api.post(
                f"/api/v1/incidents/{survivor}/merge",
                json={"actor": "someone-else", "incidents": [b, c, b], "note": "one scanner, three hosts"},
                headers=await token(pool, "carol"),
            )
        assert response.status_code == 200, response.text
        done = response.json()
        assert (done["incident_id"], done["merged"], done["alerts_moved"], done["alert_count"]) == (
            survivor,
            [b, c],
            2,
            3,
        )

        # The survivor's analysis carries every host, user and indicator of the merged incidents.
        shown = await until(lambda: analysed(pool, survivor, alert_count=3), timeout=60)
        analysis = shown["analysis"]
        assert set(analysis["affected_hosts"]) == set(hosts)
        assert set(analysis["affected_users"]) == {f"svc-{h}" for h in hosts}
        assert set(hosts.values()) <= indicator_values(analysis)
        assert shown["alert_count"] == 3

        async def standing() -> dict[str, dict[str, Any]] | None:
            async with pool.acquire() as conn:
                alerts = {a["key"]: a for a in await read_model.list_alerts(conn, incident_id=survivor)}
            done = alerts.get(repeated_key, {}).get("repeats") == 1 and alerts.get(ended_key, {}).get("status")
            return alerts if done == "resolved" else None

        alerts = await until(standing)
        assert len(alerts) == 3

        # Each alert is listed once in the history, as the survivor's: the merged incidents' copies went.
        async def listed_once() -> bool | None:
            query = "SELECT count(*) FROM reporter_alerts WHERE incident_id = ANY($1::text[])"
            return await pool.fetchval(query, [b, c]) == 0 or None

        await until(listed_once)

        # The merged incidents end in the coordinator, pointing at the survivor; their pages and tasks stop.
        async def merged_away() -> list[asyncpg.Record] | None:
            rows = await pool.fetch("SELECT * FROM coordinator_incidents WHERE incident_id = ANY($1::text[])", [b, c])
            return rows if all(r["state"] == "resolved" for r in rows) else None

        for row in await until(merged_away):
            assert (row["resolution"], row["merged_into"]) == ("merged", survivor)
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM coordinator_tasks WHERE incident_id = ANY($1::text[]) AND state = 'open'", [b, c]
            )
            == 0
        )
        assert (
            await pool.fetchval(
                """SELECT count(*) FROM timers WHERE service = 'coordinator' AND subject = ANY($1::text[])
               AND fired_at IS NULL AND cancelled_at IS NULL""",
                [b, c],
            )
            == 0
        )
        moves = await pool.fetch("SELECT * FROM coordinator_transitions WHERE incident_id = $1 ORDER BY id", b)
        assert (moves[-1]["transition"], moves[-1]["actor"], moves[-1]["to_state"]) == ("merge", "carol", "resolved")
        survivor_row = await pool.fetchrow("SELECT * FROM coordinator_incidents WHERE incident_id = $1", survivor)
        assert survivor_row is not None
        assert survivor_row["state"] == "detected"
        assert survivor_row["roles"]["scribe"] == "sam@example.com"
        assert survivor_row["roles"]["commander"] == survivor_row["commander"]

        # The survivor's timeline shows the merged incidents' history, each entry saying whose it was.
        async def timeline_with_history() -> list[dict[str, Any]] | None:
            async with pool.acquire() as conn:
                lines = await read_model.list_timeline(conn, incident_id=survivor)
            merged_in = [e for e in lines if e["incident_id"] == survivor and "merged into this one" in e["summary"]]
            return lines if len(merged_in) == 2 and {b, c} <= {e["incident_id"] for e in lines} else None

        timeline = await until(timeline_with_history)
        detected_of = {e["incident_id"] for e in timeline if e["type"] == "vigil.incident.detected.v1"}

        async def scribe_carried() -> bool:
            async with pool.acquire() as conn:
                lines = await read_model.list_timeline(conn, incident_id=survivor)
            said = f"sam@example.com is the scribe, assigned by carol: carried over from incident {b}"
            return any(e["incident_id"] == survivor and e["summary"] == said for e in lines)

        await eventually(scribe_carried)
        assert detected_of == {survivor, b, c}
        [b_merged] = [e for e in timeline if e["incident_id"] == b and e["type"] == "vigil.incident.merged.v1"]
        assert b_merged["actor"] == "carol"
        assert b_merged["summary"] == f"merged into incident {survivor} with its 1 alert(s): one scanner, three hosts"
        async with pool.acquire() as conn:
            assert set(await read_model.list_merged(conn, incident_id=survivor)) == {b, c}
            b_shown = await read_model.get_incident(conn, incident_id=b)
        assert b_shown is not None and b_shown["merged_into"] == survivor

        # A later alert for a merged-away key joins the survivor.
        later = alert_dict(host="web-02", title="Port scan detected", time="2026-11-24T09:10:00Z")
        await send_alerts(settings, names, [later])
        joined = f"{later['source']}:{later['id']}"
        await eventually(lambda: pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", joined))
        assert await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", joined) == survivor
        await eventually(lambda: analysed(pool, survivor, alert_count=4), timeout=60)
        assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 3  # nothing new opened

    # The detector's own record: closed, pointing at the survivor, their keys leading to it; audited.
    rows = {r["id"]: r for r in await pool.fetch("SELECT * FROM detector_incidents")}
    assert [(rows[i]["closed"], rows[i]["merged_into"]) for i in (b, c)] == [(True, survivor), (True, survivor)]
    assert (rows[survivor]["closed"], rows[survivor]["alert_count"]) == (False, 4)
    keys = await pool.fetch("SELECT correlation_key, incident_id FROM detector_merged_keys ORDER BY 1")
    assert [(k["correlation_key"], k["incident_id"]) for k in keys] == [
        ("host:web-02", survivor),
        ("host:web-03", survivor),
    ]
    [audited] = await pool.fetch("SELECT * FROM audit_log WHERE action = 'incident.merge'")
    assert (audited["principal"], audited["target"], audited["outcome"]) == ("carol", survivor, "ok")


async def test_detached_alerts_make_a_new_incident_and_the_rest_is_analysed_again(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    scans = [
        alert_dict(
            host="db-01",
            title="Port scan detected",
            severity="low",
            src_ip="45.61.136.20",
            description="scan from 45.61.136.20",
            time=f"2026-11-24T09:0{n}:00Z",
        )
        for n in range(2)
    ]
    shell = alert_dict(
        host="db-01",
        title="Reverse shell spawned",
        severity="critical",
        src_ip="185.220.101.66",
        description="reverse shell to 185.220.101.66 from evil-c2.ru",
        time="2026-11-24T09:03:00Z",
    )
    shell_key = f"{shell['source']}:{shell['id']}"
    async with pipeline(settings, pool, names):
        await send_alerts(settings, names, [*scans, shell])
        origin = await opened(pool, "db-01")
        before = (await until(lambda: analysed(pool, origin, alert_count=3)))["analysis"]
        assert "185.220.101.66" in indicator_values(before)

        async with detector_api(settings, pool, names) as api:
            response = await api.post(
                f"/api/v1/incidents/{origin}/detach",
                json={"actor": "dave", "alerts": [shell_key], "note": "a different attack"},
                headers=await token(pool, "dave"),
            )
        assert response.status_code == 200, response.text
        done = response.json()
        new_incident = done["new_incident_id"]
        assert (done["incident_id"], done["detached"], done["alert_count"]) == (origin, [shell_key], 2)

        # The new incident is a new incident everywhere: detected, analysed, paged.
        fresh = (await until(lambda: analysed(pool, new_incident, alert_count=1), timeout=60))["analysis"]
        assert fresh["severity"] == "SEV1"
        assert {"185.220.101.66", "evil-c2.ru"} <= indicator_values(fresh)
        await eventually(
            lambda: pool.fetchval("SELECT true FROM coordinator_incidents WHERE incident_id = $1", new_incident)
        )

        # The origin is analysed again from the two alerts it keeps: the shell's indicators left with it.
        async def reanalysed() -> dict[str, Any] | None:
            shown = await analysed(pool, origin, alert_count=2)
            return shown if shown and "185.220.101.66" not in indicator_values(shown["analysis"]) else None

        again = (await until(reanalysed, timeout=60))["analysis"]
        assert "45.61.136.20" in indicator_values(again)
        async with pool.acquire() as conn:
            kept = await read_model.list_alerts(conn, incident_id=origin)
            moved = await read_model.list_alerts(conn, incident_id=new_incident)
            new_timeline = await read_model.list_timeline(conn, incident_id=new_incident)
            origin_timeline = await read_model.list_timeline(conn, incident_id=origin)
        assert sorted(a["key"] for a in kept) == sorted(f"{a['source']}:{a['id']}" for a in scans)
        assert [a["key"] for a in moved] == [shell_key]
        assert any(
            e["summary"] == f"opened from 1 alert(s) detached from incident {origin}: a different attack"
            and e["actor"] == "dave"
            for e in new_timeline
        )
        assert any(e["type"] == "vigil.incident.split.v1" and shell_key in e["summary"] for e in origin_timeline)

        # Later alerts of the entity keep joining the incident they joined before.
        later = alert_dict(host="db-01", title="Port scan detected", severity="low", time="2026-11-24T09:05:00Z")
        await send_alerts(settings, names, [later])
        later_key = f"{later['source']}:{later['id']}"
        await eventually(lambda: pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", later_key))
        assert await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", later_key) == origin

    rows = {r["id"]: r for r in await pool.fetch("SELECT * FROM detector_incidents")}
    assert (rows[origin]["alert_count"], rows[new_incident]["alert_count"]) == (3, 1)
    assert rows[new_incident]["correlation_key"] == f"detached:{new_incident}"
    assert await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", shell_key) == new_incident
    [audited] = await pool.fetch("SELECT * FROM audit_log WHERE action = 'incident.detach'")
    assert (audited["principal"], audited["target"], audited["outcome"]) == ("dave", origin, "ok")


async def test_impossible_merges_and_detaches_are_refused_with_a_reason(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    raw, coordination = names(ALERTS_RAW), names(COORDINATION)
    spec = detector_service.spec(settings)
    async with consume_loop(
        settings, pool, service="detector", topics=[raw, coordination], decoder=spec.decoder, handler=spec.handler
    ):
        await send_alerts(
            settings,
            names,
            [alert_dict(host=h, time=f"2026-11-24T09:0{n}:00Z") for n, h in enumerate(["a-1", "a-2", "a-3", "a-4"])],
        )
        a1, a2, a3, a4 = [await opened(pool, h) for h in ("a-1", "a-2", "a-3", "a-4")]
        ended = IncidentStateChanged(
            source="/vigil/coordinator",
            subject=a4,
            data=StateChange(from_state=IncidentState.DETECTED, to_state=IncidentState.RESOLVED, actor="erin"),
        )
        await produce(settings, coordination, [(a4.encode(), *_record(ended))])
        await eventually(lambda: pool.fetchval("SELECT closed FROM detector_incidents WHERE id = $1", a4))
    [only_alert] = await pool.fetch("SELECT key FROM detector_alerts WHERE incident_id = $1", a1)

    async with detector_api(settings, pool, names) as api:
        headers = await token(pool, "carol")

        async def merge(survivor: str, *others: str, key: str | None = None) -> httpx.Response:
            extra = {"Idempotency-Key": key} if key else {}
            return await api.post(
                f"/api/v1/incidents/{survivor}/merge",
                json={"actor": "carol", "incidents": list(others)},
                headers=headers | extra,
            )

        async def detach(incident_id: str, *keys: str) -> httpx.Response:
            return await api.post(
                f"/api/v1/incidents/{incident_id}/detach",
                json={"actor": "carol", "alerts": list(keys)},
                headers=headers,
            )

        refusals = {
            "itself": (await merge(a1, a1), f"incident {a1} cannot be merged into itself"),
            "unknown": (await merge(a1, "inc-nobody"), "no incident inc-nobody"),
            "unknown survivor": (await merge("inc-nobody", a1), "no incident inc-nobody"),
            "ended": (await merge(a1, a4), f"incident {a4} has ended"),
            "every alert": (await detach(a1, only_alert["key"]), f"detaching every alert of incident {a1}"),
            "not its alert": (await detach(a2, only_alert["key"]), f"incident {a2} holds no alert"),
        }
        # A retried request (same key) gets the first answer and is applied once; a new one finds it done.
        first = await merge(a1, a2, key="merge-a2")
        retried = await merge(a1, a2, key="merge-a2")
        assert first.status_code == retried.status_code == 200
        assert retried.json() == first.json()
        refusals["merged already"] = (await merge(a1, a2), f"incident {a2} was merged into {a1} already")
        refusals["survivor merged"] = (await merge(a2, a3), f"incident {a2} was merged into {a1} already: merge into")
        refusals["detach from merged"] = (await detach(a2, "x"), f"incident {a2} was merged into {a1}")
        forbidden = await api.post(
            f"/api/v1/incidents/{a1}/merge",
            json={"actor": "vic", "incidents": [a3]},
            headers=await token(pool, "vic", role="responder"),
        )
    for what, (response, reason) in refusals.items():
        assert response.status_code == 409, (what, response.text)
        assert reason in response.json()["detail"], (what, response.json())
    assert forbidden.status_code == 403

    # Each refusal is on record: a CommandRejected for the timeline, and the audit trail.
    rejected = [e for e in await outbox_events(pool, "detector") if isinstance(e, CommandRejected)]
    assert len(rejected) == len(refusals)
    assert {e.data.command for e in rejected} == {"merge", "detach"}
    assert all(e.data.actor == "carol" for e in rejected)
    audited = await pool.fetch("SELECT outcome FROM audit_log WHERE action IN ('incident.merge', 'incident.detach')")
    assert sorted(r["outcome"] for r in audited) == ["ok"] + ["refused"] * len(refusals)
    merged = [e for e in await outbox_events(pool, "detector") if isinstance(e, IncidentMerged)]
    assert [e.subject for e in merged] == [a2]


@contextlib.asynccontextmanager
async def _on_commands(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, hosts: tuple[str, str]
) -> AsyncIterator[tuple[str, str, asyncio.Task[Any]]]:
    """A detector consuming its topics, the commands' included, with an incident opened on each host."""
    spec = detector_service.spec(settings)
    async with consume_loop(
        settings,
        pool,
        service="detector",
        topics=[names(ALERTS_RAW), names(COORDINATION), names(COMMANDS)],
        decoder=spec.decoder,
        handler=spec.handler,
    ) as (_loop, task):
        await send_alerts(
            settings, names, [alert_dict(host=h, time=f"2026-11-24T09:0{n}:00Z") for n, h in enumerate(hosts)]
        )
        first, second = [await opened(pool, h) for h in hosts]
        yield first, second, task


async def test_a_merge_from_the_commands_topic_is_applied_once_however_often_delivered(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    commands = names(COMMANDS)
    async with _on_commands(settings, pool, names, ("t-1", "t-2")) as (t1, t2, _task):
        command = MergeIncidents(
            source="/tools/soar", subject=t1, data=MergeArgs(actor="soar-bot", incidents=[t2], note="same host pair")
        )
        # Delivered twice (a producer's retry): the ledger makes the second a no-op.
        await produce(settings, commands, [(t1.encode(), *_record(command)), (t1.encode(), *_record(command))])
        await eventually(lambda: pool.fetchval("SELECT merged_into FROM detector_incidents WHERE id = $1", t2))

        # Both deliveries were taken (the offset is past the second) before the outcome is judged.
        await eventually(lambda: _committed_is(settings, commands, 2))
    events = await outbox_events(pool, "detector")
    assert [e.subject for e in events if isinstance(e, IncidentMerged)] == [t2]
    assert not [e for e in events if isinstance(e, CommandRejected)]
    [audited] = await pool.fetch("SELECT * FROM audit_log WHERE action = 'incident.merge'")
    assert (audited["principal"], audited["outcome"]) == ("soar-bot", "ok")


async def test_a_command_with_no_one_named_is_dead_lettered_and_the_next_is_applied(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    commands = names(COMMANDS)
    async with _on_commands(settings, pool, names, ("u-1", "u-2")) as (u1, u2, task):
        # Another tool's command naming a blank actor: no one to audit it under.
        nobody = MergeIncidents(source="/tools/soar", subject=u1, data=MergeArgs(actor=" ", incidents=[u2]))
        command = MergeIncidents(source="/tools/soar", subject=u1, data=MergeArgs(actor="soar-bot", incidents=[u2]))
        await produce(settings, commands, [(u1.encode(), *_record(nobody)), (u1.encode(), *_record(command))])
        await eventually(lambda: _committed_is(settings, commands, 2))
        assert not task.done()
    assert await pool.fetchval("SELECT merged_into FROM detector_incidents WHERE id = $1", u2) == u1
    [dead] = await read_all(settings, names(EVENTS_DLQ), expect=1)
    headers = dict(dead.headers)
    assert (headers["vigil_dlq_topic"], headers["vigil_dlq_offset"]) == (commands.encode(), b"0")
    assert [r["principal"] for r in await pool.fetch("SELECT principal FROM audit_log")] == ["soar-bot"]


async def _committed_is(settings: VigilSettings, topic: str, expected: int) -> bool:
    return (await committed(settings, group_id(settings, "detector"), topic) or 0) == expected


def _record(event: EventBase) -> tuple[bytes, list[tuple[str, bytes]]]:
    encoded = cloudevents.encode(event)
    return encoded.value, list(encoded.headers)


async def test_the_cli_merges_and_detaches_through_the_detectors_api(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "console", Console(width=250))  # one answer, one line
    monkeypatch.setattr(cli_module, "err", Console(width=250, stderr=True))
    raw = names(ALERTS_RAW)
    spec = detector_service.spec(settings)
    async with consume_loop(
        settings, pool, service="detector", topics=[raw], decoder=spec.decoder, handler=spec.handler
    ):
        await send_alerts(
            settings,
            names,
            [alert_dict(host=h, time=f"2026-11-24T09:0{n}:00Z") for n, h in enumerate(["c-1", "c-1", "c-2"])],
        )
        c1, c2 = [await opened(pool, h) for h in ("c-1", "c-2")]
        await eventually(lambda: pool.fetchval("SELECT count(*) = 3 FROM detector_alerts"))
    first_key = await pool.fetchval("SELECT key FROM detector_alerts WHERE incident_id = $1 ORDER BY key LIMIT 1", c1)

    async def vigil(url: str, command: list[str]) -> Result:
        env = {"VIGIL_DETECTOR_URL": url, "VIGIL_ACTOR": "frank", "COLUMNS": "200"}
        return await asyncio.to_thread(functools.partial(CliRunner().invoke, cli_app, command, env=env))

    async with detector_app(settings, pool, names) as app, serve_app(app, name="detector-api") as url:
        merged = await vigil(url, ["incidents", "merge", c1, c2, "--note", "same switch"])
        refused = await vigil(url, ["incidents", "merge", c1, c2])
        detached = await vigil(url, ["incidents", "detach", c1, first_key, "--json"])
    assert merged.exit_code == 0, merged.output
    assert f"merged {c2} into {c1}: 1 alert(s) moved, 3 in all" in merged.output
    assert refused.exit_code == 1
    assert f"incident {c2} was merged into {c1} already (409)" in refused.output
    assert detached.exit_code == 0, detached.output
    answer = json.loads(detached.output)
    assert (answer["incident_id"], answer["detached"], answer["alert_count"]) == (c1, [first_key], 2)
    assert (
        await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", first_key)
        == (answer["new_incident_id"])
    )
    # Without authentication configured, the actor is the one the CLI names.
    actors = await pool.fetch("SELECT DISTINCT principal FROM audit_log WHERE action LIKE 'incident.%'")
    assert [r["principal"] for r in actors] == ["frank"]


async def test_alerts_arriving_while_a_merge_commits_join_the_survivor(pool: asyncpg.Pool, names: TopicNames) -> None:
    detector = Detector(correlation_window=timedelta(minutes=30))

    async def store(*alerts: Alert) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await detector.handle_alerts(HandlerContext(conn=conn, service="detector", names=names), list(alerts))

    await store(alert(host="web-a"), alert(minutes=1, host="web-b"))
    a, b = [await opened(pool, h) for h in ("web-a", "web-b")]
    late = alert(minutes=2, host="web-b")
    async with pool.acquire() as merging:
        merge = merging.transaction()
        await merge.start()
        command = MergeIncidents(source="/test", subject=a, data=MergeArgs(actor="carol", incidents=[b]))
        applied = await commands.apply(HandlerContext(conn=merging, service="detector", names=names), command)
        assert isinstance(applied, commands.Applied)
        # The batch finds web-b's incident open, and waits for its lock until the merge commits.
        racing = asyncio.create_task(store(late))
        await eventually(
            lambda: pool.fetchval(
                """SELECT count(*) > 0 FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
        )
        await merge.commit()
    await racing
    assert await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", late.key) == a
    assert await pool.fetchval("SELECT count(*) FROM detector_alerts WHERE incident_id = $1", b) == 0
    assert await pool.fetchval("SELECT alert_count FROM detector_incidents WHERE id = $1", a) == 3


async def test_later_alerts_of_a_rule_group_merged_away_join_the_survivor(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    # The shipped rules: failed logins, then a successful one, on one account.
    shipped = RulesSource(SHIPPED_CORRELATIONS)
    detector = Detector(correlation_window=timedelta(minutes=30), correlation_rules=shipped)

    async def store(*alerts: Alert) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await detector.handle_alerts(HandlerContext(conn=conn, service="detector", names=names), list(alerts))

    def login(minutes: int, tag: str) -> Alert:
        return alert(minutes=minutes, source="ad", host=None, src_ip=None, dst_ip=None, user="bob", tags=[tag])

    await store(login(0, "authentication_failed"), login(1, "authentication_success"), alert(minutes=1, host="web-k"))
    guessed = await pool.fetchval("SELECT id FROM detector_incidents WHERE correlation_key LIKE 'brute-force%'")
    kept = await opened(pool, "web-k")
    async with pool.acquire() as conn, conn.transaction():
        command = MergeIncidents(source="/test", subject=kept, data=MergeArgs(actor="carol", incidents=[guessed]))
        assert isinstance(
            await commands.apply(HandlerContext(conn=conn, service="detector", names=names), command), commands.Applied
        )
    later = login(3, "authentication_success")  # the same account, within the group's window
    await store(later)
    assert await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", later.key) == kept
    assert await pool.fetchval("SELECT count(*) FROM detector_waiting") == 0
    survivor = await pool.fetchrow("SELECT alert_count, correlation_key FROM detector_incidents WHERE id = $1", kept)
    assert survivor is not None and survivor["alert_count"] == 4
    assert survivor["correlation_key"].startswith("host:web-k")  # the survivor keeps its own key
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents WHERE NOT closed") == 1


def brute_force_detector(pool: asyncpg.Pool, names: TopicNames) -> Callable[..., Awaitable[None]]:
    """Store batches of alerts as the detector does, with the shipped rules (failed logins, then a success)."""
    detector = Detector(correlation_window=timedelta(minutes=30), correlation_rules=RulesSource(SHIPPED_CORRELATIONS))

    async def store(*alerts: Alert) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await detector.handle_alerts(HandlerContext(conn=conn, service="detector", names=names), list(alerts))

    return store


def login(minutes: int, tag: str) -> Alert:
    return alert(minutes=minutes, source="ad", host=None, src_ip=None, dst_ip=None, user="bob", tags=[tag])


async def merge_guessed_into_web_k(pool: asyncpg.Pool, names: TopicNames) -> tuple[str, str]:
    """Return the brute-force incident and web-k's, into which it was merged."""
    guessed = await pool.fetchval("SELECT id FROM detector_incidents WHERE correlation_key LIKE 'brute-force%'")
    kept = await opened(pool, "web-k")
    async with pool.acquire() as conn, conn.transaction():
        command = MergeIncidents(source="/test", subject=kept, data=MergeArgs(actor="carol", incidents=[guessed]))
        assert isinstance(
            await commands.apply(HandlerContext(conn=conn, service="detector", names=names), command), commands.Applied
        )
    return guessed, kept


async def test_a_merged_away_rule_group_joins_the_survivor_whatever_else_of_the_batch_reaches_it(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    store = brute_force_detector(pool, names)
    await store(login(0, "authentication_failed"), login(1, "authentication_success"), alert(minutes=1, host="web-k"))
    _guessed, kept = await merge_guessed_into_web_k(pool, names)
    # The group's later alert and the survivor's own in one batch: grouping does not depend on batch cuts.
    later, also = login(3, "authentication_success"), alert(minutes=3, host="web-k")
    await store(later, also)
    joined = await pool.fetch(
        "SELECT incident_id FROM detector_alerts WHERE key = ANY($1::text[])", [later.key, also.key]
    )
    assert [r["incident_id"] for r in joined] == [kept, kept]
    assert await pool.fetchval("SELECT count(*) FROM detector_waiting") == 0
    assert await pool.fetchval("SELECT alert_count FROM detector_incidents WHERE id = $1", kept) == 5


async def test_a_merged_in_rule_group_whose_every_alert_is_detached_follows_them(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    store = brute_force_detector(pool, names)
    logins = [login(0, "authentication_failed"), login(1, "authentication_success")]
    await store(*logins, alert(minutes=1, host="web-k"))
    _guessed, kept = await merge_guessed_into_web_k(pool, names)
    async with pool.acquire() as conn, conn.transaction():
        detach = DetachAlerts(
            source="/test", subject=kept, data=DetachArgs(actor="carol", alerts=[a.key for a in logins])
        )
        applied = await commands.apply(HandlerContext(conn=conn, service="detector", names=names), detach)
    assert isinstance(applied, commands.Applied) and applied.new_incident_id is not None
    follows = await pool.fetchval("SELECT incident_id FROM detector_merged_keys WHERE correlation_key LIKE 'brute%'")
    assert follows == applied.new_incident_id
    later = login(3, "authentication_success")  # the same account, within the group's window
    await store(later)
    assert await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", later.key) == follows
