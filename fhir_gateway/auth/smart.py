"""`GET [base]/.well-known/smart-configuration` (SMART App Launch 2.0, conformance.html).

The gateway is a resource server: the authorization and token endpoints belong to the identity
provider and are published only when configured (`security.authorization_endpoint`,
`security.token_endpoint`). `jwks_uri` is published only for an http(s) key set — a `file://` path
means nothing to a client. Capabilities claim only what the gateway itself enforces (scopes v1 and
v2, patient/user/system permissions, patient launch context) plus, when an authorization endpoint is
configured, the launch and client kinds listed in `security.smart_capabilities` (defaults below).

Mount this router BEFORE the FHIR REST router: `/.well-known/...` would otherwise be taken for a
`[type]/[id]` read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.settings import Settings

# What the gateway enforces itself, whoever issues the tokens.
RESOURCE_SERVER_CAPABILITIES = (
    "permission-v1",
    "permission-v2",
    "permission-patient",
    "permission-user",
    "context-standalone-patient",
    "context-ehr-patient",
)
# What an IdP in front of the gateway usually offers; overridable with security.smart_capabilities.
AUTHORIZATION_SERVER_CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "permission-offline",
)
SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "system/*.rs",
    "system/*.cruds",
    "patient/*.read",
    "user/*.read",
    "user/*.write",
    "system/*.read",
    "system/*.write",
)


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """The SMART configuration document for these settings."""
    sec = settings.security
    authorize = getattr(sec, "authorization_endpoint", None)
    token = getattr(sec, "token_endpoint", None)
    doc: dict[str, Any] = {"issuer": sec.issuer}
    if sec.jwks_url and sec.jwks_url.startswith(("https://", "http://")):
        doc["jwks_uri"] = sec.jwks_url
    if authorize:
        doc["authorization_endpoint"] = authorize
    if token:
        doc["token_endpoint"] = token
        doc["token_endpoint_auth_methods_supported"] = [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ]
    grants = (["authorization_code"] if authorize else []) + (["client_credentials"] if token else [])
    doc["grant_types_supported"] = grants
    doc["response_types_supported"] = ["code"] if authorize else []
    doc["scopes_supported"] = list(SCOPES_SUPPORTED)
    doc["code_challenge_methods_supported"] = ["S256"]  # never "plain" (App Launch 2.0)
    capabilities = list(RESOURCE_SERVER_CAPABILITIES)
    if authorize:
        configured = getattr(sec, "smart_capabilities", None)
        capabilities += list(configured if configured is not None else AUTHORIZATION_SERVER_CAPABILITIES)
    doc["capabilities"] = list(dict.fromkeys(capabilities))
    return doc


def build_smart_router(runtime: Runtime, prefix: str = "/fhir") -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["SMART"])
    document = smart_configuration(runtime.settings)  # settings are frozen: build once

    @router.get("/.well-known/smart-configuration")
    async def smart_config() -> JSONResponse:
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})

    return router
