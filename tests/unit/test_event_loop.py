"""A service runs on uvloop where it is installed, on Python's own loop when asked or where it is not."""

from __future__ import annotations

import sys

import pytest
import uvloop

from shared.service import loop_factory
from shared.settings import VigilSettings


def test_uvloop_is_the_default() -> None:
    assert VigilSettings().event_loop == "uvloop"
    factory = loop_factory("uvloop")
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_python_loop_when_asked() -> None:
    assert loop_factory("asyncio") is None


def test_python_loop_where_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it raises ImportError
    assert loop_factory("uvloop") is None


def test_an_unknown_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        VigilSettings()
