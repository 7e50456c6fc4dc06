"""The coordinator's task routes: an incident's tasks with their progress, adding one, and marking one done.

`vigil tasks list`, `vigil tasks add` and `vigil tasks done` call these. A retried request with the same
Idempotency-Key is answered without being applied twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from services.coordinator import tasks, ticketing
from services.coordinator.tasks import Progress
from shared import idempotency
from shared.auth import actor, require, signature_valid
from shared.consumer import HandlerContext, write_context
from shared.events import IncidentType, OpenedTask, Severity, TasksCreated, TasksOpened
from shared.identity import Principal
from shared.service import Runtime

log = logging.getLogger(__name__)

# Called in the transaction that adds a task or marks one done; events it emits on the context go to the outbox.
TaskHook = Callable[[HandlerContext, tasks.Task], Awaitable[None]]
# Task ids are Postgres bigints: a larger number names no task, and is refused as such.
TaskId = Annotated[int, Path(ge=1, le=2**63 - 1)]
# The coordinator's own events carry this source, whether a handler or a route emits them.
SOURCE = "/vigil/coordinator"


class TaskDone(BaseModel):
    actor: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=4000)


class TaskAdd(BaseModel):
    """A task an operator adds to an incident: the post-mortem's follow-up actions above all."""

    actor: str = Field("", max_length=200, description="Who adds it, when nobody authenticated; else the token's.")
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    description: str = Field("", max_length=4000)
    owner: tasks.AdhocOwner | None = Field(
        None,
        description="A person (alice), a role (commander, scribe, communications, responder: whoever holds it), "
        "person:<name> or group:<name>. Omitted: the incident's commander.",
    )
    due: tasks.Due | None = Field(
        None, description="A duration from now (14d, 4h, 90m) or an ISO 8601 time with its offset. Omitted: none."
    )
    phase: tasks.Phase = Field("post_mortem", description="The runbook phase it belongs to.")
    required: bool = Field(False, description="The lifecycle waits for it (a `tasks_done` guard of its phase).")


class TaskOut(tasks.Task):
    overdue: bool


class IncidentTasks(BaseModel):
    incident_id: str
    tasks: list[TaskOut]
    progress: Progress


def _out(task: tasks.Task, now: datetime) -> TaskOut:
    return TaskOut(**task.model_dump(), overdue=task.is_overdue(now))


def tasks_router(
    runtime: Runtime,
    templates: Sequence[tasks.TaskTemplate],
    *,
    on_done: TaskHook | None = None,
    on_added: TaskHook | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["tasks"])

    @router.get("/incidents/{incident_id}/tasks", response_model=IncidentTasks)
    async def incident_tasks(incident_id: str, _by: Principal = require(runtime, "incidents.read")) -> IncidentTasks:
        """The incident's tasks in phase order, whether each is overdue, and the progress of each phase."""
        async with runtime.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            found = await tasks.list_tasks(conn, incident_id)
            known = found or await conn.fetchval(
                "SELECT true FROM coordinator_incidents WHERE incident_id = $1", incident_id
            )
            now = await conn.fetchval("SELECT now()")
        if not known:
            raise HTTPException(404, detail=f"no incident {incident_id}")
        return IncidentTasks(
            incident_id=incident_id,
            tasks=[_out(t, now) for t in found],
            progress=tasks.progress(found, now=now),
        )

    @router.post("/incidents/{incident_id}/tasks", response_model=TaskOut, status_code=201)
    async def add(
        incident_id: str,
        body: TaskAdd,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        # What changes the incident's work and what its lifecycle waits for: the commander's, as its edits are.
        by: Principal = require(runtime, "incidents.edit"),
    ) -> JSONResponse:
        """Add a task to the incident, listed after its phase's runbook tasks; 404 for no such incident, 409
        for one closed or merged away (a resolved one takes tasks: its post-mortem comes after)."""
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                now = datetime.now(UTC)
                try:
                    due_at = None if body.due is None else tasks.due_time(body.due, now=now)
                except ValueError as exc:  # passed already; answered as a refused body is, and alike on retry
                    error = {"type": "value_error", "loc": ["body", "due"], "msg": str(exc), "input": body.due}
                    return idempotency.Answer(422, {"detail": [error]})
                try:
                    task = await tasks.add_task(
                        conn,
                        templates,
                        incident_id=incident_id,
                        phase=body.phase,
                        title=body.title,
                        description=body.description,
                        owner=body.owner,
                        required=body.required,
                        due_at=due_at,
                        now=now,
                    )
                except tasks.IncidentNotFound as exc:
                    raise HTTPException(404, detail=str(exc)) from exc
                except tasks.IncidentNotOpen as exc:
                    return idempotency.Answer(409, {"detail": str(exc)})
                ctx = HandlerContext(conn=conn, service=tasks.SERVICE, names=runtime.names)
                detail = {"incident": incident_id, "phase": task.phase, "title": task.title, "required": task.required}
                ctx.audit("task.add", str(task.id), principal=actor(by, body.actor), detail=detail)
                # The event template tasks are announced with: the reporter's follow-ups and the timeline.
                opened = OpenedTask(
                    task_id=task.id,
                    phase=task.phase,
                    title=task.title,
                    owner=task.owner,
                    required=task.required,
                    due_at=task.due_at,
                )
                ctx.emit(TasksCreated(source=SOURCE, subject=incident_id, data=TasksOpened(tasks=[opened])))
                if on_added is not None:
                    await on_added(ctx, task)
                await write_context(conn, ctx)
                return idempotency.Answer(201, _out(task, now).model_dump(mode="json"))

            answer = await idempotency.once(
                conn, principal=by.name, operation=f"task.add:{incident_id}", key=idempotency_key, apply=apply
            )
        return JSONResponse(answer.body, status_code=answer.status)

    @router.post("/tasks/{task_id}/done", response_model=TaskOut)
    async def done(
        task_id: TaskId,
        body: TaskDone,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        by: Principal = require(runtime, "tasks.complete"),
    ) -> JSONResponse:
        """Mark the task done by `actor`, with an optional note; 404 for no such task, 409 if it is closed."""
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                try:
                    task = await tasks.complete(conn, task_id, actor=actor(by, body.actor), note=body.note)
                except tasks.TaskNotFound as exc:
                    raise HTTPException(404, detail=str(exc)) from exc
                except tasks.TaskNotOpen as exc:
                    return idempotency.Answer(409, {"detail": str(exc)})
                if on_done is not None:
                    ctx = HandlerContext(conn=conn, service=tasks.SERVICE, names=runtime.names)
                    await on_done(ctx, task)
                    await write_context(conn, ctx)
                return idempotency.Answer(200, _out(task, datetime.now(UTC)).model_dump(mode="json"))

            answer = await idempotency.once(
                conn, principal=by.name, operation=f"task.done:{task_id}", key=idempotency_key, apply=apply
            )
        return JSONResponse(answer.body, status_code=answer.status)

    @router.get("/tasks/templates", response_model=list[tasks.TaskTemplate])
    async def templates_for(
        incident_type: Annotated[IncidentType | None, Query(alias="type")] = None,
        severity: Severity | None = None,
        _by: Principal = require(runtime, "incidents.read"),
    ) -> list[tasks.TaskTemplate]:
        """The task templates in phase order; with type and severity, those such an incident gets."""
        chosen = list(templates)
        if incident_type is not None:
            chosen = [t for t in chosen if t.types is None or incident_type in t.types]
        if severity is not None:
            chosen = [t for t in chosen if severity.urgency >= t.min_severity.urgency]
        return chosen

    return router


# The webhooks authenticate themselves (the tracker's signature with the webhook's secret), not by a token: declared
# so for the documentation and the route matrix test, which checks that no token opens it.
WEBHOOK_SIGNED: dict[str, Any] = {"x-vigil-permission": "webhook.signature"}
LOGIN_CHARS = 100
TRACKERS = {"github": "GitHub", "jira": "Jira"}


def tickets_router(runtime: Runtime, config: ticketing.TicketingConfig, *, on_done: TaskHook | None) -> APIRouter:
    """`POST /api/v1/tickets/github` and `/api/v1/tickets/jira`: the tracker's webhook. An issue closed there as
    done marks its task done in Vigil; closed otherwise (not planned, won't do, a duplicate), the task stays
    open, and that is logged.

    Authenticated by its signature (GitHub's ``X-Hub-Signature-256``, Jira's ``X-Hub-Signature``: the
    webhook's secret), not by a token; the task is done by ``<tracker>:<who closed it>``, on the audit
    trail and the timeline as any task done. An issue reopened there changes nothing (a task done stays done).
    """
    router = APIRouter(prefix="/api/v1", tags=["tickets"])

    async def signed_body(request: Request, kind: str, signature: str | None) -> Any:
        """The delivery's JSON, once its signature is checked; 404 without this tracker's webhook, 401 unsigned."""
        if config.tracker is None or config.tracker.kind != kind or config.webhook_secret is None:
            raise HTTPException(404, detail=f"no {kind} webhook here (ticketing.yaml: tracker.webhook_secret_env)")
        body = await request.body()  # bounded by the app's body limit
        if not signature_valid(signature, body, config.webhook_secret.get_secret_value().encode()):
            raise HTTPException(401, detail="the signature does not sign this body with the webhook's secret")
        if not body:
            raise HTTPException(400, detail="the delivery has no body: the webhook must send it (not exclude it)")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise HTTPException(400, detail=f"not JSON: {exc}") from exc

    @router.post("/tickets/github", openapi_extra=WEBHOOK_SIGNED)
    async def github_webhook(
        request: Request,
        x_github_event: Annotated[str, Header(max_length=100)] = "",
        x_hub_signature_256: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JSONResponse:
        """GitHub's `issues` events (and its `ping`): 200 with the task done, 202 for what changes no task."""
        payload = await signed_body(request, "github", x_hub_signature_256)
        if x_github_event == "ping":
            return JSONResponse({"pong": True})
        assert isinstance(config.tracker, ticketing.GitHubTracker)  # signed_body checked its kind
        closed = ticketing.closed_issue(x_github_event, payload, config.tracker)
        if closed is None:
            return JSONResponse({"ignored": "not an issue of the tracker's repository closed"}, status_code=202)
        return await close_tasks("github", *closed)

    @router.post("/tickets/jira", openapi_extra=WEBHOOK_SIGNED)
    async def jira_webhook(
        request: Request, x_hub_signature: Annotated[str | None, Header(max_length=200)] = None
    ) -> JSONResponse:
        """Jira's `jira:issue_updated` events: 200 with the task done, 202 for what changes no task."""
        payload = await signed_body(request, "jira", x_hub_signature)
        assert isinstance(config.tracker, ticketing.JiraTracker)
        closed = ticketing.closed_jira_issue(payload, config.tracker)
        if closed is None:
            return JSONResponse({"ignored": "not an issue of the tracker's project done"}, status_code=202)
        return await close_tasks("jira", *closed)

    async def close_tasks(tracker: str, ref: str, who: str, how: str) -> JSONResponse:
        if how != "completed":
            log.warning("%s closed as %s in %s by %s: its task stays open in Vigil", ref, how, tracker, who)
            return JSONResponse({"ignored": f"closed as {how}: the task stays open"}, status_code=202)
        by = f"{tracker}:{who[:LOGIN_CHARS]}"
        async with runtime.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, state FROM coordinator_tasks WHERE lower(ticket ->> 'ref') = lower($1)
                   ORDER BY id FOR UPDATE""",
                ref,
            )
            if not rows:
                log.warning("%s closed in %s by %s, but it is no task's ticket here", ref, tracker, who)
                return JSONResponse({"ignored": f"{ref} is no task's ticket"}, status_code=202)
            done = []
            for row in rows:
                if row["state"] != "open":
                    continue  # done or cancelled in Vigil first: its closing is Vigil's own, coming back
                await conn.execute(
                    """UPDATE coordinator_tasks SET ticket = ticket || jsonb_build_object('closed_in', $2::text)
                       WHERE id = $1""",
                    row["id"],
                    tracker,
                )
                task = await tasks.complete(conn, row["id"], actor=by, note=f"closed in {TRACKERS[tracker]} by {who}")
                if on_done is not None:
                    ctx = HandlerContext(conn=conn, service=tasks.SERVICE, names=runtime.names)
                    await on_done(ctx, task)
                    await write_context(conn, ctx)
                done.append(task.id)
        if not done:
            return JSONResponse({"already": f"{ref}: its task is done or cancelled already"})
        return JSONResponse({"tasks": done, "done_by": by})

    return router
