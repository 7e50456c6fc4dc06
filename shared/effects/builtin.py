"""Built-in effect kinds: an HTTP request, a mail, a command. Each passes the idempotency key on.

Each factory returns an EffectKind; its payload is validated by the model beside it, and a payload
that does not fit fails the effect at once (it could never succeed). Credentials belong in the
factory's arguments (from the service's settings), never in a payload: payloads are stored in
the database and shown to operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import os
import signal
import smtplib
import ssl
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import certifi
import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from shared.effects.domain import (
    EXCERPT_CHARS,
    Effect,
    PermanentEffectError,
    TransientEffectError,
    Verdict,
    bound_text,
    classify_exit_code,
    classify_http_status,
    classify_smtp_code,
    message_id,
    sign,
    substitute_key,
)
from shared.effects.runner import EffectKind, OutcomeHandler
from shared.errors import validation_reason

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_ENV = "VIGIL_IDEMPOTENCY_KEY"
TIMESTAMP_HEADER = "X-Vigil-Timestamp"
SIGNATURE_HEADER = "X-Vigil-Signature"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class EffectPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _parse(model: type[EffectPayload], effect: Effect) -> Any:
    try:
        return model.model_validate(effect.payload)
    except ValidationError as exc:
        raise PermanentEffectError(f"invalid {effect.kind} payload: {validation_reason(exc)}") from exc


def _failure(
    verdict: Verdict, message: str, result: Mapping[str, Any] | None = None
) -> PermanentEffectError | TransientEffectError:
    """The error of a failed attempt: a refusal for good when the verdict is permanent, else one to retry."""
    if verdict == "permanent":
        return PermanentEffectError(message, result=result)
    return TransientEffectError(message, result=result)


def _settled(verdict: Verdict, result: dict[str, Any], failure: str) -> dict[str, Any]:
    """The attempt's result when its verdict is ok; else raise the verdict's error, saying ``failure``."""
    if verdict == "ok":
        return result
    raise _failure(verdict, failure, result)


# ---- HTTP --------------------------------------------------------------------------------------


class HttpRequest(EffectPayload):
    """Payload of ``http_request``; enqueue it with ``target=http_target(url)``."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(pattern=r"^https?://", description="Where to send it (a secret in it stays in the database).")
    body: Any = Field(None, description="JSON body; none when null.")
    headers: dict[str, str] = Field(default_factory=dict)


async def _read_excerpt(response: httpx.Response, limit: int = EXCERPT_CHARS) -> str:
    """Read at most about ``limit`` characters of the body: a large answer is not kept in memory."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data.extend(chunk)
        if len(data) >= limit * 4:
            break
    return bound_text(data.decode("utf-8", errors="replace"), limit)


def http_request(
    *,
    name: str = "http_request",
    headers: Mapping[str, str] | None = None,
    signing_secret: SecretStr | None = None,
    allowed_urls: Collection[str] | None = None,
    timeout_s: float = 10.0,
    max_attempts: int = 8,
    concurrency: int = 16,
    per_target_concurrency: int = 2,
    on_outcome: OutcomeHandler | None = None,
) -> EffectKind:
    """An HTTP request with ``Idempotency-Key: <key>``; 2xx succeeds, 408/429/5xx and connection errors retry.

    ``headers`` (e.g. an Authorization header from settings) are sent with every request; a
    payload's own headers come on top, and the idempotency key always last. With a
    ``signing_secret``, every attempt is signed afresh: ``X-Vigil-Timestamp`` (Unix seconds, now)
    and ``X-Vigil-Signature`` (``shared.effects.domain.sign``) over exactly the body bytes sent, so
    a receiver can refuse forged and replayed requests (``verify_signature``). ``allowed_urls``,
    when given, lists the only addresses a payload may name.
    """
    reserved = {IDEMPOTENCY_HEADER.lower()}  # one key only, and it is the effect's
    if signing_secret is not None:
        reserved |= {TIMESTAMP_HEADER.lower(), SIGNATURE_HEADER.lower()}
    # Loading the CA bundle costs tens of milliseconds of CPU on the event loop: once per kind, not per request.
    tls: list[ssl.SSLContext] = []

    def tls_context() -> ssl.SSLContext:
        if not tls:
            tls.append(ssl.create_default_context(cafile=certifi.where()))
        return tls[0]

    async def execute(effect: Effect) -> dict[str, Any]:
        request: HttpRequest = _parse(HttpRequest, effect)
        if allowed_urls is not None and request.url not in allowed_urls:
            raise PermanentEffectError(f"{effect.kind}: the address on {effect.target} is not configured here")
        sent_headers = {
            name: value
            for name, value in {**(headers or {}), **request.headers}.items()
            if name.lower() not in reserved
        }
        # Serialised once: the bytes signed are the bytes sent.
        content = b"" if request.body is None else orjson.dumps(request.body)
        if request.body is not None and not any(name.lower() == "content-type" for name in sent_headers):
            sent_headers["Content-Type"] = "application/json"
        if signing_secret is not None:
            timestamp = int(time.time())  # per attempt: a retry is not a replay of a stale request
            sent_headers[TIMESTAMP_HEADER] = str(timestamp)
            sent_headers[SIGNATURE_HEADER] = sign(signing_secret.get_secret_value().encode(), timestamp, content)
        sent_headers[IDEMPOTENCY_HEADER] = effect.key
        async with (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, verify=tls_context()) as client,
            client.stream(request.method, request.url, content=content, headers=sent_headers) as response,
        ):
            excerpt = await _read_excerpt(response)
        return _settled(
            classify_http_status(response.status_code),
            {"status_code": response.status_code, "body": excerpt},
            f"HTTP {response.status_code} from {effect.target}: {bound_text(excerpt, 200)}",
        )

    return EffectKind(
        name=name,
        execute=execute,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        concurrency=concurrency,
        per_target_concurrency=per_target_concurrency,
        on_outcome=on_outcome,
    )


# ---- mail --------------------------------------------------------------------------------------


class Mail(EffectPayload):
    """Payload of ``send_mail``; enqueue it with the recipient's mailbox as the target."""

    to: list[str] = Field(min_length=1)
    subject: str
    body: str


def _deliver(
    message: EmailMessage,
    *,
    host: str,
    port: int,
    timeout_s: float,
    starttls: bool,
    username: str | None,
    password: SecretStr | None,
) -> dict[str, tuple[int, bytes]]:
    """Hand the message to the SMTP server (blocking: runs in a thread); return refused recipients."""
    with smtplib.SMTP(host, port, timeout=timeout_s) as smtp:
        if starttls:
            smtp.starttls(context=ssl.create_default_context())
        if username:
            smtp.login(username, password.get_secret_value() if password else "")
        return smtp.send_message(message)


def send_mail(
    *,
    host: str,
    port: int = 25,
    sender: str,
    starttls: bool = False,
    username: str | None = None,
    password: SecretStr | None = None,
    name: str = "send_mail",
    timeout_s: float = 30.0,
    max_attempts: int = 8,
    concurrency: int = 4,
    per_target_concurrency: int = 2,
    on_outcome: OutcomeHandler | None = None,
) -> EffectKind:
    """A mail through an SMTP server, with ``Message-ID: <sha256(key)@vigil>`` on every attempt.

    A mail store deduplicates on the Message-ID; SMTP itself cannot take back a delivered mail,
    so a repeat after a lost reply arrives as the same message, not a new one.
    """

    async def execute(effect: Effect) -> dict[str, Any]:
        mail: Mail = _parse(Mail, effect)
        # No folding below the RFC 5322 line limit: the Message-ID must reach the mail store whole.
        message = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
        message["From"] = sender
        message["To"] = ", ".join(mail.to)
        message["Subject"] = mail.subject
        message["Message-ID"] = message_id(effect.key)
        message["Date"] = format_datetime(datetime.now(UTC))
        message.set_content(mail.body)
        try:
            refused = await asyncio.to_thread(
                _deliver,
                message,
                host=host,
                port=port,
                timeout_s=timeout_s,
                starttls=starttls,
                username=username,
                password=password,
            )
        except smtplib.SMTPRecipientsRefused as exc:
            codes = {address: code for address, (code, _) in exc.recipients.items()}
            if all(classify_smtp_code(code) == "permanent" for code in codes.values()):
                raise PermanentEffectError(f"every recipient refused: {codes}", result={"refused": codes}) from exc
            raise TransientEffectError(f"recipients refused for now: {codes}", result={"refused": codes}) from exc
        except smtplib.SMTPResponseException as exc:
            reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise _failure(classify_smtp_code(exc.smtp_code), f"SMTP {exc.smtp_code}: {reply}") from exc
        # Some recipients refused, the others took it: the mail went; a retry would not change that.
        return {
            "message_id": message["Message-ID"],
            "recipients": len(mail.to) - len(refused),
            "refused": {address: code for address, (code, _) in refused.items()},
        }

    return EffectKind(
        name=name,
        execute=execute,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        concurrency=concurrency,
        per_target_concurrency=per_target_concurrency,
        on_outcome=on_outcome,
    )


# ---- commands ----------------------------------------------------------------------------------


class Command(EffectPayload):
    """Payload of ``run_command``; enqueue it with the command's name as the target."""

    argv: list[str] = Field(
        min_length=1, description="Program and arguments; no shell. `{idempotency_key}` is replaced."
    )
    permanent_exit_codes: list[int] = Field(
        default_factory=list, description="Exit codes that mean a refusal for good; any other non-zero is retried."
    )
    env_pass: list[Annotated[str, Field(pattern=ENV_NAME_PATTERN)]] = Field(
        default_factory=list,
        description="Names of the service's environment variables the program gets (values are read when it runs, "
        "never stored); one that is not set is left out.",
    )
    cwd: str | None = Field(None, description="Working directory; the runner's when null.")
    substitute_key: bool = Field(
        True,
        description="Replace `{idempotency_key}` in argv; off when the caller has filled argv in already, so that "
        "no value is expanded twice.",
    )


async def _drain(stream: asyncio.StreamReader | None, limit: int = EXCERPT_CHARS) -> str:
    """Read a pipe to its end, keeping only its first ``limit`` characters (the rest is discarded)."""
    if stream is None:
        return ""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < limit * 4:
            kept.extend(chunk[: limit * 4 - len(kept)])
    return bound_text(kept.decode("utf-8", errors="replace"), limit)


def run_command(
    *,
    name: str = "run_command",
    allowed: Collection[str] | None = None,
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60.0,
    max_attempts: int = 5,
    concurrency: int = 4,
    per_target_concurrency: int = 1,
    on_outcome: OutcomeHandler | None = None,
) -> EffectKind:
    """A program run without a shell, with the key in ``$VIGIL_IDEMPOTENCY_KEY`` and for ``{idempotency_key}``.

    The program does not inherit the service's environment (it holds database and broker
    credentials): it gets ``env``, a default PATH, the variables its payload names in ``env_pass``
    as ``environ`` (the service's environment, when not given) holds them as it runs, and the key.
    ``allowed``, when given, lists the programs (argv[0]) that may run. A program still running at
    the timeout is killed with its process group.
    """

    async def execute(effect: Effect) -> dict[str, Any]:
        command: Command = _parse(Command, effect)
        argv = substitute_key(command.argv, effect.key) if command.substitute_key else list(command.argv)
        if allowed is not None and argv[0] not in allowed:
            raise PermanentEffectError(f"command {argv[0]!r} is not allowed here")
        source = os.environ if environ is None else environ
        passed = {name: source[name] for name in command.env_pass if name in source}
        environment = {"PATH": os.defpath, **(env or {}), **passed, IDEMPOTENCY_ENV: effect.key}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=environment,
                cwd=command.cwd if command.cwd is not None else cwd,
                start_new_session=True,  # its own process group, so that a timeout kills its children too
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise PermanentEffectError(f"cannot run {argv[0]!r}: {exc}") from exc
        try:
            stdout, stderr = await asyncio.gather(_drain(process.stdout), _drain(process.stderr))
            code = await process.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.shield(process.wait())
            raise
        return _settled(
            classify_exit_code(code, permanent=command.permanent_exit_codes),
            {"exit_code": code, "stdout": stdout, "stderr": stderr},
            f"{argv[0]} exited with {code}: {bound_text(stderr, 200)}",
        )

    return EffectKind(
        name=name,
        execute=execute,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        concurrency=concurrency,
        per_target_concurrency=per_target_concurrency,
        on_outcome=on_outcome,
    )
