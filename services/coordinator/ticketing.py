"""Follow-up tasks as tickets in the team's tracker (GitHub Issues or Jira), opened and closed with the task.

The follow-up actions a post-mortem names are done over weeks, in the tracker where the team plans
its work, not in Vigil. With a tracker in ``ticketing.yaml`` (``VIGIL_TICKETING``), each task an
operator adds to an incident (``vigil tasks add``) in one of the file's ``phases`` becomes a ticket
there; when the task is done or cancelled in Vigil, the ticket is closed. The ticket's reference
and address are kept on the task (``vigil tasks list`` shows them). The runbook's own checklist
tasks stay in Vigil.

Opening and closing are effects (``ticket.open``, ``ticket.close``), enqueued in the transaction
that adds or ends the task and run by the coordinator's effects runner with retries. Neither
tracker deduplicates a creation by a key, so the runner looks before it creates: the ticket carries
the effect's idempotency key, in a comment at the end of a GitHub issue's body, as a label on a Jira
issue, and an attempt that finds a ticket with its key takes that one. GitHub's list of a
repository's issues is read directly (not its search index); Jira's search is answered by an index
that catches up within seconds, so a retry waits ``min_retry_s`` (30 s) first. A ticket is closed
by its reference, once it has one: a task done before its ticket opened has it closed as soon as
it opens.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import certifi
import httpx
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from services.coordinator.tasks import Phase, Task
from shared.db import Conn
from shared.effects import Effect, EffectKind, OutcomeHandler, PermanentEffectError, TransientEffectError, enqueue
from shared.effects.builtin import ENV_NAME_PATTERN
from shared.effects.domain import bound_text, classify_http_status
from shared.yamlfile import YamlFileError, validate_yaml

log = logging.getLogger(__name__)

DEFAULT_TICKETING = Path(__file__).with_name("ticketing.yaml")
SERVICE = "coordinator"
OPEN, CLOSE = "ticket.open", "ticket.close"
# How far before an effect was enqueued GitHub's list is read from: clocks differ, and an issue's
# `updated_at` is GitHub's.
CLOCK_SLACK = timedelta(minutes=10)
MAX_PAGES = 10  # of 100 issues each: a repository busier than that between two attempts is looked through no further
TITLE_CHARS = 250  # Jira's summary holds 255
FOLLOW_UP_PHASES: tuple[Phase, ...] = ("post_mortem",)
# Jira resolutions (or, an issue resolved with none, statuses) that say the work was done; any other (Won't Do,
# Duplicate, Cancelled…) leaves the task open. A site with names of its own sets `done_resolutions`.
DONE_RESOLUTIONS: tuple[str, ...] = ("Done", "Fixed", "Resolved", "Complete", "Completed")
MIN_WEBHOOK_SECRET = 16


class TicketingError(YamlFileError):
    """A ticketing file that cannot be used; each problem says where and why."""


def _api_root(text: str) -> str:
    if not text.startswith(("https://", "http://")) or any(c.isspace() for c in text):
        raise ValueError("not an http(s) URL")
    return text.rstrip("/")


ApiRoot = Annotated[str, AfterValidator(_api_root)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Label = Annotated[str, Field(pattern=r"^[^\s,]{1,100}$")]  # Jira's labels hold no space; GitHub's alike here


class _Tracker(_Model):
    labels: list[Label] = Field(default_factory=list, max_length=20)
    webhook_secret_env: EnvName | None = Field(
        None,
        description="The variable holding the secret of the tracker's webhook to POST /api/v1/tickets/<kind>: an "
        "issue closed there as done marks its task done in Vigil. None: no webhook.",
    )
    timeout_s: float = Field(15.0, gt=0)
    max_attempts: int = Field(20, ge=1, description="Tickets are no emergency: a tracker down an hour is waited for.")
    min_retry_s: float = Field(30.0, ge=0, description="The least wait before an attempt is made again.")


class GitHubTracker(_Tracker):
    kind: Literal["github"]
    repository: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="owner/name")
    api_url: ApiRoot = Field("https://api.github.com", description="GitHub Enterprise: https://HOST/api/v3.")
    token_env: EnvName = Field(description="The variable holding a token that may write the repository's issues.")
    allow_public: bool = Field(
        False,
        description="A ticket names the incident, its title and the owner's address: a public repository is "
        "refused unless this says otherwise.",
    )


class JiraTracker(_Tracker):
    kind: Literal["jira"]
    url: ApiRoot = Field(description="The site: https://acme.atlassian.net, or a Jira server's base URL.")
    deployment: Literal["cloud", "server"] | None = Field(
        None, description="cloud or server (Data Center too); none: cloud for *.atlassian.net, else server."
    )
    project: str = Field(pattern=r"^[A-Z][A-Z0-9_]{0,49}$", description="The project's key.")
    issue_type: str = Field("Task", min_length=1, max_length=100)
    token_env: EnvName = Field(description="The variable holding an API token (Cloud) or a personal access token.")
    user_env: EnvName | None = Field(
        None, description="Jira Cloud: the variable holding the account's e-mail (basic auth); none: a bearer token."
    )
    done_resolutions: list[str] = Field(
        default_factory=lambda: list(DONE_RESOLUTIONS),
        min_length=1,
        description="The resolutions (or, resolved with none, the statuses) that mean the work was done.",
    )

    @property
    def cloud(self) -> bool:
        if self.deployment is not None:
            return self.deployment == "cloud"
        return (urlsplit(self.url).hostname or "").endswith(".atlassian.net")

    @model_validator(mode="after")
    def _cloud_login(self) -> JiraTracker:
        if self.cloud and self.user_env is None:
            raise ValueError("Jira Cloud takes an API token with the account's e-mail: give user_env")
        return self


Tracker = Annotated[GitHubTracker | JiraTracker, Field(discriminator="kind")]


class TicketingFile(_Model):
    tracker: Tracker | None = Field(None, description="Where follow-up tasks become tickets; none: nowhere.")
    phases: list[Phase] = Field(
        default_factory=lambda: list(FOLLOW_UP_PHASES),
        min_length=1,
        description="The tasks added to an incident in these phases become tickets.",
    )


class TicketingConfig:
    """A checked ticketing file, with its token (and webhook secret) read from the environment."""

    def __init__(
        self,
        file: TicketingFile,
        *,
        token: SecretStr | None = None,
        user: str | None = None,
        webhook_secret: SecretStr | None = None,
    ) -> None:
        self.file = file
        self.token = token
        self.user = user
        self.webhook_secret = webhook_secret

    @property
    def tracker(self) -> GitHubTracker | JiraTracker | None:
        return self.file.tracker

    def syncs(self, task: Task) -> bool:
        """Whether the task becomes a ticket: added by an operator, in one of the file's phases."""
        return self.tracker is not None and task.template_id.startswith("adhoc-") and task.phase in self.file.phases


NONE = TicketingConfig(TicketingFile())


def parse_ticketing(
    document: str, *, source: str = "ticketing", environ: Mapping[str, str] | None = None
) -> TicketingConfig:
    """Check a ticketing file's text and read the secrets it names; raise TicketingError saying where and why."""
    try:
        empty = not yaml.safe_load(document)  # comments only: no tracker
    except yaml.YAMLError:
        empty = False  # validate_yaml says where
    file = TicketingFile() if empty else validate_yaml(document, TicketingFile, source=source, raises=TicketingError)
    tracker = file.tracker
    if tracker is None:
        return TicketingConfig(file)
    environ = os.environ if environ is None else environ
    token = environ.get(tracker.token_env, "").strip()  # a secret file's trailing newline is no part of it
    if not token:
        raise TicketingError([f"{source}: tracker.token_env: {tracker.token_env} is not set"])
    if not token.isprintable() or any(c.isspace() for c in token):
        # Said without it: an HTTP library that refused the header would quote it in its error.
        raise TicketingError([f"{source}: tracker.token_env: {tracker.token_env} holds spaces or control characters"])
    user = None
    if isinstance(tracker, JiraTracker) and tracker.user_env is not None:
        user = environ.get(tracker.user_env, "").strip()
        if not user:
            raise TicketingError([f"{source}: tracker.user_env: {tracker.user_env} is not set"])
    webhook_secret = None
    if tracker.webhook_secret_env is not None:
        secret = environ.get(tracker.webhook_secret_env, "")
        if secret != secret.strip():  # the tracker signs with the secret as it was typed there
            name = tracker.webhook_secret_env
            raise TicketingError([f"{source}: tracker.webhook_secret_env: {name} has spaces around it"])
        if len(secret) < MIN_WEBHOOK_SECRET:
            raise TicketingError(
                [
                    f"{source}: tracker.webhook_secret_env: {tracker.webhook_secret_env} holds fewer than "
                    f"{MIN_WEBHOOK_SECRET} characters"
                ]
            )
        webhook_secret = SecretStr(secret)
    return TicketingConfig(file, token=SecretStr(token), user=user, webhook_secret=webhook_secret)


def load_ticketing(path: Path = DEFAULT_TICKETING, *, environ: Mapping[str, str] | None = None) -> TicketingConfig:
    try:
        document = path.read_text()
    except OSError as exc:
        raise TicketingError([f"{path}: cannot be read: {exc.strerror or exc}"]) from exc
    return parse_ticketing(document, source=str(path), environ=environ)


# ---- what a ticket says: pure --------------------------------------------------------------------


def ticket_key(task: Task) -> str:
    """The idempotency key of a task's ticket: the same for every attempt, and for opening and closing it."""
    return f"{task.incident_id}:ticket:{task.id}"


def marker(key: str) -> str:
    """What a GitHub issue's body ends with: the key, in a comment GitHub does not show."""
    return f"<!-- vigil-ticket: {key} -->"


def jira_label(key: str) -> str:
    """A Jira label (no spaces) that stands for the key."""
    return "vigil-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def ticket_text(task: Task, *, incident_title: str, public_url: str | None) -> tuple[str, str]:
    """The ticket's title and its body: plain lines, which GitHub's Markdown and Jira's wiki markup show alike."""
    lines = [task.description.strip()] if task.description.strip() else []
    where = f"{public_url.rstrip('/')}/ui/incidents/{quote(task.incident_id, safe='')}" if public_url else None
    lines += [
        "",
        f"Follow-up of incident {task.incident_id}: {incident_title}",
        *([f"The incident in Vigil: {where}"] if where else []),
        f"Owner in Vigil: {task.owner}",
        *([f"Due: {task.due_at:%Y-%m-%d %H:%M} UTC"] if task.due_at else []),
        f"Vigil task {task.id} ({task.phase.replace('_', ' ')}); it is closed here when the task is done in Vigil.",
    ]
    return task.title[:TITLE_CHARS], "\n".join(lines).strip()


async def open_ticket(
    conn: Conn, config: TicketingConfig, task: Task, *, incident_title: str, public_url: str | None
) -> bool:
    """Enqueue the task's ticket in the caller's transaction; False when it is no ticket's, or enqueued before."""
    tracker = config.tracker
    if tracker is None or not config.syncs(task):
        return False
    title, body = ticket_text(task, incident_title=incident_title, public_url=public_url)
    return await enqueue(
        conn,
        service=SERVICE,
        kind=OPEN,
        key=ticket_key(task),
        subject=task.incident_id,
        target=tracker.kind,
        payload={"task_id": task.id, "title": title, "body": body, "due_on": _due_on(task)},
    )


async def close_ticket(conn: Conn, config: TicketingConfig, task: Task) -> bool:
    """Enqueue the closing of the task's ticket (it was done or cancelled); False when it has none (yet) to close,
    or it was closed in the tracker (its ``ticket`` says ``closed_in``).

    A task whose ticket has not opened yet is closed when it opens (``on_ticket_outcome``).
    """
    if config.tracker is None or not task.ticket or task.state == "open" or task.ticket.get("closed_in"):
        return False
    return await enqueue(
        conn,
        service=SERVICE,
        kind=CLOSE,
        key=ticket_key(task),
        subject=task.incident_id,
        target=config.tracker.kind,
        payload={"task_id": task.id, "state": task.state, "ticket": task.ticket},
    )


def _due_on(task: Task) -> str | None:
    return f"{task.due_at:%Y-%m-%d}" if task.due_at else None


# ---- the trackers' APIs ---------------------------------------------------------------------------


class _Api:
    """One tracker's HTTP API: authenticated, every answer classified as settled, worth a retry, or refused."""

    def __init__(self, config: TicketingConfig, base: str, headers: dict[str, str], timeout_s: float) -> None:
        self.config = config
        self.base = base
        self.headers = headers
        self.timeout_s = timeout_s
        self._tls: ssl.SSLContext | None = None

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one attempt; a transport failure is retried, said by its kind only (never its text,
        which may quote the request's headers)."""
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=certifi.where())
        try:
            async with httpx.AsyncClient(
                base_url=self.base,
                headers=self.headers,
                timeout=self.timeout_s,
                follow_redirects=False,
                verify=self._tls,
            ) as client:
                yield client
        except httpx.HTTPError as exc:
            raise TransientEffectError(f"{self.base}: {type(exc).__name__}") from None

    def rate_limited(self, response: httpx.Response) -> bool:
        return response.status_code == 429

    def checked(self, response: httpx.Response, doing: str) -> Any:
        verdict = "transient" if self.rate_limited(response) else classify_http_status(response.status_code)
        if verdict == "ok":
            return response.json() if response.content else None
        failure = f"{doing}: HTTP {response.status_code}: {bound_text(response.text, 300)}"
        if verdict == "permanent":
            raise PermanentEffectError(failure)
        wait = response.headers.get("retry-after", "")
        raise TransientEffectError(failure, retry_after_s=float(wait) if wait.isdigit() else None)


class GitHub(_Api):
    def __init__(self, config: TicketingConfig, tracker: GitHubTracker) -> None:
        assert config.token is not None
        headers = {
            "Authorization": f"Bearer {config.token.get_secret_value()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "vigil",
        }
        super().__init__(config, tracker.api_url, headers, tracker.timeout_s)
        self.tracker = tracker
        self.repository = f"/repos/{tracker.repository}"
        self.issues = f"{self.repository}/issues"

    def rate_limited(self, response: httpx.Response) -> bool:
        # GitHub answers 403 (or 429) for its rate limits, primary and secondary: worth waiting for.
        return response.status_code == 429 or (
            response.status_code == 403
            and (
                "retry-after" in response.headers
                or response.headers.get("x-ratelimit-remaining") == "0"
                or "rate limit" in response.text.lower()
            )
        )

    async def find(self, client: httpx.AsyncClient, effect: Effect) -> dict[str, Any] | None:
        """The issue an earlier attempt opened for this key, read from the repository's list (not its search)."""
        since = (effect.created_at - CLOCK_SLACK).strftime("%Y-%m-%dT%H:%M:%SZ")
        wanted = marker(effect.key)
        for page in range(1, MAX_PAGES + 1):
            params = {"state": "all", "since": since, "per_page": "100", "page": str(page)}
            found = self.checked(await client.get(self.issues, params=params), "listing the repository's issues") or []
            for issue in found:
                if wanted in (issue.get("body") or "") and "pull_request" not in issue:
                    return issue  # type: ignore[no-any-return]
            if len(found) < 100:
                return None
        # Not seen is not known absent: opening another could make a second.
        raise PermanentEffectError(
            f"more than {MAX_PAGES * 100} issues of {self.tracker.repository} changed since this ticket was asked "
            "for: whether an earlier attempt opened it cannot be told; look for its key there before retrying"
        )

    async def open(self, effect: Effect) -> dict[str, Any]:
        async with self.client() as client:
            if not self.tracker.allow_public:
                repository = self.checked(await client.get(self.repository), "reading the repository")
                if not (repository or {}).get("private", False):
                    raise PermanentEffectError(
                        f"{self.tracker.repository} is public: a ticket names the incident and people; "
                        "give allow_public: true to open tickets there"
                    )
            issue = await self.find(client, effect)
            if issue is None:
                body = {
                    "title": effect.payload["title"],
                    "body": f"{effect.payload['body']}\n\n{marker(effect.key)}",
                    "labels": self.tracker.labels,
                }
                issue = self.checked(await client.post(self.issues, json=body), "opening the issue")
        return {"tracker": "github", "ref": f"{self.tracker.repository}#{issue['number']}", "url": issue["html_url"]}

    async def close(self, effect: Effect) -> dict[str, Any]:
        ref = str((effect.payload.get("ticket") or {}).get("ref", ""))
        repository, _, number = ref.rpartition("#")
        if repository != self.tracker.repository or not number.isdigit():
            raise PermanentEffectError(f"the ticket {ref!r} is not an issue of {self.tracker.repository}")
        reason = "completed" if effect.payload.get("state") == "done" else "not_planned"
        async with self.client() as client:
            # Closing is the same however often it is done: no look first.
            patch = {"state": "closed", "state_reason": reason}
            self.checked(await client.patch(f"{self.issues}/{number}", json=patch), "closing the issue")
        return {"tracker": "github", "ref": ref, "closed": reason}


class Jira(_Api):
    def __init__(self, config: TicketingConfig, tracker: JiraTracker) -> None:
        assert config.token is not None
        secret = config.token.get_secret_value()
        if config.user is not None:
            auth = "Basic " + base64.b64encode(f"{config.user}:{secret}".encode()).decode()
        else:
            auth = f"Bearer {secret}"
        headers = {"Authorization": auth, "Accept": "application/json", "User-Agent": "vigil"}
        super().__init__(config, tracker.url, headers, tracker.timeout_s)
        self.tracker = tracker
        # Jira Cloud answers searches on its new endpoint only (the old one is gone); a server has only the old.
        self.search = "/rest/api/3/search/jql" if tracker.cloud else "/rest/api/2/search"

    async def find(self, client: httpx.AsyncClient, effect: Effect) -> dict[str, Any] | None:
        jql = f'project = "{self.tracker.project}" AND labels = "{jira_label(effect.key)}" ORDER BY created ASC'
        query = {"jql": jql, "fields": ["status"], "maxResults": 1}
        answer = self.checked(await client.post(self.search, json=query), "searching for the issue")
        issues = (answer or {}).get("issues") or []
        return issues[0] if issues else None  # type: ignore[no-any-return]

    def _url(self, key: str) -> str:
        return f"{self.tracker.url}/browse/{key}"

    async def open(self, effect: Effect) -> dict[str, Any]:
        async with self.client() as client:
            issue = await self.find(client, effect)
            if issue is None:
                fields: dict[str, Any] = {
                    "project": {"key": self.tracker.project},
                    "issuetype": {"name": self.tracker.issue_type},
                    "summary": effect.payload["title"],
                    "description": effect.payload["body"],
                    "labels": [*self.tracker.labels, jira_label(effect.key)],
                }
                if effect.payload.get("due_on"):
                    fields["duedate"] = effect.payload["due_on"]
                created = await client.post("/rest/api/2/issue", json={"fields": fields})
                if created.status_code == 400 and "duedate" in created.text and "duedate" in fields:
                    # A project whose create screen has no due date: the ticket goes without (its body says when).
                    del fields["duedate"]
                    created = await client.post("/rest/api/2/issue", json={"fields": fields})
                issue = self.checked(created, "opening the issue")
        return {"tracker": "jira", "ref": issue["key"], "url": self._url(issue["key"])}

    async def close(self, effect: Effect) -> dict[str, Any]:
        ref = str((effect.payload.get("ticket") or {}).get("ref", ""))
        if not ref.startswith(f"{self.tracker.project}-"):
            raise PermanentEffectError(f"the ticket {ref!r} is not an issue of project {self.tracker.project}")
        path = f"/rest/api/2/issue/{quote(ref, safe='')}"
        async with self.client() as client:
            issue = self.checked(await client.get(path, params={"fields": "status"}), "reading the issue")
            status = ((issue or {}).get("fields") or {}).get("status") or {}
            if (status.get("statusCategory") or {}).get("key") != "done":
                offered = self.checked(await client.get(f"{path}/transitions"), "reading the issue's transitions")
                done = [
                    t
                    for t in (offered or {}).get("transitions", [])
                    if ((t.get("to") or {}).get("statusCategory") or {}).get("key") == "done"
                ]
                if not done:
                    raise PermanentEffectError(f"{ref}: its workflow offers no transition to a done status")
                moved = await client.post(f"{path}/transitions", json={"transition": {"id": done[0]["id"]}})
                self.checked(moved, "closing the issue")
        return {"tracker": "jira", "ref": ref, "closed": effect.payload.get("state", "done")}


def effect_kinds(config: TicketingConfig, *, on_outcome: OutcomeHandler | None = None) -> list[EffectKind]:
    """The effect kinds that open and close tickets in the configured tracker (none without one)."""
    tracker = config.tracker
    if tracker is None:
        return []
    api: GitHub | Jira = GitHub(config, tracker) if isinstance(tracker, GitHubTracker) else Jira(config, tracker)
    runs: dict[str, Callable[[Effect], Awaitable[dict[str, Any]]]] = {OPEN: api.open, CLOSE: api.close}
    return [
        EffectKind(
            name=name,
            execute=run,
            timeout_s=tracker.timeout_s * 4,  # a look, then a write: a few requests each
            max_attempts=tracker.max_attempts,
            concurrency=4,
            per_target_concurrency=4,
            on_outcome=on_outcome,
            min_retry_s=tracker.min_retry_s,
        )
        for name, run in runs.items()
    ]


# ---- word from the tracker: an issue closed there ------------------------------------------------


def closed_issue(event: str, payload: Any, tracker: GitHubTracker) -> tuple[str, str, str] | None:
    """From a GitHub webhook delivery: (the ticket's ref, who closed it, how) when it says an issue of the
    tracker's repository was closed; None for anything else (another event, action or repository)."""
    if event != "issues" or not isinstance(payload, dict) or payload.get("action") != "closed":
        return None
    issue, repository = payload.get("issue"), payload.get("repository")
    if not isinstance(issue, dict) or not isinstance(repository, dict) or "pull_request" in issue:
        return None
    number, full_name = issue.get("number"), repository.get("full_name")
    if not isinstance(number, int) or not isinstance(full_name, str) or full_name.lower() != tracker.repository.lower():
        return None
    login = str((payload.get("sender") or {}).get("login") or "(unknown sender)")
    reason = str(issue.get("state_reason") or "completed")
    return f"{tracker.repository}#{number}", login, reason


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def closed_jira_issue(payload: Any, tracker: JiraTracker) -> tuple[str, str, str] | None:
    """From a Jira webhook delivery: (the issue's key, who moved it, how) when it says an issue of the tracker's
    project was just moved to a done status; None for anything else (a comment, an edit, another project).

    How: ``completed`` for a resolution (or, with none, a status) the tracker counts as done; else its name.
    """
    if not isinstance(payload, dict) or payload.get("webhookEvent") != "jira:issue_updated":
        return None
    issue = _dict(payload.get("issue"))
    key = issue.get("key")
    if not isinstance(key, str) or not key.upper().startswith(f"{tracker.project}-"):
        return None
    changed = {_dict(item).get("field") for item in _dict(payload.get("changelog")).get("items") or []}
    if not changed & {"status", "resolution"}:
        return None  # a comment or an edit of an issue done long ago: no word of its closing
    fields = _dict(issue.get("fields"))
    status = _dict(fields.get("status"))
    if _dict(status.get("statusCategory")).get("key") != "done":
        return None
    user = _dict(payload.get("user"))
    # A stable id names who did it (a display name is anyone's to change): Cloud's account id, Server's name.
    who = str(user.get("accountId") or user.get("name") or user.get("displayName") or "(unknown user)")
    said = _dict(fields.get("resolution")).get("name") or status.get("name") or ""
    done = {name.lower() for name in tracker.done_resolutions}
    return key.upper(), who, "completed" if str(said).lower() in done else str(said or "no resolution")
