"""FHIR JSON responses and the one boundary where every exception becomes an OperationOutcome.

`FhirRoute` wraps each endpoint (it works inside a mounted router too, where app-level exception
handlers do not reach): a `GatewayError` becomes its status and OperationOutcome; anything else is
logged with the request id and answered 500 with a generic text, never the exception message,
which might carry PHI. Whatever the answer, its AuditEvent is recorded here (api/auditing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any

import orjson
import structlog
from fastapi import Request, Response
from fastapi.routing import APIRoute

from fhir_gateway.api.auditing import record_exchange
from fhir_gateway.errors import GatewayError, Issue, operation_outcome

FHIR_JSON = "application/fhir+json; charset=utf-8"
log = structlog.get_logger("fhir_gateway.api")


class FhirResponse(Response):
    media_type = FHIR_JSON

    def __init__(
        self,
        content: Any = None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        *,
        pretty: bool = False,
    ) -> None:
        body = b"" if content is None else orjson.dumps(content, option=orjson.OPT_INDENT_2 if pretty else 0)
        super().__init__(body, status_code=status_code, headers=headers, media_type=FHIR_JSON)


def error_response(exc: GatewayError) -> FhirResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return FhirResponse(exc.outcome(), exc.status, headers)


def internal_error(request_id: str) -> FhirResponse:
    issue = Issue("fatal", "exception", f"Internal server error (request {request_id}); nothing was changed")
    return FhirResponse(operation_outcome([issue]), 500)


def http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def guard(path: str, handler: Handler) -> Handler:
    """`handler` behind the boundary: GatewayError → its OperationOutcome, anything else → a
    generic 500; the AuditEvent for the answer that went out is recorded either way."""

    async def guarded(request: Request) -> Response:
        try:
            response = await handler(request)
        except GatewayError as exc:
            await record_exchange(request, exc.status, exc)
            return error_response(exc)
        except Exception:
            request_id = request.headers.get("x-request-id", "-")
            log.exception("unhandled_error", path=path, method=request.method, request_id=request_id)
            await record_exchange(request, 500)
            return internal_error(request_id)
        await record_exchange(request, response.status_code)
        return response

    return guarded


class FhirRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        return guard(self.path, super().get_route_handler())
