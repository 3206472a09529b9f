"""AL1/IAM → AllergyIntolerance, DG1/PRB → Condition, PR1 → Procedure (IG segment maps).

Ids are derived from the patient and the coded concept (or the segment's own identifier: DG1-20,
PRB-4, PR1-19), so an allergy or diagnosis repeated in every ADT update stays one resource.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, MapContext
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    Rep,
    code_in,
    codeable,
    comp,
    date_time,
    ei,
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.resources import practitioner

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
DELETE = "D"  # DG1-21 diagnosis action code (table 0206)


def _first(seg: Segment, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None)


def _concept_key(rep: Rep | None) -> str:
    return f"{comp(rep, 3)}|{comp(rep, 1) or comp(rep, 2)}" if rep else ""


def map_al1(seg: Segment, ctx: MapContext) -> None:
    _allergy(seg, ctx, type_at=2, code_at=3, severity_at=4, reaction_at=5, onset_at=6)


def map_iam(seg: Segment, ctx: MapContext) -> None:
    """IAM (v2.5+ allergy with action code): IAM-6 D (delete) marks the allergy entered-in-error."""
    _allergy(seg, ctx, type_at=2, code_at=3, severity_at=4, reaction_at=5, onset_at=11, action_at=6)


def _allergy(
    seg: Segment,
    ctx: MapContext,
    *,
    type_at: int,
    code_at: int,
    severity_at: int,
    reaction_at: int,
    onset_at: int,
    action_at: int = 0,
) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    code_rep = _first(seg, code_at)
    code = codeable(code_rep)
    if code is None:
        ctx.error(seg, code_at, REQUIRED_FIELD_MISSING, f"{seg.name}-{code_at} (allergen) is required")
        return
    allergy: Json = {"resourceType": "AllergyIntolerance", "patient": ctx.patient, "code": code}
    allergy["clinicalStatus"] = {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]}
    kind = seg.value(type_at).upper()
    category = tables.ALLERGY_CATEGORY_0127.get(kind)
    if category:
        allergy["category"] = [category]
    if kind in ("AA", "DA", "FA", "EA", "MA", "PA", "LA", "PLA"):
        allergy["type"] = "allergy"
    elif kind in ("MC", "FI", "MI"):
        allergy["type"] = "intolerance"
    severity = seg.value(severity_at).upper()
    put(allergy, "criticality", tables.ALLERGY_CRITICALITY_0128.get(severity))
    manifestations = [
        {"text": comp(r, 2) or comp(r, 1)} if len(r) > 1 else {"text": comp(r, 1)}
        for r in seg.repetitions(reaction_at)
    ]
    manifestations = [m for m in manifestations if m["text"]]
    if manifestations:
        reaction: Json = {"manifestation": manifestations}
        put(reaction, "severity", tables.ALLERGY_SEVERITY_0128.get(severity))
        allergy["reaction"] = [reaction]
    put(allergy, "onsetDateTime", date_time(seg.value(onset_at), ctx.tz))
    if action_at and seg.value(action_at).upper() == "D":
        allergy["verificationStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "entered-in-error",
                }
            ]
        }
        del allergy["clinicalStatus"]  # ait-2: no clinical status on an entered-in-error allergy
    res_id = stable_id("AllergyIntolerance", f"Patient/{ctx.patient_id}", _concept_key(code_rep))
    ctx.last = ctx.keep(allergy, res_id)


def _required_code(seg: Segment, ctx: MapContext, what: str) -> Json | None:
    """DG1-3 / PR1-3 (the code), else field 4 (its description) as text; None, with a warning naming
    the field, when both are empty: a diagnosis or procedure without either says nothing."""
    code = codeable(_first(seg, 3)) or ({"text": seg.value(4)} if seg.value(4) else None)
    if code is None:
        name = seg.name
        ctx.warn(seg, 3, REQUIRED_FIELD_MISSING, f"{name}-3 ({what} code) is empty; the {name} was skipped")
    return code


def map_dg1(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    code_rep = _first(seg, 3)
    code = _required_code(seg, ctx, "diagnosis")
    if code is None:
        return
    condition: Json = {"resourceType": "Condition", "subject": ctx.patient, "code": code}
    condition["category"] = [
        {"coding": [{"system": tables.CONDITION_CATEGORY_SYSTEM, "code": "encounter-diagnosis"}]}
    ]
    if code_rep and seg.value(4):
        code.setdefault("text", seg.value(4))  # IG DG1-4 → code.text
    put(condition, "encounter", ctx.encounter)
    put(condition, "onsetDateTime", date_time(seg.value(5), ctx.tz))
    put(condition, "recordedDate", date_time(seg.value(19), ctx.tz))
    put(condition, "asserter", practitioner(_first(seg, 16), ctx))
    if seg.value(21).upper() == DELETE:  # IG DG1-21 action code D → entered-in-error (A, U map to nothing)
        condition["verificationStatus"] = {
            "coding": [{"system": CONDITION_VERIFICATION, "code": "entered-in-error"}]
        }
    ident = ei(_first(seg, 20))
    put(condition, "identifier", [ident] if ident else None)
    if ident is not None:
        res_id = stable_id("Condition", comp(_first(seg, 20) or [], 2) or ctx.source, ident["value"])
    else:
        res_id = stable_id("Condition", f"Patient/{ctx.patient_id}", _concept_key(code_rep) or seg.value(4))
    condition = ctx.keep(condition, res_id)
    _encounter_diagnosis(seg, ctx, condition)
    ctx.last = condition


def _encounter_diagnosis(seg: Segment, ctx: MapContext, condition: Json) -> None:
    """The diagnosis on its encounter (IG DG1[Encounter]): DG1-6 diagnosis type → use, DG1-15
    priority → rank; a deleted diagnosis (DG1-21 D) is no diagnosis of the encounter."""
    encounter = ctx.resolve(ctx.encounter)
    if encounter is None or seg.value(21).upper() == DELETE:
        return
    diagnosis: Json = {"condition": ctx.ref(condition)}
    kind = seg.value(6).upper()
    role = tables.DIAGNOSIS_ROLE_0052.get(kind)
    if role:
        diagnosis["use"] = {
            "coding": [{"system": tables.DIAGNOSIS_ROLE_SYSTEM, "code": role[0], "display": role[1]}]
        }
    else:
        put(diagnosis, "use", code_in(_first(seg, 6), "0052"))
    rank = seg.value(15)
    if rank.isdigit() and int(rank) > 0:
        diagnosis["rank"] = int(rank)
    elif rank:
        ctx.warn(seg, 15, DATA_TYPE_ERROR, "DG1-15 (diagnosis priority) is not a positive integer; ignored")
    known = encounter.setdefault("diagnosis", [])
    if not any(d["condition"] == diagnosis["condition"] for d in known):
        known.append(diagnosis)


def map_prb(seg: Segment, ctx: MapContext) -> None:
    """PRB (problem, PPR_PC1-PC3) → Condition on the problem list; PRB-1 DE → entered-in-error."""
    if ctx.patient is None or ctx.patient_id is None:
        return
    code_rep = _first(seg, 3)
    code = codeable(code_rep)
    if code is None:
        ctx.error(seg, 3, REQUIRED_FIELD_MISSING, "PRB-3 (problem id) is required")
        return
    condition: Json = {"resourceType": "Condition", "subject": ctx.patient, "code": code}
    condition["category"] = [
        {"coding": [{"system": tables.CONDITION_CATEGORY_SYSTEM, "code": "problem-list-item"}]}
    ]
    put(condition, "recordedDate", date_time(seg.value(2), ctx.tz))
    put(condition, "onsetDateTime", date_time(seg.value(16), ctx.tz))
    resolved = date_time(seg.value(9), ctx.tz)
    action = seg.value(1).upper()
    if action == "DE":
        condition["verificationStatus"] = {
            "coding": [{"system": CONDITION_VERIFICATION, "code": "entered-in-error"}]
        }
    else:
        status = "resolved" if resolved else "active"
        condition["clinicalStatus"] = {"coding": [{"system": CONDITION_CLINICAL, "code": status}]}
        put(condition, "abatementDateTime", resolved)
    ident = ei(_first(seg, 4))
    put(condition, "identifier", [ident] if ident else None)
    if ident is not None:
        res_id = stable_id("Condition", f"Patient/{ctx.patient_id}|problem", ident["value"])
    else:
        res_id = stable_id("Condition", f"Patient/{ctx.patient_id}|problem", _concept_key(code_rep))
    ctx.last = ctx.keep(condition, res_id)


def map_pr1(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    code_rep = _first(seg, 3)
    code = _required_code(seg, ctx, "procedure")
    if code is None:
        return
    procedure: Json = {"resourceType": "Procedure", "status": "completed", "subject": ctx.patient}
    procedure["code"] = code
    put(procedure, "encounter", ctx.encounter)
    performed = date_time(seg.value(5), ctx.tz)
    put(procedure, "performedDateTime", performed)
    put(procedure, "category", code_in(_first(seg, 6), "0230"))
    performers = [practitioner(r, ctx) for n in (8, 11, 12) for r in seg.repetitions(n)]
    put(procedure, "performer", [{"actor": p} for p in performers if p])
    ident = ei(_first(seg, 19))
    put(procedure, "identifier", [ident] if ident else None)
    if ident is not None:
        res_id = stable_id("Procedure", comp(_first(seg, 19) or [], 2) or ctx.source, ident["value"])
    else:
        key = f"{_concept_key(code_rep) or seg.value(4)}|{performed or ''}"
        res_id = stable_id("Procedure", f"Patient/{ctx.patient_id}", key)
    ctx.last = ctx.keep(procedure, res_id)
