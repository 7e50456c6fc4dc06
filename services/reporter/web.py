"""The reporter's read-only web view under ``/ui``: the incident list, one incident, its reports.

Server-rendered pages (``views``), no script. Pages authenticate as the query API does and need its
permission, ``incidents.read``; the token comes from the bearer header or the cookie ``/ui/login``
sets. A page asked for without a valid token sends the browser to sign in; a role without the
permission gets a plain page saying so.

An incident's page also has forms to act on it (acknowledge, resolve, note, approve or deny a step:
``page_commands``), each shown and accepted only for a role with the command's permission; the
command goes on the commands topic in the signed-in principal's name, as from the CLI.

Cross-site requests: the session cookie is ``SameSite=Strict``, so no other site's page or form
makes a request that carries it, and no GET changes anything. A form post must also come from this
view's own pages (its ``Origin``, else its ``Referer``, is this site). A forged sign-in (another site
posting its own token here) would only show the person that token's view.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute

from services.reporter import page_commands, reports, repository, views
from services.reporter.measures import SlaTargets
from services.reporter.queries import BadCursor, decode_cursor, encode_cursor
from services.reporter.reports import EXPORT_COLUMNS, ExportKind
from shared.auth import (
    ANONYMOUS,
    SESSION_COOKIE,
    Forbidden,
    Unauthenticated,
    authenticate,
    end_session,
    require_page,
    set_session,
)
from shared.identity import Permission, Principal, least_role
from shared.outbox import write_events
from shared.service import Runtime

READ: Permission = "incidents.read"  # as the query API
# No script runs on these pages, whatever got into them; styles are inline (the reports' and the charts').
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # out of shared caches, and Back after signing out shows nothing kept
}
NextPath = Annotated[str | None, Query(alias="next", max_length=2000)]
Period = Annotated[str, Query(max_length=100)]
ExportFormat = Literal["csv", "json"]


class PageRoute(APIRoute):
    """A page: an unauthenticated request goes to sign in, a refused one gets a plain page, and every
    answer carries the pages' security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handle(request)
            except Unauthenticated:
                # A form posted after the session ended: back to its page once signed in (the post is not kept).
                path = request.url.path.removesuffix("/commands") if request.method == "POST" else request.url.path
                response = RedirectResponse(views.sign_in_url(path, request.url.query), 303)
                if SESSION_COOKIE in request.cookies:  # its token is revoked or expired: forget it
                    end_session(response, secure=request.url.scheme == "https")
            except Forbidden as exc:
                response = HTMLResponse(views.message_page("Not allowed", str(exc), by=exc.principal), 403)
            response.headers.update(PAGE_HEADERS)
            return response

        return page


def _period(since: str, until: str) -> tuple[datetime | None, datetime | None, list[str]]:
    """A report's period from the form's dates (the last day included); what could not be read."""
    problems = []
    bounds: list[datetime | None] = []
    for name, text in (("from", since), ("to", until)):
        try:
            bounds.append(views.parse_moment(text, end_of_day=name == "to") if text.strip() else None)
        except ValueError:
            problems.append(f"{name} {text!r} is neither a date (2026-11-24) nor an ISO 8601 time")
            bounds.append(None)
    return bounds[0], bounds[1], problems


def _file_name(incident_id: str, what: str) -> str:
    return f"incident-{re.sub(r'[^A-Za-z0-9._-]', '_', incident_id)[:80]}-{what}"


def _attachment(body: str, media_type: str, name: str) -> Response:
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _from_this_site(request: Request, public_url: str | None) -> bool:
    """A form post sent by this view's own pages.

    The browser says so itself (``Sec-Fetch-Site: same-origin``), whatever proxies stand between; a browser
    that does not says where the form was (its Origin, else its Referer), which must be this site as people
    reach it: ``VIGIL_PUBLIC_URL``, else the address this request came to. A client that is no browser names
    none of them (a script with a bearer token) and is let through: no other site's page can make such a
    request carry the session cookie.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    if public_url:
        parts = urlsplit(public_url)
        here = f"{parts.scheme}://{parts.netloc}"
    else:
        here = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == here
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == here
    return True


def _not_found(incident_id: str, by: Principal) -> HTMLResponse:
    return HTMLResponse(views.message_page("Not found", f"There is no incident {incident_id}.", by=by), 404)


def router(runtime: Runtime, sla: SlaTargets) -> APIRouter:
    pages = APIRouter(route_class=PageRoute, include_in_schema=False)
    viewer = require_page(runtime, READ)

    @pages.get("/")
    @pages.get("/ui")
    @pages.get("/ui/")
    async def home() -> RedirectResponse:
        return RedirectResponse(views.HOME, 303)

    @pages.get("/ui/login")
    async def sign_in_form(next_path: NextPath = None) -> HTMLResponse:
        return HTMLResponse(views.sign_in_page(next_path=views.safe_next(next_path)))

    @pages.post("/ui/login")
    async def sign_in(request: Request) -> Response:
        # A plain form post (application/x-www-form-urlencoded); the app bounds the body's size.
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"), max_num_fields=10)
        token = (form.get("token") or [""])[0].strip()
        target = views.safe_next((form.get("next") or [""])[0])
        if not token:
            return HTMLResponse(views.sign_in_page(next_path=target, problem="Paste an API token."), 400)
        try:
            await authenticate(runtime, token, READ)
        except Unauthenticated:
            problem = "That token is unknown, revoked or expired."
            return HTMLResponse(views.sign_in_page(next_path=target, problem=problem), 401)
        except Forbidden as exc:
            return HTMLResponse(views.message_page("Not allowed", str(exc), by=exc.principal), 403)
        response = RedirectResponse(target, 303)
        set_session(response, token, secure=request.url.scheme == "https")
        return response

    @pages.post("/ui/logout")
    async def sign_out(request: Request) -> Response:
        response = RedirectResponse(views.SIGN_IN, 303)
        end_session(response, secure=request.url.scheme == "https")
        return response

    @pages.get("/ui/incidents")
    async def incident_list(request: Request, by: Principal = viewer) -> HTMLResponse:
        form = views.parse_list_form(request.query_params.multi_items())
        after = None
        if form.cursor:
            try:
                after = decode_cursor(form.cursor, sort=form.sort, order=form.order)
            except BadCursor as exc:
                form.problems.append(f"{exc}; showing the first page")
                form.cursor = None
        async with runtime.pool.acquire() as conn:
            incidents, next_after = await repository.list_incidents(
                conn, filters=form.filters(), sort=form.sort, order=form.order, after=after, limit=form.limit
            )
        next_cursor = encode_cursor(form.sort, form.order, *next_after) if next_after else None
        return HTMLResponse(views.incident_list_page(form, incidents, next_cursor=next_cursor, by=by))

    @pages.get("/ui/incidents/{incident_id}")
    async def incident(
        incident_id: str,
        by: Principal = viewer,
        sent: Annotated[str | None, Query(max_length=40)] = None,
    ) -> HTMLResponse:
        async with runtime.pool.acquire() as conn:
            bundle = await repository.incident_bundle(conn, incident_id=incident_id)
            if bundle is None:
                return _not_found(incident_id, by)
            merged = await repository.list_merged(conn, incident_id=incident_id)
            leases = await repository.list_leases(conn, incident_id=incident_id)
        can = page_commands.allowed(by, anonymous=by is ANONYMOUS)
        sent = sent if sent in page_commands.PERMISSIONS else None
        page = views.incident_page(
            bundle, merged=merged, leases=leases, sla=sla, now=datetime.now(UTC), by=by, can=can, sent=sent
        )
        return HTMLResponse(page)

    @pages.post("/ui/incidents/{incident_id}/commands")
    async def act(request: Request, incident_id: str, by: Principal = viewer) -> Response:
        """A form of the incident's page: its command goes on the commands topic in the principal's name."""
        if not _from_this_site(request, runtime.settings.public_url):
            return HTMLResponse(views.message_page("Not allowed", "A form from another site is refused.", by=by), 403)
        try:
            form = parse_qs((await request.body()).decode("utf-8", errors="replace"), max_num_fields=10)
        except ValueError:
            return HTMLResponse(views.message_page("Cannot do that", "The form has too many fields.", by=by), 400)
        command = (form.get("command") or [""])[0]
        if not page_commands.allowed(by, anonymous=by is ANONYMOUS).get(command, True):
            permission = page_commands.PERMISSIONS[command]
            message = f"{by.name} ({by.role}) may not {command}: that takes the role {least_role(permission)} or above."
            return HTMLResponse(views.message_page("Not allowed", message, by=by), 403)
        try:
            event = page_commands.command_event(incident_id, form, by=by)
        except page_commands.CommandRefused as exc:
            return HTMLResponse(views.message_page(f"Cannot {command or 'do that'}", str(exc), by=by), 400)
        async with runtime.pool.acquire() as conn, conn.transaction():
            if not await repository.incident_exists(conn, incident_id=incident_id):
                return _not_found(incident_id, by)
            await write_events(conn, service="reporter", names=runtime.names, events=[event])
        return RedirectResponse(f"/ui/incidents/{quote(incident_id, safe='')}?sent={command}#act", 303)

    @pages.get("/ui/incidents/{incident_id}/postmortem.{fmt}")
    async def postmortem(incident_id: str, fmt: reports.Format, by: Principal = viewer) -> Response:
        """The post-mortem as the API renders it; Markdown as text, to read in the browser."""
        async with runtime.pool.acquire() as conn:
            bundle = await repository.incident_bundle(conn, incident_id=incident_id)
        if bundle is None:
            return _not_found(incident_id, by)
        text = reports.postmortem(bundle, fmt=fmt, sla=sla, now=datetime.now(UTC))
        return HTMLResponse(text) if fmt == "html" else PlainTextResponse(text)

    @pages.get("/ui/incidents/{incident_id}/ocsf.json")
    async def ocsf(incident_id: str, by: Principal = viewer) -> Response:
        async with runtime.pool.acquire() as conn:
            bundle = await repository.incident_bundle(conn, incident_id=incident_id)
        if bundle is None:
            return _not_found(incident_id, by)
        return JSONResponse(jsonable_encoder(reports.ocsf_finding(bundle)))

    @pages.get("/ui/incidents/{incident_id}/{kind}.csv")
    async def incident_csv(incident_id: str, kind: Literal["timeline", "actions"], by: Principal = viewer) -> Response:
        """The incident's timeline or actions, with the columns of the period exports."""
        async with runtime.pool.acquire() as conn:
            bundle = await repository.incident_bundle(conn, incident_id=incident_id)
        if bundle is None:
            return _not_found(incident_id, by)
        if kind == "timeline":
            text = reports.to_csv(bundle.timeline, EXPORT_COLUMNS["timelines"])
        else:
            text = reports.to_csv(
                [{"incident_id": incident_id, **a} for a in bundle.actions], EXPORT_COLUMNS["actions"]
            )
        return _attachment(text, "text/csv; charset=utf-8", _file_name(incident_id, f"{kind}.csv"))

    @pages.get("/ui/reports")
    async def reports_index(since: Period = "", until: Period = "", by: Principal = viewer) -> HTMLResponse:
        *_, problems = _period(since, until)
        return HTMLResponse(views.reports_page(since_text=since, until_text=until, problems=problems, by=by))

    @pages.get("/ui/reports/compliance.{fmt}")
    async def compliance(
        fmt: reports.Format, since: Period = "", until: Period = "", by: Principal = viewer
    ) -> Response:
        start, end, problems = _period(since, until)
        if problems:
            return HTMLResponse(views.message_page("Cannot make the report", "; ".join(problems), by=by), 400)
        async with runtime.pool.acquire() as conn:
            data = await repository.compliance_data(conn, since=start, until=end)
        text = reports.compliance(data, fmt=fmt, sla=sla, now=datetime.now(UTC))
        return HTMLResponse(text) if fmt == "html" else PlainTextResponse(text)

    @pages.get("/ui/export/{kind}.{fmt}")
    async def export(
        kind: ExportKind, fmt: ExportFormat, since: Period = "", until: Period = "", by: Principal = viewer
    ) -> Response:
        start, end, problems = _period(since, until)
        if problems:
            return HTMLResponse(views.message_page("Cannot export", "; ".join(problems), by=by), 400)
        batches = repository.export_batches(runtime.pool, kind=kind, since=start, until=end)
        media_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        return StreamingResponse(
            reports.export_chunks(batches, kind=kind, fmt=fmt),
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{kind}.{fmt}"'},
        )

    return pages
