"""Incident rooms: a Slack channel per serious incident, every notice posted there, archived when it closes.

The coordinator and its effects runner run against the real Postgres; Slack is a local server that
answers the Web API methods Vigil calls as Slack does (``ok``/``error`` in a 200, the bot token
checked), keeps channels, members, topics and messages, and can be told to fail a creation after
making the channel, as a call whose answer was lost.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.coordinator import notifications, rooms
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from shared.effects import EffectRunner
from shared.events import (
    Assignment,
    AssignRole,
    ChangeState,
    CommandArgs,
    EditIncident,
    IncidentDetected,
    IncidentEdit,
    IncidentEscalated,
    ResolveIncident,
    Severity,
    StateCommand,
)
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests import helpers
from tests.factories import snapshot
from tests.helpers import eventually, serve_app
from tests.integration.test_coordinator_lifecycle import emitted, feed

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

TOKEN = "xoxb-a-bot-token-only-tests-know"
SERIOUS = "5e1f0000-0000-4000-8000-000000000001"
MINOR = "5e1f0000-0000-4000-8000-000000000002"


@dataclass
class Workspace:
    """A Slack workspace as far as rooms go."""

    users: dict[str, str] = field(default_factory=lambda: {"alice@example.com": "U0ALICE"})
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id
    messages: list[dict[str, Any]] = field(default_factory=list)
    fail_creations: int = 0
    lose_post_answers: int = 0  # posts made whose answer is lost (a gateway timeout after Slack kept them)
    chatter: int = 0  # messages people write in the room after a post whose answer was lost
    history_scope: bool = True
    history_reads: int = 0
    refuse_creation: bool = False
    creations: int = 0
    refused: int = 0

    def by_name(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.channels.values() if c["name"] == name), None)


READS = {"conversations.list", "users.lookupByEmail", "conversations.history"}  # GET with a query, as Slack says


def slack(space: Workspace) -> Starlette:
    async def method(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            space.refused += 1
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        name = request.path_params["method"]
        if (request.method == "GET") != (name in READS):
            return JSONResponse({"ok": False, "error": "invalid_arguments"})
        body: dict[str, Any] = dict(request.query_params) if name in READS else await request.json()
        channel = space.channels.get(str(body.get("channel", "")))
        match name:
            case "conversations.create":
                if space.refuse_creation:
                    return JSONResponse({"ok": False, "error": "restricted_action"})
                if space.by_name(body["name"]):
                    return JSONResponse({"ok": False, "error": "name_taken"})
                made = {"id": f"C{len(space.channels) + 1:04d}", "name": body["name"], "is_archived": False}
                space.channels[made["id"]] = {**made, "members": set(), "topic": "", "private": body["is_private"]}
                space.creations += 1
                if space.fail_creations:
                    space.fail_creations -= 1
                    return Response("upstream timed out", status_code=504)
                return JSONResponse({"ok": True, "channel": made})
            case "conversations.list":
                shown = [
                    c for c in space.channels.values() if body["exclude_archived"] == "false" or not c["is_archived"]
                ]
                listed = [{k: c[k] for k in ("id", "name", "is_archived")} for c in shown]
                return JSONResponse({"ok": True, "channels": listed, "response_metadata": {"next_cursor": ""}})
            case "conversations.setTopic" if channel:
                channel["topic"] = body["topic"]
            case "users.lookupByEmail":
                user = space.users.get(body["email"])
                if user is None:
                    return JSONResponse({"ok": False, "error": "users_not_found"})
                return JSONResponse({"ok": True, "user": {"id": user}})
            case "conversations.invite" if channel:
                channel["members"] |= set(body["users"].split(","))
            case "chat.postMessage" if channel:
                if channel["is_archived"]:
                    return JSONResponse({"ok": False, "error": "is_archived"})
                ts = f"{len(space.messages) + 1}.0001"
                kept = {"channel": channel["name"], "text": body["text"], "blocks": body["blocks"], "ts": ts}
                space.messages.append({**kept, "metadata": body.get("metadata")})
                if space.lose_post_answers:
                    space.lose_post_answers -= 1
                    for n in range(space.chatter):
                        said = {"channel": channel["name"], "text": f"person {n}", "blocks": [], "ts": f"{ts}{n}"}
                        space.messages.append({**said, "metadata": None})
                    return Response("upstream timed out", status_code=504)
                return JSONResponse({"ok": True, "ts": ts})
            case "conversations.history" if channel:
                space.history_reads += 1
                if not space.history_scope:
                    return JSONResponse({"ok": False, "error": "missing_scope"})
                shown = [
                    {"ts": m["ts"], "text": m["text"]}
                    | ({"metadata": m["metadata"]} if body.get("include_all_metadata") == "true" else {})
                    for m in reversed(space.messages)  # newest first, as Slack answers
                    if m["channel"] == channel["name"]
                ]
                start, limit = int(body.get("cursor", 0)), int(body.get("limit", 100))
                more = start + limit < len(shown)
                page = {"ok": True, "messages": shown[start : start + limit], "has_more": more}
                return JSONResponse(page | {"response_metadata": {"next_cursor": str(start + limit) if more else ""}})
            case "conversations.archive" if channel:
                if channel["is_archived"]:
                    return JSONResponse({"ok": False, "error": "already_archived"})
                channel["is_archived"] = True
            case _:
                return JSONResponse({"ok": False, "error": "channel_not_found" if "channel" in body else "unknown"})
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/api/{method}", method, methods=["GET", "POST"])])


def configure(api_url: str) -> notifications.NotificationsConfig:
    # Pages go to a webhook too (never run here): its copy names the room.
    document = f"""
        channels:
          webhook: {{url: "https://paging.example.com/vigil", secret_env: HOOK_SECRET}}
        people:
          alice@example.com: {{webhook: "https://paging.example.com/vigil"}}
          bob@example.com: {{webhook: "https://paging.example.com/vigil"}}
          carol@example.com: {{webhook: "https://paging.example.com/vigil"}}
        routes:
          escalation: {{default: [webhook]}}
        rooms:
          token_env: SLACK_BOT_TOKEN
          api_url: {api_url}
        """
    environ = {"SLACK_BOT_TOKEN": TOKEN + "\n", "HOOK_SECRET": "a-paging-webhook-secret"}
    return notifications.parse_notifications(textwrap.dedent(document), environ=environ)


@contextlib.asynccontextmanager
async def running(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, coordinator: Coordinator
) -> AsyncIterator[None]:
    runner = EffectRunner(
        "coordinator",
        pool,
        names,
        rooms.effect_kinds(coordinator.notices, on_outcome=coordinator.on_room_outcome),
        connect=lambda: asyncpg.connect(settings.database_url),
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        poll_s=0.2,
    )
    async with helpers.running(runner.run()):
        yield


async def all_done(pool: asyncpg.Pool) -> bool:
    pending = await pool.fetchval(
        "SELECT count(*) FROM effects WHERE kind IN ('room.open', 'notify.room') AND status IN ('pending', 'running')"
    )
    return bool(pending == 0)


async def test_a_serious_incident_gets_a_room_once_where_its_notices_are_posted_and_which_closes_with_it(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    space = Workspace(fail_creations=1)
    async with serve_app(slack(space), name="slack") as base:
        coordinator = Coordinator(load_oncall(), notices=configure(f"{base}/api"))
        serious = snapshot(title="Reverse shell on bastion-01 (prod)", severity=Severity.SEV1)
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=SERIOUS, data=serious))
        minor = snapshot(title="Port scan", severity=Severity.SEV3)
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=MINOR, data=minor))
        async with running(settings, pool, names, coordinator):
            await eventually(lambda: all_done(pool), timeout=30)
            resolve = ResolveIncident(
                source="/t", subject=SERIOUS, data=CommandArgs(actor="alice@example.com", resolution="false_positive")
            )
            await feed(pool, names, coordinator, resolve)
            close = ChangeState(source="/t", subject=SERIOUS, data=StateCommand(actor="alice", to_state="closed"))
            await feed(pool, names, coordinator, close)
            await eventually(lambda: all_done(pool), timeout=30)

    name = "inc-5e1f0000-reverse-shell-on-bastion-01-prod"
    assert await pool.fetchval("SELECT room FROM coordinator_incidents WHERE incident_id = $1", SERIOUS) == name
    page = await pool.fetchval(
        "SELECT payload FROM effects WHERE kind = 'notify.webhook' AND subject = $1 AND key LIKE '%:escalation:%'",
        SERIOUS,
    )
    assert {"label": "Room", "value": f"#{name}"} in page["body"]["facts"]
    assert await pool.fetchval("SELECT room FROM coordinator_incidents WHERE incident_id = $1", MINOR) is None
    # Made once, though its first creation's answer was lost: the retry found it by its name.
    assert space.creations == 1 and len(space.channels) == 1 and space.refused == 0
    (room,) = space.channels.values()
    commander = await pool.fetchval("SELECT commander FROM coordinator_incidents WHERE incident_id = $1", SERIOUS)
    assert room["name"] == name and not room["private"]
    assert room["topic"] == f"SEV1 · Reverse shell on bastion-01 (prod) · commander {commander}"
    assert room["members"] == ({"U0ALICE"} if commander == "alice@example.com" else set())
    assert room["is_archived"]
    # The page first, then each move, in order; the minor incident posts nowhere.
    posted = [m["text"] for m in space.messages]
    assert [m["channel"] for m in space.messages] == [name] * len(posted)
    assert posted[0].startswith("[SEV1] Reverse shell on bastion-01 (prod)")
    assert posted == [
        "[SEV1] Reverse shell on bastion-01 (prod)",
        "[SEV1] Resolved: Reverse shell on bastion-01 (prod)",
        "[SEV1] Closed: Reverse shell on bastion-01 (prod)",  # before the room was archived
    ]


@pytest.mark.parametrize(
    ("history_scope", "chatter"), [(True, 0), (True, 250), (False, 0)], ids=["history", "busy-room", "no-history-scope"]
)
async def test_a_post_whose_answer_was_lost_is_found_in_the_room_not_sent_twice(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, history_scope: bool, chatter: int
) -> None:
    """Slack kept the post but its answer never came: the retry finds it by the key it carries, however much
    people wrote in the room since."""
    space = Workspace(lose_post_answers=1, history_scope=history_scope, chatter=chatter)
    async with serve_app(slack(space), name="slack") as base:
        coordinator = Coordinator(load_oncall(), notices=configure(f"{base}/api"))
        serious = snapshot(title="Reverse shell on bastion-01 (prod)", severity=Severity.SEV1)
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=SERIOUS, data=serious))
        async with running(settings, pool, names, coordinator):
            await eventually(lambda: all_done(pool), timeout=30)
    posted = [m["text"] for m in space.messages if not m["text"].startswith("person ")]
    # Every post carries its effect's key, which Slack keeps as the message's metadata.
    keys = await pool.fetch("SELECT key, runs, status FROM effects WHERE kind = 'notify.room' ORDER BY id")
    assert [(r["runs"], r["status"]) for r in keys] == [(2, "succeeded")]
    assert space.messages[0]["metadata"] == {
        "event_type": rooms.POST_EVENT,
        "event_payload": {"key": keys[0]["key"]},
    }
    assert space.history_reads == (3 if chatter else 1)  # only by the post run again, a page of 100 at a time
    if history_scope:
        assert posted == ["[SEV1] Reverse shell on bastion-01 (prod)"]
    else:  # an app not allowed to read the room posts again, as before
        assert posted == ["[SEV1] Reverse shell on bastion-01 (prod)"] * 2


async def test_reopened_before_its_room_was_archived_it_keeps_it_and_after_it_gets_a_new_one(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    space = Workspace()
    async with serve_app(slack(space), name="slack") as base:
        coordinator = Coordinator(load_oncall(), notices=configure(f"{base}/api"))
        detected = IncidentDetected(
            source="/t", subject=SERIOUS, data=snapshot(title="Data leak", severity=Severity.SEV2)
        )
        await feed(pool, names, coordinator, detected)

        async def close_and_reopen() -> None:
            for command in (
                ResolveIncident(
                    source="/t", subject=SERIOUS, data=CommandArgs(actor="al", resolution="false_positive")
                ),
                ChangeState(source="/t", subject=SERIOUS, data=StateCommand(actor="al", to_state="closed")),
            ):
                await feed(pool, names, coordinator, command)

        # Closed and reopened before anything ran: its archiving is cancelled, the room stays.
        await close_and_reopen()
        reopen = ChangeState(source="/t", subject=SERIOUS, data=StateCommand(actor="al", to_state="acknowledged"))
        await feed(pool, names, coordinator, reopen)
        async with running(settings, pool, names, coordinator):
            await eventually(lambda: all_done(pool), timeout=30)
            (first,) = space.channels.values()
            assert not first["is_archived"]
            # Closed again, archived; reopened after: a room of its own again, a new one.
            await close_and_reopen()
            await eventually(lambda: all_done(pool), timeout=30)
            assert first["is_archived"]
            again = ChangeState(source="/t", subject=SERIOUS, data=StateCommand(actor="al", to_state="acknowledged"))
            await feed(pool, names, coordinator, again)
            await eventually(lambda: all_done(pool), timeout=30)
    first_name, second_name = "inc-5e1f0000-data-leak", "inc-5e1f0000-data-leak-r2"
    assert [c["name"] for c in space.channels.values()] == [first_name, second_name]
    assert await pool.fetchval("SELECT room FROM coordinator_incidents WHERE incident_id = $1", SERIOUS) == second_name
    reopened = [m["text"] for m in space.messages if m["channel"] == second_name]
    assert reopened and reopened[-1].startswith("[SEV2] Acknowledged")  # the reopening, in the new room


async def test_a_room_that_cannot_be_opened_is_given_up_with_the_posts_waiting_for_it_and_roles_are_invited(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    space = Workspace(refuse_creation=True, users={"alice@example.com": "U0ALICE", "bob@example.com": "U0BOB"})
    async with serve_app(slack(space), name="slack") as base:
        coordinator = Coordinator(load_oncall(), notices=configure(f"{base}/api"))
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=SERIOUS, data=snapshot()))
        async with running(settings, pool, names, coordinator):
            await eventually(lambda: all_done(pool), timeout=30)
        assert await pool.fetchval("SELECT room FROM coordinator_incidents WHERE incident_id = $1", SERIOUS) is None
        cancelled = await pool.fetchval(
            "SELECT count(*) FROM effects WHERE kind = 'notify.room' AND status = 'cancelled'"
        )
        assert cancelled == 1 and space.messages == []  # the page, which waited for the room
        # Given up for good: a later page opens no room again.
        assert await pool.fetchval("SELECT room_given_up FROM coordinator_incidents WHERE incident_id = $1", SERIOUS)

        # Another incident, its room opened; a scribe assigned is invited to it.
        space.refuse_creation = False
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=MINOR, data=snapshot(title="Leak")))
        assign = AssignRole(
            source="/t", subject=MINOR, data=Assignment(actor="al", person="bob@example.com", role="scribe")
        )
        await feed(pool, names, coordinator, assign)
        async with running(settings, pool, names, coordinator):
            await eventually(lambda: all_done(pool), timeout=30)
    (room,) = space.channels.values()
    assert "U0BOB" in room["members"]


async def test_an_edit_or_a_new_commander_on_a_closed_incident_neither_pages_nor_opens_a_room(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    incident = "5e1f0000-0000-4000-8000-0000000000aa"
    coordinator = Coordinator(load_oncall(), notices=configure("https://slack.example/api"))
    minor = snapshot(title="Port scan", severity=Severity.SEV3)
    await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=incident, data=minor))
    resolve = ResolveIncident(source="/t", subject=incident, data=CommandArgs(actor="alice", resolution="fixed"))
    await feed(pool, names, coordinator, resolve)
    close = ChangeState(source="/t", subject=incident, data=StateCommand(actor="alice", to_state="closed"))
    await feed(pool, names, coordinator, close)
    pages = len([e for e in await emitted(pool) if isinstance(e, IncidentEscalated)])

    # A review finds it was worse than thought and names who owns the follow-up: the record changes.
    raised = IncidentEdit(actor="bob", severity=Severity.SEV1, reason="review: data left")
    await feed(pool, names, coordinator, EditIncident(source="/t", subject=incident, data=raised))
    owner = Assignment(actor="bob", person="carol@example.com", role="commander")
    await feed(pool, names, coordinator, AssignRole(source="/t", subject=incident, data=owner))

    row = await pool.fetchrow(
        "SELECT severity, commander, room FROM coordinator_incidents WHERE incident_id = $1", incident
    )
    assert row is not None and (row["severity"], row["commander"]) == ("SEV1", "carol@example.com")
    assert len([e for e in await emitted(pool) if isinstance(e, IncidentEscalated)]) == pages
    assert row["room"] is None
    effects = await pool.fetch("SELECT kind, key FROM effects WHERE subject = $1 ORDER BY id", incident)
    assert not [r for r in effects if r["kind"] == "room.open" or "edit" in r["key"] or "assign" in r["key"]]


async def test_a_resolved_incidents_room_still_follows_its_edits_and_roles_and_nobody_is_paged(
    pool: asyncpg.Pool, names: TopicNames
) -> None:
    incident = "5e1f0000-0000-4000-8000-0000000000ab"
    coordinator = Coordinator(load_oncall(), notices=configure("https://slack.example/api"))
    major = snapshot(title="Data leaving", severity=Severity.SEV1)
    await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=incident, data=major))
    assert await pool.fetchval("SELECT room FROM coordinator_incidents WHERE incident_id = $1", incident)
    resolve = ResolveIncident(source="/t", subject=incident, data=CommandArgs(actor="alice", resolution="fixed"))
    await feed(pool, names, coordinator, resolve)
    pages = len([e for e in await emitted(pool) if isinstance(e, IncidentEscalated)])

    # Over, not closed: its room is open for the review, and follows the record.
    edit = IncidentEdit(actor="bob", title="Data left", reason="review")
    await feed(pool, names, coordinator, EditIncident(source="/t", subject=incident, data=edit))
    owner = Assignment(actor="bob", person="carol@example.com", role="commander")
    await feed(pool, names, coordinator, AssignRole(source="/t", subject=incident, data=owner))

    keys = [r["key"] for r in await pool.fetch("SELECT key FROM effects WHERE subject = $1 ORDER BY id", incident)]
    assert any(":room:edit:" in key for key in keys) and any(":room:assign:" in key for key in keys), keys
    assert len([e for e in await emitted(pool) if isinstance(e, IncidentEscalated)]) == pages
