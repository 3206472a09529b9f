"""PID, PD1 → Patient; MRG → Patient.link (merges A34-A41, A47...). IG: Segment PID to Patient.

The Patient id is `stable_id("Patient", PID-3.4 namespace id, PID-3.1)` of the first medical record
number in PID-3 (else its first identifier; PID-2 and PID-4 for v2.3 senders), so every message —
and a DICOM study whose IssuerOfPatientID is the same namespace — lands on the same Patient.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import (
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    MapContext,
)
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
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.demographics import map_demographics
from fhir_gateway.ingest.hl7v2.mapping.resources import organization, practitioner

US_SSN = "http://hl7.org/fhir/sid/us-ssn"
MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"


def key_identifier(seg: Segment) -> Rep | None:
    """The CX that identifies the patient: PID-3's first MR, else its first; then PID-2, PID-4."""
    reps = [r for r in seg.repetitions(3) if comp(r, 1)]
    for rep in reps:
        if comp(rep, 5).upper() == "MR":
            return rep
    if reps:
        return reps[0]
    for n in (2, 4):
        others = [r for r in seg.repetitions(n) if comp(r, 1)]
        if others:
            return others[0]
    return None


def patient_id(rep: Rep) -> str:
    return stable_id("Patient", authority(rep, 4), comp(rep, 1))


def map_pid(seg: Segment, ctx: MapContext) -> None:
    key = key_identifier(seg)
    # A new patient group: anchors of the previous one no longer apply.
    ctx.encounter = ctx.order = ctx.report = ctx.document = ctx.specimen = ctx.requester = None
    ctx.specimen_header, ctx.group_specimens = False, []
    if key is None:
        ctx.error(seg, 3, REQUIRED_FIELD_MISSING, "PID-3 (patient identifier list) is required")
        ctx.patient = ctx.patient_id = None
        return
    patient: Json = {"resourceType": "Patient", "active": True}
    ids = [identifier(r) for r in seg.repetitions(3)]
    ids += [identifier(r) for n in (2, 4) for r in seg.repetitions(n)]
    for rep in seg.repetitions(18):
        acct = identifier(rep)
        if acct:
            acct.setdefault("type", {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": "AN"}]})
            ids.append(acct)
    ssn = seg.value(19)
    if ssn:
        ids.append(
            {
                "system": US_SSN,
                "value": ssn,
                "type": {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": "SS"}]},
            }
        )
    dl = seg.value(20)
    if dl:
        ids.append(
            {"value": dl, "type": {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": "DL"}]}}
        )
    put(patient, "identifier", _unique([i for i in ids if i]))
    put(patient, "name", [n for n in (human_name(r) for r in seg.repetitions(5)) if n])
    maiden = seg.value(6)
    if maiden:
        patient["extension"] = [{"url": MOTHERS_MAIDEN_NAME, "valueString": maiden}]
    raw_birth = seg.value(7)
    birth = date(raw_birth)
    if raw_birth and birth is None:
        ctx.warn(seg, 7, "102", "PID-7 (date of birth) is not a valid date; ignored")
    put(patient, "birthDate", birth)
    put(patient, "gender", gender(seg, 8, ctx))
    put(patient, "address", [a for a in (address(r) for r in seg.repetitions(11)) if a])
    put(patient, "telecom", contact_points(seg.repetitions(13), seg.repetitions(14)))
    language = codeable(seg.field(15)[0]) if seg.has(15) else None
    if language:
        patient["communication"] = [{"language": language, "preferred": True}]
    put(patient, "maritalStatus", code_in(seg.field(16)[0], "0002") if seg.has(16) else None)
    _multiple_birth(seg, patient)
    _deceased(seg, patient, ctx)
    map_demographics(seg, patient, ctx)
    patient = ctx.keep(patient, patient_id(key))
    ctx.patient, ctx.patient_id = ctx.ref(patient), patient["id"]


def gender(seg: Segment, fld: int, ctx: MapContext) -> str | None:
    """An administrative sex (PID-8, GT1-9; table 0001) as AdministrativeGender; else a warning."""
    sex = seg.value(fld)
    value = tables.lookup(tables.SEX_0001, sex) if sex else None
    if sex and value is None:
        ctx.warn(
            seg, fld, TABLE_VALUE_NOT_FOUND, f"{seg.name}-{fld} (administrative sex) is not in table 0001"
        )
    return value


def _multiple_birth(seg: Segment, patient: Json) -> None:
    flag = seg.value(24).upper()
    order = seg.value(25)
    if order.isdigit():
        patient["multipleBirthInteger"] = int(order)
    elif flag in ("Y", "N"):
        patient["multipleBirthBoolean"] = flag == "Y"


def _deceased(seg: Segment, patient: Json, ctx: MapContext) -> None:
    when = date_time(seg.value(29), ctx.tz)
    if when:
        patient["deceasedDateTime"] = when
    elif seg.value(30).upper() in ("Y", "N"):
        patient["deceasedBoolean"] = seg.value(30).upper() == "Y"


def _unique(ids: list[Json]) -> list[Json]:
    seen: set[tuple[str, str]] = set()
    out = []
    for i in ids:
        key = (i.get("system", ""), i["value"])
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


def map_pd1(seg: Segment, ctx: MapContext) -> None:
    """PD1-3 primary facility → managingOrganization; PD1-4 primary care provider → generalPractitioner."""
    patient = _current_patient(ctx)
    if patient is None:
        return
    put(patient, "managingOrganization", organization(seg.field(3)[0] if seg.has(3) else None))
    gps = [p for p in (practitioner(r, ctx) for r in seg.repetitions(4)) if p]
    put(patient, "generalPractitioner", gps)


def map_mrg(seg: Segment, ctx: MapContext) -> None:
    """MRG-1 prior patient identifier: the old Patient is `replaced-by` the current one (PID)."""
    patient = _current_patient(ctx)
    prior = next((r for r in seg.repetitions(1) if comp(r, 1)), None)
    if patient is None or prior is None:  # MRG without MRG-1: an account/visit move (A06, A07 …)
        return
    old_id = patient_id(prior)
    if old_id == patient["id"]:
        return
    old: Json = {"resourceType": "Patient", "active": False}
    put(old, "identifier", [identifier(prior)])
    old = ctx.keep(old, old_id)
    old_ref = ctx.ref(old)
    old["link"] = [{"other": dict(ctx.patient or {}), "type": "replaced-by"}]
    patient.setdefault("link", []).append({"other": old_ref, "type": "replaces"})


def _current_patient(ctx: MapContext) -> Json | None:
    if ctx.patient_id is None:
        return None
    entry = ctx.entries.get(("Patient", ctx.patient_id))
    return entry.resource if entry else None
