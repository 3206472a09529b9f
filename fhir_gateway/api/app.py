"""Assembling the stand-alone app and the mountable FHIR router."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import Counter, Histogram

from fhir_gateway import __version__
from fhir_gateway.api.health import build_health_router
from fhir_gateway.api.rest import build_router
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.logs import configure_logging, request_log
from fhir_gateway.settings import Settings, load_settings

REQUESTS = Counter("fhir_gateway_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("fhir_gateway_http_seconds", "HTTP request latency", ["method", "route"])


def fhir_router(
    settings: Settings | None = None,
    *,
    prefix: str = "/fhir",
    runtime: Runtime | None = None,
) -> APIRouter:
    """The FHIR API as a router; its lifespan opens the store, so include it with `app.include_router`."""
    runtime = runtime or Runtime(settings or load_settings())
    return build_router(runtime, prefix)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    runtime = Runtime(settings)
    app = FastAPI(title="fhir_gateway", version=__version__)  # the FHIR router brings the lifespan
    app.state.runtime = runtime
    app.include_router(build_health_router(runtime))
    app.include_router(build_router(runtime, "/fhir"))

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route: Any = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - start
        REQUESTS.labels(request.method, template, str(response.status_code)).inc()
        LATENCY.labels(request.method, template).observe(elapsed)
        request_log(
            request.method, template, response.status_code, elapsed, request.headers.get("x-request-id")
        )
        return response

    return app
