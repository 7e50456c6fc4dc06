"""Notices to people: which channels a notice goes to, what it says there, and sending it effectively once.

The coordinator decides *that* someone must hear of an incident (a ``Notice``: escalated, updated,
changed state, still open, a step awaiting approval, a step failed, nobody acknowledged); this
module decides *where* (``routes`` per notice kind and severity in ``notifications.yaml``), *to
whom* (its ``people`` and ``groups``, each with an address per channel), and *what* (a template
per notice kind, and per channel where one is given). ``notify`` enqueues one effect per channel
and recipient in the caller's transaction, with the idempotency key
``<incident>:<kind>:<discriminator>:<channel>:<recipient>``: two coordinators, or a redelivered
event, enqueue one effect, and the far side sees the key (``Idempotency-Key`` header, or the
mail's ``Message-ID``). The effects runner delivers, retries with backoff and parks; the kinds
from ``effect_kinds`` report each final outcome to the caller's hook.

Channels, each optional: ``webhook`` (a signed JSON POST), ``slack`` (Block Kit), ``teams``
(an Adaptive Card), ``mattermost`` (Slack-compatible attachments) and ``email`` (SMTP, threaded:
every mail about an incident answers its first one). Templates are Jinja, sandboxed, with
undefined names an error; they are files Vigil ships or an operator puts in ``templates_dir``,
never text from an alert: alert values are only ever inserted, escaped for the channel.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args
from urllib.parse import quote, urlsplit

import jinja2
import orjson
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from services.coordinator.domain import in_domains, mail_address
from services.coordinator.metrics import UNADDRESSED
from shared.db import Conn
from shared.effects import EffectKind, OutcomeHandler, enqueue, http_target
from shared.effects.builtin import ENV_NAME_PATTERN, HttpRequest, http_request
from shared.effects.domain import message_id
from shared.effects.mail_async import ThreadedMail, smtp_mail
from shared.events import Escalation, EscalationExhaustion, StateChange, StepChange
from shared.yamlfile import node_at

log = logging.getLogger(__name__)

DEFAULT_NOTIFICATIONS = Path(__file__).with_name("notifications.yaml")
SHIPPED_TEMPLATES = Path(__file__).with_name("templates")

NoticeKind = Literal[
    "escalation",
    "update",
    "state_changed",
    "reminder",
    "approval_requested",
    "step_failed",
    "exhausted",
    "status_update",
    "reporter_received",
    "reporter_update",
    "reporter_resolved",
    "digest",
]
Channel = Literal["webhook", "slack", "teams", "mattermost", "email"]
KINDS: tuple[str, ...] = get_args(NoticeKind)
CHANNELS: tuple[str, ...] = get_args(Channel)
HTTP_CHANNELS = ("webhook", "slack", "teams", "mattermost")
EFFECT_KIND_PREFIX = "notify."
ROOM = "room"  # the delivery to an incident's own Slack channel (``rooms`` in the file)
ROOM_HOLD = timedelta(days=1)  # what waits for a room to open is held this long at most (its opening releases it)

# What each kind's data must hold: the shipped templates use these unguarded, and every template
# is rendered with exactly these at start-up, so a template that needs more fails then, not mid-incident.
REQUIRED_DATA: dict[str, tuple[str, ...]] = {
    "escalation": ("title", "reason", "commander"),
    "update": ("title", "reason"),
    "state_changed": ("title", "from_state", "to_state", "actor"),
    "reminder": ("title", "state", "reason"),
    "approval_requested": ("title", "step", "reason"),
    "step_failed": ("title", "step", "reason"),
    "exhausted": ("title", "rotation", "paged", "reason"),
    "status_update": ("title", "state", "message", "actor"),
    "reporter_received": ("reported_at",),
    "reporter_update": ("reported_at", "message"),
    "reporter_resolved": ("reported_at", "resolution"),
    "digest": ("name", "period", "opened", "resolved", "open_now"),
}
# Notices to the people who reported a problem (``reporters`` in the file): by mail only, to an address
# of an allowed domain, with nothing of the incident but its reference, what a person told them and
# how it ended; no link (the web view is for Vigil's users). A report is named by when it was made,
# never by its words: whoever may send alerts could otherwise have Vigil mail any words they like to
# any address of the domains.
REPORTER_KINDS = ("reporter_received", "reporter_update", "reporter_resolved")
WORD_BACK_OF: dict[str, str] = {
    "reporter_received": "received",
    "reporter_update": "status_update",
    "reporter_resolved": "resolved",
}
SAMPLE_VALUES: dict[str, Any] = {"paged": ["someone@example.com"]}

MIN_SECRET_CHARS = 16
# Limits of the far sides: Slack's header and section text, fields per section; Teams keeps cards small.
SLACK_HEADER_CHARS = 150
SLACK_SECTION_CHARS = 3000
SLACK_FIELDS = 10
SLACK_FIELD_CHARS = 2000
TEXT_CHARS = 8000
SEVERITY_COLOURS = {"SEV1": "#b60205", "SEV2": "#d93f0b", "SEV3": "#fbca04", "SEV4": "#6a737d"}
_RECIPIENT_NAME = r"^[^:\s]{1,200}$"
_EMAIL = r"^[^@\s<>,;:\"]+@[^@\s<>,;:\"]+$"
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")


# ---- the interface the coordinator calls -------------------------------------------------------


@dataclass
class Notice:
    """Something people must hear about one incident.

    ``discriminator`` tells this notice from others of its kind about the incident (an escalation
    step, a transition, a reminder's number, a response step's id): a notice with the same kind and
    discriminator is the same notice, sent once. ``recipients`` names people and groups of
    ``notifications.yaml``. ``data`` holds the kind's ``REQUIRED_DATA`` and whatever else its
    templates show (JSON-able, no secrets: the generic webhook carries it as it is).
    """

    kind: str
    incident_id: str
    discriminator: str
    severity: str
    recipients: list[str]
    data: dict[str, Any] = field(default_factory=dict)


class NoticeError(ValueError):
    """A notice the caller got wrong (an unknown kind, data missing): a bug to fix, not a delivery failure."""


class NotificationsConfigError(ValueError):
    """A notifications file (or environment, or template) that cannot be used; ``problems`` say where and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---- notices from the coordinator's events: pure ------------------------------------------------


def escalation_notice(
    incident_id: str, escalation: Escalation, *, discriminator: str, recipients: Sequence[str] | None = None
) -> Notice:
    """A page with everything gathered, to the escalation's commander unless ``recipients`` says otherwise.

    ``discriminator`` tells the pages of one incident apart: ``step-<n>`` for the walk down the
    rotation, ``severity-<SEV>`` for a raised severity, ``step-failed-<step id>`` for a failed step.
    """
    return Notice(
        kind="escalation",
        incident_id=incident_id,
        discriminator=discriminator,
        severity=escalation.severity.value,
        recipients=list(recipients if recipients is not None else [escalation.commander]),
        data=escalation.model_dump(mode="json"),
    )


def exhausted_notice(
    incident_id: str, exhaustion: EscalationExhaustion, *, title: str, recipients: Sequence[str]
) -> Notice:
    """Nobody in the rotation acknowledged: once per incident and rotation, to whoever must step in."""
    return Notice(
        kind="exhausted",
        incident_id=incident_id,
        discriminator=exhaustion.rotation,
        severity=exhaustion.severity.value,
        recipients=list(recipients),
        data={"title": title, **exhaustion.model_dump(mode="json")},
    )


def state_changed_notice(
    incident_id: str, change: StateChange, *, title: str, severity: str, recipients: Sequence[str]
) -> Notice:
    """An incident moved: once per move (``<from>-><to>``, and the command that moved it, if any)."""
    move = f"{change.from_state.value if change.from_state else 'none'}->{change.to_state.value}"
    return Notice(
        kind="state_changed",
        incident_id=incident_id,
        discriminator=f"{move}:{change.command_id}" if change.command_id else move,
        severity=severity,
        recipients=list(recipients),
        data={"title": title, **change.model_dump(mode="json")},
    )


def step_notice(
    incident_id: str, step: StepChange, *, title: str, severity: str, recipients: Sequence[str]
) -> Notice | None:
    """A response step awaiting approval or failed, once per step; None for any other change."""
    kinds = {"awaiting_approval": "approval_requested", "failed": "step_failed"}
    if step.state not in kinds:
        return None
    return Notice(
        kind=kinds[step.state],
        incident_id=incident_id,
        discriminator=step.step_id,
        severity=severity,
        recipients=list(recipients),
        data={
            "title": title,
            "step": step.name,
            "step_id": step.step_id,
            "item": step.item,
            "action": step.action,
            "reason": step.reason or step.state.replace("_", " "),
        },
    )


# ---- the file ----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _checked_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
        raise ValueError("not an http(s) URL with a host")
    return text


Url = Annotated[str, AfterValidator(_checked_url)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]
EmailAddress = Annotated[str, Field(pattern=_EMAIL)]
RecipientName = Annotated[str, Field(pattern=_RECIPIENT_NAME)]


class HttpChannel(_Model):
    url: Url | None = Field(None, description="Where a recipient without an address of their own is sent to.")
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(8, ge=1)


class WebhookChannel(HttpChannel):
    secret_env: EnvName = Field(description="The environment variable holding the signing secret.")


class EmailChannel(_Model):
    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    sender: EmailAddress
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls: upgrade before anything is sent; tls: TLS from the start (465)."
    )
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    cafile: Path | None = Field(None, description="CA bundle for a private CA; relative to this file.")
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _login(self) -> EmailChannel:
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("a login needs both username_env and password_env")
        return self


class Channels(_Model):
    webhook: WebhookChannel | None = None
    slack: HttpChannel | None = None
    teams: HttpChannel | None = None
    mattermost: HttpChannel | None = None
    email: EmailChannel | None = None

    def configured(self) -> list[str]:
        return [name for name in CHANNELS if getattr(self, name) is not None]


class Addresses(_Model):
    """Where one person or group is reached, per channel."""

    email: EmailAddress | None = None
    slack: Url | None = None
    teams: Url | None = None
    mattermost: Url | None = None
    webhook: Url | None = None


class Group(Addresses):
    members: list[RecipientName] = Field(
        default_factory=list, description="People reached one by one on a channel the group has no address on."
    )


def _domain(text: str) -> str:
    name = text.strip().lower().removeprefix("@")
    if not _DOMAIN.fullmatch(name):
        raise ValueError("not a mail domain (example.org)")
    return name


MailDomain = Annotated[str, AfterValidator(_domain)]
WordBack = Literal["received", "status_update", "resolved"]
DEFAULT_WORD_BACK: tuple[WordBack, ...] = ("received", "resolved")


class Reporters(_Model):
    """Writing back to the people who reported a problem (``vigil report-problem``, or a user report posted)."""

    domains: list[MailDomain] = Field(
        min_length=1,
        description="Only reporters whose address is in one of these domains (or below one) are written to: "
        "a report names any address, and Vigil must not mail whoever a stranger names.",
    )
    when: list[WordBack] = Field(
        default_factory=lambda: list(DEFAULT_WORD_BACK),
        description="received: their report is being handled (once per incident); status_update: each status "
        "update a person posts on the incident, as written; resolved: the incident was resolved (once).",
    )


Severity = Literal["SEV1", "SEV2", "SEV3", "SEV4", "default"]
RouteKind = Literal[
    "escalation",
    "update",
    "state_changed",
    "reminder",
    "approval_requested",
    "step_failed",
    "exhausted",
    "digest",
    "default",
]


def _tls_unless_loopback(url: str) -> str:
    if not url.startswith("https://") and urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("https only: a bearer token goes with every call")
    return url


RoomSeverity = Literal["SEV1", "SEV2", "SEV3", "SEV4"]
ROOM_SEVERITIES: tuple[RoomSeverity, ...] = ("SEV1", "SEV2")


class Rooms(_Model):
    """An incident room: a Slack channel of the incident's own, opened by Vigil, every notice about it posted there."""

    token_env: EnvName = Field(description="The variable holding the Slack app's bot token (xoxb-…).")
    api_url: Annotated[Url, AfterValidator(_tls_unless_loopback)] = Field(
        "https://slack.com/api", description="Slack's Web API (https: the token goes with every call)."
    )
    severities: list[RoomSeverity] = Field(
        default_factory=lambda: list(ROOM_SEVERITIES), min_length=1, description="Incidents that get a room."
    )
    prefix: str = Field("inc", pattern=r"^[a-z0-9][a-z0-9_-]{0,19}$", description="The start of each room's name.")
    private: bool = Field(False, description="Rooms as private channels: only those invited see them.")
    timeout_s: float = Field(15.0, gt=0)
    max_attempts: int = Field(10, ge=1)


class NotificationsFile(_Model):
    templates_dir: Path | None = Field(None, description="Templates that replace the shipped ones by name.")
    channels: Channels = Field(default_factory=Channels)
    people: dict[RecipientName, Addresses] = Field(default_factory=dict)
    groups: dict[RecipientName, Group] = Field(default_factory=dict)
    routes: dict[RouteKind, dict[Severity, list[Channel]]] = Field(
        default_factory=dict, description="Per notice kind (or default) and severity (or default): the channels."
    )
    reporters: Reporters | None = Field(None, description="Write back to people who reported a problem, by mail.")
    rooms: Rooms | None = Field(None, description="A Slack channel per serious incident, every notice posted there.")


def _cross_problems(file: NotificationsFile) -> list[tuple[list[int | str], str]]:
    """What each part of the file says alone is valid; return where the parts disagree."""
    problems: list[tuple[list[int | str], str]] = []
    configured = set(file.channels.configured())
    if file.reporters is not None and "email" not in configured:
        problems.append((["reporters"], "reporters are written to by mail: configure channels.email"))
    for kind, by_severity in file.routes.items():
        for severity, channels in by_severity.items():
            for index, channel in enumerate(channels):
                if channel not in configured:
                    problems.append((["routes", kind, severity, index], f"{channel} is not configured under channels"))
    for name, group in file.groups.items():
        if name in file.people:
            problems.append((["groups", name, KEY], f"{name} is a person too; a name means one or the other"))
        for index, member in enumerate(group.members):
            if member not in file.people:
                problems.append((["groups", name, "members", index], f"{member} is not listed under people"))
    return problems


KEY = "[key]"  # pydantic's mark of a problem with a mapping's key rather than its value


def _located(source: str, root: yaml.Node | None, loc: Sequence[int | str], message: str) -> str:
    mark = node_at(root, loc).start_mark if root is not None else None
    where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
    path = ".".join(str(part) for part in loc if part != KEY)
    return f"{source}:{where}: {path or '(file)'}: {message}"


def parse_notifications_file(document: str, *, source: str = "notifications") -> NotificationsFile:
    """Validate a notifications file's text; each problem says `source:line:column: where: why`."""
    try:
        data = yaml.safe_load(document)
        root = yaml.compose(document, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise NotificationsConfigError([f"{source}:{where}: not YAML: {exc.problem}"]) from exc
    try:
        file = NotificationsFile.model_validate({} if data is None else data)  # comments only: send nothing
    except ValidationError as exc:
        raise NotificationsConfigError(
            [
                _located(source, root, [p for p in error["loc"] if isinstance(p, int | str)], error["msg"])
                for error in exc.errors()
            ]
        ) from exc
    if problems := _cross_problems(file):
        raise NotificationsConfigError([_located(source, root, loc, message) for loc, message in problems])
    return file


# ---- templates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """A notice in words: a one-line title, a body, and labelled facts (shown as fields where a channel can)."""

    title: str
    body: str
    facts: tuple[tuple[str, str], ...] = ()
    link: str | None = None  # the incident's page in Vigil's web view, where a public URL is set


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _slack_text(value: Any) -> str:
    """A value as Slack mrkdwn shows it literally: no <!channel>, no <url|disguised link>."""
    return _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MENTION = re.compile(r"(?<![\w.])@")


def _mattermost_text(value: Any) -> str:
    """A value that pings nobody (a zero-width space after an @ that would start a mention: @channel, @all)
    and links nowhere (its Markdown shown as written, see _markdown_text). Mattermost's incoming webhooks
    also read Slack's markup first (<!channel> is @channel, <url|text> a link): &, < and > are written as
    entities, which its Markdown shows as the characters."""
    escaped = _markdown_text(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u200b", escaped)


def _markdown_text(value: Any) -> str:
    """A value on one line whose Markdown links nowhere (Teams' TextBlock, Mattermost): an alert's title is
    shown as its tool wrote it, never as a link disguised as text ([Ack here](https://…)) nor an image loaded
    from anywhere (![x](https://…)). A zero-width space between ] and ( breaks the link, and shows nothing."""
    return _one_line(value).replace("](", "]\u200b(")


def _plain(value: Any) -> str:
    return str(value)


# How a value is written into each channel's text (templates' own text is written as it is).
ESCAPES: dict[str, Callable[[Any], str]] = {
    "webhook": _one_line,
    "slack": _slack_text,
    "teams": _markdown_text,
    "mattermost": _mattermost_text,
    "email": _plain,
}


def _finalize(escape: Callable[[Any], str]) -> Callable[[Any], str]:
    def finalize(value: Any) -> str:
        return "" if value is None else escape(value)

    return finalize


class Templates:
    """The templates of every channel: ``<channel>/<kind>.j2``, else ``<kind>.j2``; an operator's directory first.

    A template defines the blocks ``title`` (one line) and ``body``, and may define ``facts`` (one
    ``Label: value`` a line: Slack fields, a Teams fact set, Mattermost fields, aligned lines in a
    mail). Only the blocks are rendered, so an ``{% import %}`` goes inside the block that uses it.
    """

    def __init__(self, override: Path | None = None, *, public_url: str | None = None) -> None:
        self.public_url = public_url.rstrip("/") if public_url else None
        searchpath = [str(override)] if override is not None else []
        searchpath.append(str(SHIPPED_TEMPLATES))
        self.environments = {
            channel: ImmutableSandboxedEnvironment(
                loader=jinja2.FileSystemLoader(searchpath),
                undefined=jinja2.StrictUndefined,
                autoescape=False,  # no HTML is made: each channel's escape is its finalize
                finalize=_finalize(ESCAPES[channel]),
                trim_blocks=True,
                lstrip_blocks=True,
                auto_reload=False,  # what runs is what the start-up check rendered
            )
            for channel in CHANNELS
        }

    def template(self, channel: str, kind: str) -> jinja2.Template:
        return self.environments[channel].select_template([f"{channel}/{kind}.j2", f"{kind}.j2"])

    def render(self, channel: str, notice: Notice, *, recipient: str, room: str | None = None) -> Rendered:
        """Render the notice for one channel; raise jinja2.TemplateError when its template fails.

        ``room``: the incident's Slack room, named in the notice (templates see it as ``room``).
        """
        template = self.template(channel, notice.kind)
        if not self.public_url or notice.kind in REPORTER_KINDS:
            link = None
        elif notice.kind == "digest":  # of many incidents: the list of them
            link = f"{self.public_url}/ui/incidents"
        else:
            link = f"{self.public_url}/ui/incidents/{quote(notice.incident_id, safe='')}"
        context = template.new_context(
            {
                "link": link,
                "kind": notice.kind,
                "incident_id": notice.incident_id,
                "short_id": notice.incident_id[:8],
                "severity": notice.severity,
                "discriminator": notice.discriminator,
                "recipient": recipient,
                "channel": channel,
                "room": room,
                "data": notice.data,
            }
        )

        def block(name: str) -> str:
            render = template.blocks.get(name)
            return "".join(render(context)).strip() if render is not None else ""

        facts = []
        for line in block("facts").splitlines():
            if line.strip():
                label, sep, value = line.partition(": ")
                facts.append((label.strip(), value.strip()) if sep else ("", line.strip()))
        return Rendered(title=_one_line(block("title")), body=block("body"), facts=tuple(facts), link=link)

    def check(self, channels: Sequence[str]) -> list[str]:
        """Render every kind on each channel with only its required data; return what fails, and where."""
        problems = []
        for channel in channels:
            for kind in KINDS:
                if kind in REPORTER_KINDS and channel != "email":
                    continue  # reporters are written to by mail only
                sample = Notice(
                    kind=kind,
                    incident_id="00000000-0000-0000-0000-000000000000",
                    discriminator="sample",
                    severity="SEV1",
                    recipients=["someone"],
                    data={key: SAMPLE_VALUES.get(key, f"sample {key}") for key in REQUIRED_DATA[kind]},
                )
                try:
                    template = self.template(channel, kind)
                    missing = [name for name in ("title", "body") if name not in template.blocks]
                    if missing:
                        problems.append(f"{template.filename}: defines no block {' or '.join(missing)}")
                        continue
                    if not self.render(channel, sample, recipient="someone").title:
                        problems.append(f"{template.filename}: the title is empty")
                except jinja2.TemplateSyntaxError as exc:
                    problems.append(f"{exc.filename or exc.name}:{exc.lineno}: {exc.message}")
                except jinja2.TemplateError as exc:
                    problems.append(
                        f"{channel}/{kind}: cannot render with the data every {kind} notice has "
                        f"({', '.join(REQUIRED_DATA[kind])}): {exc}"
                    )
        return problems


# ---- the configuration as the coordinator uses it ----------------------------------------------


@dataclass(frozen=True)
class NotificationsConfig:
    """A checked notifications file with its secrets (from the environment) and its templates."""

    file: NotificationsFile
    templates: Templates
    webhook_secret: SecretStr | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    cafile: Path | None = None
    source: str = "notifications"
    rooms_token: SecretStr | None = None

    def urls(self, channel: str) -> set[str]:
        """Every address an HTTP channel may send to: its default and each person's and group's."""
        settings = getattr(self.file.channels, channel)
        found = {settings.url} if settings is not None and settings.url else set()
        for entry in [*self.file.people.values(), *self.file.groups.values()]:
            if address := getattr(entry, channel):
                found.add(address)
        return found


def _secret(environ: Mapping[str, str], name: str, where: str, *, min_chars: int = 1) -> str:
    value = environ.get(name, "")
    if not value:
        raise NotificationsConfigError([f"{where}: {name} is not set"])
    if len(value) < min_chars:
        raise NotificationsConfigError([f"{where}: {name} holds fewer than {min_chars} characters"])
    return value


def parse_notifications(
    document: str,
    *,
    source: str = "notifications",
    base_dir: Path = Path("."),
    environ: Mapping[str, str] | None = None,
    public_url: str | None = None,
) -> NotificationsConfig:
    """Check a notifications file's text, read the secrets it names from ``environ`` and check its templates."""
    environ = os.environ if environ is None else environ
    file = parse_notifications_file(document, source=source)
    channels = file.channels
    webhook_secret = smtp_username = smtp_password = cafile = None
    if channels.webhook is not None:
        value = _secret(
            environ, channels.webhook.secret_env, f"{source}: channels.webhook.secret_env", min_chars=MIN_SECRET_CHARS
        )
        webhook_secret = SecretStr(value)
    if channels.email is not None:
        if channels.email.username_env is not None and channels.email.password_env is not None:
            smtp_username = _secret(environ, channels.email.username_env, f"{source}: channels.email.username_env")
            smtp_password = SecretStr(
                _secret(environ, channels.email.password_env, f"{source}: channels.email.password_env")
            )
        if channels.email.cafile is not None:
            cafile = base_dir / channels.email.cafile
            if not cafile.is_file():
                raise NotificationsConfigError([f"{source}: channels.email.cafile: {cafile} is not a file"])
    rooms_token = None
    if file.rooms is not None:
        token = _secret(environ, file.rooms.token_env, f"{source}: rooms.token_env").strip()
        if not token.isprintable() or any(c.isspace() for c in token):
            raise NotificationsConfigError([f"{source}: rooms.token_env: {file.rooms.token_env} holds spaces"])
        rooms_token = SecretStr(token)
    override = None
    if file.templates_dir is not None:
        override = base_dir / file.templates_dir
        if not override.is_dir():
            raise NotificationsConfigError([f"{source}: templates_dir: {override} is not a directory"])
    templates = Templates(override, public_url=public_url)
    # Rooms are worded as Slack is, whether or not Slack's incoming webhooks are a channel too.
    checked = sorted({*channels.configured(), *(["slack"] if file.rooms is not None else [])})
    if problems := templates.check(checked):
        raise NotificationsConfigError(problems)
    return NotificationsConfig(
        file=file,
        templates=templates,
        webhook_secret=webhook_secret,
        smtp_username=smtp_username,
        smtp_password=smtp_password,
        cafile=cafile,
        source=source,
        rooms_token=rooms_token,
    )


def load_notifications(
    path: Path = DEFAULT_NOTIFICATIONS, *, environ: Mapping[str, str] | None = None, public_url: str | None = None
) -> NotificationsConfig:
    """Read and check a notifications file (relative paths in it are relative to it); errors say where and why.

    ``public_url``: where people reach Vigil's web view; every notice links to its incident's page there."""
    try:
        document = path.read_text()
    except OSError as exc:
        raise NotificationsConfigError([f"{path}: cannot be read: {exc.strerror or exc}"]) from exc
    return parse_notifications(document, source=str(path), base_dir=path.parent, environ=environ, public_url=public_url)


# ---- who gets a notice, where: pure -------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One copy of a notice: on a channel, to a person or group (named in the key), at an address."""

    channel: str
    recipient: str
    address: str


def channels_for(file: NotificationsFile, kind: str, severity: str) -> list[str]:
    """The channels a notice of this kind and severity goes to: the kind's route, else the default route."""
    routes = cast(Mapping[str, Mapping[str, Sequence[str]]], file.routes)  # looked up by any text
    by_severity = routes.get(kind) or routes.get("default") or {}
    return list(by_severity.get(severity) or by_severity.get("default") or [])


def _default_address(file: NotificationsFile, channel: str) -> str | None:
    settings = getattr(file.channels, channel)
    return settings.url if channel in HTTP_CHANNELS and settings is not None else None


def _reach(file: NotificationsFile, channel: str, name: str) -> list[tuple[str, str]] | None:
    """(recipient, address) pairs that reach ``name`` on ``channel``; None when the name is unknown.

    A person: their address, else the channel's default. A group: its own address, else each member's.
    """
    if (person := file.people.get(name)) is not None:
        address = getattr(person, channel) or _default_address(file, channel)
        return [(name, address)] if address else []
    if (group := file.groups.get(name)) is not None:
        if own := getattr(group, channel):
            return [(name, own)]
        return [pair for member in group.members for pair in _reach(file, channel, member) or []]
    return None


def plan(file: NotificationsFile, notice: Notice) -> tuple[list[Delivery], list[str]]:
    """Every copy of the notice to send, and the recipients the file does not know.

    One copy per channel and address: a person listed twice, or in a group as well, is reached
    once, and so is a mailbox or chat channel several people share (named in the key by the first
    name, sorted); the generic webhook gets one call per recipient, whose name its body carries.
    """
    deliveries: list[Delivery] = []
    unknown = sorted({name for name in notice.recipients if name not in file.people and name not in file.groups})
    for channel in channels_for(file, notice.kind, notice.severity):
        seen: set[tuple[str, str]] = set()
        for name in sorted(set(notice.recipients)):
            for recipient, address in _reach(file, channel, name) or []:
                # The generic webhook's receiver routes by the body's recipient: one call each.
                identity = (address, recipient if channel == "webhook" else "")
                if identity not in seen:
                    seen.add(identity)
                    deliveries.append(Delivery(channel, recipient, address))
    return deliveries, unknown


def notice_key(notice: Notice, channel: str, recipient: str) -> str:
    """The idempotency key of one copy: ``<incident>:<kind>:<discriminator>:<channel>:<recipient>``."""
    return f"{notice.incident_id}:{notice.kind}:{notice.discriminator}:{channel}:{recipient}"


def reporter_thread_key(incident_id: str, address: str) -> str:
    """The key of a reporter's first mail about an incident (that it is being handled): the root of their thread."""
    return f"{incident_id}:reporter_received:{RECEIVED}:email:{address}"


RECEIVED = "received"  # the discriminator of a reporter's first notice: one per incident and address


@dataclass(frozen=True)
class NoticeKey:
    incident_id: str
    kind: str
    discriminator: str
    channel: str
    recipient: str


def parse_key(key: str) -> NoticeKey:
    """Read a notice key back (e.g. in an on_outcome hook); the discriminator may itself hold colons."""
    incident_id, kind, rest = key.split(":", 2)
    discriminator, channel, recipient = rest.rsplit(":", 2)
    return NoticeKey(incident_id, kind, discriminator, channel, recipient)


def check_notice(notice: Notice) -> None:
    """Raise NoticeError when the caller built the notice wrong."""
    if notice.kind not in KINDS:
        raise NoticeError(f"unknown notice kind {notice.kind!r}; the kinds are {', '.join(KINDS)}")
    if not notice.incident_id or ":" in notice.incident_id:
        raise NoticeError(f"incident id {notice.incident_id!r}: empty or holding ':'")
    if missing := [key for key in REQUIRED_DATA[notice.kind] if key not in notice.data]:
        raise NoticeError(f"a {notice.kind} notice needs {', '.join(missing)} in its data")
    try:
        orjson.dumps(notice.data)
    except TypeError as exc:
        raise NoticeError(f"a notice's data must be JSON-able: {exc}") from exc


# ---- what each channel is sent: pure ------------------------------------------------------------


@dataclass(frozen=True)
class Dispatch:
    """The effect that carries one copy: exactly what will be sent."""

    kind: str
    target: str
    payload: dict[str, Any]


OPEN_LINK = "Open in Vigil"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _context_line(notice: Notice) -> str:
    if notice.kind == "digest":
        return f"Vigil · digest {notice.data.get('name', '')} · {notice.discriminator}"
    return f"Vigil · {notice.kind.replace('_', ' ')} · {notice.severity} · incident {notice.incident_id}"


def slack_message(notice: Notice, rendered: Rendered) -> dict[str, Any]:
    """An incoming-webhook message in Block Kit: header, text, fields, and a context line; ``text`` for alerts."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(rendered.title, SLACK_HEADER_CHARS)}},
    ]
    if rendered.body:
        text = {"type": "mrkdwn", "text": _clip(rendered.body, SLACK_SECTION_CHARS)}
        blocks.append({"type": "section", "text": text})
    if rendered.facts:
        fields = [
            {"type": "mrkdwn", "text": _clip(f"*{label}*\n{value}" if label else value, SLACK_FIELD_CHARS)}
            for label, value in rendered.facts[:SLACK_FIELDS]
        ]
        blocks.append({"type": "section", "fields": fields})
    if rendered.link:
        button = {"type": "button", "text": {"type": "plain_text", "text": OPEN_LINK}, "url": rendered.link}
        blocks.append({"type": "actions", "elements": [button]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_text(_context_line(notice))}]})
    return {"text": _clip(rendered.title, SLACK_SECTION_CHARS), "blocks": blocks}


def mattermost_message(notice: Notice, rendered: Rendered) -> dict[str, Any]:
    """An incoming-webhook message with one Slack-compatible attachment, coloured by severity."""
    attachment: dict[str, Any] = {
        "fallback": rendered.title,
        "color": SEVERITY_COLOURS.get(notice.severity, "#6a737d"),
        "title": rendered.title,
        "text": _clip(rendered.body, TEXT_CHARS),
        "fields": [{"title": label, "value": value, "short": True} for label, value in rendered.facts],
        "footer": _mattermost_text(_context_line(notice)),
    }
    if rendered.link:
        attachment["title_link"] = rendered.link
    return {"text": rendered.title, "attachments": [attachment]}


def teams_message(notice: Notice, rendered: Rendered) -> dict[str, Any]:
    """A Teams incoming-webhook message carrying an Adaptive Card (version 1.4)."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": rendered.title,
            "weight": "Bolder",
            "size": "Large",
            "wrap": True,
            "color": "Attention" if notice.severity in ("SEV1", "SEV2") else "Default",
        }
    ]
    if rendered.body:
        body.append({"type": "TextBlock", "text": _clip(rendered.body, TEXT_CHARS), "wrap": True})
    if rendered.facts:
        body.append({"type": "FactSet", "facts": [{"title": label, "value": value} for label, value in rendered.facts]})
    body.append({"type": "TextBlock", "text": _context_line(notice), "isSubtle": True, "size": "Small", "wrap": True})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": body,
    }
    if rendered.link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": OPEN_LINK, "url": rendered.link}]
    attachment = {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
    return {"type": "message", "attachments": [attachment]}


def webhook_message(notice: Notice, rendered: Rendered, *, key: str, recipient: str) -> dict[str, Any]:
    """The generic webhook's JSON: the notice's words and its data, with the incident as the conversation."""
    return {
        "key": key,
        "kind": notice.kind,
        "incident_id": notice.incident_id,
        "discriminator": notice.discriminator,
        "severity": notice.severity,
        "recipient": recipient,
        "conversation": notice.incident_id,
        "thread_key": notice.incident_id,
        "title": rendered.title,
        "text": rendered.body,
        "facts": [{"label": label, "value": value} for label, value in rendered.facts],
        "link": rendered.link,
        "data": notice.data,
    }


def mail_text(rendered: Rendered) -> str:
    """The body, then the facts as aligned `Label: value` lines, then the incident's page."""
    text = rendered.body + "\n"
    if rendered.facts:
        width = max(len(label) for label, _ in rendered.facts) + 1
        lines = [f"{label + ':':<{width}} {value}" if label else value for label, value in rendered.facts]
        text += "\n" + "\n".join(lines) + "\n"
    if rendered.link:
        text += f"\n{OPEN_LINK}: {rendered.link}\n"
    return text


def dispatch(
    notice: Notice, delivery: Delivery, rendered: Rendered, *, key: str, thread_root: str | None = None
) -> Dispatch:
    """The effect for one copy. A mail names ``thread_root`` (the incident's first mail) unless it is that mail."""
    kind = EFFECT_KIND_PREFIX + delivery.channel
    if delivery.channel == ROOM:
        # Posted by the channel's name: the room may still be opening (the post waits for it).
        message = {"channel": delivery.address, **slack_message(notice, rendered)}
        return Dispatch(kind=kind, target=f"slack:{delivery.address}", payload=message)
    if delivery.channel == "email":
        root = thread_root if thread_root is not None and thread_root != message_id(key) else None
        mail = ThreadedMail(
            to=[delivery.address],
            subject=rendered.title,
            body=mail_text(rendered),
            in_reply_to=root,
            references=[root] if root else [],
        )
        return Dispatch(kind=kind, target=delivery.address, payload=mail.model_dump(mode="json"))
    bodies: dict[str, Callable[[], dict[str, Any]]] = {
        "slack": lambda: slack_message(notice, rendered),
        "teams": lambda: teams_message(notice, rendered),
        "mattermost": lambda: mattermost_message(notice, rendered),
        "webhook": lambda: webhook_message(notice, rendered, key=key, recipient=delivery.recipient),
    }
    request = HttpRequest(method="POST", url=delivery.address, body=bodies[delivery.channel]())
    return Dispatch(kind=kind, target=http_target(delivery.address), payload=request.model_dump(mode="json"))


def fallback(notice: Notice, channel: str) -> Rendered:
    """The words of a notice whose template failed: plain, from the fields every notice of its kind has."""
    escape = ESCAPES[channel]
    data = notice.data
    title = f"[{notice.severity}] {notice.kind.replace('_', ' ')}: {escape(data.get('title', notice.incident_id))}"
    body = "\n".join(f"{key}: {escape(data[key])}" for key in REQUIRED_DATA.get(notice.kind, ()) if key in data)
    return Rendered(title=_one_line(title), body=body)


# ---- enqueueing: in the caller's transaction ----------------------------------------------------


async def _thread_root(conn: Conn, incident_id: str, candidate: str) -> str:
    """The incident's first mail: ``candidate`` if no mail about it came before (in a committed transaction)."""
    await conn.execute(
        "INSERT INTO notification_threads (incident_id, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        incident_id,
        candidate,
    )
    # A separate statement: it sees a root another transaction committed while the insert waited.
    root: str | None = await conn.fetchval(
        "SELECT message_id FROM notification_threads WHERE incident_id = $1", incident_id
    )
    if root is None:
        raise RuntimeError(f"incident {incident_id}: no mail thread after recording one")
    return root


_UNLISTED_SAID: set[str] = set()  # people a notice named who are not in the notifications file


async def notify(conn: Conn, config: NotificationsConfig, notice: Notice, *, service: str = "coordinator") -> list[str]:
    """Enqueue one effect per channel and recipient, in the caller's transaction; return the keys enqueued anew.

    A key enqueued before (a redelivered event, another coordinator) is not enqueued again and not
    returned. A template that fails does not stop a page: that copy goes out in a plain form and
    the failure is logged. Raise NoticeError for a notice built wrong.
    """
    check_notice(notice)
    if notice.kind in REPORTER_KINDS:
        raise NoticeError(f"a {notice.kind} notice goes to reporters' addresses: notify_reporters sends it")
    deliveries, unknown = plan(config.file, notice)
    room = await room_of(conn, config, notice.incident_id) if notice.kind != "digest" else None
    if room is not None:
        deliveries.append(Delivery(ROOM, ROOM, room.name))
    if unknown:
        UNADDRESSED.labels(notice.kind).inc(len(unknown))
        # Said once per person a process meets: a busy day would otherwise write a line per notice.
        first_time = [name for name in unknown if name not in _UNLISTED_SAID]
        _UNLISTED_SAID.update(first_time)
        log.log(
            logging.WARNING if first_time else logging.DEBUG,
            "incident %s: %s notice: %s not listed in %s; not sent to them%s",
            notice.incident_id,
            notice.kind,
            ", ".join(unknown),
            config.source,
            " (said once per person)" if first_time else "",
        )
    return await _enqueue(conn, config, notice, deliveries, service=service, room=room)


@dataclass(frozen=True)
class Room:
    """An incident's room: its channel's name, and once Slack opened it, its id."""

    name: str
    channel_id: str | None

    @property
    def open(self) -> bool:
        return self.channel_id is not None


async def room_of(conn: Conn, config: NotificationsConfig, incident_id: str) -> Room | None:
    """The incident's room, where every notice about it is posted too; None: it has none.

    Read under a share lock: the room's opening (which releases what was held for it) waits for this
    transaction, so that nothing enqueued here is held after it opened.
    """
    if config.file.rooms is None:
        return None
    row = await conn.fetchrow(
        "SELECT room, room_id, room_open FROM coordinator_incidents WHERE incident_id = $1 FOR SHARE", incident_id
    )
    if row is None or row["room"] is None:
        return None
    return Room(row["room"], row["room_id"] if row["room_open"] else None)


def room_hold(is_open: bool) -> datetime | None:
    """When something for a room may be done: now when it is open, else once it opens (its opening releases it)."""
    return None if is_open else datetime.now(UTC) + ROOM_HOLD


async def notify_reporters(
    conn: Conn, config: NotificationsConfig, notice: Notice, *, thread_of: str, service: str = "coordinator"
) -> list[str]:
    """Enqueue a mail to each reporter the notice names (``recipients``: their addresses), as ``notify`` does.

    Sent only when the file has ``reporters`` with the notice's occasion under ``when``, and only to
    addresses of its domains. Each reporter's mails are one thread, started by the first (that their
    report is being handled) about ``thread_of``: the incident that took their report, which may have
    been merged into this one since. Return the keys enqueued anew.
    """
    check_notice(notice)
    reporters = config.file.reporters
    if notice.kind not in REPORTER_KINDS:
        raise NoticeError(f"a {notice.kind} notice goes to people of the notifications file: notify sends it")
    if reporters is None or WORD_BACK_OF[notice.kind] not in reporters.when:
        return []
    allowed = [a for a in sorted(set(notice.recipients)) if mail_domain_allowed(a, reporters.domains)]
    deliveries = [Delivery("email", address, address) for address in allowed]
    return await _enqueue(conn, config, notice, deliveries, service=service, thread_of=thread_of)


def mail_domain_allowed(address: str, domains: Sequence[str]) -> bool:
    """Whether the address is a plain mail address in one of the domains, or below one (a.example.org in
    example.org); an address a mail server would read otherwise (a comment, %- or !-routing) is not."""
    plain = mail_address(address)
    return plain == address and in_domains(plain, domains)


async def _enqueue(
    conn: Conn,
    config: NotificationsConfig,
    notice: Notice,
    deliveries: Sequence[Delivery],
    *,
    service: str,
    thread_of: str | None = None,
    room: Room | None = None,
) -> list[str]:
    enqueued: list[str] = []
    for delivery in deliveries:
        key = notice_key(notice, delivery.channel, delivery.recipient)
        # A room is Slack: its words are Slack's.
        words_for = "slack" if delivery.channel == ROOM else delivery.channel
        try:
            # Where its people talk it over: named in every copy but the room's own.
            named_room = room.name if room is not None and delivery.channel != ROOM else None
            rendered = config.templates.render(words_for, notice, recipient=delivery.recipient, room=named_room)
        except Exception as exc:  # a template's own error, or one its expressions raise: never the page itself
            log.error(
                "incident %s: the %s template of %s notices failed (%r); sending the plain form",
                notice.incident_id,
                delivery.channel,
                notice.kind,
                exc,
            )
            rendered = fallback(notice, words_for)
        if notice.kind in REPORTER_KINDS:
            # Their own thread: the mails to Vigil's people are not theirs to answer.
            root = message_id(reporter_thread_key(thread_of or notice.incident_id, delivery.recipient))
        elif delivery.channel == "email":
            root = await _thread_root(conn, notice.incident_id, message_id(key))
        else:
            root = None
        effect = dispatch(notice, delivery, rendered, key=key, thread_root=root)
        if delivery.channel == ROOM and room is not None and room.channel_id is not None:
            effect.payload["channel_id"] = room.channel_id
        if await enqueue(
            conn,
            service=service,
            kind=effect.kind,
            key=key,
            subject=notice.incident_id,
            target=effect.target,
            payload=effect.payload,
            not_before=room_hold(room.open) if delivery.channel == ROOM and room is not None else None,
        ):
            enqueued.append(key)
    return enqueued


# ---- running them ------------------------------------------------------------------------------


def effect_kinds(config: NotificationsConfig, *, on_outcome: OutcomeHandler | None = None) -> list[EffectKind]:
    """The effect kinds that deliver notices on the configured channels, each reporting to ``on_outcome``.

    HTTP channels are held to the addresses in the file: a queued copy to an address removed since
    fails instead of going out.
    """
    channels = config.file.channels
    kinds: list[EffectKind] = []
    for name in HTTP_CHANNELS:
        settings = getattr(channels, name)
        if settings is None:
            continue
        kinds.append(
            http_request(
                name=EFFECT_KIND_PREFIX + name,
                signing_secret=config.webhook_secret if name == "webhook" else None,
                allowed_urls=config.urls(name),
                timeout_s=settings.timeout_s,
                max_attempts=settings.max_attempts,
                on_outcome=on_outcome,
            )
        )
    if (email := channels.email) is not None:
        kinds.append(
            smtp_mail(
                name=EFFECT_KIND_PREFIX + "email",
                host=email.host,
                port=email.port,
                sender=email.sender,
                starttls=email.security == "starttls",
                use_tls=email.security == "tls",
                username=config.smtp_username,
                password=config.smtp_password,
                cafile=config.cafile,
                timeout_s=email.timeout_s,
                max_attempts=email.max_attempts,
                on_outcome=on_outcome,
            )
        )
    return kinds


def unknown_recipients(config: NotificationsConfig, names: Sequence[str]) -> list[str]:
    """The names (e.g. the on-call rotations' members) that no person or group of the file is: they get nothing."""
    return sorted({name for name in names if name not in config.file.people and name not in config.file.groups})
