"""The coordinator's HTTP API asks for a bearer token when one is configured, and only then."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.coordinator import api
from services.coordinator.handlers import SERVICE, Coordinator
from services.coordinator.service import load_oncall
from shared import identity
from shared.kafka import make_producer
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

UNKNOWN = "inc-nobody-knows"
COMMANDS = [f"/api/v1/incidents/{UNKNOWN}/ack", f"/api/v1/incidents/{UNKNOWN}/resolve"]
BODY = {"actor": "alice@example.com"}


@contextlib.asynccontextmanager
async def coordinator_api(
    settings: VigilSettings, pool: asyncpg.Pool, *, secured: bool
) -> AsyncIterator[httpx.AsyncClient]:
    """The coordinator's real app (its routers on build_app) on the test database, over HTTP."""
    configured = settings.model_copy(update={"allow_unauthenticated": not secured})
    producer = make_producer(configured, client_id="coordinator-api-test")
    await producer.start()
    try:
        runtime = Runtime(
            service=SERVICE,
            settings=configured,
            pool=pool,
            producer=producer,
            names=TopicNames(configured.topic_prefix),
        )
        coordinator = Coordinator(load_oncall())
        app = build_app(
            runtime, [*api.routers(runtime, coordinator), api.oncall_router(runtime, lambda: coordinator.oncall)]
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://coordinator") as client:
            yield client
    finally:
        await producer.stop()


def reached_the_handler(response: httpx.Response) -> bool:
    # The handler's own 404 (not the router's "Not Found"): the request got past authentication.
    return response.status_code == 404 and response.json() == {"detail": f"no incident {UNKNOWN}"}


async def commander_token(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as conn:
        return (await identity.create_token(conn, name="carol", role="commander", created_by="test")).text


async def test_with_authentication_turned_off_commands_and_oncall_need_no_token(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    async with coordinator_api(settings, pool, secured=False) as client:
        for path in COMMANDS:
            response = await client.post(path, json=BODY)
            assert reached_the_handler(response), (path, response.status_code, response.text)
        oncall = await client.get("/api/v1/oncall")
        assert oncall.status_code == 200, oncall.text
        assert oncall.json() and {"schedule", "person"} <= set(oncall.json()[0])


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer wrong", "Bearer", "Bearer {token}x", "Basic {token}", "{token}", "Token {token}"],
)
async def test_a_missing_or_wrong_token_is_refused(
    settings: VigilSettings, pool: asyncpg.Pool, authorization: str | None
) -> None:
    token = await commander_token(pool)
    headers = {"Authorization": authorization.format(token=token)} if authorization is not None else {}
    async with coordinator_api(settings, pool, secured=True) as client:
        responses = [await client.post(path, json=BODY, headers=headers) for path in COMMANDS]
        responses.append(await client.get("/api/v1/oncall", headers=headers))
    for response in responses:
        assert response.status_code == 401, (response.request.url, response.status_code, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_a_valid_token_reaches_the_handlers(settings: VigilSettings, pool: asyncpg.Pool, scheme: str) -> None:
    headers = {"Authorization": f"{scheme} {await commander_token(pool)}"}
    async with coordinator_api(settings, pool, secured=True) as client:
        for path in COMMANDS:
            response = await client.post(path, json=BODY, headers=headers)
            assert reached_the_handler(response), (path, response.status_code, response.text)
        oncall = await client.get("/api/v1/oncall", headers=headers)
        assert oncall.status_code == 200, oncall.text
        # Probes and metrics stay open: orchestrators and Prometheus carry no token.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
