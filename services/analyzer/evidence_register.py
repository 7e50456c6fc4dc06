"""The SQL of each incident's evidence register: its items and their chain of custody.

An item is what responders collected and keep elsewhere (a disk image, a memory dump, a log export):
Vigil keeps its SHA-256, size and location, and every hand-over and every check of its hash, each with
who did it. Nothing is ever deleted or changed in place: the register is the custody record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import asyncpg

from shared.db import Conn

ITEM_COLUMNS = (
    "id, incident_id, name, sha256, size_bytes, location, description, collected_at, custodian, registered_by, "
    "registered_at"
)
Action = Literal["registered", "transferred", "verified"]


class AlreadyRegistered(ValueError):
    """The same item (its hash, at the same location) is in the incident's register already."""


async def register(
    conn: Conn,
    *,
    incident_id: str,
    name: str,
    sha256: str,
    size_bytes: int | None,
    location: str,
    description: str,
    collected_at: datetime | None,
    actor: str,
    note: str,
) -> asyncpg.Record:
    """Add an item, in its registrant's custody, with the first entry of its chain; AlreadyRegistered if there."""
    try:
        async with conn.transaction():  # a savepoint: a repeat is refused, the caller's transaction goes on
            item = await conn.fetchrow(
                f"""INSERT INTO analyzer_evidence_items
                        (incident_id, name, sha256, size_bytes, location, description, collected_at, custodian,
                         registered_by)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {ITEM_COLUMNS}""",
                incident_id,
                name,
                sha256,
                size_bytes,
                location,
                description,
                collected_at,
                actor,
            )
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyRegistered(f"{sha256} at {location} is in the register of incident {incident_id} already") from exc
    assert item is not None
    await _log(conn, item["id"], action="registered", actor=actor, custodian=actor, note=note)
    return item


async def lock_item(conn: Conn, item_id: int) -> asyncpg.Record | None:
    """The item, locked: its custody changes one entry at a time."""
    return await conn.fetchrow(f"SELECT {ITEM_COLUMNS} FROM analyzer_evidence_items WHERE id = $1 FOR UPDATE", item_id)


async def transfer(conn: Conn, item_id: int, *, to: str, actor: str, note: str) -> int:
    """Hand the item over; return the chain's new entry."""
    await conn.execute("UPDATE analyzer_evidence_items SET custodian = $2 WHERE id = $1", item_id, to)
    return await _log(conn, item_id, action="transferred", actor=actor, custodian=to, note=note)


async def verified(conn: Conn, item_id: int, *, custodian: str, matched: bool, actor: str, note: str) -> int:
    """Record a check of the item's hash; return the chain's new entry."""
    return await _log(conn, item_id, action="verified", actor=actor, custodian=custodian, note=note, verified=matched)


async def first_entry(conn: Conn, item_id: int) -> int:
    entry: int = await conn.fetchval("SELECT min(id) FROM analyzer_evidence_custody WHERE item_id = $1", item_id)
    return entry


async def _log(
    conn: Conn, item_id: int, *, action: Action, actor: str, custodian: str, note: str, verified: bool | None = None
) -> int:
    """Append an entry to the item's chain; return its number (the chain's order, whatever the clocks)."""
    entry: int = await conn.fetchval(
        """INSERT INTO analyzer_evidence_custody (item_id, action, actor, custodian, verified, note)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        item_id,
        action,
        actor,
        custodian,
        verified,
        note,
    )
    return entry


async def items_of(conn: Conn, incident_id: str) -> list[dict[str, Any]]:
    """The incident's register, in the order registered, each item with its chain of custody."""
    items = await conn.fetch(
        f"SELECT {ITEM_COLUMNS} FROM analyzer_evidence_items WHERE incident_id = $1 ORDER BY id", incident_id
    )
    chains = await conn.fetch(
        """SELECT c.item_id, c.at, c.action, c.actor, c.custodian, c.verified, c.note
           FROM analyzer_evidence_custody c JOIN analyzer_evidence_items i ON i.id = c.item_id
           WHERE i.incident_id = $1 ORDER BY c.id""",
        incident_id,
    )
    by_item: dict[int, list[dict[str, Any]]] = {}
    for entry in chains:
        by_item.setdefault(entry["item_id"], []).append({k: v for k, v in dict(entry).items() if k != "item_id"})
    return [{**dict(item), "custody": by_item.get(item["id"], [])} for item in items]


async def get_item(conn: Conn, item_id: int) -> dict[str, Any] | None:
    found = await conn.fetchrow("SELECT incident_id FROM analyzer_evidence_items WHERE id = $1", item_id)
    if found is None:
        return None
    return next(i for i in await items_of(conn, found["incident_id"]) if i["id"] == item_id)
