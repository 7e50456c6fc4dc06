"""The reporter's read API: incidents, with their alerts, analysis, plan and timeline."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query

from services.reporter import repository
from shared.auth import require
from shared.events import IncidentState, Severity
from shared.service import Runtime


def routers(runtime: Runtime) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1", tags=["incidents"], dependencies=[require(runtime, "incidents.read")])

    @router.get("/incidents")
    async def list_incidents(
        state: IncidentState | None = None,
        severity: Severity | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        async with runtime.pool.acquire() as conn:
            return await repository.list_incidents(
                conn,
                state=state.value if state else None,
                severity=severity.value if severity else None,
                limit=limit,
            )

    @router.get("/incidents/{incident_id}")
    async def get_incident(incident_id: str) -> dict[str, Any]:
        async with runtime.pool.acquire() as conn:
            incident = await repository.get_incident(conn, incident_id=incident_id)
            if incident is None:
                raise HTTPException(404, detail=f"no incident {incident_id}")
            incident["alerts"] = await repository.list_alerts(conn, incident_id=incident_id)
            incident["timeline"] = await repository.list_timeline(conn, incident_id=incident_id)
        return incident

    @router.get("/incidents/{incident_id}/timeline")
    async def get_timeline(incident_id: str) -> list[dict[str, Any]]:
        async with runtime.pool.acquire() as conn:
            timeline = await repository.list_timeline(conn, incident_id=incident_id)
        if not timeline:
            raise HTTPException(404, detail=f"no incident {incident_id}")
        return timeline

    return [router]
