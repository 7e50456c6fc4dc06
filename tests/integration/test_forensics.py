"""Forensics through the real analyzer service: provenance per indicator, incremental and idempotent analysis,
and the evidence timeline with each alert's raw record over the authenticated API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from services.analyzer import evidence_api as api
from services.analyzer.service import spec
from services.detector.adapters import parse_record
from services.detector.domain import summarise
from shared import cloudevents, identity
from shared.consumer import decode_cloudevent
from shared.db import connect
from shared.events import AlertSummary, EventBase, IncidentAnalyzed, IncidentDetected, IncidentUpdated
from shared.kafka import make_producer
from shared.outbox import OutboxRelay
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import ANALYSES, INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import consume_loop, eventually, produce, read_all, serve_app
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CORPUS = Path(__file__).parents[3] / "shared" / "corpus" / "wazuh_alerts" / "wazuh_alerts.jsonl"
INCIDENT = "inc-forensic"


def _wazuh() -> list[AlertSummary]:
    if not CORPUS.exists():
        pytest.skip(f"the sample corpus ({CORPUS}) is not here")
    return [summarise(a) for line in CORPUS.read_bytes().splitlines() for a in parse_record(line).alerts]


def _event(
    kind: type[IncidentDetected | IncidentUpdated], alerts: list[AlertSummary], count: int, subject: str = INCIDENT
) -> EventBase:
    data = snapshot(new_alerts=alerts, alert_count=count, hosts=sorted({a.host for a in alerts if a.host}))
    return kind(source="/vigil/detector", subject=subject, data=data)


@contextlib.asynccontextmanager
async def _analyzer(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The analyzer as its service runs it: its configured handler, its consume loop and its outbox relay."""
    names = TopicNames(settings.topic_prefix)
    service = spec(settings)
    producer = make_producer(settings, client_id="analyzer-relay")
    await producer.start()
    relay = OutboxRelay(
        service="analyzer",
        pool=pool,
        producer=producer,
        connect=lambda: connect(settings.database_url),
        idle_wait_s=0.1,
    )
    relaying = asyncio.create_task(relay.run())
    try:
        async with consume_loop(
            settings,
            pool,
            service="analyzer",
            topics=[names(INCIDENTS)],
            decoder=decode_cloudevent,
            handler=service.handler,
        ):
            yield
    finally:
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        await producer.stop()


async def _send(settings: VigilSettings, *events: EventBase) -> None:
    records = [cloudevents.encode(e) for e in events]
    await produce(
        settings, TopicNames(settings.topic_prefix)(INCIDENTS), [(r.key, r.value, r.headers) for r in records]
    )


async def _handled(pool: asyncpg.Pool, n: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM processed_events WHERE service = 'analyzer'") == n)


async def test_provenance_is_kept_and_analysis_is_incremental_and_idempotent(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    alerts = _wazuh()
    first, later = alerts[:-1], alerts[-1]
    analyses = TopicNames(settings.topic_prefix)(ANALYSES)
    async with _analyzer(settings, pool):
        await _send(settings, _event(IncidentDetected, first, len(first)))
        await eventually(lambda: _handled(pool, 1))
        [one] = await read_all(settings, analyses, expect=1)
        analysis = cloudevents.decode(one.value, one.headers)
        assert isinstance(analysis, IncidentAnalyzed)
        by_value = {i.value: i for i in analysis.data.indicators}
        attacker = by_value["123.20.109.89"]  # the first alert's source address, also in its log line
        assert not attacker.internal and attacker.count == 1
        assert {"src_ip", "raw.data.srcip", "raw.full_log"} <= set(attacker.fields)
        assert attacker.alert_keys == [first[0].key] and attacker.first_seen == first[0].time
        assert by_value["10.0.1.85"].internal  # the agent's own address: kept, marked internal
        accounts = {o.value: o for o in analysis.data.observables if o.kind == "user"}
        assert accounts["root"].count == sum(a.user == "root" for a in first) > 1
        stored = await pool.fetchrow(
            "SELECT count, fields, alert_keys FROM analyzer_indicators WHERE incident_id = $1 AND value = 'root'",
            INCIDENT,
        )
        assert (
            stored is not None and stored["count"] == accounts["root"].count and "raw.data.dstuser" in stored["fields"]
        )

        # The same alerts carried again by another event: nothing counted twice, no second analysis.
        await _send(settings, _event(IncidentUpdated, first, len(first)))
        await eventually(lambda: _handled(pool, 2))
        assert await pool.fetchval("SELECT count(*) FROM analyzer_alerts WHERE incident_id = $1", INCIDENT) == len(
            first
        )
        again = await pool.fetchrow(
            "SELECT count, fields, alert_keys FROM analyzer_indicators WHERE incident_id = $1 AND value = 'root'",
            INCIDENT,
        )
        assert again is not None and dict(again) == dict(stored)
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE service = 'analyzer'") == 1

        # One alert joins: only it is read, and a new version of the analysis says so.
        await _send(settings, _event(IncidentUpdated, [later], len(alerts)))
        await eventually(lambda: _handled(pool, 3))
        records = await read_all(settings, analyses, expect=2)
        assert len(records) == 2
        newer = cloudevents.decode(records[-1].value, records[-1].headers)
        assert isinstance(newer, IncidentAnalyzed) and newer.data.alert_count == len(alerts)
    assert await pool.fetchval("SELECT count(*) FROM analyzer_alerts WHERE incident_id = $1", INCIDENT) == len(alerts)
    newest = await pool.fetch(
        "SELECT alert_key FROM analyzer_alerts WHERE analysed_at > (SELECT min(analysed_at) FROM analyzer_alerts)"
    )
    assert [r["alert_key"] for r in newest] == [later.key]


async def test_evidence_timeline_and_raw_record_over_the_api(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    alerts = _wazuh()
    async with _analyzer(settings, pool):
        # Newest first on the wire: the timeline is in the tools' time order all the same.
        await _send(settings, _event(IncidentDetected, list(reversed(alerts)), len(alerts)))
        await eventually(lambda: _handled(pool, 1))
    async with pool.acquire() as conn:
        token = (await identity.create_token(conn, name="vera", role="viewer", created_by="test")).text
    producer = make_producer(settings, client_id="analyzer-api-test")
    await producer.start()
    try:
        secured = settings.model_copy(update={"allow_unauthenticated": False})
        runtime = Runtime(
            service="analyzer", settings=secured, pool=pool, producer=producer, names=TopicNames(settings.topic_prefix)
        )
        app = build_app(runtime, api.routers(runtime))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analyzer") as client:
            assert (await client.get(f"/api/v1/incidents/{INCIDENT}/evidence")).status_code == 401
            client.headers["Authorization"] = f"Bearer {token}"
            page = (await client.get(f"/api/v1/incidents/{INCIDENT}/evidence", params={"limit": 4})).json()
            rest = (await client.get(f"/api/v1/incidents/{INCIDENT}/evidence", params={"after": page["next"]})).json()
            timeline = page["alerts"] + rest["alerts"]
            assert [a["alert_key"] for a in timeline] == [a.key for a in sorted(alerts, key=lambda a: (a.time, a.key))]
            assert rest["next"] is None
            first, earliest = timeline[0], min(alerts, key=lambda a: (a.time, a.key))
            assert (first["source"], first["format"], first["host"]) == ("wazuh", "wazuh", earliest.host)
            assert {"kind": "user", "value": earliest.user, "field": "user", "internal": False} in first["sightings"]
            assert any(s["field"].startswith("raw.") for s in first["sightings"])
            one = (await client.get(f"/api/v1/incidents/{INCIDENT}/evidence/{first['alert_key']}")).json()
            assert one["raw"] == earliest.raw and one["raw_cut"] is False
            assert (await client.get(f"/api/v1/incidents/{INCIDENT}/evidence/wazuh:nope")).status_code == 404
            assert (await client.get("/api/v1/incidents/no-such/evidence")).status_code == 404
            indicators = (await client.get(f"/api/v1/incidents/{INCIDENT}/indicators")).json()
            assert {"ipv4", "user"} <= {i["kind"] for i in indicators}
    finally:
        await producer.stop()


async def test_vigil_incidents_evidence_prints_the_timeline_and_a_raw_record(
    settings: VigilSettings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    alerts = _wazuh()
    incident = str(uuid.uuid4())  # a whole id: the CLI asks the reporter only to complete short ones
    async with _analyzer(settings, pool):
        await _send(settings, _event(IncidentDetected, alerts, len(alerts), subject=incident))
        await eventually(lambda: _handled(pool, 1))
    async with pool.acquire() as conn:
        token = (await identity.create_token(conn, name="vera", role="viewer", created_by="test")).text
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    producer = make_producer(settings, client_id="analyzer-cli-test")
    await producer.start()
    try:
        runtime = Runtime(service="analyzer", settings=secured, pool=pool, producer=producer, names=TopicNames(""))
        async with serve_app(build_app(runtime, api.routers(runtime)), name="analyzer-api") as url:
            monkeypatch.setenv("VIGIL_ANALYZER_URL", url)
            monkeypatch.setenv("VIGIL_API_TOKEN", token)
            timeline = await asyncio.to_thread(
                CliRunner().invoke, cli, ["incidents", "evidence", incident, "--json"], catch_exceptions=False
            )
            assert timeline.exit_code == 0, timeline.output
            rows = json.loads(timeline.output)
            assert [r["alert_key"] for r in rows] == [a.key for a in sorted(alerts, key=lambda a: (a.time, a.key))]
            table = await asyncio.to_thread(CliRunner().invoke, cli, ["incidents", "evidence", incident])
            assert table.exit_code == 0 and f"{len(alerts)} alert(s)" in table.output and "ipv4" in table.output
            key = rows[0]["alert_key"]
            assert "/" in key  # Wazuh's keys hold its manager's name and a slash
            raw = await asyncio.to_thread(CliRunner().invoke, cli, ["incidents", "evidence", incident, "--raw", key])
            assert raw.exit_code == 0, raw.output
            assert json.loads(raw.output) == next(a.raw for a in alerts if a.key == key)
            missing = await asyncio.to_thread(
                CliRunner().invoke, cli, ["incidents", "evidence", incident, "--raw", "wazuh:nope"]
            )
            assert missing.exit_code == 1 and "has no alert wazuh:nope" in missing.output
    finally:
        await producer.stop()
