"""Idempotency keys of API requests: scoped to who sent them and what they asked, answered alike.

A request with an ``Idempotency-Key`` is answered once; a retry of it by the same principal for the
same operation gets the first answer back — a refusal included — and changes nothing. The answer is
remembered in the transaction of the change it reports, so a request that failed leaves nothing
behind and may be retried. Another principal's key of the same text is another request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared.db import Conn

# How long answers are remembered (housekeeping prunes older ones): far beyond any client's retries.
RETENTION_DAYS = 7
# Characters of an operation kept as it is (it names the path's ids); a longer one is kept by its digest.
MAX_OPERATION = 200


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


def _operation(operation: str) -> str:
    """The operation as stored: one naming a long path is kept by its digest, as no index holds it whole."""
    if len(operation) <= MAX_OPERATION:
        return operation
    return f"{operation[:64]}…sha256:{hashlib.sha256(operation.encode()).hexdigest()}"


async def claim(conn: Conn, *, principal: str, operation: str, key: str) -> Answer | None:
    """The answer an earlier request with this key got, or None if this is the first (it is now claimed).

    Call inside the transaction that applies the request; a concurrent retry waits for it here.
    """
    operation = _operation(operation)
    inserted = await conn.fetchval(
        """INSERT INTO api_idempotency (principal, operation, key, status, body) VALUES ($1, $2, $3, 0, 'null')
           ON CONFLICT DO NOTHING RETURNING true""",
        principal,
        operation,
        key,
    )
    if inserted:
        return None
    row = await conn.fetchrow(
        "SELECT status, body FROM api_idempotency WHERE principal = $1 AND operation = $2 AND key = $3",
        principal,
        operation,
        key,
    )
    assert row is not None  # the conflict was with it
    return Answer(row["status"], row["body"])


async def remember(conn: Conn, *, principal: str, operation: str, key: str, answer: Answer) -> None:
    operation = _operation(operation)
    await conn.execute(
        """UPDATE api_idempotency SET status = $4, body = $5
           WHERE principal = $1 AND operation = $2 AND key = $3""",
        principal,
        operation,
        key,
        answer.status,
        answer.body,
    )


async def once(
    conn: Conn, *, principal: str, operation: str, key: str | None, apply: Callable[[], Awaitable[Answer]]
) -> Answer:
    """Apply a request once per key: the first time ``apply`` answers, later the same answer comes back.

    Run inside the transaction that applies it; ``apply`` answers refusals itself (e.g. 409) so that they
    are remembered too, and raises only for what a retry may change (the transaction then rolls back).
    """
    if key is None:
        return await apply()
    if (earlier := await claim(conn, principal=principal, operation=operation, key=key)) is not None:
        return earlier
    answer = await apply()
    await remember(conn, principal=principal, operation=operation, key=key, answer=answer)
    return answer
