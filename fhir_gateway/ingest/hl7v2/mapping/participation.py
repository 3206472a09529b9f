"""ROL and PRT → participation of a person in what the segment before them made (IG message maps).

A ROL/PRT applies to the segment group it sits in, i.e. to the last segment before it that is not
itself a ROL, PRT, NTE or ARV (IG ADT_A01 / ORU_R01 / OML_O21 message maps):
- after PID/PD1: a primary care provider (ROL-3 / PRT-4 "PP") → Patient.generalPractitioner; any
  other role → a participant of the patient's CareTeam (ROL[CareTeam], PRT[CareTeam]);
- after PV1/PV2 → Encounter.participant (type ROL-3 / PRT-4, individual, period ROL-5/6, PRT-11/12);
- after ORC: the ordering provider (OP) → ServiceRequest.requester of the order's OBR, when ORC-12
  and OBR-16 name none;
- after OBR: OP → ServiceRequest.requester; in a result group ARI/TN/TR/RO → DiagnosticReport.
  performer and PRI → DiagnosticReport.resultsInterpreter; in an order group those roles →
  ServiceRequest.performer;
- after OBX → Observation.performer; after PR1 → Procedure.performer (function = the role);
- after SPM: the specimen collector (SC) → Specimen.collection.collector.
The person (ROL-4, PRT-5) is an XCN, referenced the way every mapper references one (`practitioner`).
PRT segments naming only a device, location or organisation, and ROL/PRT with action code DE
(delete: the IG asks to end the relationship, which a PUT of this message cannot express), add
nothing.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import (
    REQUIRED_FIELD_MISSING,
    MapContext,
    Reference,
)
from fhir_gateway.ingest.hl7v2.mapping.datatypes import Json, Rep, codeable, comp, period
from fhir_gateway.ingest.hl7v2.mapping.encounter import PARTICIPATION
from fhir_gateway.ingest.hl7v2.mapping.resources import practitioner

TRANSPARENT = frozenset({"ROL", "PRT", "NTE", "ARV"})
DELETE = frozenset({"D", "DE"})  # action code (table 0287 DE; the IG's PRT notes write D)


def map_rol(seg: Segment, ctx: MapContext) -> None:
    _participate(seg, ctx, role_at=3, person_at=4, period_at=(5, 6), table="0443")


def map_prt(seg: Segment, ctx: MapContext) -> None:
    _participate(seg, ctx, role_at=4, person_at=5, period_at=(11, 12), table="0912")


def _participate(
    seg: Segment, ctx: MapContext, *, role_at: int, person_at: int, period_at: tuple[int, int], table: str
) -> None:
    if ctx.patient is None or seg.value(2).upper() in DELETE:
        return
    people = [p for p in (practitioner(r, ctx) for r in seg.repetitions(person_at)) if p]
    if not people:
        if seg.name == "ROL":
            ctx.warn(seg, person_at, REQUIRED_FIELD_MISSING, "ROL-4 (role person) is empty; ROL skipped")
        return
    role_rep = next(iter(seg.repetitions(role_at)), None)
    code = comp(role_rep, 1).upper() if role_rep else ""
    role = _role(role_rep, table)
    when = period(*(ctx.when(seg, n) for n in period_at))
    anchor = _anchor(seg, ctx)
    for person in people:
        if anchor in ("PID", "PD1"):
            _for_patient(ctx, code, role, person, when)
        elif anchor in ("PV1", "PV2"):
            _for_encounter(ctx, code, role, person, when)
        elif anchor == "ORC" and code == tables.ORDERING_PROVIDER:
            ctx.requester = ctx.requester or person
        elif anchor == "OBR":
            _for_order(ctx, code, person)
        elif anchor in ("OBX", "PR1", "SPM"):
            _for_last(ctx, code, role, person)


def _anchor(seg: Segment, ctx: MapContext) -> str:
    # MSH is never transparent, so there is always one
    return next(b.name for b in reversed(ctx.message.segments[: seg.index]) if b.name not in TRANSPARENT)


def _role(rep: Rep | None, table: str) -> Json | None:
    """ROL-3 / PRT-4 as a CodeableConcept (the v2 table is the system when the sender names none)."""
    concept = codeable(rep)
    if concept is None or rep is None:
        return None
    if not comp(rep, 3):  # a coding system the sender named (even a local one) is kept as it is
        for coding in concept.get("coding", [])[:1]:
            coding.setdefault("system", tables.V2_SYSTEM.format(table=table))
    return concept


def _with_v3(role: Json | None, code: str) -> Json | None:
    """The role plus its v3 ParticipationType translation (the one PV1's participants use)."""
    v3 = tables.PARTICIPATION_0443.get(code)
    if v3 is None:
        return role
    translated = {"system": PARTICIPATION, "code": v3[0], "display": v3[1]}
    return {**(role or {}), "coding": [*(role or {}).get("coding", []), translated]}


def _add(target: Json, key: str, value: Json) -> None:
    values = target.setdefault(key, [])
    if value not in values:
        values.append(value)


def _for_patient(ctx: MapContext, code: str, role: Json | None, person: Reference, when: Json | None) -> None:
    patient = ctx.resolve(ctx.patient)
    assert patient is not None and ctx.patient_id is not None  # _participate checked ctx.patient
    if code == tables.PRIMARY_CARE_PROVIDER:
        _add(patient, "generalPractitioner", person)
        return
    team: Json = {"resourceType": "CareTeam", "status": "active", "subject": ctx.patient}
    team = ctx.keep(team, stable_id("CareTeam", f"Patient/{ctx.patient_id}", ctx.source))
    participant: Json = {"member": person}
    if role:
        participant["role"] = [role]
    if when:
        participant["period"] = when
    _add(team, "participant", participant)


def _for_encounter(
    ctx: MapContext, code: str, role: Json | None, person: Reference, when: Json | None
) -> None:
    encounter = ctx.resolve(ctx.encounter)
    if encounter is None:
        return
    participant: Json = {"individual": person}
    kind = _with_v3(role, code)
    if kind:
        participant["type"] = [kind]
    if when:
        participant["period"] = when
    _add(encounter, "participant", participant)


def _for_order(ctx: MapContext, code: str, person: Reference) -> None:
    request = ctx.order if ctx.order is not None and ctx.order["resourceType"] == "ServiceRequest" else None
    if code == tables.ORDERING_PROVIDER:
        if request is not None:
            request.setdefault("requester", person)
        return
    performs = code in tables.RESULT_PERFORMERS_0912
    if ctx.report is not None:
        if performs:
            _add(ctx.report, "performer", person)
        elif code == tables.PRINCIPAL_RESULT_INTERPRETER:
            _add(ctx.report, "resultsInterpreter", person)
    elif request is not None and (performs or code == tables.PRINCIPAL_RESULT_INTERPRETER):
        _add(request, "performer", person)


def _for_last(ctx: MapContext, code: str, role: Json | None, person: Reference) -> None:
    target = ctx.last
    res_type = target.get("resourceType") if target is not None else None
    if target is None:
        return
    if res_type == "Observation":
        _add(target, "performer", person)
    elif res_type == "Procedure":
        performer: Json = {"actor": person}
        if role:
            performer["function"] = role
        _add(target, "performer", performer)
    elif res_type == "Specimen" and code == tables.SPECIMEN_COLLECTOR:
        target.setdefault("collection", {}).setdefault("collector", person)
