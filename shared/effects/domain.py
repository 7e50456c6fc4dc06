"""Pure decisions of the effects runner: what an attempt came to, when to try again, what to claim."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from shared.errors import VigilError

Status = Literal["pending", "running", "succeeded", "failed", "parked", "cancelled"]
FinalStatus = Literal["succeeded", "failed", "parked"]
Verdict = Literal["ok", "transient", "permanent"]

# An operator may send these back to `pending` (`vigil effects retry ID`).
RETRYABLE: tuple[Status, ...] = ("parked", "failed")

MAX_ERROR_CHARS = 2000
# A result travels in the EffectCompleted event: keep it far below the broker's message limit.
MAX_RESULT_BYTES = 8192
EXCERPT_CHARS = 1000

KEY_PLACEHOLDER = "{idempotency_key}"


@dataclass(frozen=True)
class Effect:
    """One side effect as its kind's ``execute`` sees it."""

    id: int
    service: str
    kind: str
    key: str
    subject: str
    target: str
    payload: dict[str, Any]
    attempts: int
    not_before: datetime
    created_at: datetime
    # Set per effect when its caller knows better than the kind (a playbook step's timeout and retries).
    timeout_s: float | None = None
    max_attempts: int | None = None
    # Started before, whatever became of it (``attempts`` forgets a run a clean stop cut short): a kind whose far
    # side keeps no idempotency key looks for what that run did before doing it again.
    ran_before: bool = False


class PermanentEffectError(VigilError):
    """The far side refused for good (e.g. HTTP 400): the effect fails at once, without retries."""

    def __init__(self, message: str, *, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = dict(result or {})


class TransientEffectError(VigilError):
    """The far side failed in a way that may pass (e.g. HTTP 503); any other exception counts the same.

    ``retry_after_s``: how long the far side asked to be left alone (Retry-After), the least wait before the next.
    """

    def __init__(
        self, message: str, *, result: Mapping[str, Any] | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.result = dict(result or {})
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Attempt:
    """What one execution of an effect came to."""

    verdict: Verdict
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    retry_after_s: float | None = None


def settle(verdict: Verdict, *, attempts: int, max_attempts: int) -> Status:
    """Return the effect's status after an attempt: final, or `pending` to be tried again."""
    if verdict == "ok":
        return "succeeded"
    if verdict == "permanent":
        return "failed"
    return "parked" if attempts >= max_attempts else "pending"


def pick(candidates: Sequence[tuple[int, str]], *, free: int, per_target: int, running: Mapping[str, int]) -> list[int]:
    """Choose, in order, up to ``free`` of the (id, target) candidates, at most ``per_target`` on one target.

    ``running`` counts what already runs per target, so that a slow target's backlog waits while
    the effects behind it, to other targets, go ahead.
    """
    load = dict(running)
    chosen: list[int] = []
    for effect_id, target in candidates:
        if len(chosen) >= free:
            break
        if load.get(target, 0) >= per_target:
            continue
        load[target] = load.get(target, 0) + 1
        chosen.append(effect_id)
    return chosen


def classify_http_status(status: int) -> Verdict:
    """2xx succeeded; 408, 429 and 5xx may pass; anything else (other 4xx, 3xx) is a refusal for good.

    Redirects are not followed: re-sending a request body to another address is not the effect
    that was asked for, and a webhook that moved is a configuration to fix.
    """
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or 500 <= status < 600:
        return "transient"
    return "permanent"


def classify_smtp_code(code: int) -> Verdict:
    """SMTP replies: 2xx accepted, 4xx try again later, 5xx refused for good."""
    if 200 <= code < 400:
        return "ok"
    if 400 <= code < 500:
        return "transient"
    return "permanent"


def classify_exit_code(code: int, *, permanent: Sequence[int]) -> Verdict:
    """Exit 0 succeeded; the codes the payload names as permanent fail at once; any other is retried."""
    if code == 0:
        return "ok"
    return "permanent" if code in permanent else "transient"


def message_id(key: str) -> str:
    """The Message-ID of a mail sent for this idempotency key: the same on every attempt."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()}@vigil>"


def substitute_key(argv: Sequence[str], key: str) -> list[str]:
    """Put the idempotency key where an argument says ``{idempotency_key}``; nothing else is expanded."""
    return [arg.replace(KEY_PLACEHOLDER, key) for arg in argv]


def http_target(url: str) -> str:
    """The target of a request to ``url``: host and port, without credentials, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


def bound_text(text: str, limit: int = EXCERPT_CHARS) -> str:
    """Return ``text``, cut to ``limit`` characters with a mark where it was cut, NUL shown as ``\\0``.

    What the far side said is stored as text: Postgres text cannot hold NUL (a UTF-16 answer is full of
    them), and an outcome that could not be stored would stop the runner at every attempt.
    """
    text = text.replace("\x00", "\\0") if "\x00" in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_error(exc: BaseException) -> str:
    """A one-line, bounded description of a failure for ``last_error``."""
    text = str(exc)
    return bound_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, MAX_ERROR_CHARS)


def bound_result(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a JSON-able result of bounded size; anything larger becomes a marked excerpt."""
    try:
        text = json.dumps(_storable(dict(result or {})))
    except (TypeError, ValueError, RecursionError) as exc:  # a cycle: keep the outcome, say why the result is gone
        return {"unserialisable": describe_error(exc)}
    if "\\u0000" in text:  # Postgres jsonb cannot hold NUL either: shown as \0, as bound_text does
        text = json.dumps(_without_nul(json.loads(text)))
    if len(text.encode()) <= MAX_RESULT_BYTES:
        loaded: dict[str, Any] = json.loads(text)
        return loaded
    return {"truncated": True, "excerpt": bound_text(text, MAX_RESULT_BYTES // 2)}


# What the jsonb codec (orjson) writes as a number: integers beyond this range it refuses.
_INT_RANGE = range(-(2**63), 2**64)


def _storable(value: Any) -> Any:
    """The value as jsonb keeps it: an integer beyond 64 bits (JSON allows any) and a number that is not
    finite (which JSON has no word for) as text, and anything else JSON cannot say as its ``str``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if value in _INT_RANGE else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return str(value)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\0")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


# ---- signed requests ---------------------------------------------------------------------------

SIGNATURE_TOLERANCE_S = 300
# Unix seconds as a sender writes them: no sign, no leading zero, no space (the signed text is exact).
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,11}")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Vigil-Signature`` of a body sent at ``timestamp``: ``sha256=`` and the hex HMAC of ``"<ts>." + body``.

    The timestamp is part of what is signed, so a receiver that refuses old timestamps refuses a
    captured request replayed later, and no one can move a signature to another time.
    """
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """Tell whether a request is signed with ``secret`` at a time within ``tolerance_s`` of ``now`` (Unix seconds).

    Stale and future timestamps are refused alike (a replay, or a clock too far off); the
    signatures are compared in constant time.
    """
    if timestamp_header is None or signature_header is None or not _TIMESTAMP.fullmatch(timestamp_header):
        return False
    timestamp = int(timestamp_header)
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature_header.strip().lower().encode("utf-8", errors="replace"))
