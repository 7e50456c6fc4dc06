"""Pure parts of identity: tokens parsed strictly, kept as hashes; settings that never show credentials."""

from __future__ import annotations

import itertools

from shared import identity
from shared.settings import VigilSettings


def test_settings_never_show_the_database_password_or_other_credentials() -> None:
    settings = VigilSettings(
        database_url="postgresql://vigil:db-s3cret-pw@db.example.com/vigil",
        api_token="vigil_abcdefghijkl_" + "t" * 40,
        ingest_hmac_secret="hmac-s3cret-value",
    )
    shown = f"{settings!r} {settings!s} {settings.model_dump()}"
    for secret in ("db-s3cret-pw", "t" * 40, "hmac-s3cret-value"):
        assert secret not in repr(settings) and secret not in str(settings), secret
    assert "db-s3cret-pw" in shown  # model_dump is for code; what is printed or logged is repr and str


def test_tokens_are_kept_only_as_hashes_and_parsed_strictly() -> None:
    new = identity.mint()
    assert identity.parse_token(new.text) == (new.token_id, new.secret)
    assert identity.digest(new.secret) != new.secret and len(identity.digest(new.secret)) == 64
    for malformed in ("", "Bearer x", "vigil_short_secret", f"other_{new.token_id}_{new.secret}"):
        assert identity.parse_token(malformed) is None


def test_each_role_holds_what_the_role_below_it_holds() -> None:
    ladder = ["viewer", "responder", "commander", "admin"]
    for lower, higher in itertools.pairwise(ladder):
        assert identity.PERMISSIONS[lower] < identity.PERMISSIONS[higher]  # type: ignore[index]
    assert identity.PERMISSIONS["ingest"] == {"alerts.ingest"}
    assert identity.least_role("steps.approve") == "commander"
