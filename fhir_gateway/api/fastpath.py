"""A lean path for the hottest request, `GET [base]/[type]/[id]`, in front of the FastAPI router.

Profiles of a read put a third of its time in routing alone: the router tries route after route
(~70, nested per included router, several regex matches each) before it reaches the read, then
FastAPI resolves the endpoint's (empty) dependencies. This middleware recognises a read with one
split and one set lookup and calls the very same endpoint (api/rest.py `read`) behind the very
same boundary (api/responses.py `guard`: errors → OperationOutcome, the AuditEvent recorded), so
auth, the Gateway read, the PDP, decryption, audit and the response headers are exactly what the
router would have produced: nothing is copied.

Which types may take the lean path is not decided here but learnt from the router itself: the
first read of each resource type goes through the router, and the route it chose (the router
leaves it in the ASGI scope) says whether that type's reads belong to the REST read route. A type
whose reads another router answers (AuditEvent: the audit router serves and read-audits it) keeps
going through the router, and so does anything the fast match does not take: other methods, ids
outside the FHIR id syntax (`$validate`, `_history`, `_search`), deeper paths, a root_path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_gateway.api.responses import Handler, guard

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class ReadFastPath:
    """ASGI middleware: reads of `types` under `prefix` go straight to the REST read endpoint."""

    def __init__(self, app: ASGIApp, *, prefix: str, types: Iterable[str]) -> None:
        self.app = app
        self.start = prefix.rstrip("/") + "/"
        self.template = f"{self.start}{{res_type}}/{{res_id}}"
        self.types = frozenset(types)  # only real type names are learnt: the table stays bounded
        self.learnt: dict[str, bool] = {}  # type → its reads reach the REST read route
        self.route: APIRoute | None = None
        self.handler: Handler | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = self._read_params(scope) if scope["type"] == "http" else None
        if params is None:
            await self.app(scope, receive, send)
            return
        res_type = params["res_type"]
        if self.handler is None or not self.learnt.get(res_type):
            await self.app(scope, receive, send)
            self._learn(res_type, scope.get("route"))
            return
        scope["route"] = self.route  # what the router would have left (metrics label by template)
        scope["endpoint"] = self.route.endpoint if self.route is not None else None
        scope["path_params"] = params
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)

    def _read_params(self, scope: Scope) -> dict[str, str] | None:
        path: str = scope["path"]
        if scope["method"] != "GET" or scope.get("root_path") or not path.startswith(self.start):
            return None
        res_type, slash, res_id = path[len(self.start) :].partition("/")
        if not slash or res_type not in self.types or not FHIR_ID.fullmatch(res_id):
            return None
        return {"res_type": res_type, "res_id": res_id}

    def _learn(self, res_type: str, route: Any) -> None:
        methods = getattr(route, "methods", None) or ()
        is_read = isinstance(route, APIRoute) and route.path == self.template and "GET" in methods
        self.learnt[res_type] = is_read
        if is_read and self.handler is None:
            self.route = route
            self.handler = guard(route.path, self._call)

    async def _call(self, request: Request) -> Response:
        assert self.route is not None, "a handler exists only once the read route is known"
        response: Response = await self.route.endpoint(request, **request.path_params)
        return response


def add_read_fast_path(app: FastAPI, prefix: str, types: Iterable[str]) -> None:
    """Put the lean read path in front of `app`'s router."""
    app.add_middleware(ReadFastPath, prefix=prefix, types=types)
