"""Development tokens and the JWT attack table: every forgery is a 401 that does not echo the token."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import jwt
import pytest

from fhir_gateway.auth.claims import context_from_claims, fhir_reference
from fhir_gateway.auth.tokens import MintRefused, context_from_token, mint_token
from fhir_gateway.auth.verifier import TokenVerifier
from fhir_gateway.errors import Unauthorized
from fhir_gateway.settings import load_settings

SETTINGS = load_settings(None, environ={})
KEY = SETTINGS.security.signing_key.get_secret_value()
PRODUCTION = load_settings(
    None,
    environ={},
    overrides={
        "environment": "production",
        "security": {
            "signing_key": "a-real-production-secret-of-some-length",
            "encryption_key": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
        },
    },
)


def claims(**over: Any) -> dict[str, Any]:
    # a day's lifetime: the attack table below is built when the module is collected, and each row
    # must fail for its own reason, not for having expired while a slow suite ran up to it
    now = int(time.time())
    base = {"iss": "fhir-gateway", "aud": "fhir-gateway", "sub": "alice", "exp": now + 86400, "iat": now}
    return {k: v for k, v in {**base, **over}.items() if v is not None}


def hs256(**over: Any) -> str:
    return jwt.encode(claims(**over), KEY, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def test_minted_token_carries_the_contract_claims() -> None:
    token = mint_token(
        SETTINGS,
        sub="Practitioner/123",
        roles=["clinician", "nurse"],
        scope="user/*.rs",
        patient="p1",
        purpose=["TREAT"],
        minutes=5,
    )
    ctx = context_from_token(SETTINGS, token)
    assert ctx.subject == "Practitioner/123"
    assert ctx.fhir_user == "Practitioner/123"  # a FHIR-reference sub is the fhirUser
    assert ctx.roles == ("clinician", "nurse")
    assert ctx.scopes == ("user/*.rs",)
    assert ctx.patient == "p1"
    assert ctx.purpose_of_use == ("TREAT",)
    assert ctx.jti
    assert ctx.claims["exp"] - ctx.claims["iat"] == 300


def test_explicit_fhir_user_and_plain_sub() -> None:
    ctx = context_from_token(SETTINGS, mint_token(SETTINGS, sub="alice", fhir_user="Practitioner/9"))
    assert ctx.fhir_user == "Practitioner/9"
    assert context_from_token(SETTINGS, mint_token(SETTINGS, sub="alice")).fhir_user is None
    default_life = context_from_token(SETTINGS, mint_token(SETTINGS, sub="alice")).claims
    assert default_life["exp"] - default_life["iat"] == 60 * SETTINGS.security.token_minutes


def test_minting_is_refused_in_production() -> None:
    with pytest.raises(MintRefused, match="identity provider"):
        mint_token(PRODUCTION, sub="alice")


def hmac_signed(payload: bytes) -> str:
    """A correctly HS256-signed token over an arbitrary payload (PyJWT will not make odd ones)."""
    import hashlib
    import hmac

    signing_input = f"{b64(json.dumps({'alg': 'HS256'}).encode())}.{b64(payload)}"
    signature = hmac.new(KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


NOW = int(time.time())
ATTACKS: list[tuple[str, str, str]] = [
    ("garbage", "garbage", "not a valid JWT"),
    ("empty", "", "not a valid JWT"),
    ("two segments", "e30.e30", "not a valid JWT"),
    ("alg none", jwt.encode(claims(), None, algorithm="none"), "algorithm"),
    ("alg None spelled oddly", unsigned({"alg": "None"}, claims()), "algorithm"),
    ("alg missing", unsigned({"typ": "JWT"}, claims()), "algorithm"),
    ("HS512 (an HMAC variant never accepted)", jwt.encode(claims(), KEY * 2, algorithm="HS512"), "algorithm"),
    ("wrong key", jwt.encode(claims(), "wrong-key-" * 4, algorithm="HS256"), "signature"),
    ("tampered payload", hs256()[:-4] + "AAAA", "signature"),
    ("signature stripped", hs256().rsplit(".", 1)[0] + ".", "signature"),
    ("expired", hs256(exp=NOW - 120), "expired"),
    ("not yet valid", hs256(nbf=NOW + 36000), "not yet valid"),
    ("issued in the future", hs256(iat=NOW + 36000), "not yet valid"),
    ("wrong audience", hs256(aud="another-api"), "audience"),
    ("no audience", hs256(aud=None), "required claim"),
    ("wrong issuer", hs256(iss="https://evil.example"), "issuer"),
    ("no issuer", hs256(iss=None), "required claim"),
    ("no expiry", hs256(exp=None), "required claim"),
    ("no subject", hs256(sub=None), "required claim"),
    ("empty subject", hs256(sub=""), "subject"),
    ("blank subject", hs256(sub="   "), "subject"),
    ("non-string subject", unsigned({"alg": "HS256"}, claims(sub=42)), "signature|not valid"),
    ("huge subject", hs256(sub="x" * 300), "subject"),
    ("signed payload that is not JSON", hmac_signed(b"not json"), "not valid"),
    ("signed non-string subject", hmac_signed(json.dumps(claims(sub=42)).encode()), "not valid"),
    ("patient context that is not an id", hs256(patient="Patient/1 OR 1=1"), "patient"),
    ("patient context that is a list", hs256(patient=["1", "2"]), "patient"),
    ("RS256 with no key set configured", unsigned({"alg": "RS256", "kid": "k"}, claims()), "key set"),
]


@pytest.mark.parametrize(("name", "token", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_table(name: str, token: str, reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        context_from_token(SETTINGS, token)
    error = caught.value
    assert error.status == 401
    assert error.outcome()["issue"][0]["code"] == "login"
    assert re.search(reason, error.diagnostics), error.diagnostics
    if token:
        assert token not in error.diagnostics
        for part in token.split("."):
            assert not part or part not in error.diagnostics


def test_clock_skew_tolerates_a_minute() -> None:
    now = int(time.time())  # not the import-time NOW: a long test session would age it past the skew
    assert context_from_token(SETTINGS, hs256(exp=now - 30)).subject == "alice"
    assert context_from_token(SETTINGS, hs256(nbf=now + 30)).subject == "alice"


def test_production_refuses_hs256_tokens_even_when_correctly_signed() -> None:
    secret = PRODUCTION.security.signing_key.get_secret_value()
    token = jwt.encode(claims(), secret, algorithm="HS256")
    with pytest.raises(Unauthorized, match="algorithm"):
        TokenVerifier(PRODUCTION).verify(token)


async def test_async_path_accepts_hs256_in_development() -> None:
    verifier, token = TokenVerifier(SETTINGS), hs256(roles=["nurse"])
    assert (await verifier.verify_async(token)).roles == ("nurse",)
    assert (await verifier.verify_async(token)).roles == ("nurse",)  # remembered


def test_claims_to_context_mapping() -> None:
    ctx = context_from_claims(
        {
            "sub": "u1",
            "roles": "clinician nurse clinician",
            "realm_access": {"roles": ["researcher", "bad role!"]},
            "scope": "openid fhirUser patient/*.rs",
            "scp": ["user/Observation.r"],
            "patient": "Patient/p-9",
            "purpose_of_use": [
                "TREAT",
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"},
                "no spaces allowed",
                7,
            ],
            "fhirUser": "https://ehr.example.org/fhir/Practitioner/abc/_history/2",
            "jti": "j-1",
        },
        roles_claim="realm_access.roles",
    )
    assert ctx.roles == ("clinician", "nurse", "researcher")
    assert ctx.scopes == ("openid", "fhirUser", "patient/*.rs", "user/Observation.r")
    assert ctx.patient == "p-9"
    assert ctx.purpose_of_use == ("TREAT", "ETREAT")
    assert ctx.fhir_user == "Practitioner/abc"
    assert ctx.jti == "j-1"


def test_iua_purpose_of_use_and_odd_claim_shapes() -> None:
    ctx = context_from_claims(
        {
            "sub": "Device/feed-1",
            "roles": {"not": "a list"},
            "scope": 5,
            "extensions": {"ihe_iua": {"purpose_of_use": {"system": "x", "code": "HRESCH"}}},
            "jti": 99,
        }
    )
    assert ctx.roles == ()
    assert ctx.scopes == ()
    assert ctx.patient is None
    assert ctx.purpose_of_use == ("HRESCH",)
    assert ctx.fhir_user == "Device/feed-1"
    assert ctx.jti is None
    assert context_from_claims({"sub": "x", "purpose_of_use": "BTG"}).purpose_of_use == ("BTG",)
    assert context_from_claims({"sub": "x", "roles_claim_missing": 1}, roles_claim="a.b").roles == ()
    assert context_from_claims({"sub": "x", "a": "flat"}, roles_claim="a.b").roles == ()
    # an explicit but unusable fhirUser is dropped rather than replaced by sub
    assert context_from_claims({"sub": "Practitioner/1", "fhirUser": "nonsense"}).fhir_user is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Practitioner/1", "Practitioner/1"),
        ("http://x.org/fhir/Patient/a.b-c", "Patient/a.b-c"),
        ("Practitioner/1/_history/3", "Practitioner/1"),
        ("practitioner/1", None),
        ("urn:uuid:1234", None),
        ("Practitioner/", None),
        (None, None),
    ],
)
def test_fhir_reference(value: Any, expected: str | None) -> None:
    assert fhir_reference(value) == expected


def test_a_remembered_token_gives_a_fresh_context_each_time() -> None:
    verifier = TokenVerifier(SETTINGS)
    token = hs256(roles=["nurse"])
    first = verifier.verify(token)
    first.request_id = "first-request"
    first.claims["roles"].append("admin")  # a stage scribbling on its context must not leak
    first.policy = object()  # type: ignore[assignment]  # a request's compiled policy is its own
    second = verifier.verify(token)
    third = verifier.verify(token)
    assert second is not first and third is not second
    assert second.request_id != "first-request" and second.request_id != third.request_id
    assert second.roles == ("nurse",) and second.claims["roles"] == ["nurse"]
    assert second.policy is None and second.subject == first.subject


def test_a_remembered_token_still_expires() -> None:
    start = int(time.time())
    now = [float(start)]
    verifier = TokenVerifier(SETTINGS, clock=lambda: now[0])
    token = hs256(exp=start + 300)
    assert verifier.verify(token).subject == "alice"
    now[0] = start + 300 + 61  # past exp and the minute of leeway
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


def test_the_token_memory_forgets_after_its_window() -> None:
    from types import SimpleNamespace

    settings = SimpleNamespace(
        environment="development",
        security=SimpleNamespace(**{**dict(SETTINGS.security), "token_cache_seconds": 0.001}),
    )
    verifier = TokenVerifier(settings)  # type: ignore[arg-type]
    token = hs256()
    verifier.verify(token)
    time.sleep(0.01)
    assert verifier.verify(token).subject == "alice"  # verified again from scratch
    assert list(verifier._verified) == [token]


def test_time_claims_must_be_numbers() -> None:
    for bad in ({"exp": "tomorrow"}, {"nbf": True}, {"iat": [1]}):
        with pytest.raises(Unauthorized, match="not a number"):
            context_from_token(SETTINGS, hs256(**bad))


def test_the_token_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import fhir_gateway.auth.verifier as verifier_module

    monkeypatch.setattr(verifier_module, "MAX_REMEMBERED_TOKENS", 2)
    verifier = TokenVerifier(SETTINGS)
    tokens = [hs256(jti=str(i)) for i in range(3)]
    for token in tokens:
        verifier.verify(token)
    assert list(verifier._verified) == tokens[1:]
