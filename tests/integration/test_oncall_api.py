"""`GET /api/v1/oncall`: the coordinator's app, served over HTTP, says who is on call in every schedule."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.coordinator import api
from services.coordinator.handlers import SERVICE
from services.coordinator.schedules import OnCallConfig, parse_oncall
from shared import identity
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ONCALL = """\
schedules:
  - name: security
    time_zone: Europe/Berlin
    layers:
      - name: weekly
        rotation: {type: weekly, handoff: "09:00", start: 2026-01-05, members: [alice, bob, carol]}
    overrides:
      - {person: frank, starts: 2026-01-20T00:00:00Z, ends: 2026-01-21T00:00:00Z}
  - name: operations
    layers:
      - name: daily
        rotation: {type: daily, handoff: "09:00", start: 2026-01-05, members: [dave, erin]}
default_schedule: security
ack_deadline_minutes: {SEV1: 5}
"""


@contextlib.asynccontextmanager
async def oncall_api(
    settings: VigilSettings, pool: asyncpg.Pool, configs: list[OnCallConfig], *, secured: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """The route on the coordinator's real app, served by uvicorn; it reads the last of ``configs``."""
    configured = settings.model_copy(update={"allow_unauthenticated": not secured})
    runtime = Runtime(
        service=SERVICE,
        settings=configured,
        pool=pool,
        producer=None,  # type: ignore[arg-type]  # the route publishes nothing
        names=TopicNames(configured.topic_prefix),
    )
    app = build_app(runtime, [api.oncall_router(runtime, lambda: configs[-1])])
    async with serve_app(app, name="coordinator-oncall") as base, httpx.AsyncClient(base_url=base) as client:
        yield client


async def test_who_is_on_call_at_a_given_time(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    async with oncall_api(settings, pool, [parse_oncall(ONCALL)]) as client:
        response = await client.get("/api/v1/oncall", params={"at": "2026-01-14T12:00:00Z"})
        assert response.status_code == 200, response.text
        assert response.json() == [
            {
                "schedule": "security",
                "layer": "weekly",
                "person": "bob",
                "starts": "2026-01-12T08:00:00Z",  # 09:00 in Berlin
                "ends": "2026-01-19T08:00:00Z",
                "covering": None,
            },
            {
                "schedule": "operations",
                "layer": "daily",
                "person": "erin",
                "starts": "2026-01-14T09:00:00Z",
                "ends": "2026-01-15T09:00:00Z",
                "covering": None,
            },
        ]
        covered = (await client.get("/api/v1/oncall", params={"at": "2026-01-20T12:00:00+01:00"})).json()[0]
        assert (covered["person"], covered["covering"]) == ("frank", "carol")
        assert (covered["starts"], covered["ends"]) == ("2026-01-20T00:00:00Z", "2026-01-21T00:00:00Z")


async def test_now_by_default_and_a_time_must_carry_its_zone(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    async with oncall_api(settings, pool, [parse_oncall(ONCALL)]) as client:
        now = await client.get("/api/v1/oncall")
        assert now.status_code == 200, now.text
        assert [s["schedule"] for s in now.json()] == ["security", "operations"]
        assert all(s["person"] in {"alice", "bob", "carol", "frank", "dave", "erin"} for s in now.json())
        for at in ("2026-01-14T12:00:00", "yesterday"):
            refused = await client.get("/api/v1/oncall", params={"at": at})
            assert refused.status_code == 422, (at, refused.text)


async def test_each_request_reads_the_configuration_in_force(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    configs = [parse_oncall(ONCALL)]
    async with oncall_api(settings, pool, configs) as client:
        before = (await client.get("/api/v1/oncall", params={"at": "2026-01-14T12:00:00Z"})).json()
        configs.append(parse_oncall(ONCALL.replace("[alice, bob, carol]", "[zoe]")))
        after = (await client.get("/api/v1/oncall", params={"at": "2026-01-14T12:00:00Z"})).json()
    assert (before[0]["person"], after[0]["person"]) == ("bob", "zoe")


async def test_the_route_needs_a_token_a_viewer_has(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        viewer = (await identity.create_token(conn, name="vic", role="viewer", created_by="test")).text
    async with oncall_api(settings, pool, [parse_oncall(ONCALL)], secured=True) as client:
        assert (await client.get("/api/v1/oncall")).status_code == 401
        wrong = await client.get("/api/v1/oncall", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await client.get("/api/v1/oncall", headers={"Authorization": f"Bearer {viewer}"})
        assert right.status_code == 200, right.text
