"""The responder's connectors: how a playbook step's action reaches the outside, as a durable effect.

A connector turns a step's call into a ``Dispatch`` (an effect kind, a target and a payload)
without any I/O, so that what will be sent is stored with the step, shown to operators and
shown by a dry run before anything happens; its effect kinds then carry the payload out through
the effects runner, with the call's idempotency key. Built in: ``webhook`` (a signed HTTP POST),
``command`` (a configured program, never a shell) and ``blocklist`` (Vigil's own lists); ``notify``
is the executor's. Others come from the ``vigil.connectors`` entry point group. Secrets are read
from the environment when the responder starts, or when a program runs, and never enter a payload.
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import asyncpg
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from services.responder import blocklist
from shared.effects import Effect, EffectKind, OutcomeHandler, PermanentEffectError, http_target
from shared.effects.builtin import ENV_NAME_PATTERN, Command, HttpRequest, http_request, run_command
from shared.errors import validation_reason
from shared.yamlfile import node_at  # the responder's YAML files locate their errors alike

log = logging.getLogger(__name__)

DEFAULT_CONNECTORS = Path(__file__).with_name("connectors.yaml")
ENTRY_POINT_GROUP = "vigil.connectors"
# Names playbooks give the connectors Vigil brings; no plugin may take one.
BUILT_IN = ("webhook", "command", "blocklist", "notify")
KEY_PLACEHOLDER = "idempotency_key"
MIN_SECRET_CHARS = 16
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLUGIN_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


# ---- the interface the executor calls ------------------------------------------------------------


@dataclass(frozen=True)
class StepCall:
    """What one step asks of its connector."""

    key: str  # the idempotency key the far side sees (the step's id, or "<step id>:undo")
    incident_id: str
    step_id: str
    action: str  # e.g. isolate_host, block, unblock
    params: Mapping[str, str | int]
    reason: str  # e.g. "incident <id>: <step name>"
    expires_at: datetime | None  # when a reversible action's lease ends (block list entries carry it)


@dataclass(frozen=True)
class Dispatch:
    """The effect that carries a call: exactly what will be sent (an honest dry run shows it too)."""

    kind: str  # the effect kind's name, e.g. "connector.webhook"
    target: str  # for per-target concurrency: host:port, program name, "blocklist"
    payload: dict[str, Any]  # stored in the DB and shown to operators: never a secret


class ConnectorError(ValueError):
    """The call cannot be made (connector or action not configured, a parameter missing or unfit).

    The step is refused with this reason.
    """


@runtime_checkable
class Connector(Protocol):
    """Turns a step's call into an effect, and runs such effects; a plugin's factory returns one."""

    name: str  # as playbooks name it

    def dispatch(self, call: StepCall) -> Dispatch:
        """Return the effect that carries the call; pure, no I/O; raise ConnectorError saying why it cannot."""
        ...

    def effect_kinds(self, on_outcome: OutcomeHandler | None) -> Sequence[EffectKind]:
        """Return the effect kinds that run this connector's dispatches, each calling ``on_outcome``."""
        ...


# ---- configuration -----------------------------------------------------------------------------


class ConnectorsConfigError(ValueError):
    """A connectors file (or environment) that cannot be used; ``problems`` say where and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _checked_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
        raise ValueError("not an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError("a URL is stored with each step and shown to operators: no credentials in it")
    return text


Url = Annotated[str, AfterValidator(_checked_url)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]


class WebhookAction(_Model):
    url: Url


class WebhookConfig(_Model):
    url: Url | None = Field(None, description="Where every action goes unless `actions` names its own URL.")
    actions: dict[str, WebhookAction] = Field(default_factory=dict, description="Per-action URLs.")
    secret_env: EnvName | None = Field(
        None, description="The environment variable holding the signing secret (never the secret itself)."
    )

    @model_validator(mode="after")
    def _signed(self) -> WebhookConfig:
        if self.urls and self.secret_env is None:
            raise ValueError("a webhook with a URL needs secret_env: every request is signed")
        return self

    @property
    def urls(self) -> set[str]:
        """Every address the webhook may send to."""
        return ({self.url} if self.url else set()) | {a.url for a in self.actions.values()}


# One argument of a command: literal text and, after each piece, the placeholder that follows it.
Template = tuple[tuple[str, str | None], ...]


def parse_argument(text: str) -> Template:
    """Split an argument into text and ``{name}`` placeholders (``{{`` and ``}}`` are literal braces)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc} (write a literal brace twice: {{{{ or }}}})") from exc
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (not _NAME.fullmatch(field) or spec or conversion is not None):
            raise ValueError(f"{text!r}: a placeholder is a parameter's name in braces, like {{host}}")
        parts.append((literal, field))
    return tuple(parts)


class CommandAction(_Model):
    argv: list[str] = Field(min_length=1, description="The program (an absolute path) and its arguments.")
    env: list[EnvName] = Field(
        default_factory=list, description="Names of the responder's environment variables the program gets."
    )
    cwd: str | None = Field(None, description="Working directory (an absolute path).")
    permanent_exit_codes: list[int] = Field(
        default_factory=list, description="Exit codes that mean a refusal for good; any other non-zero is retried."
    )

    @field_validator("argv")
    @classmethod
    def _argv(cls, argv: list[str]) -> list[str]:
        if not os.path.isabs(argv[0]) or parse_argument(argv[0]) != ((argv[0], None),):
            raise ValueError(f"the program {argv[0]!r} must be an absolute path, without placeholders")
        for argument in argv[1:]:
            parse_argument(argument)
        return argv

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, cwd: str | None) -> str | None:
        if cwd is not None and not os.path.isabs(cwd):
            raise ValueError(f"the working directory {cwd!r} must be an absolute path")
        return cwd


class CommandConfig(_Model):
    actions: dict[str, CommandAction] = Field(default_factory=dict)


class ConnectorsConfig(_Model):
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    command: CommandConfig = Field(default_factory=CommandConfig)
    plugins: dict[Annotated[str, Field(pattern=_PLUGIN_NAME)], dict[str, Any]] = Field(
        default_factory=dict, description="Connectors from the vigil.connectors entry points, by name: options."
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugins(cls, plugins: Any) -> Any:
        if not isinstance(plugins, dict):
            return plugins
        if taken := sorted(name for name in plugins if name in BUILT_IN):
            raise ValueError(f"{', '.join(taken)}: built-in connector names; a plugin cannot take one")
        return {name: {} if options is None else options for name, options in plugins.items()}


def parse_connectors_config(document: str, *, source: str = "connectors") -> ConnectorsConfig:
    """Validate a connectors file's text; each problem says `source:line:column: where: why`."""
    try:
        data = yaml.safe_load(document)
        root = yaml.compose(document, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise ConnectorsConfigError([f"{source}:{where}: not YAML: {exc.problem}"]) from exc
    try:
        return ConnectorsConfig.model_validate({} if data is None else data)  # a file of comments: the defaults
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [part for part in error["loc"] if isinstance(part, int | str)]
            mark = node_at(root, loc).start_mark if root is not None else None
            where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
            problems.append(f"{source}:{where}: {'.'.join(map(str, loc)) or '(file)'}: {error['msg']}")
        raise ConnectorsConfigError(problems) from exc


def load_connectors_config(path: Path = DEFAULT_CONNECTORS) -> ConnectorsConfig:
    """Read and validate a connectors file; raise ConnectorsConfigError saying where and why."""
    try:
        document = path.read_text()
    except OSError as exc:
        raise ConnectorsConfigError([f"{path}: cannot be read: {exc.strerror or exc}"]) from exc
    return parse_connectors_config(document, source=str(path))


# ---- webhook -----------------------------------------------------------------------------------


class WebhookConnector:
    """An HTTP POST of the call as JSON, signed with HMAC-SHA256 over the timestamp and the body."""

    name = "webhook"
    kind = "connector.webhook"

    def __init__(self, config: WebhookConfig, *, secret: SecretStr | None) -> None:
        if config.urls and secret is None:
            raise ConnectorsConfigError(["webhook: URLs are configured but no signing secret is given"])
        self.config = config
        self.secret = secret

    def dispatch(self, call: StepCall) -> Dispatch:
        action = self.config.actions.get(call.action)
        url = action.url if action is not None else self.config.url
        if url is None:
            raise ConnectorError(f"webhook: no URL configured for action {call.action}")
        body = {
            "key": call.key,
            "incident_id": call.incident_id,
            "step_id": call.step_id,
            "action": call.action,
            "params": dict(call.params),
            "reason": call.reason,
            "expires_at": call.expires_at.isoformat() if call.expires_at is not None else None,
        }
        request = HttpRequest(method="POST", url=url, body=body)
        return Dispatch(kind=self.kind, target=http_target(url), payload=request.model_dump(mode="json"))

    def effect_kinds(self, on_outcome: OutcomeHandler | None) -> Sequence[EffectKind]:
        # Held to the configured addresses: a payload naming another one (the file changed since) fails.
        return [
            http_request(
                name=self.kind, signing_secret=self.secret, allowed_urls=self.config.urls, on_outcome=on_outcome
            )
        ]


def webhook_secret(config: WebhookConfig, environ: Mapping[str, str]) -> SecretStr | None:
    """The signing secret from the variable ``secret_env`` names; required once a URL is configured."""
    if config.secret_env is None:
        return None
    value = environ.get(config.secret_env, "")
    if not value:
        if config.urls:
            raise ConnectorsConfigError(
                [f"webhook.secret_env: {config.secret_env} is not set; every webhook request is signed with it"]
            )
        return None
    if len(value) < MIN_SECRET_CHARS:
        raise ConnectorsConfigError(
            [f"webhook.secret_env: {config.secret_env} holds fewer than {MIN_SECRET_CHARS} characters"]
        )
    return SecretStr(value)


# ---- command -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Program:
    config: CommandAction
    argv: tuple[Template, ...]


class CommandConnector:
    """A configured program per action, with ``{name}`` placeholders filled from the step's parameters.

    The filling is one pass over the configured arguments: a parameter's value is inserted as it
    is and never read again, so `$(id)`, `; rm -rf /` or `{other}` in a value stay literal text in
    one argument, and no shell ever sees them. A value that starts with `-` is refused: it could
    pass for an option.
    """

    name = "command"
    kind = "connector.command"

    def __init__(self, config: CommandConfig, *, environ: Mapping[str, str]) -> None:
        self.programs = {
            action: _Program(spec, tuple(parse_argument(argument) for argument in spec.argv))
            for action, spec in config.actions.items()
        }
        self.environ = environ
        for action, spec in config.actions.items():
            if missing := [name for name in spec.env if name not in environ]:
                log.warning("command %s: %s not set here; the program runs without", action, ", ".join(missing))

    def dispatch(self, call: StepCall) -> Dispatch:
        program = self.programs.get(call.action)
        if program is None:
            raise ConnectorError(f"command: no program configured for action {call.action}")
        values = {**{name: str(value) for name, value in call.params.items()}, KEY_PLACEHOLDER: call.key}
        argv = [self._fill(call.action, template, values) for template in program.argv]
        command = Command(
            argv=argv,
            permanent_exit_codes=program.config.permanent_exit_codes,
            env_pass=program.config.env,
            cwd=program.config.cwd,
            substitute_key=False,  # filled in above, once: a value holding `{idempotency_key}` stays as it is
        )
        return Dispatch(kind=self.kind, target=argv[0], payload=command.model_dump(mode="json"))

    @staticmethod
    def _fill(action: str, template: Template, values: Mapping[str, str]) -> str:
        pieces: list[str] = []
        for literal, name in template:
            pieces.append(literal)
            if name is None:
                continue
            if name not in values:
                raise ConnectorError(f"command: action {action} needs the parameter {name}")
            value = values[name]
            if value.startswith("-"):
                raise ConnectorError(f"command: parameter {name} starts with '-' and could pass for an option")
            if "\x00" in value:
                raise ConnectorError(f"command: parameter {name} holds a NUL character, which no argument can")
            pieces.append(value)
        return "".join(pieces)

    def effect_kinds(self, on_outcome: OutcomeHandler | None) -> Sequence[EffectKind]:
        return [
            run_command(
                name=self.kind,
                allowed={program.config.argv[0] for program in self.programs.values()},
                environ=self.environ,
                on_outcome=on_outcome,
            )
        ]


# ---- blocklist ---------------------------------------------------------------------------------

# Which list each parameter names.
BLOCKLIST_PARAMS: dict[str, blocklist.Kind] = {
    "address": "ip",
    "ip": "ip",
    "domain": "domain",
    "url": "url",
    "sha256": "sha256",
}


class BlocklistChange(_Model):
    """Payload of ``connector.blocklist``: one entry added to or removed from one of Vigil's lists."""

    op: Literal["add", "remove"]
    kind: blocklist.Kind
    value: str
    incident_id: str
    step_id: str
    reason: str = ""
    expires_at: datetime | None = None


class BlocklistConnector:
    """Vigil's own block lists (served to firewalls, proxies and resolvers): ``block`` and ``unblock``."""

    name = "blocklist"
    kind = "connector.blocklist"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def dispatch(self, call: StepCall) -> Dispatch:
        if call.action not in ("block", "unblock"):
            raise ConnectorError(f"blocklist: no action {call.action}; the actions are block and unblock")
        if unknown := sorted(set(call.params) - set(BLOCKLIST_PARAMS) - {"reason"}):
            raise ConnectorError(f"blocklist: unknown parameter(s) {', '.join(unknown)}")
        named = [name for name in call.params if name in BLOCKLIST_PARAMS]
        if len(named) != 1:
            raise ConnectorError(f"blocklist: give exactly one of {', '.join(BLOCKLIST_PARAMS)}; got {len(named)}")
        kind, value = BLOCKLIST_PARAMS[named[0]], call.params[named[0]]
        reason = call.params.get("reason", call.reason)
        if not isinstance(value, str) or not isinstance(reason, str):
            raise ConnectorError(f"blocklist: {named[0]} and reason are text")
        try:
            normalised = blocklist.normalise(kind, value)
        except blocklist.InvalidEntry as exc:
            raise ConnectorError(f"blocklist: {exc}") from exc
        change = BlocklistChange(
            op="add" if call.action == "block" else "remove",
            kind=kind,
            value=normalised,
            incident_id=call.incident_id,
            step_id=call.step_id,
            reason=reason if call.action == "block" else "",
            expires_at=call.expires_at if call.action == "block" else None,
        )
        return Dispatch(kind=self.kind, target="blocklist", payload=change.model_dump(mode="json"))

    def effect_kinds(self, on_outcome: OutcomeHandler | None) -> Sequence[EffectKind]:
        pool = self.pool

        async def execute(effect: Effect) -> dict[str, Any]:
            try:
                change = BlocklistChange.model_validate(effect.payload)
            except ValidationError as exc:
                raise PermanentEffectError(f"invalid {effect.kind} payload: {validation_reason(exc)}") from exc
            try:
                async with pool.acquire() as conn, conn.transaction():
                    if change.op == "add":
                        entry, added = await blocklist.add(
                            conn,
                            kind=change.kind,
                            value=change.value,
                            incident_id=change.incident_id,
                            step_id=change.step_id,
                            reason=change.reason,
                            expires_at=change.expires_at,
                        )
                        return {"kind": change.kind, "value": entry.value, "added": added}
                    removed = await blocklist.remove(conn, kind=change.kind, value=change.value, step_id=change.step_id)
                    return {"kind": change.kind, "value": change.value, "removed": removed}
            except blocklist.InvalidEntry as exc:
                raise PermanentEffectError(f"blocklist: {exc}") from exc

        # All on one target: a database write, quick; the per-target limit is the kind's limit.
        return [
            EffectKind(
                name=self.kind,
                execute=execute,
                timeout_s=10.0,
                max_attempts=8,
                concurrency=4,
                per_target_concurrency=4,
                on_outcome=on_outcome,
            )
        ]


# ---- composition -------------------------------------------------------------------------------


def _load_plugin(name: str, options: Mapping[str, Any], pool: asyncpg.Pool) -> Connector:
    found = [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]
    if not found:
        raise ConnectorsConfigError([f"plugins.{name}: no connector of that name is installed ({ENTRY_POINT_GROUP})"])
    if len({point.value for point in found}) > 1:
        raise ConnectorsConfigError(
            [f"plugins.{name}: installed more than once: {', '.join(point.value for point in found)}"]
        )
    point = found[0]
    try:
        connector = point.load()(dict(options), pool)
    except Exception as exc:  # anything a third party's code raises: the responder does not start, saying why
        raise ConnectorsConfigError([f"plugins.{name}: {point.value} failed: {type(exc).__name__}: {exc}"]) from exc
    if not isinstance(connector, Connector):
        raise ConnectorsConfigError([f"plugins.{name}: {point.value} did not return a connector"])
    if connector.name != name:
        raise ConnectorsConfigError([f"plugins.{name}: {point.value} returned a connector named {connector.name!r}"])
    prefix = f"connector.{name}"
    if stray := [
        k.name for k in connector.effect_kinds(None) if k.name != prefix and not k.name.startswith(f"{prefix}.")
    ]:
        raise ConnectorsConfigError(
            [f"plugins.{name}: effect kinds {', '.join(stray)} must be named {prefix} or {prefix}.<something>"]
        )
    return connector


def load_connectors(
    config: ConnectorsConfig, *, pool: asyncpg.Pool, environ: Mapping[str, str] = os.environ
) -> dict[str, Connector]:
    """Built-in connectors plus third-party ones from the `vigil.connectors` entry point group.

    Only the plugins the config names are loaded (installed code does not run unasked); a broken
    one, or a webhook without its secret, raises ConnectorsConfigError so that the responder does
    not start.
    """
    connectors: dict[str, Connector] = {
        "webhook": WebhookConnector(config.webhook, secret=webhook_secret(config.webhook, environ)),
        "command": CommandConnector(config.command, environ=environ),
        "blocklist": BlocklistConnector(pool),
    }
    for name, options in config.plugins.items():
        connectors[name] = _load_plugin(name, options, pool)
    return connectors
