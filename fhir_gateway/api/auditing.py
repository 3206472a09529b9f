"""One AuditEvent per REST exchange, recorded where every FHIR request is answered (FhirRoute).

An endpoint says what it is doing with `note(request, Interaction.READ, requested=...)` before it
does anything, and adds what it returned (`Note.returned`); the route class then records the event
for the answer that actually went out — success, 4xx refusal or 401 — through the group-committing
AuditLog, off the response's critical path. Routes that do not take a note (metadata, and the audit
trail's own router, which audits itself) are not recorded here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import Request

from fhir_gateway.audit.events import Interaction, denied_event, login_failure_event, rest_event
from fhir_gateway.errors import GatewayError
from fhir_gateway.fhir.json import Resource

log = structlog.get_logger("fhir_gateway.audit")
PATIENT_FIELDS = ("subject", "patient", "beneficiary")


@dataclass(slots=True)
class Note:
    interaction: Interaction
    requested: str | None = None
    query: str | None = None
    operation: str | None = None
    resources: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)

    def returned(self, resources: Iterable[Resource]) -> None:
        """Every resource that goes back to the caller, and the patients whose data they are."""
        for resource in resources:
            res_type, res_id = resource.get("resourceType"), resource.get("id")
            if not isinstance(res_type, str) or not isinstance(res_id, str):
                continue
            self.resources.append(f"{res_type}/{res_id}")
            if res_type == "Patient":
                self.patients.add(res_id)
            for name in PATIENT_FIELDS:
                ref = (
                    (resource.get(name) or {}).get("reference")
                    if isinstance(resource.get(name), dict)
                    else None
                )
                if isinstance(ref, str) and ref.startswith("Patient/"):
                    self.patients.add(ref.removeprefix("Patient/"))


def note(request: Request, interaction: Interaction, **details: Any) -> Note:
    taken = Note(interaction, **details)
    request.state.fhir_audit = taken
    return taken


async def record_exchange(request: Request, status: int, error: GatewayError | None = None) -> None:
    """Record the AuditEvent for this answer; auditing problems are logged, never turned into errors
    for the caller (the AuditLog itself retries and never drops events)."""
    runtime = getattr(request.state, "fhir_runtime", None)
    if runtime is None:
        return
    try:
        audit = runtime.audit
        client = request.client.host if request.client else None
        taken: Note | None = getattr(request.state, "fhir_audit", None)
        ctx = getattr(request.state, "fhir_ctx", None)
        if status == 401 or ctx is None:
            reason = "invalid token" if request.headers.get("authorization") else "no token"
            request_id = request.headers.get("x-request-id")
            event = login_failure_event(
                audit.source, reason=reason, request_id=request_id, client_address=client
            )
        elif taken is None:
            return
        elif status == 403 and error is not None:
            event = denied_event(
                ctx,
                audit.source,
                taken.interaction,
                reason=error.issues[0].code,
                requested=taken.requested,
                query=taken.query,
                client_address=client,
            )
        else:
            event = rest_event(
                ctx,
                audit.source,
                taken.interaction,
                status=status,
                client_address=client,
                resources=taken.resources,
                patients=taken.patients,
                query=taken.query,
                operation=taken.operation,
                policies=ctx.policy.grants.grant_ids if ctx.policy is not None else (),
            )
        await audit.record(event)
    except Exception:  # noqa: BLE001 - the answer must still go out; the failure is logged
        log.exception("audit_record_failed", path=request.url.path)
