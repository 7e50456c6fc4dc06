"""The coordinator's HTTP API: operators' commands, applied at once and recorded as events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.coordinator import digests, domain
from services.coordinator.handlers import SERVICE, Command, Coordinator
from services.coordinator.schedules import OnCallConfig, who_is_on_call
from shared import idempotency
from shared.auth import ANONYMOUS, actor, require
from shared.consumer import HandlerContext, write_context
from shared.events import (
    AcknowledgeIncident,
    AddNote,
    ApproveStep,
    Assignment,
    AssignRole,
    ChangeState,
    CommandArgs,
    CommandRejected,
    DenyStep,
    EditIncident,
    IncidentEdit,
    NoteArgs,
    ResolveIncident,
    StateCommand,
    StepAnswer,
)
from shared.identity import Permission, Principal
from shared.outbox import write_events
from shared.service import Runtime

# A retried request carries the same key and is applied once (module level: FastAPI resolves it here).
IdempotencyKey = Annotated[str | None, Header(max_length=200)]


class CommandResult(BaseModel):
    incident_id: str
    command_id: str
    state: str
    severity: str
    type: str
    title: str
    commander: str
    roles: dict[str, str]
    resolution: str | None


class Transition(BaseModel):
    at: datetime
    from_state: str | None
    to_state: str
    transition: str | None
    actor: str
    reason: str
    resolution: str | None


class Lifecycle(BaseModel):
    incident_id: str
    state: str
    resolution: str | None
    allowed: dict[str, str] = Field(description="Transition name: the state it leads to.")
    resolutions: list[str]
    state_times: dict[str, datetime]
    transitions: list[Transition]


class Forwarded(BaseModel):
    command_id: str
    forwarded_to: str


def routers(runtime: Runtime, coordinator: Coordinator) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1", tags=["commands"])

    async def run(command: Command, by: Principal, key: str | None) -> JSONResponse:
        """Apply a command at once, with the handler commands from Kafka take; the command itself goes to the
        commands topic through the outbox, already marked processed, as the record. A retry with the same
        Idempotency-Key (same principal, same operation) gets the first answer back, a refusal included."""
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                if not await conn.fetchval(
                    "SELECT true FROM coordinator_incidents WHERE incident_id = $1", command.subject
                ):
                    raise HTTPException(404, detail=f"no incident {command.subject}")
                await conn.execute(
                    "INSERT INTO processed_events (service, event_id) VALUES ($1, $2)", SERVICE, command.id
                )
                ctx = HandlerContext(conn=conn, service=SERVICE, names=runtime.names)
                ctx.emit(command)
                result = await coordinator.apply_command(ctx, command)
                # A refused command is recorded too, with why, as the consume loop would.
                await write_context(conn, ctx)
                if isinstance(result, CommandRejected):
                    return idempotency.Answer(409, {"detail": result.data.reason})
                row = await conn.fetchrow("SELECT * FROM coordinator_incidents WHERE incident_id = $1", command.subject)
                assert row is not None  # checked above, in the same transaction
                fields = {k: row[k] for k in ("state", "severity", "type", "title", "commander", "roles", "resolution")}
                done = CommandResult(incident_id=command.subject, command_id=command.id, **fields)
                return idempotency.Answer(200, done.model_dump(mode="json"))

            operation = f"{command.type}:{command.subject}"
            answer = await idempotency.once(conn, principal=by.name, operation=operation, key=key, apply=apply)
        return JSONResponse(answer.body, status_code=answer.status)

    source = f"/vigil/{SERVICE}/api"

    def make(kind: Literal["ack", "resolve"]) -> None:
        command_class = AcknowledgeIncident if kind == "ack" else ResolveIncident

        permission: Permission = "incidents.acknowledge" if kind == "ack" else "incidents.state"

        @router.post(f"/incidents/{{incident_id}}/{kind}", response_model=CommandResult, name=kind)
        async def command(
            incident_id: str,
            body: CommandArgs,
            idempotency_key: IdempotencyKey = None,
            by: Principal = require(runtime, permission),
        ) -> JSONResponse:
            """Apply the command now; a retry carrying the same Idempotency-Key is applied once."""
            data = body.model_copy(update={"actor": actor(by, body.actor)})
            return await run(command_class(source=source, subject=incident_id, data=data), by, idempotency_key)

    make("ack")
    make("resolve")

    @router.post("/incidents/{incident_id}/state", response_model=CommandResult)
    async def change_state(
        incident_id: str,
        body: StateCommand,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.state"),
    ) -> JSONResponse:
        """Move the incident to another state of its lifecycle; 409 names the states it may go to."""
        data = body.model_copy(update={"actor": actor(by, body.actor)})
        return await run(ChangeState(source=source, subject=incident_id, data=data), by, idempotency_key)

    @router.post("/incidents/{incident_id}/edit", response_model=CommandResult)
    async def edit(
        incident_id: str,
        body: IncidentEdit,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.edit"),
    ) -> JSONResponse:
        """Change severity, type or title, with a reason; the detector's later view is only offered."""
        data = body.model_copy(update={"actor": actor(by, body.actor)})
        return await run(EditIncident(source=source, subject=incident_id, data=data), by, idempotency_key)

    @router.post("/incidents/{incident_id}/notes", response_model=CommandResult)
    async def note(
        incident_id: str,
        body: NoteArgs,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.note"),
    ) -> JSONResponse:
        """Add a note to the incident's timeline."""
        data = body.model_copy(update={"actor": actor(by, body.actor)})
        return await run(AddNote(source=source, subject=incident_id, data=data), by, idempotency_key)

    @router.post("/incidents/{incident_id}/assign", response_model=CommandResult)
    async def assign(
        incident_id: str,
        body: Assignment,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.assign"),
    ) -> JSONResponse:
        """Give a person a role on the incident (commander, scribe, communications, …)."""
        data = body.model_copy(update={"actor": actor(by, body.actor)})
        return await run(AssignRole(source=source, subject=incident_id, data=data), by, idempotency_key)

    @router.get("/incidents/{incident_id}/lifecycle", response_model=Lifecycle)
    async def incident_lifecycle(incident_id: str, _by: Principal = require(runtime, "incidents.read")) -> Lifecycle:
        """Where the incident stands, where it may go next, and every move so far."""
        async with runtime.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            row = await conn.fetchrow("SELECT * FROM coordinator_incidents WHERE incident_id = $1", incident_id)
            moves = await conn.fetch(
                "SELECT * FROM coordinator_transitions WHERE incident_id = $1 ORDER BY id", incident_id
            )
        if row is None:
            raise HTTPException(404, detail=f"no incident {incident_id}")
        state = domain.known_state(row["state"])
        allowed = coordinator.lifecycle.allowed_from(state) if state else []
        return Lifecycle(
            incident_id=incident_id,
            state=row["state"],
            resolution=row["resolution"],
            allowed={t.name: t.to.value for t in allowed},
            resolutions=coordinator.lifecycle.resolutions,
            state_times=row["state_times"],
            transitions=[Transition.model_validate({k: m[k] for k in Transition.model_fields}) for m in moves],
        )

    def forward(kind: Literal["approve", "deny"]) -> None:
        command_class = ApproveStep if kind == "approve" else DenyStep

        @router.post(f"/steps/{{step_id:path}}/{kind}", response_model=Forwarded, status_code=202)
        async def answer(
            step_id: str,
            body: StepAnswer,
            idempotency_key: IdempotencyKey = None,
            by: Principal = require(runtime, "steps.approve"),
        ) -> Any:
            """Forward an approval or denial to the responder through the commands topic (it answers there)."""
            if body.step_id != step_id:
                raise HTTPException(422, detail="the step id in the path and the body differ")
            body = body.model_copy(
                update={"actor": actor(by, body.actor), "role": by.role if by is not ANONYMOUS else body.role}
            )
            event = command_class(source=source, subject=step_id.partition(":")[0], data=body)
            async with runtime.pool.acquire() as conn, conn.transaction():

                async def apply() -> idempotency.Answer:
                    await write_events(conn, service=SERVICE, names=runtime.names, events=[event])
                    sent = Forwarded(command_id=event.id, forwarded_to="responder")
                    return idempotency.Answer(202, sent.model_dump())

                operation = f"{event.type}:{step_id}"
                forwarded = await idempotency.once(
                    conn, principal=by.name, operation=operation, key=idempotency_key, apply=apply
                )
            return JSONResponse(forwarded.body, status_code=forwarded.status)

    forward("approve")
    forward("deny")

    return [router]


class OnCallShift(BaseModel):
    schedule: str
    layer: str
    person: str
    starts: datetime | None
    ends: datetime | None
    covering: str | None


def oncall_router(runtime: Runtime, config: Callable[[], OnCallConfig]) -> APIRouter:
    """`GET /api/v1/oncall[?at=ISO 8601]`: who is on call in every schedule, now or then.

    ``config`` returns the on-call configuration in force (it may be reloaded, calendars refetched).
    """
    router = APIRouter(prefix="/api/v1", tags=["oncall"], dependencies=[require(runtime, "incidents.read")])

    @router.get("/oncall", response_model=list[OnCallShift])
    def oncall(at: datetime | None = None) -> list[OnCallShift]:
        """Each schedule's shift at ``at`` (default now; with an offset: `2026-03-29T09:00:00Z`)."""
        if at is not None and at.tzinfo is None:
            raise HTTPException(422, detail="give `at` a time zone offset or Z, such as 2026-03-29T09:00:00Z")
        return [
            OnCallShift(
                schedule=s.schedule, layer=s.layer, person=s.person, starts=s.starts, ends=s.ends, covering=s.covering
            )
            for s in who_is_on_call(config(), at or datetime.now(UTC))
        ]

    return router


class DigestOut(BaseModel):
    name: str
    every: str
    time_zone: str
    covers: str
    to: list[str]
    severities: list[str] | None
    next_at: datetime | None


def digests_router(runtime: Runtime, coordinator: Coordinator) -> APIRouter:
    """`GET /api/v1/digests`: the review digests and when each goes next; `…/{name}/preview`: what it would say
    now, of the period ending now, without sending it."""
    router = APIRouter(prefix="/api/v1", tags=["digests"], dependencies=[require(runtime, "incidents.read")])

    @router.get("/digests", response_model=list[DigestOut])
    async def listed() -> list[DigestOut]:
        now = datetime.now(UTC)
        shown = {"name", "every", "time_zone", "covers", "to", "severities"}
        found = coordinator.digests.values()
        return [DigestOut(**d.model_dump(include=shown), next_at=d.next_after(now)) for d in found]

    @router.get("/digests/{name}/preview")
    async def preview(name: str) -> dict[str, Any]:
        digest = coordinator.digests.get(name)
        if digest is None:
            known = ", ".join(coordinator.digests) or "none"
            raise HTTPException(404, detail=f"no digest {name!r}; the digests are: {known}")
        now = datetime.now(UTC)
        async with runtime.pool.acquire() as conn:
            return await digests.gather(conn, digest, end=now, ended=coordinator.ended_states(), now=now)

    return router
