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

import json
import logging
import os
import re
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import asyncpg
import httpx
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
from shared.effects import (
    Effect,
    EffectKind,
    OutcomeHandler,
    PermanentEffectError,
    TransientEffectError,
    http_target,
)
from shared.effects.builtin import (
    ENV_NAME_PATTERN,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Command,
    HttpRequest,
    http_request,
    run_command,
)
from shared.effects.domain import bound_text, sign
from shared.errors import validation_reason
from shared.yamlfile import node_at  # the responder's YAML files locate their errors alike

log = logging.getLogger(__name__)

DEFAULT_CONNECTORS = Path(__file__).with_name("connectors.yaml")
ENTRY_POINT_GROUP = "vigil.connectors"
# Names playbooks give the connectors Vigil brings; no plugin may take one.
BUILT_IN = ("webhook", "command", "blocklist", "notify", "manual")
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


@runtime_checkable
class Validating(Protocol):
    """A connector that can prove an action's effect: a check run as its own effect after the action's."""

    def validation(self, call: StepCall, result: Mapping[str, Any]) -> Dispatch | None:
        """Return the effect that checks the call's effect (``result`` is the action's), None when nothing is
        configured to check it; pure, no I/O; raise ConnectorError saying why it cannot be checked."""
        ...


VALIDATION_ATTEMPTS = 3  # a far side may take a moment to show a change: a check is tried again, then fails
VALIDATION_TIMEOUT_S = 30.0


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


Expectation = dict[str, Any] | str


def answer_matches(body: str, expect: Expectation) -> bool:
    """Whether an answer holds what is expected: each field of a JSON object, or a piece of text."""
    if isinstance(expect, str):
        return expect in body
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and all(answer.get(name) == value for name, value in expect.items())


def _checked_check_url(text: str) -> str:
    parse_argument(text)  # `{name}` placeholders, `{{` and `}}` for braces
    if "{" in urlsplit(text).netloc:
        raise ValueError("placeholders may stand in the path and the query, never in the host")
    return _checked_url(text)


class WebhookCheck(_Model):
    url: Annotated[str, AfterValidator(_checked_check_url)] = Field(
        description="A URL that reports whether the action's effect is in place (GET, signed); `{name}` is the "
        "step's parameter of that name, URL-encoded."
    )
    expect: Expectation | None = Field(
        None, description="What its 2xx answer must hold: JSON fields and their values, or a piece of text."
    )


class WebhookAction(_Model):
    url: Url
    expect: Expectation | None = Field(
        None, description="What the action's own 2xx answer must hold: JSON fields and values, or text."
    )
    check: WebhookCheck | None = Field(None, description="Ask another URL whether the effect is in place.")


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
    verify: list[str] | None = Field(
        None,
        min_length=1,
        description="A program (and arguments, with the same placeholders) that exits 0 when the effect is in place.",
    )

    @field_validator("argv", "verify")
    @classmethod
    def _argv(cls, argv: list[str] | None) -> list[str] | None:
        if argv is None:
            return None
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
    validate_kind = "connector.webhook.validate"

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

    def validation(self, call: StepCall, result: Mapping[str, Any]) -> Dispatch | None:
        action = self.config.actions.get(call.action)
        if action is None or (action.expect is None and action.check is None):
            return None
        if action.check is not None:
            fill_url(action.check.url, call.params)  # a parameter missing is said now, not at the check
        check = WebhookValidation(action=call.action, params=dict(call.params), answer=str(result.get("body", "")))
        return Dispatch(kind=self.validate_kind, target=http_target(action.url), payload=check.model_dump(mode="json"))

    def effect_kinds(self, on_outcome: OutcomeHandler | None) -> Sequence[EffectKind]:
        # Held to the configured addresses: a payload naming another one (the file changed since) fails.
        return [
            http_request(
                name=self.kind, signing_secret=self.secret, allowed_urls=self.config.urls, on_outcome=on_outcome
            ),
            EffectKind(
                name=self.validate_kind,
                execute=self._validate,
                timeout_s=VALIDATION_TIMEOUT_S,
                max_attempts=VALIDATION_ATTEMPTS,
                on_outcome=on_outcome,
            ),
        ]

    async def _validate(self, effect: Effect) -> dict[str, Any]:
        try:
            check = WebhookValidation.model_validate(effect.payload)
        except ValidationError as exc:
            raise PermanentEffectError(f"invalid {effect.kind} payload: {validation_reason(exc)}") from exc
        # What is checked, and where, comes from the configuration, never from the stored payload.
        action = self.config.actions.get(check.action)
        if action is None or (action.expect is None and action.check is None):
            raise PermanentEffectError(f"webhook: action {check.action} has no check configured any more")
        if action.check is None:
            assert action.expect is not None
            if not answer_matches(check.answer, action.expect):
                raise PermanentEffectError(
                    f"the answer to {check.action} does not hold {describe_expectation(action.expect)}",
                    result={"answer": bound_text(check.answer, 200)},
                )
            return {"check": "the action's answer", "expected": describe_expectation(action.expect)}
        try:
            url = fill_url(action.check.url, check.params)
        except ConnectorError as exc:
            raise PermanentEffectError(str(exc)) from exc
        headers = {IDEMPOTENCY_HEADER: effect.key}
        if self.secret is not None:
            stamp = int(time.time())
            headers |= {
                TIMESTAMP_HEADER: str(stamp),
                SIGNATURE_HEADER: sign(self.secret.get_secret_value().encode(), stamp, b""),
            }
        async with httpx.AsyncClient(timeout=VALIDATION_TIMEOUT_S, follow_redirects=False) as client:
            response = await client.get(url, headers=headers)
        body = bound_text(response.text, 1000)
        found = {"check_url": url, "status_code": response.status_code, "body": body}
        if not 200 <= response.status_code < 300:
            raise TransientEffectError(f"the check answered HTTP {response.status_code}", result=found)
        if action.check.expect is not None and not answer_matches(response.text, action.check.expect):
            expected = describe_expectation(action.check.expect)
            raise TransientEffectError(f"the check's answer does not hold {expected}", result=found)
        return found


class WebhookValidation(_Model):
    """Payload of ``connector.webhook.validate``: the action whose effect is checked, its parameters, its answer."""

    action: str
    params: dict[str, str | int]
    answer: str = ""


def describe_expectation(expect: Expectation) -> str:
    return repr(expect) if isinstance(expect, str) else json.dumps(expect, sort_keys=True)


def fill_url(template: str, params: Mapping[str, str | int]) -> str:
    """A check URL with each `{name}` replaced by the parameter's value, URL-encoded."""
    pieces: list[str] = []
    for literal, name in parse_argument(template):
        pieces.append(literal)
        if name is None:
            continue
        if name not in params:
            raise ConnectorError(f"webhook: the check URL needs the parameter {name}")
        pieces.append(quote(str(params[name]), safe=""))
    return "".join(pieces)


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
    verify: tuple[Template, ...] | None = None


class CommandConnector:
    """A configured program per action, with ``{name}`` placeholders filled from the step's parameters.

    The filling is one pass over the configured arguments: a parameter's value is inserted as it
    is and never read again, so `$(id)`, `; rm -rf /` or `{other}` in a value stay literal text in
    one argument, and no shell ever sees them. A value that starts with `-` is refused: it could
    pass for an option.
    """

    name = "command"
    kind = "connector.command"
    verify_kind = "connector.command.verify"

    def __init__(self, config: CommandConfig, *, environ: Mapping[str, str]) -> None:
        self.programs = {
            action: _Program(
                spec,
                tuple(parse_argument(argument) for argument in spec.argv),
                tuple(parse_argument(argument) for argument in spec.verify) if spec.verify else None,
            )
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

    def validation(self, call: StepCall, result: Mapping[str, Any]) -> Dispatch | None:
        program = self.programs.get(call.action)
        if program is None or program.verify is None:
            return None
        values = {**{name: str(value) for name, value in call.params.items()}, KEY_PLACEHOLDER: call.key}
        argv = [self._fill(call.action, template, values) for template in program.verify]
        command = Command(
            argv=argv, env_pass=program.config.env, cwd=program.config.cwd, substitute_key=False
        )  # any non-zero exit is tried again (the effect may take a moment), then the check fails
        return Dispatch(kind=self.verify_kind, target=argv[0], payload=command.model_dump(mode="json"))

    def effect_kinds(self, on_outcome: OutcomeHandler | None) -> Sequence[EffectKind]:
        return [
            run_command(
                name=self.kind,
                allowed={program.config.argv[0] for program in self.programs.values()},
                environ=self.environ,
                on_outcome=on_outcome,
            ),
            run_command(
                name=self.verify_kind,
                allowed={p.config.verify[0] for p in self.programs.values() if p.config.verify},
                environ=self.environ,
                timeout_s=VALIDATION_TIMEOUT_S,
                max_attempts=VALIDATION_ATTEMPTS,
                on_outcome=on_outcome,
            ),
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


class BlocklistCheck(_Model):
    """Payload of ``connector.blocklist.validate``: a value that must be on (add) or off (remove) a served list."""

    op: Literal["add", "remove"]
    kind: blocklist.Kind
    value: str
    # The step whose entry it is: a value other steps list too stays served after this one's undo.
    step_id: str | None = None


class BlocklistConnector:
    """Vigil's own block lists (served to firewalls, proxies and resolvers): ``block`` and ``unblock``."""

    name = "blocklist"
    kind = "connector.blocklist"
    validate_kind = "connector.blocklist.validate"

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

        async def validate(effect: Effect) -> dict[str, Any]:
            try:
                check = BlocklistCheck.model_validate(effect.payload)
            except ValidationError as exc:
                raise PermanentEffectError(f"invalid {effect.kind} payload: {validation_reason(exc)}") from exc
            # The list as firewalls get it: rendered as the endpoint renders it, then read line by line.
            async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
                served = blocklist.render_edl(check.kind, await blocklist.list_active(conn, kind=check.kind))
                by = await blocklist.listed_by(conn, kind=check.kind, value=check.value) if check.step_id else []
            listed = check.value in served.splitlines()
            found: dict[str, Any] = {"list": check.kind, "value": check.value, "listed": listed}
            if check.op == "remove" and by and check.step_id not in by:
                # This step's entry is off; the value stays served for the other steps that blocked it.
                found["listed_by"] = by
                return found
            if listed != (check.op == "add"):
                where = "missing from" if check.op == "add" else "still in"
                raise PermanentEffectError(f"{check.value} is {where} the served {check.kind} list", result=found)
            return found

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
            ),
            EffectKind(
                name=self.validate_kind,
                execute=validate,
                timeout_s=10.0,
                max_attempts=VALIDATION_ATTEMPTS,
                concurrency=4,
                per_target_concurrency=4,
                on_outcome=on_outcome,
            ),
        ]

    def validation(self, call: StepCall, result: Mapping[str, Any]) -> Dispatch | None:
        change = BlocklistChange.model_validate(self.dispatch(call).payload)
        check = BlocklistCheck(op=change.op, kind=change.kind, value=change.value, step_id=change.step_id)
        return Dispatch(kind=self.validate_kind, target="blocklist", payload=check.model_dump(mode="json"))


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
