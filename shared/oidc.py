"""OIDC/JWT bearer tokens from a team's identity provider, as an alternative to Vigil's own API tokens.

Configured by ``VIGIL_OIDC_ISSUER``, ``VIGIL_OIDC_AUDIENCE`` and ``VIGIL_OIDC_JWKS`` (a file, or an
https URL whose keys are fetched and cached); the principal is the ``VIGIL_OIDC_NAME_CLAIM`` claim
(``email`` by default, else ``sub``) and its role the ``VIGIL_OIDC_ROLE_CLAIM`` claim (``vigil_role``):
one role, or a list of which the highest Vigil knows counts. A token is checked for its signature
(asymmetric algorithms only), issuer, audience, expiry and not-before, allowing the two clocks a
minute apart; an ``email`` the token says is not verified names nobody. A fetched key set is kept
five minutes: a key the provider withdraws is refused once it is gone from the set. While the key
endpoint cannot be reached, the set last fetched serves for up to an hour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.identity import ROLES, Principal, Role
from shared.settings import VigilSettings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import jwt

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
# The order roles outrank each other in, for a claim that lists several.
RANK: dict[str, int] = {"ingest": 0, "viewer": 1, "responder": 2, "commander": 3, "admin": 4}


# How long a fetched key set is trusted before it is fetched again.
JWKS_LIFESPAN_S = 300
# How long the key set last fetched is used while the provider's key endpoint cannot be reached.
KEY_SET_OUTAGE_S = 3600
# How far the provider's clock may be from this host's for a token's times (iat, nbf, exp).
CLOCK_SKEW_S = 60


class OidcVerifier:
    def __init__(
        self, *, issuer: str, audience: str, jwks: str, name_claim: str = "email", role_claim: str = "vigil_role"
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.name_claim = name_claim
        self.role_claim = role_claim
        # Imported here: PyJWT brings the cryptography bindings (10 MB), wanted only where OIDC is configured.
        import jwt

        self._jwt = jwt
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._last_set: tuple[jwt.PyJWKSet, float] | None = None  # the URL's set last fetched, and when
        if jwks.startswith("https://") or jwks.startswith("http://"):
            # The set is cached, fetched again when a token names a key it lacks; keys are not cached apart
            # from it, so that a key the provider withdrew (a leaked one) is refused once the set is fetched.
            self._client = jwt.PyJWKClient(jwks, cache_keys=False, lifespan=JWKS_LIFESPAN_S)
        else:
            self._keys = jwt.PyJWKSet.from_dict(json.loads(Path(jwks).read_text()))

    def _key(self, token: str) -> Any:
        if self._client is None:
            assert self._keys is not None
            return self._find(self._keys, token)
        try:
            key = self._client.get_signing_key_from_jwt(token).key
        except self._jwt.PyJWKClientConnectionError:
            # The provider's key endpoint is down: the set last fetched serves for a while, else every
            # signed-in person would be refused until it is back. A key it withdrew was gone from that set.
            last = self._last_set
            if last is None or time.monotonic() - last[1] > KEY_SET_OUTAGE_S:
                raise
            log.warning("the identity provider's key set cannot be fetched; using the one fetched last")
            return self._find(last[0], token)
        self._last_set = (self._client.get_jwk_set(), time.monotonic())  # fresh in the cache: no fetch
        return key

    def _find(self, keys: Any, token: str) -> Any:
        kid = self._jwt.get_unverified_header(token).get("kid")
        for key in keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise self._jwt.InvalidTokenError(f"no key {kid!r} in the JWKS")

    def verify(self, token: str) -> Principal | None:
        """The principal a JWT stands for; None when it is not valid here (why is logged, never the token)."""
        try:
            claims = self._jwt.decode(
                token,
                self._key(token),
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=CLOCK_SKEW_S,
            )
        except (self._jwt.PyJWTError, ValueError) as exc:
            log.info("a bearer JWT was refused: %s", type(exc).__name__)
            return None
        role = _role(claims.get(self.role_claim))
        if self.name_claim == "email" and claims.get("email_verified") is False:
            # Some providers let a user set any address: an unverified one could name someone else.
            log.info("a bearer JWT was refused: its email is not verified")
            return None
        name = claims.get(self.name_claim) or claims.get("sub")
        if role is None or not isinstance(name, str) or not name:
            log.info("a bearer JWT was refused: no Vigil role in %r, or no name", self.role_claim)
            return None
        return Principal(name=name, role=role, kind="person")

    async def averify(self, token: str) -> Principal | None:
        # Fetching a JWKS URL blocks: off the event loop.
        return await asyncio.to_thread(self.verify, token) if self._client else self.verify(token)


def _role(claim: object) -> Role | None:
    names = [claim] if isinstance(claim, str) else list(claim) if isinstance(claim, list) else []
    known: list[Role] = [r for r in ROLES if r in names]
    if not known:
        return None
    return max(known, key=RANK.__getitem__)


@lru_cache(maxsize=8)
def _verifier(issuer: str, audience: str, jwks: str, name_claim: str, role_claim: str) -> OidcVerifier:
    return OidcVerifier(issuer=issuer, audience=audience, jwks=jwks, name_claim=name_claim, role_claim=role_claim)


def verifier(settings: VigilSettings) -> OidcVerifier | None:
    """The verifier the settings configure, built once; None without OIDC."""
    if not (settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks):
        return None
    return _verifier(
        settings.oidc_issuer,
        settings.oidc_audience,
        settings.oidc_jwks,
        settings.oidc_name_claim,
        settings.oidc_role_claim,
    )
