"""RS256/ES256 tokens verified against a real JWK Set file (and HTTP server): kid choice and key rotation."""

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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhir_gateway.auth.jwks import Jwk, JwksCache, JwksError, parse_jwks, read_jwks_url
from fhir_gateway.auth.verifier import TokenVerifier
from fhir_gateway.errors import Unauthorized
from fhir_gateway.settings import Settings, load_settings

ISS = "https://idp.example.org"
AUD = "fhir-gateway"
RSA_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_A = ec.generate_private_key(ec.SECP256R1())
EC_384 = ec.generate_private_key(ec.SECP384R1())


def jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    data: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return {**data, **extra}


def write_jwks(path: Path, *keys: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(keys)}))


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "Practitioner/7", "exp": now + 300, "iat": now, **over}


def sign(key: Any, alg: str, kid: str | None, **over: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)


def settings_for(url: str, environment: str = "production", **security: Any) -> Settings:
    sec = {"issuer": ISS, "jwks_url": url, **security}
    overrides: dict[str, Any] = {"environment": environment, "security": sec}
    if environment == "production":
        sec.update(signing_key="x" * 40, encryption_key="QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=")
    return load_settings(None, environ={}, overrides=overrides)


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(RSA_A, "rsa-a"), jwk(EC_A, "ec-a"))
    return path


def test_rs256_and_es256_tokens_verify_by_kid(jwks_file: Path) -> None:
    verifier = TokenVerifier(settings_for(jwks_file.as_uri()))
    rsa_ctx = verifier.verify(sign(RSA_A, "RS256", "rsa-a", roles=["clinician"], scope="user/*.rs"))
    assert rsa_ctx.subject == "Practitioner/7"
    assert rsa_ctx.fhir_user == "Practitioner/7"
    assert rsa_ctx.roles == ("clinician",)
    assert rsa_ctx.scopes == ("user/*.rs",)
    assert verifier.verify(sign(EC_A, "ES256", "ec-a")).subject == "Practitioner/7"


async def test_async_verification_fetches_off_the_loop(jwks_file: Path) -> None:
    verifier = TokenVerifier(settings_for(jwks_file.as_uri()))
    ctx = await verifier.verify_async(sign(EC_A, "ES256", "ec-a"))
    assert ctx.subject == "Practitioner/7"
    with pytest.raises(Unauthorized):
        await verifier.verify_async(sign(RSA_B, "RS256", "rsa-b"))


def test_key_rotation_is_picked_up_on_an_unknown_kid(jwks_file: Path) -> None:
    url = jwks_file.as_uri()
    verifier = TokenVerifier(settings_for(url), jwks=JwksCache(url, min_interval=0))
    verifier.verify(sign(RSA_A, "RS256", "rsa-a"))
    with pytest.raises(Unauthorized):  # not published yet
        verifier.verify(sign(RSA_B, "RS256", "rsa-b"))
    write_jwks(jwks_file, jwk(RSA_B, "rsa-b"))  # the IdP rotates: a new key, the old one retired
    assert verifier.verify(sign(RSA_B, "RS256", "rsa-b")).subject == "Practitioner/7"
    with pytest.raises(Unauthorized):  # a new token signed with the retired key
        verifier.verify(sign(RSA_A, "RS256", "rsa-a", jti="new"))


def test_refetch_on_unknown_kid_is_rate_limited(jwks_file: Path) -> None:
    now = [1000.0]
    cache = JwksCache(jwks_file.as_uri(), min_interval=30, max_age=3600, clock=lambda: now[0])
    assert cache.key("rsa-a", "RS256") is not None
    assert cache.fetches == 1
    for _ in range(50):  # an attacker's made-up kids
        assert cache.key("nope", "RS256") is None
    assert cache.fetches == 1
    now[0] += 31
    assert cache.key("nope", "RS256") is None
    assert cache.fetches == 2
    assert cache.key("rsa-a", "RS256") is not None  # known kid: served from the cache
    assert cache.fetches == 2
    now[0] += 3600  # stale: refreshed even for a known kid
    assert cache.key("rsa-a", "RS256") is not None
    assert cache.fetches == 3


def test_a_failed_refetch_keeps_the_known_keys(jwks_file: Path) -> None:
    now = [0.0]
    cache = JwksCache(jwks_file.as_uri(), min_interval=1, max_age=10, clock=lambda: now[0])
    assert cache.key("ec-a", "ES256") is not None
    jwks_file.write_text("not json")
    now[0] += 20
    assert cache.key("ec-a", "ES256") is not None
    jwks_file.unlink()
    now[0] += 20
    assert cache.key("ec-a", "ES256") is not None
    with pytest.raises(JwksError, match="cannot read"):
        cache.refresh()


def test_token_without_kid_uses_the_only_fitting_key(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    write_jwks(path, jwk(RSA_A, None))
    verifier = TokenVerifier(settings_for(path.as_uri()))
    assert verifier.verify(sign(RSA_A, "RS256", None)).subject == "Practitioner/7"
    write_jwks(path, jwk(RSA_A, None), jwk(RSA_B, None))
    ambiguous = TokenVerifier(settings_for(path.as_uri()))
    with pytest.raises(Unauthorized, match="key this server does not know"):
        ambiguous.verify(sign(RSA_A, "RS256", None))


@pytest.mark.parametrize(
    ("name", "make_token"),
    [
        ("wrong key under a known kid", lambda: sign(RSA_B, "RS256", "rsa-a")),
        ("EC token naming the RSA kid", lambda: sign(EC_A, "ES256", "rsa-a")),
        ("RS256 token naming the EC kid", lambda: sign(RSA_A, "RS256", "ec-a")),
        ("unknown kid", lambda: sign(RSA_B, "RS256", "who")),
        (
            "alg confusion: HS256 keyed with the RSA public key",
            lambda: _hs256_with_public_pem(RSA_A, "rsa-a"),
        ),
        ("alg none", lambda: jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-a"})),
        ("RS512 not in the accepted list", lambda: sign(RSA_A, "RS512", "rsa-a")),
        ("expired", lambda: sign(RSA_A, "RS256", "rsa-a", exp=int(time.time()) - 120)),
        ("wrong issuer", lambda: sign(RSA_A, "RS256", "rsa-a", iss="https://evil.example")),
        ("wrong audience", lambda: sign(RSA_A, "RS256", "rsa-a", aud="another-api")),
        ("non-string kid", lambda: _forge({"alg": "RS256", "kid": 5}, b"sig")),
        ("header not JSON", lambda: "e30K.e30K.e30K"),
        ("oversized", lambda: sign(RSA_A, "RS256", "rsa-a", pad="x" * 20000)),
    ],
)
def test_jwks_attacks_are_refused_in_production(jwks_file: Path, name: str, make_token: Any) -> None:
    verifier = TokenVerifier(settings_for(jwks_file.as_uri()))
    token = make_token()
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    assert caught.value.status == 401
    assert token not in caught.value.diagnostics


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], signature: bytes) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims()).encode())}.{_b64(signature)}"


def _hs256_with_public_pem(private: Any, kid: str) -> str:
    """Forge a token "signed" with the public key as an HMAC secret (PyJWT refuses PEM keys, so by hand)."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims()).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def test_alg_confusion_also_fails_in_development_where_hs256_is_accepted(jwks_file: Path) -> None:
    verifier = TokenVerifier(settings_for(jwks_file.as_uri(), environment="development"))
    with pytest.raises(Unauthorized, match="signature"):
        verifier.verify(_hs256_with_public_pem(RSA_A, "rsa-a"))


def test_production_refuses_hs256_even_with_the_right_secret(jwks_file: Path) -> None:
    settings = settings_for(jwks_file.as_uri())
    secret = settings.security.signing_key.get_secret_value()
    token = jwt.encode(claims(), secret, algorithm="HS256")
    with pytest.raises(Unauthorized, match="algorithm"):
        TokenVerifier(settings).verify(token)


def test_no_key_set_configured_refuses_asymmetric_tokens() -> None:
    verifier = TokenVerifier(load_settings(None, environ={}))
    with pytest.raises(Unauthorized, match="no(ne)? .*configured"):
        verifier.verify(sign(RSA_A, "RS256", "rsa-a", iss="fhir-gateway"))


def test_parse_jwks_takes_only_public_signing_keys() -> None:
    private_member = {**jwk(RSA_A, "with-d"), "d": "AAAA"}  # private part is dropped, key still public
    keys = parse_jwks(
        {
            "keys": [
                jwk(RSA_A, "ok", use="sig", alg="RS256"),
                jwk(RSA_B, "enc", use="enc"),
                {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"},
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
                "not a key",
                private_member,
                jwk(EC_384, "p384"),
            ]
        }
    )
    assert [k.kid for k in keys] == ["ok", "with-d", "p384"]
    assert all(not hasattr(k.key, "private_numbers") for k in keys)
    pinned, _, p384 = keys
    assert pinned.verifies("RS256") and not pinned.verifies("RS384") and not pinned.verifies("ES256")
    assert p384.verifies("ES384") and not p384.verifies("ES256")
    with pytest.raises(JwksError):
        parse_jwks({"no": "keys"})


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1, 2", "not JSON"), ('{"keys": 3}', "not a JWK Set"), (" " * (1024 * 1024 + 5), "larger")],
)
def test_bad_key_set_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(JwksError, match=message):
        read_jwks_url(path.as_uri())


def test_unsupported_url_scheme() -> None:
    with pytest.raises(JwksError, match="must be"):
        read_jwks_url("ftp://idp.example/jwks")


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"status": 200, "body": {"keys": [jwk(EC_A, "ec-a")]}, "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state["hits"] += 1
            body = json.dumps(state["body"]).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks", state
    finally:
        server.shutdown()
        server.server_close()


async def test_key_set_over_http_with_rotation(jwks_server: tuple[str, dict[str, Any]]) -> None:
    url, state = jwks_server
    verifier = TokenVerifier(settings_for(url), jwks=JwksCache(url, min_interval=0))
    assert (await verifier.verify_async(sign(EC_A, "ES256", "ec-a"))).subject == "Practitioner/7"
    state["body"] = {"keys": [jwk(EC_A, "ec-a"), jwk(RSA_B, "rsa-b")]}
    assert verifier.verify(sign(RSA_B, "RS256", "rsa-b")).subject == "Practitioner/7"
    assert state["hits"] == 2


def test_http_errors_are_key_set_errors(jwks_server: tuple[str, dict[str, Any]]) -> None:
    url, state = jwks_server
    state["status"] = 500
    with pytest.raises(JwksError, match="HTTP 500"):
        read_jwks_url(url)
    with pytest.raises(JwksError, match="cannot fetch"):
        read_jwks_url("http://127.0.0.1:9/jwks", timeout=0.5)


def test_unknown_configured_algorithm_fails_fast(jwks_file: Path) -> None:
    from fhir_gateway.auth.verifier import AuthConfig

    class Sec:
        issuer, audience, jwks_url, algorithms = ISS, AUD, None, ("HS512",)
        signing_key = load_settings(None, environ={}).security.signing_key

    class FakeSettings:  # Settings does not have `algorithms` yet; AuthConfig reads it when present
        environment = "production"
        security = Sec()

    with pytest.raises(ValueError, match="HS512"):
        AuthConfig.from_settings(FakeSettings())  # type: ignore[arg-type]


def test_jwk_dataclass_is_frozen() -> None:
    key = parse_jwks({"keys": [jwk(RSA_A, "a")]})[0]
    assert isinstance(key, Jwk)
    with pytest.raises(AttributeError):
        key.kid = "b"  # type: ignore[misc]


def with_security(settings: Settings, **extra: Any) -> Any:
    """Settings with security fields the model does not have yet (AuthConfig reads them when present)."""
    from types import SimpleNamespace

    security = SimpleNamespace(**{**dict(settings.security), **extra})
    return SimpleNamespace(environment=settings.environment, security=security)


def test_a_withdrawn_key_is_honoured_only_within_the_token_memory(jwks_file: Path) -> None:
    url = jwks_file.as_uri()
    token = sign(RSA_A, "RS256", "rsa-a")
    # a key set that is refetched on every use, so only the token memory can keep rsa-a alive
    remembering = TokenVerifier(settings_for(url), jwks=JwksCache(url, min_interval=0, max_age=0))
    forgetting = TokenVerifier(
        with_security(settings_for(url), token_cache_seconds=0),
        jwks=JwksCache(url, min_interval=0, max_age=0),
    )
    for verifier in (remembering, forgetting):
        assert verifier.verify(token).subject == "Practitioner/7"
    write_jwks(jwks_file, jwk(RSA_B, "rsa-b"))  # rsa-a withdrawn
    assert remembering.verify(token).subject == "Practitioner/7"  # within token_cache_seconds
    with pytest.raises(Unauthorized):
        forgetting.verify(token)
