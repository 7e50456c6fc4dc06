"""The coordinator's HTTP API: operators' commands, applied at once and recorded as events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from services.coordinator import domain
from services.coordinator.handlers import SERVICE, Coordinator
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
    router = APIRouter(prefix="/api/v1", tags=["commands"])

    async def run(command: AcknowledgeIncident | ResolveIncident) -> CommandResult:
        # The same handler as for commands from Kafka; the command itself goes to the commands
        # topic through the outbox, already marked processed, as the audit record.
        async with runtime.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO processed_events (service, event_id) VALUES ($1, $2)", SERVICE, command.id)
            ctx = HandlerContext(conn=conn, service=SERVICE, names=runtime.names)
            ctx.emit(command)
            result = await coordinator.apply_command(ctx, command)
            await write_events(conn, service=SERVICE, names=runtime.names, events=ctx.emitted)
        if isinstance(result, CommandRejected):
            status = 404 if result.data.reason.startswith("no incident") else 409
            raise HTTPException(status, detail=result.data.reason)
        return CommandResult(incident_id=command.subject, command_id=command.id, state=result.data.to_state.value)

    def make(kind: Literal["ack", "resolve"]) -> None:
        command_class = AcknowledgeIncident if kind == "ack" else ResolveIncident

        @router.post(f"/incidents/{{incident_id}}/{kind}", response_model=CommandResult, name=kind)
        async def command(incident_id: str, body: CommandArgs) -> CommandResult:
            return await run(
                command_class(
                    source=f"/vigil/{SERVICE}/api",
                    subject=incident_id,
                    data=body,
                )
            )

    make("ack")
    make("resolve")

    @router.get("/oncall", response_model=list[OnShift])
    async def oncall() -> list[OnShift]:
        now = datetime.now(UTC)
        return [OnShift(rotation=r.name, commander=domain.on_shift(r, now)) for r in coordinator.oncall.rotations]

    return [router]
