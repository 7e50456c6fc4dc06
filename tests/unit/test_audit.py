"""The audit trail's hash chain: the canonical form each hash covers, and what `verify` finds in a tampered chain."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.audit import GENESIS, Entry, canonical, checked_detail, hash_of, new_entry, verify

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def chain(n: int) -> list[Entry]:
    """``n`` entries as `record` would have written them, one second apart."""
    entries: list[Entry] = []
    for k in range(n):
        head = entries[-1] if entries else None
        entries.append(
            new_entry(
                head_id=head.id if head else 0,
                head_hash=head.hash if head else GENESIS,
                at=T0 + timedelta(seconds=k),
                service="coordinator",
                principal="ana",
                action="incident.acknowledge",
                target=f"incident-{k + 1}",
                detail={"n": k + 1},
            )
        )
    return entries


def rechained(entries: Sequence[Entry]) -> list[Entry]:
    """What someone who knows the algorithm writes after tampering: every link and hash made to fit again."""
    fixed: list[Entry] = []
    for entry in entries:
        linked = replace(entry, prev_hash=fixed[-1].hash if fixed else GENESIS)
        fixed.append(replace(linked, hash=hash_of(linked)))
    return fixed


def renumbered(entries: Sequence[Entry]) -> list[Entry]:
    return [replace(entry, id=n) for n, entry in enumerate(entries, start=1)]


# ---- canonical form and hashing ----------------------------------------------------------------


def test_the_canonical_form_has_sorted_keys_no_whitespace_and_utc_microseconds() -> None:
    paris = timezone(timedelta(hours=1))
    content = canonical(
        at=datetime(2026, 3, 1, 10, 30, 0, 1, tzinfo=paris),
        service="coordinator",
        principal="ana",
        action="incident.acknowledge",
        target="7f3a",
        outcome="ok",
        detail={"z": 1, "a": ["x", True, None], "é": "ü"},
    )
    assert (
        content
        == (
            '{"action":"incident.acknowledge","at":"2026-03-01T09:30:00.000001Z",'
            '"detail":{"a":["x",true,null],"z":1,"é":"ü"},'
            '"outcome":"ok","principal":"ana","service":"coordinator","target":"7f3a"}'
        ).encode()
    )


def test_an_entry_hash_is_sha256_of_the_previous_hash_then_its_canonical_form() -> None:
    first = new_entry(
        head_id=0,
        head_hash=GENESIS,
        at=datetime(2026, 3, 1, 9, 30, 0, 1, tzinfo=UTC),
        service="coordinator",
        principal="ana",
        action="incident.acknowledge",
        target="7f3a",
        detail={"z": 1, "a": ["x", True, None], "é": "ü"},
    )
    content = canonical(
        at=first.at,
        service=first.service,
        principal=first.principal,
        action=first.action,
        target=first.target,
        outcome=first.outcome,
        detail=first.detail,
    )
    assert (first.id, first.prev_hash, first.outcome) == (1, "0" * 64, "ok")
    assert first.hash == hashlib.sha256(b"0" * 64 + content).hexdigest()
    # Pinned: a different hash for the same entry would make every chain already written look tampered with.
    assert first.hash == "f2e7e381a13951217460921eccce820561a49973bd880dc8d77f411bb75db26b"

    second = new_entry(
        head_id=first.id,
        head_hash=first.hash,
        at=first.at,
        service="responder",
        principal="system:responder",
        action="step.refused_by_guardrail",
        target="step-1",
        outcome="refused",
    )
    assert (second.id, second.prev_hash, second.detail) == (2, first.hash, {})
    assert second.hash == hash_of(second) != first.hash


def test_the_id_is_not_hashed_its_place_is_what_prev_hash_says() -> None:
    entry = chain(1)[0]
    assert hash_of(replace(entry, id=99)) == entry.hash


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        new_entry(
            head_id=0,
            head_hash=GENESIS,
            at=datetime(2026, 3, 1),
            service="s",
            principal="p",
            action="a.b",
            target="t",
        )


@pytest.mark.parametrize(
    ("detail", "error"),
    [
        ({"score": 0.5}, r"detail\.score: float is not allowed"),
        ({"nested": {"ok": [1, {"ratio": 1e16}]}}, r"detail\.nested\.ok\[1\]\.ratio: float"),
        ({1: "a"}, "key 1 is not a string"),
        ({"password": "x"}, "looks like a secret"),
        ({"webhook": {"Authorization": "Bearer x"}}, "looks like a secret"),
        ({"api_key": "x"}, "looks like a secret"),
        ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, "datetime is not allowed"),
        ({"text": "x" * 5000}, "keep it under 4096"),
    ],
)
def test_a_detail_that_would_not_read_back_the_same_or_could_hold_a_secret_is_refused(
    detail: dict[object, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        checked_detail(detail)  # type: ignore[arg-type]


def test_a_detail_is_copied_as_plain_json() -> None:
    assert checked_detail(None) == {}
    assert checked_detail({"hosts": ("a", "b"), "count": 2, "dry_run": False, "note": None}) == {
        "hosts": ["a", "b"],
        "count": 2,
        "dry_run": False,
        "note": None,
    }


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("action", "Acknowledge", "dotted lower case"),
        ("action", "incident", "dotted lower case"),
        ("outcome", "not ok", "one lower-case word"),
        ("principal", " ", "needs a principal"),
        ("target", "", "needs a target"),
    ],
)
def test_an_entry_needs_its_fields_in_their_form(field: str, value: str, error: str) -> None:
    fields: dict[str, Any] = {"service": "coordinator", "principal": "ana", "action": "incident.acknowledge"}
    fields[field] = value
    with pytest.raises(ValueError, match=error):
        new_entry(head_id=0, head_hash=GENESIS, at=T0, **{"target": "t", **fields})


# ---- verify ------------------------------------------------------------------------------------


def test_an_intact_chain_has_no_problem() -> None:
    assert verify([]) is None
    assert verify(chain(1)) is None
    assert verify(chain(10)) is None


def test_an_edited_entry_is_named() -> None:
    entries = chain(10)
    entries[4] = replace(entries[4], principal="mallory")
    problem = verify(entries)
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("edited", 5)
    assert problem.message == "entry 5 was edited: its hash does not match its content"


@pytest.mark.parametrize(
    "edit",
    [
        {"outcome": "refused"},
        {"detail": {"n": 50}},
        {"at": T0 + timedelta(seconds=4, microseconds=1)},
        {"prev_hash": "f" * 64},
        {"hash": "e" * 64},
    ],
)
def test_every_field_is_covered_by_the_hash(edit: dict[str, object]) -> None:
    entries = chain(5)
    entries[4] = replace(entries[4], **edit)  # type: ignore[arg-type]
    problem = verify(entries)
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("edited", 5)


def test_a_deleted_entry_leaves_a_broken_link_and_missing_ids() -> None:
    entries = chain(10)
    del entries[4:6]
    problem = verify(entries)
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("deleted", 7)
    assert problem.message == (
        "entry 7 does not follow entry 4 in the chain and ids 5-6 are missing: entries were deleted"
    )


def test_deleting_the_first_entries_is_found() -> None:
    problem = verify(chain(5)[1:])
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("deleted", 2)
    assert "first entry but does not start the chain" in problem.message


def test_a_deletion_with_the_ids_renumbered_still_breaks_the_chain() -> None:
    entries = chain(10)
    del entries[4]
    problem = verify(renumbered(entries))
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("deleted", 5)
    assert "entries between them were deleted and the ids renumbered" in problem.message


def test_swapped_entries_are_reported_as_reordered() -> None:
    entries = chain(10)
    entries[4], entries[5] = replace(entries[5], id=5), replace(entries[4], id=6)
    problem = verify(entries)
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("reordered", 5)
    assert problem.message == "entry 5 follows entry 6 in the chain but comes before it by id: entries were reordered"


def test_an_entry_moved_far_back_is_reported_as_reordered() -> None:
    entries = chain(10)
    moved = entries[:2] + entries[3:] + [entries[2]]  # entry 3 now last
    problem = verify(renumbered(moved))
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("reordered", 3)
    assert "entry 3 follows entry 10 in the chain" in problem.message


def test_entries_moved_and_rechained_show_in_their_times() -> None:
    entries = chain(6)
    moved = renumbered([*entries[:2], entries[3], entries[2], *entries[4:]])
    problem = verify(rechained(moved))
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("reordered", 4)
    assert problem.message == (
        "entry 4 is dated 2026-03-01T09:30:02.000000Z, before entry 3 (2026-03-01T09:30:03.000000Z): "
        "time order and chain order disagree"
    )


def test_a_forged_entry_inserted_with_a_valid_hash_is_found_by_the_entry_after_it() -> None:
    entries = chain(6)
    forged = new_entry(
        head_id=entries[2].id,
        head_hash=entries[2].hash,
        at=entries[2].at + timedelta(milliseconds=1),
        service="responder",
        principal="ana",
        action="step.approve",
        target="step-9",
    )
    problem = verify(renumbered([*entries[:3], forged, *entries[3:]]))
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("inserted", 5)
    assert problem.message == "entries 4 and 5 both follow entry 3 in the chain: one of them was inserted"


def test_a_forged_entry_with_a_made_up_hash_is_found_by_its_own_hash() -> None:
    entries = chain(6)
    forged = replace(entries[2], principal="mallory", prev_hash=entries[2].hash, hash="a" * 64)
    problem = verify(renumbered([*entries[:3], forged, *entries[3:]]))
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("edited", 4)


def test_a_second_chain_start_inserted_in_the_middle_is_found() -> None:
    entries = chain(4)
    forged = new_entry(
        head_id=2, head_hash=GENESIS, at=entries[1].at, service="s", principal="p", action="a.b", target="t"
    )
    problem = verify([*entries[:2], forged])
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("inserted", 3)
    assert "starts a chain of its own after entry 2" in problem.message


def test_changed_ids_with_the_chain_intact_are_reported() -> None:
    entries = chain(5)
    shifted = [*entries[:3], *(replace(e, id=e.id + 10) for e in entries[3:])]
    problem = verify(shifted)
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("edited", 14)
    assert problem.message == (
        "ids 4-13 are missing between entries 3 and 14, yet 14 follows 3 in the chain: ids were changed"
    )
    problem = verify([replace(e, id=e.id + 1) for e in entries])
    assert problem is not None
    assert problem.message == "id 1 is missing before entry 2, yet it starts the chain: ids were changed"


def test_verify_stops_reading_at_a_problem_that_cannot_change() -> None:
    entries = chain(10)
    entries[2] = replace(entries[2], target="elsewhere")
    read: list[int] = []

    def walk() -> Iterator[Entry]:
        for entry in entries:
            read.append(entry.id)
            yield entry

    assert verify(walk()) is not None
    assert read == [1, 2, 3]


def test_a_whole_chain_rewritten_after_an_edit_shows_only_against_an_anchor() -> None:
    entries = chain(10)
    anchor = entries[6].hash  # a head hash noted elsewhere when the chain had 7 entries
    assert verify(entries, anchor=anchor) is None

    edited = list(entries)
    edited[2] = replace(edited[2], principal="mallory")
    rewritten = rechained(edited)
    assert verify(rewritten) is None  # the hash has no key: whoever can write the table can do this
    problem = verify(rewritten, anchor=anchor)
    assert problem is not None
    assert (problem.kind, problem.entry_id) == ("rewritten", None)
    assert anchor in problem.message


def test_what_the_chain_cannot_show_an_entry_appended_with_a_valid_hash() -> None:
    entries = chain(5)
    forged = new_entry(
        head_id=5,
        head_hash=entries[-1].hash,
        at=entries[-1].at,
        service="responder",
        principal="ana",
        action="step.approve",
        target="step-1",
    )
    # Appending is what record does; only an anchor noted after it would tell the two apart.
    assert verify([*entries, forged], anchor=entries[-1].hash) is None
