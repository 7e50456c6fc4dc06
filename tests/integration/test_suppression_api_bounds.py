"""The silence and maintenance-window API at its bounds: a request at the edge of what it accepts is
stored and audited, one past it refused with 422 and a reason, never answered 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from services.detector import suppression_api
from shared import audit, identity
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

# As many matchers as a request may hold, each a long pattern: their text is far over an audit detail's size.
LONG = [f'rule=~"{n:02d}-{"(disk|memory|cpu)-pressure-" * 36}.*"' for n in range(32)]


@pytest.fixture
async def client(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[httpx.AsyncClient]:
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="detector", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        token = (await identity.create_token(conn, name="ana", role="commander", created_by="test")).text
    app = build_app(runtime, [suppression_api.router(runtime)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://vigil", headers={"Authorization": f"Bearer {token}"}
    ) as client_:
        yield client_


async def test_a_silence_and_a_window_of_the_most_and_longest_matchers_are_stored_and_audited(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    assert all(len(m) <= 1100 for m in LONG) and len("".join(LONG)) > 4 * audit.MAX_DETAIL_BYTES
    silenced = await client.post(
        "/api/v1/silences", json={"matchers": LONG, "duration_s": 3600, "comment": "capacity drill"}
    )
    window = await client.post(
        "/api/v1/maintenance-windows",
        json={
            "name": "drill",
            "matchers": LONG,
            "starts_at": "2026-01-04T02:00:00Z",
            "ends_at": "2099-01-04T00:00:00Z",
        },
    )
    assert (silenced.status_code, window.status_code) == (201, 201), (silenced.text, window.text)
    assert silenced.json()["matchers"] == LONG  # the silence keeps them whole
    entries = {r["action"]: r["detail"] for r in await pool.fetch("SELECT action, detail FROM audit_log")}
    for action in ("silence.add", "maintenance.add"):
        detail = entries[action]
        assert detail["matchers_count"] == 32 and 0 < len(detail["matchers"]) < 32
        assert all(LONG[n].startswith(m.rstrip("…")) for n, m in enumerate(detail["matchers"]))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/silences", {"matchers": ["host=web-01"], "duration_s": 10**12, "comment": "forever"}),
        (
            "/api/v1/maintenance-windows",
            {
                "name": "weekly",
                "matchers": ["host=web-01"],
                "starts_at": "2026-01-04T02:00:00Z",
                "rrule": "FREQ=WEEKLY",
                "duration_s": 10**15,
            },
        ),
    ],
)
async def test_a_duration_past_the_limit_is_refused_with_a_reason(
    client: httpx.AsyncClient, path: str, body: dict[str, object]
) -> None:
    refused = await client.post(path, json=body)
    assert refused.status_code == 422, refused.text
    assert "duration_s" in refused.text


async def test_a_window_this_version_refuses_is_listed_with_why_and_can_still_be_ended(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    made = await client.post(
        "/api/v1/maintenance-windows",
        json={
            "name": "patching",
            "matchers": ["host=db-01"],
            "starts_at": (datetime.now(UTC) - timedelta(days=30)).isoformat(),
            "rrule": "FREQ=WEEKLY;BYDAY=SU",
            "duration_s": 7200,
        },
    )
    good = await client.post(
        "/api/v1/maintenance-windows",
        json={
            "name": "other",
            "matchers": ["host=db-02"],
            "starts_at": "2026-01-04T02:00:00Z",
            "ends_at": "2099-01-01T00:00:00Z",
        },
    )
    assert (made.status_code, good.status_code) == (201, 201), (made.text, good.text)
    # Stored by an older version, which accepted a rule this one refuses.
    await pool.execute(
        "UPDATE detector_maintenance_windows SET rrule = 'FREQ=MINUTELY;INTERVAL=30' WHERE id = $1", made.json()["id"]
    )
    listed = await client.get("/api/v1/maintenance-windows")
    assert listed.status_code == 200, listed.text
    by_id = {w["id"]: w for w in listed.json()}
    refused = by_id[made.json()["id"]]
    assert refused["problem"] and refused["active_now"] is None and refused["next_start"] is None
    assert by_id[good.json()["id"]]["problem"] is None
    once = {"Idempotency-Key": "end-once"}
    ended = await client.post(f"/api/v1/maintenance-windows/{made.json()['id']}/end", headers=once)
    assert ended.status_code == 200, ended.text
    retried = await client.post(f"/api/v1/maintenance-windows/{made.json()['id']}/end", headers=once)
    assert (retried.status_code, retried.json()) == (200, ended.json())  # a retry, not "no window that has not ended"
    assert ended.json()["ended_by"] == "ana" and ended.json()["problem"]
