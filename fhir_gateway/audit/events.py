"""Pure builders of R4 AuditEvent resources after IHE Basic Audit Log Patterns (BALP).

One builder per kind of event; none does I/O, so the REST layer, the gateway and the policy
decision point can build an event where the facts are and hand it to `AuditLog.record`:

- `rest_event`: a RESTful interaction (BALP "Basic AuditEvent for a successful/failed ..."):
  type `rest`, subtype the R4 restful-interaction, action C/R/U/D/E, the user agent (who, role,
  purposeOfUse, `policy` = the token's jti, network address), the server agent, source, and the
  entities touched: every resource read or returned on the page, the query (base64) for searches,
  the X-Request-Id, and one Patient entity per patient whose data was returned.
- `denied_event`: a refused request (outcome 4 with the reason code; nothing about what was hidden).
- `login_failure_event`: DCM 110114 User Authentication / 110122 Login, outcome 4, no token contents.
- `consent_event`: DCM 110113 Security Alert / BALP AuthZ-Consent, outcome 0 permit or 4 deny.
- `break_glass_event`: DCM 110113 / 110127 Emergency Override Started (110138 Stopped).
- `disclosure_event`: DCM 110106 Export, a resource (or a reference to it) sent to another system
  by the routing layer, outcome 0 shared or 4 withheld, with the policy decision that said so.

The "minimal" pattern throughout: references and identifiers, never names, birth dates or other
demographics; outcomeDesc carries fixed texts and reason codes, never resource content.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fhir_gateway.context import RequestContext
from fhir_gateway.settings import Settings

Resource = dict[str, Any]

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
BALP_AUTHZ_SUBTYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
# Local code systems of this gateway (roles from the token, operation names, break-glass grants).
ROLE_SYSTEM = "urn:fhir-gateway:role"
OPERATION_SYSTEM = "urn:fhir-gateway:operation"
BREAK_GLASS_SYSTEM = "urn:fhir-gateway:break-glass"
JTI_POLICY = "urn:ietf:params:oauth:jti:"


class Interaction(StrEnum):
    """R4 restful-interaction codes (http://hl7.org/fhir/restful-interaction)."""

    READ = "read"
    VREAD = "vread"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    HISTORY = "history"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    CREATE = "create"
    SEARCH = "search"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    SEARCH_COMPARTMENT = "search-compartment"
    CAPABILITIES = "capabilities"
    TRANSACTION = "transaction"
    BATCH = "batch"
    OPERATION = "operation"


class Action(StrEnum):
    """R4 AuditEvent.action (audit-event-action)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(StrEnum):
    """R4 AuditEvent.outcome (audit-event-outcome)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


# BALP: R for reads, C/U/D for writes, E for queries (search, history) and everything else.
_ACTIONS = {
    Interaction.READ: Action.READ,
    Interaction.VREAD: Action.READ,
    Interaction.CAPABILITIES: Action.READ,
    Interaction.CREATE: Action.CREATE,
    Interaction.UPDATE: Action.UPDATE,
    Interaction.PATCH: Action.UPDATE,
    Interaction.DELETE: Action.DELETE,
}
_QUERIES = frozenset(
    {
        Interaction.SEARCH,
        Interaction.SEARCH_TYPE,
        Interaction.SEARCH_SYSTEM,
        Interaction.SEARCH_COMPARTMENT,
        Interaction.HISTORY,
        Interaction.HISTORY_INSTANCE,
        Interaction.HISTORY_TYPE,
        Interaction.HISTORY_SYSTEM,
    }
)
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request"}
_REASONS |= {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 410: "Gone"}
_REASONS |= {412: "Precondition Failed", 422: "Unprocessable Entity", 500: "Internal Server Error"}
_REASONS |= {503: "Service Unavailable"}


def action_for(interaction: Interaction) -> Action:
    return _ACTIONS.get(interaction, Action.EXECUTE)


def outcome_for_status(status: int) -> Outcome:
    """2xx/3xx succeeded; 4xx is the caller's failure (minor); 5xx is ours (serious)."""
    if status < 400:
        return Outcome.SUCCESS
    return Outcome.MINOR_FAILURE if status < 500 else Outcome.SERIOUS_FAILURE


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who observed and recorded the events: this gateway (AuditEvent.source and the server agent)."""

    site: str
    observer: str = "fhir-gateway"

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditSource:
        from fhir_gateway.audit.config import audit_settings, audit_site

        return cls(site=audit_site(settings), observer=audit_settings(settings).observer)

    def to_fhir(self) -> Resource:
        return {
            "site": self.site,
            "observer": {"identifier": {"value": self.observer}},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        }


def rest_event(
    ctx: RequestContext,
    source: AuditSource,
    interaction: Interaction,
    *,
    status: int = 200,
    outcome_desc: str | None = None,
    client_address: str | None = None,
    resources: Iterable[str] = (),
    patients: Iterable[str] = (),
    query: str | bytes | None = None,
    operation: str | None = None,
    policies: Sequence[str] = (),
    recorded: float | None = None,
) -> Resource:
    """The AuditEvent of one RESTful interaction.

    `resources` are the references touched or returned ("Type/id" or "Type/id/_history/v"; for a
    search every id on the page), `patients` the patients whose data was returned (ids or
    references; Patient resources among `resources` count too), `query` the raw query string of a
    search (stored base64, as BALP asks), `operation` the operation name ("$everything"),
    `policies` further policy URIs under which access was granted (a break-glass grant, a Consent).
    """
    subtype = [_coding(RESTFUL_INTERACTION, interaction.value)]
    if operation:
        subtype.append(_coding(OPERATION_SYSTEM, operation))
    resource_refs, patient_refs = _split_patients(resources, patients)
    entities = [_resource_entity(ref) for ref in resource_refs]
    if query is not None and (query or interaction in _QUERIES):
        entities.append(_query_entity(query))
    return _event(
        ctx,
        source,
        type_=_coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        subtype=subtype,
        action=action_for(interaction),
        outcome=outcome_for_status(status),
        outcome_desc=outcome_desc or _REASONS.get(status, f"HTTP {status}"),
        client_address=client_address,
        entities=entities + [_patient_entity(p) for p in patient_refs],
        policies=policies,
        recorded=recorded,
    )


def denied_event(
    ctx: RequestContext,
    source: AuditSource,
    interaction: Interaction,
    *,
    reason: str,
    requested: str | None = None,
    query: str | bytes | None = None,
    client_address: str | None = None,
    status: int = 403,
    recorded: float | None = None,
) -> Resource:
    """A request the policy decision point refused: outcome 4 with the reason code.

    `reason` is a code naming the rule that refused ("scope", "role", "label", "consent",
    "compartment"); `requested` is the target as the caller named it in the URL ("Observation/1").
    Nothing here describes the hidden resource itself: not its labels, its patient or its content.
    """
    entities = [_resource_entity(requested)] if requested else []
    if query:
        entities.append(_query_entity(query))
    return _event(
        ctx,
        source,
        type_=_coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        subtype=[_coding(RESTFUL_INTERACTION, interaction.value)],
        action=action_for(interaction),
        outcome=Outcome.MINOR_FAILURE,
        outcome_desc=f"Access denied ({reason}); HTTP {status}",
        client_address=client_address,
        entities=entities,
        recorded=recorded,
    )


def login_failure_event(
    source: AuditSource,
    *,
    reason: str,
    request_id: str | None = None,
    client_address: str | None = None,
    recorded: float | None = None,
) -> Resource:
    """A failed authentication (401). Nothing from the token is kept: it was not trustworthy."""
    event: Resource = {
        "resourceType": "AuditEvent",
        "type": _coding(DCM, "110114", "User Authentication"),
        "subtype": [_coding(DCM, "110122", "Login")],
        "action": Action.EXECUTE.value,
        "recorded": instant(time.time() if recorded is None else recorded),
        "outcome": Outcome.MINOR_FAILURE.value,
        "outcomeDesc": f"Authentication failed ({reason})",
        "agent": [_unknown_user_agent(client_address), _server_agent(source)],
        "source": source.to_fhir(),
    }
    if request_id:
        event["entity"] = [_request_id_entity(request_id)]
    return event


def consent_event(
    ctx: RequestContext,
    source: AuditSource,
    *,
    permit: bool,
    patient: str,
    consents: Iterable[str] = (),
    client_address: str | None = None,
    recorded: float | None = None,
) -> Resource:
    """A consent authorization decision (BALP AuthZconsent): outcome 0 permit, 4 deny."""
    entities = [_patient_entity(_patient_ref(patient))]
    entities += [_security_entity({"reference": ref}) for ref in consents]
    return _event(
        ctx,
        source,
        type_=_coding(DCM, "110113", "Security Alert"),
        subtype=[
            _coding(BALP_AUTHZ_SUBTYPE, "AuthZ-Consent", "Authorization Decision using Roles and Consent")
        ],
        action=Action.EXECUTE,
        outcome=Outcome.SUCCESS if permit else Outcome.MINOR_FAILURE,
        outcome_desc="Consent permits access" if permit else "Consent denies access",
        client_address=client_address,
        entities=entities,
        recorded=recorded,
    )


def disclosure_event(
    recipient: RequestContext,
    source: AuditSource,
    *,
    shared: bool,
    resource: str,
    patients: Iterable[str],
    reason: str,
    consents: Iterable[str] = (),
    recorded: float | None = None,
) -> Resource:
    """Outbound sharing decided (DCM 110106 Export): the recipient system is the agent, `reason`
    the decision's kind (granted, consent, label, scope ...; never the labels themselves)."""
    entities = [_resource_entity(resource), *(_patient_entity(_patient_ref(p)) for p in patients)]
    entities += [_security_entity({"reference": ref}) for ref in consents]
    return _event(
        recipient,
        source,
        type_=_coding(DCM, "110106", "Export"),
        subtype=[_coding(DCM, "110106", "Export")],
        action=Action.READ,
        outcome=Outcome.SUCCESS if shared else Outcome.MINOR_FAILURE,
        outcome_desc=f"Shared with the recipient ({reason})" if shared else f"Withheld ({reason})",
        client_address=None,
        entities=entities,
        recorded=recorded,
    )


def break_glass_event(
    ctx: RequestContext,
    source: AuditSource,
    *,
    started: bool,
    grant_id: str,
    patient: str,
    status: int = 200,
    outcome_desc: str | None = None,
    client_address: str | None = None,
    recorded: float | None = None,
) -> Resource:
    """Break-glass grant opened (DCM 110127) or ended (DCM 110138), with the grant as an entity.

    The caller's free-text justification is not recorded here: it may name the patient.
    """
    subtype = (
        _coding(DCM, "110127", "Emergency Override Started")
        if started
        else _coding(DCM, "110138", "Emergency Override Stopped")
    )
    grant = {"identifier": {"system": BREAK_GLASS_SYSTEM, "value": grant_id}}
    return _event(
        ctx,
        source,
        type_=_coding(DCM, "110113", "Security Alert"),
        subtype=[subtype],
        action=Action.EXECUTE,
        outcome=outcome_for_status(status),
        outcome_desc=outcome_desc or ("Emergency access granted" if started else "Emergency access ended"),
        client_address=client_address,
        entities=[_patient_entity(_patient_ref(patient)), _security_entity(grant)],
        policies=(break_glass_policy(grant_id),),
        recorded=recorded,
    )


def instant(epoch: float) -> str:
    """An R4 instant in UTC to the millisecond (as fhir.dates.format_instant, at a third of its cost)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def break_glass_policy(grant_id: str) -> str:
    """The agent.policy URI that marks an access made under a break-glass grant."""
    return f"{BREAK_GLASS_SYSTEM}:{grant_id}"


def per_patient(event: Resource) -> list[Resource]:
    """BALP's strict form: one copy of `event` per Patient entity, each naming only that patient.

    An event with no or one Patient entity comes back alone and unchanged.
    """
    entities = event.get("entity", [])
    patients = [e for e in entities if _is_patient_entity(e)]
    if len(patients) <= 1:
        return [event]
    others = [e for e in entities if not _is_patient_entity(e)]
    return [{**event, "entity": [*others, p]} for p in patients]


# --- pieces -----------------------------------------------------------------------------------


def _event(
    ctx: RequestContext,
    source: AuditSource,
    *,
    type_: Resource,
    subtype: list[Resource],
    action: Action,
    outcome: Outcome,
    outcome_desc: str,
    client_address: str | None,
    entities: list[Resource],
    policies: Sequence[str] = (),
    recorded: float | None,
) -> Resource:
    agents = [_user_agent(ctx, client_address, policies), _server_agent(source)]
    client_id = ctx.claims.get("client_id") or ctx.claims.get("azp")
    if isinstance(client_id, str) and client_id:
        agents.append(_client_agent(client_id, client_address))
    event: Resource = {
        "resourceType": "AuditEvent",
        "type": type_,
        "subtype": subtype,
        "action": action.value,
        "recorded": instant(time.time() if recorded is None else recorded),
        "outcome": outcome.value,
        "outcomeDesc": outcome_desc,
        "agent": agents,
        "source": source.to_fhir(),
    }
    all_entities = [*entities, _request_id_entity(ctx.request_id)] if ctx.request_id else entities
    if all_entities:
        event["entity"] = all_entities
    return event


def _coding(system: str, code: str, display: str | None = None) -> Resource:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _user_agent(ctx: RequestContext, client_address: str | None, policies: Sequence[str]) -> Resource:
    system_user = ctx.subject is not None and ctx.subject.startswith("system:")
    agent: Resource = {
        "type": {
            "coding": [
                _coding(DCM, "110150", "Application")
                if system_user
                else _coding(PARTICIPATION_TYPE, "IRCP", "information recipient")
            ]
        },
        "requestor": True,
    }
    who = _who(ctx)
    if who:
        agent["who"] = who
    if ctx.roles:
        agent["role"] = [{"coding": [_coding(ROLE_SYSTEM, role)]} for role in ctx.roles]
    policy = [f"{JTI_POLICY}{ctx.jti}"] if ctx.jti else []
    policy += [p for p in policies if p not in policy]
    if policy:
        agent["policy"] = policy
    network = _network(client_address)
    if network:
        agent["network"] = network
    if ctx.purpose_of_use:
        agent["purposeOfUse"] = [{"coding": [_coding(ACT_REASON, code)]} for code in ctx.purpose_of_use]
    return agent


def _who(ctx: RequestContext) -> Resource | None:
    """fhirUser reference when the token has one, and the subject as an identifier from the issuer."""
    who: Resource = {}
    if ctx.fhir_user:
        who["reference"] = ctx.fhir_user
    if ctx.subject:
        identifier = {"value": ctx.subject}
        issuer = ctx.claims.get("iss")
        if isinstance(issuer, str) and issuer:
            identifier = {"system": issuer, "value": ctx.subject}
        who["identifier"] = identifier
    return who or None


def _unknown_user_agent(client_address: str | None) -> Resource:
    agent: Resource = {
        "type": {"coding": [_coding(PARTICIPATION_TYPE, "IRCP", "information recipient")]},
        "requestor": True,
    }
    network = _network(client_address)
    if network:
        agent["network"] = network
    return agent


def _server_agent(source: AuditSource) -> Resource:
    return {
        "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
        "who": {"identifier": {"value": source.observer}},
        "requestor": False,
    }


def _client_agent(client_id: str, client_address: str | None) -> Resource:
    agent: Resource = {
        "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
        "who": {"identifier": {"value": client_id}},
        "requestor": False,
    }
    network = _network(client_address)
    if network:
        agent["network"] = network
    return agent


def _network(address: str | None) -> Resource | None:
    """R4 network-type: 2 for an IP address, 1 for a machine name."""
    if not address:
        return None
    return {"address": address, "type": _network_type(address)}


@functools.lru_cache(maxsize=4096)
def _network_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def _patient_ref(patient: str) -> str:
    return patient if patient.startswith("Patient/") else f"Patient/{patient}"


def _split_patients(resources: Iterable[str], patients: Iterable[str]) -> tuple[list[str], list[str]]:
    """Patient resources become Patient entities (type Person, role Patient); others stay domain objects."""
    others: list[str] = []
    patient_refs: list[str] = []
    for ref in resources:
        if ref.startswith("Patient/"):
            base = "/".join(ref.split("/")[:2])  # Patient/1/_history/2 is the patient Patient/1
            if base not in patient_refs:
                patient_refs.append(base)
        elif ref not in others:
            others.append(ref)
    for patient in patients:
        ref = _patient_ref(patient)
        if ref not in patient_refs:
            patient_refs.append(ref)
    return others, patient_refs


def _resource_entity(ref: str) -> Resource:
    return {
        "what": {"reference": ref},
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
    }


def _patient_entity(ref: str) -> Resource:
    return {
        "what": {"reference": ref},
        "type": _coding(ENTITY_TYPE, "1", "Person"),
        "role": _coding(OBJECT_ROLE, "1", "Patient"),
    }


def _security_entity(what: Resource) -> Resource:
    return {
        "what": what,
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "13", "Security Resource"),
    }


def _query_entity(query: str | bytes) -> Resource:
    raw = query.encode() if isinstance(query, str) else query
    return {
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "24", "Query"),
        "query": base64.b64encode(raw).decode("ascii"),
    }


def _request_id_entity(request_id: str) -> Resource:
    return {
        "what": {"identifier": {"value": request_id}},
        "type": _coding(BALP_ENTITY_TYPE, "XrequestId", "transport specific unique identifier"),
    }


def _is_patient_entity(entity: Resource) -> bool:
    role = entity.get("role", {})
    return bool(role.get("system") == OBJECT_ROLE and role.get("code") == "1")
