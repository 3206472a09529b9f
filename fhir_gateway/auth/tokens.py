"""Development tokens (`fhir-gateway token`) and the one-call verification used by scripts and tests.

`mint_token` signs HS256 with `security.signing_key`. It refuses in production, where tokens come
from the identity provider and are verified against its JWK Set; the verifier accepts HS256 only in
development or where `security.allow_hs256` is set (auth/verifier.py).

`context_from_token(settings, token)` builds a verifier per call, so it keeps no JWKS cache between
calls; a server holds one `TokenVerifier` instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import jwt

from fhir_gateway.auth.claims import RELATIVE_REFERENCE
from fhir_gateway.auth.verifier import HMAC_ALGORITHM, TokenVerifier
from fhir_gateway.context import RequestContext
from fhir_gateway.settings import Settings

ALGORITHM = HMAC_ALGORITHM


class MintRefused(ValueError):
    """Minting development tokens is not allowed in this environment."""


def mint_token(
    settings: Settings,
    *,
    sub: str,
    roles: Sequence[str] = (),
    scope: str = "",
    patient: str | None = None,
    purpose: Sequence[str] = (),
    fhir_user: str | None = None,
    minutes: int | None = None,
) -> str:
    """A signed token with the claims the interface contract promises (see `fhir-gateway token`)."""
    if settings.environment == "production":
        raise MintRefused("production tokens come from the identity provider; refusing to mint one")
    now = int(time.time())
    if fhir_user is None and RELATIVE_REFERENCE.fullmatch(sub):
        fhir_user = sub  # `--sub Practitioner/123` is a FHIR reference: it is the fhirUser too
    claims: dict[str, Any] = {
        "iss": settings.security.issuer,
        "aud": settings.security.audience,
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 60 * (minutes if minutes is not None else settings.security.token_minutes),
        "jti": uuid.uuid4().hex,
        "roles": list(roles),
        "scope": scope,
    }
    if patient:
        claims["patient"] = patient
    if purpose:
        claims["purpose_of_use"] = list(purpose)
    if fhir_user:
        claims["fhirUser"] = fhir_user
    return jwt.encode(claims, settings.security.signing_key.get_secret_value(), algorithm=ALGORITHM)


def context_from_token(settings: Settings, token: str) -> RequestContext:
    """Verify a token (any accepted algorithm) and return its context; failures are `Unauthorized`."""
    return TokenVerifier(settings).verify(token)
