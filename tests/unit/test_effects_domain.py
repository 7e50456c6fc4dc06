"""The effects runner's pure decisions: backoff, verdicts, what to claim, bounded results."""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.backoff import backoff_delay
from shared.effects.domain import (
    MAX_RESULT_BYTES,
    bound_result,
    classify_exit_code,
    classify_http_status,
    classify_smtp_code,
    describe_error,
    http_target,
    message_id,
    pick,
    settle,
    substitute_key,
)


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    base=st.floats(min_value=0.001, max_value=60),
    cap=st.floats(min_value=0.001, max_value=3600),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_stays_between_zero_and_the_capped_exponential_ceiling(
    attempt: int, base: float, cap: float, draw: float
) -> None:
    delay = backoff_delay(attempt, base_s=base, cap_s=cap, rand=lambda: draw)
    assert 0 <= delay <= min(cap, base * 2 ** min(attempt - 1, 64))


def test_backoff_ceiling_doubles_per_attempt_up_to_the_cap() -> None:
    highest = [backoff_delay(n, base_s=1.0, cap_s=10.0, rand=lambda: 1.0) for n in range(1, 7)]
    assert highest == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(3, base_s=1.0, cap_s=10.0, rand=lambda: 0.0) == 0.0  # full jitter reaches zero


def test_backoff_draws_spread_over_the_whole_range() -> None:
    draws = [backoff_delay(4, base_s=1.0, cap_s=100.0) for _ in range(2000)]
    assert all(0 <= d <= 8.0 for d in draws)
    assert min(draws) < 1.0 and max(draws) > 7.0


def test_backoff_counts_attempts_from_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, base_s=1.0, cap_s=10.0)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "ok"),
        (201, "ok"),
        (204, "ok"),
        (299, "ok"),
        (408, "transient"),
        (429, "transient"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
        (400, "permanent"),
        (401, "permanent"),
        (403, "permanent"),
        (404, "permanent"),
        (409, "permanent"),
        (422, "permanent"),
        (301, "permanent"),
        (302, "permanent"),
        (100, "permanent"),
    ],
)
def test_http_status_classification(status: int, verdict: str) -> None:
    assert classify_http_status(status) == verdict


def test_smtp_and_exit_code_classification() -> None:
    assert [classify_smtp_code(c) for c in (250, 354, 421, 450, 550, 554)] == [
        "ok",
        "ok",
        "transient",
        "transient",
        "permanent",
        "permanent",
    ]
    assert classify_exit_code(0, permanent=[2]) == "ok"
    assert classify_exit_code(2, permanent=[2]) == "permanent"
    assert classify_exit_code(1, permanent=[2]) == "transient"
    assert classify_exit_code(-9, permanent=[]) == "transient"  # killed by a signal


def test_settle_retries_transient_failures_until_the_last_attempt() -> None:
    assert settle("ok", attempts=5, max_attempts=3) == "succeeded"
    assert settle("permanent", attempts=1, max_attempts=3) == "failed"
    assert settle("transient", attempts=1, max_attempts=3) == "pending"
    assert settle("transient", attempts=2, max_attempts=3) == "pending"
    assert settle("transient", attempts=3, max_attempts=3) == "parked"


def test_pick_keeps_a_busy_target_from_taking_every_slot() -> None:
    candidates = [(1, "slow"), (2, "slow"), (3, "slow"), (4, "fast"), (5, "other"), (6, "fast")]
    assert pick(candidates, free=4, per_target=1, running={}) == [1, 4, 5]
    assert pick(candidates, free=4, per_target=2, running={}) == [1, 2, 4, 5]
    assert pick(candidates, free=2, per_target=2, running={}) == [1, 2]
    assert pick(candidates, free=4, per_target=1, running={"slow": 1, "fast": 1}) == [5]
    assert pick(candidates, free=0, per_target=1, running={}) == []


@given(
    candidates=st.lists(st.tuples(st.integers(), st.sampled_from("abcd")), unique_by=lambda c: c[0], max_size=40),
    free=st.integers(min_value=0, max_value=10),
    per_target=st.integers(min_value=1, max_value=3),
    running=st.dictionaries(st.sampled_from("abcd"), st.integers(min_value=0, max_value=3)),
)
def test_pick_never_exceeds_the_free_slots_or_a_target_limit(
    candidates: list[tuple[int, str]], free: int, per_target: int, running: dict[str, int]
) -> None:
    chosen = pick(candidates, free=free, per_target=per_target, running=running)
    targets = dict(candidates)
    assert len(chosen) <= free
    assert [c for c in (i for i, _ in candidates) if c in chosen] == chosen  # oldest first
    for target in "abcd":
        added = sum(1 for i in chosen if targets[i] == target)
        assert added == 0 or running.get(target, 0) + added <= per_target


def test_the_key_reaches_the_far_side_the_same_way_every_time() -> None:
    key = "escalate:inc-1:3"
    assert message_id(key) == f"<{hashlib.sha256(key.encode()).hexdigest()}@vigil>"
    assert message_id(key) == message_id(key) != message_id("escalate:inc-1:4")
    assert substitute_key(["block", "--id={idempotency_key}", "{idempotency_key}", "{other}"], key) == [
        "block",
        f"--id={key}",
        key,
        "{other}",
    ]


def test_http_target_is_the_host_without_credentials() -> None:
    assert http_target("https://user:secret@hooks.example.com/services/T0/B0/XYZ?token=1") == "hooks.example.com"
    assert http_target("http://127.0.0.1:8080/hook") == "127.0.0.1:8080"


def test_results_and_errors_stay_bounded() -> None:
    assert bound_result({"status_code": 200, "body": "ok"}) == {"status_code": 200, "body": "ok"}
    assert bound_result(None) == {}
    big = bound_result({"body": "x" * (MAX_RESULT_BYTES * 3)})
    assert big["truncated"] is True and len(json.dumps(big)) < MAX_RESULT_BYTES
    assert bound_result({"when": object()})["when"].startswith("<object")  # stringified, not lost
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    assert "unserialisable" in bound_result(cyclic)
    assert len(describe_error(RuntimeError("e" * 10_000))) <= 2000
    assert describe_error(TimeoutError()) == "TimeoutError"


def test_a_result_holds_only_what_the_database_can_store() -> None:
    # JSON allows integers of any size and some tools write NaN; the jsonb codec refuses both, and an
    # outcome that cannot be stored would stop the runner (and run the effect again) at every restart.
    result = bound_result({"reports": 2**64, "floor": -(2**63), "score": float("nan"), "nested": [{"n": 10**30}]})
    assert result == {"reports": str(2**64), "floor": -(2**63), "score": "nan", "nested": [{"n": str(10**30)}]}
    assert orjson.loads(orjson.dumps(result)) == result


def test_what_the_far_side_said_is_kept_without_nul_which_postgres_cannot_store() -> None:
    # A UTF-16 answer, or a program that prints NUL: the outcome must be storable, or the runner stops.
    utf16 = "ok".encode("utf-16-le").decode("utf-8")
    assert bound_result({"body": utf16, "lines": ["a\x00b"]}) == {"body": "o\\0k\\0", "lines": ["a\\0b"]}
    assert describe_error(RuntimeError("bad\x00answer")) == "RuntimeError: bad\\0answer"
    # A backslash and "u0000" as text is no NUL, and stays as it was.
    assert bound_result({"body": "\\u0000"}) == {"body": "\\u0000"}


def test_waiting_out_an_outage_retries_what_passes_and_raises_the_rest() -> None:
    import asyncio

    from shared.backoff import until_available

    calls: list[int] = []

    async def flaky() -> str:
        calls.append(len(calls))
        if len(calls) < 3:
            raise ConnectionRefusedError("the database is not there yet")
        return "done"

    async def broken() -> str:
        raise ValueError("a bug, not an outage")

    assert asyncio.run(until_available(flaky, what="test", first_s=0.001)) == "done"
    assert len(calls) == 3
    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(until_available(broken, what="test", first_s=0.001))
