"""The responder's HTTP API: the blocklists, read-only, as External Dynamic Lists and nftables sets.

Firewalls, proxies and DNS resolvers poll these on the responder's port. Each answer carries an
ETag and a Last-Modified, so a poller's conditional GET costs a 304 while nothing changed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

from fastapi import APIRouter, Request, Response

from services.responder import blocklist
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


def routers(runtime: Runtime) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1/blocklist", tags=["blocklist"])

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

    return [router]
