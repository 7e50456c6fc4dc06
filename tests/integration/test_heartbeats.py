"""Tools' heartbeats (Alertmanager's Watchdog): noted with when they were last seen firing, never an
incident; a real alert beside one is handled as ever; the API lists them to whoever may read incidents."""

from __future__ import annotations

import asyncio
import copy
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from rich.console import Console
from typer.testing import CliRunner

from services.detector import heartbeats_api
from services.detector.adapters import parse_payload
from services.detector.handlers import Detector
from services.detector.heartbeats import SOURCE, TIMER, HeartbeatWatch
from shared import identity
from shared.alerts import Alert
from shared.consumer import HandlerContext
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import alert
from tests.helpers import serve_app
from tests.unit.adapters.test_alertmanager import WATCHDOG
from vigil import cli as cli_module
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WATCHDOG_KEY = "alertmanager/deadmansswitch:e3b0c44298fc1c14"


def _watchdog(status: str = "firing") -> Alert:
    message: dict[str, Any] = copy.deepcopy(WATCHDOG)
    message["status"] = message["alerts"][0]["status"] = status
    if status == "resolved":
        message["alerts"][0]["endsAt"] = "2025-11-24T10:00:00Z"
    (beat,) = parse_payload(message).alerts
    assert beat.kind == "heartbeat" and beat.key == WATCHDOG_KEY
    return beat


async def _handle(pool: asyncpg.Pool, names: TopicNames, alerts: list[Alert], detector: Detector | None = None) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await (detector or Detector(correlation_window=timedelta(minutes=30))).handle_alerts(
            HandlerContext(conn=conn, service="detector", names=names), alerts
        )


def _heartbeats_counted() -> float:
    return REGISTRY.get_sample_value("vigil_detector_alerts_total", {"outcome": "heartbeat"}) or 0.0


async def test_a_heartbeat_is_noted_never_an_incident_and_the_alert_beside_it_is_handled(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    counted = _heartbeats_counted()
    real = alert(id="disk-1", host="prometheus-0", title="Disk full on /var")
    await _handle(pool, names, [_watchdog(), real])
    await _handle(pool, names, [_watchdog(), _watchdog()])  # sent again at each repeat interval
    assert [r["correlation_key"] for r in await pool.fetch("SELECT correlation_key FROM detector_incidents")] == [
        "host:prometheus-0"
    ]
    assert [r["key"] for r in await pool.fetch("SELECT key FROM detector_alerts")] == [real.key]
    [beat] = await pool.fetch("SELECT * FROM detector_heartbeats")
    assert (beat["key"], beat["sightings"], beat["resolved_at"]) == (WATCHDOG_KEY, 3, None)
    assert beat["last_seen_at"] is not None and beat["format"] == "alertmanager"
    assert _heartbeats_counted() - counted == 3
    seen = REGISTRY.get_sample_value(
        "vigil_detector_heartbeat_last_seen_timestamp_seconds", {"source": "alertmanager/deadmansswitch"}
    )
    assert seen is not None and seen > 0

    # Its tool says it stopped: noted as such, and a later firing sighting clears it.
    last_seen = beat["last_seen_at"]
    await _handle(pool, names, [_watchdog("resolved")])
    [stopped] = await pool.fetch("SELECT * FROM detector_heartbeats")
    assert stopped["resolved_at"] is not None and stopped["last_seen_at"] == last_seen
    await _handle(pool, names, [_watchdog()])
    [again] = await pool.fetch("SELECT * FROM detector_heartbeats")
    assert again["resolved_at"] is None and again["sightings"] == 4
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 1


async def test_the_heartbeats_are_listed_to_whoever_may_read_incidents(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Wide enough for a row a line, whatever width the shared console has taken.
    monkeypatch.setattr(cli_module, "console", Console(width=250))
    await _handle(pool, names, [_watchdog()])
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="detector", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        viewer = (await identity.create_token(conn, name="val", role="viewer", created_by="test")).text
    app = build_app(runtime, heartbeats_api.routers(runtime))
    async with serve_app(app, name="detector-api") as url, httpx.AsyncClient(base_url=url) as client:
        refused = await client.get("/api/v1/heartbeats")
        listed = await client.get("/api/v1/heartbeats", headers={"Authorization": f"Bearer {viewer}"})
        shown = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["heartbeats"],
            env={"VIGIL_DETECTOR_URL": url, "VIGIL_API_TOKEN": viewer, "COLUMNS": "250"},
        )
    assert refused.status_code == 401
    assert listed.status_code == 200
    assert [(h["key"], h["sightings"]) for h in listed.json()] == [(WATCHDOG_KEY, 1)]
    assert shown.exit_code == 0, shown.output
    assert "1 heartbeat(s)" in shown.output and WATCHDOG_KEY in shown.output and "firing" in shown.output


async def _heartbeat(pool: asyncpg.Pool) -> asyncpg.Record:
    [beat] = await pool.fetch("SELECT * FROM detector_heartbeats")
    return beat


async def _pending_timer(pool: asyncpg.Pool) -> asyncpg.Record:
    [timer] = await pool.fetch(
        "SELECT * FROM timers WHERE kind = $1 AND fired_at IS NULL AND cancelled_at IS NULL", TIMER
    )
    return timer


async def _rewind(pool: asyncpg.Pool, seconds: int) -> None:
    """As if ``seconds`` had passed: the heartbeat's sightings and its timer that much earlier."""
    shift = timedelta(seconds=seconds)
    await pool.execute("UPDATE detector_heartbeats SET last_seen_at = last_seen_at - $1::interval", shift)
    await pool.execute("UPDATE timers SET due_at = due_at - $1::interval WHERE kind = $2", shift, TIMER)


async def test_a_heartbeat_that_stops_coming_raises_an_alert_and_its_return_resolves_it(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    detector = Detector(
        correlation_window=timedelta(minutes=30),
        heartbeat_watch=HeartbeatWatch(factor=3, min_interval_s=60, first_interval_s=600),
    )
    poller = TimerPoller(service="detector", pool=pool, names=names, handlers=detector.timer_handlers)
    await _handle(pool, names, [_watchdog()], detector)
    beat = await _heartbeat(pool)
    # Seen once: missing after three of the assumed interval.
    assert (await _pending_timer(pool))["due_at"] == beat["last_seen_at"] + timedelta(seconds=1800)

    # Seen again two minutes later: its interval learned, its timer moved.
    await _rewind(pool, 120)
    await _handle(pool, names, [_watchdog()], detector)
    beat = await _heartbeat(pool)
    assert beat["interval_s"] == pytest.approx(120, abs=2)
    assert (await _pending_timer(pool))["due_at"] == beat["last_seen_at"] + timedelta(seconds=3 * beat["interval_s"])
    assert await poller.fire_due() == 0  # not due yet

    # Then nothing for longer than its patience: the timer fires and Vigil raises the alarm, once.
    await _rewind(pool, 400)
    assert await poller.fire_due() == 1
    [raised] = await pool.fetch("SELECT * FROM detector_alerts")
    assert raised["source"] == SOURCE
    assert raised["title"] == f"Heartbeat missing from alertmanager/deadmansswitch: {beat['title']}"
    assert raised["resolved_at"] is None
    [incident] = await pool.fetch("SELECT * FROM detector_incidents")
    assert incident["id"] == raised["incident_id"] and incident["type"] == "service_disruption"
    missing = await _heartbeat(pool)
    assert missing["missed_alert"] == raised["key"].removeprefix(f"{SOURCE}:")
    assert missing["missed_since"] == beat["last_seen_at"] - timedelta(seconds=400) + timedelta(
        seconds=3 * beat["interval_s"]
    )
    assert await poller.fire_due() == 0
    headers = [row["headers"] for row in await pool.fetch("SELECT headers::text FROM outbox")]
    assert any("incident.detected" in h for h in headers), headers

    # It comes back: that alert is resolved, the time it was missing teaches nothing of its interval.
    await _handle(pool, names, [_watchdog()], detector)
    [back] = await pool.fetch("SELECT * FROM detector_alerts")
    assert back["resolved_at"] is not None
    again = await _heartbeat(pool)
    assert again["missed_since"] is None and again["missed_alert"] is None
    assert again["interval_s"] == beat["interval_s"]
    assert (await _pending_timer(pool))["due_at"] == again["last_seen_at"] + timedelta(seconds=3 * beat["interval_s"])


async def test_a_heartbeat_watch_turned_off_sets_no_timer(pool: asyncpg.Pool, names: TopicNames) -> None:
    detector = Detector(correlation_window=timedelta(minutes=30), heartbeat_watch=HeartbeatWatch(factor=0))
    await _handle(pool, names, [_watchdog()], detector)
    assert await pool.fetchval("SELECT count(*) FROM timers WHERE kind = $1", TIMER) == 0
    assert await pool.fetchval("SELECT count(*) FROM detector_heartbeats") == 1
