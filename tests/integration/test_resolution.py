"""Repeats and resolutions of alerts, from the raw topic through the detector to the coordinator and the reporter."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from rich.console import Console
from typer.testing import CliRunner

from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.detector import adapters
from services.detector import repository as detector_repository
from services.detector.handlers import Detector, decode
from services.reporter import api as reporter_api
from services.reporter import handlers as reporter
from services.reporter import repository as read_model
from shared import cloudevents
from shared.alerts import Alert
from shared.consumer import HandlerContext, decode_cloudevent
from shared.db import connect
from shared.events import EventBase, IncidentAlertsChanged, IncidentDetected, ResolutionSuggested
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, COORDINATION, INCIDENTS, TopicNames
from tests.factories import alert
from tests.helpers import committed, consume_loop, eventually, produce, serve_app
from vigil import cli as cli_module
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WINDOW = timedelta(minutes=30)
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]

# An Alertmanager webhook message as its documentation shows it
# (prometheus.io/docs/alerting/latest/configuration/#webhook_config), version 4, one alert.
FIRING: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}:{alertname="HighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "ops",
    "groupLabels": {"alertname": "HighErrorRate"},
    "commonLabels": {"alertname": "HighErrorRate", "severity": "critical", "instance": "checkout-1:8080"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighErrorRate", "severity": "critical", "instance": "checkout-1:8080"},
            "annotations": {"summary": "checkout 5xx above 5%", "description": "Error rate 7.2% for 10 minutes"},
            "startsAt": "2026-11-24T09:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=errors",
            "fingerprint": "5e0f1c2d3b4a6978",
        }
    ],
}
ENDED_AT = datetime(2026, 11, 24, 9, 40, tzinfo=UTC)


def resolved_message() -> dict[str, Any]:
    message = copy.deepcopy(FIRING)
    message["status"] = "resolved"
    message["alerts"][0].update(status="resolved", endsAt="2026-11-24T09:40:00Z")
    return message


def record(message: dict[str, Any]) -> Record:
    return None, json.dumps(message).encode(), [(adapters.FORMAT_HEADER, b"alertmanager")]


@pytest.fixture(autouse=True)
def alertmanager_registered() -> None:
    if "alertmanager" not in adapters.FORMATS:
        pytest.skip("the alertmanager adapter is not registered")


def _counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("vigil_detector_alerts_total", {"outcome": outcome}) or 0.0


async def _detect(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, *batches: list[Record]) -> None:
    """Run the detector on each batch of records in turn, each committed before the next is sent."""
    raw = names(ALERTS_RAW)
    detector = Detector(correlation_window=WINDOW)
    sent = 0
    async with consume_loop(
        settings, pool, service="detector", topics=[raw, names(COORDINATION)], decoder=decode, handler=detector.handle
    ):
        for batch in batches:
            await produce(settings, raw, batch)
            sent += len(batch)
            await eventually(lambda expected=sent: _committed_is(settings, raw, expected))  # type: ignore[misc]


async def _committed_is(settings: VigilSettings, topic: str, expected: int) -> bool:
    return (await committed(settings, group_id(settings, "detector"), topic) or 0) == expected


async def _publish(settings: VigilSettings, pool: asyncpg.Pool, service: str) -> int:
    """Publish a service's outbox, as its relay does; return how many events went out."""
    producer = make_producer(settings, client_id=f"{service}-relay")
    await producer.start()
    try:
        relay = OutboxRelay(
            service=service, pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        return (await relay.publish_pending()).sent
    finally:
        await producer.stop()


async def _outbox(pool: asyncpg.Pool, service: str) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = $1 ORDER BY id", service)
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


async def test_a_firing_then_resolved_alert_ends_resolved_and_the_commander_is_told(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved_before = _counted("resolved")
    await _detect(settings, pool, names, [record(FIRING)], [record(resolved_message())])

    # One incident, one alert, resolved when Alertmanager said it ended.
    [incident] = await pool.fetch("SELECT * FROM detector_incidents")
    assert (incident["type"], incident["severity"]) == ("service_disruption", "SEV1")
    assert incident["severity_reason"] == "Alertmanager severity 'critical' -> critical -> SEV1"
    assert incident["classification_reason"] == "label alertname='HighErrorRate' (rule alertmanager-infrastructure)"
    [stored] = await pool.fetch("SELECT * FROM detector_alerts")
    assert (stored["resolved_at"], stored["type_rule"], stored["repeats"]) == (
        ENDED_AT,
        "alertmanager-infrastructure",
        0,
    )
    assert _counted("resolved") == resolved_before + 1
    detector_events = await _outbox(pool, "detector")
    assert [type(e) for e in detector_events] == [IncidentDetected, IncidentAlertsChanged]
    changed = detector_events[1]
    assert isinstance(changed, IncidentAlertsChanged)
    assert changed.data.all_resolved and (changed.data.firing, changed.data.alert_count) == (0, 1)
    assert [(r.key, r.resolved_at) for r in changed.data.resolved] == [(stored["key"], ENDED_AT)]

    # The coordinator suggests resolving; it does not resolve by itself.
    assert await _publish(settings, pool, "detector") == 2
    coordinator = Coordinator(load_oncall())
    async with consume_loop(
        settings,
        pool,
        service="coordinator",
        topics=[names(INCIDENTS)],
        decoder=decode_cloudevent,
        handler=coordinator.handle,
    ):
        suggestions = await eventually(lambda: _suggestions(pool))
    [suggestion] = suggestions
    assert suggestion.subject == incident["id"] and suggestion.causationid == changed.id
    assert suggestion.data.commander.endswith("@example.com")
    assert "all 1 alert(s) have resolved" in suggestion.data.reason
    assert await pool.fetchval("SELECT state FROM coordinator_incidents") == "detected"
    await _publish(settings, pool, "coordinator")

    # The reporter shows the alert resolved, the severity explained, and both on the timeline.
    async with consume_loop(
        settings,
        pool,
        service="reporter",
        topics=[names(INCIDENTS), names(COORDINATION)],
        decoder=decode_cloudevent,
        handler=reporter.handle,
    ):
        timeline = await eventually(
            lambda: _timeline_has(pool, incident["id"], "vigil.incident.resolution_suggested.v1")
        )
        await eventually(lambda: _timeline_has(pool, incident["id"], "vigil.incident.alerts_changed.v1"))
    async with pool.acquire() as conn:
        [shown] = await read_model.list_alerts(conn, incident_id=incident["id"])
        shown_incident = await read_model.get_incident(conn, incident_id=incident["id"])
    assert (shown["format"], shown["status"], shown["repeats"], shown["type_rule"]) == (
        "alertmanager",
        "resolved",
        0,
        "alertmanager-infrastructure",
    )
    assert shown["resolved_at"] == ENDED_AT
    assert shown_incident is not None
    assert shown_incident["severity_reason"] == "Alertmanager severity 'critical' -> critical -> SEV1"
    assert shown_incident["state"] == "detected"
    lines = {row["type"]: row["summary"] for row in await _timeline(pool, incident["id"])}
    assert lines["vigil.incident.alerts_changed.v1"] == (
        f"1 resolved ({stored['key']}); 0 of 1 still firing; every alert has resolved: the incident may be resolved"
    )
    assert "suggests" in lines["vigil.incident.resolution_suggested.v1"]
    assert timeline

    # `vigil incidents show` says the same, from the reporter's API, on a screen wide enough for a row.
    monkeypatch.setattr(cli_module, "console", Console(width=250))
    async with _reporter_api(settings, pool) as url:
        shown_by_cli = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["incidents", "show", incident["id"]],
            env={"VIGIL_REPORTER_URL": url, "COLUMNS": "250"},
        )
    assert shown_by_cli.exit_code == 0, shown_by_cli.output
    alerts_table = shown_by_cli.output.split("timeline")[0]  # the alerts, before the timeline
    [row] = [line for line in alerts_table.splitlines() if stored["key"] in line]
    assert [cell.strip() for cell in row.split("│")[2:8]] == [
        "alertmanager",
        f"checkout 5xx above 5% {stored['key']}",
        "critical (severity=critical)",
        "resolved",
        "0",
        "alertmanager-infrastructure",
    ]
    assert "severity: Alertmanager severity 'critical' -> critical -> SEV1" in shown_by_cli.output


async def test_a_repeat_is_counted_and_shown_by_the_reporter(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    await _detect(settings, pool, names, [record(FIRING)], [record(FIRING), record(FIRING)])

    [stored] = await pool.fetch("SELECT key, repeats, last_seen_at, resolved_at FROM detector_alerts")
    assert (stored["repeats"], stored["resolved_at"]) == (2, None)
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 1
    events = await _outbox(pool, "detector")
    # The two repeats came in one consumed batch or in two: one change each batch, the last with both.
    assert type(events[0]) is IncidentDetected and len(events) in (2, 3)
    assert all(isinstance(e, IncidentAlertsChanged) for e in events[1:])
    changed = events[-1]
    assert isinstance(changed, IncidentAlertsChanged)
    assert [(r.key, r.repeats) for r in changed.data.repeated] == [(stored["key"], 2)]
    assert not changed.data.all_resolved and changed.data.firing == 1

    await _publish(settings, pool, "detector")
    async with consume_loop(
        settings,
        pool,
        service="reporter",
        topics=[names(INCIDENTS)],
        decoder=decode_cloudevent,
        handler=reporter.handle,
    ):
        incident_id = changed.subject
        await eventually(lambda: _timeline_has(pool, incident_id, "vigil.incident.alerts_changed.v1"))
    async with pool.acquire() as conn:
        [shown] = await read_model.list_alerts(conn, incident_id=incident_id)
    assert (shown["repeats"], shown["status"], shown["last_seen"]) == (2, "firing", stored["last_seen_at"])
    lines = {row["type"]: row["summary"] for row in await _timeline(pool, incident_id)}
    assert lines["vigil.incident.alerts_changed.v1"] == (
        f"1 alert(s) sent again ({stored['key']} seen 3 times); 1 of 1 still firing"
    )


async def test_a_resolution_never_preceded_by_its_alert_opens_nothing(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    unknown_before = _counted("resolved_unknown")
    await _detect(settings, pool, names, [record(resolved_message())])
    assert await pool.fetchval("SELECT count(*) FROM detector_alerts") == 0
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 0
    assert await _outbox(pool, "detector") == []
    assert _counted("resolved_unknown") == unknown_before + 1


async def test_an_alert_that_fires_again_after_it_ended_is_firing(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    # Fired, ended, then fired again and ended and fired again within one batch: it ends firing.
    await _detect(
        settings,
        pool,
        names,
        [record(FIRING)],
        [record(resolved_message())],
        [record(FIRING), record(resolved_message()), record(FIRING)],
    )
    [stored] = await pool.fetch("SELECT repeats, resolved_at FROM detector_alerts")
    assert (stored["repeats"], stored["resolved_at"]) == (2, None)
    changes = [e for e in await _outbox(pool, "detector") if isinstance(e, IncidentAlertsChanged)]
    # However the last three records were cut into batches, the alert ended once, then stands firing.
    assert (changes[0].data.firing, changes[0].data.all_resolved) == (0, True)
    assert (changes[-1].data.firing, changes[-1].data.all_resolved) == (1, False)


@contextlib.asynccontextmanager
async def _reporter_api(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """The reporter's read API served by uvicorn on a free port; yields its URL."""
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=TopicNames())  # type: ignore[arg-type]
    async with serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-api") as url:
        yield url


async def _suggestions(pool: asyncpg.Pool) -> list[ResolutionSuggested]:
    return [e for e in await _outbox(pool, "coordinator") if isinstance(e, ResolutionSuggested)]


async def _timeline(pool: asyncpg.Pool, incident_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT type, summary FROM reporter_timeline WHERE incident_id = $1 ORDER BY time", incident_id
        )
    )


async def _timeline_has(pool: asyncpg.Pool, incident_id: str, event_type: str) -> bool:
    return any(row["type"] == event_type for row in await _timeline(pool, incident_id))


async def test_an_alert_firing_again_after_its_incident_ended_opens_a_new_incident(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    detector = Detector(correlation_window=timedelta(days=365))  # the same entity, well within the window
    now = datetime.now(UTC)
    fired = alert(id="a-1", source="falco", time=now.isoformat())

    async def sight(a: Alert) -> list[EventBase]:
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="detector", names=names)
            await detector.handle_alerts(ctx, [a])
            return list(ctx.emitted)

    first = await sight(fired)
    [opened] = [e for e in first if isinstance(e, IncidentDetected)]
    assert [e for e in await sight(fired) if isinstance(e, IncidentDetected)] == []  # a repeat, same incident
    async with pool.acquire() as conn, conn.transaction():
        await detector_repository.close_incident(conn, incident_id=opened.subject)  # its incident resolved
    again = await sight(fired.model_copy(update={"time": now + timedelta(minutes=5)}))
    [reopened] = [e for e in again if isinstance(e, IncidentDetected)]
    assert reopened.subject != opened.subject
    rows = await pool.fetch("SELECT incident_id, retired, repeats FROM detector_alerts WHERE key = $1", fired.key)
    assert sorted((r["incident_id"] == opened.subject, r["retired"], r["repeats"]) for r in rows) == [
        (False, False, 0),
        (True, True, 1),
    ]
