"""The `$validate` operation (https://hl7.org/fhir/R4/resource-operation-validate.html).

    POST|GET [base]/[type]/$validate          the resource in the body (Parameters.resource or bare)
    POST|GET [base]/[type]/[id]/$validate     the body's resource, else the stored one

Parameters: `resource`, `mode` (create | update | delete | profile) and `profile` (a canonical URL),
in a Parameters body or, for GET, the query string. The answer is always an OperationOutcome with
status 200, valid or not, as the operation defines; only a request that cannot be understood
(unknown type, bad JSON, missing resource) is a 4xx. `mode=delete` checks that the resource exists.

Profiles resolve to StructureDefinitions stored on this server (searched by `url`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from fhir_gateway.api.negotiation import read_json_body
from fhir_gateway.api.responses import FhirResponse, FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import BadRequest, Issue, operation_outcome
from fhir_gateway.fhir.requests import check_id, check_type
from fhir_gateway.gateway import Gateway
from fhir_gateway.validation import extensions
from fhir_gateway.validation.loader import STRUCTURE_URL
from fhir_gateway.validation.validator import MODES, is_valid, validate

ALL_OK = "All OK"
MAX_DEFINITION_LOOKUPS = 32  # stored StructureDefinitions searched per $validate (profiles, extensions)


def build_validate_router(runtime: Runtime, prefix: str = "/fhir") -> APIRouter:
    router = APIRouter(prefix=prefix, route_class=FhirRoute)
    settings = runtime.settings

    async def run(request: Request, res_type: str, res_id: str | None) -> Response:
        check_type(res_type, runtime.gateway.types)
        if res_id is not None:
            check_id(res_id)
        params = await _parameters(request, settings.max_body_bytes)
        mode = _one(params, "mode")
        if mode is not None and mode not in MODES:
            raise BadRequest(
                "mode must be one of create, update, delete, profile", expression="mode", code="value"
            )
        ctx = runtime.context(request)
        gateway = await runtime.ready_gateway()
        if mode == "delete":
            if res_id is None:
                raise BadRequest("mode=delete needs a resource id", code="required")
            await gateway.read(res_type, res_id, ctx)  # 404 / 410 when there is nothing to delete
            return _answer([])
        resource = params.get("resource")
        if resource is None and res_id is not None:
            resource = (await gateway.read(res_type, res_id, ctx)).resource()
        if resource is None:
            raise BadRequest("No resource to validate: send it in the body", code="required")
        if isinstance(resource, dict) and resource.get("resourceType") not in (res_type, None):
            issue = Issue("error", "invalid", f"The resource is not a {res_type}", [res_type])
            return _answer([issue])
        if res_id is not None and isinstance(resource, dict) and resource.get("id") not in (res_id, None):
            issue = Issue(
                "error", "invalid", "The resource id does not match the id in the URL", [f"{res_type}.id"]
            )
            return _answer([issue])
        profiles = [p for p in params.get("profile", []) if isinstance(p, str)]
        definitions = await _structure_definitions(gateway, ctx, resource, profiles)
        return _answer(validate(resource, mode=mode, profile=profiles, structure_definitions=definitions))

    @router.post("/{res_type}/$validate")
    @router.get("/{res_type}/$validate")
    async def validate_type(request: Request, res_type: str) -> Response:
        return await run(request, res_type, None)

    @router.post("/{res_type}/{res_id}/$validate")
    @router.get("/{res_type}/{res_id}/$validate")
    async def validate_instance(request: Request, res_type: str, res_id: str) -> Response:
        return await run(request, res_type, res_id)

    return router


def _answer(issues: list[Issue]) -> Response:
    if is_valid(issues) and not any(i.severity == "warning" for i in issues):
        issues = [Issue("information", "informational", ALL_OK), *issues]
    return FhirResponse(operation_outcome(issues), 200)


def _one(params: dict[str, Any], name: str) -> str | None:
    values = params.get(name) or []
    return values[0] if values and isinstance(values[0], str) else None


async def _parameters(request: Request, max_bytes: int) -> dict[str, Any]:
    """{"resource": resource | None, "mode": [..], "profile": [..]} from the query and the body."""
    params: dict[str, Any] = {
        "mode": request.query_params.getlist("mode"),
        "profile": request.query_params.getlist("profile"),
        "resource": None,
    }
    if request.method != "POST":
        return params
    body = await read_json_body(request, max_bytes)
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for parameter in body.get("parameter") or []:
            if not isinstance(parameter, dict):
                continue
            name = parameter.get("name")
            if name == "resource":
                params["resource"] = parameter.get("resource")
            elif name in ("mode", "profile"):
                value = (
                    parameter.get("valueCode") or parameter.get("valueUri") or parameter.get("valueCanonical")
                )
                value = value or parameter.get("valueString")
                params[name] = [*params[name], value]
        if params["resource"] is None and not any(
            isinstance(p, dict) and p.get("name") in ("mode", "profile") for p in body.get("parameter") or []
        ):
            params["resource"] = body  # a Parameters resource being validated itself
    else:
        params["resource"] = body
    return params


async def _structure_definitions(
    gateway: Gateway, ctx: RequestContext, resource: Any, profiles: list[str]
) -> dict[str, dict[str, Any]]:
    """The stored StructureDefinitions for the requested profiles, the resource's meta.profile and the
    extensions it uses that are not core R4 (an extension whose definition is stored is known).

    At most MAX_DEFINITION_LOOKUPS searches, profiles first: a resource naming thousands of made-up
    extensions costs that many searches, not thousands (the rest are reported as unknown)."""
    wanted = list(profiles)
    meta = resource.get("meta") if isinstance(resource, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("profile"), list):
        wanted += [p for p in meta["profile"] if isinstance(p, str)]
    wanted += extensions.unresolved_urls(resource)
    urls = [u for u in dict.fromkeys(p.split("|")[0] for p in wanted) if not u.startswith(STRUCTURE_URL)]
    found: dict[str, dict[str, Any]] = {}
    for url in urls[:MAX_DEFINITION_LOOKUPS]:
        bundle = await gateway.search("StructureDefinition", [("url", url)], ctx)
        for entry in bundle.get("entry") or []:
            sd = entry.get("resource")
            if isinstance(sd, dict) and sd.get("url") == url:
                found[url] = sd
                break
    return found
