"""The detector's heartbeats API: tools' signs that their alerting works, as noted.

- ``GET /api/v1/heartbeats?limit=N`` (incidents.read): each heartbeat (Alertmanager's Watchdog, a
  native record of kind ``heartbeat``) with when it was first and last seen firing, how often
  (``sightings``, ``interval_s``), when its tool said it stopped, and since when it is missing (with the
  id of the alert Vigil raised about it); the most recently seen first. A heartbeat is never an
  incident: its absence is the alarm (``services/detector/heartbeats.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.detector import repository
from shared.auth import require
from shared.service import Runtime


def routers(runtime: Runtime) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1", tags=["heartbeats"])

    @router.get("/heartbeats", dependencies=[require(runtime, "incidents.read")])
    async def heartbeats(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        async with runtime.pool.acquire() as conn:
            return await repository.list_heartbeats(conn, limit=limit)

    return [router]
