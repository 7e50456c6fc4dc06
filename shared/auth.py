"""Authentication and authorisation of every API route Vigil serves.

Each route depends on ``require(runtime, permission)``: the request's bearer token resolves to a
principal (``shared.identity``), whose role must hold the permission; 401 without a valid token,
403 with a role that lacks it. The principal is who acts: commands record its name, never a name
from the request body. ``VIGIL_ALLOW_UNAUTHENTICATED`` (local experiments only) lets requests
without a token through as ``anonymous`` with every permission; a service bound to another address
than loopback refuses to start with it unless tokens exist (``check_startup``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, HTTPException, Security
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


def require(runtime: Runtime, permission: Permission) -> Any:
    """A route's dependency (``by: Principal = require(...)``, or in ``dependencies=[...]``): the principal of
    the request, holding ``permission``, or 401/403. The permission shows in the OpenAPI document."""

    async def principal(credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> Principal:
        token = credentials.credentials if credentials is not None else ""
        if not token or credentials is None or credentials.scheme.lower() != "bearer":
            if runtime.settings.allow_unauthenticated:
                return ANONYMOUS
            raise HTTPException(401, detail="a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if identity.parse_token(token) is None and (jwts := oidc.verifier(runtime.settings)) is not None:
            found = await jwts.averify(token)  # not one of Vigil's tokens: the identity provider's, perhaps
        else:
            async with runtime.pool.acquire() as conn:
                found = await identity.resolve(conn, token)
        if found is None:
            raise HTTPException(
                401, detail="the token is unknown, revoked or expired", headers={"WWW-Authenticate": "Bearer"}
            )
        if not identity.allows(found.role, permission):
            raise HTTPException(
                403,
                detail=f"{found.name} ({found.role}) may not {identity.PERMISSION_TEXT[permission]}; "
                f"that takes the role {identity.least_role(permission)} or above",
            )
        return found

    return Security(principal, scopes=[permission])


def actor(principal: Principal, claimed: str) -> str:
    """Who acts: the authenticated principal; the name in the body only when nobody authenticated."""
    return claimed if principal is ANONYMOUS and claimed else principal.name
