"""Timelines and response metrics derived from the events the real detector and coordinator produce:
alerts in, an incident detected, escalated, acknowledged, contained and resolved through the
coordinator's API, every event relayed through the broker to the reporter."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from services.coordinator import api as coordinator_api
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.detector.handlers import Detector
from services.detector.handlers import decode as detector_decode
from services.reporter import handlers as reporter
from services.reporter import repository
from services.reporter.aggregates import summarize
from services.reporter.measures import DEFAULT_SLA, durations, humanize
from shared.consumer import decode_cloudevent
from shared.db import connect
from shared.kafka import make_producer
from shared.outbox import OutboxRelay
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, COMMANDS, COORDINATION, INCIDENTS, TopicNames
from tests.factories import alert_dict
from tests.helpers import consume_loop, eventually, produce, running, serve_app
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


@contextlib.asynccontextmanager
async def relay(settings: VigilSettings, pool: asyncpg.Pool, service: str) -> AsyncIterator[None]:
    """A service's outbox relay, as the service runs it."""
    producer = make_producer(settings, client_id=f"{service}-relay")
    await producer.start()
    outbox = OutboxRelay(
        service=service, pool=pool, producer=producer, connect=lambda: connect(settings.database_url), idle_wait_s=0.1
    )
    async with running(outbox.run()):
        yield
        await producer.stop()


@contextlib.asynccontextmanager
async def pipeline(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[str]:
    """Detector, coordinator (with its API) and reporter on the real broker; yields the coordinator's URL."""
    coordinator = Coordinator(load_oncall())
    runtime = Runtime(service="coordinator", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    async with (
        consume_loop(
            settings,
            pool,
            service="detector",
            topics=[names(ALERTS_RAW)],
            decoder=detector_decode,
            handler=Detector(correlation_window=timedelta(minutes=30)).handle,
        ),
        consume_loop(
            settings,
            pool,
            service="coordinator",
            topics=[names(INCIDENTS), names(COMMANDS)],
            decoder=decode_cloudevent,
            handler=coordinator.handle,
        ),
        consume_loop(
            settings,
            pool,
            service="reporter",
            topics=[names(INCIDENTS), names(COORDINATION), names(COMMANDS)],
            decoder=reporter.decode,
            handler=reporter.handle,
        ),
        relay(settings, pool, "detector"),
        relay(settings, pool, "coordinator"),
        serve_app(build_app(runtime, coordinator_api.routers(runtime, coordinator)), name="coordinator-api") as url,
    ):
        yield url


async def _in_state(pool: asyncpg.Pool, incident_id: str, state: str) -> bool:
    return bool(await pool.fetchval("SELECT state = $2 FROM reporter_incidents WHERE id = $1", incident_id, state))


async def test_timeline_metrics_and_reports_from_the_real_services(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    names: TopicNames,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    alerts = [
        alert_dict(source="falco", host="db-01", title="Reverse shell spawned", severity="critical", time=t.isoformat())
        for t in (first, first + timedelta(seconds=20), first + timedelta(seconds=40))
    ]
    await produce(settings, names(ALERTS_RAW), [(None, json.dumps(a).encode(), []) for a in alerts])

    async with pipeline(settings, pool, names) as coordinator_url:
        incident_id = await eventually(
            lambda: pool.fetchval("SELECT id FROM reporter_incidents WHERE title IS NOT NULL"), timeout=60
        )
        await eventually(lambda: pool.fetchval("SELECT commander FROM reporter_incidents"), timeout=60)
        async with httpx.AsyncClient(base_url=f"{coordinator_url}/api/v1/incidents/{incident_id}") as http:
            for path, body, state in [
                ("/ack", {}, "acknowledged"),
                ("/state", {"to_state": "contained", "note": "host isolated"}, "contained"),
                ("/resolve", {"resolution": "false_positive", "note": "our red team"}, "resolved"),
            ]:
                answer = await http.post(path, json={"actor": "alice", **body})
                assert answer.status_code == 200, answer.text
                await eventually(lambda state=state: _in_state(pool, incident_id, state), timeout=60)  # type: ignore[misc]
            # The team's lessons and a follow-up, for the post-mortem.
            lesson = {"actor": "alice", "note": "the red team's alert paged within a minute", "lesson": "went_well"}
            assert (await http.post("/notes", json=lesson)).status_code == 200
            both = {"actor": "alice", "note": "x", "lesson": "went_badly", "status_update": True}
            assert (await http.post("/notes", json=both)).status_code == 422
            await eventually(
                lambda: pool.fetchval(
                    "SELECT count(*) = 1 FROM reporter_history WHERE incident_id = $1 AND data->>'lesson' IS NOT NULL",
                    incident_id,
                ),
                timeout=60,
            )

    async def reached(state: str) -> datetime:
        """When the coordinator said the incident first entered a state (its state_changed event)."""
        moved = await pool.fetchval(
            """SELECT min(time) FROM reporter_history
               WHERE incident_id = $1 AND type = 'vigil.incident.state_changed.v1' AND data->>'to_state' = $2""",
            incident_id,
            state,
        )
        assert isinstance(moved, datetime)
        return moved

    async with pool.acquire() as conn:
        incident = await repository.get_incident(conn, incident_id=incident_id)
        timeline = await repository.list_timeline(conn, incident_id=incident_id)
        [times] = await repository.list_incident_times(conn)
    assert incident is not None

    # The milestones are the stored moments: the first alert's time, the detection event's, each transition's.
    detected_at = await pool.fetchval(
        "SELECT time FROM reporter_history WHERE incident_id = $1 AND type = 'vigil.incident.detected.v1'",
        incident_id,
    )
    assert incident["first_alert_at"] == first
    assert incident["detected_at"] == detected_at
    assert incident["acknowledged_at"] == await reached("acknowledged")
    assert incident["contained_at"] == await reached("contained")
    assert incident["resolved_at"] == await reached("resolved")
    assert incident["resolution"] == "false_positive"

    # Each line of the timeline says who did what.
    said = [(line["actor"], line["summary"]) for line in timeline]
    assert said[0][0] == "detector" and "detected: Reverse shell spawned" in said[0][1]
    assert any(actor == "coordinator" and text.startswith("escalated to ") for actor, text in said)
    # The request and the move it made, each with its actor.
    assert said.index(("alice", "acknowledge requested")) < said.index(("alice", "state detected -> acknowledged"))
    assert ("alice", "move to contained requested: host isolated") in said
    assert ("alice", "state detected -> acknowledged") in said
    assert ("alice", "state acknowledged -> contained: host isolated") in said
    assert ("alice", "state contained -> resolved (false_positive): our red team") in said

    # The metrics are the gaps between those stored moments.
    gaps = durations(times.milestones)
    assert gaps["time_to_detect"] == (detected_at - first).total_seconds()
    assert gaps["time_to_acknowledge"] == (await reached("acknowledged") - detected_at).total_seconds()
    assert gaps["time_to_resolve"] == (await reached("resolved") - detected_at).total_seconds()
    [everything] = summarize([times], by="all", sla=DEFAULT_SLA, now=datetime.now(UTC))
    assert (everything.incidents, everything.resolved, everything.false_positive_rate) == (1, 1, 1.0)
    assert everything.means_s["time_to_contain"] == (await reached("contained") - detected_at).total_seconds()
    [by_source] = summarize([times], by="source", sla=DEFAULT_SLA, now=datetime.now(UTC))
    assert by_source.group == "falco"

    # The reports, through the CLI as an operator runs it, on this test's database.
    monkeypatch.setenv("DATABASE_URL", database_url)
    acknowledged, resolved = await reached("acknowledged"), await reached("resolved")
    md, html, ocsf, csv_file, comp = (
        tmp_path / name for name in ("pm.md", "pm.html", "ocsf.json", "incidents.csv", "compliance.md")
    )
    for args in (
        ["report", "incident", incident_id, "--format", "md", "-o", str(md)],
        ["report", "compliance", "--since", "1d", "--format", "md", "-o", str(comp)],
        ["report", "incident", incident_id, "--format", "html", "-o", str(html)],
        ["export", "ocsf", incident_id, "-o", str(ocsf)],
        ["export", "incidents", "--since", "1d", "-o", str(csv_file)],
    ):
        result = await asyncio.to_thread(CliRunner().invoke, cli, args)
        assert result.exit_code == 0, result.output
    timelines = await asyncio.to_thread(CliRunner().invoke, cli, ["export", "timelines", "--format", "json"])
    assert timelines.exit_code == 0, timelines.output
    assert {line["incident_id"] for line in json.loads(timelines.output)} == {incident_id}
    text = md.read_text()
    for section in (
        "## Summary",
        "## Impact",
        "## Timeline",
        "## Root-cause hypothesis and its evidence",
        "## What was done, and whether it worked",
        "## Response times against targets",
        "## What went well",
        "## What went badly",
        "## Follow-up actions",
    ):
        assert section in text, section
    assert f"| First alert | {first:%Y-%m-%d %H:%M:%S} UTC |" in text
    assert f"| Resolved | {resolved:%Y-%m-%d %H:%M:%S} UTC |" in text
    assert f"| {acknowledged:%Y-%m-%d %H:%M:%S} | alice | state detected -> acknowledged |" in text
    took = humanize((acknowledged - detected_at).total_seconds())
    assert f"| time to acknowledge (TTA) | {took} | 15m 0s | met |" in text
    assert "- Systems: db-01" in text
    assert "- the red team's alert paged within a minute (alice, " in text
    # The post-mortem tasks the coordinator made for a SEV1 were cancelled with the false positive: no follow-ups.
    cancelled = await pool.fetch(
        "SELECT title, state FROM reporter_tasks WHERE incident_id = $1 AND phase = 'post_mortem'", incident_id
    )
    assert cancelled and {t["state"] for t in cancelled} == {"cancelled"}
    assert all(t["title"] not in text for t in cancelled)
    assert f'_None recorded yet: `vigil tasks add {incident_id} "..." --owner NAME --due 14d`._' in text
    page = html.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    assert "Reverse shell spawned" in page
    finding = json.loads(ocsf.read_text())
    assert (finding["class_uid"], finding["status_id"], finding["verdict_id"]) == (2005, 4, 1)
    assert finding["start_time"] == int(first.timestamp() * 1000)
    assert finding["end_time"] == int(resolved.timestamp() * 1000)
    [row] = list(csv.DictReader(csv_file.read_text().splitlines()))
    assert (row["id"], row["resolution"]) == (incident_id, "false_positive")
    assert datetime.fromisoformat(row["acknowledged_at"]) == acknowledged
    compliance = comp.read_text()
    assert "1 incident(s) created in the period." in compliance
    assert "| SEV1 | 1 | 1 |" in compliance
    assert "The audit chain verifies:" in compliance
    # The coordinator made the runbook's tasks at detection and cancelled them with the false positive:
    # the reporter knows each, and none is an open follow-up.
    made = await pool.fetchval("SELECT count(*) FROM coordinator_tasks WHERE incident_id = $1", incident_id)
    told = await pool.fetch("SELECT state FROM reporter_tasks WHERE incident_id = $1", incident_id)
    assert made and len(told) == made and {t["state"] for t in told} == {"cancelled"}
    assert "No post-mortem follow-up of the period's incidents is open." in compliance
    assert any(actor == "coordinator" and "runbook task(s) made" in text for actor, text in said)
    assert ("alice", f"{made} open task(s) cancelled: resolved as false_positive") in said

    metrics = await asyncio.to_thread(CliRunner().invoke, cli, ["metrics", "--by", "source", "--since", "1d", "--json"])
    assert metrics.exit_code == 0, metrics.output
    [falco] = json.loads(metrics.output)["groups"]
    assert (falco["group"], falco["incidents"], falco["false_positive_rate"]) == ("falco", 1, 1.0)
    assert falco["mean_s"]["time_to_acknowledge"] == (acknowledged - detected_at).total_seconds()
