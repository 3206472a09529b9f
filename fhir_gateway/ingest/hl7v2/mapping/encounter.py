"""PV1, PV2 → Encounter (IG: Segment PV1 to Encounter); NK1 → RelatedPerson (Segment NK1).

The Encounter id comes from PV1-19 (visit number) and its assigning authority, so admit, transfer,
update and discharge messages of one visit update one Encounter; its status follows the trigger
event (A01 in-progress, A03 finished, A04/A05 planned, A11 cancelled ...), else PV1-44/45.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import DATA_TYPE_ERROR, MapContext, Reference
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    Rep,
    address,
    authority,
    code_in,
    codeable,
    comp,
    contact_points,
    date,
    date_time,
    human_name,
    identifier,
    number,
    period,
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.resources import location, name_text, practitioner

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# PV1 field → ParticipationType (attending, referring, consulting, admitting)
PARTICIPANTS = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
    (52, "PART", "Participation"),  # other healthcare provider
)
# PV1 field → Encounter.location status (assigned, prior, temporary, pending, prior temporary); the
# assigned location of a pre-admit (PV1-2 P) is only planned (IG PV1[Encounter]).
LOCATIONS = ((3, "active"), (6, "completed"), (11, "active"), (42, "reserved"), (43, "completed"))
# PV1 field → Encounter.hospitalization element (CWE[CodeableConcept], the field's v2 table)
HOSPITALIZATION = (
    (14, "admitSource", "0023"),
    (13, "reAdmission", "0092"),
    (36, "dischargeDisposition", "0112"),
)
HOSPITALIZATION_LISTS = (
    (15, "specialArrangement", "0009"),
    (16, "specialCourtesy", "0099"),
    (38, "dietPreference", "0114"),
)
PLANNED_START = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedStartDate"
PLANNED_END = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate"
UCUM = "http://unitsofmeasure.org"


def map_pv1(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None:
        return
    encounter: Json = {"resourceType": "Encounter", "subject": ctx.patient}
    patient_class = seg.value(2).upper()
    mapped_class = tables.PATIENT_CLASS_0004.get(patient_class)
    if mapped_class:
        system, code, display = mapped_class
        encounter["class"] = {"system": system, "code": code, "display": display}
    elif patient_class:
        encounter["class"] = {"system": tables.V2_SYSTEM.format(table="0004"), "code": patient_class}
    else:
        encounter["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK"}
    start = date_time(seg.value(44), ctx.tz)
    end = date_time(seg.value(45), ctx.tz)
    if ctx.message.message_code == "ADT" and ctx.message.trigger == "A13":
        end = None  # cancel discharge: PV1-45 is the discharge being taken back, the visit goes on
    encounter["status"] = _status(ctx.message.trigger, ctx.message.message_code, start, end)
    put(encounter, "period", period(start, end))
    visit = next((r for r in seg.repetitions(19) if comp(r, 1)), None)
    ids = []
    if visit:
        vn = identifier(visit)
        if vn is not None:
            vn.setdefault("type", {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": "VN"}]})
            ids.append(vn)
    ids.extend(i for i in (identifier(r) for r in seg.repetitions(50)) if i)  # alternate visit ids
    pre = identifier(seg.field(5)[0]) if seg.has(5) else None
    put(encounter, "identifier", ids)
    put(encounter, "type", [c for c in (code_in(r, "0007") for r in seg.repetitions(4)) if c])
    put(encounter, "serviceType", code_in(seg.field(10)[0], "0069") if seg.has(10) else None)
    participants = []
    for fld, code, display in PARTICIPANTS:
        for rep in seg.repetitions(fld):
            who = practitioner(rep, ctx)
            if who:
                kind = {"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}
                participants.append({"type": [kind], "individual": who})
    put(encounter, "participant", participants)
    locations = []
    for fld, status in LOCATIONS:
        where = location(seg.field(fld)[0], ctx) if seg.has(fld) else None
        if where:
            planned = fld == 3 and patient_class == "P"
            locations.append({"location": where, "status": "planned" if planned else status})
    put(encounter, "location", locations)
    hosp: Json = {}
    if pre:
        hosp["preAdmissionIdentifier"] = pre
    for fld, key, table in HOSPITALIZATION:
        put(hosp, key, code_in(seg.field(fld)[0], table) if seg.has(fld) else None)
    for fld, key, table in HOSPITALIZATION_LISTS:
        put(hosp, key, [c for c in (code_in(r, table) for r in seg.repetitions(fld)) if c])
    destination = seg.value(37, 2) or seg.value(37)  # DLD-1 discharge location (code ^ text)
    put(hosp, "destination", {"display": destination} if destination else None)
    put(encounter, "hospitalization", hosp)
    if visit:
        enc_id = stable_id("Encounter", authority(visit, 4) or ctx.source, comp(visit, 1))
    else:
        enc_id = ctx.message_id("Encounter", seg)
    encounter = ctx.keep(encounter, enc_id)
    ctx.encounter = ctx.ref(encounter)
    ctx.last = encounter


def _status(trigger: str, code: str, start: str | None, end: str | None) -> str:
    if code in ("ADT", "BAR") and trigger in tables.ENCOUNTER_STATUS_BY_TRIGGER:
        status = tables.ENCOUNTER_STATUS_BY_TRIGGER[trigger]
        if status == "in-progress" and end:
            return "finished"
        return status
    if end:
        return "finished"
    return "in-progress" if start else "unknown"


def map_pv2(seg: Segment, ctx: MapContext) -> None:
    """PV2 adds to the Encounter its PV1 made (IG PV2[Encounter]): PV2-3 admit reason → reasonCode,
    PV2-8/9 expected admit/discharge → the R5 plannedStartDate/plannedEndDate extensions, PV2-11
    actual length of stay → length (days), PV2-13 referral source → a referrer participant,
    PV2-25 visit priority → priority (v3 ActPriority)."""
    if ctx.encounter is None or ctx.last is None or ctx.last.get("resourceType") != "Encounter":
        return
    encounter = ctx.last
    reason = codeable(seg.field(3)[0]) if seg.has(3) else None
    if reason:
        encounter.setdefault("reasonCode", []).append(reason)
    for fld, url in ((8, PLANNED_START), (9, PLANNED_END)):
        when = ctx.when(seg, fld)
        if when:
            encounter.setdefault("extension", []).append({"url": url, "valueDateTime": when})
    days = number(seg.value(11))
    if days is not None:
        encounter["length"] = {"value": days, "unit": "days", "system": UCUM, "code": "d"}
    elif seg.value(11):
        ctx.warn(seg, 11, DATA_TYPE_ERROR, "PV2-11 (actual length of stay) is not a number; ignored")
    for rep in seg.repetitions(13):
        who = practitioner(rep, ctx)
        if who:
            kind = {"coding": [{"system": PARTICIPATION, "code": "REF", "display": "referrer"}]}
            encounter.setdefault("participant", []).append({"type": [kind], "individual": who})
    put(encounter, "priority", _priority(next(iter(seg.repetitions(25)), None)))


def _priority(rep: Rep | None) -> Json | None:
    """PV2-25 (table 0217) → v3 ActPriority (ConceptMap EncounterPriority), the v2 code beside it."""
    concept = code_in(rep, "0217")
    v3 = tables.VISIT_PRIORITY_0217.get(comp(rep, 1)) if rep else None
    if concept is None or v3 is None:
        return concept
    translated = {"system": tables.ACT_PRIORITY, "code": v3[0], "display": v3[1]}
    return {"coding": [translated, *concept["coding"]]}


def relationship(rep: Rep) -> Json | None:
    """A table 0063 relationship (NK1-3, GT1-11) as a v3 RoleCode, else the v2 code, else its text."""
    code = comp(rep, 1).upper()
    v3 = tables.RELATIONSHIP_0063.get(code)
    if v3:
        return {"coding": [{"system": tables.ROLE_CODE_SYSTEM, "code": v3}]}
    if code:
        return {"coding": [{"system": tables.V2_SYSTEM.format(table="0063"), "code": code}]}
    return {"text": comp(rep, 2)} if comp(rep, 2) else None


def map_nk1(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    person: Json = {"resourceType": "RelatedPerson", "patient": ctx.patient, "active": True}
    names = [n for n in (human_name(r) for r in seg.repetitions(2)) if n]
    put(person, "name", names)
    relationships = [r for r in (relationship(rep) for rep in seg.repetitions(3)) if r]
    for rep in seg.repetitions(7):
        role = code_in(rep, "0131")
        if role:
            relationships.append(role)
    put(person, "relationship", relationships)
    put(person, "address", [a for a in (address(r) for r in seg.repetitions(4)) if a])
    put(person, "telecom", contact_points(seg.repetitions(5), seg.repetitions(6)))
    put(person, "period", period(date(seg.value(8)), date(seg.value(9))))
    put(person, "identifier", [i for i in (identifier(r) for r in seg.repetitions(33)) if i])
    if len(person) <= 3:  # nothing but the patient: an empty NK1
        return
    key = "|".join([name_text(names[0]) if names else "", seg.value(3, 1), seg.value(1)])
    ctx.add(person, stable_id("RelatedPerson", ctx.patient_id, key))


__all__ = ["Reference", "map_nk1", "map_pv1", "map_pv2", "relationship"]
