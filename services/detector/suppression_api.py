"""The detector's API for silences, maintenance windows and the alerts they suppressed.

- ``GET/POST /api/v1/silences``, ``GET /api/v1/silences/{id}``, ``POST /api/v1/silences/{id}/expire``
- ``GET/POST /api/v1/maintenance-windows``, ``POST /api/v1/maintenance-windows/{id}/end``
- ``GET /api/v1/suppressed-alerts?kind=&by=&active=``: what was held back, by what and why.

Reading takes ``incidents.read``; changing takes ``suppression.manage``. The creator or expirer is the
authenticated principal, recorded with the change and in the audit log. Each change is announced to
every detector replica (``repository.SUPPRESSION_CHANNEL``) in its own transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.detector import repository, suppression
from services.detector.suppression import SuppressionError
from services.detector.suppressor import schedule_end
from shared import audit, idempotency
from shared.auth import require
from shared.identity import Principal
from shared.service import Runtime

SERVICE = "detector"
# The longest a silence may last: a longer one is a rule, not a silence.
MAX_SILENCE = timedelta(days=365)
# What of the matchers an audit entry keeps: its detail is small (audit.MAX_DETAIL_BYTES), the silence or
# window itself keeps them whole, and the digest ties the entry to them.
AUDITED_MATCHERS_BYTES = 1200
AUDITED_MATCHER_CHARS = 120

IdempotencyKey = Annotated[str | None, Header(max_length=200)]
KindFilter = Annotated[Literal["silence", "maintenance", "inhibition"] | None, Query()]
ByFilter = Annotated[str | None, Query(max_length=500)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _audited(matchers: Sequence[str]) -> dict[str, Any]:
    """The matchers as an audit entry says them: those that fit, each cut short, how many, and their digest."""
    kept: list[str] = []
    used = 0
    for text in matchers:
        cut = text if len(text) <= AUDITED_MATCHER_CHARS else text[: AUDITED_MATCHER_CHARS - 1] + "…"
        used += len(cut.encode())
        if used > AUDITED_MATCHERS_BYTES:
            break
        kept.append(cut)
    digest = hashlib.sha256("\n".join(matchers).encode()).hexdigest()
    return {"matchers": kept, "matchers_count": len(matchers), "matchers_sha256": digest}


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    matchers: list[Annotated[str, Field(min_length=1, max_length=1100)]] = Field(
        min_length=1, max_length=suppression.MAX_MATCHERS, examples=[["host=web-01", 'rule=~"Disk.*"']]
    )
    starts_at: AwareDatetime | None = Field(None, description="Now when not given.")
    ends_at: AwareDatetime | None = None
    duration_s: int | None = Field(
        None, gt=0, le=int(MAX_SILENCE.total_seconds()), description="Instead of ends_at: how long from the start."
    )
    comment: str = Field(min_length=1, max_length=2000, description="Why: a silence nobody can explain is refused.")

    @model_validator(mode="after")
    def _one_end(self) -> SilenceIn:
        if (self.ends_at is None) == (self.duration_s is None):
            raise ValueError("give ends_at or duration_s, one of them")
        return self


class SilenceOut(BaseModel):
    id: str
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    expired_by: str | None
    state: Literal["pending", "active", "expired"]


class WindowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    matchers: list[Annotated[str, Field(min_length=1, max_length=1100)]] = Field(
        min_length=1,
        max_length=suppression.MAX_MATCHERS,
        description='What is in maintenance: host=db-01, host=~"db-.*", service=checkout (a label).',
    )
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = Field(None, description="One-off: its end. Recurring: no occurrence after it.")
    rrule: str | None = Field(
        None, max_length=500, description="iCalendar RRULE, e.g. FREQ=WEEKLY;BYDAY=SU (from starts_at, in time_zone)."
    )
    duration_s: int | None = Field(
        None,
        gt=0,
        le=int(suppression.MAX_OCCURRENCE.total_seconds()),
        description="How long each occurrence of a recurring window lasts.",
    )
    time_zone: str = Field("UTC", max_length=100)
    comment: str = Field("", max_length=2000)


class WindowOut(BaseModel):
    id: str
    name: str
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime | None
    rrule: str | None
    duration_s: int | None
    time_zone: str
    created_by: str
    comment: str
    created_at: datetime
    ended_by: str | None
    active_now: tuple[datetime, datetime] | None = Field(description="The occurrence in progress, if any.")
    next_start: datetime | None
    problem: str | None = Field(
        None, description="Why the detector leaves this window out: stored by an older version, refused by this one."
    )


class SuppressedOut(BaseModel):
    key: str
    source: str
    title: str
    severity: str
    time: datetime
    host: str | None
    kind: str
    suppressed_by: str
    rule: str | None
    reason: str
    repeats: int
    received_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    released_at: datetime | None


def _silence_out(row: Any, now: datetime) -> SilenceOut:
    state: Literal["pending", "active", "expired"] = (
        "expired" if row["ends_at"] <= now else "active" if row["starts_at"] <= now else "pending"
    )
    return SilenceOut(**{k: row[k] for k in SilenceOut.model_fields if k != "state"}, state=state)


def _window_out(row: Any, now: datetime) -> WindowOut:
    stored = {k: row[k] for k in WindowOut.model_fields if k not in ("active_now", "next_start", "problem")}
    try:
        window = suppression.window_of(row)
    except suppression.SuppressionError as exc:
        # As the detector does, it is left out, saying why: the others are listed, and it can still be ended.
        return WindowOut(**stored, active_now=None, next_start=None, problem=str(exc))
    ended = row["ended_by"] is not None
    return WindowOut(
        **stored,
        active_now=None if ended else window.occurrence(now),
        next_start=None if ended else window.next_start(now),
    )


def router(runtime: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/v1", tags=["suppression"])

    @api.get("/silences", response_model=list[SilenceOut])
    async def list_silences(
        expired: Annotated[bool, Query(description="Also those that ended.")] = False,
        limit: Limit = 500,
        _by: Principal = require(runtime, "incidents.read"),
    ) -> list[SilenceOut]:
        """Silences that have not ended (and the ended ones with ``expired=true``), the latest to end first."""
        async with runtime.pool.acquire() as conn:
            rows = await repository.list_silences(conn, include_ended=expired, limit=limit)
        now = datetime.now(UTC)
        return [_silence_out(row, now) for row in rows]

    @api.get("/silences/{silence_id}", response_model=SilenceOut)
    async def get_silence(silence_id: str, _by: Principal = require(runtime, "incidents.read")) -> SilenceOut:
        async with runtime.pool.acquire() as conn:
            row = await repository.get_silence(conn, silence_id=silence_id)
        if row is None:
            raise HTTPException(404, detail=f"no silence {silence_id}")
        return _silence_out(row, datetime.now(UTC))

    @api.post("/silences", status_code=201, response_model=SilenceOut)
    async def add_silence(
        body: SilenceIn,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "suppression.manage"),
    ) -> JSONResponse:
        """Silence the alerts all the matchers match, from ``starts_at`` (now) to ``ends_at`` (or ``duration_s``)."""
        now = datetime.now(UTC)
        starts_at = body.starts_at or now
        ends_at = body.ends_at or starts_at + timedelta(seconds=body.duration_s or 0)
        try:
            matchers = suppression.parse_matchers(body.matchers)
        except SuppressionError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        if ends_at <= starts_at or ends_at <= now:
            raise HTTPException(422, detail="the silence must end after it starts, and after now")
        if ends_at - starts_at > MAX_SILENCE:
            raise HTTPException(422, detail=f"a silence lasts at most {MAX_SILENCE.days} days")
        texts = [str(m) for m in matchers]
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                row = await repository.create_silence(
                    conn,
                    silence_id=str(uuid.uuid4()),
                    matchers=texts,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    created_by=by.name,
                    comment=body.comment,
                )
                await repository.notify_suppression_changed(conn, what=f"silence {row['id']}")
                await schedule_end(conn, subject=f"silence:{row['id']}", at=ends_at)
                await audit.record(
                    conn,
                    service=SERVICE,
                    principal=by.name,
                    action="silence.add",
                    target=row["id"],
                    detail={**_audited(texts), "ends_at": ends_at.isoformat(), "comment": body.comment[:500]},
                )
                return idempotency.Answer(201, _silence_out(row, now).model_dump(mode="json"))

            answer = await idempotency.once(
                conn, principal=by.name, operation="silence.add", key=idempotency_key, apply=apply
            )
        return JSONResponse(answer.body, status_code=answer.status)

    @api.post("/silences/{silence_id}/expire", response_model=SilenceOut)
    async def expire_silence(
        silence_id: str,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "suppression.manage"),
    ) -> JSONResponse:
        """End a silence now; alerts it covered that still fire open or join incidents at their next sighting."""
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                row = await repository.expire_silence(conn, silence_id=silence_id, expired_by=by.name)
                if row is None:
                    if await repository.get_silence(conn, silence_id=silence_id) is None:
                        return idempotency.Answer(404, {"detail": f"no silence {silence_id}"})
                    return idempotency.Answer(409, {"detail": f"silence {silence_id} has already ended"})
                await repository.notify_suppression_changed(conn, what=f"silence {silence_id}")
                await schedule_end(conn, subject=f"silence:{silence_id}", at=row["ends_at"])
                await audit.record(conn, service=SERVICE, principal=by.name, action="silence.expire", target=silence_id)
                return idempotency.Answer(200, _silence_out(row, datetime.now(UTC)).model_dump(mode="json"))

            # A retry of the request (its answer lost) gets the first answer, not "already ended".
            answer = await idempotency.once(
                conn, principal=by.name, operation=f"silence.expire:{silence_id}", key=idempotency_key, apply=apply
            )
        return JSONResponse(answer.body, status_code=answer.status)

    @api.get("/maintenance-windows", response_model=list[WindowOut])
    async def list_windows(
        ended: Annotated[bool, Query(description="Also those that ended.")] = False,
        limit: Limit = 500,
        _by: Principal = require(runtime, "incidents.read"),
    ) -> list[WindowOut]:
        """Maintenance windows that have not ended, with the occurrence in progress and the next one."""
        async with runtime.pool.acquire() as conn:
            rows = await repository.list_windows(conn, include_ended=ended, limit=limit)
        now = datetime.now(UTC)
        return [_window_out(row, now) for row in rows]

    @api.post("/maintenance-windows", status_code=201, response_model=WindowOut)
    async def add_window(
        body: WindowIn,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "suppression.manage"),
    ) -> JSONResponse:
        """Add a one-off (``ends_at``) or recurring (``rrule`` + ``duration_s``) maintenance window."""
        if (body.rrule is None) != (body.duration_s is None):
            raise HTTPException(422, detail="a recurring window needs both rrule and duration_s; a one-off, neither")
        try:
            window = suppression.Window(
                id=str(uuid.uuid4()),
                name=body.name,
                matchers=suppression.parse_matchers(body.matchers),
                starts_at=body.starts_at,
                ends_at=body.ends_at,
                rrule=body.rrule,
                duration=timedelta(seconds=body.duration_s) if body.duration_s else None,
                time_zone=body.time_zone,
                comment=body.comment,
            )
            suppression.check_window(window, datetime.now(UTC))
        except SuppressionError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        texts = [str(m) for m in window.matchers]
        now = datetime.now(UTC)
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                row = await repository.create_window(
                    conn,
                    window_id=window.id,
                    name=window.name,
                    matchers=texts,
                    starts_at=window.starts_at,
                    ends_at=window.ends_at,
                    rrule=window.rrule,
                    duration_s=body.duration_s,
                    time_zone=window.time_zone,
                    created_by=by.name,
                    comment=window.comment,
                )
                await repository.notify_suppression_changed(conn, what=f"window {window.id}")
                if (first_end := window.end_after(now)) is not None:
                    await schedule_end(conn, subject=f"maintenance:{window.id}", at=first_end)
                await audit.record(
                    conn,
                    service=SERVICE,
                    principal=by.name,
                    action="maintenance.add",
                    target=window.id,
                    detail={"name": window.name, **_audited(texts), "rrule": window.rrule},
                )
                return idempotency.Answer(201, _window_out(row, now).model_dump(mode="json"))

            answer = await idempotency.once(
                conn, principal=by.name, operation="maintenance.add", key=idempotency_key, apply=apply
            )
        return JSONResponse(answer.body, status_code=answer.status)

    @api.post("/maintenance-windows/{window_id}/end", response_model=WindowOut)
    async def end_window(
        window_id: str,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "suppression.manage"),
    ) -> JSONResponse:
        """End a maintenance window now, with any occurrence in progress; it never recurs again."""
        async with runtime.pool.acquire() as conn, conn.transaction():

            async def apply() -> idempotency.Answer:
                row = await repository.end_window(conn, window_id=window_id, ended_by=by.name)
                if row is None:
                    return idempotency.Answer(404, {"detail": f"no maintenance window {window_id} that has not ended"})
                await repository.notify_suppression_changed(conn, what=f"window {window_id}")
                await schedule_end(conn, subject=f"maintenance:{window_id}", at=row["ends_at"])
                await audit.record(conn, service=SERVICE, principal=by.name, action="maintenance.end", target=window_id)
                return idempotency.Answer(200, _window_out(row, datetime.now(UTC)).model_dump(mode="json"))

            answer = await idempotency.once(
                conn, principal=by.name, operation=f"maintenance.end:{window_id}", key=idempotency_key, apply=apply
            )
        return JSONResponse(answer.body, status_code=answer.status)

    @api.get("/suppressed-alerts", response_model=list[SuppressedOut])
    async def suppressed_alerts(
        kind: KindFilter = None,
        by: ByFilter = None,
        active: Annotated[bool, Query(description="Only those not released since.")] = False,
        limit: Limit = 100,
        _by: Principal = require(runtime, "incidents.read"),
    ) -> list[SuppressedOut]:
        """Alerts stored but held back from incidents: by what (silence, window or inhibiting alert) and why."""
        async with runtime.pool.acquire() as conn:
            rows = await repository.list_suppressed(
                conn, kind=kind, suppressed_by=by, include_released=not active, limit=limit
            )
        return [SuppressedOut(**{k: row[k] for k in SuppressedOut.model_fields}) for row in rows]

    return api
