"""Schemathesis against each service's published OpenAPI document: no 5xx, and every answer matches it.

Each service's app (what ``vigil up`` serves, authentication on) is served on loopback against the real
Postgres and broker; schemathesis reads the app's own OpenAPI document and sends, to every operation,
requests generated from it (and, in negative mode, breaking it) with an administrator's token: some name
a known incident, to reach past the 404, some hostile path values. Every answer must be below 500, of a
declared content type, and match its declared schema. Examples are derandomized (the suite's hypothesis
profile) and bounded per operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from services.analyzer import service as analyzer_service
from services.coordinator import api as coordinator_api
from services.coordinator import ticketing
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.coordinator.tasks import load_templates
from services.coordinator.tasks_api import tasks_router, tickets_router
from services.detector import service as detector_service
from services.reporter import api as reporter_api
from services.responder import api as responder_api
from services.responder.approvals import load_policy
from services.responder.guardrails import RateLimiter, load_guardrails
from services.responder.handlers import Execution, Responder
from services.responder.service import load_playbooks
from shared import identity
from shared.consumer import HandlerContext, write_context
from shared.events import IncidentDetected
from shared.kafka import make_producer
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]

SERVICES = ["detector", "analyzer", "responder", "coordinator", "reporter"]
# Examples per operation: enough to find the crashes seen so far, few enough for the suite.
EXAMPLES = 25
KNOWN_INCIDENT = "inc-fuzz"
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
# Path values schemathesis seldom draws, each of which once made a route fail with a 500.
HOSTILE_PATH_VALUES = [
    "a\x00b",  # Postgres text holds no NUL
    str(2**70),  # beyond a bigint id
    "-1",
    "' OR '1'='1",
    "{{7*7}}",
    "$(id)",
    "<script>alert(1)</script>",
    "..%2F..",
    "ü" * 300,
]


def build(service: str, runtime: Runtime) -> FastAPI:
    if service == "detector":
        return build_app(runtime, detector_service.spec(runtime.settings).routers(runtime))
    if service == "analyzer":
        return build_app(runtime, analyzer_service.spec(runtime.settings).routers(runtime))
    if service == "responder":
        responder = Responder(
            load_playbooks(),
            Execution(
                policy=load_policy(),
                guardrails=load_guardrails(),
                connectors={},
                rate_limiter=RateLimiter(runtime.settings.database_url),
            ),
        )
        return build_app(runtime, responder_api.routers(runtime, responder))
    if service == "coordinator":
        coordinator = Coordinator(load_oncall())
        return build_app(
            runtime,
            [
                *coordinator_api.routers(runtime, coordinator),
                coordinator_api.oncall_router(runtime, lambda: coordinator.oncall),
                coordinator_api.digests_router(runtime, coordinator),
                tasks_router(runtime, load_templates()),
                tickets_router(runtime, ticketing.NONE, on_done=None),
            ],
        )
    return build_app(runtime, reporter_api.routers(runtime))


@pytest.fixture
async def secured(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames) -> AsyncIterator[Runtime]:
    """A runtime with authentication on, a producer, and one incident the coordinator knows."""
    settings = settings.model_copy(update={"allow_unauthenticated": False})
    producer = make_producer(settings, client_id="schemathesis")
    await producer.start()
    try:
        coordinator = Coordinator(load_oncall())
        detected = IncidentDetected(source="/vigil/detector", subject=KNOWN_INCIDENT, data=snapshot())
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(conn=conn, service="coordinator", names=names)
            await coordinator.on_detected(ctx, detected)
            await write_context(conn, ctx)
        yield Runtime(service="fuzz", settings=settings, pool=pool, producer=producer, names=names)
    finally:
        await producer.stop()


def cases(operation: Any) -> Any:
    """Generated cases of one operation; some name the known incident, to reach past the 404, some a hostile value."""
    names = {parameter.name for parameter in operation.path_parameters}
    known = {"incident_id": KNOWN_INCIDENT} if "incident_id" in names else {}
    strategy = operation.as_strategy() | operation.as_strategy(path_parameters=known)
    # And requests that break the document (wrong types, missing fields): refused, never a 5xx.
    strategy |= operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE, path_parameters=known)
    if names:
        strategy |= st.sampled_from(HOSTILE_PATH_VALUES).flatmap(
            lambda value: operation.as_strategy(path_parameters=dict.fromkeys(names, value))
        )
    return strategy


def fuzz(schema: Any, base_url: str, token: str) -> list[str]:
    """Run every operation's generated cases; return what failed, one line per operation (blocking)."""
    failures: list[str] = []
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = cases(operation)

        @settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            check()
        except Exception as failure:  # every operation is tried; each failure is reported
            failures.append(f"{operation.label}: {failure}")
    return failures


@pytest.mark.parametrize("service", SERVICES)
async def test_every_operation_answers_without_a_server_error_and_as_documented(
    service: str, secured: Runtime, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        token = (await identity.create_token(conn, name="fuzzer", role="admin", created_by="test")).text
    runtime = Runtime(
        service=service,
        settings=secured.settings,
        pool=secured.pool,
        producer=secured.producer,
        names=secured.names,
    )
    app = build(service, runtime)
    schema = schemathesis.openapi.from_dict(app.openapi())
    assert list(schema.get_all_operations()), service
    async with serve_app(app, name=f"{service}-api") as base:
        failures = await asyncio.to_thread(fuzz, schema, base, token)
    assert not failures, "\n\n".join(failures)
