"""The coordinator's command API asks for a bearer token when one is configured."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import HTTPException
from pydantic import SecretStr

from services.coordinator.api import require_token


def runtime(token: str | None) -> Any:
    return SimpleNamespace(settings=SimpleNamespace(api_token=SecretStr(token) if token else None))


def test_no_token_configured_lets_commands_through() -> None:
    require_token(runtime(None))(None)


def test_the_right_token_passes() -> None:
    require_token(runtime("s3cret"))("Bearer s3cret")


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret", "s3cret"])
def test_a_missing_or_wrong_token_is_refused(header: str | None) -> None:
    with pytest.raises(HTTPException) as refused:
        require_token(runtime("s3cret"))(header)
    assert refused.value.status_code == 401
