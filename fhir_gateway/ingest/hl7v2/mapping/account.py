"""GT1 → the guarantor of the patient's Account (Account.guarantor.party).

The IG's GT1 map is still "under construction" (its segment inventory); this follows what it and
the PID[Account] map settle: the Account is the patient's (subject = Patient, identifier = PID-18
patient account number), and each GT1 adds one guarantor whose party is
- the Patient when GT1-11 (relationship, table 0063) says SEL (self),
- a logical Organization reference for an organisation guarantor (GT1-21 name, no person in GT1-3),
- otherwise a RelatedPerson made from GT1 (name, address, phones, birth date, sex, relationship,
  GT1-2 guarantor number and GT1-12 SSN as identifiers),
with GT1-13/14 as the period and GT1-22 billing hold flag as onHold.

The Account id is PID-18 with its authority; without PID-18 it is the patient's one guarantor
account from this sender, so the GT1 repeated in every ADT update stays on one Account.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    MapContext,
    Reference,
)
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    Rep,
    address,
    authority,
    comp,
    contact_points,
    date,
    human_name,
    identifier,
    period,
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.encounter import relationship
from fhir_gateway.ingest.hl7v2.mapping.patient import US_SSN, gender
from fhir_gateway.ingest.hl7v2.mapping.resources import name_text, organization

SELF = "SEL"


def _first(seg: Segment, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None)


def map_gt1(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    party = _party(seg, ctx)
    if party is None:
        ctx.warn(seg, 3, REQUIRED_FIELD_MISSING, "GT1-3 (guarantor name) and GT1-21 are empty; GT1 skipped")
        return
    guarantor: Json = {"party": party}
    hold = seg.value(22).upper()
    if hold in ("Y", "N"):
        guarantor["onHold"] = hold == "Y"
    put(guarantor, "period", period(_date(seg, 13, ctx), _date(seg, 14, ctx)))
    account = _account(seg, ctx)
    if guarantor not in account.setdefault("guarantor", []):
        account["guarantor"].append(guarantor)
    ctx.last = account


def _date(seg: Segment, fld: int, ctx: MapContext) -> str | None:
    text = seg.value(fld)
    value = date(text) if text else None
    if text and value is None:
        ctx.warn(seg, fld, DATA_TYPE_ERROR, f"GT1-{fld} is not a valid date; ignored")
    return value


def _account(seg: Segment, ctx: MapContext) -> Json:
    """The patient's Account: PID-18 of the PID that opened this patient group (ctx.patient is set,
    so there is one before this GT1)."""
    pid = next(s for s in reversed(ctx.message.segments[: seg.index]) if s.name == "PID")
    number = next((r for r in pid.repetitions(18) if comp(r, 1)), None)
    account: Json = {"resourceType": "Account", "status": "active", "subject": [ctx.patient]}
    if number is not None:
        ident = identifier(number)
        if ident is not None:
            ident.setdefault("type", {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": "AN"}]})
            account["identifier"] = [ident]
        res_id = stable_id("Account", authority(number, 4) or ctx.source, comp(number, 1))
    else:
        res_id = stable_id("Account", f"Patient/{ctx.patient_id}", f"guarantor|{ctx.source}")
    return ctx.keep(account, res_id)


def _party(seg: Segment, ctx: MapContext) -> Reference | None:
    kind = _first(seg, 11)
    if kind is not None and comp(kind, 1).upper() == SELF:
        return dict(ctx.patient or {})
    names = [n for n in (human_name(r) for r in seg.repetitions(3)) if n]
    if not names:
        org = organization(_first(seg, 21))
        if org is not None:
            org["type"] = "Organization"
        return org
    assert ctx.patient_id is not None
    person: Json = {"resourceType": "RelatedPerson", "active": True, "patient": ctx.patient, "name": names}
    ids = [identifier(r) for r in seg.repetitions(2)]
    ssn = seg.value(12)
    if ssn:
        ids.append({"system": US_SSN, "value": ssn, "type": _ssn_type()})
    put(person, "identifier", [i for i in ids if i])
    put(person, "relationship", [r for r in (relationship(kind),) if r] if kind else None)
    put(person, "address", [a for a in (address(r) for r in seg.repetitions(5)) if a])
    put(person, "telecom", contact_points(seg.repetitions(6), seg.repetitions(7)))
    put(person, "birthDate", _date(seg, 8, ctx))
    put(person, "gender", gender(seg, 9, ctx))
    number = next((r for r in seg.repetitions(2) if comp(r, 1)), None)
    key = f"guarantor|{comp(number, 1) if number else name_text(names[0])}"
    return ctx.add(person, stable_id("RelatedPerson", ctx.patient_id, key))


def _ssn_type() -> Json:
    return {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": "SS"}]}
