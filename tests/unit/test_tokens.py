"""Development tokens: the claims the contract promises, and verification that rejects forgeries."""

from __future__ import annotations

import jwt
import pytest

from fhir_gateway.auth.tokens import context_from_token, mint_token
from fhir_gateway.errors import Unauthorized
from fhir_gateway.settings import load_settings

SETTINGS = load_settings(None, environ={})


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


def test_explicit_fhir_user_and_plain_sub() -> None:
    ctx = context_from_token(SETTINGS, mint_token(SETTINGS, sub="alice", fhir_user="Practitioner/9"))
    assert ctx.fhir_user == "Practitioner/9"
    assert context_from_token(SETTINGS, mint_token(SETTINGS, sub="alice")).fhir_user is None


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(
            {"sub": "x", "iss": "fhir-gateway", "aud": "fhir-gateway", "exp": 9999999999},
            "wrong-key-" * 4,
            algorithm="HS256",
        ),
        jwt.encode(
            {"sub": "x", "iss": "fhir-gateway", "aud": "fhir-gateway", "exp": 9999999999},
            None,
            algorithm="none",
        ),
        "garbage",
    ],
)
def test_forged_or_unsigned_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        context_from_token(SETTINGS, token)


def test_wrong_audience_missing_sub_and_expired() -> None:
    key = SETTINGS.security.signing_key.get_secret_value()
    wrong_aud = jwt.encode(
        {"sub": "x", "iss": "fhir-gateway", "aud": "other", "exp": 9999999999}, key, algorithm="HS256"
    )
    no_sub = jwt.encode(
        {"iss": "fhir-gateway", "aud": "fhir-gateway", "exp": 9999999999}, key, algorithm="HS256"
    )
    empty_sub = jwt.encode(
        {"sub": "", "iss": "fhir-gateway", "aud": "fhir-gateway", "exp": 9999999999}, key, algorithm="HS256"
    )
    for token in (wrong_aud, no_sub, empty_sub, mint_token(SETTINGS, sub="x", minutes=-10)):
        with pytest.raises(Unauthorized):
            context_from_token(SETTINGS, token)
