"""Follow-up tasks as tickets: opened in GitHub Issues or Jira when added, closed when done or cancelled.

The coordinator's task routes and its effects runner run against the real Postgres; the trackers
are local servers that answer as GitHub's and Jira's REST APIs do for the calls Vigil makes (and
check its credentials). Each can be told to fail a creation after making the issue, as a tracker
behind a flaky proxy does: the retry must find that issue, not open a second.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.coordinator import api, tasks, ticketing
from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from services.coordinator.tasks_api import tasks_router, tickets_router
from shared import identity
from shared.auth import sign
from shared.effects import EffectRunner
from shared.events import CommandArgs, ResolveIncident
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests import helpers
from tests.helpers import eventually, serve_app
from tests.integration.test_coordinator_lifecycle import feed
from tests.integration.test_tasks_adhoc import detect

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

INCIDENT = "inc-tickets"
TOKEN = "a-tracker-token-only-tests-know"
WEBHOOK_SECRET = "a-webhook-secret-github-signs-with"
ENVIRON = {"TRACKER_TOKEN": TOKEN, "TRACKER_USER": "vigil@example.org", "WEBHOOK_SECRET": WEBHOOK_SECRET}


# ---- the trackers --------------------------------------------------------------------------------


@dataclass
class Tracker:
    """Issues as a tracker keeps them; ``fail_creations``: creations answered 502 after the issue was made."""

    issues: list[dict[str, Any]] = field(default_factory=list)
    fail_creations: int = 0
    creations: int = 0
    unauthorised: int = 0
    private: bool = True
    searched: list[str] = field(default_factory=list)  # the search endpoints asked


def github(tracker: Tracker) -> Starlette:
    def authorised(request: Request) -> bool:
        ok = request.headers.get("authorization") == f"Bearer {TOKEN}"
        tracker.unauthorised += not ok
        return ok

    async def issues(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        if request.method == "POST":
            body = await request.json()
            number = len(tracker.issues) + 1
            issue = {
                "number": number,
                "html_url": f"https://github.example/acme/follow-ups/issues/{number}",
                "title": body["title"],
                "body": body["body"],
                "labels": [{"name": name} for name in body.get("labels", [])],
                "state": "open",
                "state_reason": None,
                "updated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            tracker.issues.append(issue)
            tracker.creations += 1
            if tracker.fail_creations > 0:
                tracker.fail_creations -= 1
                return JSONResponse({"message": "Bad gateway"}, status_code=502)
            return JSONResponse(issue, status_code=201)
        since = request.query_params["since"]
        page, per_page = int(request.query_params.get("page", "1")), int(request.query_params["per_page"])
        listed = [i for i in reversed(tracker.issues) if i["updated_at"] >= since]
        # A pull request is an issue in this list too: it must never be taken for a ticket.
        noise = {"number": 999, "body": "", "pull_request": {}, "updated_at": since, "state": "open"}
        return JSONResponse([noise, *listed][(page - 1) * per_page : page * per_page])

    async def issue(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        found = tracker.issues[int(request.path_params["number"]) - 1]
        found.update(await request.json())
        return JSONResponse(found)

    async def repository(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        return JSONResponse({"full_name": "acme/follow-ups", "private": tracker.private})

    return Starlette(
        routes=[
            Route("/api/v3/repos/acme/follow-ups", repository, methods=["GET"]),
            Route("/api/v3/repos/acme/follow-ups/issues", issues, methods=["GET", "POST"]),
            Route("/api/v3/repos/acme/follow-ups/issues/{number:int}", issue, methods=["PATCH"]),
        ]
    )


def jira(tracker: Tracker) -> Starlette:
    basic = "Basic " + base64.b64encode(f"vigil@example.org:{TOKEN}".encode()).decode()

    def authorised(request: Request) -> bool:
        ok = request.headers.get("authorization") == basic
        tracker.unauthorised += not ok
        return ok

    async def search(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"errorMessages": ["unauthorised"]}, status_code=401)
        tracker.searched.append(request.url.path)
        jql = (await request.json())["jql"]
        pattern = r'project = "(\w+)" AND labels = "([\w-]+)" ORDER BY created ASC'
        project, label = re.fullmatch(pattern, jql).groups()  # type: ignore[union-attr]
        found = [
            i for i in tracker.issues if i["fields"]["project"]["key"] == project and label in i["fields"]["labels"]
        ]
        return JSONResponse({"issues": found[:1], "total": len(found)})

    async def create(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"errorMessages": ["unauthorised"]}, status_code=401)
        fields = (await request.json())["fields"]
        key = f"{fields['project']['key']}-{len(tracker.issues) + 1}"
        tracker.issues.append({"key": key, "fields": {**fields, "status": {"statusCategory": {"key": "new"}}}})
        tracker.creations += 1
        if tracker.fail_creations > 0:
            tracker.fail_creations -= 1
            return Response("upstream timed out", status_code=504)
        return JSONResponse({"id": str(len(tracker.issues)), "key": key}, status_code=201)

    async def issue(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"errorMessages": ["unauthorised"]}, status_code=401)
        (found,) = [i for i in tracker.issues if i["key"] == request.path_params["key"]]
        return JSONResponse({"key": found["key"], "fields": {"status": found["fields"]["status"]}})

    async def transitions(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"errorMessages": ["unauthorised"]}, status_code=401)
        (issue,) = [i for i in tracker.issues if i["key"] == request.path_params["key"]]
        offered = [
            {"id": "21", "name": "Start", "to": {"statusCategory": {"key": "indeterminate"}}},
            {"id": "31", "name": "Done", "to": {"statusCategory": {"key": "done"}}},
        ]
        if request.method == "GET":
            return JSONResponse({"transitions": offered})
        chosen = (await request.json())["transition"]["id"]
        (to,) = [t["to"] for t in offered if t["id"] == chosen]
        issue["fields"]["status"] = to
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/rest/api/2/search", search, methods=["POST"]),  # Jira Server and Data Center
            Route("/rest/api/3/search/jql", search, methods=["POST"]),  # Jira Cloud, since the old one went
            Route("/rest/api/2/issue", create, methods=["POST"]),
            Route("/rest/api/2/issue/{key}", issue, methods=["GET"]),
            Route("/rest/api/2/issue/{key}/transitions", transitions, methods=["GET", "POST"]),
        ]
    )


# ---- Vigil's side --------------------------------------------------------------------------------


@dataclass
class Served:
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    coordinator: Coordinator
    token: str

    async def add(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = await self.client.post(f"/api/v1/incidents/{INCIDENT}/tasks", json=body, headers=headers)
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    async def done(self, task_id: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        body = {"actor": "x", "note": "done and deployed"}
        answer = await self.client.post(f"/api/v1/tasks/{task_id}/done", json=body, headers=headers)
        assert answer.status_code == 200, answer.text

    async def ticket(self, task_id: int) -> dict[str, str] | None:
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = await self.client.get(f"/api/v1/incidents/{INCIDENT}/tasks", headers=headers)
        (task,) = [t for t in answer.json()["tasks"] if t["id"] == task_id]
        return task["ticket"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def vigil(settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, document: str) -> AsyncIterator[Served]:
    """The coordinator's task routes with a ticketing file, and its effects runner, as the service composes them."""
    tickets = ticketing.parse_ticketing(document, environ=ENVIRON)
    coordinator = Coordinator(load_oncall(), tickets=tickets, public_url="https://vigil.example.com")
    await detect(pool, names, coordinator, INCIDENT)
    async with pool.acquire() as conn:
        token = await identity.create_token(conn, name="cora", role="commander", created_by="test")
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="coordinator", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    routes = tasks_router(
        runtime, tasks.load_templates(), on_done=coordinator.on_task_done, on_added=coordinator.on_task_added
    )
    hooks = tickets_router(runtime, tickets, on_done=coordinator.on_task_done)
    app = build_app(runtime, [*api.routers(runtime, coordinator), routes, hooks])
    runner = EffectRunner(
        "coordinator",
        pool,
        names,
        ticketing.effect_kinds(tickets, on_outcome=coordinator.on_ticket_outcome),
        connect=lambda: asyncpg.connect(settings.database_url),
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        poll_s=0.2,
    )
    async with (
        serve_app(app, name="coordinator-api") as base,
        httpx.AsyncClient(base_url=base) as client,
        helpers.running(runner.run()),
    ):
        yield Served(client=client, pool=pool, coordinator=coordinator, token=token.text)


async def effects_settled(pool: asyncpg.Pool, count: int) -> bool:
    """Whether ``count`` ticket effects were enqueued and every one of them succeeded."""
    row = await pool.fetchrow(
        """SELECT count(*) AS n, count(*) FILTER (WHERE status = 'succeeded') AS ok
           FROM effects WHERE kind LIKE 'ticket.%'"""
    )
    assert row is not None
    return bool(row["n"] == count == row["ok"])


async def test_a_follow_up_becomes_a_github_issue_once_though_its_creation_failed_and_is_closed_when_done(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    tracker = Tracker(fail_creations=1)
    async with serve_app(github(tracker), name="github") as github_url:
        document = f"""
tracker:
  kind: github
  repository: acme/follow-ups
  api_url: {github_url}/api/v3
  token_env: TRACKER_TOKEN
  labels: [incident-follow-up]
  min_retry_s: 1
"""
        async with vigil(settings, pool, names, document) as served:
            follow_up = await served.add(
                {"title": "Rotate the deploy keys", "description": "Every key the attacker could read.", "due": "14d"}
            )
            runbook = await served.add({"title": "Block the second C2 address", "phase": "containment"})

            async def first_attempt_failed() -> bool:
                return tracker.creations == 1

            # The issue was made, but its answer was lost; the task is done before the retry: nothing to close yet.
            await eventually(first_attempt_failed, timeout=30)
            assert await served.ticket(follow_up["id"]) is None
            await served.done(follow_up["id"])
            ticket = await eventually(lambda: served.ticket(follow_up["id"]), timeout=30)
            await eventually(lambda: effects_settled(pool, 2), timeout=30)
            assert await served.ticket(runbook["id"]) is None  # not a phase the file syncs

    # The retry found the issue by its key and made no second; once it had it, the task being done closed it.
    assert tracker.creations == 1 and len(tracker.issues) == 1 and tracker.unauthorised == 0
    (issue,) = tracker.issues
    key = f"{INCIDENT}:ticket:{follow_up['id']}"
    assert ticket == {
        "tracker": "github",
        "ref": "acme/follow-ups#1",
        "url": "https://github.example/acme/follow-ups/issues/1",
    }
    assert issue["title"] == "Rotate the deploy keys"
    assert issue["body"].startswith("Every key the attacker could read.\n\nFollow-up of incident inc-tickets: ")
    assert "https://vigil.example.com/ui/incidents/inc-tickets" in issue["body"]
    assert issue["body"].endswith(f"<!-- vigil-ticket: {key} -->")
    assert issue["labels"] == [{"name": "incident-follow-up"}]
    assert (issue["state"], issue["state_reason"]) == ("closed", "completed")


async def test_no_ticket_is_opened_in_a_public_repository_unless_the_file_allows_it(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    tracker = Tracker(private=False)
    async with serve_app(github(tracker), name="github") as github_url:
        api_url = f"{github_url}/api/v3"
        document = (
            f"tracker: {{kind: github, repository: acme/follow-ups, api_url: {api_url}, token_env: TRACKER_TOKEN}}"
        )
        async with vigil(settings, pool, names, document) as served:
            await served.add({"title": "Rotate the deploy keys"})

            async def failed() -> str:
                found = await pool.fetchval(
                    "SELECT last_error FROM effects WHERE kind = 'ticket.open' AND status = 'failed'"
                )
                return str(found or "")

            error = await eventually(failed, timeout=30)
    assert "acme/follow-ups is public" in error and "allow_public: true" in error
    assert tracker.creations == 0 and TOKEN not in error


async def test_a_follow_up_becomes_a_jira_issue_and_is_moved_to_done_when_its_incident_is_a_false_positive(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    tracker = Tracker(fail_creations=1)
    async with serve_app(jira(tracker), name="jira") as jira_url:
        document = f"""
tracker:
  kind: jira
  url: {jira_url}
  project: SEC
  deployment: cloud
  token_env: TRACKER_TOKEN
  user_env: TRACKER_USER
  min_retry_s: 0.5
phases: [post_mortem, remediation]
"""
        async with vigil(settings, pool, names, document) as served:
            follow_up = await served.add({"title": "Patch the VPN appliance", "phase": "remediation", "due": "3d"})
            ticket = await eventually(lambda: served.ticket(follow_up["id"]), timeout=30)
            # Resolved as a false positive: its open tasks are cancelled, and so their tickets are closed.
            resolve = ResolveIncident(
                source="/t", subject=INCIDENT, data=CommandArgs(actor="cora", resolution="false_positive")
            )
            await feed(pool, names, served.coordinator, resolve)
            await eventually(lambda: effects_settled(pool, 2), timeout=30)
            closes = await pool.fetchval("SELECT count(*) FROM effects WHERE kind = 'ticket.close'")

    assert tracker.creations == 1 and len(tracker.issues) == 1 and tracker.unauthorised == 0
    assert set(tracker.searched) == {"/rest/api/3/search/jql"}  # Jira Cloud's search, the old one being gone
    (issue,) = tracker.issues
    assert ticket == {"tracker": "jira", "ref": "SEC-1", "url": f"{jira_url}/browse/SEC-1"}
    fields = issue["fields"]
    assert (fields["summary"], fields["issuetype"], fields["project"]) == (
        "Patch the VPN appliance",
        {"name": "Task"},
        {"key": "SEC"},
    )
    assert fields["labels"] == [ticketing.jira_label(f"{INCIDENT}:ticket:{follow_up['id']}")]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields["duedate"])
    assert fields["status"] == {"statusCategory": {"key": "done"}}
    assert closes == 1  # the runbook's own open tasks were cancelled too, but they are no tickets


def closed_event(number: int, *, repository: str = "acme/follow-ups", reason: str = "completed") -> bytes:
    """An `issues` delivery as GitHub sends it when an issue is closed (the fields Vigil reads, and more)."""
    payload = {
        "action": "closed",
        "issue": {"number": number, "state": "closed", "state_reason": reason, "title": "Rotate the deploy keys"},
        "repository": {"full_name": repository, "private": True},
        "sender": {"login": "octocat", "type": "User"},
    }
    return json.dumps(payload).encode()


async def test_an_issue_closed_in_github_marks_its_task_done_by_who_closed_it_and_nothing_is_sent_back(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    tracker = Tracker()
    async with serve_app(github(tracker), name="github") as github_url:
        document = f"""
tracker:
  kind: github
  repository: acme/follow-ups
  api_url: {github_url}/api/v3
  token_env: TRACKER_TOKEN
  webhook_secret_env: WEBHOOK_SECRET
"""
        async with vigil(settings, pool, names, document) as served:
            follow_up = await served.add({"title": "Rotate the deploy keys"})
            await eventually(lambda: served.ticket(follow_up["id"]), timeout=30)
            declined = await served.add({"title": "Rewrite the VPN in Rust"})
            await eventually(lambda: served.ticket(declined["id"]), timeout=30)

            async def deliver(body: bytes, *, event: str = "issues", secret: str = WEBHOOK_SECRET) -> httpx.Response:
                headers = {"X-GitHub-Event": event, "X-Hub-Signature-256": sign(body, secret.encode())}
                return await served.client.post("/api/v1/tickets/github", content=body, headers=headers)

            assert (await deliver(b"{}", event="ping")).json() == {"pong": True}
            forged = await deliver(closed_event(1), secret="guessed-by-someone-else")
            unsigned = await served.client.post(
                "/api/v1/tickets/github", content=closed_event(1), headers={"X-GitHub-Event": "issues"}
            )
            elsewhere = await deliver(closed_event(1, repository="acme/other"))
            unknown = await deliver(closed_event(99))
            not_planned = await deliver(closed_event(2, reason="not_planned"))
            done = await deliver(closed_event(1))
            again = await deliver(closed_event(1))  # GitHub redelivers
            await eventually(lambda: effects_settled(pool, 2), timeout=30)
            listed = await served.client.get(
                f"/api/v1/incidents/{INCIDENT}/tasks", headers={"Authorization": f"Bearer {served.token}"}
            )
            by_id = {t["id"]: t for t in listed.json()["tasks"]}
            task, still_open = by_id[follow_up["id"]], by_id[declined["id"]]

    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert (elsewhere.status_code, unknown.status_code) == (202, 202)
    assert done.status_code == 200 and done.json() == {"tasks": [follow_up["id"]], "done_by": "github:octocat"}
    # Closed as not planned there: no work was done, the task stays open in Vigil.
    assert not_planned.status_code == 202 and still_open["state"] == "open"
    assert again.status_code == 200 and "already" in again.json()
    assert (task["state"], task["done_by"], task["note"]) == ("done", "github:octocat", "closed in GitHub by octocat")
    assert task["ticket"]["closed_in"] == "github" and "closed_in" not in (still_open["ticket"] or {})
    # Closed there already: Vigil sends no closing of its own.
    assert await pool.fetchval("SELECT count(*) FROM effects WHERE kind = 'ticket.close'") == 0
    audit = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'task.done' AND principal = 'github:octocat'"
    )
    assert audit == 1


def jira_event(key: str, *, resolution: str | None, category: str = "done") -> bytes:
    """A `jira:issue_updated` delivery as Jira sends it when an issue moves (the fields Vigil reads, and more)."""
    fields: dict[str, Any] = {
        "summary": "Patch the VPN appliance",
        "status": {"name": "Done", "statusCategory": {"key": category, "name": "Done"}},
        "resolution": {"name": resolution} if resolution else None,
    }
    payload = {
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Ana Lima"},
        "issue": {"id": "10001", "key": key, "fields": fields},
        "changelog": {"items": [{"field": "status", "fromString": "In Progress", "toString": "Done"}]},
    }
    return json.dumps(payload).encode()


async def test_an_issue_moved_to_done_in_jira_marks_its_task_done_and_one_wont_do_leaves_it_open(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    tracker = Tracker()
    async with serve_app(jira(tracker), name="jira") as jira_url:
        document = f"""
tracker:
  kind: jira
  url: {jira_url}
  project: SEC
  token_env: TRACKER_TOKEN
  user_env: TRACKER_USER
  webhook_secret_env: WEBHOOK_SECRET
  min_retry_s: 0.5
"""
        async with vigil(settings, pool, names, document) as served:
            patch = await served.add({"title": "Patch the VPN appliance"})
            rewrite = await served.add({"title": "Rewrite the VPN in Rust"})
            first = await eventually(lambda: served.ticket(patch["id"]), timeout=30)
            second = await eventually(lambda: served.ticket(rewrite["id"]), timeout=30)
            assert first is not None and second is not None

            async def deliver(body: bytes, *, secret: str = WEBHOOK_SECRET) -> httpx.Response:
                headers = {"X-Hub-Signature": sign(body, secret.encode())}
                return await served.client.post("/api/v1/tickets/jira", content=body, headers=headers)

            forged = await deliver(jira_event(first["ref"], resolution="Done"), secret="not-the-webhooks-secret")
            github_route = await served.client.post("/api/v1/tickets/github", content=b"{}")
            moving = await deliver(jira_event(first["ref"], resolution=None, category="indeterminate"))
            wont = await deliver(jira_event(second["ref"], resolution="Won't Do"))
            done = await deliver(jira_event(first["ref"], resolution="Done"))
            other_project = await deliver(jira_event("OPS-1", resolution="Done"))
            headers = {"Authorization": f"Bearer {served.token}"}
            listed = await served.client.get(f"/api/v1/incidents/{INCIDENT}/tasks", headers=headers)
            by_id = {t["id"]: t for t in listed.json()["tasks"]}

    assert (forged.status_code, github_route.status_code) == (401, 404)
    assert (moving.status_code, wont.status_code, other_project.status_code) == (202, 202, 202)
    who = "5b10a2844c20165700ede21g"  # Ana Lima's account id: a display name is anyone's to change
    assert done.status_code == 200 and done.json() == {"tasks": [patch["id"]], "done_by": f"jira:{who}"}
    assert (by_id[patch["id"]]["state"], by_id[patch["id"]]["note"]) == ("done", f"closed in Jira by {who}")
    assert by_id[rewrite["id"]]["state"] == "open"
    assert await pool.fetchval("SELECT count(*) FROM effects WHERE kind = 'ticket.close'") == 0
