"""Development tokens (HS256 with the configured signing key) and their verification.

The server accepts these only where the signing key is configured; production refuses to start with
the development key (settings.py), so a token minted with it is never honoured there. JWKS/RS256 for
real identity providers plugs in here with the access-control work.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import jwt

from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Unauthorized
from fhir_gateway.settings import Settings

ALGORITHM = "HS256"
CLOCK_SKEW_SECONDS = 30


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
    now = int(time.time())
    if fhir_user is None and "/" in sub:
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
    """Verify signature, issuer, audience, expiry and subject; any failure is a 401 without detail leaks."""
    try:
        claims = jwt.decode(
            token,
            settings.security.signing_key.get_secret_value(),
            algorithms=[ALGORITHM],
            audience=settings.security.audience,
            issuer=settings.security.issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The access token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"The access token is not valid ({type(exc).__name__})") from None
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise Unauthorized("The access token has no subject")
    purpose = claims.get("purpose_of_use", ())
    return RequestContext(
        subject=claims["sub"],
        roles=tuple(str(r) for r in claims.get("roles", ()) if isinstance(r, str)),
        scopes=tuple(str(claims.get("scope", "")).split()),
        patient=claims.get("patient"),
        purpose_of_use=(purpose,) if isinstance(purpose, str) else tuple(purpose),
        fhir_user=claims.get("fhirUser"),
        jti=claims.get("jti"),
        claims=claims,
    )
