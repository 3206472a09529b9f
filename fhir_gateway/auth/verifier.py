"""Bearer JWT verification: signature, algorithm, issuer, audience, lifetime, subject → RequestContext.

Which keys verify which tokens (RFC 8725, JWT Best Current Practices):
- RS*/PS*/ES* (`security.algorithms`, default RS256 and ES256) with the IdP's JWK Set at
  `security.jwks_url`, chosen by the token's `kid`; the key's family, curve and pinned `alg` must
  fit the token's `alg`.
- HS256 with `security.signing_key` (tokens from `fhir-gateway token`) only in development, or
  anywhere `security.allow_hs256` says so. The shared secret is the only HMAC key ever used, so a
  token "signed" HS256 with the IdP's public key (algorithm confusion) never verifies.
- Everything else — `alg: none`, unlisted algorithms, a missing or unknown key — is refused.

Registered claims: `exp`, `iss`, `aud` and `sub` are required; `nbf` and `iat` are checked when
present (not in the future); all times with `security.clock_skew_seconds` of leeway (default 60 s).

Every failure is `Unauthorized` (401, OperationOutcome code `login`) whose text names the kind of
failure and never echoes the token or its claims; a valid token carrying a SMART v2 scope whose
query this server cannot enforce exactly is refused with 403 `not-supported` (privacy/scope_filter.py).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jwt
import orjson

from fhir_gateway.auth.claims import context_from_claims
from fhir_gateway.auth.jwks import KTY_FOR_ALG, JwksCache
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Unauthorized
from fhir_gateway.fhir.ids import uuid7_hex
from fhir_gateway.privacy.scope_filter import check_scopes, encrypted_for
from fhir_gateway.settings import Settings

HMAC_ALGORITHM = "HS256"
DEFAULT_ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_LENGTH = 16 * 1024
MAX_REMEMBERED_TOKENS = 10_000

_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidAudienceError, "The access token is not meant for this server (audience)"),
    (jwt.InvalidIssuerError, "The access token comes from an issuer this server does not trust"),
    (jwt.MissingRequiredClaimError, "The access token lacks a required claim"),
    (jwt.InvalidSignatureError, "The access token's signature does not verify"),
)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The settings authentication reads, with defaults for the ones not (yet) in Settings."""

    issuer: str
    audience: str
    signing_key: str
    hs256: bool
    algorithms: tuple[str, ...]
    jwks_url: str | None
    clock_skew: int
    roles_claim: str
    jwks_min_interval: float
    jwks_max_age: float
    token_cache_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthConfig:
        sec = settings.security
        algorithms = tuple(getattr(sec, "algorithms", DEFAULT_ALGORITHMS))
        unknown = [alg for alg in algorithms if alg not in KTY_FOR_ALG]
        if unknown:
            raise ValueError(f"security.algorithms: unsupported {', '.join(unknown)} (use RS*, PS*, ES*)")
        return cls(
            issuer=sec.issuer,
            audience=sec.audience,
            signing_key=sec.signing_key.get_secret_value(),
            hs256=settings.environment == "development" or bool(getattr(sec, "allow_hs256", False)),
            algorithms=algorithms,
            jwks_url=sec.jwks_url or None,
            clock_skew=int(getattr(sec, "clock_skew_seconds", 60)),
            roles_claim=str(getattr(sec, "roles_claim", "roles")),
            jwks_min_interval=float(getattr(sec, "jwks_min_refresh_seconds", 30.0)),
            jwks_max_age=float(getattr(sec, "jwks_max_age_seconds", 3600.0)),
            token_cache_seconds=float(getattr(sec, "token_cache_seconds", 60.0)),
        )


class TokenVerifier:
    """Built once per server (it holds the JWKS cache and the verified-token cache); `verify` /
    `verify_async` per request.

    Verified tokens are remembered for `security.token_cache_seconds` (default 60; 0 turns it off),
    keyed by the whole token text, so a client reusing its token costs a dictionary hit instead of a
    signature check (PyJWT parses a token in ~0.3 ms). A remembered token is still refused once its
    `exp` has passed; a key withdrawn from the JWK Set stops being honoured within that window.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = AuthConfig.from_settings(settings)
        if jwks is None and config.jwks_url:
            jwks = JwksCache(
                config.jwks_url, min_interval=config.jwks_min_interval, max_age=config.jwks_max_age
            )
        self.jwks = jwks
        self._clock = clock
        # token → (claims JSON, remembered until, the context those claims give, minus per-request state)
        self._verified: dict[str, tuple[bytes, float, RequestContext]] = {}
        self._encrypted = encrypted_for(settings)

    def verify(self, token: str) -> RequestContext:
        """Check the token and return its caller's context (a JWKS fetch, when needed, blocks)."""
        if (remembered := self._remembered(token)) is not None:
            return remembered
        alg, kid = self._header(token)
        if alg == HMAC_ALGORITHM:
            return self._accept(token, self._decode(token, self.config.signing_key, alg))
        found = self._jwks().key(kid, alg)
        if found is None:
            raise Unauthorized("The access token is signed with a key this server does not know")
        return self._accept(token, self._decode(token, found.key, alg))

    async def verify_async(self, token: str) -> RequestContext:
        """As `verify`, with a JWKS fetch (only on an unknown kid or stale cache) off the event loop."""
        if (remembered := self._remembered(token)) is not None:
            return remembered
        alg, kid = self._header(token)
        if alg == HMAC_ALGORITHM:
            return self._accept(token, self._decode(token, self.config.signing_key, alg))
        found = await self._jwks().key_async(kid, alg)
        if found is None:
            raise Unauthorized("The access token is signed with a key this server does not know")
        return self._accept(token, self._decode(token, found.key, alg))

    def _jwks(self) -> JwksCache:
        if self.jwks is None:
            raise Unauthorized("The access token needs a key set, and none is configured")
        return self.jwks

    def _header(self, token: str) -> tuple[str, str | None]:
        """The token's `alg` and `kid`, read without PyJWT (which parses the whole token again later)."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("The access token is too long")
        segment = token.split(".", 1)[0]
        try:
            header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        except (ValueError, binascii.Error):
            raise Unauthorized("The access token is not a valid JWT") from None
        if not isinstance(header, dict) or token.count(".") != 2:
            raise Unauthorized("The access token is not a valid JWT")
        alg, kid = header.get("alg"), header.get("kid")
        allowed = (*self.config.algorithms, HMAC_ALGORITHM) if self.config.hs256 else self.config.algorithms
        if not isinstance(alg, str) or alg not in allowed:
            raise Unauthorized("The access token is signed with an algorithm this server does not accept")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("The access token is not a valid JWT")
        return alg, kid

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False},
            )  # fmt: skip
        except jwt.InvalidTokenError as exc:
            for kind, text in _FAILURES:
                if isinstance(exc, kind):
                    raise Unauthorized(text) from None
            raise Unauthorized(f"The access token is not valid ({type(exc).__name__})") from None
        self._check_times(claims)
        return claims

    def _check_times(self, claims: dict[str, Any]) -> None:
        """exp, nbf and iat (RFC 7519 §4.1.4-6) against our clock, with the configured leeway."""
        now, skew = self._clock(), self.config.clock_skew
        exp, nbf, iat = claims["exp"], claims.get("nbf", now), claims.get("iat", now)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, nbf, iat)):
            raise Unauthorized("The access token is not valid (a time claim is not a number)")
        if now > exp + skew:
            raise Unauthorized("The access token has expired")
        if now < nbf - skew or now < iat - skew:
            raise Unauthorized("The access token is not yet valid")

    def _accept(self, token: str, claims: dict[str, Any]) -> RequestContext:
        ctx = self._context(claims)  # may still refuse (no subject, bad patient context)
        ttl = self.config.token_cache_seconds
        if ttl > 0:
            if len(self._verified) >= MAX_REMEMBERED_TOKENS:
                self._verified.pop(next(iter(self._verified)))  # the oldest
            template = replace(ctx, claims={}, policy=None)
            self._verified[token] = (orjson.dumps(claims), time.monotonic() + ttl, template)
        return ctx

    def _remembered(self, token: str) -> RequestContext | None:
        """A fresh context for a token verified within the window (the claims → context mapping,
        scope checks included, was done once; only per-request state is new)."""
        entry = self._verified.get(token)
        if entry is None:
            return None
        raw, until, template = entry
        if time.monotonic() >= until:
            self._verified.pop(token, None)
            return None
        claims: dict[str, Any] = orjson.loads(raw)  # a private copy: contexts are edited per request
        self._check_times(claims)  # an expired token is refused even while remembered
        return replace(template, claims=claims, request_id=uuid7_hex(), policy=None)

    def _context(self, claims: dict[str, Any]) -> RequestContext:
        ctx = context_from_claims(claims, roles_claim=self.config.roles_claim)
        check_scopes(
            ctx.scopes, self._encrypted
        )  # a narrowed scope it cannot enforce: 403, not a wider grant
        return ctx
