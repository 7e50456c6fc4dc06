"""Incident rooms: a Slack channel of the incident's own, where its people work and every notice about it lands.

With ``rooms`` in the notifications file, an incident of one of its severities (SEV1 and SEV2 unless
it says otherwise) gets a room when its commander is first paged at such a severity: a channel named
``<prefix>-<short id>-<title>``, its topic the incident's severity, title and commander, its
commander invited (by the address the notifications file has for them on e-mail, else their name
when it is an address). From then on every notice about the incident (pages, updates, moves, steps
awaiting approval, reminders) is posted there too, as Slack's incoming messages are worded; whoever
is given a role on it is invited, and its topic follows its edits. When the incident is closed (or
merged into another), its room is archived after the last posts; reopened before that, it stays
open; reopened after, it gets a new room (a bot cannot take a channel out of Slack's archive).

Opening is an effect (``room.open``); everything after it (posts, invitations, topics, archiving)
is one effect kind done in order per room (``notify.room``): a post waiting for a retry holds the
ones after it, on every coordinator, and the archiving comes after every post enqueued before it.
Slack refuses a second channel of a name, so opening again (a retry, another coordinator) finds the
room it opened and takes it; what is enqueued for a room before it is open is held until it is, and
found by the room's name then (after, by its channel's id). A room opening that fails for good is
given up, with the posts waiting for it, and the incident gets no other.
"""

from __future__ import annotations

import logging
import re
import ssl
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import certifi
import httpx

from services.coordinator.notifications import (
    EFFECT_KIND_PREFIX,
    ROOM,
    NotificationsConfig,
    Rooms,
    room_hold,
    room_of,
)
from shared.db import Conn
from shared.effects import (
    Effect,
    EffectKind,
    OutcomeHandler,
    PermanentEffectError,
    TransientEffectError,
    cancel_pending,
    enqueue,
    release_pending,
)

log = logging.getLogger(__name__)

SERVICE = "coordinator"
OPEN, IN_ROOM = "room.open", EFFECT_KIND_PREFIX + ROOM
NAME_CHARS = 80  # Slack's longest channel name
TOPIC_CHARS = 250
# Slack's errors that pass: worth another attempt. (Not fatal_error: part of what was asked may be done.)
PASSING = frozenset({"ratelimited", "internal_error", "service_unavailable", "request_timeout"})
LIST_PAGES = 20  # of 1,000 channels each, looked through for a room
# Read methods take their arguments as a query; the rest, JSON.
READS = frozenset({"conversations.list", "users.lookupByEmail", "conversations.history"})
# The metadata type of Vigil's posts, which carries each post's idempotency key.
POST_EVENT = "vigil_post"
# A post run again looks for itself among the room's latest messages since it was enqueued (less this margin
# for clocks apart), this many at most: later posts come after it in order (``in_order``), so few.
HISTORY_MARGIN_S = 60
HISTORY_LIMIT = 100
HISTORY_PAGES = 10
HISTORY_REFUSED = frozenset({"missing_scope", "not_allowed_token_type", "not_in_channel"})


def room_name(prefix: str, incident_id: str, title: str, *, opening: int = 1) -> str:
    """The room's channel name: lower case letters, digits and hyphens, at most 80 characters.

    ``opening``: the incident's n-th room (reopened after its room was archived): ``-r<n>`` at the end.
    """
    folded = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")
    suffix = f"-r{opening}" if opening > 1 else ""
    name = f"{prefix}-{incident_id[:8].lower()}" + (f"-{words}" if words else "")
    return name[: NAME_CHARS - len(suffix)].rstrip("-_") + suffix


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
    opening: int = 1,
) -> str | None:
    """Give the incident its room if its severity calls for one and it has none: set in the caller's transaction,
    so that the notices enqueued after it are posted there. Return the room's name when it was given now.

    Whoever holds a role on the incident is invited with its commander. An incident whose room could not be
    opened gets none again.
    """
    rooms = config.file.rooms
    if rooms is None or severity not in rooms.severities:
        return None
    name = room_name(rooms.prefix, incident_id, title, opening=opening)
    roles = await conn.fetchval(
        """UPDATE coordinator_incidents SET room = $2, room_id = NULL, room_open = false
           WHERE incident_id = $1 AND room IS NULL AND NOT room_given_up RETURNING roles""",
        incident_id,
        name,
    )
    if roles is None:
        return None
    people = list(dict.fromkeys([commander, *roles.values()]))
    opening_now = await enqueue(
        conn,
        service=SERVICE,
        kind=OPEN,
        key=f"{incident_id}:room:{name}",
        subject=incident_id,
        target=f"slack:{name}",
        payload={"name": name, "topic": topic(severity, title, commander), "invite": emails(config, people)},
    )
    if not opening_now:  # a room of this name was asked for before, and came to nothing: none now either
        await conn.execute("UPDATE coordinator_incidents SET room = NULL WHERE incident_id = $1", incident_id)
        return None
    return name


def emails(config: NotificationsConfig, people: list[str]) -> list[str]:
    """The addresses Slack may know people by: their e-mail in the notifications file, else their name."""
    found = []
    for person in people:
        listed = config.file.people.get(person)
        address = listed.email if listed is not None and listed.email else person
        if "@" in address:
            found.append(address)
    return found


async def in_room(
    conn: Conn, config: NotificationsConfig, *, incident_id: str, key: str, action: dict[str, Any]
) -> bool:
    """Enqueue something to do in the incident's room, after everything enqueued for it before (held until the
    room is open); False: it has no room."""
    room = await room_of(conn, config, incident_id)
    if room is None:
        return False
    payload = {"channel": room.name, **action} | ({"channel_id": room.channel_id} if room.channel_id else {})
    return await enqueue(
        conn,
        service=SERVICE,
        kind=IN_ROOM,
        key=f"{incident_id}:room:{key}",
        subject=incident_id,
        target=f"slack:{room.name}",
        payload=payload,
        not_before=room_hold(room.open),
    )


async def opened(conn: Conn, *, incident_id: str, name: str, channel_id: str) -> int:
    """The room is open: what waited for it is due now. Return how many."""
    await conn.execute(
        """UPDATE coordinator_incidents SET room_open = true, room_id = $3
           WHERE incident_id = $1 AND room = $2""",
        incident_id,
        name,
        channel_id,
    )
    return await release_pending(conn, service=SERVICE, kind=IN_ROOM, target=f"slack:{name}")


async def archive(conn: Conn, config: NotificationsConfig, *, incident_id: str, because: str) -> bool:
    """Archive the incident's room once everything enqueued for it before is done (it was closed or merged)."""
    return await in_room(conn, config, incident_id=incident_id, key=f"archive:{because}", action={"action": "archive"})


async def reopen(
    conn: Conn, config: NotificationsConfig, *, incident_id: str, title: str, severity: str, commander: str
) -> str | None:
    """The incident was reopened: its room stays if it was not archived yet; else it gets a new one (a bot cannot
    take a channel out of the archive). Return the new room's name, if one was given."""
    room = await room_of(conn, config, incident_id)
    if room is None or config.file.rooms is None:
        return None
    name = room.name
    if await cancel_pending(conn, service=SERVICE, kind=IN_ROOM, key_prefix=f"{incident_id}:room:archive:"):
        return None  # not archived yet, and now it will not be
    last = re.search(r"-r(\d+)$", name)
    opening = int(last[1]) + 1 if last else 2
    await conn.execute("UPDATE coordinator_incidents SET room = NULL WHERE incident_id = $1", incident_id)
    return await open_room(
        conn, config, incident_id=incident_id, title=title, severity=severity, commander=commander, opening=opening
    )


async def give_up(conn: Conn, *, incident_id: str, name: str) -> int:
    """A room that could not be opened: the incident has none, nor will it; what waited to be done there is
    cancelled. (An operator who retries the opening makes a channel Vigil no longer posts to.)"""
    await conn.execute(
        """UPDATE coordinator_incidents SET room = NULL, room_given_up = true
           WHERE incident_id = $1 AND room = $2""",
        incident_id,
        name,
    )
    return await cancel_pending(conn, service=SERVICE, kind=IN_ROOM, target=f"slack:{name}")


# ---- Slack's Web API ----------------------------------------------------------------------------


class Slack:
    """The calls a room takes, each answered as settled, worth another attempt, or refused."""

    def __init__(self, rooms: Rooms, token: str) -> None:
        self.rooms = rooms
        self.headers = {"Authorization": f"Bearer {token}", "User-Agent": "vigil"}
        self._tls: ssl.SSLContext | None = None
        self.ids: dict[str, str] = {}  # rooms' channel ids by name, as this process opened or found them

    async def call(
        self, client: httpx.AsyncClient, method: str, body: dict[str, Any], *, ok: frozenset[str] = frozenset()
    ) -> Any:
        """Call a method; Slack's ``ok: false`` answers are refusals, but for those passing and those in ``ok``."""
        url = f"{self.rooms.api_url}/{method}"
        try:
            if method in READS:
                query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in body.items()}
                response = await client.get(url, params=query)
            else:
                response = await client.post(url, json=body)
        except httpx.HTTPError as exc:  # its text may quote the request's headers: said by its kind
            raise TransientEffectError(f"{method}: {type(exc).__name__}") from None
        if response.status_code == 429:
            wait = response.headers.get("retry-after", "")
            after = float(wait) if wait.isdigit() else None
            raise TransientEffectError(f"{method}: rate limited", retry_after_s=after)
        if response.status_code >= 500:
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

    async def find(self, client: httpx.AsyncClient, name: str, *, archived: bool = False) -> dict[str, Any] | None:
        """The channel of this name (``archived``: archived ones too)."""
        cursor = ""
        types = "private_channel" if self.rooms.private else "public_channel"
        for _ in range(LIST_PAGES):
            query = {"types": types, "limit": 1000, "exclude_archived": not archived, "cursor": cursor}
            answer = await self.call(client, "conversations.list", query)
            for channel in answer.get("channels", []):
                if channel.get("name") == name:
                    return channel  # type: ignore[no-any-return]
            cursor = (answer.get("response_metadata") or {}).get("next_cursor") or ""
            if not cursor:
                return None
        raise PermanentEffectError(f"{name}: not found in the first {LIST_PAGES * 1000} channels")

    async def channel(self, client: httpx.AsyncClient, name: str) -> dict[str, Any]:
        """The room's channel, found by its name (what was enqueued before it opened knows no id)."""
        found = await self.find(client, name, archived=True)
        if found is None:  # it opened (what waits for it was released then): renamed or deleted since
            raise PermanentEffectError(f"{name}: no channel of this name (renamed or deleted in Slack?)")
        return found

    async def invite(self, client: httpx.AsyncClient, channel_id: str, addresses: list[str]) -> dict[str, Any]:
        """Invite those Slack knows by these addresses; one it does not know, or will not invite, is reported."""
        invited: list[str] = []
        not_invited: list[str] = []
        for email in addresses:
            found = await self.call(client, "users.lookupByEmail", {"email": email}, ok=frozenset({"users_not_found"}))
            if not found.get("user"):
                not_invited.append(email)
                continue
            answer = await self.call(
                client,
                "conversations.invite",
                {"channel": channel_id, "users": found["user"]["id"]},
                # A guest, a deactivated account: the room goes on without them, and says so.
                ok=frozenset({"already_in_channel", "cant_invite_self", "user_is_restricted", "cant_invite"}),
            )
            (invited if answer.get("ok") or answer.get("error") == "already_in_channel" else not_invited).append(email)
        return {"invited": invited, "not_invited": not_invited}

    async def open(self, effect: Effect) -> dict[str, Any]:
        name = effect.payload["name"]
        async with self.client() as client:
            made = await self.call(
                client,
                "conversations.create",
                {"name": name, "is_private": self.rooms.private},
                ok=frozenset({"name_taken"}),
            )
            channel = made.get("channel")
            if channel is None:  # opened before (a retry, another coordinator): that one is the room
                channel = await self.find(client, name, archived=True)
                if channel is None:
                    raise TransientEffectError(f"{name}: its name is taken, but no channel of it is listed yet")
                if channel.get("is_archived"):
                    raise PermanentEffectError(f"{name}: a channel of this name is archived")
            channel_id = self.ids[name] = channel["id"]
            await self.call(client, "conversations.setTopic", {"channel": channel_id, "topic": effect.payload["topic"]})
            people = await self.invite(client, channel_id, effect.payload.get("invite", []))
        return {"room": name, "channel_id": channel_id, **people}

    async def act(self, effect: Effect) -> dict[str, Any]:
        """Post in the room, set its topic and invite people, or archive it: as the payload's ``action`` says."""
        payload = dict(effect.payload)
        name, action = payload.pop("channel"), payload.pop("action", "post")
        channel_id = payload.pop("channel_id", None) or self.ids.get(name)
        async with self.client() as client:
            if channel_id is None:
                found = await self.channel(client, name)
                if found.get("is_archived"):
                    if action == "archive":
                        return {"room": name, "archived": True}  # by a person, before
                    raise PermanentEffectError(f"{name}: the room is archived")
                channel_id = self.ids[name] = found["id"]
            if action == "archive":
                done = frozenset({"already_archived"})
                await self.call(client, "conversations.archive", {"channel": channel_id}, ok=done)
                return {"room": name, "archived": True}
            if action == "update":
                if payload.get("topic"):
                    change = {"channel": channel_id, "topic": payload["topic"]}
                    await self.call(client, "conversations.setTopic", change)
                return {"room": name, **await self.invite(client, channel_id, payload.get("invite", []))}
            if effect.ran_before and (ts := await self.posted(client, channel_id, effect)) is not None:
                return {"room": name, "ts": ts, "posted_before": True}
            # By its id: a private channel is not found by its name. Slack keeps no idempotency key: the post
            # carries its own as metadata, for a later run to find it by.
            marked = {
                **payload,
                "channel": channel_id,
                "metadata": {"event_type": POST_EVENT, "event_payload": {"key": effect.key}},
            }
            answer = await self.call(client, "chat.postMessage", marked)
        return {"room": name, "ts": answer.get("ts")}

    async def posted(self, client: httpx.AsyncClient, channel_id: str, effect: Effect) -> str | None:
        """The ``ts`` of this effect's post if an earlier run made it (its answer lost to a timeout or a stop)."""
        since = effect.created_at.timestamp() - HISTORY_MARGIN_S
        body: dict[str, Any] = {
            "channel": channel_id,
            "oldest": f"{since:.6f}",
            "limit": HISTORY_LIMIT,
            "include_all_metadata": True,
        }
        # Newest first, a page at a time: people may have written much in the room since.
        for _page in range(HISTORY_PAGES):
            answer = await self.call(client, "conversations.history", body, ok=HISTORY_REFUSED)
            if not answer.get("ok"):  # an app without the history scope: posted again, as before it had one
                log.warning(
                    "%s: cannot read the room's history (%s): a post cut short may show twice",
                    effect.target,
                    answer.get("error"),
                )
                return None
            for message in answer.get("messages") or ():
                metadata = message.get("metadata") or {}
                if (
                    metadata.get("event_type") == POST_EVENT
                    and (metadata.get("event_payload") or {}).get("key") == effect.key
                ):
                    return str(message.get("ts"))
            cursor = (answer.get("response_metadata") or {}).get("next_cursor")
            if not answer.get("has_more") or not cursor:
                return None
            body["cursor"] = cursor
        log.warning(
            "%s: more than %d messages since the post: not looked through", effect.target, HISTORY_PAGES * HISTORY_LIMIT
        )
        return None


def effect_kinds(config: NotificationsConfig, *, on_outcome: OutcomeHandler | None = None) -> list[EffectKind]:
    """The effect kinds that open rooms and act in them (none without ``rooms`` in the file)."""
    rooms = config.file.rooms
    if rooms is None or config.rooms_token is None:
        return []
    slack = Slack(rooms, config.rooms_token.get_secret_value())
    runs: dict[str, Callable[[Effect], Awaitable[dict[str, Any]]]] = {OPEN: slack.open, IN_ROOM: slack.act}
    return [
        EffectKind(
            name=name,
            execute=run,
            timeout_s=rooms.timeout_s * 6,  # opening is several calls
            max_attempts=rooms.max_attempts,
            concurrency=8,
            per_target_concurrency=1,
            on_outcome=on_outcome,
            in_order=name == IN_ROOM,  # a room's posts read in the order they were sent
        )
        for name, run in runs.items()
    ]
