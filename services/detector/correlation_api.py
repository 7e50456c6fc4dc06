"""The detector's correlation API: the rules in force, reloading them, and the alerts waiting for a condition.

- ``GET /api/v1/correlation/rules`` (incidents.read): the correlations in force, in the order they apply.
- ``POST /api/v1/correlation/reload`` (incidents.edit): read the rules file again now (the detector
  also does when the file changes); a broken file is refused with 422 and its problems, and the
  rules in force stay. Reloads this detector; the others see the file change within seconds.
- ``GET /api/v1/correlation/waiting?limit=N`` (incidents.read): alerts stored while their rule's
  condition does not hold, newest first.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from services.detector import repository
from services.detector.correlation import CorrelationError, CorrelationRules
from services.detector.handlers import RulesSource
from shared.auth import require
from shared.service import Runtime

Limit = Annotated[int, Query(ge=1, le=1000)]


def describe(rules: CorrelationRules) -> list[dict[str, Any]]:
    """The correlations in force, as a person reads them."""
    return [
        {
            "name": c.name,
            "title": c.title,
            "type": c.type,
            "rules": list(c.rules),
            "group_by": list(c.group_by),
            "condition": c.condition_text(),
            "severity": c.severity.value if c.severity else None,
        }
        for c in rules.correlations
    ]


def routers(runtime: Runtime, source: RulesSource) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1/correlation", tags=["correlation"])

    @router.get("/rules", dependencies=[require(runtime, "incidents.read")])
    async def rules() -> dict[str, Any]:
        current = source.current()
        return {"file": str(source.path) if source.path else None, "correlations": describe(current)}

    @router.post("/reload", dependencies=[require(runtime, "incidents.edit")])
    async def reload() -> dict[str, Any]:
        try:
            current = source.reload()
        except CorrelationError as exc:
            raise HTTPException(422, detail={"refused": exc.problems}) from exc
        return {"file": str(source.path) if source.path else None, "correlations": describe(current)}

    @router.get("/waiting", dependencies=[require(runtime, "incidents.read")])
    async def waiting(limit: Limit = 100) -> list[dict[str, Any]]:
        async with runtime.pool.acquire() as conn:
            return await repository.list_waiting(conn, limit=limit)

    return [router]
