"""`$de-identify` over HTTP: a de-identified copy of the resource or Bundle sent, nothing stored.

    POST [base]/$de-identify[?dates=shift|year]   body: a resource or Bundle, or a Parameters with
                                                   `resource` (and optionally `dates`, valueCode)
                                                   200: the de-identified copy itself, so it can be
                                                   used as is; the report (label, counts per kind,
                                                   k-anonymity) is the `X-Deid-Report` header, JSON.

Only admin, privacy_officer and researcher may call it (else 403). The HMAC key is derived from the
installation's encryption key, so pseudonyms and date offsets are stable per installation and a
researcher's repeated extracts link up. The database is not touched: it works while the DB is down.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from fhir_gateway.api.negotiation import check_format, read_json_body
from fhir_gateway.api.responses import FhirResponse, FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.errors import BadRequest, Forbidden
from fhir_gateway.privacy.deid import DeidConfig, deidentify, installation_key

DEID_ROLES = frozenset({"admin", "privacy_officer", "researcher"})
REPORT_HEADER = "X-Deid-Report"


def build_deid_router(runtime: Runtime, prefix: str) -> APIRouter:
    """The `$de-identify` operation. Include it before the REST router (`{res_type}` would match)."""
    router = APIRouter(prefix=prefix, route_class=FhirRoute)
    settings = runtime.settings
    key = installation_key(settings.security.encryption_key.get_secret_value())

    @router.post("/$de-identify")
    async def de_identify(request: Request) -> Response:
        pretty = check_format(request)
        ctx = runtime.context(request)
        if not DEID_ROLES.intersection(ctx.roles):
            raise Forbidden(
                "De-identification is for researchers and privacy officers", expression="$de-identify"
            )
        body = await read_json_body(request, settings.max_body_bytes)
        data, dates = _input(body, request.query_params.get("dates", "shift"))
        result = deidentify(data, key=key, config=DeidConfig(dates=dates))
        report = orjson.dumps(result.report.to_json()).decode()
        return FhirResponse(result.data, headers={REPORT_HEADER: report}, pretty=pretty)

    return router


def _input(body: Any, dates: Any) -> tuple[dict[str, Any], Any]:
    """The resource to de-identify and the dates mode, from a bare resource or a Parameters."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise BadRequest("Send a FHIR resource, a Bundle or a Parameters with `resource`", expression="body")
    if body["resourceType"] == "Parameters":
        params = [p for p in body.get("parameter", []) if isinstance(p, dict)]
        resources = [p.get("resource") for p in params if p.get("name") == "resource"]
        codes = [p.get("valueCode") for p in params if p.get("name") == "dates"]
        if len(resources) != 1 or not isinstance(resources[0], dict):
            raise BadRequest("Parameters needs exactly one `resource`", expression="Parameters.parameter")
        body, dates = resources[0], codes[0] if codes else dates
    if dates not in ("shift", "year"):
        raise BadRequest("dates is shift or year", expression="dates")
    return body, dates
