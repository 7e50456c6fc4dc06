"""The detector's operator API: merge incidents into one, detach alerts into a new incident.

- ``POST /api/v1/incidents/{survivor}/merge`` ``{"incidents": [ID, …], "note": "…"}``
- ``POST /api/v1/incidents/{incident}/detach`` ``{"alerts": [ALERT_KEY, …], "note": "…"}``

Each is applied at once, with the handler the commands topic's commands take, and the command itself
goes to the commands topic through the outbox, already marked processed, as the record. The answer is
200 with what was done, or 409 with why not (the refusal is recorded too, as a CommandRejected event
and on the audit trail). A retry with the same Idempotency-Key gets the first answer back.
Both need the permission to edit incidents; the actor is who authenticated.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.detector import commands
from services.detector.handlers import Detector
from shared import idempotency
from shared.auth import actor, require
from shared.consumer import HandlerContext, write_context
from shared.events import CommandRejected, DetachAlerts, DetachArgs, MergeArgs, MergeIncidents
from shared.identity import Principal
from shared.service import Runtime

SERVICE = "detector"
SOURCE = f"/vigil/{SERVICE}/api"
# A retried request carries the same key and is applied once (module level: FastAPI resolves it here).
IdempotencyKey = Annotated[str | None, Header(max_length=200)]
APPLY_ATTEMPTS = 3


class CommandDone(BaseModel):
    incident_id: str
    command_id: str
    alert_count: int
    severity: str
    merged: list[str]
    alerts_moved: int
    new_incident_id: str | None
    detached: list[str]


def routers(runtime: Runtime, detector: Detector) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1", tags=["incidents"])

    async def run(command: commands.Command, by: Principal, key: str | None) -> JSONResponse:
        attempt = 1
        while True:
            try:
                return await run_once(command, by, key)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                # A batch of alerts locked the same incidents in another order; all rolled back, so again.
                if attempt == APPLY_ATTEMPTS:
                    raise
                attempt += 1

    async def run_once(command: commands.Command, by: Principal, key: str | None) -> JSONResponse:
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                await conn.execute(
                    "INSERT INTO processed_events (service, event_id) VALUES ($1, $2)", SERVICE, command.id
                )
                ctx = HandlerContext(conn=conn, service=SERVICE, names=runtime.names)
                ctx.emit(command)
                outcome = await commands.apply(
                    ctx, command, classifier=detector.classifier, correlations=detector.correlation.current()
                )
                await write_context(conn, ctx)
                if isinstance(outcome, CommandRejected):
                    return idempotency.Answer(409, {"detail": outcome.data.reason})
                done = CommandDone(**dataclasses.asdict(outcome))
                return idempotency.Answer(200, done.model_dump(mode="json"))

            operation = f"{command.type}:{command.subject}"
            answer = await idempotency.once(conn, principal=by.name, operation=operation, key=key, apply=apply)
        return JSONResponse(answer.body, status_code=answer.status)

    @router.post("/incidents/{incident_id}/merge", response_model=CommandDone)
    async def merge(
        incident_id: str,
        body: MergeArgs,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.edit"),
    ) -> JSONResponse:
        """Merge the named incidents into this one; they end, pointing at it. 409 says why not."""
        data = body.model_copy(update={"actor": actor(by, body.actor)})
        return await run(MergeIncidents(source=SOURCE, subject=incident_id, data=data), by, idempotency_key)

    @router.post("/incidents/{incident_id}/detach", response_model=CommandDone)
    async def detach(
        incident_id: str,
        body: DetachArgs,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.edit"),
    ) -> JSONResponse:
        """Detach the named alerts into a new incident of their own. 409 says why not."""
        data = body.model_copy(update={"actor": actor(by, body.actor)})
        return await run(DetachAlerts(source=SOURCE, subject=incident_id, data=data), by, idempotency_key)

    return [router]
