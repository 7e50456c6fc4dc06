"""The analyzer's read API: an incident's evidence timeline, the tool's record behind each alert, the provenance.

- ``GET /api/v1/incidents/{id}/evidence?limit=&after=``: the incident's alerts in time order, each with its
  source, format, host, user and what it names (kind, value, field, internal); ``next`` is the cursor of
  the following page, none on the last.
- ``GET /api/v1/incidents/{id}/evidence/{alert_key}``: one alert with the tool's record as the analyzer
  received it (``raw_cut``: only its first fields; the detector keeps it whole).
- ``GET /api/v1/incidents/{id}/indicators``: every value the alerts name, with the fields, first and last
  seen, count and first alert keys, and what threat intelligence last said of it (verdict, confidence,
  feeds, tags, looked_up_at; an analysis carries only the worst of them).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from services.analyzer import forensic_repository
from shared.auth import require
from shared.service import Runtime

PAGE = 1_000


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

    return [router]
