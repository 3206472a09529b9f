"""Verified token claims → RequestContext: roles, SMART scopes, launch context, purpose of use, fhirUser.

Only called after the signature and the registered claims were checked (auth/verifier.py). Lenient
where ignoring a value can only narrow access (an unreadable purpose of use or role is dropped, so
the caller gets the least its role allows), strict where ignoring it would widen access: a
`patient` launch context that is present but not a plain id is refused, because without it
patient-level scopes would no longer be confined to one patient.

Claim sources (SMART App Launch 2.0 and IHE IUA):
- roles: `roles` (list, or space-separated string) plus a configured claim, which may be a dotted
  path such as `realm_access.roles` (Keycloak);
- scopes: `scope` (space-separated, RFC 8693/SMART) or `scp` (list or string, some IdPs);
- patient: `patient` (a Patient id; `Patient/123` is accepted and reduced to `123`);
- purpose of use: `purpose_of_use`, or IUA `extensions.ihe_iua.purpose_of_use`; each a code
  string or a Coding (`{"system": ..., "code": ...}`), alone or in a list;
- fhirUser: `fhirUser` (relative `Practitioner/1` or an absolute URL ending in Type/id), else `sub`
  when that is itself a FHIR reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Unauthorized

MAX_SUBJECT_LENGTH = 255
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
RELATIVE_REFERENCE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
FHIR_REFERENCE = re.compile(r"(?:https?://\S+/)?(?P<ref>[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})")
CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
ROLE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def context_from_claims(claims: dict[str, Any], *, roles_claim: str = "roles") -> RequestContext:
    """The request context of a caller whose token carried these (already verified) claims."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT_LENGTH:
        raise Unauthorized("The access token has no usable subject")
    jti = claims.get("jti")
    return RequestContext(
        subject=subject,
        roles=roles_of(claims, roles_claim),
        scopes=scopes_of(claims),
        patient=patient_of(claims),
        purpose_of_use=purposes_of(claims),
        fhir_user=fhir_user_of(claims),
        jti=jti if isinstance(jti, str) else None,
        claims=claims,
    )


def _dig(claims: dict[str, Any], path: str) -> Any:
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _words(value: Any) -> list[str]:
    """A claim that may be a space-separated string or a list of strings, as a list of strings."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def roles_of(claims: dict[str, Any], roles_claim: str = "roles") -> tuple[str, ...]:
    names = ["roles"] if roles_claim == "roles" else ["roles", roles_claim]
    found = [role for name in names for role in _words(_dig(claims, name))]
    return _unique(role for role in found if ROLE.fullmatch(role))


def scopes_of(claims: dict[str, Any]) -> tuple[str, ...]:
    return _unique([*_words(claims.get("scope")), *_words(claims.get("scp"))])


def patient_of(claims: dict[str, Any]) -> str | None:
    value = claims.get("patient")
    if value is None:
        return None
    if isinstance(value, str):
        pid = value.removeprefix("Patient/")
        if FHIR_ID.fullmatch(pid):
            return pid
    raise Unauthorized("The access token's patient launch context is not a Patient id")


def purposes_of(claims: dict[str, Any]) -> tuple[str, ...]:
    raw = claims.get("purpose_of_use")
    if raw is None:
        raw = _dig(claims, "extensions.ihe_iua.purpose_of_use")
    items = raw if isinstance(raw, list) else [raw]
    codes = []
    for item in items:
        code = item.get("code") if isinstance(item, dict) else item
        if isinstance(code, str) and CODE.fullmatch(code):
            codes.append(code)
    return _unique(codes)


def fhir_reference(value: Any) -> str | None:
    """`Type/id` from a relative reference or an absolute URL ending in one; None otherwise."""
    if not isinstance(value, str):
        return None
    match = FHIR_REFERENCE.fullmatch(value.split("/_history/")[0])
    return match["ref"] if match else None


def fhir_user_of(claims: dict[str, Any]) -> str | None:
    if "fhirUser" in claims:
        return fhir_reference(claims["fhirUser"])
    subject = claims.get("sub")
    return subject if isinstance(subject, str) and RELATIVE_REFERENCE.fullmatch(subject) else None
