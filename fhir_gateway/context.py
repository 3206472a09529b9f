"""Who is asking, and why: the per-request context every write stage and read decision receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fhir_gateway.fhir.ids import uuid7_hex

if TYPE_CHECKING:
    from fhir_gateway.privacy.access import AccessPolicy


@dataclass(slots=True)
class RequestContext:
    """The caller of one request or one ingested message.

    `claims` keeps the verified token claims as they came, for stages that need more than the
    fields lifted out here. `source` names the channel (rest, hl7v2, dicom, cli) and, for feeds,
    the sending system, so provenance and authority stages can tell sources apart.
    """

    subject: str | None = None
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    patient: str | None = None
    purpose_of_use: tuple[str, ...] = ()
    fhir_user: str | None = None
    jti: str | None = None
    source: str = "rest"
    source_system: str | None = None
    request_id: str = field(default_factory=uuid7_hex)
    claims: dict[str, Any] = field(default_factory=dict)
    # The request's compiled access policy (privacy/grants.policy_for): one per request, so its
    # decisions are cached for exactly as long as the request lives.
    policy: AccessPolicy | None = field(default=None, repr=False, compare=False)
    # HTTP `Warning` values for this request's answer (e.g. a system of record is unavailable and
    # the data may be stale: pipeline/outage.py); the REST layer sends them as headers.
    warnings: list[str] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def system(cls, source: str, source_system: str | None = None) -> RequestContext:
        """A context for the gateway's own work (ingest, CLI), with no end user."""
        return cls(
            subject=f"system:{source}",
            roles=("integration",),
            scopes=("system/*.*",),
            source=source,
            source_system=source_system,
        )
