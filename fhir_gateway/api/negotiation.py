"""Content negotiation and request-header parsing for the REST layer (R4 http.html).

JSON is the only wire format: `_format`/`Accept` asking for XML or turtle get 406, a write with a
non-JSON Content-Type gets 415. Bodies over `max_body_bytes` get 413 before they are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from fhir_gateway.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from fhir_gateway.fhir.json import loads

JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir", "text/json"}
OTHER_FORMATS = {
    "xml",
    "application/xml",
    "application/fhir+xml",
    "text/xml",
    "ttl",
    "application/fhir+turtle",
    "text/turtle",
    "html",
    "text/html",
}
PATCH_TYPES = {"application/json-patch+json"}


@dataclass(slots=True, frozen=True)
class Prefer:
    """The `Prefer` header: return=minimal|representation|OperationOutcome, handling=strict|lenient."""

    return_: str = "representation"
    handling: str | None = None

    @classmethod
    def parse(cls, header: str | None) -> Prefer:
        values: dict[str, str] = {}
        for part in (header or "").replace(";", ",").split(","):
            key, _, value = part.strip().partition("=")
            if key and value:
                values[key.strip().lower()] = value.strip().strip('"')
        ret = values.get("return", "representation")
        if ret not in ("minimal", "representation", "OperationOutcome"):
            ret = "representation"
        handling = values.get("handling")
        return cls(ret, handling if handling in ("strict", "lenient") else None)


def check_format(request: Request) -> bool:
    """406 for formats other than JSON; returns whether `_pretty=true` was asked."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        base = fmt.split(";")[0].strip().lower()
        if base not in JSON_FORMATS:
            raise NotAcceptable(
                "Only JSON is supported (_format=json or application/fhir+json)", expression="_format"
            )
    else:
        accept = request.headers.get("accept", "")
        offered = [a.split(";")[0].strip().lower() for a in accept.split(",") if a.strip()]
        if offered and all(a in OTHER_FORMATS for a in offered):
            raise NotAcceptable(
                "Only JSON is supported; send Accept: application/fhir+json", expression="Accept"
            )
    return request.query_params.get("_pretty") == "true"


async def read_json_body(request: Request, max_bytes: int, *, patch: bool = False) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    allowed = JSON_FORMATS | PATCH_TYPES if patch else JSON_FORMATS
    if content_type and content_type not in allowed:
        raise UnsupportedMediaType(
            "Send the body as application/fhir+json" + (" or application/json-patch+json" if patch else ""),
            expression="Content-Type",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The body exceeds the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("The request body is empty", code="required")
    return loads(raw)
