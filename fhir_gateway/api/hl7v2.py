"""HTTP face of the HL7 v2 receiver: `POST /hl7v2` (ER7 in, ACK out) and the error queue.

`POST /hl7v2` answers 200 with the ACK as its ER7 body whatever the message held (AA, AE, AR are
the answer, as they would be over MLLP); only a body that is not text at all (or of another media
type) is refused with an OperationOutcome. `GET /hl7v2/errors` lists the queue without the raw
messages (they hold PHI); `POST /hl7v2/errors/{id}/replay` runs one through the receiver again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from fhir_gateway.api.responses import FhirResponse, FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.errors import NotFound, PayloadTooLarge, UnsupportedMediaType
from fhir_gateway.ingest.hl7v2 import store as hl7_store
from fhir_gateway.ingest.hl7v2.receiver import Receiver

ER7 = "x-application/hl7-v2+er7"
ACCEPTED_TYPES = frozenset({ER7, "application/hl7-v2", "text/plain", "application/edi-hl7", ""})


def build_hl7_router(runtime: Runtime, receiver: Receiver | None = None) -> APIRouter:
    router = APIRouter(route_class=FhirRoute, tags=["hl7v2"])
    rx = receiver or Receiver(runtime)
    limit = runtime.settings.hl7.max_frame_bytes

    @router.post("/hl7v2")
    async def post_message(request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ACCEPTED_TYPES:
            raise UnsupportedMediaType(f"Send the message as {ER7} or text/plain", code="not-supported")
        body = await request.body()
        if len(body) > limit:
            raise PayloadTooLarge("The message is larger than hl7.max_frame_bytes")
        if b"\x00" in body:
            raise UnsupportedMediaType("The body is not text", code="not-supported")
        reply = await rx.receive(body)
        return Response(reply.ack.encode("utf-8"), media_type=ER7 if media == ER7 else f"{ER7}")

    @router.get("/hl7v2/errors")
    async def list_errors(include_replayed: bool = False, limit: int = 100) -> Response:
        await runtime.ensure_schema()
        entries = await hl7_store.list_errors(
            runtime.store, include_replayed=include_replayed, limit=max(1, min(limit, 1000))
        )
        return FhirResponse({"errors": [e.summary() for e in entries]})

    @router.post("/hl7v2/errors/{error_id}/replay")
    async def replay(error_id: int) -> Response:
        reply = await rx.replay(error_id)
        if reply is None:
            raise NotFound("No such error queue entry", expression="id")
        body: dict[str, Any] = {
            "id": error_id,
            "outcome": reply.outcome.value,
            "duplicate": reply.duplicate,
            "ack": reply.ack,
        }
        return FhirResponse(body)

    return router
