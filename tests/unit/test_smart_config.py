"""`GET /fhir/.well-known/smart-configuration` served by the SMART router on a real app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.auth.smart import build_smart_router, smart_configuration
from fhir_gateway.settings import load_settings


async def get_config(runtime: Runtime, path: str = "/fhir/.well-known/smart-configuration") -> httpx.Response:
    app = FastAPI()
    app.include_router(build_smart_router(runtime))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers={"Accept": "application/json"})


async def test_served_without_a_token(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        environ={},
        overrides={
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/x.db",
            "security": {"issuer": "https://idp.example.org", "jwks_url": "https://idp.example.org/jwks"},
        },
    )
    response = await get_config(Runtime(settings))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = response.json()
    assert doc["issuer"] == "https://idp.example.org"
    assert doc["jwks_uri"] == "https://idp.example.org/jwks"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "plain" not in doc["code_challenge_methods_supported"]
    assert {"permission-v1", "permission-v2", "permission-patient"} <= set(doc["capabilities"])
    assert "patient/*.rs" in doc["scopes_supported"]
    assert "token_endpoint" not in doc  # the IdP's, and none is configured
    assert "launch-standalone" not in doc["capabilities"]


def test_file_key_sets_are_not_published() -> None:
    settings = load_settings(None, environ={}, overrides={"security": {"jwks_url": "file:///etc/jwks.json"}})
    doc = smart_configuration(settings)
    assert "jwks_uri" not in doc
    assert doc["grant_types_supported"] == []


def test_endpoints_when_configured() -> None:
    class Sec:  # Settings does not hold the endpoint fields yet; the document reads them when present
        issuer = "https://idp"
        jwks_url = None
        authorization_endpoint = "https://idp/authorize"
        token_endpoint = "https://idp/token"
        smart_capabilities = ("launch-standalone", "client-public")

    class FakeSettings:
        security = Sec()

    doc = smart_configuration(FakeSettings())  # type: ignore[arg-type]
    assert doc["authorization_endpoint"] == "https://idp/authorize"
    assert doc["token_endpoint"] == "https://idp/token"
    assert doc["grant_types_supported"] == ["authorization_code", "client_credentials"]
    assert doc["response_types_supported"] == ["code"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert doc["capabilities"][-2:] == ["launch-standalone", "client-public"]
    Sec.smart_capabilities = None  # type: ignore[assignment]
    assert "sso-openid-connect" in smart_configuration(FakeSettings())["capabilities"]  # type: ignore[arg-type]
