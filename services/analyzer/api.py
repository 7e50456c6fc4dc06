"""The analyzer's HTTP API: threat-intel feeds (status, refresh now) and lookups.

What `vigil intel feeds`, `vigil intel refresh` and `vigil intel lookup` show, for tools and
dashboards. Reading takes a viewer's token; refreshing a feed now makes Vigil download from the
outside at once, so it takes a commander's (``response.control``), and is audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from services.analyzer import feeds, intel
from shared import audit
from shared.auth import require
from shared.identity import Principal
from shared.service import Runtime

Value = Annotated[str, Query(min_length=1, max_length=2048, description="An address, network, domain, URL, hash…")]
KindParam = Annotated[intel.Kind | None, Query(description="The value's kind; otherwise inferred.")]


class FeedStatus(BaseModel):
    name: str
    format: str
    location: str
    refresh_minutes: int
    configured: bool
    entries: int | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    passed_over: str | None = Field(
        None, description="What the last load passed over: values too long to keep, with their lines."
    )
    expires_at: datetime | None
    next_refresh_at: datetime | None


class MatchOut(BaseModel):
    source: str
    kind: str
    value: str
    verdict: str
    confidence: int
    tags: list[str]
    first_seen: datetime | None
    last_seen: datetime | None
    expires_at: datetime | None


class LookupOut(BaseModel):
    kind: str
    value: str
    verdict: intel.Verdict | None
    confidence: int
    tags: list[str]
    feeds: list[str]
    matches: list[MatchOut]


def routers(runtime: Runtime) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1/intel", tags=["threat intelligence"])

    @router.get("/feeds", response_model=list[FeedStatus])
    async def list_feeds(_by: Principal = require(runtime, "incidents.read")) -> list[FeedStatus]:
        """Every feed: last refresh, entries, last error, next refresh."""
        async with runtime.pool.acquire() as conn:
            rows = await feeds.status(conn)
        return [FeedStatus.model_validate(dict(r)) for r in rows]

    @router.post("/feeds/{name}/refresh", response_model=FeedStatus)
    async def refresh(name: str, by: Principal = require(runtime, "response.control")) -> FeedStatus:
        """Refresh a configured feed now; its schedule goes on from then."""
        async with runtime.pool.acquire() as conn, conn.transaction():
            if not await feeds.refresh_now(conn, name=name):
                raise HTTPException(404, detail=f"no configured feed {name!r}")
            [row] = [r for r in await feeds.status(conn) if r["name"] == name]
            await audit.record(conn, service="analyzer", principal=by.name, action="intel.refresh", target=name)
        return FeedStatus.model_validate(dict(row))

    @router.get("/lookup", response_model=LookupOut)
    async def lookup(
        value: Value, kind: KindParam = None, _by: Principal = require(runtime, "incidents.read")
    ) -> LookupOut:
        """Which feeds list a value (an address: also the networks holding it), and the verdict."""
        try:
            key = intel.normalise(kind or intel.infer_kind(intel.refang(value)), value)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        async with runtime.pool.acquire() as conn:
            matches = (await intel.lookup(conn, [key]))[key]
        assessment = intel.verdict_of(matches)
        return LookupOut(
            kind=key[0],
            value=key[1],
            verdict=assessment.verdict,
            confidence=assessment.confidence,
            tags=list(assessment.tags),
            feeds=list(assessment.feeds),
            matches=[MatchOut.model_validate({**m.__dict__, "tags": list(m.tags)}) for m in matches],
        )

    return [router]
