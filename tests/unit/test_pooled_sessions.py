"""Pooled connections keep no session state: the pool releases them without asyncpg's reset query.

``shared.db.create_pool`` hands a released connection to the next caller as it is (``_keep_session``),
which is safe only while nothing Vigil runs on a pooled connection outlives its transaction. This
reads every module for the statements that would, and names the few places allowed them: each on
a connection of its own, or, for the migrations' lock, released before the connection goes back.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [path for folder in ("shared", "services", "vigil") for path in (ROOT / folder).rglob("*.py")]

# What outlives a transaction on a Postgres session.
SESSION_STATE = {
    "a session advisory lock": re.compile(r"pg_(?:try_)?advisory_lock(?:_shared)?\s*\("),
    "LISTEN": re.compile(r"add_listener\s*\(|\bLISTEN\s+\w"),
    "a session setting": re.compile(r"""["']\s*SET\s+(?!LOCAL\b)(?:SESSION\s+)?\w+\s*(?:=|TO\b)""", re.IGNORECASE),
    "set_config for the session": re.compile(r"set_config\s*\([^)]*,\s*false\s*\)", re.IGNORECASE),
    "a temporary table kept past commit": re.compile(
        r"CREATE\s+(?:TEMP|TEMPORARY)\s+TABLE(?![^;]*ON\s+COMMIT\s+DROP)", re.IGNORECASE
    ),
    "a cursor kept past commit": re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE),
}

# Where session state is allowed, and why it never reaches a pooled connection's next user.
ALLOWED = {
    ("shared/outbox.py", "a session advisory lock"): "the relay's own connection (OutboxRelay.connect)",
    ("shared/outbox.py", "LISTEN"): "the relay's own connection",
    ("shared/db.py", "a session advisory lock"): "the migrations' lock, unlocked in a finally before release",
    ("shared/effects/runner.py", "LISTEN"): "the runner's own listening connection",
    ("services/detector/suppressor.py", "LISTEN"): "the suppressor's own listening connection",
}


def found_session_state() -> set[tuple[str, str]]:
    found = set()
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for what, pattern in SESSION_STATE.items():
            if pattern.search(text):
                found.add((path.relative_to(ROOT).as_posix(), what))
    return found


def test_session_state_is_taken_only_where_it_never_reaches_a_pooled_connection() -> None:
    unexpected = found_session_state() - ALLOWED.keys()
    assert not unexpected, (
        "session state on what may be a pooled connection, which the pool no longer resets: "
        f"{sorted(unexpected)}; use a transaction-scoped form (pg_advisory_xact_lock, SET LOCAL, ON COMMIT DROP) "
        "or a connection of its own (shared.db.connect), and list it in ALLOWED with why"
    )


def test_every_allowed_place_still_takes_it() -> None:
    # An allowance nobody needs any more would let the next one in unseen.
    assert set(ALLOWED) <= found_session_state()


def test_the_patterns_catch_what_they_are_for() -> None:
    samples = {
        "a session advisory lock": 'await conn.execute("SELECT pg_advisory_lock($1)", 1)',
        "LISTEN": "await conn.add_listener('vigil', callback)",
        "a session setting": 'await conn.execute("SET statement_timeout = 0")',
        "set_config for the session": "SELECT set_config('search_path', 'x', false)",
        "a temporary table kept past commit": "CREATE TEMPORARY TABLE scratch (id int)",
        "a cursor kept past commit": "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    }
    for what, sample in samples.items():
        assert SESSION_STATE[what].search(sample), what
    harmless = [
        "SELECT pg_advisory_xact_lock(id) FROM unnest($1::bigint[]) AS id",
        'await conn.execute("SET LOCAL jit = off")',
        "CREATE TEMPORARY TABLE intel_load (kind text) ON COMMIT DROP;",
        "UPDATE outbox SET sent_at = now()",
    ]
    for sample in harmless:
        assert not any(pattern.search(sample) for pattern in SESSION_STATE.values()), sample
