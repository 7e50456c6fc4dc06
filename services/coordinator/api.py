"""The coordinator's HTTP API: operators' commands, applied at once and recorded as events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel

from services.coordinator import domain
from services.coordinator.handlers import SERVICE, Coordinator
from shared.auth import require_token
from shared.consumer import HandlerContext
from shared.events import AcknowledgeIncident, CommandArgs, CommandRejected, ResolveIncident
from shared.outbox import write_events
from shared.service import Runtime


class CommandResult(BaseModel):
    incident_id: str
    command_id: str
    state: str


class OnShift(BaseModel):
    rotation: str
    commander: str


def routers(runtime: Runtime, coordinator: Coordinator) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1", tags=["commands"], dependencies=[Depends(require_token(runtime))])

    async def run(command: AcknowledgeIncident | ResolveIncident) -> CommandResult:
        # The same handler as for commands from Kafka; the command itself goes to the commands
        # topic through the outbox, already marked processed, as the audit record.
        async with runtime.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT true FROM coordinator_incidents WHERE incident_id = $1", command.subject
            ):
                raise HTTPException(404, detail=f"no incident {command.subject}")
            first_time = await conn.fetchval(
                """INSERT INTO processed_events (service, event_id) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING RETURNING true""",
                SERVICE,
                command.id,
            )
            if not first_time:  # a retried request with the same Idempotency-Key: answer, change nothing
                state = await conn.fetchval(
                    "SELECT state FROM coordinator_incidents WHERE incident_id = $1", command.subject
                )
                return CommandResult(incident_id=command.subject, command_id=command.id, state=state)
            ctx = HandlerContext(conn=conn, service=SERVICE, names=runtime.names)
            ctx.emit(command)
            result = await coordinator.apply_command(ctx, command)
            await write_events(conn, service=SERVICE, names=runtime.names, events=ctx.emitted)
        if isinstance(result, CommandRejected):
            raise HTTPException(409, detail=result.data.reason)
        return CommandResult(incident_id=command.subject, command_id=command.id, state=result.data.to_state.value)

    def make(kind: Literal["ack", "resolve"]) -> None:
        command_class = AcknowledgeIncident if kind == "ack" else ResolveIncident

        @router.post(f"/incidents/{{incident_id}}/{kind}", response_model=CommandResult, name=kind)
        async def command(
            incident_id: str,
            body: CommandArgs,
            idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        ) -> CommandResult:
            """Apply the command now; a retry carrying the same Idempotency-Key is applied once."""
            ids = {"id": f"{SERVICE}-api:{idempotency_key}"} if idempotency_key else {}
            return await run(command_class(source=f"/vigil/{SERVICE}/api", subject=incident_id, data=body, **ids))

    make("ack")
    make("resolve")

    @router.get("/oncall", response_model=list[OnShift])
    async def oncall() -> list[OnShift]:
        now = datetime.now(UTC)
        return [OnShift(rotation=r.name, commander=domain.on_shift(r, now)) for r in coordinator.oncall.rotations]

    return [router]
