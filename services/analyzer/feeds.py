"""Threat-intel feeds refreshed on a schedule, each on its own durable timer.

A feed's timer (kind ``intel.refresh``) does no I/O: in its transaction it enqueues the feed's
fetch as an effect and sets the next timer. The effects runner then fetches the feed outside any
transaction (reads the file, or downloads the URL with a conditional GET), parses it, and loads it
in a transaction of its own. A feed whose content has not changed since its last load, nor the
settings it is read with (format, kind, columns, verdict, confidence, tags), is not loaded again;
a bad one (a line that is no indicator, a refusal by its server) loads nothing, keeps the last good
data, and its error is shown with the feed (`vigil intel feeds`) until a refresh succeeds. A value too
long to keep is passed over, not the feed, and the lines of those passed over are shown with it too.
A feed with ``expire_hours`` stops counting when it has not loaded for that long.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import ValidationError

from services.analyzer import intel, retrohunt
from shared import timers
from shared.consumer import HandlerContext
from shared.db import Conn
from shared.effects import Effect, EffectKind, PermanentEffectError, TransientEffectError, enqueue
from shared.effects.domain import bound_text, classify_http_status
from shared.errors import validation_reason

log = logging.getLogger(__name__)

SERVICE = "analyzer"
TIMER_KIND = "intel.refresh"
EFFECT_KIND = "intel.feed"
# A million-entry feed is parsed and loaded within a minute or two even on a busy machine.
FETCH_TIMEOUT_S = 600.0
ERROR_CHARS = 1000
# The settings a feed's content is read with: the same bytes read with another verdict, kind or
# columns are other entries, and load again.
READ_SETTINGS = frozenset({"format", "kind", "columns", "verdict", "confidence", "tags"})


def settings_digest(feed: intel.FeedConfig) -> str:
    settings = feed.model_dump(mode="json", include=set(READ_SETTINGS))
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def load_digest(feed: intel.FeedConfig, content: bytes) -> str:
    """What a load is known by (``intel_feeds.content_sha256``): the settings it read with, and its content.

    Kept as two parts: a 304 brings no content, and whether the last load still holds then is
    whether it was read with the settings the feed has now (``read_as_configured``).
    """
    return f"{settings_digest(feed)}:{hashlib.sha256(content).hexdigest()}"


def read_as_configured(feed: intel.FeedConfig, loaded: str | None) -> bool:
    """The last load (its ``load_digest``) read the feed with its current settings; one from before
    the digest held them never did."""
    return loaded is not None and loaded.startswith(f"{settings_digest(feed)}:")


async def sync(conn: Conn, config: intel.IntelConfig) -> None:
    """Record the configured feeds and give each a refresh timer (at start-up, in one transaction).

    A feed that has none gets one due when its interval after the last good load ends (now, if it
    never loaded). Feeds no longer configured get no more refreshes; their data stays until it
    expires or is loaded again by hand.
    """
    names = [feed.name for feed in config.feeds]
    for feed in config.feeds:
        await conn.execute(
            """INSERT INTO intel_feeds (name, format, location, refresh_minutes) VALUES ($1, $2, $3, $4)
               ON CONFLICT (name) DO UPDATE SET format = $2, location = $3, refresh_minutes = $4,
                   configured = true, updated_at = now()""",
            feed.name,
            feed.format,
            feed.location,
            feed.refresh_minutes,
        )
        pending = await conn.fetchval(
            """SELECT 1 FROM timers WHERE service = $1 AND kind = $2 AND subject = $3
                 AND fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL""",
            SERVICE,
            TIMER_KIND,
            feed.name,
        )
        if pending is None:
            due = await conn.fetchval(
                """SELECT greatest(now(), coalesce(last_success_at + make_interval(mins => refresh_minutes), now()))
                   FROM intel_feeds WHERE name = $1""",
                feed.name,
            )
            await timers.schedule(conn, service=SERVICE, kind=TIMER_KIND, subject=feed.name, due_at=due)
    await conn.execute("UPDATE intel_feeds SET configured = false, updated_at = now() WHERE name <> ALL($1)", names)
    for subject in await conn.fetch(
        """SELECT subject FROM timers WHERE service = $1 AND kind = $2 AND subject <> ALL($3)
             AND fired_at IS NULL AND cancelled_at IS NULL""",
        SERVICE,
        TIMER_KIND,
        names,
    ):
        await timers.cancel(conn, service=SERVICE, kind=TIMER_KIND, subject=subject["subject"])


async def refresh_now(conn: Conn, *, name: str) -> bool:
    """Move a configured feed's refresh timer to now (`vigil intel refresh`); False if no such feed."""
    if not await conn.fetchval("SELECT configured FROM intel_feeds WHERE name = $1", name):
        return False
    now = await conn.fetchval("SELECT now()")
    await timers.schedule(conn, service=SERVICE, kind=TIMER_KIND, subject=name, due_at=now)
    return True


async def status(conn: Conn) -> list[asyncpg.Record]:
    """Every feed with its last refresh, entries, last error and next refresh, for operators."""
    return await conn.fetch(
        """SELECT f.name, f.format, f.location, f.refresh_minutes, f.configured, f.last_attempt_at,
                  f.last_success_at, f.last_error, f.last_error_at, f.passed_over, s.entries, s.expires_at,
                  (SELECT min(t.due_at) FROM timers t
                    WHERE t.service = $1 AND t.kind = $2 AND t.subject = f.name
                      AND t.fired_at IS NULL AND t.cancelled_at IS NULL AND t.parked_at IS NULL) AS next_refresh_at
             FROM intel_feeds f LEFT JOIN intel_sources s ON s.source = f.name
            ORDER BY f.name""",
        SERVICE,
        TIMER_KIND,
    )


@dataclass(frozen=True)
class Fetched:
    """What a fetch brought: the content (None: not modified since the last load) and its validators."""

    content: bytes | None
    etag: str | None = None
    last_modified: str | None = None


class FeedRefresher:
    """The feeds' timer handler and their fetch effect, for the configured feeds."""

    def __init__(
        self, config: intel.IntelConfig, *, pool: asyncpg.Pool, environ: Mapping[str, str] = os.environ
    ) -> None:
        self.feeds = {feed.name: feed for feed in config.feeds}
        self.pool = pool
        self.environ = environ

    @property
    def timer_handlers(self) -> dict[str, timers.TimerHandler]:
        return {TIMER_KIND: self.on_timer}

    async def on_timer(self, ctx: HandlerContext, timer: timers.Timer) -> None:
        feed = self.feeds.get(timer.subject)
        if feed is None:
            return  # no longer configured here: no fetch and no next refresh
        await enqueue(
            ctx.conn,
            service=SERVICE,
            kind=EFFECT_KIND,
            key=f"{feed.name}:{timer.id}",
            subject=f"{intel.FEED_SUBJECT_PREFIX}{feed.name}",
            target=feed.name,
            payload=feed.model_dump(mode="json"),
        )
        now = await ctx.conn.fetchval("SELECT now()")
        await timers.schedule(
            ctx.conn,
            service=SERVICE,
            kind=TIMER_KIND,
            subject=feed.name,
            due_at=now + timedelta(minutes=feed.refresh_minutes),
        )

    def effect_kinds(self) -> Sequence[EffectKind]:
        # One feed at a time: parsing and loading a large one takes a core for seconds.
        return [
            EffectKind(
                name=EFFECT_KIND,
                execute=self.execute,
                timeout_s=FETCH_TIMEOUT_S,
                max_attempts=3,
                concurrency=1,
                per_target_concurrency=1,
            )
        ]

    async def execute(self, effect: Effect) -> dict[str, Any]:
        try:
            feed = intel.FeedConfig.model_validate(effect.payload)
        except ValidationError as exc:
            raise PermanentEffectError(f"invalid {effect.kind} payload: {validation_reason(exc)}") from exc
        try:
            return await self.refresh(feed)
        except intel.IntelError as exc:
            await self._failed(feed.name, str(exc))
            raise PermanentEffectError(f"feed {feed.name}: {exc}") from exc
        except PermanentEffectError as exc:
            await self._failed(feed.name, str(exc))
            raise
        except (OSError, httpx.HTTPError, TransientEffectError) as exc:
            await self._failed(feed.name, f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            # Whatever else stops a load (the database refusing it) is shown with the feed as well.
            await self._failed(feed.name, f"{type(exc).__name__}: {exc}")
            raise

    async def refresh(self, feed: intel.FeedConfig) -> dict[str, Any]:
        """Fetch, parse and load one feed; the last good data stays unless all of it parsed."""
        async with self.pool.acquire() as conn:
            known = await conn.fetchrow(
                "UPDATE intel_feeds SET last_attempt_at = now() WHERE name = $1 "
                "RETURNING content_sha256, etag, last_modified",
                feed.name,
            )
        if feed.path is not None and feed.format == "misp" and await asyncio.to_thread(Path(feed.path).is_dir):
            entries = await asyncio.to_thread(intel.read_misp_feed, Path(feed.path), defaults=feed.defaults)
            return await self._load(feed, entries, digest=None, fetched=Fetched(None))
        fetched = await (self._download(feed, known) if feed.url else self._read(feed))
        digest = load_digest(feed, fetched.content) if fetched.content is not None else None
        # The same content read with the same settings: nothing to load (a 304 is asked for only then).
        if fetched.content is None or (known is not None and digest == known["content_sha256"]):
            return await self._unchanged(feed, fetched)
        text = _text(fetched.content)
        entries = await asyncio.to_thread(
            intel.parse_feed,
            text,
            feed_format=feed.format,
            defaults=feed.defaults,
            kind=feed.kind,
            columns=feed.columns,
        )
        return await self._load(feed, entries, digest=digest, fetched=fetched)

    async def _read(self, feed: intel.FeedConfig) -> Fetched:
        assert feed.path is not None
        return Fetched(await asyncio.to_thread(Path(feed.path).read_bytes))

    async def _download(self, feed: intel.FeedConfig, known: asyncpg.Record | None) -> Fetched:
        assert feed.url is not None
        headers: dict[str, str] = {}
        for header, variable in feed.headers_env.items():
            if variable not in self.environ:
                raise PermanentEffectError(f"feed {feed.name}: {variable} (for the {header} header) is not set")
            headers[header] = self.environ[variable]
        # Asked only if unchanged since a load read as the feed is configured now: after a change of
        # its settings, a 304 would keep the entries the old ones made.
        if known is not None and read_as_configured(feed, known["content_sha256"]):
            if known["etag"]:
                headers["If-None-Match"] = known["etag"]
            if known["last_modified"]:
                headers["If-Modified-Since"] = known["last_modified"]
        limit = feed.max_mb * 1024 * 1024
        # A GET may follow redirects (a feed moved to a mirror), but the feed's secrets go to its own
        # origin only: httpx drops Authorization on a redirect elsewhere, not the headers a feed names.
        origin = _origin(httpx.URL(feed.url))
        secrets = set(feed.headers_env)

        async def keep_secrets_home(request: httpx.Request) -> None:
            if _origin(request.url) != origin:
                for name in secrets:
                    request.headers.pop(name, None)

        async with (
            httpx.AsyncClient(
                timeout=60.0, follow_redirects=True, event_hooks={"request": [keep_secrets_home]}
            ) as client,
            client.stream("GET", feed.url, headers=headers) as response,
        ):
            if response.status_code == 304:
                return Fetched(None)
            if classify_http_status(response.status_code) != "ok":
                excerpt = bound_text((await response.aread())[:2000].decode("utf-8", errors="replace"), 200)
                message = f"HTTP {response.status_code} from {response.url.host}: {excerpt}"
                if classify_http_status(response.status_code) == "permanent":
                    raise PermanentEffectError(message)
                raise TransientEffectError(message)
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content.extend(chunk)
                if len(content) > limit:
                    raise PermanentEffectError(f"feed {feed.name}: larger than max_mb ({feed.max_mb} MB)")
            return Fetched(bytes(content), response.headers.get("ETag"), response.headers.get("Last-Modified"))

    async def _load(
        self, feed: intel.FeedConfig, entries: intel.Entries, *, digest: str | None, fetched: Fetched
    ) -> dict[str, Any]:
        passed_over = entries.summary()
        if passed_over is not None:
            log.warning("intel feed %s: %s", feed.name, passed_over)
        async with self.pool.acquire() as conn, conn.transaction():
            now: datetime = await conn.fetchval("SELECT now()")
            loaded = await intel.load_feed(conn, source=feed.name, entries=entries, expires_at=_expiry(feed, now))
            await retrohunt.hunt(conn, source=feed.name, service=SERVICE)
            await conn.execute(
                """UPDATE intel_feeds SET last_success_at = now(), last_error = NULL, last_error_at = NULL,
                       content_sha256 = $2, etag = $3, last_modified = $4, passed_over = $5, updated_at = now()
                   WHERE name = $1""",
                feed.name,
                digest,
                fetched.etag,
                fetched.last_modified,
                bound_text(passed_over, ERROR_CHARS) if passed_over is not None else None,
            )
        log.info("intel feed %s loaded: %d entries", feed.name, loaded)
        result: dict[str, Any] = {"feed": feed.name, "entries": loaded, "changed": True}
        return result | ({"passed_over": len(entries.passed_over)} if entries.passed_over else {})

    async def _unchanged(self, feed: intel.FeedConfig, fetched: Fetched) -> dict[str, Any]:
        """The same content as the last load: nothing to load; the feed counts as refreshed."""
        async with self.pool.acquire() as conn, conn.transaction():
            now = await conn.fetchval("SELECT now()")
            # A feed counting again after it expired: the analyzer looks its indicators up again.
            await conn.execute(intel.NUMBER_CHANGE)
            entries = await conn.fetchval(
                f"""UPDATE intel_sources SET loaded_at = now(), expires_at = $2,
                        changed = CASE WHEN expires_at <= now() THEN {intel.CHANGE} ELSE changed END
                    WHERE source = $1 RETURNING entries""",
                feed.name,
                _expiry(feed, now),
            )
            await conn.execute(
                """UPDATE intel_feeds SET last_success_at = now(), last_error = NULL, last_error_at = NULL,
                       etag = coalesce($2, etag), last_modified = coalesce($3, last_modified), updated_at = now()
                   WHERE name = $1""",
                feed.name,
                fetched.etag,
                fetched.last_modified,
            )
        return {"feed": feed.name, "entries": entries, "changed": False}

    async def _failed(self, name: str, error: str) -> None:
        log.warning("intel feed %s not refreshed: %s", name, error)
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE intel_feeds SET last_error = $2, last_error_at = now(), updated_at = now() WHERE name = $1",
                name,
                bound_text(error, ERROR_CHARS),
            )


def _expiry(feed: intel.FeedConfig, now: datetime) -> datetime | None:
    return now + timedelta(hours=feed.expire_hours) if feed.expire_hours is not None else None


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        raise intel.IntelError("not UTF-8 text", line=line) from exc


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: a move from https to http is another origin too."""
    return url.scheme, url.host, url.port
