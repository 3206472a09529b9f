"""Liveness (`/health`), readiness (`/ready`: the database answers) and Prometheus `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fhir_gateway.api.responses import FhirResponse
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.errors import Issue, operation_outcome


def build_health_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        return FhirResponse({"status": "ok"})

    @router.get("/ready")
    async def ready() -> Response:
        if await runtime.store.ping():
            return FhirResponse({"status": "ready", "database": "reachable"})
        issue = Issue("error", "transient", "The database is unreachable")
        return FhirResponse({**operation_outcome([issue]), "status": "unavailable"}, 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
