"""Incident rooms: a Slack channel of the incident's own, where its people work and every notice about it lands.

With ``rooms`` in the notifications file, an incident of one of its severities (SEV1 and SEV2 unless
it says otherwise) gets a room when its commander is first paged at such a severity: a channel named
``<prefix>-<short id>-<title>``, its topic the incident's severity, title and commander, its
commander invited (by the address the notifications file has for them on e-mail, else their name
when it is an address). From then on every notice about the incident (pages, updates, moves, steps
awaiting approval, reminders) is posted there too, by the channel's name, as Slack's incoming
messages are worded. A minute after the incident is closed, its room is archived; reopened, it is
taken out of the archive.

Opening, posting and archiving are effects of the coordinator's runner. Slack refuses a second
channel of a name, so opening again (a retry, another coordinator) finds the room it opened and
takes it; a post that comes before its room exists is retried until it does.
"""

from __future__ import annotations

import logging
import re
import ssl
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import certifi
import httpx

from services.coordinator.notifications import (
    EFFECT_KIND_PREFIX,
    ROOM,
    NotificationsConfig,
    Rooms,
)
from shared.db import Conn
from shared.effects import Effect, EffectKind, OutcomeHandler, PermanentEffectError, TransientEffectError, enqueue

log = logging.getLogger(__name__)

SERVICE = "coordinator"
OPEN, ARCHIVE, POST = "room.open", "room.archive", EFFECT_KIND_PREFIX + ROOM
NAME_CHARS = 80  # Slack's longest channel name
TOPIC_CHARS = 250
# Slack's errors that pass: worth another attempt.
PASSING = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})
LIST_PAGES = 20  # of 1,000 channels each, looked through for a room opened before


def room_name(prefix: str, incident_id: str, title: str) -> str:
    """The room's channel name: lower case letters, digits and hyphens, at most 80 characters."""
    folded = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")
    name = f"{prefix}-{incident_id[:8].lower()}" + (f"-{words}" if words else "")
    return name[:NAME_CHARS].rstrip("-_")


def topic(severity: str, title: str, commander: str) -> str:
    return f"{severity} · {title} · commander {commander}"[:TOPIC_CHARS]


async def open_room(
    conn: Conn,
    config: NotificationsConfig,
    *,
    incident_id: str,
    title: str,
    severity: str,
    commander: str,
) -> str | None:
    """Give the incident its room if its severity calls for one and it has none: set in the caller's transaction,
    so that the notices enqueued after it are posted there. Return the room's name when it was given now."""
    rooms = config.file.rooms
    if rooms is None or severity not in rooms.severities:
        return None
    name = room_name(rooms.prefix, incident_id, title)
    given = await conn.fetchval(
        "UPDATE coordinator_incidents SET room = $2 WHERE incident_id = $1 AND room IS NULL RETURNING room",
        incident_id,
        name,
    )
    if given is None:
        return None
    await enqueue(
        conn,
        service=SERVICE,
        kind=OPEN,
        key=f"{incident_id}:room",
        subject=incident_id,
        target="slack",
        payload={"name": name, "topic": topic(severity, title, commander), "invite": _emails(config, commander)},
    )
    return name


def _emails(config: NotificationsConfig, person: str) -> list[str]:
    """The addresses Slack may know a person by: their e-mail in the notifications file, else their name."""
    listed = config.file.people.get(person)
    address = listed.email if listed is not None and listed.email else person
    return [address] if "@" in address else []


async def set_archived(conn: Conn, config: NotificationsConfig, *, incident_id: str, archived: bool) -> bool:
    """Archive the incident's room (closed) or take it out of the archive (reopened); False when it has none.

    Either a while later (``archive_after_s``): the notices of the move are posted first, and a reopening
    comes after the archiving it undoes, on the same room, one at a time.
    """
    rooms = config.file.rooms
    if rooms is None:
        return False
    name = await conn.fetchval("SELECT room FROM coordinator_incidents WHERE incident_id = $1", incident_id)
    if name is None:
        return False
    # One key per move: archived, reopened and archived again is three effects.
    moves = await conn.fetchval(
        "SELECT count(*) FROM effects WHERE service = $1 AND kind = $2 AND subject = $3", SERVICE, ARCHIVE, incident_id
    )
    return await enqueue(
        conn,
        service=SERVICE,
        kind=ARCHIVE,
        key=f"{incident_id}:room:{'archive' if archived else 'unarchive'}:{moves}",
        subject=incident_id,
        target=f"slack:{name}",
        payload={"name": name, "archived": archived},
        not_before=datetime.now(UTC) + timedelta(seconds=rooms.archive_after_s),
    )


# ---- Slack's Web API ----------------------------------------------------------------------------


class Slack:
    """The calls a room takes, each answered as settled, worth another attempt, or refused."""

    def __init__(self, rooms: Rooms, token: str) -> None:
        self.rooms = rooms
        self.headers = {"Authorization": f"Bearer {token}", "User-Agent": "vigil"}
        self._tls: ssl.SSLContext | None = None
        self.ids: dict[str, str] = {}  # rooms' channel ids by name, as this process found them

    async def call(self, client: httpx.AsyncClient, method: str, body: dict[str, Any], *, ok: set[str] = set()) -> Any:  # noqa: B006 - never changed
        """Call a method; Slack's ``ok: false`` answers are refusals, but for those passing and those in ``ok``."""
        try:
            response = await client.post(f"{self.rooms.api_url}/{method}", json=body)
        except httpx.HTTPError as exc:  # its text may quote the request's headers: said by its kind
            raise TransientEffectError(f"{method}: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientEffectError(f"{method}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PermanentEffectError(f"{method}: HTTP {response.status_code}")
        answer = response.json()
        error = answer.get("error")
        if answer.get("ok") or error in ok:
            return answer
        if error in PASSING:
            raise TransientEffectError(f"{method}: {error}")
        raise PermanentEffectError(f"{method}: {error}")

    def client(self) -> httpx.AsyncClient:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=certifi.where())
        return httpx.AsyncClient(headers=self.headers, timeout=self.rooms.timeout_s, verify=self._tls)

    async def find(self, client: httpx.AsyncClient, name: str) -> dict[str, Any] | None:
        """The channel of this name, archived or not."""
        cursor = ""
        types = "private_channel" if self.rooms.private else "public_channel"
        for _ in range(LIST_PAGES):
            body = {"types": types, "limit": 1000, "exclude_archived": False, "cursor": cursor}
            answer = await self.call(client, "conversations.list", body)
            for channel in answer.get("channels", []):
                if channel.get("name") == name:
                    return channel  # type: ignore[no-any-return]
            cursor = (answer.get("response_metadata") or {}).get("next_cursor") or ""
            if not cursor:
                return None
        raise PermanentEffectError(f"{name}: not found in the first {LIST_PAGES * 1000} channels")

    async def open(self, effect: Effect) -> dict[str, Any]:
        name = effect.payload["name"]
        async with self.client() as client:
            made = await self.call(
                client, "conversations.create", {"name": name, "is_private": self.rooms.private}, ok={"name_taken"}
            )
            channel = made.get("channel")
            if channel is None:  # opened before (a retry, another coordinator): that one is the room
                channel = await self.find(client, name)
                if channel is None:
                    raise TransientEffectError(f"{name}: its name is taken, but no channel of it is listed yet")
                if channel.get("is_archived"):
                    await self.call(client, "conversations.unarchive", {"channel": channel["id"]}, ok={"not_archived"})
            channel_id = self.ids[name] = channel["id"]
            await self.call(client, "conversations.setTopic", {"channel": channel_id, "topic": effect.payload["topic"]})
            invited, unknown = [], []
            for email in effect.payload.get("invite", []):
                found = await self.call(client, "users.lookupByEmail", {"email": email}, ok={"users_not_found"})
                if found.get("user"):
                    invited.append(found["user"]["id"])
                else:
                    unknown.append(email)
            if invited:
                await self.call(
                    client,
                    "conversations.invite",
                    {"channel": channel_id, "users": ",".join(invited)},
                    ok={"already_in_channel", "cant_invite_self"},
                )
        return {"room": name, "channel_id": channel_id, "invited": len(invited), "not_on_slack": unknown}

    async def post(self, effect: Effect) -> dict[str, Any]:
        name = effect.payload["channel"]
        async with self.client() as client:
            channel_id = self.ids.get(name)
            if channel_id is None:
                found = await self.find(client, name)
                if found is None:
                    raise TransientEffectError(f"{name}: the room is not open yet")
                channel_id = self.ids[name] = found["id"]
            # By its id: a private channel is not found by its name.
            answer = await self.call(client, "chat.postMessage", {**effect.payload, "channel": channel_id})
        return {"room": name, "ts": answer.get("ts")}

    async def archive(self, effect: Effect) -> dict[str, Any]:
        name, archived = effect.payload["name"], bool(effect.payload["archived"])
        async with self.client() as client:
            channel = await self.find(client, name)
            if channel is None:
                return {"room": name, "archived": archived, "found": False}
            if archived:
                await self.call(client, "conversations.archive", {"channel": channel["id"]}, ok={"already_archived"})
            else:
                await self.call(client, "conversations.unarchive", {"channel": channel["id"]}, ok={"not_archived"})
        return {"room": name, "archived": archived}


def effect_kinds(config: NotificationsConfig, *, on_outcome: OutcomeHandler | None = None) -> list[EffectKind]:
    """The effect kinds that open, post to and archive rooms (none without ``rooms`` in the file)."""
    rooms = config.file.rooms
    if rooms is None or config.rooms_token is None:
        return []
    slack = Slack(rooms, config.rooms_token.get_secret_value())
    runs: dict[str, Callable[[Effect], Awaitable[dict[str, Any]]]] = {
        OPEN: slack.open,
        POST: slack.post,
        ARCHIVE: slack.archive,
    }
    return [
        EffectKind(
            name=name,
            execute=run,
            timeout_s=rooms.timeout_s * 6,  # opening is several calls
            max_attempts=rooms.max_attempts,
            concurrency=8,
            # A room's posts one at a time, so that they read in order there.
            per_target_concurrency=1,
            on_outcome=on_outcome,
        )
        for name, run in runs.items()
    ]
