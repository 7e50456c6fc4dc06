"""Authentication of the services' command APIs."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Header, HTTPException

from shared.service import Runtime


def require_token(runtime: Runtime) -> Callable[[str | None], None]:
    """With VIGIL_API_TOKEN set, commands need `Authorization: Bearer <token>`."""
    expected = runtime.settings.api_token

    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, expected.get_secret_value()):
            raise HTTPException(401, detail="a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    return check
