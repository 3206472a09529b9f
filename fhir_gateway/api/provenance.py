"""Record-of-authority operations: `$provenance` lineage, the `$conflicts` review queue, `$resolve`.

    GET  [base]/[type]/[id]/$provenance[?_since=instant][&depth=0..3]
         Bundle (searchset): the Provenance of every version of the resource (`match`), and with
         depth ≥ 1 (default 1) what they derive from and what was derived alongside: the source
         resources they name (the v2 MessageHeader, a client's Provenance: `include`) and the
         Provenance of every resource written by the same submission (an ORU's Observations and its
         DiagnosticReport), repeated `depth` times outward. `_since` keeps Provenance recorded since.
    GET  [base]/$conflicts[?status=open|resolved|auto][&resource=Type/id]
         Bundle of Tasks (intent proposal, focus = the version the proposal met, input = element and
         proposed value as JSON): the review queue, or the log of settled conflicts.
    POST [base]/$conflicts/{id}/$resolve   Parameters: `choice` = proposed | current (every element),
         and/or `accept` (valueString, repeating) = the elements whose proposed value is taken.
         The result is written through `Gateway.submit` (If-Match the current version, so a change
         meanwhile answers 412) and the row closed in the same transaction; answers the closed Task.

Everything is read through the Gateway (its policy decision point): lineage only shows Provenance
and sources the caller may read; a conflict is listed only to reviewers (settings
`authority.reviewer_roles`) who may read its resource. The pull side of the change feed is
`GET [base]/$changes` (api/changes.py, a durable cursor per category); the push side is the outbox
(authority stage, `authority.subscribers`). Include this router before the REST router, or
`$provenance`/`$conflicts` would be read as ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from fhir_gateway.api.auditing import note
from fhir_gateway.api.negotiation import check_format, read_json_body
from fhir_gateway.api.responses import FhirResponse, FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.events import Interaction
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    Gone,
    NotFound,
    Unprocessable,
)
from fhir_gateway.fhir.dates import date_range, format_instant
from fhir_gateway.fhir.json import Resource
from fhir_gateway.fhir.requests import check_id, check_type
from fhir_gateway.gateway import Gateway
from fhir_gateway.pipeline import conflicts
from fhir_gateway.pipeline.authority import AUTHORITY_SYSTEM, CONFLICT_URN, RESOLUTION_TAG
from fhir_gateway.pipeline.conflicts import ConflictRow
from fhir_gateway.pipeline.provenance import SUBMISSION_SYSTEM, source_of, unversioned
from fhir_gateway.pipeline.registry import authority_settings
from fhir_gateway.store.store import Transaction
from fhir_gateway.transaction import EntryResult

MAX_DEPTH = 3
MAX_ENTRIES = 1000  # a lineage larger than this is cut, and the Bundle says so
CHUNK = 20  # values per OR-search
SOURCE_TYPES = frozenset({"Provenance", "MessageHeader"})  # entity references included as sources
SOURCE_SYSTEM = "urn:fhir-gateway:source"


def build_provenance_router(runtime: Runtime, prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, route_class=FhirRoute)
    settings = runtime.settings
    reviewers = frozenset(authority_settings(settings).reviewer_roles)

    def require_reviewer(ctx: RequestContext, what: str) -> None:
        if reviewers.isdisjoint(ctx.roles):
            raise Forbidden("The conflict queue is for data reviewers", expression=what)

    @router.get("/$conflicts")
    async def list_conflicts(request: Request) -> Response:
        taken = note(request, Interaction.OPERATION, operation="$conflicts", query=request.url.query)
        pretty = check_format(request)
        ctx = runtime.context(request)
        require_reviewer(ctx, "$conflicts")
        status = request.query_params.get("status", "open")
        if status not in conflicts.STATUSES:
            raise BadRequest("status must be open, resolved or auto", expression="status", code="value")
        res_type = res_id = None
        if resource := request.query_params.get("resource"):
            res_type, _, res_id = resource.partition("/")
            check_type(res_type, runtime.gateway.types)
            check_id(res_id)
        gateway = await runtime.ready_gateway()
        rows = await conflicts.open_conflicts(runtime.store, status=status, res_type=res_type, res_id=res_id)
        tasks = [_task(row) for row in rows if await _may_read(gateway, ctx, row.res_type, row.res_id)]
        taken.returned(tasks)
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(tasks),
            "entry": [{"resource": t, "search": {"mode": "match"}} for t in tasks],
        }
        return FhirResponse(bundle, pretty=pretty)

    @router.post("/$conflicts/{conflict_id}/$resolve")
    async def resolve(request: Request, conflict_id: str) -> Response:
        taken = note(
            request, Interaction.OPERATION, operation="$resolve", requested=f"$conflicts/{conflict_id}"
        )
        pretty = check_format(request)
        ctx = runtime.context(request)
        require_reviewer(ctx, "$resolve")
        accept, everything = _choice(await read_json_body(request, settings.max_body_bytes))
        gateway = await runtime.ready_gateway()
        row = await conflicts.get(runtime.store, int(conflict_id)) if conflict_id.isdigit() else None
        if row is None or not await _may_read(gateway, ctx, row.res_type, row.res_id):
            raise NotFound("Conflict not found", expression="id")
        if row.status != "open":
            raise Conflict("This conflict was already resolved", code="conflict")
        chosen = list(row.proposed) if everything == "proposed" else [e for e in accept if e in row.proposed]
        if everything is None and len(chosen) != len(accept):
            raise Unprocessable("`accept` names an element that is not in conflict", expression="accept")
        decision = {name: ("proposed" if name in chosen else "current") for name in row.proposed}
        version = await _apply(gateway, runtime, ctx, row, chosen, decision)
        closed = await conflicts.get(runtime.store, row.id)
        assert closed is not None
        task = _task(closed)
        taken.returned([task])
        if version is not None:
            task["output"] = [
                {
                    "type": {"text": "result"},
                    "valueReference": {"reference": f"{row.res_type}/{row.res_id}/_history/{version}"},
                }
            ]
        return FhirResponse(task, pretty=pretty)

    @router.get("/{res_type}/{res_id}/$provenance")
    async def provenance(request: Request, res_type: str, res_id: str) -> Response:
        taken = note(
            request,
            Interaction.OPERATION,
            requested=f"{res_type}/{res_id}",
            operation="$provenance",
            query=request.url.query,
        )
        pretty = check_format(request)
        check_type(res_type, runtime.gateway.types)
        check_id(res_id)
        ctx = runtime.context(request)
        since = _since(request.query_params.get("_since"))
        depth = _depth(request.query_params.get("depth"))
        gateway = await runtime.ready_gateway()
        with contextlib.suppress(Gone):  # a deleted resource still has its lineage
            await gateway.read(res_type, res_id, ctx)  # else 403/404 exactly as a read would answer
        bundle = await Lineage(gateway, ctx, since, settings.max_page_size).build(
            f"{res_type}/{res_id}", depth
        )
        taken.returned(e["resource"] for e in bundle["entry"])
        return FhirResponse(bundle, pretty=pretty)

    return router


# --- lineage ------------------------------------------------------------------------------------


class Lineage:
    """Breadth-first walk over Provenance: targets → their Provenance → submissions and sources."""

    def __init__(
        self, gateway: Gateway, ctx: RequestContext, since: str | None, page: int, *, limit: int = MAX_ENTRIES
    ) -> None:
        self.gateway = gateway
        self.limit = limit
        self.ctx = ctx
        self.since = since
        self.page = page
        self.provenance: dict[str, Resource] = {}
        self.sources: dict[str, Resource] = {}
        self.truncated = False

    async def build(self, target: str, depth: int) -> Resource:
        fresh = await self._search("target", [target])
        seen_targets = {target}
        seen_submissions: set[str] = set()
        for _ in range(depth):
            if not fresh or self.truncated:
                break
            submissions = {s for p in fresh for s in _submissions(p)} - seen_submissions
            seen_submissions |= submissions
            await self._include_sources(fresh)
            siblings = await self._search("_tag", [f"{SUBMISSION_SYSTEM}|{s}" for s in sorted(submissions)])
            targets = {unversioned(t) for p in siblings for t in _targets(p)} - seen_targets
            seen_targets |= targets
            fresh = siblings + await self._search("target", sorted(targets))
        ordered = sorted(self.provenance.values(), key=lambda p: str(p.get("recorded", "")), reverse=True)
        entry: list[Resource] = [{"resource": p, "search": {"mode": "match"}} for p in ordered]
        entry += [{"resource": r, "search": {"mode": "include"}} for r in self.sources.values()]
        if self.truncated:
            entry.append(
                {
                    "resource": {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {
                                "severity": "warning",
                                "code": "too-costly",
                                "diagnostics": f"The lineage was cut at {self.limit} entries; lower depth",
                            }
                        ],
                    },
                    "search": {"mode": "outcome"},
                }
            )
        return {"resourceType": "Bundle", "type": "searchset", "total": len(ordered), "entry": entry}

    async def _search(self, param: str, values: list[str]) -> list[Resource]:
        """New Provenance matching any of `values` (OR-searches of CHUNK values)."""
        found: list[Resource] = []
        for start in range(0, len(values), CHUNK):
            query = [(param, ",".join(values[start : start + CHUNK])), ("_count", str(self.page))]
            if self.since is not None:
                query.append(("recorded", f"ge{self.since}"))
            bundle = await self.gateway.search("Provenance", query, self.ctx)
            for item in bundle.get("entry", ()):
                resource = item.get("resource")
                if item.get("search", {}).get("mode") != "match" or not isinstance(resource, dict):
                    continue
                key = str(resource.get("id"))
                if key not in self.provenance:
                    if len(self.provenance) >= self.limit:
                        self.truncated = True
                        return found
                    self.provenance[key] = resource
                    found.append(resource)
        return found

    async def _include_sources(self, provenance: Iterable[Resource]) -> None:
        for item in provenance:
            for entity in item.get("entity") or ():
                reference = (entity.get("what") or {}).get("reference") if isinstance(entity, dict) else None
                if not isinstance(reference, str) or "/_history/" in reference:
                    continue  # a version of the resource itself: already in the chain
                res_type, _, res_id = reference.partition("/")
                if res_type not in SOURCE_TYPES or reference in self.sources:
                    continue
                if res_type == "Provenance" and res_id in self.provenance:
                    continue
                try:
                    version = await self.gateway.read(res_type, res_id, self.ctx)
                except GatewayError:
                    continue  # not there, or not for this caller: never hinted at
                self.sources[reference] = version.resource()


def _submissions(provenance: Resource) -> list[str]:
    tags = (provenance.get("meta") or {}).get("tag") or ()
    return [t["code"] for t in tags if isinstance(t, dict) and t.get("system") == SUBMISSION_SYSTEM]


def _targets(provenance: Resource) -> list[str]:
    return [t["reference"] for t in provenance.get("target") or () if isinstance(t.get("reference"), str)]


def _since(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        date_range(raw)
    except ValueError:
        raise BadRequest("_since must be a FHIR instant", expression="_since", code="value") from None
    return raw


def _depth(raw: str | None) -> int:
    if raw is None:
        return 1
    if not raw.isdigit() or int(raw) > MAX_DEPTH:
        raise BadRequest(f"depth must be an integer from 0 to {MAX_DEPTH}", expression="depth", code="value")
    return int(raw)


# --- conflicts ----------------------------------------------------------------------------------


async def _may_read(gateway: Gateway, ctx: RequestContext, res_type: str, res_id: str) -> bool:
    try:
        await gateway.read(res_type, res_id, ctx)
    except Gone:
        return True
    except GatewayError:
        return False
    return True


def _choice(body: Any) -> tuple[list[str], str | None]:
    """(`accept` element names, `choice` for every element) from a Parameters body."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("Send a Parameters resource", expression="Parameters", code="structure")
    accept: list[str] = []
    everything: str | None = None
    for param in body.get("parameter") or ():
        name = param.get("name") if isinstance(param, dict) else None
        if name == "accept" and isinstance(param.get("valueString"), str):
            accept.append(param["valueString"])
        elif name == "choice" and param.get("valueCode") in ("proposed", "current"):
            everything = param["valueCode"]
        else:
            raise BadRequest(
                "Parameters are `choice` (valueCode proposed|current) and `accept` (valueString)",
                expression="Parameters.parameter",
                code="value",
            )
    if everything is None and not accept:
        raise BadRequest("Say what to keep: `choice` or `accept`", expression="Parameters", code="required")
    if everything == "current":
        accept = []
    return accept, everything


async def _apply(
    gateway: Gateway,
    runtime: Runtime,
    ctx: RequestContext,
    row: ConflictRow,
    chosen: list[str],
    decision: dict[str, str],
) -> int | None:
    """Write the reviewer's choice and close the row in one transaction; the version written."""
    by = source_of(ctx)
    if not chosen:
        async with runtime.store.transaction() as tx:
            if not await conflicts.mark_resolved(
                tx.conn, row.id, decision=decision, by=by, result_version=None
            ):
                raise Conflict("This conflict was already resolved", code="conflict")
        return None
    current = await runtime.store.read(row.res_type, row.res_id)
    if current is None or current.deleted:
        raise Conflict("The resource was deleted since the conflict was queued", code="conflict")
    resource = await gateway.plaintext(current)  # the whole resource: a masked read must not be written back
    for name in chosen:
        value = row.proposed[name]
        if value is None:
            resource.pop(name, None)
        else:
            resource[name] = value
    bundle: Resource = {
        "resourceType": "Bundle",
        "type": "transaction",
        "meta": {"tag": [{"system": AUTHORITY_SYSTEM, "code": RESOLUTION_TAG}]},
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"{CONFLICT_URN}{row.id}"},
        "entry": [
            {
                "resource": resource,
                "request": {
                    "method": "PUT",
                    "url": f"{row.res_type}/{row.res_id}",
                    "ifMatch": f'W/"{current.version_id}"',
                },
            }
        ],
    }
    written: list[int | None] = [None]

    async def close(tx: Transaction, results: list[EntryResult]) -> None:
        version = results[0].version
        written[0] = version.version_id if version is not None else None
        if not await conflicts.mark_resolved(
            tx.conn, row.id, decision=decision, by=by, result_version=written[0]
        ):
            raise Conflict("This conflict was already resolved", code="conflict")

    await gateway.submit(bundle, ctx, within=close)
    return written[0]


def _task(row: ConflictRow) -> Resource:
    """A conflict as a FHIR Task (not stored: the queue's row is the record)."""
    task: Resource = {
        "resourceType": "Task",
        "id": f"conflict-{row.id}",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"{CONFLICT_URN}{row.id}"}],
        "status": "requested" if row.status == "open" else "completed",
        "businessStatus": {"coding": [{"system": AUTHORITY_SYSTEM, "code": row.reason}]},
        "intent": "proposal",
        "code": {
            "coding": [
                {"system": AUTHORITY_SYSTEM, "code": "conflict-review", "display": "Review a conflict"}
            ]
        },
        "description": f"{row.category}: {', '.join(row.elements)}",
        "focus": {"reference": f"{row.res_type}/{row.res_id}/_history/{row.base_version}"},
        "authoredOn": format_instant(row.created),
        "requester": {"identifier": {"system": SOURCE_SYSTEM, "value": row.source}},
        "input": [
            {"type": {"text": name}, "valueString": orjson.dumps(value).decode()}
            for name, value in row.proposed.items()
        ],
    }
    if row.resolved_at is not None:
        task["lastModified"] = format_instant(row.resolved_at)
        task["owner"] = {"identifier": {"system": SOURCE_SYSTEM, "value": row.resolved_by or ""}}
    if row.decision:
        task["note"] = [{"text": ", ".join(f"{k}: {v}" for k, v in row.decision.items())}]
    return task
