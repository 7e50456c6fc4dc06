"""Secrets never reach a log line, an event, a stored payload or the audit trail.

Secrets are planted where Vigil holds them — a webhook's signing secret, an API token — a whole
response runs through them at DEBUG logging, and every log record and every stored row is searched.
"""

from __future__ import annotations

import logging

import asyncpg
import httpx
import pytest

from services.responder import api
from services.responder.handlers import Responder
from shared import identity
from shared.events import IncidentAnalyzed
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.helpers import eventually, serve_app
from tests.integration.test_response_execution import (
    SECRET,
    _all_done,
    analysis,
    handle,
    receiver,
    responder_for,
    runner_for,
    running,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

# Every table a secret could leak into if code were careless.
TABLES = ("outbox", "effects", "responder_steps", "responder_step_log", "audit_log", "api_tokens", "timers")


async def stored_text(pool: asyncpg.Pool) -> str:
    rows = []
    for table in TABLES:
        rows += [str(dict(r)) for r in await pool.fetch(f"SELECT * FROM {table}")]
    return "\n".join(rows)


async def test_planted_secrets_appear_in_no_log_line_event_or_row(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with pool.acquire() as conn:
        token = await identity.create_token(conn, name="carol", role="commander", created_by="test")
    planted = [SECRET, token.secret]
    async with receiver() as far:
        responder: Responder = responder_for(pool, far, policy="rules: [{name: all, mode: approve}]")
        await handle(pool, names, responder, IncidentAnalyzed(source="/t", subject="inc-s", data=analysis()))
        secured = settings.model_copy(update={"allow_unauthenticated": False})
        runtime = Runtime(service="responder", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
        app = build_app(runtime, api.routers(runtime, responder))
        async with serve_app(app, name="responder-api") as base, httpx.AsyncClient(base_url=base) as client:
            headers = {"Authorization": f"Bearer {token.text}"}
            for step in ("inc-s:tell", "inc-s:isolate", "inc-s:block"):
                body = {"step_id": step, "actor": "carol", "note": "go"}
                answered = await client.post(f"/api/v1/steps/{step}/approve", json=body, headers=headers)
                assert answered.status_code in (200, 409), answered.text
            forged = {"Authorization": "Bearer " + token.text[:-2] + "zz"}
            bad = await client.get("/api/v1/incidents/inc-s/actions", headers=forged)
            assert bad.status_code == 401 and token.secret[:-2] not in bad.text
        async with running(runner_for(responder, settings, pool, names)):
            await eventually(lambda: _all_done(pool, "inc-s"))
    assert far.keys, "the signed webhook was sent"  # the secret was used, not merely configured
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    stored = await stored_text(pool)
    for secret in planted:
        assert secret not in logged, "a secret reached a log line"
        assert secret not in stored, "a secret reached a stored row or event"
