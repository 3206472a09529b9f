"""The change feed operation: what changed in a data category, in commit order, from a cursor.

    GET [base]/$changes?category=NAME[&_cursor=N][&_count=M]

A history Bundle of the category's versions after position N (default 0: from the start), oldest
first, at most M (default/maximum the server's page sizes). Each entry carries its position
(entry.extension change-feed-position); `Bundle.meta.extension` change-feed-cursor is where the
next pull resumes, and `link` next repeats it when the page was full. Positions are final and
gap-free across concurrent commits (pipeline/feed.py says why), so a system of record or a replica
that stores the cursor after applying a page never misses or re-reads a change.

Read through the Gateway's policy decision point like `_history`: only the category's resource
types the caller may search, only resources it may see, a past version it may not see listed
without content. Categories are the registry's (`authority.rules`); the authority stage writes
the feed in each version's own transaction. Audited as an operation with the resources returned.

Positions are the category's, shared by all callers (that is what makes a cursor durable): a caller
restricted by scopes, labels or consent skips the positions of changes it may not see, so the gaps
between its positions say that something else changed in the category, never what or to whom.
The feed is meant for systems of record and replicas, which read unrestricted.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from fhir_gateway.api.auditing import note
from fhir_gateway.api.negotiation import check_format
from fhir_gateway.api.responses import FhirResponse, FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.events import Interaction
from fhir_gateway.errors import BadRequest
from fhir_gateway.pipeline.registry import Registry, authority_settings


def build_changes_router(runtime: Runtime, prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, route_class=FhirRoute)
    settings = runtime.settings
    registry = Registry.load(authority_settings(settings).rules)

    @router.get("/$changes")
    async def changes(request: Request) -> Response:
        taken = note(request, Interaction.OPERATION, operation="$changes", query=request.url.query)
        pretty = check_format(request)
        ctx = runtime.context(request)
        params = request.query_params
        name = params.get("category")
        category = registry.get(name) if name else None
        if category is None:
            known = ", ".join(c.name for c in registry.categories)
            raise BadRequest(f"category must be one of {known}", expression="category", code="value")
        cursor = _natural(params.get("_cursor"), "_cursor", 0)
        count = min(
            _natural(params.get("_count"), "_count", settings.default_page_size), settings.max_page_size
        )
        if count == 0:
            raise BadRequest("_count must be at least 1", expression="_count", code="value")
        types = sorted({t for types, _ in category.match for t in types})
        gateway = await runtime.ready_gateway()
        base = (
            settings.base_url.rstrip("/") if settings.base_url else str(request.base_url).rstrip("/") + prefix
        )
        bundle = await gateway.changes(
            category.name, types, ctx, cursor=cursor, count=count, base=base.rstrip("/")
        )
        taken.returned(e["resource"] for e in bundle["entry"] if "resource" in e)
        return FhirResponse(bundle, pretty=pretty)

    return router


def _natural(raw: str | None, name: str, default: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{name} must be a non-negative integer", expression=name, code="value")
    return int(raw)
