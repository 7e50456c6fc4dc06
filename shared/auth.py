"""Authentication and authorisation of every API route and page Vigil serves.

Each API route depends on ``require(runtime, permission)``: the request's bearer token resolves to a
principal (``shared.identity``), whose role must hold the permission; 401 without a valid token,
403 with a role that lacks it. The principal is who acts: commands record its name, never a name
from the request body. ``VIGIL_ALLOW_UNAUTHENTICATED`` (local experiments only) lets requests
without a token through as ``anonymous`` with every permission; a service bound to another address
than loopback refuses to start with it unless tokens exist (``check_startup``).

Pages depend on ``require_page``: a browser cannot add a bearer header to a navigation, so a page
also takes the same token from the session cookie its sign-in set (``set_session``). Both resolve
the token through ``authenticate``, and refuse with ``Unauthenticated`` or ``Forbidden`` for the
page to answer as a browser expects (the sign-in page, a plain page saying why).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import Depends, HTTPException, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared import identity, oidc
from shared.identity import Permission, Principal
from shared.service import Runtime

ANONYMOUS = Principal(name="anonymous", role="admin", kind="person")


# The scheme in every service's OpenAPI document; each operation lists the permission it needs as a scope.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="VigilToken",
    description="An API token (`vigil tokens create`): `Authorization: Bearer vigil_<id>_<secret>`.",
)

# The cookie a page sign-in sets: the token itself, which only the pages under its path receive.
SESSION_COOKIE = "vigil_session"
SESSION_PATH = "/ui"
# A working day: a browser left signed in on a shared screen does not stay so for the token's whole life.
SESSION_MAX_AGE_S = 8 * 3600


class Unauthenticated(Exception):
    """No token, or one that is malformed, unknown, revoked or expired."""


class Forbidden(Exception):
    """A valid token whose role lacks the permission."""

    def __init__(self, principal: Principal, permission: Permission) -> None:
        self.principal = principal
        self.permission = permission
        super().__init__(
            f"{principal.name} ({principal.role}) may not {identity.PERMISSION_TEXT[permission]}; "
            f"that takes the role {identity.least_role(permission)} or above"
        )


async def authenticate(runtime: Runtime, token: str | None, permission: Permission) -> Principal:
    """The principal a token stands for, holding ``permission``; else ``Unauthenticated`` or ``Forbidden``.

    Without a token, ``anonymous`` when unauthenticated access is allowed; a token given is always checked.
    """
    if not token:
        if runtime.settings.allow_unauthenticated:
            return ANONYMOUS
        raise Unauthenticated("a bearer token is required")
    if identity.parse_token(token) is None and (jwts := oidc.verifier(runtime.settings)) is not None:
        found = await jwts.averify(token)  # not one of Vigil's tokens: the identity provider's, perhaps
    else:
        async with runtime.pool.acquire() as conn:
            found = await identity.resolve(conn, token)
    if found is None:
        raise Unauthenticated("the token is unknown, revoked or expired")
    if not identity.allows(found.role, permission):
        raise Forbidden(found, permission)
    return found


def _bearer(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    if credentials is None or credentials.scheme.lower() != "bearer":
        return None
    return credentials.credentials or None


def require(runtime: Runtime, permission: Permission) -> Any:
    """A route's dependency (``by: Principal = require(...)``, or in ``dependencies=[...]``): the principal of
    the request, holding ``permission``, or 401/403. The permission shows in the OpenAPI document."""

    async def principal(credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> Principal:
        try:
            return await authenticate(runtime, _bearer(credentials), permission)
        except Unauthenticated as exc:
            raise HTTPException(401, detail=str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
        except Forbidden as exc:
            raise HTTPException(403, detail=str(exc)) from exc

    return Security(principal, scopes=[permission])


def require_page(runtime: Runtime, permission: Permission) -> Any:
    """A page's dependency: like ``require``, from the bearer header or else the session cookie; it raises
    ``Unauthenticated`` or ``Forbidden`` as they are, for the page's route to answer."""

    async def principal(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)
    ) -> Principal:
        token = _bearer(credentials) or request.cookies.get(SESSION_COOKIE)
        return await authenticate(runtime, token, permission)

    return Security(principal, scopes=[permission])


def set_session(response: Response, token: str, *, secure: bool) -> None:
    """Keep a signed-in token for the pages: out of scripts' reach, never sent by another site's request."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_MAX_AGE_S,
        path=SESSION_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def end_session(response: Response, *, secure: bool) -> None:
    response.delete_cookie(SESSION_COOKIE, path=SESSION_PATH, httponly=True, samesite="strict", secure=secure)


def actor(principal: Principal, claimed: str) -> str:
    """Who acts: the authenticated principal; the name in the body only when nobody authenticated."""
    return claimed if principal is ANONYMOUS and claimed else principal.name


def signature_valid(signature: str | None, body: bytes, secret: bytes) -> bool:
    """True when ``signature`` is ``sha256=<hex HMAC-SHA256 of the body>`` under the secret (Vigil's ingest,
    GitHub's webhooks)."""
    scheme, _, digest = (signature or "").strip().partition("=")
    if scheme.lower() != "sha256" or not digest:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(digest.strip().lower().encode(), expected)


def sign(body: bytes, secret: bytes) -> str:
    """The ``sha256=<hex>`` signature of a body (for senders and tests)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
