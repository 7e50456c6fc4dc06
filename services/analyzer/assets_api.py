"""The analyzer's asset inventory API: what `vigil assets import`, `list` and `show` do, for tools.

- ``POST /api/v1/assets/import`` (incidents.edit): a YAML or CSV inventory file as the body, its
  format from ``?format=yaml|csv`` or else the content type (``application/yaml``, ``text/yaml``,
  ``text/csv``). All of it or nothing: a file with any problem is refused with 422 and every problem
  with its line (``body:LINE[:COLUMN]: where: why``), and the inventory stays as it was. Audited.
- ``GET /api/v1/assets`` (incidents.read): every asset, most critical first, and every account.
- ``GET /api/v1/assets/{identifier}`` (incidents.read): what the inventory knows of a host, an
  address (or the most specific network holding it), a network, an account or a cloud resource;
  404 when nothing.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from services.analyzer import assets
from services.analyzer.assets import Asset, User
from shared import audit
from shared.auth import require
from shared.identity import Principal
from shared.service import Runtime

# Where problems say they are: the file has no name of its own over HTTP.
SOURCE = "body"
MEDIA_TYPES: dict[str, Literal["yaml", "csv"]] = {
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
    "text/csv": "csv",
}
FormatParam = Annotated[
    Literal["yaml", "csv"] | None,
    Query(alias="format", description="The file's format; else taken from its content type."),
]
_TEXT_BODY = {"schema": {"type": "string"}}
IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An inventory file, as `vigil assets import` reads one (see assets.example.yaml).",
        "content": {"application/yaml": _TEXT_BODY, "text/yaml": _TEXT_BODY, "text/csv": _TEXT_BODY},
    }
}
_REFUSAL = {"content": {"application/json": {"schema": {"type": "object"}}}}


class ImportedOut(BaseModel):
    """How an import changed the inventory: added and updated, assets and accounts."""

    assets_new: int
    assets_updated: int
    users_new: int
    users_updated: int


class Listing(BaseModel):
    assets: list[Asset]
    users: list[User]


class Match(BaseModel):
    """An asset the identifier names: as which kind it was looked up, and whether a network holding it matched."""

    looked_up_as: str = Field(description="host, ip, resource or cidr.")
    matched_by: Literal["exact", "cidr"]
    asset: Asset


class Shown(BaseModel):
    identifier: str
    assets: list[Match]
    users: list[User]


def format_of(request: Request, given: Literal["yaml", "csv"] | None) -> Literal["yaml", "csv"]:
    """The body's format: the one asked for, else the one its content type says; 415 when neither says."""
    if given is not None:
        return given
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise HTTPException(
            415,
            detail=f"cannot tell the format from the content type {media_type or '(none)'!r}: "
            f"send one of {', '.join(MEDIA_TYPES)}, or say ?format=yaml or csv",
        )
    return MEDIA_TYPES[media_type]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 over the limit: the middleware refuses what declares more, this what streams more."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, detail=f"the body is over {limit} bytes")
    return bytes(body)


def routers(runtime: Runtime) -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1/assets", tags=["asset inventory"])

    @router.post(
        "/import",
        response_model=ImportedOut,
        openapi_extra=IMPORT_BODY,
        responses={413: _REFUSAL, 415: _REFUSAL},
    )
    async def import_file(
        request: Request, file_format: FormatParam = None, by: Principal = require(runtime, "incidents.edit")
    ) -> ImportedOut:
        """Add or update every asset and account of the file at once; a file with any problem changes nothing."""
        format_name = format_of(request, file_format)
        body = await read_body(request, runtime.settings.api_max_bytes)
        try:
            catalog = assets.parse(body.decode("utf-8"), source=SOURCE, format_name=format_name)
        except UnicodeDecodeError as exc:
            raise HTTPException(422, detail={"refused": [f"{SOURCE}: not UTF-8 text: {exc.reason}"]}) from exc
        except assets.InventoryFileError as exc:
            raise HTTPException(422, detail={"refused": exc.problems}) from exc
        async with runtime.pool.acquire() as conn, conn.transaction():
            done = await assets.import_catalog(conn, catalog)
            await audit.record(
                conn,
                service="analyzer",
                principal=by.name,
                action="assets.import",
                target="inventory",
                detail={"format": format_name, **asdict(done)},
            )
        return ImportedOut.model_validate(asdict(done))

    @router.get("", response_model=Listing, dependencies=[require(runtime, "incidents.read")])
    async def list_assets() -> Listing:
        """Every asset, most critical first, and every account."""
        async with runtime.pool.acquire() as conn:
            found, users = await assets.list_(conn)
        return Listing(assets=found, users=users)

    @router.get("/{identifier:path}", response_model=Shown, dependencies=[require(runtime, "incidents.read")])
    async def show(identifier: str) -> Shown:
        """What the inventory knows of a host, address, network, account or cloud resource."""
        async with runtime.pool.acquire() as conn:
            known = await assets.show(conn, identifier)
        if not known.assets and not known.users:
            raise HTTPException(404, detail=f"{identifier!r} is not in the inventory")
        return Shown(
            identifier=identifier,
            assets=[Match(looked_up_as=f.kind, matched_by=f.by, asset=f.asset) for f in known.assets],
            users=list(known.users),
        )

    return [router]
