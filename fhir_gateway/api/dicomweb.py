"""DICOMweb: STOW-RS store, WADO-RS retrieve and metadata (PS3.18 §10.4, §10.5), under `/dicomweb`.

    POST /dicomweb/studies[/{study}]                               STOW-RS (multipart/related)
    GET  /dicomweb/studies/{study}[/series/{se}[/instances/{sop}]]  WADO-RS instances (multipart/related)
    GET  .../metadata                                               WADO-RS metadata (application/dicom+json)

Stores go through the DICOM ingester (→ `Gateway.submit`), reads through `Gateway.read` of the
ImagingStudy, so both paths are the gateway's own. Errors become OperationOutcome at the FhirRoute
boundary like everywhere else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from fhir_gateway.api.responses import FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.errors import NotAcceptable, NotFound, PayloadTooLarge
from fhir_gateway.fhir.json import Resource
from fhir_gateway.ingest.dicom.imaging_study import study_resource_id
from fhir_gateway.ingest.dicom.ingest import DicomIngester, FailureReason, InstanceOutcome
from fhir_gateway.ingest.dicom.stow import (
    DICOM,
    DICOM_JSON,
    MULTIPART_RELATED,
    closing_delimiter,
    dicom_parts,
    is_dicom_part,
    media_type,
    part_head,
    stow_response,
)
from fhir_gateway.ingest.dicom.wado import instance_metadata, select_blobs

NOT_DICOM_PART = "the part is not application/dicom"
MAX_STOW_BYTES = 512 * 1024 * 1024  # a STOW body is held in memory while it is parsed


def build_dicomweb_router(
    runtime: Runtime,
    *,
    prefix: str = "/dicomweb",
    ingester: DicomIngester | None = None,
    max_body_bytes: int = MAX_STOW_BYTES,
) -> APIRouter:
    """The DICOMweb routes; pass the server's `ingester` to share it with the C-STORE SCP."""
    router = APIRouter(prefix=prefix, route_class=FhirRoute, tags=["DICOMweb"])
    shared = ingester or DicomIngester.from_settings(runtime.gateway, runtime.settings)

    def base_of(request: Request) -> str:
        configured = runtime.settings.dicom.dicomweb_base
        return configured.rstrip("/") if configured else f"{str(request.base_url).rstrip('/')}{prefix}"

    async def store(request: Request, study: str | None) -> Response:
        ctx = runtime.context(request)  # a bad token is refused (401) before the body is read
        policy = await (await runtime.ready_gateway()).policy(ctx)
        # The writes themselves run as the DICOM feed (RequestContext.system), which the policy does
        # not restrict, so the caller's own right to store imaging is checked here, once.
        policy.require("ImagingStudy", "create")
        policy.require("ImagingStudy", "update")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise PayloadTooLarge(f"STOW-RS bodies are limited to {max_body_bytes} bytes")
        parts = dicom_parts(await request.body(), request.headers.get("content-type"))
        dicom = [p.content for p in parts if is_dicom_part(p)]
        base = base_of(request)
        results = iter(
            await shared.ingest(dicom, source_system="STOW", dicomweb_base=base, expected_study=study)
        )
        outcomes = [
            next(results)
            if is_dicom_part(p)
            else InstanceOutcome(failure=FailureReason.CANNOT_UNDERSTAND, reason=NOT_DICOM_PART)
            for p in parts
        ]
        status, body = stow_response(outcomes, base)
        return Response(orjson.dumps(body), status_code=status, media_type=DICOM_JSON)

    @router.post("/studies")
    async def stow(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study}")
    async def stow_study(request: Request, study: str) -> Response:
        return await store(request, study)

    async def study_of(request: Request, study: str) -> Resource:
        ctx = runtime.context(request)
        gateway = await runtime.ready_gateway()
        try:
            return (await gateway.read("ImagingStudy", study_resource_id(study), ctx)).resource()
        except NotFound:
            raise NotFound("Study not found", expression="url") from None

    async def retrieve(request: Request, study: str, series: str | None, sop: str | None) -> Response:
        _accept_multipart(request.headers.get("accept"))
        blobs = select_blobs(await study_of(request, study), series, sop)
        boundary = uuid.uuid4().hex

        async def body() -> AsyncIterator[bytes]:
            for index, (_sop, sha256) in enumerate(blobs):
                data = await shared.blobs.read(sha256)
                yield (b"\r\n" if index else b"") + part_head(boundary, DICOM)
                yield data
            yield closing_delimiter(boundary)

        content_type = f'{MULTIPART_RELATED}; type="{DICOM}"; boundary={boundary}'
        return StreamingResponse(body(), media_type=content_type)

    @router.get("/studies/{study}")
    async def retrieve_study(request: Request, study: str) -> Response:
        return await retrieve(request, study, None, None)

    @router.get("/studies/{study}/series/{series}")
    async def retrieve_series(request: Request, study: str, series: str) -> Response:
        return await retrieve(request, study, series, None)

    @router.get("/studies/{study}/series/{series}/instances/{sop}")
    async def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return await retrieve(request, study, series, sop)

    async def metadata(request: Request, study: str, series: str | None, sop: str | None) -> Response:
        _accept_json(request.headers.get("accept"))
        blobs = select_blobs(await study_of(request, study), series, sop)
        paths = [shared.blobs.path_for(sha256) for _sop, sha256 in blobs]
        items: list[dict[str, Any]] = await asyncio.to_thread(lambda: [instance_metadata(p) for p in paths])
        return Response(orjson.dumps(items), media_type=DICOM_JSON)

    @router.get("/studies/{study}/metadata")
    async def study_metadata(request: Request, study: str) -> Response:
        return await metadata(request, study, None, None)

    @router.get("/studies/{study}/series/{series}/metadata")
    async def series_metadata(request: Request, study: str, series: str) -> Response:
        return await metadata(request, study, series, None)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    async def instance_metadata_route(request: Request, study: str, series: str, sop: str) -> Response:
        return await metadata(request, study, series, sop)

    return router


def _accept_multipart(accept: str | None) -> None:
    """Instances come as stored (no transcoding), in multipart/related; type="application/dicom"."""
    for item in (accept or "*/*").split(","):
        kind, params = media_type(item.strip())
        if kind in ("*/*", "multipart/*", MULTIPART_RELATED) and params.get("type", DICOM).lower() == DICOM:
            return
    raise NotAcceptable('Instances are served as multipart/related; type="application/dicom"')


def _accept_json(accept: str | None) -> None:
    for item in (accept or "*/*").split(","):
        if media_type(item.strip())[0] in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
    raise NotAcceptable("Metadata is served as application/dicom+json")
