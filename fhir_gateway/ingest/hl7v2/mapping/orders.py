"""ORC, OBR, TQ1 → ServiceRequest and DiagnosticReport (IG: Segment ORC/OBR to ServiceRequest,
OBR to DiagnosticReport).

An ORC opens an order group; what the order is depends on the detail segment after it (OBR → a
ServiceRequest, RXO/RXE → a MedicationRequest, RXA → an Immunization), so the ORC is kept pending
and applied by that segment — or, when no detail follows, becomes a ServiceRequest of its own.
Ids come from the placer order number (ORC-2/OBR-2), else the filler number (ORC-3/OBR-3), with
their namespace: a status update or a corrected result of the same order lands on one resource.
A DiagnosticReport is made for an OBR in a result message (ORU, OUL), or one that carries a result
status (OBR-25) outside order messages (DFT, BAR …); its id comes from the filler number first.
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
    code_in,
    codeable,
    comp,
    date_time,
    ei,
    instant,
    period,
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.resources import practitioner
from fhir_gateway.ingest.hl7v2.mapping.specimen import close_order_group, open_order_group

RESULT_MESSAGES = frozenset({"ORU", "OUL"})
# Order, document and pharmacy messages carry an OBR as the order itself (IG message maps: OBR →
# ServiceRequest only), even when a sender fills OBR-25.
ORDER_MESSAGES = frozenset(
    {"ORM", "OML", "OMG", "OMI", "OMB", "OMD", "OMN", "OMP", "OMS", "OPL", "MDM", "SIU"}
)
PRIORITY = {"S": "stat", "A": "asap", "R": "routine", "P": "routine", "C": "urgent", "T": "urgent"}
NEW_ORDER = "NW"
REFLEX = "G"  # OBR-11 specimen action code G: generated order, reflex order (IG OBR → intent)
STATUS_REASON = "http://hl7.org/fhir/StructureDefinition/request-statusReason"


def _first(seg: Segment | None, n: int) -> Rep | None:
    if seg is None:
        return None
    return next((r for r in seg.repetitions(n) if comp(r, 1)), None)


def order_key(res_type: str, *reps: Rep | None) -> str | None:
    """The deterministic id of an order-like resource from the first present EI (value + namespace)."""
    for rep in reps:
        if rep and comp(rep, 1):
            return stable_id(res_type, comp(rep, 2) or comp(rep, 3), comp(rep, 1))
    return None


def order_identifiers(orc: Segment | None, detail: Segment | None, fields: tuple[int, int]) -> list[Json]:
    """PLAC / FILL / PGN identifiers from ORC-2/3/4 and the detail segment's placer/filler fields."""
    ids: list[Json] = []
    seen: set[str] = set()
    sources = [(orc, 2, "PLAC"), (detail, fields[0], "PLAC"), (orc, 3, "FILL"), (detail, fields[1], "FILL")]
    sources.append((orc, 4, "PGN"))
    for seg, n, kind in sources:
        rep = _first(seg, n) if seg is not None and n else None
        ident = ei(rep)
        if ident and f"{kind}|{ident['value']}" not in seen:
            seen.add(f"{kind}|{ident['value']}")
            ident["type"] = {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": kind}]}
            ids.append(ident)
    return ids


def request_status(
    ctx: MapContext, default: str = "unknown", control: dict[str, str] = tables.ORDER_CONTROL_0119
) -> str:
    """ORC-5 order status when it is valued, else what the ORC-1 order control code implies (IG
    ORC[ServiceRequest]: ORC-1 → status only IF ORC-5 NOT VALUED)."""
    orc = ctx.pending_orc or ctx.group_orc
    if orc is not None:
        status = tables.lookup(tables.ORDER_STATUS_0038, orc.value(5))
        status = status or tables.lookup(control, orc.value(1))
        if status:
            return status
    return default


def authored_on(orc: Segment | None, ctx: MapContext) -> str | None:
    """ORC-9 is when the order was written only in a new order (IG ORC[ServiceRequest]: authoredOn IF
    ORC-1 IS "NW"); in a cancel, hold or status change it is the time of that event, which must not
    replace the order's authoring time when the message updates the stored order."""
    if orc is None or orc.value(1).upper() != NEW_ORDER:
        return None
    return ctx.when(orc, 9)


def _status_reason(orc: Segment | None) -> list[Json]:
    """ORC-16 order control code reason (why it was cancelled, held …) → the request-statusReason
    extension (IG ORC[ServiceRequest]); it is no reason for the order itself (reasonCode is OBR-31)."""
    reason = codeable(_first(orc, 16))
    return [{"url": STATUS_REASON, "valueCodeableConcept": reason}] if reason else []


def _orc_after_obr(ctx: MapContext) -> bool:
    m = ctx.message
    return tables.structure(m.message_code, m.trigger, m.structure) in tables.ORC_AFTER_OBR_STRUCTURES


def map_orc(seg: Segment, ctx: MapContext) -> None:
    if _orc_after_obr(ctx) and ctx.group_orc is None and ctx.order is not None:
        _complete_order(seg, ctx, ctx.order)
        return
    flush_orc(ctx)
    close_order_group(ctx)
    ctx.order = ctx.report = ctx.requester = None
    ctx.pending_orc = ctx.group_orc = seg
    ctx.pending_timing = []


def _complete_order(orc: Segment, ctx: MapContext, request: Json) -> None:
    """An ORC after its OBR (OUL structures) adds what it says to the order that OBR made (the
    elements it fills exist on ServiceRequest and MedicationRequest alike)."""
    ctx.group_orc = orc
    known = request.setdefault("identifier", [])
    known.extend(i for i in order_identifiers(orc, None, (0, 0)) if i not in known)
    if request["status"] == "unknown":
        request["status"] = request_status(ctx)
    put(request, "requester", request.get("requester") or practitioner(_first(orc, 12), ctx))
    put(request, "authoredOn", request.get("authoredOn") or authored_on(orc, ctx))


def flush_orc(ctx: MapContext) -> None:
    """An ORC that no detail segment used becomes a ServiceRequest of its own."""
    orc = ctx.pending_orc
    if orc is None:
        return
    ctx.pending_orc = None
    if ctx.patient is None:
        return
    request = _service_request(orc, None, ctx)
    res_id = order_key("ServiceRequest", _first(orc, 2), _first(orc, 3)) or ctx.message_id(
        "ServiceRequest", orc
    )
    apply_timing(ctx.keep(request, res_id), ctx)


def _service_request(orc: Segment | None, obr: Segment | None, ctx: MapContext) -> Json:
    request: Json = {"resourceType": "ServiceRequest", "status": request_status(ctx), "intent": "order"}
    put(request, "extension", _status_reason(orc))
    put(request, "identifier", order_identifiers(orc, obr, (2, 3)))
    if obr is not None and obr.value(11).upper() == REFLEX:
        request["intent"] = "reflex-order"
    timing = _quantity_timing(orc, obr)
    priority = (obr.value(5) if obr else "") or (comp(timing[2], 6) if timing else "")
    if obr is not None:
        put(request, "code", codeable(_first(obr, 4)))
    put(request, "priority", PRIORITY.get(priority.upper()))
    _occurrence(request, obr, timing, ctx)
    if obr is not None:
        put(request, "reasonCode", [c for c in (codeable(r) for r in obr.repetitions(31)) if c])
    put(request, "subject", ctx.patient)
    put(request, "encounter", ctx.encounter)
    requester = practitioner(_first(orc, 12), ctx) or practitioner(_first(obr, 16), ctx) or ctx.requester
    put(request, "requester", requester)
    put(request, "authoredOn", authored_on(orc, ctx))
    return request


def _quantity_timing(orc: Segment | None, obr: Segment | None) -> tuple[Segment, int, Rep] | None:
    """The order's TQ (v2.3-2.4 timing, still sent in 2.5.1 ORM): ORC-7, else OBR-27 (IG
    OBR[ServiceRequest]: OBR-27 IF ORC-7 NOT VALUED), with the segment and field it came from."""
    for seg, n in ((orc, 7), (obr, 27)):
        if seg is None:
            continue
        rep = next((r for r in seg.repetitions(n) if any(part.strip() for c in r for part in c)), None)
        if rep is not None:
            return seg, n, rep
    return None


def _occurrence(
    request: Json, obr: Segment | None, timing: tuple[Segment, int, Rep] | None, ctx: MapContext
) -> None:
    """TQ-4/TQ-5 start/end → occurrencePeriod (IG TQ[ServiceRequest]); without them OBR-6 requested
    date/time → occurrenceDateTime (IG OBR[ServiceRequest])."""
    if timing is not None:
        seg, n, tq = timing
        when = period(ctx.when(seg, n, comp(tq, 4)), ctx.when(seg, n, comp(tq, 5)))
        if when:
            request["occurrencePeriod"] = when
            return
    if obr is not None:
        put(request, "occurrenceDateTime", ctx.when(obr, 6))


def map_obr(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None:
        return
    late = _orc_after_obr(ctx)
    orc = ctx.pending_orc or (None if late else ctx.group_orc)
    ctx.pending_orc = None
    if late:
        ctx.group_orc = orc  # the ORC that follows completes this order (map_orc)
    if not seg.has(4):
        ctx.error(seg, 4, REQUIRED_FIELD_MISSING, "OBR-4 (universal service identifier) is required")
    request = _service_request(orc, seg, ctx)
    placer, filler = _first(orc, 2) or _first(seg, 2), _first(orc, 3) or _first(seg, 3)
    req_id = order_key("ServiceRequest", placer, filler) or ctx.message_id("ServiceRequest", seg)
    result_status = seg.value(25).upper()
    code = ctx.message.message_code
    is_result = code in RESULT_MESSAGES or (bool(result_status) and code not in ORDER_MESSAGES)
    if is_result and request["status"] in ("active", "unknown") and result_status in ("F", "C"):
        request["status"] = "completed"
    request = ctx.keep(request, req_id)
    apply_timing(request, ctx)
    request_ref = ctx.ref(request)
    ctx.order = request
    ctx.last = request
    ctx.report = None
    if not is_result:
        open_order_group(ctx, request, None)
        return
    report: Json = {
        "resourceType": "DiagnosticReport",
        "status": _report_status(seg, ctx),
        "code": codeable(_first(seg, 4)) or {"text": "unknown"},
        "basedOn": [request_ref],
        "subject": ctx.patient,
    }
    put(report, "identifier", order_identifiers(orc, seg, (2, 3)))
    put(report, "category", [c for c in (code_in(_first(seg, 24), "0074"),) if c])
    put(report, "encounter", ctx.encounter)
    start, end = date_time(seg.value(7), ctx.tz), date_time(seg.value(8), ctx.tz)
    if start and end:
        report["effectivePeriod"] = period(start, end)
    else:
        put(report, "effectiveDateTime", start)
    put(report, "issued", instant(seg.value(22), ctx.tz))
    put(report, "resultsInterpreter", [p for p in (practitioner(r, ctx) for r in seg.repetitions(32)) if p])
    rep_id = order_key("DiagnosticReport", filler, placer) or ctx.message_id("DiagnosticReport", seg)
    ctx.report = ctx.keep(report, rep_id)
    open_order_group(ctx, request, ctx.report)


def _report_status(obr: Segment, ctx: MapContext) -> str:
    """OBR-25 → DiagnosticReport.status; a value the IG gives no status (Y, Z, local codes) is
    `unknown`, with a warning, never a guessed `final`."""
    code = obr.value(25)
    status = tables.lookup(tables.REPORT_STATUS_0123, code)
    if code and status is None:
        ctx.warn(obr, 25, TABLE_VALUE_NOT_FOUND, "OBR-25 (result status) has no report status; unknown")
    return status or "unknown"


def map_tq1(seg: Segment, ctx: MapContext) -> None:
    """TQ1-7/8 start/end → the current request's occurrencePeriod (or the Appointment's start/end);
    for a MedicationRequest the dosage timing (IG TQ1[MedicationRequest]). In ORM/OML (and RDE/RDS)
    the order's TQ1 comes between ORC and OBR (RXO/RXE): it waits for the request (`apply_timing`)."""
    if ctx.appointment is not None and ctx.order is None:
        begin, finish = instant(seg.value(7), ctx.tz), instant(seg.value(8), ctx.tz)
        if begin and finish and "start" not in ctx.appointment:
            ctx.appointment["start"], ctx.appointment["end"] = begin, finish
        return
    target = ctx.order
    if ctx.pending_orc is not None and target is None:
        ctx.pending_timing.append(seg)
        return
    if target is not None:
        _timing(seg, target, ctx)


def apply_timing(request: Json, ctx: MapContext) -> None:
    """The TQ1 that preceded the order's detail segment, now that its request exists."""
    timing, ctx.pending_timing = ctx.pending_timing, []
    for seg in timing:
        _timing(seg, request, ctx)


def _timing(seg: Segment, request: Json, ctx: MapContext) -> None:
    """One TQ1 on its request; TQ1-9 is the priority of either kind when nothing before set one."""
    if request.get("resourceType") == "MedicationRequest":
        _dosage_timing(seg, request, ctx)
    elif request.get("resourceType") == "ServiceRequest":
        _service_timing(seg, request, ctx)
    else:
        return
    prio = PRIORITY.get(seg.value(9).upper())
    if prio:
        request.setdefault("priority", prio)


def _service_timing(seg: Segment, request: Json, ctx: MapContext) -> None:
    """TQ1-7/8 → occurrencePeriod (TQ1 is the v2.5+ timing: it wins over ORC-7/OBR-27 and OBR-6,
    and occurrence[x] holds one of them) (IG TQ1[ServiceRequest])."""
    when = period(ctx.when(seg, 7), ctx.when(seg, 8))
    if when:
        request.pop("occurrenceDateTime", None)
        request["occurrencePeriod"] = when


def _dosage_timing(seg: Segment, request: Json, ctx: MapContext) -> None:
    """TQ1-3 repeat pattern → timing.code, TQ1-7/8 → timing.repeat.boundsPeriod, TQ1-11 text
    instruction → dosage text (IG TQ1[MedicationRequest]); the first TQ1 wins."""
    dosage = request.setdefault("dosageInstruction", [{}])[0]
    timing: Json = {}
    pattern = seg.value(3)
    if pattern:
        coding: Json = {"code": pattern}
        put(coding, "display", seg.value(3, 1, 2))
        system = tables.coding_system(seg.value(3, 1, 3)) or tables.V2_SYSTEM.format(table="0335")
        timing["code"] = {"coding": [{"system": system, **coding}]}
    bounds = period(ctx.when(seg, 7), ctx.when(seg, 8))
    if bounds:
        timing["repeat"] = {"boundsPeriod": bounds}
    if timing:
        dosage.setdefault("timing", timing)
    put(dosage, "text", dosage.get("text") or seg.value(11))
