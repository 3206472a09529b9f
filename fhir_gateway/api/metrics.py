"""Request metrics and request logs as a plain ASGI middleware.

Starlette's `BaseHTTPMiddleware` wraps every response in an extra task and memory stream, which
cost more than a whole FHIR read here; this middleware only watches the `http.response.start`
message go by. Routes are labelled by their template (`/fhir/{res_type}/{res_id}`), never by the
concrete path, so neither metrics nor logs carry ids.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_gateway.logs import request_log

REQUESTS = Counter("fhir_gateway_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("fhir_gateway_http_seconds", "HTTP request latency", ["method", "route"])


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            elapsed = time.perf_counter() - start
            REQUESTS.labels(method, template, str(status)).inc()
            LATENCY.labels(method, template).observe(elapsed)
            request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1") or None
            request_log(method, template, status, elapsed, request_id)
