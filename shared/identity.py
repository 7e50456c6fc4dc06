"""Who may do what: roles, the permission matrix, and API tokens stored only as hashes.

The matrix below is the one place permissions are defined: every API route names the permission
it needs (``shared.auth.require``), the checks come from it, and so does the table in the README
(``vigil tokens roles``). Roles grow from ``viewer`` to ``admin``; ``ingest`` may only send alerts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import asyncpg

from shared.db import Conn

Role = Literal["viewer", "responder", "commander", "admin", "ingest"]
ROLES: tuple[Role, ...] = ("viewer", "responder", "commander", "admin", "ingest")

Permission = Literal[
    "incidents.read",
    "alerts.ingest",
    "incidents.note",
    "incidents.acknowledge",
    "tasks.complete",
    "incidents.state",
    "incidents.edit",
    "incidents.assign",
    "steps.approve",
    "steps.run",
    "leases.change",
    "response.control",
    "suppression.manage",
    "tokens.manage",
]

# What each role may do, each including the one before it (ingest stands apart).
_VIEWER: frozenset[Permission] = frozenset({"incidents.read"})
_RESPONDER: frozenset[Permission] = _VIEWER | {"incidents.note", "incidents.acknowledge", "tasks.complete"}
_COMMANDER: frozenset[Permission] = _RESPONDER | {
    "incidents.state",
    "incidents.edit",
    "incidents.assign",
    "steps.approve",
    "steps.run",
    "leases.change",
    "response.control",
    "suppression.manage",
}
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    "viewer": _VIEWER,
    "responder": _RESPONDER,
    "commander": _COMMANDER,
    "admin": _COMMANDER | {"tokens.manage", "alerts.ingest"},
    "ingest": frozenset({"alerts.ingest"}),
}
PERMISSION_TEXT: dict[Permission, str] = {
    "incidents.read": "read incidents, alerts, timelines, plans, steps, tasks, on-call and block lists",
    "alerts.ingest": "send alerts and problem reports",
    "incidents.note": "add notes",
    "incidents.acknowledge": "acknowledge incidents",
    "tasks.complete": "mark tasks done",
    "incidents.state": "move incidents through their lifecycle, resolve them",
    "incidents.edit": "change severity, type and title; reload correlation rules; import the asset inventory",
    "incidents.assign": "assign the commander and other roles",
    "steps.approve": "approve and deny response steps",
    "steps.run": "run a playbook step on an incident on demand (contain now)",
    "leases.change": "extend and revoke leases of response actions",
    "response.control": "pause and resume every response",
    "suppression.manage": "add and end silences and maintenance windows",
    "tokens.manage": "create, list and revoke tokens",
}


def allows(role: str, permission: Permission) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())  # type: ignore[call-overload]


def least_role(permission: Permission) -> Role:
    """The lowest role that has a permission (for messages and the documentation)."""
    return next(role for role in ROLES if permission in PERMISSIONS[role])


# ---- tokens ------------------------------------------------------------------------------------

PREFIX = "vigil"
_TOKEN = re.compile(rf"^{PREFIX}_([A-Za-z0-9]{{12}})_([A-Za-z0-9_-]{{32,}})$")
_DURATION = re.compile(r"^(\d{1,5})([hdw])$")
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a person or an integration, with a role."""

    name: str
    role: Role
    kind: Literal["person", "integration"]
    token_id: str | None = None


@dataclass(frozen=True)
class NewToken:
    token_id: str
    secret: str  # shown once, never stored

    @property
    def text(self) -> str:
        return f"{PREFIX}_{self.token_id}_{self.secret}"


def mint() -> NewToken:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return NewToken(token_id="".join(secrets.choice(alphabet) for _ in range(12)), secret=secrets.token_urlsafe(32))


def digest(secret: str) -> str:
    """A token's secret as stored: its SHA-256 (a token has 256 bits of entropy: no salt or slow hash needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(text: str) -> tuple[str, str] | None:
    """(token id, secret) of a well-formed token, else None."""
    match = _TOKEN.match(text.strip())
    return (match.group(1), match.group(2)) if match else None


def parse_expiry(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a lifetime like 12h, 90d or 2w")
    return int(match.group(1)) * _UNIT[match.group(2)]


async def create_token(
    conn: Conn,
    *,
    name: str,
    role: Role,
    kind: Literal["person", "integration"] = "person",
    expires_in: timedelta | None = None,
    created_by: str,
) -> NewToken:
    new = mint()
    await conn.execute(
        """INSERT INTO api_tokens (id, name, role, kind, secret_hash, expires_at, created_by)
           VALUES ($1, $2, $3, $4, $5, CASE WHEN $6::interval IS NULL THEN NULL ELSE now() + $6::interval END, $7)""",
        new.token_id,
        name,
        role,
        kind,
        digest(new.secret),
        expires_in,
        created_by,
    )
    return new


async def resolve(conn: Conn, text: str) -> Principal | None:
    """The principal a bearer token stands for; None for a malformed, unknown, revoked or expired one."""
    parsed = parse_token(text)
    if parsed is None:
        return None
    token_id, secret = parsed
    row = await conn.fetchrow(
        """SELECT name, role, kind, secret_hash FROM api_tokens
           WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())""",
        token_id,
    )
    if row is None or not hmac.compare_digest(row["secret_hash"], digest(secret)):
        return None
    return Principal(name=row["name"], role=row["role"], kind=row["kind"], token_id=token_id)


async def list_tokens(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, name, role, kind, created_at, created_by, expires_at, revoked_at, revoked_by
           FROM api_tokens ORDER BY created_at"""
    )


async def revoke_token(conn: Conn, token_id: str, *, revoked_by: str) -> bool:
    revoked = await conn.fetchval(
        """UPDATE api_tokens SET revoked_at = now(), revoked_by = $2
           WHERE id = $1 AND revoked_at IS NULL RETURNING true""",
        token_id,
        revoked_by,
    )
    return bool(revoked)


async def active_tokens(conn: Conn) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
    )
    return count


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
