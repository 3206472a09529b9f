"""IN1 (+ IN2) → Coverage (IG: Segment IN1 to Coverage); FT1 → ChargeItem (Segment FT1 to ChargeItem).

The payor is a logical reference (IN1-3 company id, IN1-4 name): no Organization is invented. An
IN1 that names a plan or policy but no company keeps its Coverage, the payor marked data-absent
(unknown): dropping it would lose the insured and the plan.
A Coverage's id is the patient + the company + the policy (IN1-36) or plan (IN1-2), so the same
insurance repeated in every ADT stays one Coverage.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    MapContext,
    Reference,
)
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    address,
    code_in,
    codeable,
    comp,
    date,
    date_time,
    human_name,
    identifier,
    number,
    period,
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.encounter import relationship
from fhir_gateway.ingest.hl7v2.mapping.header import DATA_ABSENT
from fhir_gateway.ingest.hl7v2.mapping.patient import US_SSN, gender
from fhir_gateway.ingest.hl7v2.mapping.resources import name_text, organization, practitioner

COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
IDENTIFIER_TYPE = tables.IDENTIFIER_TYPE_SYSTEM
RELATIONSHIP_0063 = {
    "SEL": "self",
    "SPO": "spouse",
    "CHD": "child",
    "PAR": "parent",
    "DOM": "common",
    "OTH": "other",
}


def map_in1(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    company_id = seg.value(3)
    company_name = seg.value(4)
    policy = seg.value(36)
    payor: Json = {}
    put(payor, "display", company_name)
    if company_id:
        payor["identifier"] = {"value": company_id}
    if not payor and not (seg.value(2) or policy):
        ctx.warn(
            seg, 3, REQUIRED_FIELD_MISSING, "IN1 names no insurance company, plan or policy; IN1 skipped"
        )
        ctx.last = None  # its IN2 must not enrich the Coverage of the insurance before it
        return
    if not payor:  # the plan (IN1-2) or policy is known: keep it, the payor (1..1) marked unknown
        ctx.warn(seg, 3, REQUIRED_FIELD_MISSING, "IN1-3/IN1-4 (insurance company) are empty; payor unknown")
        payor = {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}
    coverage: Json = {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": ctx.patient,
        "payor": [payor],
    }
    put(coverage, "subscriberId", policy)
    put(coverage, "period", period(date(seg.value(12)), date(seg.value(13))))
    put(coverage, "type", code_in(next(iter(seg.repetitions(15)), None), "0086"))
    classes = []
    for value, name, kind in ((seg.value(2), seg.value(2, 2), "plan"), (seg.value(8), seg.value(9), "group")):
        if value:
            entry: Json = {"type": {"coding": [{"system": COVERAGE_CLASS, "code": kind}]}, "value": value}
            put(entry, "name", name)
            classes.append(entry)
    put(coverage, "class", classes)
    relation = RELATIONSHIP_0063.get(seg.value(17).upper())
    if relation:
        coverage["relationship"] = {"coding": [{"system": SUBSCRIBER_RELATIONSHIP, "code": relation}]}
    elif seg.value(17):
        ctx.warn(
            seg, 17, TABLE_VALUE_NOT_FOUND, "IN1-17 (relationship to patient) has no subscriber relationship"
        )
    put(coverage, "subscriber", ctx.patient if relation == "self" else _insured(seg, ctx))
    put(coverage, "order", int(seg.value(22)) if seg.value(22).isdigit() and seg.value(22) != "0" else None)
    key = f"{company_id or company_name}|{policy or seg.value(2)}"
    ctx.last = ctx.keep(coverage, stable_id("Coverage", f"Patient/{ctx.patient_id}", key))


def _insured(seg: Segment, ctx: MapContext) -> Reference | None:
    """IN1-16 name of insured, when the insured is not the patient → the subscriber, a RelatedPerson
    of the patient (IG IN1: subscriber(RelatedPerson) IF IN1-17 IS NOT 'patient') with IN1-17 as
    relationship, IN1-18 birth date, IN1-19 address and IN1-43 sex."""
    names = [n for n in (human_name(r) for r in seg.repetitions(16)) if n]
    if not names or ctx.patient_id is None:
        return None
    person: Json = {"resourceType": "RelatedPerson", "active": True, "patient": ctx.patient, "name": names}
    kind = next(iter(seg.repetitions(17)), None)
    put(person, "relationship", [r for r in (relationship(kind),) if r] if kind else None)
    put(person, "birthDate", date(seg.value(18)))
    put(person, "address", [a for a in (address(r) for r in seg.repetitions(19)) if a])
    put(person, "gender", gender(seg, 43, ctx))
    return ctx.add(person, stable_id("RelatedPerson", ctx.patient_id, f"insured|{name_text(names[0])}"))


def map_ft1(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None:
        return
    code = codeable(next(iter(seg.repetitions(7)), None))
    if code is None:
        ctx.error(seg, 7, REQUIRED_FIELD_MISSING, "FT1-7 (transaction code) is required")
        return
    charge: Json = {"resourceType": "ChargeItem", "status": "billable", "code": code, "subject": ctx.patient}
    put(charge, "context", ctx.encounter)
    start, end = date_time(seg.value(4, 1), ctx.tz), date_time(seg.value(4, 2), ctx.tz)
    if start and end:
        charge["occurrencePeriod"] = period(start, end)
    else:
        put(charge, "occurrenceDateTime", start)
    put(charge, "enteredDate", date_time(seg.value(5), ctx.tz))
    qty = number(seg.value(10))
    if qty is not None:
        charge["quantity"] = {"value": qty}
    put(charge, "priceOverride", _money(seg, 11, ctx))
    put(charge, "reason", [c for c in (codeable(r) for r in seg.repetitions(19)) if c])
    performer = practitioner(next(iter(seg.repetitions(20)), None), ctx)
    if performer:
        charge["performer"] = [{"actor": performer}]
    put(charge, "enterer", practitioner(next(iter(seg.repetitions(24)), None), ctx))
    transaction_id = seg.value(2)
    if transaction_id:
        charge["identifier"] = [{"value": transaction_id}]
        res_id = stable_id("ChargeItem", ctx.source, f"{comp(seg.field(2)[0], 1)}|{seg.value(3)}")
    else:
        res_id = ctx.message_id("ChargeItem", seg)
    ctx.last = ctx.keep(charge, res_id)


def _money(seg: Segment, fld: int, ctx: MapContext) -> Json | None:
    """A CP (FT1-11 extended amount, the charge's total) → Money: CP-1 is an MO whose quantity and
    denomination (ISO 4217 currency) are its subcomponents; CP-2 is the price type, no currency."""
    text = seg.value(fld)
    amount = number(text) if text else None
    if text and amount is None:
        ctx.warn(seg, fld, DATA_TYPE_ERROR, f"{seg.name}-{fld} (amount) is not a number; ignored")
    if amount is None:
        return None
    money: Json = {"value": amount}
    put(money, "currency", seg.value(fld, 1, 2).upper() or _currency_as_component(seg.value(fld, 2)))
    return money


def _currency_as_component(text: str) -> str:
    """Senders that write the CP as an MO (150.00^USD) put the currency in CP-2: a three-letter code
    there is an ISO 4217 currency (table 0205 price types are two letters: UP, TP …)."""
    return text.upper() if len(text) == 3 and text.isalpha() else ""


US_MEDICARE = "http://hl7.org/fhir/sid/us-medicare"
US_MEDICAID = "http://hl7.org/fhir/sid/us-medicaid"


def map_in2(seg: Segment, ctx: MapContext) -> None:
    """IN2 (insurance additional information) enriches the Coverage its IN1 made (IN2 follows IN1).

    IN2-6 Medicare and IN2-8 Medicaid numbers and IN2-61 patient member number → Coverage.identifier;
    IN2-72 patient's relationship to the insured (table 0344) → Coverage.relationship when IN1-17 gave
    none; IN2-70 insured's employer organisation → Coverage.policyHolder (as IN1-11 in the IG IN1 map);
    IN2-2 insured's SSN → the subscriber's identifier when the subscriber is the patient.
    """
    coverage = ctx.last
    if coverage is None or coverage.get("resourceType") != "Coverage":
        return
    ids = [
        _typed_id(seg.value(6), "MC", US_MEDICARE),
        _typed_id(seg.value(8), "MA", US_MEDICAID),
        *(_member(identifier(r)) for r in seg.repetitions(61)),
    ]
    for ident in ids:
        if ident and ident not in coverage.setdefault("identifier", []):
            coverage["identifier"].append(ident)
    if not coverage.get("identifier"):
        coverage.pop("identifier", None)
    relation_code = seg.value(72)
    relation = tables.lookup(tables.RELATIONSHIP_0344, relation_code)
    if relation_code and relation is None:
        ctx.warn(seg, 72, TABLE_VALUE_NOT_FOUND, "IN2-72 (relationship to insured) has no FHIR code; ignored")
    if relation and "relationship" not in coverage:
        coverage["relationship"] = {"coding": [{"system": SUBSCRIBER_RELATIONSHIP, "code": relation}]}
        if relation == "self":
            coverage.setdefault("subscriber", ctx.patient)
    employer = organization(next(iter(seg.repetitions(70)), None))
    if employer is not None:
        employer["type"] = "Organization"
        coverage.setdefault("policyHolder", employer)
    ssn = seg.value(2)
    if ssn and coverage.get("subscriber") == ctx.patient:
        _add_patient_ssn(ctx, ssn)


def _typed_id(value: str, code: str, system: str) -> Json | None:
    if not value:
        return None
    return {"system": system, "value": value, "type": {"coding": [{"system": IDENTIFIER_TYPE, "code": code}]}}


def _member(ident: Json | None) -> Json | None:
    if ident is not None:
        ident.pop("assigner", None)
        ident.setdefault("type", {"coding": [{"system": IDENTIFIER_TYPE, "code": "MB"}]})
    return ident


def _add_patient_ssn(ctx: MapContext, ssn: str) -> None:
    # a Coverage exists only for a mapped patient (map_in1), so its Patient is in the Bundle
    ids = ctx.entries[("Patient", ctx.patient_id or "")].resource.setdefault("identifier", [])
    if not any(i.get("system") == US_SSN for i in ids):
        ids.append(
            {"system": US_SSN, "value": ssn, "type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "SS"}]}}
        )
