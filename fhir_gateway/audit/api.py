"""`GET [base]/AuditEvent` and `GET [base]/AuditEvent/{id}`, read from the hash-chained audit table.

AuditEvents never pass through the resource store, so the ordinary write interactions cannot
touch them; this router offers only reads. Only privacy_officer and admin may read them (403
otherwise, itself audited), and every read or search is audited in turn, naming the AuditEvents
returned and the patients they concern.

Search parameters (R4 AuditEvent): `date` (eq, ne, gt, lt, ge, le, sa, eb, ap), `agent` and `entity`
(reference or identifier value), `patient` (id or Patient/id), `subtype`, `type`, `action`, `outcome`
(code or system|code), `_id`; a comma means OR, repeating a parameter means AND; `_count` and
`_offset` page the newest-first result. Anything else is a 400 naming the parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select

from fhir_gateway.api.responses import FhirResponse, FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.events import (
    Interaction,
    denied_event,
    rest_event,
)
from fhir_gateway.audit.tables import audit_event_index, audit_events
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import BadRequest, Forbidden, GatewayError, NotFound
from fhir_gateway.fhir.requests import check_id
from fhir_gateway.store.search.values import parse_date, parse_token, split_escaped, split_prefix, unescape
from fhir_gateway.store.searching import links

READER_ROLES = frozenset({"privacy_officer", "admin"})
INDEXED = ("agent", "entity", "patient")
TOKEN_COLUMNS = ("type", "subtype", "action", "outcome")
RESULT_PARAMS = frozenset({"_format", "_pretty", "_count", "_offset"})


def build_audit_router(runtime: Runtime, prefix: str, audit_log: AuditLog) -> APIRouter:
    router = APIRouter(prefix=prefix, route_class=FhirRoute)
    settings = runtime.settings

    def base_of(request: Request) -> str:
        return (
            settings.base_url.rstrip("/") if settings.base_url else str(request.base_url).rstrip("/") + prefix
        )

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client else None

    async def authorised(request: Request, interaction: Interaction, requested: str | None) -> RequestContext:
        """The caller's context when they may read AuditEvents; the refusal is audited either way
        (a failed login by FhirRoute, as on every FHIR route; a missing role here)."""
        ctx = runtime.context(request)
        if not READER_ROLES.intersection(ctx.roles):
            await audit_log.record(
                denied_event(
                    ctx,
                    audit_log.source,
                    interaction,
                    reason="role",
                    requested=requested,
                    query=request.url.query or None,
                    client_address=client_of(request),
                )
            )
            raise Forbidden("Reading AuditEvents needs the privacy_officer or admin role")
        return ctx

    async def audited(
        request: Request,
        ctx: RequestContext,
        interaction: Interaction,
        *,
        events: Sequence[dict[str, Any]] = (),
        status: int = 200,
        requested: str | None = None,
    ) -> None:
        resources = [f"AuditEvent/{e['id']}" for e in events]
        if requested and not resources:
            resources = [requested]
        await audit_log.record(
            rest_event(
                ctx,
                audit_log.source,
                interaction,
                status=status,
                client_address=client_of(request),
                resources=resources,
                patients=_patients_in(events),
                query=request.url.query if interaction is Interaction.SEARCH_TYPE else None,
            )
        )

    @router.get("/AuditEvent")
    async def search(request: Request) -> Response:
        ctx = await authorised(request, Interaction.SEARCH_TYPE, None)
        try:
            pretty = request.query_params.get("_pretty") == "true"
            raw = list(request.query_params.multi_items())
            where = _conditions(raw)
            count = _int(raw, "_count", settings.default_page_size, settings.max_page_size)
            offset = _int(raw, "_offset", 0, None)
            await runtime.ensure_schema()
            e = audit_events.c
            page = (
                select(e.event)
                .where(where)
                .order_by(e.recorded.desc(), e.chain, e.seq.desc())
                .limit(count)
                .offset(offset)
            )
            async with runtime.store.reader(offload=True) as conn:
                total = int(
                    (
                        await conn.execute(select(func.count()).select_from(audit_events).where(where))
                    ).scalar_one()
                )
                events = [orjson.loads(r.event) for r in (await conn.execute(page)).all()]
        except GatewayError as exc:
            await audited(request, ctx, Interaction.SEARCH_TYPE, status=exc.status)
            raise
        await audited(request, ctx, Interaction.SEARCH_TYPE, events=events)
        keep = [(k, v) for k, v in raw if k not in RESULT_PARAMS]
        url = f"{base_of(request)}/AuditEvent"

        def link_for(off: int) -> str:
            return f"{url}?{urlencode([*keep, ('_count', str(count)), ('_offset', str(off))])}"

        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links(link_for, offset, count, total > offset + len(events)),
            "entry": [
                {"fullUrl": f"{url}/{ev['id']}", "resource": ev, "search": {"mode": "match"}} for ev in events
            ],
        }
        return FhirResponse(bundle, pretty=pretty)

    @router.get("/AuditEvent/{event_id}")
    async def read(request: Request, event_id: str) -> Response:
        requested = f"AuditEvent/{event_id[:64]}"
        ctx = await authorised(request, Interaction.READ, requested)
        try:
            check_id(event_id)
            await runtime.ensure_schema()
            stmt = select(audit_events.c.event).where(audit_events.c.event_id == event_id)
            async with runtime.store.reader() as conn:
                row = (await conn.execute(stmt)).first()
            if row is None:
                raise NotFound("AuditEvent not found", expression="AuditEvent")
        except GatewayError as exc:
            await audited(request, ctx, Interaction.READ, status=exc.status, requested=requested)
            raise
        event = orjson.loads(row.event)
        await audited(request, ctx, Interaction.READ, events=[event])
        return FhirResponse(event, pretty=request.query_params.get("_pretty") == "true")

    return router


def _patients_in(events: Sequence[dict[str, Any]]) -> list[str]:
    """The patients the returned AuditEvents are about: reading them discloses who was accessed."""
    found: list[str] = []
    for event in events:
        for entity in event.get("entity", []):
            ref = str((entity.get("what") or {}).get("reference", ""))
            if ref.startswith("Patient/"):
                patient = "/".join(ref.split("/")[:2])
                if patient not in found:
                    found.append(patient)
    return found


def _conditions(raw: Sequence[tuple[str, str]]) -> ColumnElement[bool]:
    e = audit_events.c
    conditions: list[ColumnElement[bool]] = []
    for key, value in raw:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            continue
        if modifier or not value:
            raise BadRequest(f"Search parameter {name} needs a value and takes no modifier", expression=name)
        items = [unescape(v) for v in split_escaped(value, ",")]
        if name == "date":
            conditions.append(or_(*(_date(item) for item in items)))
        elif name in INDEXED:
            values = [f"Patient/{v}" if name == "patient" and "/" not in v else v for v in items]
            idx = audit_event_index.c
            params = ("entity", "patient") if name == "entity" else (name,)  # Patient entities: `patient`
            conditions.append(
                exists().where(
                    idx.chain == e.chain, idx.seq == e.seq, idx.param.in_(params), idx.value.in_(values)
                )
            )
        elif name in TOKEN_COLUMNS:
            conditions.append(or_(*(_token(name, item) for item in items)))
        elif name == "_id":
            conditions.append(e.event_id.in_(items))
        else:
            raise BadRequest(f"Unknown search parameter {name[:64]} for AuditEvent", expression=name[:64])
    return and_(True, *conditions)


def _token(name: str, item: str) -> ColumnElement[bool]:
    """`code` or `system|code` against a column holding `system|code` (action, outcome: the code)."""
    try:
        token = parse_token(item)
    except ValueError:
        raise BadRequest(f"{name} must be code or system|code", expression=name, code="value") from None
    if not token.code:
        raise BadRequest(f"{name} needs a code", expression=name, code="value")
    column = audit_events.c[name]
    if name in ("action", "outcome"):
        return column == token.code
    if token.system:
        return column == f"{token.system}|{token.code}"
    return column.endswith(f"|{token.code}", autoescape=True)


def _date(item: str) -> ColumnElement[bool]:
    prefix, text = split_prefix(item)
    try:
        value = parse_date(text, prefix)
    except ValueError:
        raise BadRequest(
            "date must be a FHIR date, dateTime or instant", expression="date", code="value"
        ) from None
    recorded = audit_events.c.recorded
    in_range = and_(recorded >= value.low, recorded < value.high)
    return {
        "eq": in_range,
        "ap": in_range,
        "ne": not_(in_range),
        "gt": recorded >= value.high,
        "sa": recorded >= value.high,
        "ge": recorded >= value.low,
        "lt": recorded < value.low,
        "eb": recorded < value.low,
        "le": recorded < value.high,
    }[prefix]


def _int(raw: Sequence[tuple[str, str]], name: str, default: int, maximum: int | None) -> int:
    values = [v for k, v in raw if k == name]
    if not values:
        return default
    if not values[-1].isdigit():
        raise BadRequest(f"{name} must be a non-negative integer", expression=name, code="value")
    number = int(values[-1])
    return min(number, maximum) if maximum is not None else number
