"""SCH + AIS/AIG/AIL/AIP → Appointment (IG: Segment SCH to Appointment; SIU messages).

The Appointment id is the filler appointment id (SCH-2), else the placer's (SCH-1), so the booking,
reschedule, cancellation and no-show messages of one appointment (S12…S26) update one resource.
Status comes from SCH-25 (filler status, table 0278), else from the trigger event. Start and end
come from SCH-11 (TQ, v2.3-2.5), TQ1-7/8 (v2.6+), or the first resource segment's start + duration.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import MapContext
from fhir_gateway.ingest.hl7v2.mapping.datatypes import Json, Rep, codeable, comp, ei, instant, number, put
from fhir_gateway.ingest.hl7v2.mapping.orders import order_key
from fhir_gateway.ingest.hl7v2.mapping.resources import location, practitioner

UNIT_MINUTES = {"MIN": 1, "M": 1, "S": 1 / 60, "H": 60, "HR": 60, "D": 1440}
NO_DATES_ALLOWED = frozenset({"proposed", "cancelled", "waitlist"})


def _first(seg: Segment, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None)


def map_sch(seg: Segment, ctx: MapContext) -> None:
    status = tables.APPOINTMENT_STATUS_0278.get(seg.value(25).upper())
    status = status or tables.APPOINTMENT_STATUS_BY_TRIGGER.get(ctx.message.trigger, "booked")
    appt: Json = {"resourceType": "Appointment", "status": status, "participant": []}
    ids = [i for i in (ei(_first(seg, 1)), ei(_first(seg, 2))) if i]
    put(appt, "identifier", ids)
    put(appt, "reasonCode", [c for c in (codeable(_first(seg, 6)),) if c])
    put(appt, "appointmentType", codeable(_first(seg, 8)) or codeable(_first(seg, 7)))
    start, end = instant(seg.value(11, 4), ctx.tz), instant(seg.value(11, 5), ctx.tz)
    if start and end:
        appt["start"], appt["end"] = start, end
    duration = number(seg.value(9))
    if isinstance(duration, int) and duration > 0:
        minutes = duration * UNIT_MINUTES.get(seg.value(10).upper(), 1)
        if minutes >= 1:
            appt["minutesDuration"] = int(minutes)
    res_id = order_key("Appointment", _first(seg, 2), _first(seg, 1)) or ctx.message_id("Appointment", seg)
    appt = ctx.keep(appt, res_id)
    ctx.appointment = appt
    ctx.order = ctx.report = None
    ctx.last = appt


def _participant(ctx: MapContext, actor: Json | None, role: Json | None = None) -> None:
    appt = ctx.appointment
    if appt is None or actor is None:
        return
    participant: Json = {"actor": actor, "status": "accepted"}
    if role:
        participant["type"] = [role]
    appt["participant"].append(participant)
    ctx.last = appt


def _resource_start(seg: Segment, ctx: MapContext, start_at: int, duration_at: int) -> None:
    """The first resource segment with a start fixes start/end when SCH/TQ1 gave none."""
    appt = ctx.appointment
    if appt is None or "start" in appt:
        return
    start = instant(seg.value(start_at), ctx.tz)
    duration = number(seg.value(duration_at))
    if not start or not isinstance(duration, int | float) or duration <= 0:
        return
    minutes = duration * UNIT_MINUTES.get(seg.value(duration_at + 1).upper(), 1)
    try:
        begin = datetime.fromisoformat(start)
    except ValueError:  # pragma: no cover - instant() only returns ISO values
        return
    appt["start"] = start
    appt["end"] = (begin + timedelta(minutes=minutes)).isoformat()


def map_ais(seg: Segment, ctx: MapContext) -> None:
    if ctx.appointment is None:
        return
    service = codeable(_first(seg, 3))
    if service:
        ctx.appointment.setdefault("serviceType", []).append(service)
    _resource_start(seg, ctx, 4, 7)
    ctx.last = ctx.appointment


def map_aig(seg: Segment, ctx: MapContext) -> None:
    """AIG (general resource: equipment, rooms …) → a participant named by AIG-3."""
    resource = _first(seg, 3)
    name = comp(resource, 2) or comp(resource, 1) if resource else ""
    _participant(ctx, {"display": name} if name else None, codeable(_first(seg, 4)))
    _resource_start(seg, ctx, 8, 11)


def map_ail(seg: Segment, ctx: MapContext) -> None:
    rep = _first(seg, 3)
    if rep and not comp(rep, 2) and len(rep[0]) > 1:  # PL sent with '&' instead of '^' (seen in the wild)
        rep = [[s] for s in rep[0]]
    _participant(ctx, location(rep, ctx), codeable(_first(seg, 4)))
    _resource_start(seg, ctx, 6, 9)


def map_aip(seg: Segment, ctx: MapContext) -> None:
    _participant(ctx, practitioner(_first(seg, 3), ctx), codeable(_first(seg, 4)))
    _resource_start(seg, ctx, 6, 9)


def finish_appointment(ctx: MapContext) -> None:
    """The patient joins the participants; app-3 (no dates only when proposed/cancelled) is checked."""
    appt = ctx.appointment
    if appt is None:
        return
    if ctx.patient is not None and not any(p["actor"] == ctx.patient for p in appt["participant"]):
        appt["participant"].insert(0, {"actor": ctx.patient, "status": "accepted"})
    if not appt["participant"]:
        appt["participant"].append({"status": "needs-action", "actor": {"display": "unknown"}})
    if "start" not in appt and appt["status"] not in NO_DATES_ALLOWED:
        appt["status"] = "proposed"
