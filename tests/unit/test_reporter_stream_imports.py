"""The reporter's faust app is built without aiohttp's HTTP client, and leaves ``import aiohttp`` working."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from services.reporter.stream import NoHttpClient

# A fresh interpreter: this one may have loaded aiohttp or faust's types already.
BUILT_WITHOUT_AIOHTTP = textwrap.dedent(
    """
    import sys

    from services.reporter.stream import NoHttpClient, StreamAggregations
    from shared.settings import VigilSettings

    app, tables = StreamAggregations(VigilSettings()).build()
    assert set(tables) == {"alerts", "incidents", "dead_letters", "flapping"}, tables
    assert app.conf.HttpClient is NoHttpClient, app.conf.HttpClient
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "aiohttp")
    assert not loaded, loaded

    import aiohttp
    import aiohttp.client

    assert aiohttp.client.ClientSession is aiohttp.ClientSession
    assert hasattr(aiohttp.ClientSession, "request"), "the placeholder outlived faust's types"
    print("ok")
    """
)


def test_stream_app_is_built_without_aiohttp_and_aiohttp_still_imports() -> None:
    done = subprocess.run([sys.executable, "-c", BUILT_WITHOUT_AIOHTTP], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_stream_apps_http_client_refuses_to_be_made() -> None:
    with pytest.raises(RuntimeError, match="no HTTP requests"):
        NoHttpClient()
