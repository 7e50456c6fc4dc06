"""Vigil's audit trail: who decided what, when, and how it ended, in a record nobody can quietly edit.

Each entry (``audit_log``) names its service, principal (a person's or an integration's name, or
``system:<service>`` for an automatic decision), action, target and outcome, with a small detail.
Entries form a hash chain: ``hash = sha256(prev_hash || canonical JSON of the entry)``, the first
entry following 64 zeros. ``record`` appends one in the caller's transaction, so an entry exists
exactly when the change it records was committed; ``verify`` (pure) and ``verify_chain`` find the
first entry that was edited, deleted, inserted or moved.

What the chain proves: a trigger refuses UPDATE, DELETE and TRUNCATE, but only as a guard against
accidents: a superuser can disable it. Editing, removing or reordering entries then breaks the chain,
and ``vigil audit verify`` says where. The hash has no key, so someone who can write the table can
also recompute every hash after a change, or append entries at the end; against that, note the head
hash that ``vigil audit verify`` prints somewhere else now and then, and pass it back with
``--anchor``: a chain rewritten before that point no longer holds it.

Retention: none. Audit entries are never pruned, by housekeeping or anything else.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import asyncpg

    from shared.db import Conn

GENESIS = "0" * 64
# The advisory lock that serialises the chain: every service and replica agrees on it.
CHAIN_LOCK_ID = 0x41554454  # "AUDT"
# "Small": a detail says what a reader of the trail needs, not the whole request.
MAX_DETAIL_BYTES = 4096
# Details never hold secrets; a key named like one is refused before it is written for good.
SECRET_KEY = re.compile(r"pass(word|wd|phrase)|secret|api_?key|private_?key|authori[sz]ation|credential", re.I)
ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")  # incident.acknowledge, step.refused_by_guardrail
OUTCOME = re.compile(r"[a-z][a-z0-9_]*")  # ok, refused, failed, …

ProblemKind = Literal["edited", "deleted", "inserted", "reordered", "rewritten"]


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    at: datetime
    service: str
    principal: str
    action: str
    target: str
    outcome: str
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    entry_id: int | None  # None: the chain as a whole (an anchor it no longer holds)
    message: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: int  # how many were read: all of them, unless a problem ended the walk
    head_id: int | None
    head_hash: str
    problem: Problem | None


# ---- pure: the canonical form, hashing, new entries --------------------------------------------


def utc_text(at: datetime) -> str:
    """2026-03-01T09:30:00.000001Z: the one spelling of a time that goes into a hash."""
    if at.tzinfo is None:
        raise ValueError("an audit time needs its time zone")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(
    *,
    at: datetime,
    service: str,
    principal: str,
    action: str,
    target: str,
    outcome: str,
    detail: Mapping[str, Any],
) -> bytes:
    """The bytes an entry's hash covers: every field but its id (its place is what prev_hash says)."""
    fields = {
        "action": action,
        "at": utc_text(at),
        "detail": detail,
        "outcome": outcome,
        "principal": principal,
        "service": service,
        "target": target,
    }
    return canonical_json(fields).encode()


def chain_hash(prev_hash: str, content: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + content).hexdigest()


def hash_of(entry: Entry) -> str:
    """The hash ``entry`` should carry, from its content and its prev_hash."""
    content = canonical(
        at=entry.at,
        service=entry.service,
        principal=entry.principal,
        action=entry.action,
        target=entry.target,
        outcome=entry.outcome,
        detail=entry.detail,
    )
    return chain_hash(entry.prev_hash, content)


def checked_detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``detail`` that reads back from jsonb exactly as written, or ValueError.

    Floats are refused: jsonb keeps numbers as decimals, and 1e16 comes back as an integer, which
    would change the entry's hash. Pass such values as strings.
    """
    plain = _checked_value(dict(detail or {}), "detail")
    size = len(canonical_json(plain).encode())
    if size > MAX_DETAIL_BYTES:
        raise ValueError(f"audit detail is {size} bytes; keep it under {MAX_DETAIL_BYTES}")
    assert isinstance(plain, dict)
    return plain


def _checked_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            if SECRET_KEY.search(key):
                raise ValueError(f"{where}: key {key!r} looks like a secret; audit entries never hold secrets")
            plain[key] = _checked_value(item, f"{where}.{key}")
        return plain
    if isinstance(value, list | tuple):
        return [_checked_value(item, f"{where}[{n}]") for n, item in enumerate(value)]
    raise ValueError(f"{where}: {type(value).__name__} is not allowed (strings, integers, booleans, null, lists, maps)")


def checked_entry(
    *, principal: str, action: str, target: str, outcome: str, detail: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What an entry says, checked as ``new_entry`` will (its detail, copied, is returned), or ValueError."""
    for name, value in (("principal", principal), ("target", target)):
        if not value.strip():
            raise ValueError(f"an audit entry needs a {name}")
    if not ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} is not dotted lower case, like incident.acknowledge")
    if not OUTCOME.fullmatch(outcome):
        raise ValueError(f"audit outcome {outcome!r} is not one lower-case word, like ok or refused")
    return checked_detail(detail)


def new_entry(
    *,
    head_id: int,
    head_hash: str,
    at: datetime,
    service: str,
    principal: str,
    action: str,
    target: str,
    outcome: str = "ok",
    detail: Mapping[str, Any] | None = None,
) -> Entry:
    """The entry that follows the chain's head (``head_id`` 0 and ``GENESIS`` for the first)."""
    if not service.strip():
        raise ValueError("an audit entry needs a service")
    plain = checked_entry(principal=principal, action=action, target=target, outcome=outcome, detail=detail)
    content = canonical(
        at=at, service=service, principal=principal, action=action, target=target, outcome=outcome, detail=plain
    )
    return Entry(
        id=head_id + 1,
        at=at,
        service=service,
        principal=principal,
        action=action,
        target=target,
        outcome=outcome,
        detail=plain,
        prev_hash=head_hash,
        hash=chain_hash(head_hash, content),
    )


# ---- pure: verification ------------------------------------------------------------------------


class ChainCheck:
    """Walks entries in id order, one at a time, and keeps the first problem.

    A link that breaks (an entry whose prev_hash is not the previous entry's hash) is a deletion
    unless the entry it should follow turns up later: then entries were reordered. So the verdict
    on such a link waits for the rest of the chain, remembering one hash and nothing else.
    """

    def __init__(self, *, anchor: str | None = None) -> None:
        self.entries = 0
        self.head: Entry | None = None
        self._anchor = anchor
        self._anchor_seen = anchor is None
        self._before_head: int | None = None  # the id of the entry before head
        self._problem: Problem | None = None
        self._broken: tuple[Entry, Entry | None] | None = None  # (entry whose link broke, entry before it)

    @property
    def settled(self) -> bool:
        """Nothing more read can change the verdict."""
        return self._problem is not None

    def feed(self, entry: Entry) -> None:
        self.entries += 1
        if self._broken is not None:  # only looking for the entry the broken link points to
            broken, _ = self._broken
            if entry.hash == broken.prev_hash:
                self._problem = Problem(
                    "reordered",
                    broken.id,
                    f"entry {broken.id} follows entry {entry.id} in the chain but comes before it by id: "
                    "entries were reordered",
                )
                self._broken = None
            return
        if self._problem is not None:
            return
        if entry.hash == self._anchor:
            self._anchor_seen = True
        self._problem = self._check(entry)
        self._before_head = self.head.id if self.head is not None else None
        self.head = entry

    def result(self) -> Problem | None:
        if self._broken is not None:
            return _deleted(*self._broken)
        if self._problem is not None:
            return self._problem
        if not self._anchor_seen:
            return Problem(
                "rewritten",
                None,
                f"the chain no longer holds the anchor {self._anchor}: entries up to it were rewritten or removed",
            )
        return None

    def _check(self, entry: Entry) -> Problem | None:
        previous = self.head
        if hash_of(entry) != entry.hash:
            return Problem("edited", entry.id, f"entry {entry.id} was edited: its hash does not match its content")
        expected = previous.hash if previous is not None else GENESIS
        if entry.prev_hash != expected:
            if previous is not None and entry.prev_hash == previous.prev_hash:
                before = f"entry {self._before_head}" if self._before_head is not None else "the chain's start"
                return Problem(
                    "inserted",
                    entry.id,
                    f"entries {previous.id} and {entry.id} both follow {before} in the chain: one of them was inserted",
                )
            if previous is not None and entry.prev_hash == GENESIS:
                return Problem(
                    "inserted",
                    entry.id,
                    f"entry {entry.id} starts a chain of its own after entry {previous.id}: it was inserted",
                )
            self._broken = (entry, previous)  # deleted or reordered: the rest of the chain will tell
            return None
        expected_id = previous.id + 1 if previous is not None else 1
        if entry.id != expected_id:
            missing = _missing(expected_id, entry.id - 1)
            if previous is None:
                where = f"{missing} before entry {entry.id}, yet it starts the chain"
            else:
                where = (
                    f"{missing} between entries {previous.id} and {entry.id}, "
                    f"yet {entry.id} follows {previous.id} in the chain"
                )
            return Problem("edited", entry.id, f"{where}: ids were changed")
        if previous is not None and entry.at < previous.at:
            return Problem(
                "reordered",
                entry.id,
                f"entry {entry.id} is dated {utc_text(entry.at)}, before entry {previous.id} "
                f"({utc_text(previous.at)}): time order and chain order disagree",
            )
        return None


def _missing(first: int, last: int) -> str:
    return f"id {first} is missing" if first == last else f"ids {first}-{last} are missing"


def _deleted(entry: Entry, previous: Entry | None) -> Problem:
    if previous is None:
        message = f"entry {entry.id} is the first entry but does not start the chain: entries before it were deleted"
    elif entry.id > previous.id + 1:
        missing = _missing(previous.id + 1, entry.id - 1)
        message = (
            f"entry {entry.id} does not follow entry {previous.id} in the chain and {missing}: entries were deleted"
        )
    else:
        message = (
            f"entry {entry.id} does not follow entry {previous.id} in the chain: entries between them were deleted "
            f"and the ids renumbered, or entry {previous.id} was rewritten with a fresh hash"
        )
    return Problem("deleted", entry.id, message)


def verify(entries: Iterable[Entry], *, anchor: str | None = None) -> Problem | None:
    """The first problem in ``entries`` (in id order), or None if the chain is intact.

    ``anchor``: a head hash noted earlier; a chain that no longer holds it was rewritten.
    """
    check = ChainCheck(anchor=anchor)
    for entry in entries:
        check.feed(entry)
        if check.settled:
            break
    return check.result()


# ---- I/O ---------------------------------------------------------------------------------------

_COLUMNS = "id, at, service, principal, action, target, outcome, detail::text AS detail, prev_hash, hash"


def _entry(row: asyncpg.Record) -> Entry:
    # detail is read as text and parsed here, whatever JSON codec the connection has.
    return Entry(
        id=row["id"],
        at=row["at"],
        service=row["service"],
        principal=row["principal"],
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        detail=json.loads(row["detail"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


async def record(
    conn: Conn,
    *,
    service: str,
    principal: str,
    action: str,
    target: str,
    outcome: str = "ok",
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append an entry in the caller's transaction; return its id.

    The chain's lock is held until that transaction ends, and every audited transaction waits for
    it: record last, just before committing, and keep the transaction short after it.
    """
    if not conn.is_in_transaction():
        # Outside a transaction the lock would end with the statement that takes it.
        raise RuntimeError("audit.record runs inside the transaction of the change it records")
    head = await conn.fetchrow("SELECT id, hash, at, now FROM audit_log_head($1)", CHAIN_LOCK_ID)
    assert head is not None
    # Never before the head: the database clock stepping back must not read as reordering.
    at = head["now"] if head["at"] is None else max(head["now"], head["at"])
    entry = new_entry(
        head_id=head["id"],
        head_hash=head["hash"],
        at=at,
        service=service,
        principal=principal,
        action=action,
        target=target,
        outcome=outcome,
        detail=detail,
    )
    await conn.execute(
        """INSERT INTO audit_log (id, at, service, principal, action, target, outcome, detail, prev_hash, hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)""",
        entry.id,
        entry.at,
        entry.service,
        entry.principal,
        entry.action,
        entry.target,
        entry.outcome,
        canonical_json(entry.detail),
        entry.prev_hash,
        entry.hash,
    )
    return entry.id


async def iter_entries(
    conn: Conn,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = 10_000,
) -> AsyncGenerator[Entry, None]:
    """Entries in id order, ``since`` <= at < ``until``, read ``batch`` at a time.

    Pages by id, with no transaction held open: ids are given under the chain's lock, which is
    held until commit, so no entry can appear later behind one already read.
    """
    after = 0
    while True:
        rows = await conn.fetch(
            f"""SELECT {_COLUMNS} FROM audit_log
                WHERE id > $1 AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at < $3)
                ORDER BY id LIMIT $4""",
            after,
            since,
            until,
            batch,
        )
        for row in rows:
            yield _entry(row)
        if len(rows) < batch:
            return
        after = rows[-1]["id"]


async def verify_chain(conn: Conn, *, batch: int = 10_000, anchor: str | None = None) -> ChainReport:
    """Check the whole chain, ``batch`` entries in memory at a time."""
    check = ChainCheck(anchor=anchor)
    stream = iter_entries(conn, batch=batch)
    try:
        async for entry in stream:
            check.feed(entry)
            if check.settled:
                break
    finally:
        await stream.aclose()
    head = check.head
    return ChainReport(
        entries=check.entries,
        head_id=head.id if head is not None else None,
        head_hash=head.hash if head is not None else GENESIS,
        problem=check.result(),
    )


def export_row(entry: Entry) -> dict[str, Any]:
    """What a compliance export holds of an entry: all of it, so the export can be verified too."""
    return {
        "id": entry.id,
        "at": utc_text(entry.at),
        "service": entry.service,
        "principal": entry.principal,
        "action": entry.action,
        "target": entry.target,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
