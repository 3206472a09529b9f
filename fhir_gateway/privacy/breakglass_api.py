"""The break-glass operations over HTTP, and the background services that follow grants up.

    POST [base]/Patient/[id]/$break-glass    Parameters in: reason (string, required), purposeOfUse
                                             (code ETREAT | BTG, default ETREAT; valueCode, valueCoding
                                             or valueCodeableConcept), minutes (integer, 1..max);
                                             Parameters out (200): grant (id), opened, expires,
                                             justifyBy (instants), patient (reference), purposeOfUse
    POST [base]/$break-glass-justify         Parameters in: grant (id or string), justification
                                             (string); OperationOutcome out (200)
    GET  [base]/$break-glass-report[?since=] privacy_officer or admin only (else 403). Parameters out:
                                             one `grant` parameter per grant, newest first, whose parts
                                             are grant, subject, fhirUser, patient, purposeOfUse,
                                             reason, opened, expires, status (active | expired |
                                             closed), justified, justification, justifiedAt,
                                             justifyBy, overdue, escalatedAt, closed, accesses.

The report is a Parameters resource rather than a Bundle of Basic resources: it is an operation's
output, not stored resources, and Parameters parts say what each value is without extensions.
Unknown or repeated input parameters are a 400 naming them. The justify and report operations are
audited here (the grant's start is audited, durably, by `open_grant`).

`BreakGlassServices` (or `async with breakglass_services(...)`) runs the outbox `Dispatcher` and
the follow-up loop: every `interval` seconds, escalate unjustified grants past their deadline
and close expired ones (their stop AuditEvent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, Request, Response

from fhir_gateway.api.negotiation import check_format, read_json_body
from fhir_gateway.api.responses import FhirResponse, FhirRoute
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.events import (
    ACT_REASON,
    AuditSource,
    Interaction,
    denied_event,
    instant,
    per_patient,
    rest_event,
)
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import BadRequest, Forbidden, GatewayError, information
from fhir_gateway.fhir.dates import date_range
from fhir_gateway.pipeline.registry import authority_settings, subscriber_channels
from fhir_gateway.privacy import breakglass
from fhir_gateway.privacy.breakglass import Grant
from fhir_gateway.routing.brokers import broker_channels
from fhir_gateway.routing.outbox import Backoff, Dispatcher, channels_from_settings, finish
from fhir_gateway.routing.sharing import recipients_from, screened_channels

log = structlog.get_logger("fhir_gateway.breakglass")

REPORT_ROLES = frozenset({"privacy_officer", "admin"})
OPEN_PARAMS = frozenset({"reason", "purposeOfUse", "minutes"})
JUSTIFY_PARAMS = frozenset({"grant", "justification"})
INTEGER_TYPES = ("valueInteger", "valuePositiveInt", "valueUnsignedInt")


def build_breakglass_router(
    runtime: Runtime, prefix: str, audit_log: AuditLog, *, on_enqueue: Callable[[], None]
) -> APIRouter:
    """The three operations. Include it before the REST router (its paths would match `{res_type}`).

    `on_enqueue` is called after a notification was committed (pass `services.dispatcher.wake`):
    required, since a router that did not wake the dispatcher would leave the privacy officer's
    notification waiting for its next poll.
    """
    router = APIRouter(prefix=prefix, route_class=FhirRoute)
    settings = runtime.settings

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client else None

    @router.post("/Patient/{patient_id}/$break-glass")
    async def break_glass(request: Request, patient_id: str) -> Response:
        pretty = check_format(request)
        ctx = runtime.context(request)
        params = _parameters(await read_json_body(request, settings.max_body_bytes), OPEN_PARAMS)
        await runtime.ready_gateway()
        grant = await breakglass.open_grant(
            runtime.store,
            ctx,
            patient_id,
            _string(params, "reason"),
            _code(params, "purposeOfUse"),
            _integer(params, "minutes"),
            settings,
            audit_log=audit_log,
            client_address=client_of(request),
        )
        on_enqueue()
        return FhirResponse(_opened(grant, settings.privacy.break_glass_justify_hours), pretty=pretty)

    @router.post("/$break-glass-justify")
    async def justify(request: Request) -> Response:
        pretty = check_format(request)
        ctx = runtime.context(request)
        params = _parameters(await read_json_body(request, settings.max_body_bytes), JUSTIFY_PARAMS)
        grant_id = _string(params, "grant", "valueId") or ""
        text = _string(params, "justification")
        await runtime.ready_gateway()
        try:
            grant = await breakglass.justify(runtime.store, ctx, grant_id, text)
        except GatewayError as exc:
            await audit_log.record(
                _operation_event(
                    ctx, audit_log.source, "$break-glass-justify", exc.status, client_of(request)
                )
            )
            raise
        event = _operation_event(
            ctx,
            audit_log.source,
            "$break-glass-justify",
            200,
            client_of(request),
            patients=[grant.patient_id],
            grant=grant,
        )
        await audit_log.record(event)
        return FhirResponse(information("The justification was recorded"), pretty=pretty)

    @router.get("/$break-glass-report")
    async def report(request: Request) -> Response:
        pretty = check_format(request)
        ctx = runtime.context(request)
        if not REPORT_ROLES.intersection(ctx.roles):
            await audit_log.record(
                denied_event(
                    ctx,
                    audit_log.source,
                    Interaction.OPERATION,
                    reason="role",
                    requested="$break-glass-report",
                    client_address=client_of(request),
                )
            )
            raise Forbidden(
                "The break-glass report is for the privacy officer", expression="$break-glass-report"
            )
        since = _since(request.query_params.get("since"))
        await runtime.ready_gateway()
        rows = await breakglass.report(runtime.store, since, settings=settings)
        patients = sorted({row["patient"] for row in rows})
        event = _operation_event(
            ctx, audit_log.source, "$break-glass-report", 200, client_of(request), patients=patients
        )
        for one in per_patient(event):
            await audit_log.record(one)
        return FhirResponse(_report(rows), pretty=pretty)

    return router


def _operation_event(
    ctx: RequestContext,
    source: AuditSource,
    operation: str,
    status: int,
    client_address: str | None,
    *,
    patients: list[str] | None = None,
    grant: Grant | None = None,
) -> dict[str, Any]:
    """The AuditEvent of a justify or report call (BALP rest/operation), naming the grant's policy."""
    return rest_event(
        ctx,
        source,
        Interaction.OPERATION,
        status=status,
        client_address=client_address,
        patients=patients or (),
        operation=operation,
        policies=(grant.policy,) if grant is not None else (),
    )


# --- Parameters in ------------------------------------------------------------------------------


def _parameters(body: Any, allowed: frozenset[str]) -> dict[str, dict[str, Any]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("Send a Parameters resource", expression="Parameters")
    entries = body.get("parameter", [])
    if not isinstance(entries, list):
        raise BadRequest("Parameters.parameter must be a list", expression="Parameters.parameter")
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in allowed:
            raise BadRequest(
                f"Unknown parameter; this operation takes {', '.join(sorted(allowed))}",
                expression="Parameters.parameter",
            )
        if name in found:
            raise BadRequest(f"The parameter {name} is repeated", expression=f"Parameters.parameter[{name}]")
        found[name] = entry
    return found


def _string(params: dict[str, dict[str, Any]], name: str, *also: str) -> str | None:
    entry = params.get(name)
    if entry is None:
        return None
    for key in ("valueString", *also):
        if isinstance(entry.get(key), str):
            value: str = entry[key]
            return value
    raise BadRequest(f"{name} must be a string", expression=f"Parameters.parameter[{name}]", code="value")


def _code(params: dict[str, dict[str, Any]], name: str) -> str | None:
    """valueCode, or a v3 ActReason coding in valueCoding / valueCodeableConcept."""
    entry = params.get(name)
    if entry is None:
        return None
    if isinstance(entry.get("valueCode"), str):
        code: str = entry["valueCode"]
        return code
    codings = [entry.get("valueCoding")]
    concept = entry.get("valueCodeableConcept")
    if isinstance(concept, dict) and isinstance(concept.get("coding"), list):
        codings += concept["coding"]
    for coding in codings:
        if isinstance(coding, dict) and coding.get("system") in (None, ACT_REASON):
            code_value = coding.get("code")
            if isinstance(code_value, str):
                return code_value
    raise BadRequest(
        f"{name} must be a v3-ActReason code (ETREAT or BTG)",
        expression=f"Parameters.parameter[{name}]",
        code="value",
    )


def _integer(params: dict[str, dict[str, Any]], name: str) -> int | None:
    entry = params.get(name)
    if entry is None:
        return None
    for key in INTEGER_TYPES:
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise BadRequest(f"{name} must be an integer", expression=f"Parameters.parameter[{name}]", code="value")


def _since(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return date_range(raw)[0]
    except ValueError:
        raise BadRequest("since must be a FHIR date or dateTime", expression="since", code="value") from None


# --- Parameters out -----------------------------------------------------------------------------


def _opened(grant: Grant, justify_hours: float) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "grant", "valueId": grant.grant_id},
            {"name": "opened", "valueInstant": instant(grant.opened)},
            {"name": "expires", "valueInstant": instant(grant.expires)},
            {"name": "justifyBy", "valueInstant": instant(grant.justify_by(justify_hours))},
            {"name": "patient", "valueReference": {"reference": grant.patient}},
            {"name": "purposeOfUse", "valueCoding": {"system": ACT_REASON, "code": grant.purpose}},
        ],
    }


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "grant", "part": _parts(row)} for row in rows],
    }


def _parts(row: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"name": "grant", "valueId": row["grant"]},
        {"name": "subject", "valueString": row["subject"]},
    ]
    if row["fhirUser"]:
        parts.append({"name": "fhirUser", "valueReference": {"reference": row["fhirUser"]}})
    parts += [
        {"name": "patient", "valueReference": {"reference": row["patient"]}},
        {"name": "purposeOfUse", "valueCoding": {"system": ACT_REASON, "code": row["purpose"]}},
        {"name": "reason", "valueString": row["reason"]},
        {"name": "opened", "valueInstant": instant(row["opened"])},
        {"name": "expires", "valueInstant": instant(row["expires"])},
        {"name": "status", "valueCode": row["status"]},
        {"name": "justified", "valueBoolean": row["justified"]},
    ]
    if row["justification"] is not None:
        parts.append({"name": "justification", "valueString": row["justification"]})
    for key in ("justifiedAt", "justifyBy"):
        if row[key] is not None:
            parts.append({"name": key, "valueInstant": instant(row[key])})
    parts.append({"name": "overdue", "valueBoolean": row["overdue"]})
    for key in ("escalatedAt", "closed"):
        if row[key] is not None:
            parts.append({"name": key, "valueInstant": instant(row[key])})
    parts.append({"name": "accesses", "valueInteger": row["accesses"]})
    return parts


# --- background services ------------------------------------------------------------------------


class BreakGlassServices:
    """The outbox dispatcher and the escalation/closing loop, started and stopped together.

    Start it after the AuditLog and stop it before (closing grants records stop events).
    """

    def __init__(
        self,
        runtime: Runtime,
        audit_log: AuditLog,
        *,
        interval: float = 60.0,
        backoff: Backoff | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.runtime = runtime
        self.audit_log = audit_log
        self.interval = interval
        self.client = httpx.AsyncClient(timeout=10.0)
        self.brokers = broker_channels(runtime.settings)  # connections of their own, closed at stop
        self.dispatcher = Dispatcher(
            runtime.store,
            # the privacy officer's channels, and those of systems subscribed to authoritative
            # updates; whatever names a resource is first put to the PDP as its recipient
            screened_channels(
                {
                    **channels_from_settings(runtime.settings, self.client),
                    **self.brokers,
                    **subscriber_channels(runtime.settings, self.client),
                },
                recipients_from(authority_settings(runtime.settings).subscribers),
                runtime.gateway,
                audit_log,
            ),
            backoff=backoff,
            poll_seconds=poll_seconds,
            prepare=runtime.ensure_schema,
        )
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        await self.dispatcher.start()
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._loop(), name="break-glass-follow-up")

    async def stop(self, grace: float = 5.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            await finish(task, grace)
        await self.dispatcher.stop(grace)
        await self.client.aclose()
        for broker in self.brokers.values():
            await broker.close()

    async def tick(self, now: float | None = None) -> tuple[int, int]:
        """One round: (grants escalated, grants closed)."""
        await self.runtime.ensure_schema()
        store, settings = self.runtime.store, self.runtime.settings
        escalated = await breakglass.escalate_overdue(store, now, settings)
        closed = await breakglass.close_expired(store, self.audit_log, now)
        if escalated:
            self.dispatcher.wake()
        return escalated, closed

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # database down: the next round tries again
                log.warning("break_glass_follow_up_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stop.wait()


@asynccontextmanager
async def breakglass_services(
    runtime: Runtime, audit_log: AuditLog, **options: Any
) -> AsyncIterator[BreakGlassServices]:
    """`async with breakglass_services(runtime, audit_log) as services:` for a lifespan."""
    services = BreakGlassServices(runtime, audit_log, **options)
    await services.start()
    try:
        yield services
    finally:
        await services.stop()
