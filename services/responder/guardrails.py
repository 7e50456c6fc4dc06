"""Guardrails as data: what the responder must never do, checked before every action.

``check`` is pure: the caller gathers what it needs (the kill switch, recent executions, how
many targets the incident has touched) into a ``Context``. The guardrails come from
``guardrails.yaml``; a broken file refuses start-up with the reason. The kill switch lives in
Postgres (``response_controls``) so that ``vigil response pause`` stops every responder at once.
The rate limits are counted by ``RateLimiter``, outside the dispatching transaction (it says why).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import asyncpg
import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, PositiveInt, ValidationError, field_validator

from services.responder.blocklist import IPV4_MAPPED, InvalidEntry, IpNetwork, normalise, normalise_domain, parse_ip
from shared import timers
from shared.db import Conn, connect
from shared.errors import validation_reason

DEFAULT_GUARDRAILS = Path(__file__).with_name("guardrails.yaml")
_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

TargetKind = Literal["ip", "domain", "url", "sha256", "host", "user"]
Guardrail = Literal[
    "kill_switch", "invalid_target", "never_block", "blast_radius_step", "blast_radius_incident", "rate_limit"
]


class GuardrailsError(ValueError):
    """A guardrails file that cannot be used; the message says why."""


# ---- the file ----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NeverBlock(_Model):
    networks: list[IPvAnyNetwork] = Field(description="Own networks: no address in them is ever blocked.")
    domains: list[str] = Field(default_factory=list, description="Neither these nor their subdomains are blocked.")
    hosts: list[str] = Field(default_factory=list, description="Critical assets: never isolated or blocked.")

    @field_validator("domains")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        try:
            return [normalise_domain(d) for d in domains]
        except InvalidEntry as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        return [h.strip().rstrip(".").lower() for h in hosts]


class RateLimit(_Model):
    action: str = Field(description="The action it limits; `*` for every action.")
    per: Literal["action", "target"] = Field(description="Count all the action's targets, or each target apart.")
    limit: PositiveInt
    window: str = Field(description="How far back executions count: 30s, 10m, 1h, 1d.")

    @field_validator("window")
    @classmethod
    def _window(cls, window: str) -> str:
        if not _WINDOW.match(window):
            raise ValueError(f"window {window!r} is not a number followed by s, m, h or d")
        return window

    @property
    def window_delta(self) -> timedelta:
        match = _WINDOW.match(self.window)
        assert match is not None  # checked when the file was read
        return timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])


class BlastRadius(_Model):
    per_step: PositiveInt = Field(description="At most this many targets in one step.")
    per_incident: PositiveInt = Field(description="At most this many targets acted on for one incident.")


class Guardrails(_Model):
    never_block: NeverBlock
    rate_limits: list[RateLimit] = Field(default_factory=list)
    blast_radius: BlastRadius


def parse_guardrails(document: str) -> Guardrails:
    """Validate a guardrails file's text; raise GuardrailsError with the reason."""
    try:
        data = yaml.safe_load(document)
    except yaml.YAMLError as exc:
        raise GuardrailsError(f"guardrails are not valid YAML: {exc}") from exc
    try:
        return Guardrails.model_validate(data)
    except ValidationError as exc:
        raise GuardrailsError(f"guardrails refused: {validation_reason(exc)}") from exc


def load_guardrails(path: Path = DEFAULT_GUARDRAILS) -> Guardrails:
    return parse_guardrails(path.read_text())


# ---- the check (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    name: str  # e.g. block_ip, isolate_host
    target_kind: TargetKind
    incident_id: str


@dataclass(frozen=True)
class Execution:
    """An action executed earlier, as the rate limits count it."""

    action: str
    target: str
    at: datetime


@dataclass(frozen=True)
class Context:
    guardrails: Guardrails
    now: datetime
    paused: bool = False
    own_addresses: Sequence[IpNetwork] = ()  # the addresses Vigil itself runs on
    recent: Sequence[Execution] = ()
    incident_targets: int = 0  # targets already acted on for this incident
    # Targets the action's playbook step expands to: each item of a for_each step is checked alone, but
    # the step's blast radius is all of them.
    step_targets: int = 0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    guardrail: Guardrail | None = None
    reason: str = ""


ALLOWED = Verdict(allowed=True)


def _refuse(guardrail: Guardrail, reason: str) -> Verdict:
    return Verdict(allowed=False, guardrail=guardrail, reason=reason)


def _within(domain: str, protected: str) -> bool:
    return domain == protected or domain.endswith(f".{protected}")


def _domain_refusal(domain: str, never: NeverBlock) -> str | None:
    name = domain.removeprefix("*.")
    for protected in never.domains:
        if _within(name, protected):
            return f"{domain} is {protected} or one of its subdomains, which are never blocked"
        if _within(protected, name):  # blocking a parent takes the protected domain with it
            return f"blocking {domain} would block {protected}, which is never blocked"
    for host in never.hosts:
        if _within(host, name):
            return f"blocking {domain} would block the critical asset {host}"
    return None


def _network_refusal(network: IpNetwork, protected: Iterable[IpNetwork], what: str) -> str | None:
    # An IPv6 network wider than the IPv4-mapped range holds every IPv4 address, written as IPv6.
    holds_ipv4 = isinstance(network, ipaddress.IPv6Network) and network.supernet_of(IPV4_MAPPED)
    for own in protected:
        if (network.version == own.version and network.overlaps(own)) or (holds_ipv4 and own.version == 4):
            return f"{network} overlaps {what} {own}"
    return None


def _target_refusal(kind: TargetKind, target: str, context: Context) -> Verdict | None:
    never = context.guardrails.never_block
    try:
        if kind == "ip" or (kind in ("host", "url") and _is_ip(_host_of(kind, target))):
            network = parse_ip(_host_of(kind, target))
            reason = _network_refusal(network, never.networks, "the own network") or _network_refusal(
                network, context.own_addresses, "Vigil's own address"
            )
            if reason is None and format(network.network_address) in never.hosts:
                reason = f"{target} is a critical asset"
            return _refuse("never_block", reason) if reason else None
        if kind in ("domain", "url"):
            reason = _domain_refusal(normalise_domain(_host_of(kind, target)), never)
            return _refuse("never_block", reason) if reason else None
    except InvalidEntry as exc:
        return _refuse("invalid_target", str(exc))
    if kind == "host":
        name = target.strip().rstrip(".").lower()
        short = name.split(".")[0]
        # By its full name or its short one, whichever of the two the list or the target uses.
        if name in never.hosts or short in never.hosts or ("." not in name and name in _short_names(never.hosts)):
            return _refuse("never_block", f"{target} is a critical asset")
    return None


def _short_names(hosts: Iterable[str]) -> set[str]:
    return {host.split(".")[0] for host in hosts if not _is_ip(host)}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


def _host_of(kind: TargetKind, target: str) -> str:
    """The host part of a URL (the target itself for other kinds)."""
    if kind != "url":
        return target.strip()
    rest = target.strip().split("://", 1)[-1]
    host = re.split(r"[/?#]", rest, maxsplit=1)[0].rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_target(kind: TargetKind, target: str) -> str:
    """A target as rate limits compare it: `Evil.Example.` and `evil.example` are one target."""
    if kind in ("ip", "domain", "url", "sha256"):
        try:
            return normalise(kind, target)
        except InvalidEntry:
            return target  # refused before the rate limits are counted
    return target.strip().rstrip(".").lower()


def check(action: Action, targets: Sequence[str], context: Context) -> Verdict:
    """May this action run on these targets now? The first guardrail that refuses says why."""
    verdict = check_all_but_rates(action, targets, context)
    if not verdict.allowed:
        return verdict
    limits = context.guardrails.rate_limits
    return rate_limit_refusal(action, targets, context.recent, limits, now=context.now) or ALLOWED


def check_all_but_rates(action: Action, targets: Sequence[str], context: Context) -> Verdict:
    """Every guardrail but the rate limits, which ``RateLimiter`` counts where a dispatch takes them."""
    guardrails = context.guardrails
    if context.paused:  # the caller holds the step, not refuses it: a resume runs it on
        return _refuse("kill_switch", "held: responses are paused (`vigil response resume` to go on)")
    radius = guardrails.blast_radius
    in_step = max(len(targets), context.step_targets)
    if in_step > radius.per_step:
        return _refuse("blast_radius_step", f"{in_step} targets in one step; at most {radius.per_step} are allowed")
    if context.incident_targets + len(targets) > radius.per_incident:
        return _refuse(
            "blast_radius_incident",
            f"{context.incident_targets} targets already acted on for {action.incident_id}, {len(targets)} more "
            f"would pass the limit of {radius.per_incident}",
        )
    for target in targets:
        if (refusal := _target_refusal(action.target_kind, target, context)) is not None:
            return refusal
    return ALLOWED


@dataclass(frozen=True)
class LimitUsage:
    """One rate limit and how much of it is used: for a per-target limit, by its busiest target."""

    limit: RateLimit
    used: int
    target: str | None = None


def usage(limits: Sequence[RateLimit], recent: Sequence[Execution], *, now: datetime) -> list[LimitUsage]:
    """How much of each limit the executions ``recent`` holds use now."""
    used: list[LimitUsage] = []
    for limit in limits:
        since = now - limit.window_delta
        counted = [e for e in recent if e.at > since and limit.action in ("*", e.action)]
        if limit.per == "action":
            used.append(LimitUsage(limit, len(counted)))
            continue
        # As a dispatch compares targets: one written differently (`Evil.Example.`) is the same one.
        by_target = Counter(e.target.strip().rstrip(".").lower() for e in counted)
        busiest = by_target.most_common(1)
        used.append(LimitUsage(limit, busiest[0][1], busiest[0][0]) if busiest else LimitUsage(limit, 0))
    return used


def rate_limit_refusal(
    action: Action, targets: Sequence[str], recent: Sequence[Execution], limits: Sequence[RateLimit], *, now: datetime
) -> Verdict | None:
    """The rate limit these targets would pass, counting the executions ``recent`` holds; None when none."""
    for limit in limits:
        if limit.action not in ("*", action.name):
            continue
        since = now - limit.window_delta
        counted = [e for e in recent if e.at > since and limit.action in ("*", e.action)]
        if limit.per == "action" and len(counted) + len(targets) > limit.limit:
            return _refuse(
                "rate_limit",
                f"{action.name}: {len(counted)} executions in the last {limit.window}, {len(targets)} more would "
                f"pass the limit of {limit.limit}",
            )
        if limit.per == "target":
            for target in targets:
                same = _same_target(action.target_kind, target)
                count = sum(1 for e in counted if _same_target(action.target_kind, e.target) == same)
                if count + 1 > limit.limit:
                    return _refuse(
                        "rate_limit",
                        f"{action.name} on {target}: {count} executions in the last {limit.window}, "
                        f"the limit is {limit.limit}",
                    )
    return None


# ---- the kill switch (repository) --------------------------------------------------------------


@dataclass(frozen=True)
class Controls:
    paused: bool
    reason: str
    changed_by: str
    changed_at: datetime | None


async def get_controls(conn: Conn) -> Controls:
    """The kill switch as it stands; never set means running."""
    row = await conn.fetchrow("SELECT paused, reason, changed_by, changed_at FROM response_controls")
    if row is None:
        return Controls(paused=False, reason="", changed_by="", changed_at=None)
    return Controls(**dict(row))


# The durable timer a resume sets: the responder runs on the steps the pause held.
RESUMED = "responses-resumed"


async def set_paused(conn: Conn, *, paused: bool, reason: str, changed_by: str) -> Controls:
    """Pause or resume every responder at once, saying who and why; a resume runs on what the pause held."""
    row = await conn.fetchrow(
        """INSERT INTO response_controls (paused, reason, changed_by) VALUES ($1, $2, $3)
           ON CONFLICT (singleton) DO UPDATE
           SET paused = excluded.paused, reason = excluded.reason, changed_by = excluded.changed_by,
               changed_at = now()
           RETURNING paused, reason, changed_by, changed_at""",
        paused,
        reason,
        changed_by,
    )
    assert row is not None  # an upsert always returns its row
    if not paused:
        await timers.schedule(conn, service="responder", kind=RESUMED, subject="responses", due_at=row["changed_at"])
    return Controls(**dict(row))


# ---- the rate limits' count (repository) -------------------------------------------------------

# A slot not matched by a step dispatched for real (its transaction rolled back, or has not committed
# yet) counts this long: far longer than a dispatching transaction lasts.
UNCONFIRMED = timedelta(minutes=5)
# A dispatch waits this long for its turn, its connection or a statement, else its transaction is retried whole.
LIMITER_TIMEOUT_S = 30.0
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('responder:rate-limits', 0))"
# The slots that count: those of steps dispatched for real, and those too young to tell.
_SLOTS = """
    SELECT r.action, r.target, r.reserved_at FROM responder_rate_slots r
    LEFT JOIN responder_steps s ON s.id = r.step_id
    WHERE r.reserved_at > $1 AND r.step_id <> $3
      AND (r.reserved_at > $2
           OR (s.dispatched_at IS NOT NULL AND s.state IN ('running', 'succeeded', 'failed', 'rolled_back')))"""
# Expired slots go in the statement that counts the others (a data-modifying WITH runs whatever the query reads).
_COUNTED = "WITH expired AS (DELETE FROM responder_rate_slots WHERE reserved_at <= $1)" + _SLOTS
_TAKE = """
    INSERT INTO responder_rate_slots (step_id, action, target, reserved_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (step_id) DO UPDATE SET action = excluded.action, target = excluded.target,
                                        reserved_at = excluded.reserved_at"""


class RateLimiter:
    """Counts the rate limits across transactions, replicas and the responder's own concurrent work.

    A step is dispatched inside its incident's transaction, under the incident's lock. A count made there
    misses what another transaction is dispatching and has not committed, so both would pass a limit; and
    waiting there for one lock over all dispatches deadlocks with the incident locks another transaction
    holds. So the count, and the slot a dispatch takes, are committed at once on a connection of their own,
    under a lock held for nothing else. A dispatching transaction that then rolls back leaves a slot that
    counts for ``UNCONFIRMED`` only: at worst a refusal too many, never an action too many.

    The connection is the limiter's alone, never one of the service's pool: the dispatching transaction
    holds a pooled connection and its incident's lock, and every other pooled connection may be waiting
    for that lock. The process's dispatches take turns on it, as the lock would have them do anyway.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._conn: asyncpg.Connection | None = None
        self._turn = asyncio.Lock()

    async def close(self) -> None:
        async with self._turn:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def take(
        self,
        step_id: str,
        action: Action,
        targets: Sequence[str],
        limits: Sequence[RateLimit],
        *,
        now: datetime,
        reserve: bool = True,
    ) -> Verdict:
        """Whether the step's targets stay within every limit; when they do, and ``reserve``, take the step's
        slot (a step taking it again, retried, moves its own)."""
        if not limits:
            return ALLOWED
        longest = max(limit.window_delta for limit in limits)
        async with asyncio.timeout(LIMITER_TIMEOUT_S):
            await self._turn.acquire()
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncio.wait_for(
                    connect(self.database_url, command_timeout=LIMITER_TIMEOUT_S), LIMITER_TIMEOUT_S
                )
            conn = self._conn
            try:
                async with conn.transaction():
                    await conn.execute(_LOCK)
                    rows = await conn.fetch(_COUNTED, now - max(longest, UNCONFIRMED), now - UNCONFIRMED, step_id)
                    recent = [Execution(action=r["action"], target=r["target"], at=r["reserved_at"]) for r in rows]
                    refusal = rate_limit_refusal(action, targets, recent, limits, now=now)
                    if refusal is None and reserve:
                        await conn.execute(_TAKE, step_id, action.name, targets[0] if targets else "", now)
            except BaseException:
                # Whatever broke (the server gone, a cancelled wait), the next dispatch starts on a new connection.
                conn.terminate()
                self._conn = None
                raise
        finally:
            self._turn.release()
        return refusal or ALLOWED


async def rate_usage(conn: Conn, limits: Sequence[RateLimit], *, now: datetime) -> list[LimitUsage]:
    """How much of each rate limit is used now, as a dispatch would count it."""
    if not limits:
        return []
    longest = max(limit.window_delta for limit in limits)
    rows = await conn.fetch(_SLOTS, now - max(longest, UNCONFIRMED), now - UNCONFIRMED, "")
    recent = [Execution(action=r["action"], target=r["target"], at=r["reserved_at"]) for r in rows]
    return usage(limits, recent, now=now)
