"""OIDC bearer tokens against a real JWKS endpoint: key rotation, clock skew, unverified addresses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.oidc import OidcVerifier

pytestmark = [pytest.mark.integration]

ISSUER, AUDIENCE = "https://idp.example.com", "vigil"


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


def _token(key: Any, kid: str, **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "email": "dana@example.com", "vigil_role": "admin"}
    return jwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": kid})


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A provider's JWKS endpoint serving whatever keys the test puts in the dict."""
    served: dict[str, Any] = {"keys": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if served.get("down"):
                self.send_response(503)
                self.end_headers()
                return
            body = json.dumps(served).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", served
    finally:
        server.shutdown()
        server.server_close()


def _trusting_old_key(jwks_server: tuple[str, dict[str, Any]]) -> tuple[OidcVerifier, dict[str, Any], Any, Any]:
    """A verifier of a provider serving one key ("old") that it has taken a token of; a second key not served."""
    url, served = jwks_server
    old, new = _key(), _key()
    served["keys"] = [_jwk(old, "old")]
    verifier = OidcVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=url)
    assert verifier.verify(_token(old, "old")) is not None
    return verifier, served, old, new


def test_a_key_the_provider_withdrew_is_refused_once_the_set_is_fetched_again(
    jwks_server: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, served, old, new = _trusting_old_key(jwks_server)

    # The provider rotates the old key (leaked, say) out; ten minutes later the cached set has expired.
    served["keys"] = [_jwk(new, "new")]
    later = time.monotonic() + 600
    monkeypatch.setattr("jwt.jwk_set_cache.time.monotonic", lambda: later)
    monkeypatch.setattr("jwt.jwks_client.time.monotonic", lambda: later)
    assert verifier.verify(_token(new, "new")) is not None
    assert verifier.verify(_token(old, "old")) is None


def test_a_key_added_by_the_provider_is_taken_before_the_set_expires(
    jwks_server: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, served, old, new = _trusting_old_key(jwks_server)
    served["keys"] = [_jwk(old, "old"), _jwk(new, "new")]
    # A token naming a key the cached set lacks fetches the set again, at most twice a minute.
    later = time.monotonic() + 31
    monkeypatch.setattr("jwt.jwks_client.time.monotonic", lambda: later)
    assert verifier.verify(_token(new, "new")) is not None


def test_a_token_from_a_provider_whose_clock_is_a_little_ahead_is_taken(tmp_path: Path) -> None:
    key = _key()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [_jwk(key, "k1")]}))
    verifier = OidcVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=str(tmp_path / "jwks.json"))
    now = int(time.time())
    assert verifier.verify(_token(key, "k1", iat=now + 5)) is not None
    assert verifier.verify(_token(key, "k1", nbf=now + 5)) is not None
    assert verifier.verify(_token(key, "k1", nbf=now + 600)) is None  # not yet valid, beyond any skew
    assert verifier.verify(_token(key, "k1", exp=now - 600)) is None  # expired, beyond any skew


def test_an_email_the_token_says_is_unverified_names_nobody(tmp_path: Path) -> None:
    key = _key()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [_jwk(key, "k1")]}))
    verifier = OidcVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=str(tmp_path / "jwks.json"))
    assert verifier.verify(_token(key, "k1", email_verified=False)) is None
    verified = verifier.verify(_token(key, "k1", email_verified=True))
    assert verified is not None and verified.name == "dana@example.com"


def test_while_the_providers_key_endpoint_is_down_the_set_last_fetched_serves_for_an_hour(
    jwks_server: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, served, old, _new = _trusting_old_key(jwks_server)
    served["down"] = True
    started = time.monotonic()
    for after, taken in ((600, True), (3000, True), (3700, False)):  # past the cached set's five minutes
        monkeypatch.setattr("time.monotonic", lambda after=after: started + after)
        assert (verifier.verify(_token(old, "old")) is not None) is taken, after
