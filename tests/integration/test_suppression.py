"""Silences, maintenance windows and inhibition through the real detector, its API and the CLI.

The detector consumes the raw alerts topic of the real broker and keeps its silences and windows in
memory, reloaded when the API announces a change (Postgres LISTEN/NOTIFY); suppressed alerts are
stored with what suppressed them, counted, and open no incident.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from rich.console import Console
from typer.testing import CliRunner

from services.detector import adapters, repository
from services.detector import api as detector_api
from services.detector.handlers import Detector, decode
from services.detector.suppression import load_inhibition
from services.detector.suppressor import Suppressions
from services.reporter import api as reporter_api
from services.reporter import handlers as reporter
from shared import cloudevents, identity
from shared.alerts import Alert
from shared.consumer import HandlerContext
from shared.db import connect
from shared.events import EventBase, IncidentDetected
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import Timer, TimerPoller
from shared.topics import ALERTS_RAW, ALERTS_SUPPRESSED, COORDINATION, INCIDENTS, TopicNames
from tests import helpers
from tests.factories import alert_dict
from tests.helpers import committed, consume_loop, eventually, produce, serve_app
from vigil import cli as cli_module
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def native(**fields: Any) -> Record:
    fields.setdefault("time", datetime.now(UTC).isoformat())
    return None, json.dumps(alert_dict(**fields)).encode(), [(adapters.FORMAT_HEADER, b"native")]


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("vigil_detector_alerts_total", {"outcome": outcome}) or 0.0


class Running:
    """A detector consuming the raw topic, its silences and windows kept current by notification."""

    def __init__(self, settings: VigilSettings, names: TopicNames, detector: Detector) -> None:
        self.settings, self.names, self.detector = settings, names, detector
        self.suppressions = detector.suppressions
        self.sent = 0

    async def send(self, *records: Record) -> None:
        """Publish records and wait until the detector committed them."""
        raw = self.names(ALERTS_RAW)
        await produce(self.settings, raw, list(records))
        self.sent += len(records)

        async def done() -> bool:
            return (await committed(self.settings, group_id(self.settings, "detector"), raw) or 0) == self.sent

        await eventually(done)


@contextlib.asynccontextmanager
async def detector(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[Running]:
    suppressions = Suppressions(load_inhibition())
    handler = Detector(correlation_window=timedelta(minutes=30), suppressions=suppressions)
    watching = asyncio.create_task(suppressions.watch(pool, settings.database_url), name="watch-suppressions")
    try:
        await eventually(lambda: _loaded(suppressions))
        async with consume_loop(
            settings,
            pool,
            service="detector",
            topics=[names(ALERTS_RAW), names(COORDINATION)],
            decoder=decode,
            handler=handler.handle,
        ):
            yield Running(settings, names, handler)
    finally:
        watching.cancel()
        await asyncio.wait({watching})
        assert watching.cancelled(), "the watcher stopped on its own"


async def _loaded(suppressions: Suppressions) -> bool:
    return suppressions.loaded


@contextlib.asynccontextmanager
async def detector_url(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[str]:
    """The detector's API, with tokens required."""
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    producer = make_producer(secured, client_id="suppression-api")
    await producer.start()
    try:
        runtime = Runtime(service="detector", settings=secured, pool=pool, producer=producer, names=names)
        async with serve_app(build_app(runtime, detector_api.routers(runtime)), name="detector-api") as url:
            yield url
    finally:
        await producer.stop()


async def token(pool: asyncpg.Pool, role: identity.Role, name: str) -> str:
    async with pool.acquire() as conn:
        return (await identity.create_token(conn, name=name, role=role, created_by="test")).text


async def vigil(url: str, api_token: str, *args: str) -> str:
    """Run the CLI against the detector's API; return what it printed."""
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        list(args),
        env={"VIGIL_DETECTOR_URL": url, "VIGIL_API_TOKEN": api_token, "COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    return result.output


async def incidents_of(pool: asyncpg.Pool) -> dict[str, list[str]]:
    """Each incident's correlation key, with the keys of its alerts."""
    rows = await pool.fetch(
        """SELECT i.correlation_key, array_agg(a.key ORDER BY a.key) AS keys
           FROM detector_incidents i JOIN detector_alerts a ON a.incident_id = i.id GROUP BY i.id"""
    )
    return {row["correlation_key"]: list(row["keys"]) for row in rows}


async def detected(pool: asyncpg.Pool) -> list[str]:
    """The correlation keys of the incidents the detector announced."""
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'detector' ORDER BY id")
    events: list[EventBase] = [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]
    return [e.data.correlation_key for e in events if isinstance(e, IncidentDetected)]


async def suppressed(pool: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    return {row["key"]: row for row in await pool.fetch("SELECT * FROM detector_suppressed_alerts ORDER BY id")}


async def test_a_silence_holds_back_matching_alerts_until_it_is_expired_and_then_the_alert_opens_an_incident(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "console", Console(width=250))
    commander = await token(pool, "commander", "ana")
    silenced_before, accepted_before = counted("silenced"), counted("accepted")
    async with detector_url(settings, pool, names) as url, detector(settings, pool, names) as running:
        # Added while the detector runs: it learns of it by notification, not by its minute's refresh.
        added = json.loads(
            await vigil(
                url,
                commander,
                "silence",
                "add",
                "host=web-01",
                'rule=~"Disk.*"',
                "--for",
                "2h",
                "-c",
                "disk swap, CHG-1",
                "--json",
            )
        )
        assert (added["created_by"], added["state"], added["matchers"]) == (
            "ana",
            "active",
            ['host="web-01"', 'rule=~"Disk.*"'],
        )
        await eventually(lambda: _has_silences(running.suppressions, 1))

        await running.send(
            native(id="disk-1", host="web-01", rule="DiskFull", title="Disk full on /var"),
            native(id="cpu-1", host="web-01", rule="CpuHigh", title="CPU above 95%"),
            native(id="disk-2", host="web-02", rule="DiskFull", title="Disk full on /var"),
        )
        held = await suppressed(pool)
        assert list(held) == ["suricata:disk-1"]
        row = held["suricata:disk-1"]
        assert (row["kind"], row["suppressed_by"], row["repeats"], row["released_at"]) == (
            "silence",
            added["id"],
            0,
            None,
        )
        assert "silenced by ana" in row["reason"] and "disk swap, CHG-1" in row["reason"]
        assert await incidents_of(pool) == {"host:web-01": ["suricata:cpu-1"], "host:web-02": ["suricata:disk-2"]}
        assert counted("silenced") == silenced_before + 1
        assert counted("accepted") == accepted_before + 2

        # Seen again while silenced: counted on the held-back alert, still no incident of its own.
        await running.send(native(id="disk-1", host="web-01", rule="DiskFull", title="Disk full on /var"))
        assert (await suppressed(pool))["suricata:disk-1"]["repeats"] == 1
        assert counted("silenced") == silenced_before + 2

        # A viewer may read but not silence; `vigil alerts suppressed` shows what held the alert back.
        viewer = await token(pool, "viewer", "val")
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {viewer}"}) as client:
            refused = await client.post(
                "/api/v1/silences", json={"matchers": ["host=x"], "duration_s": 60, "comment": "x"}
            )
            assert refused.status_code == 403
            listed = (await client.get("/api/v1/suppressed-alerts", params={"kind": "silence"})).json()
        assert [(a["key"], a["suppressed_by"]) for a in listed] == [("suricata:disk-1", added["id"])]
        shown = await vigil(url, viewer, "alerts", "suppressed")
        assert "suricata:disk-1" in shown and added["id"] in shown and "held back" in shown

        # Expired early: the alert, still firing, opens an incident at its next sighting, as Alertmanager
        # notifies an alert still firing when its silence ends; its suppressed record says when it was released.
        expired = json.loads(await vigil(url, commander, "silence", "expire", added["id"], "--json"))
        assert (expired["state"], expired["expired_by"]) == ("expired", "ana")
        await eventually(lambda: _has_silences(running.suppressions, 0))
        await running.send(native(id="disk-1", host="web-01", rule="DiskFull", title="Disk full on /var"))
        assert await incidents_of(pool) == {
            "host:web-01": ["suricata:cpu-1", "suricata:disk-1"],
            "host:web-02": ["suricata:disk-2"],
        }
        released = (await suppressed(pool))["suricata:disk-1"]
        assert released["released_at"] is not None and released["kind"] == "silence"
        assert sorted(await detected(pool)) == ["host:web-01", "host:web-02"]
        listed_now = await vigil(url, commander, "silence", "list", "--expired", "--json")
        assert [s["state"] for s in json.loads(listed_now)] == ["expired"]


async def _has_silences(suppressions: Suppressions, count: int) -> bool:
    return len(suppressions.state.silences) == count


async def test_a_silence_that_ends_by_its_time_lets_the_next_sighting_through(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with pool.acquire() as conn:  # added before the detector started: loaded at its start
        await conn.execute(
            """INSERT INTO detector_silences (id, matchers, starts_at, ends_at, created_by, comment)
               VALUES ('s-1', '["host=\\"web-01\\""]', now() - interval '1 minute', now() + interval '1 hour',
                       'ana', 'reboot')"""
        )
    async with detector(settings, pool, names) as running:
        await running.send(native(id="a-1", host="web-01"))
        assert (await suppressed(pool))["suricata:a-1"]["suppressed_by"] == "s-1"
        # Two hours on, by the detector's clock: the silence has ended without anyone expiring it.
        clock = running.suppressions.clock
        running.suppressions.clock = lambda: clock() + timedelta(hours=2)
        await running.send(native(id="a-1", host="web-01"))
    assert await incidents_of(pool) == {"host:web-01": ["suricata:a-1"]}
    assert (await suppressed(pool))["suricata:a-1"]["released_at"] is not None


async def test_maintenance_windows_one_off_and_recurring_hold_back_their_hosts_and_services(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "console", Console(width=250))
    commander = await token(pool, "commander", "ana")
    now = datetime.now(UTC)
    before = counted("maintenance")
    async with detector_url(settings, pool, names) as url, detector(settings, pool, names) as running:
        one_off = json.loads(
            await vigil(
                url,
                commander,
                "maintenance",
                "add",
                "db patching",
                "--host",
                "db-01",
                "--for",
                "1h",
                "-c",
                "CHG-7",
                "--json",
            )
        )
        # Every day from yesterday, 10 minutes before now, for an hour: today's occurrence is on.
        daily = json.loads(
            await vigil(
                url,
                commander,
                "maintenance",
                "add",
                "checkout deploys",
                "--service",
                "checkout",
                "--start",
                (now - timedelta(days=1, minutes=10)).isoformat(),
                "--rrule",
                "FREQ=DAILY",
                "--for",
                "1h",
                "--json",
            )
        )
        # Every day from yesterday, in two hours: today's occurrence has not started.
        later = json.loads(
            await vigil(
                url,
                commander,
                "maintenance",
                "add",
                "nightly",
                "--host",
                "db-09",
                "--start",
                (now - timedelta(days=1) + timedelta(hours=2)).isoformat(),
                "--rrule",
                "FREQ=DAILY",
                "--for",
                "1h",
                "--json",
            )
        )
        assert daily["active_now"] is not None and later["active_now"] is None
        assert later["next_start"] is not None
        await eventually(lambda: _has_windows(running.suppressions, 3))

        await running.send(
            native(id="m-1", host="db-01", title="Replication lag"),
            native(id="m-2", host="app-01", title="Checkout 5xx", labels={"service": "checkout"}),
            native(id="m-3", host="db-09", title="Replication lag"),
            native(id="m-4", host="app-02", title="Search 5xx", labels={"service": "search"}),
        )
        held = await suppressed(pool)
        assert {key: (row["kind"], row["suppressed_by"]) for key, row in held.items()} == {
            "suricata:m-1": ("maintenance", one_off["id"]),
            "suricata:m-2": ("maintenance", daily["id"]),
        }
        assert "'db patching'" in held["suricata:m-1"]["reason"] and "CHG-7" in held["suricata:m-1"]["reason"]
        assert "'checkout deploys'" in held["suricata:m-2"]["reason"]
        assert await incidents_of(pool) == {"host:db-09": ["suricata:m-3"], "host:app-02": ["suricata:m-4"]}
        assert counted("maintenance") == before + 2

        # Ended early: the host's next alert opens an incident.
        await vigil(url, commander, "maintenance", "end", one_off["id"])
        await eventually(lambda: _has_windows(running.suppressions, 2))
        await running.send(native(id="m-5", host="db-01", title="Replication lag"))
        assert (await incidents_of(pool))["host:db-01"] == ["suricata:m-5"]
        listed = await vigil(url, commander, "maintenance", "list")
        assert "checkout deploys" in listed and "FREQ=DAILY" in listed and "db patching" not in listed


async def _has_windows(suppressions: Suppressions, count: int) -> bool:
    return len(suppressions.state.windows) == count


# Alertmanager webhook messages (version 4).
def alertmanager(alertname: str, instance: str, fingerprint: str, *, status: str = "firing") -> Record:
    return alertmanager_group((alertname, instance, fingerprint), status=status)


def alertmanager_group(*alerts: tuple[str, str, str], status: str = "firing") -> Record:
    """One message with these alerts (alertname, instance, fingerprint): the detector reads them in one batch."""
    now = datetime.now(UTC)
    message: dict[str, Any] = {
        "version": "4",
        "status": status,
        "receiver": "ops",
        "groupLabels": {},
        "commonLabels": {"severity": "critical"},
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": alertname, "severity": "critical", "instance": f"{instance}:9100"},
                "annotations": {"summary": f"{alertname} on {instance}"},
                "startsAt": (now - timedelta(minutes=1)).isoformat(),
                "endsAt": now.isoformat() if status == "resolved" else "0001-01-01T00:00:00Z",
                "fingerprint": fingerprint,
            }
            for alertname, instance, fingerprint in alerts
        ],
    }
    return None, json.dumps(message).encode(), [(adapters.FORMAT_HEADER, b"alertmanager")]


async def test_a_host_down_inhibits_that_hosts_service_alerts_while_it_fires(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    if "alertmanager" not in adapters.FORMATS:
        pytest.skip("the alertmanager adapter is not registered")
    before = counted("inhibited")
    down = "alertmanager/ops:f-down"
    async with detector(settings, pool, names) as running:
        # The source and a target in one batch, the target first; another target in a later batch.
        await running.send(
            alertmanager_group(("HighErrorRate", "web-01", "f-errors"), ("InstanceDown", "web-01", "f-down"))
        )
        await running.send(
            alertmanager("HighLatency", "web-01", "f-latency"), alertmanager("HighErrorRate", "web-02", "f-other")
        )
        held = await suppressed(pool)
        assert {key: (row["kind"], row["suppressed_by"], row["rule"]) for key, row in held.items()} == {
            "alertmanager/ops:f-errors": ("inhibition", down, "host-down"),
            "alertmanager/ops:f-latency": ("inhibition", down, "host-down"),
        }
        assert "host=web-01" in held["alertmanager/ops:f-errors"]["reason"]
        assert await incidents_of(pool) == {"host:web-01": [down], "host:web-02": ["alertmanager/ops:f-other"]}
        assert counted("inhibited") == before + 2

        # A resolution of an alert still held back is recorded on it.
        await running.send(alertmanager("HighLatency", "web-01", "f-latency", status="resolved"))
        # The host is back: its resolution sets a timer that releases the alerts it held back that still fire;
        # the error alert joins the host's incident.
        await running.send(alertmanager("InstanceDown", "web-01", "f-down", status="resolved"))
        assert await incidents_of(pool) == {"host:web-01": [down], "host:web-02": ["alertmanager/ops:f-other"]}
        poller = TimerPoller(service="detector", pool=pool, names=names, handlers=running.detector.timer_handlers)
        await eventually(poller.fire_due)
    assert await incidents_of(pool) == {
        "host:web-01": ["alertmanager/ops:f-down", "alertmanager/ops:f-errors"],
        "host:web-02": ["alertmanager/ops:f-other"],
    }
    after = await suppressed(pool)
    assert after["alertmanager/ops:f-errors"]["released_at"] is not None
    assert after["alertmanager/ops:f-latency"]["resolved_at"] is not None
    assert await pool.fetchval("SELECT resolved_at IS NOT NULL FROM detector_inhibitors WHERE source_key = $1", down)


async def test_when_a_silence_ends_its_timer_releases_the_alerts_that_still_fire_into_incidents(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    if "alertmanager" not in adapters.FORMATS:
        pytest.skip("the alertmanager adapter is not registered")
    commander = await token(pool, "commander", "ana")
    async with detector_url(settings, pool, names) as url, detector(settings, pool, names) as running:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {commander}"}) as client:
            added = await client.post(
                "/api/v1/silences", json={"matchers": ["host=web-01"], "duration_s": 3600, "comment": "reboot"}
            )
            assert added.status_code == 201, added.text
            silence_id = added.json()["id"]
            await eventually(lambda: _has_silences(running.suppressions, 1))
            # Alertmanager says when its alerts end; a Suricata detection is a one-off.
            await running.send(
                alertmanager_group(("HighErrorRate", "web-01", "f-errors"), ("HighLatency", "web-01", "f-latency")),
                native(id="scan-1", host="web-01", title="ET SCAN"),
            )
            await running.send(alertmanager("HighLatency", "web-01", "f-latency", status="resolved"))
            assert set(await suppressed(pool)) == {
                "alertmanager/ops:f-errors",
                "alertmanager/ops:f-latency",
                "suricata:scan-1",
            }
            assert await incidents_of(pool) == {}
            # The silence's end is a durable timer, set with it, and moved to now when it is expired early.
            due = await pool.fetchval(
                "SELECT due_at FROM timers WHERE service = 'detector' AND subject = $1 AND cancelled_at IS NULL",
                f"silence:{silence_id}",
            )
            assert due == datetime.fromisoformat(added.json()["ends_at"])
            once = {"Idempotency-Key": "expire-once"}
            expired = await client.post(f"/api/v1/silences/{silence_id}/expire", headers=once)
            assert expired.status_code == 200, expired.text
            # Its answer lost, the client asks again with its key: the first answer, not "already ended".
            retried = await client.post(f"/api/v1/silences/{silence_id}/expire", headers=once)
            assert (retried.status_code, retried.json()) == (200, expired.json())
            again = await client.post(f"/api/v1/silences/{silence_id}/expire")
            assert again.status_code == 409 and "already ended" in again.json()["detail"]

        poller = TimerPoller(service="detector", pool=pool, names=names, handlers=running.detector.timer_handlers)
        await eventually(poller.fire_due)

    # Still firing and from a tool that says when alerts end: released into an incident, now.
    assert await incidents_of(pool) == {"host:web-01": ["alertmanager/ops:f-errors"]}
    assert await detected(pool) == ["host:web-01"]
    after = await suppressed(pool)
    assert after["alertmanager/ops:f-errors"]["released_at"] is not None
    assert after["alertmanager/ops:f-latency"]["released_at"] is None  # it had ended
    assert after["suricata:scan-1"]["released_at"] is None  # a one-off: judged afresh if seen again


async def test_a_silenced_alert_is_in_the_reporter_s_alert_history_marked_suppressed_with_its_silence(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """Detector, its outbox relay and the reporter on the real broker: what the silence held back is told."""
    async with pool.acquire() as conn:  # added before the detector started: loaded at its start
        await conn.execute(
            """INSERT INTO detector_silences (id, matchers, starts_at, ends_at, created_by, comment)
               VALUES ('s-disk', '["host=\\"web-01\\"", "rule=~\\"Disk.*\\""]', now() - interval '1 minute',
                       now() + interval '1 hour', 'ana', 'disk swap, CHG-1')"""
        )
    runtime = Runtime(service="reporter", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    producer = make_producer(settings, client_id="detector-relay")
    await producer.start()
    relay = OutboxRelay(
        service="detector",
        pool=pool,
        producer=producer,
        connect=lambda: connect(settings.database_url),
        idle_wait_s=0.1,
    )
    try:
        async with (
            detector(settings, pool, names) as running,
            helpers.running(relay.run()),
            consume_loop(
                settings,
                pool,
                service="reporter",
                topics=[names(INCIDENTS), names(ALERTS_SUPPRESSED)],
                decoder=reporter.decode,
                handler=reporter.handle,
            ),
            serve_app(build_app(runtime, reporter_api.routers(runtime)), name="reporter-api") as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            disk = native(id="disk-1", host="web-01", rule="DiskFull", title="Disk full on /var")
            await running.send(disk, native(id="cpu-1", host="web-01", rule="CpuHigh", title="CPU above 95%"))
            await running.send(disk)  # seen again while silenced

            async def told() -> list[dict[str, Any]]:
                """Both alerts, once the second sighting of the silenced one is counted (else nothing)."""
                alerts: list[dict[str, Any]] = (await client.get("/api/v1/alerts")).json()
                held = [a for a in alerts if a["suppressed"]]
                return alerts if len(alerts) == 2 and held and held[0]["repeats"] == 1 else []

            alerts = await eventually(told)
            only = (await client.get("/api/v1/alerts", params={"suppressed": "only"})).json()
            # The silenced alert ends while silenced: the history says so.
            await running.send(
                native(id="disk-1", host="web-01", rule="DiskFull", title="Disk full on /var", status="resolved")
            )

            async def ended() -> list[dict[str, Any]]:
                params = {"suppressed": "only", "status": "resolved"}
                return list((await client.get("/api/v1/alerts", params=params)).json())

            [resolved] = await eventually(ended)
            still_firing = (await client.get("/api/v1/alerts", params={"status": "firing"})).json()
    finally:
        await producer.stop()

    by_key = {a["key"]: a for a in alerts}
    silenced, fired = by_key["suricata:disk-1"], by_key["suricata:cpu-1"]
    assert (silenced["suppressed"], silenced["incident_id"], silenced["title"]) == (True, None, "Disk full on /var")
    assert {k: v for k, v in silenced["suppressed_by"].items() if k != "reason"} == {
        "kind": "silence",
        "id": "s-disk",
        "name": "disk swap, CHG-1",
    }
    assert silenced["suppressed_by"]["reason"].startswith("silenced by ana until ")
    assert (fired["suppressed"], fired["suppressed_by"]) == (False, None)
    assert fired["incident_id"] == await pool.fetchval("SELECT incident_id FROM detector_alerts")
    assert [a["key"] for a in only] == ["suricata:disk-1"]
    # Two batches, two events, keyed by the silence; in the reporter's history, on no incident's timeline.
    kept = await pool.fetch("SELECT incident_id FROM reporter_history WHERE type = 'vigil.alert.suppressed.v1'")
    assert [r["incident_id"] for r in kept] == ["silence:s-disk", "silence:s-disk"]
    assert not await pool.fetchval("SELECT count(*) FROM reporter_timeline WHERE type = 'vigil.alert.suppressed.v1'")
    # Its end is told under the silence too, and the same occurrence reads resolved; the other alert fires on.
    assert (resolved["key"], resolved["suppressed"], resolved["resolved_at"] is not None) == (
        "suricata:disk-1",
        True,
        True,
    )
    assert [a["key"] for a in still_firing] == ["suricata:cpu-1"]
    ends = await pool.fetch(
        "SELECT incident_id FROM reporter_history WHERE type = 'vigil.alert.suppressed_resolved.v1'"
    )
    assert [r["incident_id"] for r in ends] == ["silence:s-disk"]


async def test_a_recurring_windows_last_occurrence_holds_to_its_end_past_the_windows_end(pool: asyncpg.Pool) -> None:
    """No occurrence starts after a recurring window's end; one that started before it lasts its duration."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        for window_id, rrule, duration_s in (("nightly", "FREQ=DAILY", 4 * 3600), ("one-off", None, None)):
            await repository.create_window(
                conn,
                window_id=window_id,
                name=window_id,
                matchers=["host=db-01"],
                starts_at=now - timedelta(hours=1),  # the last occurrence began an hour ago
                ends_at=now - timedelta(minutes=1),
                rrule=rrule,
                duration_s=duration_s,
                time_zone="UTC",
                created_by="alice",
                comment="patching",
            )
        assert [w["id"] for w in await repository.list_windows(conn)] == ["nightly"]
        # Ended by a person, it ends now, occurrence and all.
        assert await repository.end_window(conn, window_id="nightly", ended_by="bob") is not None
        assert await repository.list_windows(conn) == []


async def test_a_recurring_window_without_an_offset_is_read_in_the_zone_it_recurs_in(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "console", Console(width=250))
    commander = await token(pool, "commander", "ana")
    # A winter day (Paris is UTC+1) within the year a new recurring window may start back.
    today = datetime.now(UTC).date()
    year = today.year if (today.month, today.day) >= (11, 29) else today.year - 1
    weekly = ["maintenance", "add", "weekly", "--host", "db-01", "--start", f"{year}-11-29T02:00"]
    weekly += ["--rrule", "FREQ=WEEKLY;BYDAY=SU", "--for", "2h"]
    # Read in this machine's zone but recurring in UTC, it would drift off its hour: the zone is asked for.
    refused = await asyncio.to_thread(CliRunner().invoke, cli, weekly, env={"VIGIL_API_TOKEN": commander})
    assert refused.exit_code == 2 and "needs the zone it recurs in" in refused.output
    async with detector_url(settings, pool, names) as url:
        added = json.loads(await vigil(url, commander, *weekly, "--tz", "Europe/Paris", "--json"))
    assert datetime.fromisoformat(added["starts_at"]) == datetime(year, 11, 29, 1, 0, tzinfo=UTC)  # 02:00 in Paris
    assert added["time_zone"] == "Europe/Paris"


async def test_an_alert_released_when_a_window_ends_is_not_held_again_by_a_clock_behind_the_databases(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    now = datetime.now(UTC)
    # This host's clock is ten minutes behind: it still finds today's occurrence (now-20 to now-5 min) on.
    lagging = Suppressions((), clock=lambda: datetime.now(UTC) - timedelta(minutes=10))
    detector = Detector(correlation_window=timedelta(minutes=30), suppressions=lagging)
    async with pool.acquire() as conn:
        await repository.create_window(
            conn,
            window_id="daily",
            name="daily",
            matchers=["host=db-05"],
            starts_at=now - timedelta(days=1, minutes=20),
            ends_at=None,
            rrule="FREQ=DAILY",
            duration_s=15 * 60,
            time_zone="UTC",
            created_by="alice",
            comment="backups",
        )
    held = Alert.model_validate({**alert_dict(host="db-05"), "format": "alertmanager"})  # a tool that says when it ends
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="detector", names=names)
        await detector.handle_alerts(ctx, [held])
    assert await pool.fetchval("SELECT count(*) FROM detector_incidents") == 0
    ended_at = now - timedelta(minutes=5)
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="detector", names=names)
        await detector.on_suppression_ended(ctx, Timer(1, "suppression-ended", "maintenance:daily", ended_at, {}))
    assert await pool.fetchval("SELECT incident_id FROM detector_alerts WHERE key = $1", held.key) is not None
