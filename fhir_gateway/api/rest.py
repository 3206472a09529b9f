"""The FHIR R4 REST interactions (http.html), each a thin translation between HTTP and the Gateway.

Writes become a one-entry transaction Bundle handed to `Gateway.submit_entries` (the one write
path); reads call the Gateway's read path. No SQL and no access decisions here.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request, Response

from fhir_gateway.api.auditing import Note, note
from fhir_gateway.api.capability import capability_statement
from fhir_gateway.api.negotiation import Prefer, check_format, read_json_body
from fhir_gateway.api.responses import FHIR_JSON, FhirResponse, FhirRoute, http_date
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.events import Interaction
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import BadRequest, information
from fhir_gateway.fhir import elements as subsetting
from fhir_gateway.fhir.json import Resource, loads
from fhir_gateway.fhir.requests import check_id, check_type, parse_version
from fhir_gateway.store.store import StoredVersion
from fhir_gateway.transaction import EntryResult

RESULT_PARAMS = {"_format", "_pretty"}
WRITE_INTERACTIONS = {
    "POST": Interaction.CREATE,
    "PUT": Interaction.UPDATE,
    "PATCH": Interaction.PATCH,
    "DELETE": Interaction.DELETE,
}


def build_router(runtime: Runtime, prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, route_class=FhirRoute)
    settings = runtime.settings
    capability_cache: dict[tuple[str, bool], bytes] = {}

    def base_of(request: Request) -> str:
        return (
            settings.base_url.rstrip("/") if settings.base_url else str(request.base_url).rstrip("/") + prefix
        )

    def query_of(request: Request) -> list[tuple[str, str]]:
        return [(k, v) for k, v in request.query_params.multi_items() if k not in RESULT_PARAMS]

    def known_type(res_type: str) -> str:
        return check_type(res_type, runtime.gateway.types)

    async def submit_one(
        request: Request, method: str, url: str, body: Any = None, **req: str | None
    ) -> Response:
        taken = note(request, WRITE_INTERACTIONS[method], requested=url.partition("?")[0])
        pretty = check_format(request)
        ctx = runtime.context(request)
        gateway = await runtime.ready_gateway()
        entry: dict[str, Any] = {
            "request": {"method": method, "url": url, **{k: v for k, v in req.items() if v}}
        }
        if body is not None:
            entry["resource"] = body
        entries = [entry, *client_provenance(request, entry, method, url)]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        result, *_ = await gateway.submit_entries(bundle, ctx, single=True)
        if result.resource is not None:
            taken.returned([result.resource])
        return write_response(request, result, base_of(request), pretty)

    @router.get("/metadata")
    async def metadata(request: Request) -> Response:
        pretty = check_format(request)
        key = (base_of(request), pretty)
        if key not in capability_cache:  # serialised once per base: clients poll it often
            capability_cache[key] = bytes(FhirResponse(capability_statement(key[0]), pretty=pretty).body)
        return Response(capability_cache[key], media_type=FHIR_JSON)

    @router.post("")
    @router.post("/")
    async def transaction(request: Request) -> Response:
        taken = note(request, Interaction.TRANSACTION)
        pretty = check_format(request)
        ctx = runtime.context(request)
        body = await read_json_body(request, settings.max_body_bytes)
        if isinstance(body, dict) and body.get("type") == "batch":
            taken.interaction = Interaction.BATCH
        gateway = await runtime.ready_gateway()
        response = await gateway.submit(body, ctx, base=base_of(request))
        taken.returned(e["resource"] for e in response["entry"] if isinstance(e.get("resource"), dict))
        if Prefer.parse(request.headers.get("prefer")).return_ == "minimal":
            for entry in response["entry"]:
                entry.pop("resource", None)
        return FhirResponse(response, pretty=pretty)

    @router.get("/_history")
    async def history_system(request: Request) -> Response:
        taken = note(request, Interaction.HISTORY_SYSTEM, query=request.url.query)
        pretty = check_format(request)
        gateway = await runtime.ready_gateway()
        bundle = await gateway.history(
            runtime.context(request), query=query_of(request), base=base_of(request)
        )
        return bundle_response(taken, bundle, pretty)

    @router.get("/{res_type}")
    async def search(request: Request, res_type: str) -> Response:
        return await run_search(request, known_type(res_type), query_of(request))

    @router.post("/{res_type}/_search")
    async def search_post(request: Request, res_type: str) -> Response:
        known_type(res_type)
        form = (await request.body()).decode("utf-8", errors="replace")
        return await run_search(
            request, res_type, query_of(request) + parse_qsl(form, keep_blank_values=True)
        )

    async def run_search(request: Request, res_type: str, raw: list[tuple[str, str]]) -> Response:
        taken = note(request, Interaction.SEARCH_TYPE, requested=res_type, query=urlencode(raw))
        pretty = check_format(request)
        ctx = runtime.context(request)
        handling = Prefer.parse(request.headers.get("prefer")).handling
        gateway = await runtime.ready_gateway()
        strict = None if handling is None else handling == "strict"
        bundle = await gateway.search(res_type, raw, ctx, base=base_of(request), strict=strict, served=True)
        return with_warnings(bundle_response(taken, bundle, pretty), ctx)

    @router.post("/{res_type}")
    async def create(request: Request, res_type: str) -> Response:
        known_type(res_type)
        body = await read_json_body(request, settings.max_body_bytes)
        return await submit_one(
            request, "POST", res_type, body, ifNoneExist=request.headers.get("if-none-exist")
        )

    @router.put("/{res_type}")
    async def conditional_update(request: Request, res_type: str) -> Response:
        known_type(res_type)
        body = await read_json_body(request, settings.max_body_bytes)
        return await submit_one(
            request, "PUT", conditional_url(request, res_type), body, ifMatch=request.headers.get("if-match")
        )

    @router.delete("/{res_type}")
    async def conditional_delete(request: Request, res_type: str) -> Response:
        known_type(res_type)
        return await submit_one(request, "DELETE", conditional_url(request, res_type))

    @router.patch("/{res_type}")
    async def conditional_patch(request: Request, res_type: str) -> Response:
        known_type(res_type)
        body = await read_json_body(request, settings.max_body_bytes, patch=True)
        return await submit_one(
            request,
            "PATCH",
            conditional_url(request, res_type),
            body,
            ifMatch=request.headers.get("if-match"),
        )

    @router.get("/{res_type}/_history")
    async def history_type(request: Request, res_type: str) -> Response:
        taken = note(request, Interaction.HISTORY_TYPE, requested=res_type, query=request.url.query)
        pretty = check_format(request)
        gateway = await runtime.ready_gateway()
        bundle = await gateway.history(
            runtime.context(request),
            res_type=known_type(res_type),
            query=query_of(request),
            base=base_of(request),
        )
        return bundle_response(taken, bundle, pretty)

    @router.get("/Patient/{res_id}/$everything")
    async def everything(request: Request, res_id: str) -> Response:
        taken = note(
            request, Interaction.OPERATION, requested=f"Patient/{res_id}", operation="$everything", query=""
        )
        pretty = check_format(request)
        gateway = await runtime.ready_gateway()
        ctx = runtime.context(request)
        bundle = await gateway.everything(
            check_id(res_id), ctx, query=query_of(request), base=base_of(request)
        )
        return with_warnings(bundle_response(taken, bundle, pretty), ctx)

    @router.get("/{res_type}/{res_id}")
    async def read(request: Request, res_type: str, res_id: str) -> Response:
        taken = note(request, Interaction.READ, requested=f"{res_type}/{res_id}")
        pretty = check_format(request)
        known_type(res_type)
        gateway = await runtime.ready_gateway()
        ctx = runtime.context(request)
        version = await gateway.read(res_type, check_id(res_id), ctx, served=True)
        taken.returned([version.resource()])
        return with_warnings(read_response(request, version, pretty), ctx)

    @router.put("/{res_type}/{res_id}")
    async def update(request: Request, res_type: str, res_id: str) -> Response:
        known_type(res_type)
        body = await read_json_body(request, settings.max_body_bytes)
        return await submit_one(
            request, "PUT", f"{res_type}/{check_id(res_id)}", body, ifMatch=request.headers.get("if-match")
        )

    @router.patch("/{res_type}/{res_id}")
    async def patch(request: Request, res_type: str, res_id: str) -> Response:
        known_type(res_type)
        body = await read_json_body(request, settings.max_body_bytes, patch=True)
        return await submit_one(
            request, "PATCH", f"{res_type}/{check_id(res_id)}", body, ifMatch=request.headers.get("if-match")
        )

    @router.delete("/{res_type}/{res_id}")
    async def delete(request: Request, res_type: str, res_id: str) -> Response:
        known_type(res_type)
        return await submit_one(
            request, "DELETE", f"{res_type}/{check_id(res_id)}", ifMatch=request.headers.get("if-match")
        )

    @router.get("/{res_type}/{res_id}/_history")
    async def history_instance(request: Request, res_type: str, res_id: str) -> Response:
        taken = note(request, Interaction.HISTORY_INSTANCE, requested=f"{res_type}/{res_id}")
        pretty = check_format(request)
        gateway = await runtime.ready_gateway()
        bundle = await gateway.history(
            runtime.context(request),
            res_type=known_type(res_type),
            res_id=check_id(res_id),
            query=query_of(request),
            base=base_of(request),
        )
        return bundle_response(taken, bundle, pretty)

    @router.get("/{res_type}/{res_id}/_history/{version_id}")
    async def vread(request: Request, res_type: str, res_id: str, version_id: str) -> Response:
        taken = note(request, Interaction.VREAD, requested=f"{res_type}/{res_id}/_history/{version_id}")
        pretty = check_format(request)
        known_type(res_type)
        gateway = await runtime.ready_gateway()
        version = await gateway.vread(
            res_type, check_id(res_id), parse_version(version_id), runtime.context(request)
        )
        taken.returned([version.resource()])
        return read_response(request, version, pretty)

    return router


def client_provenance(request: Request, entry: Resource, method: str, url: str) -> list[Resource]:
    """The client's own Provenance from the `X-Provenance` header (R4 http.html#provenance), as a
    second entry of the same transaction targeting the written resource: the provenance stage then
    links it instead of writing its own."""
    header = request.headers.get("x-provenance")
    if header is None or method == "DELETE":
        return []
    try:
        provenance = loads(header.encode("utf-8"), what="the X-Provenance header")
    except BadRequest:
        raise BadRequest(
            "X-Provenance must be a Provenance resource in JSON", expression="X-Provenance"
        ) from None
    if not isinstance(provenance, dict) or provenance.get("resourceType") != "Provenance":
        raise BadRequest("X-Provenance must be a Provenance resource in JSON", expression="X-Provenance")
    if method == "POST":
        entry["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
        target = entry["fullUrl"]
    else:
        target = url.partition("?")[0]
    provenance["target"] = [{"reference": target}]
    return [{"resource": provenance, "request": {"method": "POST", "url": "Provenance"}}]


def bundle_response(taken: Note, bundle: Resource, pretty: bool) -> Response:
    taken.returned(e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict))
    return FhirResponse(bundle, pretty=pretty)


def conditional_url(request: Request, res_type: str) -> str:
    query = request.url.query
    if not query:
        raise BadRequest(
            "A conditional request on a type needs search parameters in the URL", expression="url"
        )
    return f"{res_type}?{query}"


def with_warnings(response: Response, ctx: RequestContext) -> Response:
    """Send the request's warnings (e.g. a system of record is down: pipeline/outage.py) as HTTP
    `Warning` headers, one value each."""
    for value in ctx.warnings:
        response.headers.append("Warning", value)
    return response


def version_headers(version: StoredVersion) -> dict[str, str]:
    return {"ETag": f'W/"{version.version_id}"', "Last-Modified": http_date(version.last_updated)}


def read_response(request: Request, version: StoredVersion, pretty: bool) -> Response:
    headers = version_headers(version)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    summary = request.query_params.get("_summary")
    elements = request.query_params.get("_elements")
    if not (summary or elements or pretty):
        # The stored bytes are already the resource's JSON: answer them without a parse/serialise trip.
        return Response(version.content, headers=headers, media_type=FHIR_JSON)
    resource = version.resource()
    if summary and summary not in ("false", "count"):
        try:
            resource = subsetting.summary(resource, summary)
        except ValueError:
            raise BadRequest(
                "_summary must be true, text, data, count or false", expression="_summary", code="value"
            ) from None
    elif elements:
        resource = subsetting.elements(resource, [e.strip() for e in elements.split(",") if e.strip()])
    return FhirResponse(resource, headers=headers, pretty=pretty)


def write_response(request: Request, result: EntryResult, base: str, pretty: bool) -> Response:
    prefer = Prefer.parse(request.headers.get("prefer"))
    headers: dict[str, str] = {}
    v = result.version
    if v is not None:
        headers.update(version_headers(v))
        if not v.deleted:
            headers["Location"] = f"{base}/{v.res_type}/{v.res_id}/_history/{v.version_id}"
    if prefer.return_ == "OperationOutcome":
        outcome = information("The interaction succeeded")
        outcome["issue"] += [w.to_fhir() for w in result.warnings]
        return FhirResponse(outcome, 200 if result.status == 204 else result.status, headers, pretty=pretty)
    if result.status == 204 or prefer.return_ == "minimal" or result.resource is None:
        return Response(status_code=result.status, headers=headers)
    return FhirResponse(result.resource, result.status, headers, pretty=pretty)
