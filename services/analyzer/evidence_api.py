"""The analyzer's read API: an incident's evidence timeline, the tool's record behind each alert, the provenance.

- ``GET /api/v1/incidents/{id}/evidence?limit=&after=``: the incident's alerts in time order, each with its
  source, format, host, user and what it names (kind, value, field, internal); ``next`` is the cursor of
  the following page, none on the last.
- ``GET /api/v1/incidents/{id}/evidence/{alert_key}``: one alert with the tool's record as the analyzer
  received it (``raw_cut``: only its first fields; the detector keeps it whole).
- ``GET /api/v1/incidents/{id}/indicators``: every value the alerts name, with the fields, first and last
  seen, count and first alert keys, and what threat intelligence last said of it (verdict, confidence,
  feeds, tags, looked_up_at; an analysis carries only the worst of them).
- The evidence register (``evidence_register``): ``GET|POST /api/v1/incidents/{id}/evidence-register``
  lists or registers what responders collected (its SHA-256, size and where it is kept);
  ``POST /api/v1/evidence-register/{item}/transfer`` hands an item to another custodian and
  ``.../verify`` records a check of its hash. Each goes on the timeline (``vigil.evidence.changed.v1``) in
  the name of who authenticated; each takes ``incidents.note``, and handing over an item someone else
  holds ``incidents.assign``.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field

from services.analyzer import evidence_register, forensic_repository
from shared import audit, idempotency, identity
from shared.auth import ANONYMOUS, actor, require
from shared.db import Conn
from shared.events import EvidenceChange, EvidenceChanged
from shared.identity import Permission, Principal
from shared.outbox import write_events
from shared.service import Runtime

SERVICE = "analyzer"
SOURCE = "/vigil/analyzer/api"
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The item's number in the register.")]
IncidentId = Annotated[str, Path(min_length=1, max_length=200)]
# Who may hand over an item someone else holds: whoever may assign the incident's roles.
HAND_OVER_ANY: Permission = "incidents.assign"
IdempotencyKey = Annotated[str | None, Header(max_length=200)]

PAGE = 1_000


async def _once(
    runtime: Runtime,
    by: Principal,
    operation: str,
    key: str | None,
    apply: Callable[[Conn], Awaitable[idempotency.Answer]],
) -> JSONResponse:
    """Apply a change to the register in one transaction, once per Idempotency-Key: a retry whose answer was
    lost gets the first answer back (a refusal included), never a second custody entry or item."""
    async with runtime.pool.acquire() as conn, conn.transaction():

        async def applied() -> idempotency.Answer:
            try:
                async with conn.transaction():
                    return await apply(conn)
            except HTTPException as exc:
                return idempotency.Answer(exc.status_code, {"detail": exc.detail})

        answer = await idempotency.once(conn, principal=by.name, operation=operation, key=key, apply=applied)
    return JSONResponse(answer.body, status_code=answer.status)


def _cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['time'].isoformat()}|{row['alert_key']}".encode()).decode()


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        at, _, key = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), key
    except ValueError:
        raise HTTPException(400, detail="`after` is not a cursor this API gave") from None


def routers(runtime: Runtime) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1", tags=["evidence"], dependencies=[require(runtime, "incidents.read")])

    @router.get("/incidents/{incident_id}/evidence")
    async def evidence(
        incident_id: str,
        limit: int = Query(PAGE, ge=1, le=10 * PAGE),
        after: str | None = Query(None, description="The `next` cursor of the previous page."),
    ) -> dict[str, Any]:
        async with runtime.pool.acquire() as conn:
            alerts = await forensic_repository.list_evidence(
                conn, incident_id=incident_id, after=_after(after), limit=limit
            )
        if not alerts and after is None:
            raise HTTPException(404, detail=f"the analyzer has no alert of incident {incident_id}")
        return {
            "incident_id": incident_id,
            "alerts": alerts,
            "next": _cursor(alerts[-1]) if len(alerts) == limit else None,
        }

    @router.get("/incidents/{incident_id}/evidence/{alert_key:path}")
    async def alert_evidence(incident_id: str, alert_key: str) -> dict[str, Any]:
        async with runtime.pool.acquire() as conn:
            alert = await forensic_repository.get_evidence(conn, incident_id=incident_id, alert_key=alert_key)
        if alert is None:
            raise HTTPException(404, detail=f"incident {incident_id} has no alert {alert_key}")
        return alert

    @router.get("/incidents/{incident_id}/indicators")
    async def indicators(incident_id: str) -> list[dict[str, Any]]:
        async with runtime.pool.acquire() as conn:
            found = await forensic_repository.list_indicators(conn, incident_id=incident_id)
            if not found and not await forensic_repository.incident_known(conn, incident_id=incident_id):
                raise HTTPException(404, detail=f"the analyzer has no alert of incident {incident_id}")
        return found

    return [router, _register_router(runtime)]


class EvidenceItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=500, description="What it is: `web-1 memory dump`.")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="The item's SHA-256, as its collector computed it.")
    size_bytes: int | None = Field(None, ge=0, le=2**63 - 1)
    location: str = Field(min_length=1, max_length=2000, description="Where it is kept: a path, an object store URI.")
    description: str = Field("", max_length=2000)
    collected_at: AwareDatetime | None = None
    actor: str = Field("", max_length=200, description="Who registers it (an unauthenticated local setup only).")
    note: str = Field("", max_length=2000)


class TransferIn(BaseModel):
    to: str = Field(min_length=1, max_length=200, description="Who holds it from now, as they sign in.")
    actor: str = Field("", max_length=200)
    note: str = Field("", max_length=2000)


class VerifyIn(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="The item's SHA-256 as computed now.")
    actor: str = Field("", max_length=200)
    note: str = Field("", max_length=2000)


def _register_router(runtime: Runtime) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["evidence"])

    async def changed(conn: Conn, found: dict[str, Any], **change: Any) -> None:
        """The register's change, on the incident's timeline through the outbox, in this transaction."""
        data = EvidenceChange(
            item_id=found["id"],
            name=found["name"],
            sha256=found["sha256"],
            size_bytes=found["size_bytes"],
            location=found["location"],
            **change,
        )
        event = EvidenceChanged(source=SOURCE, subject=found["incident_id"], data=data)
        await write_events(conn, service=SERVICE, names=runtime.names, events=[event])

    @router.get("/incidents/{incident_id}/evidence-register")
    async def register_of(
        incident_id: IncidentId, _by: Principal = require(runtime, "incidents.read")
    ) -> list[dict[str, Any]]:
        """The incident's evidence register: each item with its chain of custody, in the order registered."""
        async with runtime.pool.acquire() as conn:
            return await evidence_register.items_of(conn, incident_id)

    @router.post("/incidents/{incident_id}/evidence-register", status_code=201)
    async def register(
        incident_id: IncidentId,
        body: EvidenceItemIn,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.note"),
    ) -> JSONResponse:
        """Register an item collected for the incident, in the custody of who registers it."""
        who = actor(by, body.actor)

        async def apply(conn: Conn) -> idempotency.Answer:
            if not await forensic_repository.incident_known(conn, incident_id=incident_id):
                raise HTTPException(404, detail=f"the analyzer has no incident {incident_id}")
            try:
                item = await evidence_register.register(
                    conn,
                    incident_id=incident_id,
                    name=body.name,
                    sha256=body.sha256.lower(),
                    size_bytes=body.size_bytes,
                    location=body.location,
                    description=body.description,
                    collected_at=body.collected_at,
                    actor=who,
                    note=body.note,
                )
            except evidence_register.AlreadyRegistered as exc:
                raise HTTPException(409, detail=str(exc)) from exc
            entry = await evidence_register.first_entry(conn, item["id"])
            await changed(conn, dict(item), entry=entry, action="registered", actor=who, custodian=who, note=body.note)
            found = await evidence_register.get_item(conn, item["id"])
            detail = {"incident": incident_id, "sha256": item["sha256"], "location": item["location"][:500]}
            await audit.record(
                conn, service=SERVICE, principal=who, action="evidence.register", target=str(item["id"]), detail=detail
            )
            assert found is not None
            return idempotency.Answer(201, jsonable_encoder(found))

        return await _once(runtime, by, f"evidence.register:{incident_id}", idempotency_key, apply)

    @router.post("/evidence-register/{item_id}/transfer")
    async def transfer(
        item_id: ItemId,
        body: TransferIn,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.note"),
    ) -> JSONResponse:
        """Hand the item to another custodian: the chain of custody says who, when and why. Its custodian hands
        it over; a commander may take it from anyone (someone gone off shift)."""
        who = actor(by, body.actor)
        to = body.to.strip()

        async def apply(conn: Conn) -> idempotency.Answer:
            item = await evidence_register.lock_item(conn, item_id)
            if item is None:
                raise HTTPException(404, detail=f"no evidence item {item_id}")
            if who != item["custodian"] and by is not ANONYMOUS and not identity.allows(by.role, HAND_OVER_ANY):
                raise HTTPException(
                    403,
                    detail=f"{who} does not hold item {item_id} ({item['custodian']} does): its custodian hands it "
                    f"over, or someone of role {identity.least_role(HAND_OVER_ANY)} or above",
                )
            if not to or item["custodian"] == to:
                raise HTTPException(409, detail=f"{to or '(nobody)'} holds item {item_id} already, or is no one")
            entry = await evidence_register.transfer(conn, item_id, to=to, actor=who, note=body.note)
            await changed(conn, dict(item), entry=entry, action="transferred", actor=who, custodian=to, note=body.note)
            found = await evidence_register.get_item(conn, item_id)
            detail = {"incident": item["incident_id"], "from": item["custodian"], "to": to}
            await audit.record(
                conn, service=SERVICE, principal=who, action="evidence.transfer", target=str(item_id), detail=detail
            )
            assert found is not None
            return idempotency.Answer(200, jsonable_encoder(found))

        return await _once(runtime, by, f"evidence.transfer:{item_id}:{to}", idempotency_key, apply)

    @router.post("/evidence-register/{item_id}/verify")
    async def verify(
        item_id: ItemId,
        body: VerifyIn,
        idempotency_key: IdempotencyKey = None,
        by: Principal = require(runtime, "incidents.note"),
    ) -> JSONResponse:
        """Record a check of the item as kept against its registered SHA-256: matched or not, on the timeline."""
        who = actor(by, body.actor)

        async def apply(conn: Conn) -> idempotency.Answer:
            item = await evidence_register.lock_item(conn, item_id)
            if item is None:
                raise HTTPException(404, detail=f"no evidence item {item_id}")
            matched = body.sha256.lower() == item["sha256"]
            entry = await evidence_register.verified(
                conn, item_id, custodian=item["custodian"], matched=matched, actor=who, note=body.note
            )
            await changed(
                conn, dict(item), entry=entry, action="verified", actor=who, custodian=item["custodian"],
                verified=matched, note=body.note,
            )  # fmt: skip
            found = await evidence_register.get_item(conn, item_id)
            await audit.record(
                conn,
                service=SERVICE,
                principal=who,
                action="evidence.verify",
                target=str(item_id),
                outcome="matched" if matched else "mismatch",
                detail={"incident": item["incident_id"]},
            )
            assert found is not None
            return idempotency.Answer(200, jsonable_encoder({**found, "matched": matched}))

        return await _once(runtime, by, f"evidence.verify:{item_id}", idempotency_key, apply)

    return router
