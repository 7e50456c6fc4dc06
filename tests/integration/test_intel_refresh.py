"""Threat-intel feeds refreshed on their durable timers through the effects runner, in the real Postgres:
from a file and from a URL (conditional download, headers from the environment), a bad feed that
loads nothing and keeps the last good data, a feed that expires, and `vigil intel feeds|refresh`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from services.analyzer import api, feeds, intel
from shared import identity
from shared.db import create_pool
from shared.effects import EffectRunner
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.timers import TimerPoller
from shared.topics import TopicNames
from tests.helpers import eventually
from tests.intel_servers import Answer, Request, serving
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

NAMES = TopicNames("")


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


def config(**feed: Any) -> intel.IntelConfig:
    return intel.IntelConfig.model_validate({"feeds": [{"name": "f", "format": "list", **feed}]})


@contextlib.asynccontextmanager
async def analyzer_parts(
    pool: asyncpg.Pool, conf: intel.IntelConfig, environ: dict[str, str] | None = None
) -> AsyncIterator[tuple[TimerPoller, feeds.FeedRefresher]]:
    """The analyzer's feed refresh as its service composes it: timers synced, the effects runner running."""
    refresher = feeds.FeedRefresher(conf, pool=pool, environ=environ or {})
    async with pool.acquire() as conn, conn.transaction():
        await feeds.sync(conn, conf)
    runner = EffectRunner(
        feeds.SERVICE, pool, NAMES, refresher.effect_kinds(), poll_s=0.05, backoff_base_s=0.01, backoff_cap_s=0.02
    )
    task = asyncio.create_task(runner.run())
    try:
        yield TimerPoller(service=feeds.SERVICE, pool=pool, names=NAMES, handlers=refresher.timer_handlers), refresher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def refreshed(pool: asyncpg.Pool, poller: TimerPoller, name: str = "f") -> asyncpg.Record:
    """Fire the feed's refresh now and wait for its fetch to finish; return the effect's row."""
    async with pool.acquire() as conn, conn.transaction():
        assert await feeds.refresh_now(conn, name=name)
    before = await pool.fetchval("SELECT coalesce(max(id), 0) FROM effects WHERE kind = $1", feeds.EFFECT_KIND)
    assert await poller.fire_due() == 1

    async def finished() -> asyncpg.Record | None:
        return await pool.fetchrow(
            "SELECT * FROM effects WHERE kind = $1 AND id > $2 AND status IN ('succeeded', 'failed', 'parked')",
            feeds.EFFECT_KIND,
            before,
        )

    found: asyncpg.Record = await eventually(finished)  # type: ignore[arg-type]
    return found


async def listed(pool: asyncpg.Pool, *values: str) -> dict[str, list[str]]:
    async with pool.acquire() as conn:
        found = await intel.lookup(conn, [(intel.infer_kind(v), v) for v in values])
    return {key[1]: [m.source for m in matches] for key, matches in found.items()}


async def test_a_file_feed_is_loaded_on_its_timer_and_a_bad_file_keeps_the_last_good_data(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    path = tmp_path / "feed.txt"
    path.write_text("192.0.2.1\nevil.example\n")
    conf = config(path=str(path), refresh_minutes=30)
    async with analyzer_parts(db, conf) as (poller, _):
        # Synced at start: never loaded, so due at once; the timer only enqueues, the runner loads.
        assert await poller.fire_due() == 1
        await eventually(lambda: db.fetchval("SELECT last_success_at IS NOT NULL FROM intel_feeds WHERE name = 'f'"))
        assert await listed(db, "192.0.2.1", "evil.example") == {"192.0.2.1": ["f"], "evil.example": ["f"]}
        due = await db.fetchval(
            "SELECT due_at - now() FROM timers WHERE kind = $1 AND subject = 'f' AND fired_at IS NULL", feeds.TIMER_KIND
        )
        assert 29 * 60 < due.total_seconds() <= 30 * 60  # the next refresh, one interval on

        path.write_text("192.0.2.1\n192.0.2.2\nnot an indicator\n")
        effect = await refreshed(db, poller)
        assert effect["status"] == "failed" and "line 3" in effect["last_error"]
        status = await db.fetchrow("SELECT * FROM intel_feeds WHERE name = 'f'")
        assert status is not None and status["last_error"].startswith("line 3: ")
        assert status["last_error_at"] is not None
        # Nothing of the bad file was loaded; what the last good one listed still counts.
        assert await listed(db, "192.0.2.2", "evil.example") == {"192.0.2.2": [], "evil.example": ["f"]}

        path.write_text("192.0.2.2\n")
        effect = await refreshed(db, poller)
        assert effect["status"] == "succeeded" and effect["result"] == {"feed": "f", "entries": 1, "changed": True}
        assert await db.fetchval("SELECT last_error FROM intel_feeds WHERE name = 'f'") is None
        assert await listed(db, "192.0.2.2", "evil.example") == {"192.0.2.2": ["f"], "evil.example": []}
        effect = await refreshed(db, poller)  # the same file again: nothing to load
        assert effect["result"] == {"feed": "f", "entries": 1, "changed": False}

    # A feed taken out of the configuration: no more refreshes; its data stays.
    async with db.acquire() as conn, conn.transaction():
        await feeds.sync(conn, intel.IntelConfig())
        assert not await feeds.refresh_now(conn, name="f")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM timers WHERE kind = $1 AND fired_at IS NULL AND cancelled_at IS NULL",
            feeds.TIMER_KIND,
        )
        == 0
    )
    assert await listed(db, "192.0.2.2") == {"192.0.2.2": ["f"]}


async def test_a_url_feed_downloads_with_its_headers_and_only_when_changed(db: asyncpg.Pool) -> None:
    body: dict[str, bytes] = {"text": b"# c2\n203.0.113.7\nhxxp://bad[.]example/x\n", "etag": b'"v1"'}

    def route(request: Request) -> Answer:
        if request.headers.get("auth-key") != "s3cret-feed-key":
            return Answer(401, b"unauthorised")
        if request.headers.get("if-none-match") == body["etag"].decode():
            return Answer(304)
        return Answer(200, body["text"], {"ETag": body["etag"].decode(), "Content-Type": "text/plain"})

    async with serving(route) as server:
        conf = config(url=server.url("/feed.txt"), headers_env={"Auth-Key": "FEED_KEY"}, expire_hours=2)
        async with analyzer_parts(db, conf, {"FEED_KEY": "s3cret-feed-key"}) as (poller, _):
            effect = await refreshed(db, poller)
            assert effect["status"] == "succeeded", effect["last_error"]
            assert await listed(db, "203.0.113.7", "http://bad.example/x") == {
                "203.0.113.7": ["f"],
                "http://bad.example/x": ["f"],
            }
            effect = await refreshed(db, poller)
            assert effect["result"]["changed"] is False
            assert server.requests[-1].headers["if-none-match"] == '"v1"'  # answered 304

            body.update(text=b"203.0.113.8\n", etag=b'"v2"')
            effect = await refreshed(db, poller)
            assert effect["result"] == {"feed": "f", "entries": 1, "changed": True}
            assert await listed(db, "203.0.113.7", "203.0.113.8") == {"203.0.113.7": [], "203.0.113.8": ["f"]}
        # The header's value is read from the environment when the feed is fetched; stored nowhere.
        stored = json.dumps([dict(r) for r in await db.fetch("SELECT * FROM effects")], default=str)
        stored += json.dumps([dict(r) for r in await db.fetch("SELECT * FROM intel_feeds")], default=str)
        assert "s3cret-feed-key" not in stored and "FEED_KEY" in stored

        # A refusal for good is shown with the feed.
        async with analyzer_parts(db, conf, {"FEED_KEY": "wrong"}) as (poller, _):
            effect = await refreshed(db, poller)
        assert effect["status"] == "failed" and "HTTP 401" in effect["last_error"]
        assert "HTTP 401" in await db.fetchval("SELECT last_error FROM intel_feeds WHERE name = 'f'")

    # Not loaded again for longer than its expiry: the feed stops counting.
    assert await listed(db, "203.0.113.8") == {"203.0.113.8": ["f"]}
    await db.execute("UPDATE intel_sources SET expires_at = now() - interval '1 second' WHERE source = 'f'")
    assert await listed(db, "203.0.113.8") == {"203.0.113.8": []}


async def said(pool: asyncpg.Pool, value: str) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """What the feeds say of a value: each entry's feed, verdict, confidence and tags."""
    async with pool.acquire() as conn:
        found = await intel.lookup(conn, [(intel.infer_kind(value), value)])
    return [(m.source, m.verdict, m.confidence, m.tags) for matches in found.values() for m in matches]


async def test_a_file_feed_read_with_other_settings_loads_again_though_its_content_is_the_same(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    path = tmp_path / "feed.txt"
    path.write_text("203.0.113.7\n")
    async with analyzer_parts(db, config(path=str(path), verdict="malicious", confidence=90)) as (poller, _):
        effect = await refreshed(db, poller)
        assert effect["result"] == {"feed": "f", "entries": 1, "changed": True}
    assert await said(db, "203.0.113.7") == [("f", "malicious", 90, ())]

    # The operator corrects the feed's verdict, confidence and tags, and restarts: the same file, read anew.
    corrected = config(path=str(path), verdict="benign-listed", confidence=10, tags=["scanner"])
    async with analyzer_parts(db, corrected) as (poller, _):
        effect = await refreshed(db, poller)
        assert effect["result"] == {"feed": "f", "entries": 1, "changed": True}
        assert await said(db, "203.0.113.7") == [("f", "benign-listed", 10, ("scanner",))]
        effect = await refreshed(db, poller)  # the same file and settings again: nothing to load
        assert effect["result"] == {"feed": "f", "entries": 1, "changed": False}


async def test_a_url_feed_read_with_other_settings_is_downloaded_whole_though_its_server_says_unchanged(
    db: asyncpg.Pool,
) -> None:
    def route(request: Request) -> Answer:
        if request.headers.get("if-none-match") == '"v1"':
            return Answer(304)
        return Answer(200, b"203.0.113.7\n", {"ETag": '"v1"', "Content-Type": "text/plain"})

    async with serving(route) as server:
        async with analyzer_parts(db, config(url=server.url("/feed.txt"))) as (poller, _):
            effect = await refreshed(db, poller)
            assert effect["result"] == {"feed": "f", "entries": 1, "changed": True}
        assert await said(db, "203.0.113.7") == [("f", "malicious", 50, ())]

        async with analyzer_parts(db, config(url=server.url("/feed.txt"), verdict="suspicious")) as (poller, _):
            effect = await refreshed(db, poller)
            # Not asked whether it changed since the last load: that one was read with the old verdict.
            assert "if-none-match" not in server.requests[-1].headers
            assert effect["result"] == {"feed": "f", "entries": 1, "changed": True}
            assert await said(db, "203.0.113.7") == [("f", "suspicious", 50, ())]
            effect = await refreshed(db, poller)
            assert server.requests[-1].headers["if-none-match"] == '"v1"'  # answered 304
            assert effect["result"] == {"feed": "f", "entries": 1, "changed": False}


async def test_a_feeds_secret_headers_go_to_its_own_origin_only_not_where_it_redirects(db: asyncpg.Pool) -> None:
    def mirror_route(request: Request) -> Answer:
        return Answer(200, b"203.0.113.9\n", {"Content-Type": "text/plain"})

    async with serving(mirror_route) as mirror:

        def home_route(request: Request) -> Answer:
            if request.path == "/feed.txt":  # moved within its own site, then to a mirror elsewhere
                return Answer(301, b"", {"Location": "/v2/feed.txt"})
            return Answer(302, b"", {"Location": mirror.url("/feed.txt")})

        async with serving(home_route) as home:
            conf = config(url=home.url("/feed.txt"), headers_env={"Auth-Key": "FEED_KEY"}, expire_hours=2)
            async with analyzer_parts(db, conf, {"FEED_KEY": "s3cret-feed-key"}) as (poller, _):
                effect = await refreshed(db, poller)
            assert effect["status"] == "succeeded", effect["last_error"]
    assert [r.headers.get("auth-key") for r in home.requests] == ["s3cret-feed-key", "s3cret-feed-key"]
    assert [r.path for r in mirror.requests] == ["/feed.txt"]
    assert "auth-key" not in mirror.requests[0].headers
    assert await listed(db, "203.0.113.9") == {"203.0.113.9": ["f"]}


async def test_vigil_intel_feeds_and_refresh(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "feed.txt"
    path.write_text("192.0.2.1\nnot an indicator\n")
    conf = config(path=str(path))
    async with analyzer_parts(db, conf) as (poller, _):
        await refreshed(db, poller)
    env = {"DATABASE_URL": database_url}

    async def invoke(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)

    shown = await invoke("intel", "feeds")
    assert shown.exit_code == 0, shown.output
    assert "f" in shown.output and "line 2: " in shown.output and "never" in shown.output
    as_json = await invoke("intel", "feeds", "--json")
    [feed] = json.loads(as_json.output)
    assert feed["name"] == "f" and feed["last_success_at"] is None and feed["last_error"].startswith("line 2: ")
    assert feed["next_refresh_at"] is not None

    moved = await invoke("intel", "refresh", "f")
    assert moved.exit_code == 0, moved.output
    assert await db.fetchval(
        "SELECT due_at <= now() FROM timers WHERE kind = $1 AND subject = 'f' AND fired_at IS NULL", feeds.TIMER_KIND
    )
    unknown = await invoke("intel", "refresh", "nope")
    assert unknown.exit_code == 1 and "no configured feed" in unknown.output


async def test_the_api_shows_feeds_refreshes_one_and_looks_values_up(db: asyncpg.Pool, database_url: str) -> None:
    async with db.acquire() as conn, conn.transaction():
        await intel.load_feed(conn, source="f", entries=intel.parse_list("203.0.113.0/24\n"))
        await feeds.sync(conn, config(path="/nonexistent/feed.txt"))
        viewer = await identity.create_token(conn, name="dash", role="viewer", kind="integration", created_by="t")
        commander = await identity.create_token(conn, name="alice", role="commander", kind="person", created_by="t")
    settings = VigilSettings(database_url=database_url)
    runtime = Runtime(service="analyzer", settings=settings, pool=db, producer=None, names=NAMES)  # type: ignore[arg-type]
    app = build_app(runtime, api.routers(runtime))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analyzer") as client:
        assert (await client.get("/api/v1/intel/feeds")).status_code == 401
        as_viewer = {"Authorization": f"Bearer {viewer.text}"}
        [feed] = (await client.get("/api/v1/intel/feeds", headers=as_viewer)).json()
        assert (feed["name"], feed["entries"], feed["location"]) == ("f", 1, "/nonexistent/feed.txt")
        found = (await client.get("/api/v1/intel/lookup", params={"value": "203.0.113.9"}, headers=as_viewer)).json()
        assert (found["verdict"], found["feeds"], found["matches"][0]["value"]) == (
            "malicious",
            ["f"],
            "203.0.113.0/24",
        )
        bad = await client.get("/api/v1/intel/lookup", params={"value": "not one"}, headers=as_viewer)
        assert bad.status_code == 422

        refused = await client.post("/api/v1/intel/feeds/f/refresh", headers=as_viewer)
        assert refused.status_code == 403
        as_commander = {"Authorization": f"Bearer {commander.text}"}
        assert (await client.post("/api/v1/intel/feeds/nope/refresh", headers=as_commander)).status_code == 404
        moved = await client.post("/api/v1/intel/feeds/f/refresh", headers=as_commander)
        assert moved.status_code == 200 and moved.json()["next_refresh_at"] is not None
    entry = await db.fetchrow("SELECT principal, action, target FROM audit_log ORDER BY id DESC LIMIT 1")
    assert entry is not None and tuple(entry) == ("alice", "intel.refresh", "f")


async def test_a_value_too_long_to_keep_is_passed_over_and_a_load_refused_is_shown(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """URL feeds list long URLs; no index holds one over intel.MAX_VALUE_BYTES. It is passed over, not the
    feed, and its line shown with the feed; a load the database refuses is shown with it as a bad file is."""
    # Random: an index compresses a repetitive value below its bound.
    token = "".join(random.Random(1).choices(string.ascii_letters + string.digits, k=3000))
    path = tmp_path / "urlhaus.txt"
    path.write_text(f"192.0.2.1\nhttp://evil.example.org/x?{token}\nhttp://bad.example.net/\n")
    passed_over = f"1 value(s) longer than {intel.MAX_VALUE_BYTES} bytes passed over: line 2"
    env = {"DATABASE_URL": database_url}

    async def invoke(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)

    async with analyzer_parts(db, config(path=str(path))) as (poller, _):
        effect = await refreshed(db, poller)
        assert effect["status"] == "succeeded", effect["last_error"]
        assert effect["result"] == {"feed": "f", "entries": 2, "changed": True, "passed_over": 1}
        assert await listed(db, "http://bad.example.net/") == {"http://bad.example.net/": ["f"]}
        status = await db.fetchrow("SELECT last_error, passed_over FROM intel_feeds WHERE name = 'f'")
        assert status is not None and status["last_error"] is None and status["passed_over"] == passed_over
        # The same file again: nothing loaded, and what it passes over still shown.
        assert (await refreshed(db, poller))["result"] == {"feed": "f", "entries": 2, "changed": False}
        shown = await invoke("intel", "feeds")
        assert shown.exit_code == 0 and f"last load: {passed_over}" in shown.output, shown.output

        # A NUL, which no text column holds: refused with its line, the last good data kept.
        path.write_text("http://bad.example.net/\nhttp://evil.example.org/a\x00b\n")
        effect = await refreshed(db, poller)
        assert effect["status"] in ("failed", "parked")
        error = await db.fetchval("SELECT last_error FROM intel_feeds WHERE name = 'f'")
        assert error is not None and "line 2: a value holds a NUL character" in error, error
        assert await listed(db, "http://bad.example.net/") == {"http://bad.example.net/": ["f"]}

    path.write_text(f"http://evil.example.org/x?{token}\nhttp://bad.example.net/\n")
    loaded = await invoke("intel", "load", str(path), "--source", "by-hand", "--format", "list")
    assert loaded.exit_code == 0, loaded.output
    assert f"{path}: 1 value(s) longer than" in loaded.output and "1 entries loaded into by-hand" in loaded.output
