"""RXA → Immunization (VXU); RXO/RXE → MedicationRequest; RXD → MedicationDispense; RXR → route/site.

IG segment maps RXA→Immunization, RXO/RXE→MedicationRequest, RXD→MedicationDispense. The order
group's ORC supplies status, identifiers, requester and the deterministic id (placer/filler number),
so RXO and RXE of one order (RDE, RDS) fill one MedicationRequest. The Immunization is the anchor of
its order group (IG VXU_V04: the OBX after an RXA are `partOf` it).
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
    date,
    date_time,
    number,
    put,
    quantity,
)
from fhir_gateway.ingest.hl7v2.mapping.orders import (
    apply_timing,
    order_identifiers,
    order_key,
    request_status,
)
from fhir_gateway.ingest.hl7v2.mapping.resources import coded_organization, location, practitioner

PERFORMER_FUNCTION = "http://terminology.hl7.org/CodeSystem/v2-0443"
DOSE_RATE_TYPE = "http://terminology.hl7.org/CodeSystem/dose-rate-type"


def _first(seg: Segment | None, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None) if seg is not None else None


def map_rxa(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    orc = ctx.pending_orc or ctx.group_orc
    ctx.pending_orc = None
    vaccine = codeable(_first(seg, 5))
    if vaccine is None:
        ctx.error(seg, 5, REQUIRED_FIELD_MISSING, "RXA-5 (administered code) is required")
        return
    when = date_time(seg.value(3), ctx.tz)
    if when is None:
        ctx.error(seg, 3, REQUIRED_FIELD_MISSING, "RXA-3 (date/time start of administration) is required")
        return
    status = tables.IMMUNIZATION_STATUS_0322.get(seg.value(20).upper(), "completed")
    if seg.value(21).upper() == "D":  # RXA-21 action code delete
        status = "entered-in-error"
    imm: Json = {
        "resourceType": "Immunization",
        "status": status,
        "vaccineCode": vaccine,
        "patient": ctx.patient,
        "occurrenceDateTime": when,
    }
    put(imm, "encounter", ctx.encounter)
    amount = number(seg.value(6))
    if amount is not None and amount != 999:
        imm["doseQuantity"] = quantity(amount, _first(seg, 7))
    source = seg.value(9).upper()
    if source in ("00", "01"):
        imm["primarySource"] = source == "00"
    performer = practitioner(_first(seg, 10), ctx)
    if performer:
        function = {"coding": [{"system": PERFORMER_FUNCTION, "code": "AP"}]}
        imm["performer"] = [{"function": function, "actor": performer}]
    put(imm, "lotNumber", seg.value(15))
    put(imm, "expirationDate", date(seg.value(16)))
    put(imm, "manufacturer", coded_organization(_first(seg, 17)))
    put(imm, "statusReason", codeable(_first(seg, 18)))  # IG: whatever RXA-20 says
    put(imm, "reasonCode", [c for c in (codeable(r) for r in seg.repetitions(19)) if c])
    if seg.value(21).upper() == "A":  # IG: RXA-22 is the recording time of an added record
        put(imm, "recorded", ctx.when(seg, 22))
    put(imm, "location", location(_first(seg, 27), ctx))
    put(imm, "identifier", order_identifiers(orc, None, (0, 0)))
    res_id = order_key("Immunization", _first(orc, 3), _first(orc, 2))
    if res_id is None:
        key = f"{seg.value(5)}|{seg.value(5, 3)}|{when}"
        res_id = stable_id("Immunization", f"Patient/{ctx.patient_id}", key)
    imm = ctx.keep(imm, res_id)
    ctx.order = ctx.last = imm  # the OBX of this order group are partOf it


def _medication_request(ctx: MapContext, seg: Segment) -> Json | None:
    if ctx.patient is None:
        return None
    orc = ctx.pending_orc or ctx.group_orc
    ctx.pending_orc = None
    request: Json = {
        "resourceType": "MedicationRequest",
        "status": _medication_status(ctx),
        "intent": "original-order" if seg.name == "RXO" else "order",
        "subject": ctx.patient,
    }
    put(request, "identifier", order_identifiers(orc, None, (0, 0)))
    put(request, "encounter", ctx.encounter)
    put(request, "requester", practitioner(_first(orc, 12), ctx))
    if orc is not None:
        put(request, "authoredOn", date_time(orc.value(9), ctx.tz))
    res_id = order_key("MedicationRequest", _first(orc, 2), _first(orc, 3))
    request = ctx.keep(request, res_id or ctx.message_id("MedicationRequest", orc or seg))
    ctx.order = request
    ctx.last = request
    return request


def _medication_status(ctx: MapContext) -> str:
    """ORC-5 / ORC-1 → MedicationRequest.status. The order tables give RequestStatus, whose
    `revoked` is no MedicationRequest status: a discontinued medication order (DC, OD, DR) was
    stopped, any other withdrawn one (CA, OC, CR) cancelled."""
    status = request_status(ctx, "unknown", tables.MEDICATION_CONTROL_0119)
    if status != "revoked":
        return status
    orc = ctx.pending_orc or ctx.group_orc
    assert orc is not None  # request_status found a code in it
    code = orc.value(5) if tables.lookup(tables.ORDER_STATUS_0038, orc.value(5)) else orc.value(1)
    return "stopped" if code.upper() in tables.DISCONTINUE_0119 else "cancelled"


def _dosage(request: Json, text: str, low: str, high: str, units: Rep | None) -> None:
    """Give amount minimum (RXO-2, RXE-3) and maximum (RXO-3, RXE-4) → the ordered dose: a
    doseRange when a maximum is given (IG RXO: low/high), else a doseQuantity."""
    dosage: Json = {}
    put(dosage, "text", text)
    dose, most = number(low), number(high)
    kind = {"coding": [{"system": DOSE_RATE_TYPE, "code": "ordered", "display": "Ordered"}]}
    if dose is not None and most is not None and most != dose:
        rng = {"low": quantity(dose, units), "high": quantity(most, units)}
        dosage["doseAndRate"] = [{"type": kind, "doseRange": rng}]
    elif dose is not None:
        dosage["doseAndRate"] = [{"type": kind, "doseQuantity": quantity(dose, units)}]
    if dosage:
        first = request.setdefault("dosageInstruction", [{}])[0]
        for key, value in dosage.items():
            first.setdefault(key, value)


def _medication(request: Json, seg: Segment, n: int, ctx: MapContext) -> bool:
    medication = codeable(_first(seg, n))
    if medication is None:
        if "medicationCodeableConcept" not in request:
            ctx.error(seg, n, REQUIRED_FIELD_MISSING, f"{seg.name}-{n} (give/requested code) is required")
        return False
    request.setdefault("medicationCodeableConcept", medication)
    return True


def map_rxo(seg: Segment, ctx: MapContext) -> None:
    request = ctx.order if _same_group(ctx, "MedicationRequest") else _medication_request(ctx, seg)
    if request is None or not _medication(request, seg, 1, ctx):
        return
    _dosage(request, seg.value(7, 2) or seg.value(7), seg.value(2), seg.value(3), _first(seg, 4))
    _dispense(request, seg.value(11), _first(seg, 12), seg.value(13))
    apply_timing(request, ctx)


def map_rxe(seg: Segment, ctx: MapContext) -> None:
    request = ctx.order if _same_group(ctx, "MedicationRequest") else _medication_request(ctx, seg)
    if request is None or not _medication(request, seg, 2, ctx):
        return
    request["intent"] = "order"  # the pharmacy's encoding of the order (RXO alone: original-order)
    _dosage(request, seg.value(7, 2) or seg.value(7), seg.value(3), seg.value(4), _first(seg, 5))
    _dispense(request, seg.value(10), _first(seg, 11), seg.value(12))
    apply_timing(request, ctx)


def _same_group(ctx: MapContext, res_type: str) -> bool:
    return ctx.pending_orc is None and ctx.order is not None and ctx.order.get("resourceType") == res_type


def _dispense(request: Json, amount: str, units: Rep | None, refills: str) -> None:
    dispense: Json = {}
    qty = number(amount)
    if qty is not None:
        dispense["quantity"] = quantity(qty, units)
    if refills.isdigit():
        dispense["numberOfRepeatsAllowed"] = int(refills)
    if dispense:
        request.setdefault("dispenseRequest", dispense)


def map_rxd(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None:
        return
    medication = codeable(_first(seg, 2))
    if medication is None:
        ctx.error(seg, 2, REQUIRED_FIELD_MISSING, "RXD-2 (dispense/give code) is required")
        return
    dispense: Json = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": medication,
        "subject": ctx.patient,
    }
    put(dispense, "context", ctx.encounter)
    put(dispense, "whenHandedOver", date_time(seg.value(3), ctx.tz))
    amount = number(seg.value(4))
    if amount is not None:
        dispense["quantity"] = quantity(amount, _first(seg, 5))
    elif seg.value(4):
        ctx.warn(seg, 4, DATA_TYPE_ERROR, "RXD-4 (actual dispense amount) is not a number")
    prescription = seg.value(7)
    if prescription:
        dispense["identifier"] = [{"value": prescription}]
    if ctx.order is not None and ctx.order.get("resourceType") == "MedicationRequest":
        dispense["authorizingPrescription"] = [ctx.ref(ctx.order)]
    put(dispense, "note", [{"text": seg.value(9)}] if seg.value(9) else None)
    if prescription:
        res_id = stable_id("MedicationDispense", ctx.source, f"{prescription}|{seg.value(1)}")
    else:
        res_id = ctx.message_id("MedicationDispense", seg)
    ctx.last = ctx.keep(dispense, res_id)


def map_rxr(seg: Segment, ctx: MapContext) -> None:
    """RXR-1 route, RXR-2 site → the preceding Immunization, MedicationRequest or MedicationDispense."""
    target = ctx.last
    if target is None:
        return
    route = code_in(_first(seg, 1), "0162")
    site = code_in(_first(seg, 2), "0163")
    res_type = target.get("resourceType")
    if res_type == "Immunization":
        put(target, "route", route)
        put(target, "site", site)
        return
    if res_type == "MedicationRequest" or res_type == "MedicationDispense":
        dosages = target.setdefault("dosageInstruction", [{}])
    else:
        return
    if "route" not in dosages[0]:
        put(dosages[0], "route", route)
        put(dosages[0], "site", site)
        if not dosages[0]:
            target.pop("dosageInstruction")
