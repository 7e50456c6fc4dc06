"""The reporter's stream aggregations on the real broker: incident events and dead letters published to their
topics are counted by the faust agents into windowed tables, read through the API and /metrics, and the
counts survive a restart of the faust app (read back from the changelog topics, not counted again)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.reporter import api, windows
from services.reporter.metrics import STREAM_RESTARTS
from services.reporter.stream import StreamAggregations
from shared import cloudevents
from shared.events import (
    AlertRepeat,
    AlertResolution,
    AlertsChange,
    AlertSummary,
    EventBase,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentType,
    IncidentUpdated,
    Severity,
)
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import ALERTS_DLQ, EVENTS_DLQ, INCIDENTS, TopicNames
from tests.factories import snapshot
from tests.helpers import eventually, produce, serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

DETECTOR = "/vigil/detector"
WINDOW_GAUGES = frozenset(
    {
        "vigil_stream_ready",
        "vigil_stream_alerts_last_minute",
        "vigil_stream_incidents_opened_last_hour",
        "vigil_stream_dead_letters_last_minute",
        "vigil_stream_dead_letters_last_hour",
        "vigil_stream_alerts_flapping",
    }
)


@contextlib.asynccontextmanager
async def running(settings: VigilSettings, clock: Callable[[], float]) -> AsyncIterator[StreamAggregations]:
    """The stream aggregations as the reporter runs them: a background task, cancelled on the way out."""
    stream = StreamAggregations(settings, clock=clock)
    task = asyncio.create_task(stream.run(), name="stream")
    try:
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def summary(key: str, at: datetime) -> AlertSummary:
    return AlertSummary(key=key, source=key.partition(":")[0], title="Reverse shell", severity="critical", time=at)


def changed(at: datetime, *, repeated: tuple[str, ...] = (), resolved: tuple[str, ...] = ()) -> IncidentAlertsChanged:
    change = AlertsChange(
        repeated=[AlertRepeat(key=k, repeats=1, last_seen=at) for k in repeated],
        resolved=[AlertResolution(key=k, resolved_at=at) for k in resolved],
        firing=0,
        alert_count=3,
    )
    return IncidentAlertsChanged(source=DETECTOR, subject="inc-1", time=at, data=change)


async def publish(settings: VigilSettings, names: TopicNames, events: list[EventBase]) -> None:
    records = []
    for event in events:
        record = cloudevents.encode(event)
        records.append((record.key, record.value, record.headers))
    await produce(settings, names(INCIDENTS), records)


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def counts(body: dict[str, Any], *labels: str) -> dict[tuple[str, ...], int]:
    return {tuple(w[label] for label in labels): w["count"] for w in body["windows"]}


async def gauges(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await client.get("/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name in WINDOW_GAUGES
        for sample in family.samples
    }


async def test_events_are_counted_in_windows_served_by_the_api_and_metrics_and_survive_a_restart(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    settings = settings.model_copy(update={"stream_flapping_threshold": 2, "stream_flapping_window_s": 3600})
    # Every event in the last half-minute of the hour that has just begun's predecessor; the view's clock
    # stands ten seconds into the new hour, so that minute and that hour are the last complete windows.
    hour = math.floor(time.time() / 3600) * 3600
    at = datetime.fromtimestamp(hour - 30, UTC)
    now = hour + 10.0

    first = IncidentDetected(
        source=DETECTOR,
        subject="inc-1",
        time=at,
        data=snapshot(
            type=IncidentType.SYSTEM_COMPROMISE,
            severity=Severity.SEV1,
            new_alerts=[summary("falco:a1", at), summary("falco:a2", at), summary("suricata:s1", at)],
        ),
    )
    rest = IncidentUpdated(
        source=DETECTOR,
        subject="inc-1",
        time=at,
        correlationid=first.id,
        data=snapshot(new_alerts=[summary("falco:a3", at)]),
    )
    # Moved by an operator's merge: counted when they came, not again.
    merged = IncidentUpdated(
        source=DETECTOR,
        subject="inc-2",
        time=at,
        causationid="cmd-1",
        data=snapshot(new_alerts=[summary("falco:a1", at)]),
    )
    # falco:a1 resolves, fires again and resolves twice more: five changes, over the threshold of 2.
    flapping = [
        changed(at, resolved=("falco:a1",)),
        changed(at, repeated=("falco:a1", "falco:a2"), resolved=("falco:a1",)),
        changed(at, repeated=("falco:a1",), resolved=("falco:a1",)),
    ]
    stale = IncidentDetected(source=DETECTOR, subject="inc-old", time=at - timedelta(days=3), data=snapshot())
    await publish(settings, names, [first, rest, merged, *flapping, stale])
    await produce(
        settings,
        names(INCIDENTS),
        [
            (b"inc-x", b"{}", [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.from_the_future.v1")]),
            (b"inc-y", b"not an event", []),
        ],
    )
    dlq_time = at.isoformat().encode()
    await produce(
        settings,
        names(ALERTS_DLQ),
        [
            (
                None,
                b"{oops",
                [("vigil_ingest_source", b"edge"), ("vigil_dlq_code", b"not_json"), ("vigil_dlq_time", dlq_time)],
            ),
            (None, b"<xml/>", [("vigil_dlq_code", b"not_json"), ("vigil_dlq_time", dlq_time)]),
        ],
    )
    await produce(
        settings, names(EVENTS_DLQ), [(b"inc-1", b"{}", [("vigil_dlq_code", b"invalid"), ("vigil_dlq_time", dlq_time)])]
    )

    expected_alerts = {
        ("falco", "accepted"): 3,
        ("suricata", "accepted"): 1,
        ("falco", "deduplicated"): 3,
        ("falco", "resolved"): 3,
        ("edge", "dead_lettered"): 1,
        ("unknown", "dead_lettered"): 1,
    }
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]

    async with running(settings, clock=lambda: now) as stream:
        app = build_app(runtime, api.routers(runtime, stream.view))
        async with serve_app(app, name="reporter-api") as base, httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def alerts_counted() -> dict[str, Any]:
                body = await get(client, "/api/v1/stream/alerts")
                return body if counts(body, "source", "outcome") == expected_alerts else {}

            body = await eventually(alerts_counted, timeout=60)
            assert body["enabled"] and body["ready"] and (body["window_s"], body["kept_s"]) == (60, 3600)
            assert {(w["start"], w["end"]) for w in body["windows"]} == {
                (datetime.fromtimestamp(hour - 60, UTC).isoformat().replace("+00:00", "Z"), at_end(hour))
            }
            filtered = await get(client, "/api/v1/stream/alerts", source="falco", outcome="resolved")
            assert counts(filtered, "source", "outcome") == {("falco", "resolved"): 3}

            async def incidents_counted() -> dict[str, Any]:
                body = await get(client, "/api/v1/stream/incidents")
                return body if body["windows"] else {}

            incidents = await eventually(incidents_counted, timeout=30)
            assert counts(incidents, "type", "severity") == {("system_compromise", "SEV1"): 1}

            dead = await get(client, "/api/v1/stream/dead-letters")
            assert counts(dead, "topic", "reason") == {("alerts", "not_json"): 2, ("events", "invalid"): 1}
            per_hour = await get(client, "/api/v1/stream/dead-letters", per="hour", topic="alerts")
            assert per_hour["window_s"] == 3600
            assert counts(per_hour, "topic", "reason") == {("alerts", "not_json"): 2}

            flaps = await get(client, "/api/v1/stream/flapping")
            assert (flaps["window_s"], flaps["threshold"]) == (3600, 2)
            assert [(a["key"], a["source"], a["changes"], a["state"]) for a in flaps["alerts"]] == [
                ("falco:a1", "falco", 5, "resolved")
            ]

            metrics = await gauges(client)
            assert metrics[("vigil_stream_ready", ())] == 1.0
            assert metrics[("vigil_stream_alerts_last_minute", (("outcome", "accepted"), ("source", "falco")))] == 3
            assert metrics[("vigil_stream_alerts_last_minute", (("outcome", "dead_lettered"), ("source", "edge")))] == 1
            assert (
                metrics[
                    ("vigil_stream_incidents_opened_last_hour", (("severity", "SEV1"), ("type", "system_compromise")))
                ]
                == 1
            )
            assert (
                metrics[("vigil_stream_dead_letters_last_minute", (("reason", "not_json"), ("topic", "alerts")))] == 2
            )
            assert metrics[("vigil_stream_dead_letters_last_hour", (("reason", "invalid"), ("topic", "events")))] == 1
            assert metrics[("vigil_stream_alerts_flapping", (("source", "falco"),))] == 1

    # A new app reads its tables back from the changelogs; the events it had read are not counted again.
    async with running(settings, clock=lambda: now) as stream:
        app = build_app(runtime, api.routers(runtime, stream.view))
        async with serve_app(app, name="reporter-api") as base, httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def recovered() -> dict[str, Any]:
                body = await get(client, "/api/v1/stream/alerts")
                return body if body["ready"] and body["windows"] else {}

            body = await eventually(recovered, timeout=90)
            assert counts(body, "source", "outcome") == expected_alerts
            incidents = await get(client, "/api/v1/stream/incidents")
            assert counts(incidents, "type", "severity") == {("system_compromise", "SEV1"): 1}
            flaps = await get(client, "/api/v1/stream/flapping")
            assert [(a["key"], a["changes"]) for a in flaps["alerts"]] == [("falco:a1", 5)]

            # Counting goes on from the recovered values.
            await publish(settings, names, [changed(at, repeated=("falco:a1",))])

            async def counted_on() -> dict[tuple[str, ...], int]:
                found = counts(await get(client, "/api/v1/stream/alerts"), "source", "outcome")
                return found if found[("falco", "deduplicated")] == 4 else {}

            found = await eventually(counted_on, timeout=30)
            assert found == expected_alerts | {("falco", "deduplicated"): 4}
            flaps = await get(client, "/api/v1/stream/flapping")
            assert [(a["key"], a["changes"], a["state"]) for a in flaps["alerts"]] == [("falco:a1", 6, "firing")]


def at_end(hour: float) -> str:
    return datetime.fromtimestamp(hour, UTC).isoformat().replace("+00:00", "Z")


async def test_without_the_stream_the_routes_say_so_and_show_no_windows(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, api.routers(runtime))
    async with serve_app(app, name="reporter-api") as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        for path in ("alerts", "incidents", "dead-letters"):
            body = await get(client, f"/api/v1/stream/{path}")
            assert (body["enabled"], body["ready"], body["windows"]) == (False, False, [])
        flaps = await get(client, "/api/v1/stream/flapping")
        assert (flaps["enabled"], flaps["alerts"]) == (False, [])
        metrics = await gauges(client)
        assert not metrics, "a reporter without the aggregations has no series of theirs, not even one saying down"


async def test_an_app_that_crashes_is_started_again_with_its_counts(settings: VigilSettings, names: TopicNames) -> None:
    hour = math.floor(time.time() / 3600) * 3600
    at = datetime.fromtimestamp(hour - 30, UTC)
    detected = IncidentDetected(
        source=DETECTOR, subject="inc-1", time=at, data=snapshot(new_alerts=[summary("zeek:z1", at)])
    )
    await publish(settings, names, [detected])
    restarts = STREAM_RESTARTS._value.get()

    async with running(settings, clock=lambda: hour + 10.0) as stream:

        def zeek_accepted() -> int:
            found = stream.view.windows(windows.ALERTS) if stream.view.ready else []
            return sum(w.value for w in found if w.key == ("zeek", "accepted"))

        async def counted() -> int:
            return zeek_accepted()

        assert await eventually(counted, timeout=60) == 1
        crashed = stream.app
        assert crashed is not None
        await crashed.crash(RuntimeError("a failure inside faust"))

        async def started_again() -> bool:
            return stream.app is not crashed and stream.view.ready and zeek_accepted() > 0

        await eventually(started_again, timeout=90)
        assert STREAM_RESTARTS._value.get() == restarts + 1
        # At least once: what the crashed app had not committed is counted again, never less.
        assert zeek_accepted() >= 1
