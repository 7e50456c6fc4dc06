"""Review digests against the real Postgres: set at start-up, fired by the coordinator's timer poller, sent once."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from services.coordinator import api, digests, notifications
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from shared import identity
from shared.events import AcknowledgeIncident, CommandArgs, IncidentDetected, ResolveIncident, Severity
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import serve_app
from tests.integration.test_coordinator_lifecycle import feed

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

NOTIFICATIONS = """
channels:
  webhook: {url: "https://hooks.example.com/vigil", secret_env: SECRET}
people:
  lead@example.com: {webhook: "https://hooks.example.com/vigil"}
routes:
  default: {default: [webhook]}
"""
DIGESTS = """
digests:
  - name: weekly-review
    every: FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0
    time_zone: Europe/Lisbon
    to: [lead@example.com]
  - name: serious-only
    every: FREQ=DAILY;BYHOUR=8;BYMINUTE=0
    to: [lead@example.com]
    severities: [SEV1, SEV2]
"""


async def test_a_digest_is_set_once_sent_for_its_period_by_the_poller_and_set_again_for_its_next_time(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    notices = notifications.parse_notifications(
        textwrap.dedent(NOTIFICATIONS), environ={"SECRET": "a-webhook-secret-for-digests"}
    )
    reviews = digests.parse_digests(DIGESTS)
    coordinator = Coordinator(load_oncall(), notices=notices, digests_=reviews)
    for subject, severity in (("inc-a", Severity.SEV1), ("inc-b", Severity.SEV3), ("inc-c", Severity.SEV3)):
        detected = IncidentDetected(source="/t", subject=subject, data=snapshot(severity=severity, title=subject))
        await feed(pool, names, coordinator, detected)
    await feed(
        pool, names, coordinator, AcknowledgeIncident(source="/t", subject="inc-a", data=CommandArgs(actor="al"))
    )
    fixed = ResolveIncident(source="/t", subject="inc-b", data=CommandArgs(actor="al", resolution="fixed"))
    await feed(pool, names, coordinator, fixed)

    async with pool.acquire() as conn:
        now = datetime.now(UTC)
        assert sorted(await digests.ensure_scheduled(conn, reviews, now=now)) == ["serious-only", "weekly-review"]
        assert await digests.ensure_scheduled(conn, reviews, now=now) == []  # a restart sets nothing twice
    weekly_due = reviews["weekly-review"].next_after(now)
    assert (
        await pool.fetchval(
            "SELECT due_at FROM timers WHERE kind = $1 AND subject = 'weekly-review' AND fired_at IS NULL",
            digests.TIMER,
        )
        == weekly_due
    )

    # Its time comes (here: now), while no coordinator ran: the poller sends it once it runs.
    await pool.execute(
        """UPDATE timers SET due_at = now(), payload = jsonb_build_object('at', now())
           WHERE kind = $1 AND subject = 'weekly-review'""",
        digests.TIMER,
    )
    poller = TimerPoller(service="coordinator", pool=pool, names=names, handlers=coordinator.timer_handlers)
    assert await poller.fire_due() == 1
    (effect,) = await pool.fetch("SELECT key, payload FROM effects WHERE subject = 'digest-weekly-review'")
    sent = effect["payload"]["body"]
    assert effect["key"].startswith("digest-weekly-review:digest:") and effect["key"].endswith(
        ":webhook:lead@example.com"
    )
    assert sent["title"] == "Vigil weekly-review: 3 incident(s) opened, 1 resolved"
    data = sent["data"]
    assert (data["opened_by_severity"], data["resolved_by_resolution"]) == ({"SEV1": 1, "SEV3": 2}, {"fixed": 1})
    assert (data["open_now"], data["open_by_severity"]) == (2, {"SEV1": 1, "SEV3": 1})
    assert [n["title"] for n in data["notable"]] == ["inc-a"]
    assert data["mtta_minutes"] is not None and data["mttr_minutes"] is not None
    assert sent["severity"] == "SEV1"  # routed as the worst it names
    # The next one is set for its next time; the other digest's is untouched.
    pending = await pool.fetch(
        "SELECT subject, due_at FROM timers WHERE kind = $1 AND fired_at IS NULL AND cancelled_at IS NULL ORDER BY 1",
        digests.TIMER,
    )
    assert [(r["subject"], r["due_at"]) for r in pending] == [
        ("serious-only", reviews["serious-only"].next_after(now)),
        ("weekly-review", weekly_due),
    ]


async def test_a_changed_rule_moves_a_pending_timer_and_a_parked_one_is_set_anew(pool: asyncpg.Pool) -> None:
    reviews = digests.parse_digests(DIGESTS)
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await digests.ensure_scheduled(conn, reviews, now=now)
        daily = reviews["serious-only"].model_copy(update={"every": "FREQ=DAILY;BYHOUR=6;BYMINUTE=30"})
        await conn.execute(
            "UPDATE timers SET parked_at = now(), attempts = 5 WHERE kind = $1 AND subject = 'weekly-review'",
            digests.TIMER,
        )
        changed = await digests.ensure_scheduled(conn, {**reviews, "serious-only": daily}, now=now)
    assert sorted(changed) == ["serious-only", "weekly-review"]
    pending = await pool.fetch(
        """SELECT subject, due_at, payload FROM timers
           WHERE kind = $1 AND fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL ORDER BY 1""",
        digests.TIMER,
    )
    assert [(r["subject"], r["due_at"]) for r in pending] == [
        ("serious-only", daily.next_after(now)),
        ("weekly-review", reviews["weekly-review"].next_after(now)),
    ]
    assert all(datetime.fromisoformat(r["payload"]["at"]) == r["due_at"] for r in pending)


async def test_operators_list_the_digests_and_preview_one_without_sending_it(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    reviews = digests.parse_digests(DIGESTS)
    notices = notifications.parse_notifications(
        textwrap.dedent(NOTIFICATIONS), environ={"SECRET": "a-webhook-secret-for-digests"}
    )
    coordinator = Coordinator(load_oncall(), notices=notices, digests_=reviews)
    await feed(pool, names, coordinator, IncidentDetected(source="/t", subject="inc-p", data=snapshot(title="Preview")))
    async with pool.acquire() as conn:
        token = await identity.create_token(conn, name="vera", role="viewer", created_by="test")
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="coordinator", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    app = build_app(runtime, [api.digests_router(runtime, coordinator)])
    async with serve_app(app, name="coordinator-api") as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/api/v1/digests")).status_code == 401
        headers = {"Authorization": f"Bearer {token.text}"}
        listed = (await client.get("/api/v1/digests", headers=headers)).json()
        preview = await client.get("/api/v1/digests/weekly-review/preview", headers=headers)
        missing = await client.get("/api/v1/digests/monthly/preview", headers=headers)
    assert [(d["name"], d["to"]) for d in listed] == [
        ("weekly-review", ["lead@example.com"]),
        ("serious-only", ["lead@example.com"]),
    ]
    assert all(d["next_at"] for d in listed)
    assert preview.status_code == 200 and preview.json()["opened"] == 1
    assert [n["title"] for n in preview.json()["notable"]] == ["Preview"]
    assert missing.status_code == 404 and "weekly-review, serious-only" in missing.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM effects WHERE subject LIKE 'digest-%'") == 0  # nothing sent
