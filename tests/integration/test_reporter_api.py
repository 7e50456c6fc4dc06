"""The reporter's query API against the real Postgres: filters, full-text search, cursor paging,
sorting, one incident with everything known of it, the alert history, and who may read."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.reporter import api as reporter_api
from services.reporter import handlers as reporter
from services.reporter import repository
from services.reporter.queries import IncidentFilter, incident_query
from shared import identity
from shared.alerts import AlertSeverity
from shared.consumer import HandlerContext, Inbound
from shared.events import (
    AddNote,
    AlertsSuppressed,
    Analysis,
    CommandRejected,
    CommandRejection,
    Escalation,
    EventBase,
    FieldChange,
    Impact,
    IncidentAnalyzed,
    IncidentDetected,
    IncidentEdited,
    IncidentEdits,
    IncidentEscalated,
    IncidentState,
    IncidentStateChanged,
    IncidentType,
    Indicator,
    NoteArgs,
    OpenedTask,
    Severity,
    StateChange,
    SuppressedAlerts,
    SuppressedAlertSummary,
    SuppressedBy,
    TaskCompleted,
    TaskDone,
    TasksCreated,
    TasksOpened,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import T0, snapshot
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SEVERITIES = [Severity.SEV1, Severity.SEV2, Severity.SEV3, Severity.SEV4]


def _alert(n: int, source: str, host: str) -> dict[str, Any]:
    return {
        "key": f"{source}:{n}",
        "source": source,
        "title": f"alert {n}",
        "severity": "high",
        "time": T0 + timedelta(minutes=n),
        "host": host,
        "rule": f"rule-{source}",
    }


def _events(n: int) -> list[EventBase]:
    """Incident n: every fourth a SEV1, alternate sources, one in ten acknowledged by carol."""
    incident_id = f"inc-{n:03d}"
    source = "falco" if n % 2 else "suricata"
    host = f"web-{n:02d}"
    title = "Ransomware note dropped on file server" if n == 7 else f"Port scan number {n}"
    events: list[EventBase] = [
        IncidentDetected(
            source="/vigil/detector",
            subject=incident_id,
            time=T0 + timedelta(minutes=n, seconds=20),
            data=snapshot(
                title=title,
                severity=SEVERITIES[n % 4],
                type=IncidentType.DATA_LEAK if n % 3 == 0 else IncidentType.SECURITY_BREACH,
                first_seen=T0 + timedelta(minutes=n),
                hosts=[host],
                new_alerts=[_alert(n, source, host)],
            ),
        ),
        IncidentAnalyzed(
            source="/vigil/analyzer",
            subject=incident_id,
            time=T0 + timedelta(minutes=n, seconds=30),
            data=Analysis(
                type=IncidentType.SECURITY_BREACH,
                severity=SEVERITIES[n % 4],
                title=title,
                indicators=[Indicator(kind="ipv4", value=f"203.0.113.{n}")],
                affected_hosts=[host],
                affected_users=[],
                alert_count=1,
                summary=f"scan from 203.0.113.{n}",
                impact=Impact(business_services=["payments"] if n < 5 else []),
            ),
        ),
    ]
    if n % 10 == 0:
        events.append(
            IncidentStateChanged(
                source="/vigil/coordinator",
                subject=incident_id,
                time=T0 + timedelta(minutes=n, seconds=50),
                data=StateChange(from_state=IncidentState.DETECTED, to_state=IncidentState.ACKNOWLEDGED, actor="carol"),
            )
        )
        events.append(
            IncidentEscalated(
                source="/vigil/coordinator",
                subject=incident_id,
                time=T0 + timedelta(minutes=n, seconds=55),
                data=Escalation(
                    commander="carol",
                    channel="page",
                    reason="on call",
                    title=title,
                    type=IncidentType.DATA_LEAK,
                    severity=SEVERITIES[n % 4],
                    classification_reason="",
                    severity_reason="",
                    alert_count=1,
                    hosts=[host],
                    users=[],
                    first_seen=T0,
                    last_seen=T0,
                    alerts=[],
                ),
            )
        )
    return events


@pytest.fixture
async def seeded(pool: asyncpg.Pool, names: TopicNames) -> int:
    """40 incidents through the reporter's own handlers."""
    events = [e for n in range(40) for e in _events(n)]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in events])
    return 40


@pytest.fixture
async def client(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=TopicNames())  # type: ignore[arg-type]
    async with (
        serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-api") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        yield http


async def _ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get("/api/v1/incidents", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()]


async def test_filters(seeded: int, client: httpx.AsyncClient) -> None:
    every = await _ids(client)
    assert len(every) == seeded
    assert every[:3] == ["inc-039", "inc-038", "inc-037"]  # newest first
    assert await _ids(client, severity="SEV1") == [f"inc-{n:03d}" for n in range(36, -1, -4)]
    assert set(await _ids(client, severity=["SEV1", "SEV2"])) == {f"inc-{n:03d}" for n in range(40) if n % 4 < 2}
    assert set(await _ids(client, state="acknowledged")) == {"inc-000", "inc-010", "inc-020", "inc-030"}
    assert set(await _ids(client, commander="carol")) == {"inc-000", "inc-010", "inc-020", "inc-030"}
    assert len(await _ids(client, type="data_leak")) == 14
    assert len(await _ids(client, source="falco")) == 20
    assert await _ids(client, asset="web-07") == ["inc-007"]
    assert await _ids(client, indicator="203.0.113.12") == ["inc-012"]
    assert await _ids(client, service="payments") == ["inc-004", "inc-003", "inc-002", "inc-001", "inc-000"]
    since, until = (T0 + timedelta(minutes=10)).isoformat(), (T0 + timedelta(minutes=13)).isoformat()
    assert await _ids(client, since=since, until=until) == ["inc-012", "inc-011", "inc-010"]
    # The short ids the CLI prints, among every incident ever, not only the newest page.
    assert await _ids(client, id_prefix="inc-00", limit=3) == ["inc-009", "inc-008", "inc-007"]
    assert await _ids(client, id_prefix="inc-000") == ["inc-000"]
    assert await _ids(client, id_prefix="inc_%") == []  # a prefix, not a pattern
    # Several filters narrow together.
    assert await _ids(client, source="falco", severity="SEV4", since=since) == [
        f"inc-{n:03d}" for n in range(39, 10, -4)
    ]


async def test_full_text_search(seeded: int, client: httpx.AsyncClient) -> None:
    assert await _ids(client, q="ransomware") == ["inc-007"]
    assert await _ids(client, q="file servers") == ["inc-007"]  # stemmed
    assert await _ids(client, q='"port scan" -ransomware', limit=3) == ["inc-039", "inc-038", "inc-037"]
    assert await _ids(client, q="web-07") == ["inc-007"]
    assert await _ids(client, q="nothing-like-this") == []


async def test_cursor_paging_visits_every_incident_once(seeded: int, client: httpx.AsyncClient) -> None:
    for sort, order in [
        ("created_at", "desc"),
        ("severity", "asc"),
        ("severity", "desc"),
        ("alert_count", "desc"),
        ("updated_at", "asc"),
    ]:
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 7, "sort": sort, "order": order}
        pages = 0
        while True:
            response = await client.get("/api/v1/incidents", params=params)
            assert response.status_code == 200, response.text
            seen += [i["id"] for i in response.json()]
            pages += 1
            cursor = response.headers.get("X-Next-Cursor")
            if cursor is None:
                assert "Link" not in response.headers
                break
            assert 'rel="next"' in response.headers["Link"]
            params = {**params, "cursor": cursor}
        assert sorted(seen) == sorted(set(seen)) and len(seen) == seeded, (sort, order)
        assert pages == 6


async def test_by_severity_desc_is_the_most_severe_first_across_pages(seeded: int, client: httpx.AsyncClient) -> None:
    """SEV1 is the highest severity: "desc" (the web form's "highest first") starts with it, page after page."""
    for order, expected in (("desc", SEVERITIES), ("asc", SEVERITIES[::-1])):
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 7, "sort": "severity", "order": order}
        while True:
            response = await client.get("/api/v1/incidents", params=params)
            assert response.status_code == 200, response.text
            seen += response.json()
            if (cursor := response.headers.get("X-Next-Cursor")) is None:
                break
            params = {**params, "cursor": cursor}
        assert [i["severity"] for i in seen] == [s.value for s in expected for _ in range(seeded // 4)], order
        assert len({i["id"] for i in seen}) == seeded


async def test_a_bad_cursor_or_filter_is_a_clear_400_or_422(seeded: int, client: httpx.AsyncClient) -> None:
    first = await client.get("/api/v1/incidents", params={"limit": 5})
    cursor = first.headers["X-Next-Cursor"]
    wrong = await client.get("/api/v1/incidents", params={"cursor": cursor, "sort": "severity"})
    assert wrong.status_code == 400 and "sort=created_at" in wrong.json()["detail"]
    assert (await client.get("/api/v1/incidents", params={"cursor": "garbage"})).status_code == 400
    assert (await client.get("/api/v1/incidents", params={"severity": "SEV9"})).status_code == 422
    assert (await client.get("/api/v1/incidents", params={"sort": "id"})).status_code == 422


def _crafted(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


async def test_a_crafted_cursor_is_a_400_never_a_500(seeded: int, client: httpx.AsyncClient) -> None:
    at = "2026-11-24T09:00:00+00:00"
    refused = [
        ("/api/v1/incidents", {}, _crafted("created_at", "desc", at, 5)),
        ("/api/v1/incidents", {}, _crafted("created_at", "desc", "2026-11-24T09:00:00", "inc-001")),
        ("/api/v1/incidents", {}, _crafted("created_at", "desc", "0001-01-01T00:00:00+01:00", "inc-001")),
        ("/api/v1/incidents", {"sort": "alert_count"}, _crafted("alert_count", "desc", 2**40, "inc-001")),
        ("/api/v1/incidents", {"sort": "severity"}, _crafted("severity", "desc", "SEV1", "inc-\x00")),
        ("/api/v1/alerts", {}, _crafted("time", "desc", at, 5)),
        ("/api/v1/alerts", {}, _crafted("time", "desc", "9999-12-31T23:00:00-05:00", "inc-001/falco:1")),
    ]
    for path, params, cursor in refused:
        response = await client.get(path, params={**params, "cursor": cursor})
        assert response.status_code == 400, (path, params, response.text)
        assert response.json()["detail"] == "the cursor is not one this API gave out"
    # The web view says so and shows the first page.
    page = await client.get("/ui/incidents", params={"cursor": _crafted("created_at", "desc", at, 5)})
    assert page.status_code == 200, page.text
    assert "the cursor is not one this API gave out; showing the first page" in page.text
    # A cursor of ours from the first moment a datetime holds still pages.
    earliest = _crafted("created_at", "asc", "0001-01-01T00:00:00+00:00", "")
    first = await client.get("/api/v1/incidents", params={"order": "asc", "cursor": earliest, "limit": 1000})
    assert first.status_code == 200 and len(first.json()) == seeded


async def test_indicators_and_hosts_are_found_however_they_are_written(
    seeded: int, pool: asyncpg.Pool, names: TopicNames, client: httpx.AsyncClient
) -> None:
    """Indicators are stored canonical (lower-case hashes, compressed IPv6), hosts as the alerts spelled them."""
    digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    detected = IncidentDetected(
        source="/vigil/detector",
        subject="inc-win",
        time=T0 + timedelta(hours=2),
        data=snapshot(title="Dropper on a desktop", hosts=["DESKTOP-7QK2M", "---"]),
    )
    analyzed = IncidentAnalyzed(
        source="/vigil/analyzer",
        subject="inc-win",
        time=T0 + timedelta(hours=2),
        data=Analysis(
            type=IncidentType.SECURITY_BREACH,
            severity=Severity.SEV2,
            title="Dropper on a desktop",
            indicators=[Indicator(kind="sha256", value=digest), Indicator(kind="ipv6", value="2001:db8::1")],
            affected_hosts=["DESKTOP-7QK2M"],
            affected_users=[],
            alert_count=1,
            summary="a dropper",
        ),
    )
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in (detected, analyzed)])

    for indicator in (digest, digest.upper(), "2001:db8::1", "2001:DB8::1", "2001:db8:0:0::1"):
        assert await _ids(client, indicator=indicator) == ["inc-win"], indicator
    for asset in ("DESKTOP-7QK2M", "desktop-7qk2m", "Desktop-7Qk2m", "---"):
        assert await _ids(client, asset=asset) == ["inc-win"], asset
    # Whole names only, as before: a part of a name, or a name that shares its words, is not it.
    for asset in ("desktop", "7qk2m", "DESKTOP 7QK2M", "--", "WEB-0"):
        assert await _ids(client, asset=asset) == [], asset
    assert await _ids(client, asset="WEB-07") == ["inc-007"]
    assert await _ids(client, indicator="E3B0C442") == []


async def test_the_host_and_indicator_filters_are_answered_by_an_index(pool: asyncpg.Pool) -> None:
    """Each can be answered by a GIN index (at 100,000 incidents the planner picks it; fewer, it may scan)."""
    await pool.execute(
        """INSERT INTO reporter_incidents (id, title, type, severity, state, alert_count, created_at, updated_at,
                                           detected_at, hosts, indicators)
           SELECT 'inc-' || n, 'Port scan ' || n, 'security_breach', 'SEV' || (n % 4 + 1), 'detected', 1,
                  $1::timestamptz + n * interval '1 minute', $1::timestamptz + n * interval '1 minute',
                  $1::timestamptz + n * interval '1 minute',
                  ARRAY['DESKTOP-' || n, 'web-' || n || '.corp.example'], ARRAY['198.51.100.' || (n % 250)]
           FROM generate_series(1, 5000) AS n""",
        T0,
    )
    await pool.execute("ANALYZE reporter_incidents")
    naming_7 = [f"inc-{n}" for n in range(4757, 0, -250)]  # newest first, each n % 250 == 7
    for filters, index, expected in (
        (IncidentFilter(asset="desktop-1234"), "reporter_incidents_search", ["inc-1234"]),
        (IncidentFilter(asset="Web-1234.Corp.Example"), "reporter_incidents_search", ["inc-1234"]),
        (IncidentFilter(indicator="198.51.100.7"), "reporter_incidents_arrays", naming_7),
    ):
        sql, args = incident_query("id", filters, limit=100)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
        assert f"Bitmap Index Scan on {index}" in plan, (filters, plan)
        assert [r["id"] for r in await pool.fetch(sql, *args)] == expected, filters


async def test_one_incident_with_everything_known_of_it(
    seeded: int, settings: VigilSettings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sla = tmp_path / "sla.yaml"
    sla.write_text("targets:\n  SEV3: {time_to_acknowledge: 10s}\n")
    runtime = Runtime(
        service="reporter",
        settings=settings.model_copy(update={"sla_file": sla}),
        pool=pool,
        producer=None,  # type: ignore[arg-type]
        names=TopicNames(),
    )
    async with (
        serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-api") as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await _one_incident(client)


async def _one_incident(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/incidents/inc-010")
    assert response.status_code == 200
    incident = response.json()
    assert incident["title"] == "Port scan number 10"
    assert [a["key"] for a in incident["alerts"]] == ["suricata:10"]
    assert [(i["kind"], i["value"], i["verdict"]) for i in incident["indicators"]] == [("ipv4", "203.0.113.10", None)]
    assert incident["analysis"]["summary"] == "scan from 203.0.113.10"
    assert [t["actor"] for t in incident["timeline"]] == ["detector", "analyzer", "carol", "coordinator"]
    times = incident["response_times"]
    assert times["durations"]["time_to_detect"] == 20.0
    assert times["durations"]["time_to_acknowledge"] == 30.0
    # A SEV3, acknowledged after 30 s where the target is 10 s.
    assert times["breaches"] == [
        {"measure": "time_to_acknowledge", "target_s": 10.0, "actual_s": 30.0, "running": False}
    ]
    history = (await client.get("/api/v1/incidents/inc-010/history")).json()
    assert [h["type"] for h in history][:2] == ["vigil.incident.detected.v1", "vigil.incident.analyzed.v1"]
    assert (await client.get("/api/v1/incidents/nope")).status_code == 404
    assert (await client.get("/api/v1/incidents/nope/timeline")).status_code == 404
    assert (await client.get("/api/v1/incidents/nope/history")).status_code == 404


async def test_the_alert_history_pages_newest_first(seeded: int, client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 15, "source": "falco"}
    while True:
        response = await client.get("/api/v1/alerts", params=params)
        assert response.status_code == 200, response.text
        seen += [a["key"] for a in response.json()]
        if (cursor := response.headers.get("X-Next-Cursor")) is None:
            break
        params = {**params, "cursor": cursor}
    assert seen == [f"falco:{n}" for n in range(39, 0, -2)]
    [one] = (await client.get("/api/v1/alerts", params={"incident": "inc-005"})).json()
    assert (one["incident_id"], one["status"], one["repeats"]) == ("inc-005", "firing", 0)
    assert (one["suppressed"], one["suppressed_by"]) == (False, None)


def _held(n: int, *, repeats: int = 0) -> SuppressedAlertSummary:
    """A falco alert held back between incident n's alert and the next one's (in time)."""
    return SuppressedAlertSummary(
        key=f"falco:held-{n}",
        source="falco",
        title=f"held {n}",
        severity=AlertSeverity.LOW,
        time=T0 + timedelta(minutes=n, seconds=30),
        host="web-99",
        occurrence=str(n),
        repeats=repeats,
    )


SILENCE = SuppressedBy(kind="silence", id="s-1", name="disk swap, CHG-1", reason="silenced by ana until 11:00 UTC")
WINDOW = SuppressedBy(kind="maintenance", id="w-1", name="db patching", reason="maintenance window 'db patching'")


@pytest.fixture
async def held(seeded: int, pool: asyncpg.Pool, names: TopicNames) -> list[AlertsSuppressed]:
    """Ten falco alerts held back (odd ones by a silence, even ones by a window), then one seen again
    while a late event, of an earlier batch, says what held it back before."""
    events = [
        AlertsSuppressed(
            source="/vigil/detector",
            subject=f"{by.kind}:{by.id}",
            time=T0 + timedelta(hours=1),
            data=SuppressedAlerts(suppressed_by=by, alerts=[_held(n) for n in range(10) if n % 2 == parity]),
        )
        for by, parity in ((SILENCE, 1), (WINDOW, 0))
    ]
    again = SuppressedAlerts(suppressed_by=SILENCE, alerts=[_held(3, repeats=4)])
    events.append(
        AlertsSuppressed(source="/vigil/detector", subject="silence:s-1", time=T0 + timedelta(hours=2), data=again)
    )
    earlier = SuppressedAlerts(suppressed_by=WINDOW, alerts=[_held(3, repeats=1)])
    events.append(AlertsSuppressed(source="/vigil/detector", subject="maintenance:w-1", time=T0, data=earlier))
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in events])
    return events


async def _pages(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    params = {"limit": 7, **params}
    while True:
        response = await client.get("/api/v1/alerts", params=params)
        assert response.status_code == 200, response.text
        seen += response.json()
        if (cursor := response.headers.get("X-Next-Cursor")) is None:
            return seen
        params = {**params, "cursor": cursor}


async def test_the_alert_history_holds_the_suppressed_alerts_marked_with_what_held_them_back(
    held: list[AlertsSuppressed], pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    # One history, newest first, paged by one cursor: each incident's alert and each held-back alert once.
    falco = await _pages(client, source="falco")
    expected = sorted(
        [*((n * 60, f"falco:{n}") for n in range(1, 40, 2)), *((n * 60 + 30, f"falco:held-{n}") for n in range(10))],
        reverse=True,
    )
    assert [a["key"] for a in falco] == [key for _, key in expected]
    assert [a["key"] for a in falco][14:18] == ["falco:11", "falco:held-9", "falco:9", "falco:held-8"]
    by_key = {a["key"]: a for a in falco}
    silenced, maintained = by_key["falco:held-1"], by_key["falco:held-0"]
    assert (silenced["suppressed"], silenced["incident_id"], silenced["status"]) == (True, None, "firing")
    assert silenced["suppressed_by"] == SILENCE.model_dump()
    assert (silenced["title"], silenced["host"], silenced["severity"]) == ("held 1", "web-99", "low")
    assert maintained["suppressed_by"]["name"] == "db patching"
    # Seen again: its repeats counted; what holds it back is the latest sighting's, whatever came last.
    again = by_key["falco:held-3"]
    assert (again["repeats"], again["suppressed_by"]["id"]) == (4, "s-1")
    assert again["last_seen"] == (T0 + timedelta(hours=2)).isoformat().replace("+00:00", "Z")

    only = await _pages(client, suppressed="only")
    assert [a["key"] for a in only] == [f"falco:held-{n}" for n in range(9, -1, -1)]
    without = await _pages(client, source="falco", suppressed="exclude")
    assert [a["key"] for a in without] == [f"falco:{n}" for n in range(39, 0, -2)]
    # Held back from incidents: never an incident's, never told resolved.
    assert [a["key"] for a in await _pages(client, incident="inc-005")] == ["falco:5"]
    assert all(not a["suppressed"] for a in await _pages(client, status="resolved"))
    assert (await client.get("/api/v1/alerts", params={"suppressed": "maybe"})).status_code == 422

    # Kept as history, on no incident's timeline.
    ids = [e.id for e in held]
    assert await pool.fetchval("SELECT count(*) FROM reporter_history WHERE event_id = ANY($1::text[])", ids) == 4
    assert await pool.fetchval("SELECT count(*) FROM reporter_timeline WHERE event_id = ANY($1::text[])", ids) == 0


async def test_who_may_read(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="reporter", settings=secured, pool=pool, producer=None, names=TopicNames())  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        viewer = (await identity.create_token(conn, name="v", role="viewer", created_by="test")).text
        ingest = (await identity.create_token(conn, name="i", role="ingest", created_by="test")).text
    async with (
        serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-api") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        for path in ("/api/v1/incidents", "/api/v1/alerts"):
            assert (await http.get(path)).status_code == 401
            assert (await http.get(path, headers={"Authorization": f"Bearer {ingest}"})).status_code == 403
            assert (await http.get(path, headers={"Authorization": f"Bearer {viewer}"})).status_code == 200


async def test_response_metrics_per_group(seeded: int, client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/metrics/response", params={"by": "source"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["incidents"] == seeded
    groups = {g["group"]: g for g in report["groups"]}
    assert {name: g["incidents"] for name, g in groups.items()} == {"falco": 20, "suricata": 20}
    # Suricata fed the even incidents; those acknowledged (0, 10, 20, 30) were, 30 s after detection.
    assert groups["suricata"]["mean_s"]["time_to_acknowledge"] == 30.0
    assert groups["falco"]["mean_s"]["time_to_acknowledge"] is None
    assert groups["falco"]["mean_s"]["time_to_detect"] == 20.0
    since = (T0 + timedelta(minutes=30)).isoformat()
    late = (await client.get("/api/v1/metrics/response", params={"by": "all", "since": since})).json()
    assert [g["incidents"] for g in late["groups"]] == [10]
    assert (await client.get("/api/v1/metrics/response", params={"by": "moon"})).status_code == 422


async def test_reports_and_exports(seeded: int, client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    report = await client.get("/api/v1/incidents/inc-010/report", params={"format": "md"})
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
    assert (
        report.text.startswith("# Post-mortem: Port scan number 10")
        and "## Response times against targets" in report.text
    )
    page = await client.get("/api/v1/incidents/inc-010/report")
    assert page.headers["content-type"].startswith("text/html") and "<svg" in page.text
    finding = (await client.get("/api/v1/incidents/inc-010/ocsf")).json()
    assert (finding["class_uid"], finding["assignee"]) == (2005, {"name": "carol"})
    assert (await client.get("/api/v1/incidents/nope/report")).status_code == 404
    assert (await client.get("/api/v1/incidents/nope/ocsf")).status_code == 404
    since = (T0 + timedelta(minutes=30)).isoformat()
    compliance = await client.get("/api/v1/reports/compliance", params={"since": since, "format": "md"})
    assert "10 incident(s) created in the period." in compliance.text
    exported = await client.get("/api/v1/export/incidents", params={"format": "csv", "since": since})
    lines = exported.text.splitlines()
    assert lines[0].startswith("id,title,type,severity,state") and len(lines) == 11
    timelines = (await client.get("/api/v1/export/timelines", params={"since": since})).json()
    assert {t["incident_id"] for t in timelines} == {f"inc-{n:03d}" for n in range(30, 40)}
    assert (await client.get("/api/v1/export/everything")).status_code == 422
    # Everything, with no period: read from a cursor a batch at a time, written as it is read.
    everything = (await client.get("/api/v1/export/incidents")).json()
    async with pool.acquire() as conn, conn.transaction():
        batches = [b async for b in repository.export_rows(conn, kind="incidents", since=None, until=None, batch=7)]
    assert [len(b) for b in batches] == [7, 7, 7, 7, 7, 5] and len(everything) == seeded
    assert [r["id"] for b in batches for r in b] == [r["id"] for r in everything]


@pytest.fixture
def new_york() -> Iterator[None]:
    """The reporter on a host whose clock is not UTC (`vigil up` on a laptop)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


async def test_a_period_that_says_no_zone_is_utc_whatever_the_servers_zone(
    seeded: int, client: httpx.AsyncClient, new_york: None
) -> None:
    """As the CLI and the web view read it, and as the report prints it: not the server's local time, in
    which Postgres' driver would take it (five hours later in New York, leaving out the incidents meant)."""
    since, until = "2026-11-24T09:30:00", "2026-11-24T09:10:00"  # T0 + 30 min, T0 + 10 min, in UTC
    assert len(await _ids(client, since=since)) == len(await _ids(client, until=until)) == 10
    late = (await client.get("/api/v1/metrics/response", params={"by": "all", "since": since})).json()
    assert late["incidents"] == 10
    compliance = await client.get("/api/v1/reports/compliance", params={"since": since, "format": "md"})
    assert "Period: 2026-11-24 09:30:00 UTC" in compliance.text
    assert "10 incident(s) created in the period." in compliance.text
    exported = await client.get("/api/v1/export/incidents", params={"format": "csv", "until": until})
    assert len(exported.text.splitlines()) == 11


async def test_an_incident_edited_before_its_detection_is_counted_from_its_detection(
    pool: asyncpg.Pool, names: TopicNames, client: httpx.AsyncClient
) -> None:
    """The coordination topic is read apart from the incidents topic: a title edit read first makes a row
    with a title, no severity or type, and its row's time for a creation time. No list, metric, report or
    export counts it until its detection is read (the compliance report failed on it: a 500)."""
    edited = IncidentEdited(
        source="/vigil/coordinator",
        subject="inc-early",
        time=T0,
        data=IncidentEdits(actor="alice", reason="clearer", changes={"title": FieldChange(before="x", after="Ours")}),
    )
    detected = IncidentDetected(source="/vigil/detector", subject="inc-early", time=T0, data=snapshot(title="seen"))

    async def counted() -> tuple[list[str], int, str, str]:
        listed = await _ids(client)
        metrics = (await client.get("/api/v1/metrics/response", params={"by": "all"})).json()["incidents"]
        report = await client.get("/api/v1/reports/compliance", params={"format": "md"})
        assert report.status_code == 200, report.text
        exported = (await client.get("/api/v1/export/incidents", params={"format": "csv"})).text
        return listed, metrics, report.text, exported

    for events, seen in (([edited], False), ([detected], True)):
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="reporter", names=names)
            await reporter.handle(ctx, [Inbound(e.id, e, None) for e in events])
        listed, metrics, report, exported = await counted()
        assert (listed, metrics) == ((["inc-early"], 1) if seen else ([], 0))
        assert f"{int(seen)} incident(s) created in the period." in report
        assert ("inc-early,Ours," in exported) is seen  # the person's title, kept


def _incident_now(
    incident_id: str, *, hosts: list[str], users: list[str], ips: list[str], ago: timedelta = timedelta(0)
) -> list[EventBase]:
    at = datetime.now(UTC) - ago
    title = f"incident {incident_id}"
    return [
        IncidentDetected(
            source="/vigil/detector",
            subject=incident_id,
            time=at,
            data=snapshot(title=title, hosts=hosts, users=users, first_seen=at, last_seen=at),
        ),
        IncidentAnalyzed(
            source="/vigil/analyzer",
            subject=incident_id,
            time=at,
            data=Analysis(
                type=IncidentType.SECURITY_BREACH,
                severity=Severity.SEV2,
                title=title,
                indicators=[Indicator(kind="ipv4", value=ip) for ip in ips],
                affected_hosts=hosts,
                affected_users=users,
                alert_count=1,
                summary="",
            ),
        ),
    ]


async def test_the_hunt_finds_other_incidents_and_held_back_alerts_naming_what_this_one_names(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, client: httpx.AsyncClient
) -> None:
    now = datetime.now(UTC)
    events = [
        *_incident_now("inc-this", hosts=["db-1", "web-1"], users=["alice"], ips=["198.51.100.7", "203.0.113.9"]),
        *_incident_now("inc-both", hosts=["db-1"], users=[], ips=["198.51.100.7"]),
        *_incident_now("inc-user", hosts=["lap-9"], users=["alice"], ips=[]),
        *_incident_now("inc-old", hosts=["web-1"], users=[], ips=[], ago=timedelta(days=3)),
        *_incident_now("inc-apart", hosts=["mail-1"], users=["bob"], ips=["192.0.2.1"]),
        AlertsSuppressed(
            source="/vigil/detector",
            subject="silence:s-1",
            time=now,
            data=SuppressedAlerts(
                suppressed_by=SILENCE,
                alerts=[
                    SuppressedAlertSummary(
                        key=f"falco:{host}",
                        source="falco",
                        title=f"shell on {host}",
                        severity=AlertSeverity.HIGH,
                        time=now,
                        host=host,
                        occurrence=f"o-{host}",
                    )
                    for host in ("db-1", "mail-1")
                ],
            ),
        ),
    ]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in events])

    found = (await client.get("/api/v1/incidents/inc-this/related")).json()
    # The most shared first, then the newest; what names nothing of it is not there.
    assert [(i["id"], i["shared"]) for i in found["incidents"]] == [
        ("inc-both", {"indicators": ["198.51.100.7"], "hosts": ["db-1"], "users": []}),
        ("inc-user", {"indicators": [], "hosts": [], "users": ["alice"]}),
        ("inc-old", {"indicators": [], "hosts": ["web-1"], "users": []}),
    ]
    [held] = found["held_back"]
    assert (held["key"], held["host"], held["suppressed_by"]["name"]) == ("falco:db-1", "db-1", SILENCE.name)
    recent = (await client.get("/api/v1/incidents/inc-this/related", params={"since": "24h"})).json()
    assert [i["id"] for i in recent["incidents"]] == ["inc-both", "inc-user"]
    # One merged into it is part of it, no other incident.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE reporter_incidents SET merged_into = 'inc-this' WHERE id = 'inc-user'")
    merged = (await client.get("/api/v1/incidents/inc-this/related", params={"since": "24h"})).json()
    assert [i["id"] for i in merged["incidents"]] == ["inc-both"]
    assert (await client.get("/api/v1/incidents/inc-none/related")).status_code == 404
    assert (await client.get("/api/v1/incidents/inc-this/related", params={"since": "ever"})).status_code == 422

    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")),
        "incidents",
        "related",
        "inc-this",
        "--since",
        "24h",
        env={**os.environ, "VIGIL_REPORTER_URL": str(client.base_url), "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()
    printed = out.decode()
    assert "inc-both" in printed and "indicators 198.51.100.7; hosts db-1" in printed
    assert "shell on db-1" in printed and "vigil incidents merge inc-this inc-both" in printed


async def test_the_post_mortem_takes_the_lessons_and_follow_ups_recorded_for_the_incident(
    seeded: int, pool: asyncpg.Pool, names: TopicNames, client: httpx.AsyncClient
) -> None:
    def task(n: int, title: str, owner: str) -> OpenedTask:
        return OpenedTask(task_id=n, phase="post_mortem", title=title, owner=owner, required=False, due_at=None)

    events: list[EventBase] = [
        TasksCreated(
            source="/vigil/coordinator",
            subject="inc-007",
            data=TasksOpened(tasks=[task(71, "Patch the NAS", "carol"), task(72, "Restore from backup", "dave")]),
        ),
        TaskCompleted(
            source="/vigil/coordinator",
            subject="inc-007",
            data=TaskDone(task_id=72, phase="post_mortem", title="Restore from backup", actor="dave", required=False),
        ),
        TasksCreated(
            source="/vigil/coordinator", subject="inc-008", data=TasksOpened(tasks=[task(81, "Not this one", "x")])
        ),
        AddNote(
            source="/vigil/coordinator/api",
            subject="inc-007",
            data=NoteArgs(actor="alice", note="backups were an hour old", lesson="went_well"),
        ),
        AddNote(source="/vigil/coordinator/api", subject="inc-007", data=NoteArgs(actor="alice", note="a plain note")),
        # Said on an incident merged into it since: its lesson too.
        AddNote(
            source="/vigil/coordinator/api",
            subject="inc-009",
            data=NoteArgs(actor="bob", note="the second host was found late", lesson="went_badly"),
        ),
    ]
    refused = AddNote(
        source="/vigil/coordinator/api",
        subject="inc-007",
        data=NoteArgs(actor="eve", note="a lesson the coordinator refused", lesson="went_badly"),
    )
    rejection = CommandRejected(
        source="/vigil/coordinator",
        subject="inc-007",
        data=CommandRejection(command_id=refused.id, command=refused.type, actor="eve", reason="no such incident"),
    )
    events += [refused, rejection]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in events])
        await conn.execute("UPDATE reporter_incidents SET merged_into = 'inc-007' WHERE id = 'inc-009'")
    report = (await client.get("/api/v1/incidents/inc-007/report", params={"format": "md"})).text
    assert "- backups were an hour old (alice, " in report and "a plain note (alice" not in report
    badly = report.split("## What went badly\n", 1)[1].split("\n## ", 1)[0]
    assert "- the second host was found late (bob, " in badly
    assert "the coordinator refused" not in badly  # on the timeline, with its rejection; no lesson
    follow_ups = report.split("## Follow-up actions\n", 1)[1]
    assert follow_ups.index("| Patch the NAS | carol | - | open |") < follow_ups.index(
        "| Restore from backup | dave | - | done by dave, "
    )
    assert "Not this one" not in report
