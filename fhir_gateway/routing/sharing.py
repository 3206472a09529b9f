"""Consent-based sharing: before the routing layer tells another system about a resource, the
policy decision point is asked whether that system may see it, as if it had asked itself.

    Recipient(channel, reference, roles, purpose)   a receiving system, from `authority.subscribers`
    may_share(gateway, version, recipient)          the PDP's Decision for one stored version
    screened_channels(channels, recipients, ...)    every channel wrapped in a ScreenedChannel

Why the same decision and not a rule of its own: a subscriber reads the version back through the
PDP anyway, but being *told* that a resource exists (its type, id and category) already discloses
something; a patient whose Consent denies that system (actor = its reference) must not have their
data announced to it. The recipient is a RequestContext (fhirUser = its reference, its roles and
purpose, scopes system/*.rs), so consent actors, purposes, labels and clearance apply unchanged.

A message carrying a `resource` reference is screened when it is about to be sent, against the
consents in force then (a Consent revoked after the write but before delivery still counts).
Withheld: the message is done, not sent and not retried, and a log line says so without the
reference. Every decision, shared or withheld, is audited (DCM 110106 Export, with the recipient
as agent and the deciding Consent as an entity). If the store cannot be read, that is a
DeliveryError and the dispatcher tries again later: nothing is sent without a decision.
Messages without a `resource` (the privacy officer's break-glass notices) pass unscreened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from fhir_gateway.audit.events import disclosure_event
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import GatewayError
from fhir_gateway.pipeline.authority_config import Subscriber
from fhir_gateway.privacy.access import AccessPolicy, Decision
from fhir_gateway.privacy.compartment import index_rows, patients_of
from fhir_gateway.privacy.grants import grants_for
from fhir_gateway.routing.outbox import Channel, DeliveryError, Message, Withheld
from fhir_gateway.store.store import StoredVersion

if TYPE_CHECKING:  # the gateway imports the pipeline, which imports the outbox
    from fhir_gateway.gateway import Gateway

log = structlog.get_logger("fhir_gateway.sharing")

MISSING = Decision("deny", "missing")  # no such version (nothing to decide on: never announced)
CONSENT_PREFIX = "consent:"


@dataclass(frozen=True, slots=True)
class Recipient:
    """A system the routing layer sends to. `reference` is what Consent actors name."""

    channel: str
    reference: str | None = None
    roles: tuple[str, ...] = ("integration",)
    purpose: str = "TREAT"

    def context(self, purpose: str | None = None) -> RequestContext:
        return RequestContext(
            subject=f"recipient:{self.channel}",
            fhir_user=self.reference,
            roles=self.roles,
            scopes=("system/*.rs",),
            purpose_of_use=(purpose or self.purpose,),
            source="routing",
        )

    @classmethod
    def of(cls, subscriber: Subscriber) -> Recipient:
        return cls(subscriber.channel, subscriber.recipient, subscriber.roles, subscriber.purpose)


async def may_share(
    gateway: Gateway, version: StoredVersion | None, recipient: Recipient, purpose: str | None = None
) -> Decision:
    """Whether `recipient` may be sent (or told about) this stored version, for `purpose`."""
    if version is None or version.content is None:
        return MISSING
    policy = AccessPolicy(await grants_for(recipient.context(purpose), gateway.settings, gateway.consents))
    return gateway.decision(policy, version)


async def shared_version(gateway: Gateway, reference: str) -> StoredVersion | None:
    """The version a `Type/id/_history/v` (or `Type/id`) reference names; for a deletion the
    version before it, whose content says whose data it was."""
    parts = reference.split("/")
    if len(parts) == 4 and parts[2] == "_history" and parts[3].isdigit():
        res_type, res_id, version_id = parts[0], parts[1], int(parts[3])
        version = await gateway.store.vread(res_type, res_id, version_id)
        if version is not None and version.deleted and version_id > 1:
            version = await gateway.store.vread(res_type, res_id, version_id - 1)
        return version
    if len(parts) == 2:
        return await gateway.store.read(parts[0], parts[1])
    return None


class ScreenedChannel:
    """A channel that first asks `may_share` for messages that name a resource."""

    def __init__(self, inner: Channel, recipient: Recipient, gateway: Gateway, audit_log: AuditLog) -> None:
        self.inner = inner
        self.recipient = recipient
        self.gateway = gateway
        self.audit_log = audit_log

    async def send(self, message: Message) -> None:
        reference = message.payload.get("resource")
        if not isinstance(reference, str):
            await self.inner.send(message)
            return
        try:
            version = await shared_version(self.gateway, reference)
            decision = await may_share(self.gateway, version, self.recipient)
        except GatewayError as exc:  # the store is unavailable: decide (and send) later
            raise DeliveryError(f"sharing decision unavailable ({exc.status})") from None
        await self.audit_log.record(self._event(decision, reference, _patients(version)))
        if not decision.permitted:
            log.info(
                "outbox_withheld", message_id=message.id, channel=message.channel, reason=_kind(decision)
            )
            raise Withheld
        await self.inner.send(message)

    def _event(self, decision: Decision, reference: str, patients: list[str]) -> dict[str, object]:
        consent = decision.reason.removeprefix(CONSENT_PREFIX)
        return disclosure_event(
            self.recipient.context(),
            self.audit_log.source,
            shared=decision.permitted,
            resource=reference,
            patients=patients,
            reason=_kind(decision),
            consents=[consent] if decision.reason.startswith(CONSENT_PREFIX) else [],
        )


def _patients(version: StoredVersion | None) -> list[str]:
    if version is None or version.content is None:
        return []
    return sorted(patients_of(index_rows(version.res_type, version.res_id, version.resource())))


def _kind(decision: Decision) -> str:
    """The decision's kind without its details (label codes are themselves sensitive)."""
    return decision.reason.partition(":")[0]


def recipients_from(subscribers: Iterable[Subscriber]) -> dict[str, Recipient]:
    """Channel → its recipient (the first subscriber naming the channel defines it)."""
    found: dict[str, Recipient] = {}
    for subscriber in subscribers:
        found.setdefault(subscriber.channel, Recipient.of(subscriber))
    return found


def screened_channels(
    channels: Mapping[str, Channel],
    recipients: Mapping[str, Recipient],
    gateway: Gateway,
    audit_log: AuditLog,
) -> dict[str, Channel]:
    """Every channel screened; one no subscriber describes is an anonymous integration system."""
    return {
        name: ScreenedChannel(channel, recipients.get(name) or Recipient(name), gateway, audit_log)
        for name, channel in channels.items()
    }
