"""The responder's HTTP API: the blocklists as External Dynamic Lists, and the response steps.

Firewalls, proxies and DNS resolvers poll the lists on the responder's port. Each answer carries an
ETag and a Last-Modified, so a poller's conditional GET costs a 304 while nothing changed.

Operators list an incident's steps, approve or deny them, and run a playbook step on demand here
(`vigil actions list`, `vigil approve`, `vigil deny`, `vigil actions run`): each is applied at once,
so that a refusal (wrong state, wrong role, the same person twice, an item the step cannot act on)
comes back to the person; the command itself goes to the commands topic as the audit record, where
other tools may send theirs too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.responder import blocklist, repository
from services.responder.handlers import SERVICE, Responder, StepAnswerRefused
from services.responder.leases import IN_FORCE
from services.responder.playbook import duration_seconds
from shared import idempotency
from shared.auth import ANONYMOUS, actor, require
from shared.consumer import HandlerContext, write_context
from shared.events import ApproveStep, DenyStep, RunStep, StepAnswer, StepRun
from shared.identity import Principal
from shared.service import Runtime

EDL_MEDIA_TYPE = "text/plain; charset=utf-8"


def _not_modified(request: Request, tag: str, changed: datetime | None) -> bool:
    """A conditional GET whose copy is current: its ETag matches, or (without one) it is newer than the list."""
    if (match := request.headers.get("if-none-match")) is not None:
        return tag in {t.strip() for t in match.split(",")} or match.strip() == "*"
    if (since := request.headers.get("if-modified-since")) is not None and changed is not None:
        try:
            since_at = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False  # an unreadable date is ignored, as RFC 9110 says
        return since_at.tzinfo is not None and changed.replace(microsecond=0) <= since_at
    return False


def _answer(request: Request, body: str, changed: datetime | None, now: datetime) -> Response:
    tag = blocklist.etag(body)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    # Last-Modified has whole seconds: it is given only once the second of the last change is over,
    # else a poller could keep that second and miss a change made later within it (RFC 9110 8.8.2.2).
    if changed is not None and now - changed >= timedelta(seconds=1):
        headers["Last-Modified"] = format_datetime(changed.astimezone(UTC), usegmt=True)
    else:
        changed = None
    if _not_modified(request, tag, changed):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=EDL_MEDIA_TYPE, headers=headers)


class StepLogEntry(BaseModel):
    at: datetime
    from_state: str | None
    to_state: str
    actor: str
    reason: str


class StepOut(BaseModel):
    id: str
    incident_id: str
    plan_id: str
    playbook: str
    step: str
    position: int
    item: str | None
    name: str
    phase: str
    response: str
    connector: str
    action: str
    params: dict[str, Any]
    risk: str
    state: str
    reason: str
    dry_run: bool
    policy_rule: str
    approvals_required: int
    approver_roles: list[str]
    approval_deadline: datetime | None
    on_timeout: str | None
    approvals: list[dict[str, Any]]
    sent: dict[str, Any] | None
    result: dict[str, Any] | None
    lease_s: int | None
    validation: str | None = Field(None, description="pending, validated, failed or unchecked: what the check found.")
    validation_reason: str = ""
    owner: str | None = None
    due_at: datetime | None = None
    recovery: str | None = None
    required: bool = True
    created_at: datetime
    updated_at: datetime
    log: list[StepLogEntry] = []


class LeaseChange(BaseModel):
    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field("", max_length=2000)
    extend: str | None = Field(None, description="How much longer the action holds: 30m, 4h, 2d.")
    revoke: bool = Field(False, description="End the lease now: the undo runs at once.")
    permanent: bool = Field(False, description="Keep the action in force with no end: no undo until revoked.")


class LeaseChanged(BaseModel):
    step_id: str
    state: str
    undo_at: datetime | None


class LeaseLogEntry(BaseModel):
    at: datetime
    actor: str
    change: str
    reason: str
    due_at: datetime | None


class LeaseOut(BaseModel):
    step_id: str
    incident_id: str
    name: str
    connector: str
    target_kind: str
    target: str
    action: str
    state: str
    offence: int
    duration_s: int
    started_at: datetime
    due_at: datetime | None
    reverted_at: datetime | None
    revert_reason: str
    undo_validation: str | None
    changed_by: str
    change_reason: str
    log: list[LeaseLogEntry] = []


class StepDone(BaseModel):
    actor: str = Field(min_length=1, max_length=200)
    note: str = Field(min_length=1, max_length=2000, description="What was done (or why it failed): the evidence.")
    failed: bool = Field(False, description="It could not be done.")


class RollbackRequest(BaseModel):
    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field("", max_length=2000)


class RollbackOut(BaseModel):
    id: int
    incident_id: str
    requested_by: str
    reason: str
    steps: list[str] = Field(description="The actions undone, in this order (the reverse of execution).")
    position: int
    failed: list[str]
    state: str
    requested_at: datetime
    ended_at: datetime | None


class RunnableStep(BaseModel):
    """A playbook step a person may ask for on an incident (`vigil actions run`)."""

    ref: str = Field(description="`<playbook>.<step>`, as `vigil actions run` takes it.")
    playbook: str
    name: str
    phase: str
    connector: str
    action: str
    item: str | None = Field(description="What it acts on, named with --item (none: it acts on the incident).")
    lease: str | None = Field(description="How long it holds before its undo, unless --lease says otherwise.")
    risk: str
    approval: str


def _step_out(row: Any, log: list[StepLogEntry] | None = None) -> StepOut:
    return StepOut.model_validate({**{k: row[k] for k in StepOut.model_fields if k != "log"}, "log": log or []})


async def _apply_now(
    runtime: Runtime,
    event: ApproveStep | DenyStep | RunStep,
    apply_command: Callable[[HandlerContext], Awaitable[Any]],
    *,
    audited: tuple[str, str, dict[str, Any]],
    answered: Callable[[Any], tuple[int, Any]],
    principal: str,
    operation: str,
    key: str | None,
) -> JSONResponse:
    """Apply an operator's command now, in one transaction, so that a refusal goes back to the person (409,
    audited as ``audited``: action, target and detail); else its event goes on the commands topic as the
    record, marked processed here, and ``answered`` says the answer. The same request again (its
    Idempotency-Key) gets the first answer back."""
    async with runtime.pool.acquire() as conn, conn.transaction():

        async def apply() -> idempotency.Answer:
            ctx = HandlerContext(conn=conn, service=SERVICE, names=runtime.names)
            ctx.emit(event)  # the record on the commands topic, already processed here
            try:
                async with conn.transaction():
                    result = await apply_command(ctx)
            except StepAnswerRefused as exc:
                refused = HandlerContext(conn=conn, service=SERVICE, names=runtime.names)
                action, target, detail = audited
                refused.audit(
                    action,
                    target,
                    principal=event.data.actor,
                    outcome="refused",
                    detail={**detail, "reason": str(exc)[:500]},
                )
                await write_context(conn, refused)
                return idempotency.Answer(409, {"detail": str(exc)})
            await conn.execute("INSERT INTO processed_events (service, event_id) VALUES ($1, $2)", SERVICE, event.id)
            await write_context(conn, ctx)
            status, body = answered(result)
            return idempotency.Answer(status, body)

        answer = await idempotency.once(conn, principal=principal, operation=operation, key=key, apply=apply)
    return JSONResponse(answer.body, status_code=answer.status)


async def _once(
    runtime: Runtime,
    by: Principal,
    operation: str,
    key: str | None,
    apply: Callable[[HandlerContext], Awaitable[idempotency.Answer]],
    *,
    refusals: tuple[type[Exception], ...] = (StepAnswerRefused,),
) -> JSONResponse:
    """Apply an operator's change in one transaction, once per Idempotency-Key: a retry (the CLI's after a
    conflict, a client's after a timeout) gets the first answer back, a refusal (409) included."""
    async with runtime.pool.acquire() as conn, conn.transaction():

        async def applied() -> idempotency.Answer:
            ctx = HandlerContext(conn=conn, service=SERVICE, names=runtime.names)
            try:
                async with conn.transaction():
                    answer = await apply(ctx)
            except refusals as exc:
                return idempotency.Answer(409, {"detail": str(exc)})
            await write_context(conn, ctx)
            return answer

        answer = await idempotency.once(conn, principal=by.name, operation=operation, key=key, apply=applied)
    return JSONResponse(answer.body, status_code=answer.status)


def steps_router(runtime: Runtime, responder: Responder) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["response steps"])

    @router.get("/incidents/{incident_id}/actions", response_model=list[StepOut])
    async def actions(incident_id: str, _by: Principal = require(runtime, "incidents.read")) -> list[StepOut]:
        """Every response step of an incident, in plan order, with its state and the log of its changes."""
        async with runtime.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            rows = await repository.steps_of(conn, incident_id)
            entries = await repository.log_of(conn, incident_id)
        logs: dict[str, list[StepLogEntry]] = {}
        for e in entries:
            logs.setdefault(e["step_id"], []).append(StepLogEntry.model_validate(dict(e)))
        return [_step_out(r, logs.get(r["id"])) for r in rows]

    def answer(kind: Literal["approve", "deny"]) -> None:
        command_class = ApproveStep if kind == "approve" else DenyStep

        @router.post(f"/steps/{{step_id:path}}/{kind}", response_model=list[StepOut], name=f"{kind}_step")
        async def command(
            step_id: str,
            body: StepAnswer,
            idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
            by: Principal = require(runtime, "steps.approve"),
        ) -> JSONResponse:
            """Apply the answer now to the step (or every waiting item of `<incident>:<step>`); 409 says why not."""
            if body.step_id != step_id:
                raise HTTPException(422, detail="the step id in the path and the body differ")
            # Who answers, and in which role, is the token's; only an unauthenticated local setup takes the body's.
            body = body.model_copy(
                update={"actor": actor(by, body.actor), "role": body.role if by is ANONYMOUS else by.role}
            )
            event = command_class(source=f"/vigil/{SERVICE}/api", subject=step_id.partition(":")[0], data=body)
            return await _apply_now(
                runtime,
                event,
                lambda ctx: responder.apply_answer(ctx, event),
                audited=(f"step.{kind}", step_id, {}),
                answered=lambda changed: (200, [_step_out(r).model_dump(mode="json") for r in changed]),
                principal=by.name,
                operation=f"{event.type}:{step_id}",
                key=idempotency_key,
            )

    answer("approve")
    answer("deny")

    @router.get("/playbooks/steps", response_model=list[RunnableStep])
    async def runnable(_by: Principal = require(runtime, "incidents.read")) -> list[RunnableStep]:
        """Every playbook step, as a step that may be run on demand on an incident."""
        return [
            RunnableStep(
                ref=f"{p.id}.{step.id}",
                playbook=p.title,
                name=step.name,
                phase=step.phase,
                connector=step.connector,
                action=step.action,
                item=step.for_each,
                lease=step.lease,
                risk=step.risk,
                approval=step.approval,
            )
            for p in responder.playbooks
            for step in p.steps
        ]

    @router.post("/incidents/{incident_id}/actions", response_model=StepOut, status_code=201)
    async def run(
        incident_id: str,
        body: StepRun,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        by: Principal = require(runtime, "steps.run"),
    ) -> JSONResponse:
        """Run a playbook step on the incident now, beside its plan ("contain now"): the approval policy, the
        guardrails, the lease and the check after it apply as to any step. 409 says why it cannot run."""
        body = body.model_copy(
            update={"actor": actor(by, body.actor), "role": body.role if by is ANONYMOUS else by.role}
        )
        event = RunStep(source=f"/vigil/{SERVICE}/api", subject=incident_id, data=body)
        return await _apply_now(
            runtime,
            event,
            lambda ctx: responder.run_on_demand(ctx, event),
            audited=("step.run", body.step, {"incident": incident_id}),
            answered=lambda row: (201, _step_out(row).model_dump(mode="json")),
            principal=by.name,
            operation=f"{event.type}:{incident_id}:{body.step}:{body.item}:{body.lease}",
            key=idempotency_key,
        )

    @router.post("/steps/{step_id:path}/lease", response_model=LeaseChanged)
    async def lease(
        step_id: str,
        body: LeaseChange,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        by: Principal = require(runtime, "leases.change"),
    ) -> JSONResponse:
        """Extend a reversible action's lease (`extend`: 30m, 1d…), make it `permanent`, or `revoke` it (undo now)."""
        try:
            extend_s = duration_seconds(body.extend) if body.extend else None
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        asked = [
            c
            for c, given in (
                ("extend", extend_s is not None),
                ("revoke", body.revoke),
                ("make_permanent", body.permanent),
            )
            if given
        ]
        if len(asked) != 1:
            raise HTTPException(422, detail="give one of `extend` (a duration), `revoke: true` or `permanent: true`")
        change: Literal["extend", "revoke", "make_permanent"] = asked[0]  # type: ignore[assignment]

        async def apply(ctx: HandlerContext) -> idempotency.Answer:
            changed = await responder.change_lease(
                ctx, step_id, actor=actor(by, body.actor), reason=body.reason, change=change, by_s=extend_s
            )
            answer = LeaseChanged(step_id=step_id, state=changed["state"], undo_at=changed["undo_at"])
            return idempotency.Answer(200, answer.model_dump(mode="json"))

        # The operation names the change asked: the same key for another change is another request.
        asked_for = f"{change}:{body.extend or ''}"
        return await _once(
            runtime,
            by,
            f"lease:{step_id}:{asked_for}",
            idempotency_key,
            apply,
            refusals=(StepAnswerRefused, ValueError),
        )

    @router.post("/steps/{step_id:path}/done", response_model=StepOut)
    async def done(
        step_id: str,
        body: StepDone,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        by: Principal = require(runtime, "tasks.complete"),
    ) -> JSONResponse:
        """Say that a step a person does (a recovery step's owner) is done, or failed, with what was done."""

        async def apply(ctx: HandlerContext) -> idempotency.Answer:
            row = await responder.complete(
                ctx, step_id, actor=actor(by, body.actor), note=body.note, failed=body.failed
            )
            return idempotency.Answer(200, _step_out(row).model_dump(mode="json"))

        return await _once(runtime, by, f"done:{step_id}:{body.failed}", idempotency_key, apply)

    @router.get("/leases", response_model=list[LeaseOut])
    async def leases_list(
        incident: str | None = None,
        all_states: Annotated[bool, Query(alias="all", description="Ended leases too.")] = False,
        _by: Principal = require(runtime, "incidents.read"),
    ) -> list[LeaseOut]:
        """Leases of reversible actions (of one incident, or all), soonest end first, with who changed them and why."""
        states = None if all_states else sorted(IN_FORCE | {"reverting", "revert_failed"})
        async with runtime.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            rows = await repository.list_leases(conn, incident_id=incident, states=states)
            entries = await repository.lease_log(conn, [r["step_id"] for r in rows])
        logs: dict[str, list[LeaseLogEntry]] = {}
        for e in entries:
            logs.setdefault(e["step_id"], []).append(LeaseLogEntry.model_validate(dict(e)))
        return [
            LeaseOut.model_validate(
                {**{k: r[k] for k in LeaseOut.model_fields if k != "log"}, "log": logs.get(r["step_id"], [])}
            )
            for r in rows
        ]

    @router.post("/incidents/{incident_id}/rollback", response_model=RollbackOut)
    async def rollback(
        incident_id: str,
        body: RollbackRequest,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        by: Principal = require(runtime, "leases.change"),
    ) -> JSONResponse:
        """Undo every action of the incident still in force, one at a time, in reverse order of execution."""

        async def apply(ctx: HandlerContext) -> idempotency.Answer:
            started = await responder.rollback(ctx, incident_id, actor=actor(by, body.actor), reason=body.reason)
            return idempotency.Answer(200, RollbackOut.model_validate(started).model_dump(mode="json"))

        return await _once(runtime, by, f"rollback:{incident_id}", idempotency_key, apply)

    @router.get("/incidents/{incident_id}/rollbacks", response_model=list[RollbackOut])
    async def rollbacks(incident_id: str, _by: Principal = require(runtime, "incidents.read")) -> list[RollbackOut]:
        """The incident's rollbacks and how far each got."""
        async with runtime.pool.acquire() as conn:
            rows = await repository.rollbacks_of(conn, incident_id)
        return [RollbackOut.model_validate(dict(r)) for r in rows]

    return router


def blocklist_router(runtime: Runtime) -> APIRouter:
    """The lists firewalls poll, with a viewer token (an integration's: `vigil tokens create --kind integration`)."""
    router = APIRouter(
        prefix="/api/v1/blocklist", tags=["blocklist"], dependencies=[require(runtime, "incidents.read")]
    )

    def edl(kind: blocklist.Kind) -> None:
        @router.get(f"/{kind}.txt", name=f"blocklist_{kind}", response_class=Response)
        async def serve(request: Request) -> Response:
            """The active entries, one a line, after `#` comment lines."""
            async with runtime.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
                values = await blocklist.list_active(conn, kind=kind)
                changed = await blocklist.last_changed(conn, kind=kind)
                now = await conn.fetchval("SELECT now()")
            return _answer(request, blocklist.render_edl(kind, values), changed, now)

    for kind in blocklist.KINDS:
        edl(kind)

    @router.get("/nftables.nft", name="blocklist_nftables", response_class=Response)
    async def nftables(request: Request) -> Response:
        """An nftables script with the active IPs in the sets inet vigil blocklist_v4 and blocklist_v6."""
        async with runtime.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            values = await blocklist.list_active(conn, kind="ip")
            changed = await blocklist.last_changed(conn, kind="ip")
            now = await conn.fetchval("SELECT now()")
        return _answer(request, blocklist.render_nftables(values), changed, now)

    return router


def routers(runtime: Runtime, responder: Responder) -> list[APIRouter]:
    return [blocklist_router(runtime), steps_router(runtime, responder)]
