"""The responder's connectors without I/O: what each call dispatches, what is refused, the signing rule."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from shared.effects.domain import sign, verify_signature

SECRET = b"a-webhook-secret-of-some-length"
NOW = 1_750_000_000


# ---- signing -----------------------------------------------------------------------------------


def test_a_signature_is_the_hmac_of_the_timestamp_a_dot_and_the_body() -> None:
    body = b'{"action":"isolate_host"}'
    expected = hmac.new(SECRET, b"1750000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, body) == f"sha256={expected}"


@given(body=st.binary(max_size=512), skew=st.integers(min_value=-300, max_value=300))
def test_a_signed_body_verifies_within_the_tolerance(body: bytes, skew: int) -> None:
    assert verify_signature(SECRET, str(NOW), sign(SECRET, NOW, body), body, now=NOW + skew)


@given(body=st.binary(min_size=1, max_size=256), position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_a_tampered_body_does_not_verify(body: bytes, position: int, flip: int) -> None:
    signature = sign(SECRET, NOW, body)
    tampered = bytearray(body)
    tampered[position % len(body)] ^= flip
    assert not verify_signature(SECRET, str(NOW), signature, bytes(tampered), now=NOW)


def test_a_wrong_secret_a_moved_timestamp_or_a_missing_header_does_not_verify() -> None:
    body = b"{}"
    signature = sign(SECRET, NOW, body)
    assert verify_signature(SECRET, str(NOW), signature, body, now=NOW)
    assert not verify_signature(b"another-secret-entirely-123", str(NOW), signature, body, now=NOW)
    # The timestamp is signed: the same signature under another time is refused.
    assert not verify_signature(SECRET, str(NOW + 1), signature, body, now=NOW)
    assert not verify_signature(SECRET, None, signature, body, now=NOW)
    assert not verify_signature(SECRET, str(NOW), None, body, now=NOW)
    assert not verify_signature(SECRET, str(NOW), signature.removeprefix("sha256="), body, now=NOW)
    assert not verify_signature(SECRET, str(NOW), "sha256=", body, now=NOW)


def test_stale_and_future_timestamps_are_refused() -> None:
    body = b'{"key":"step-1"}'
    signature = sign(SECRET, NOW, body)
    assert not verify_signature(SECRET, str(NOW), signature, body, now=NOW + 301)  # replayed later
    assert not verify_signature(SECRET, str(NOW), signature, body, now=NOW - 301)  # from the future
    assert verify_signature(SECRET, str(NOW), signature, body, now=NOW + 30, tolerance_s=30)
    assert not verify_signature(SECRET, str(NOW), signature, body, now=NOW + 31, tolerance_s=30)


def test_a_timestamp_must_be_written_as_a_sender_writes_it() -> None:
    body = b"{}"
    signature = sign(SECRET, NOW, body)
    for written in (f" {NOW}", f"{NOW}\n", f"+{NOW}", f"0{NOW}", f"{NOW}.0", "1e9", "", "9" * 40):
        assert not verify_signature(SECRET, written, signature, body, now=NOW), written


def test_an_upper_case_signature_still_verifies() -> None:
    body = b"{}"
    signature = sign(SECRET, NOW, body)
    assert verify_signature(SECRET, str(NOW), signature.upper(), body, now=NOW)
