"""SCH + AIS/AIG/AIL/AIP → Appointment (IG: Segment SCH to Appointment; SIU messages).

The Appointment id is the filler appointment id (SCH-2), else the placer's (SCH-1), so the booking,
reschedule, cancellation and no-show messages of one appointment (S12…S26) update one resource.
Status comes from SCH-25 (filler status, table 0278), else from the trigger event; a cancelled
appointment keeps SCH-6 (event reason) as its cancelationReason. SCH-7 is the reason for the
appointment, SCH-8 its type. Start and end come from SCH-11 (TQ, v2.3-2.5: start, end or start +
SCH-9 duration), TQ1-7/8 (v2.6+), or the first resource segment's start + duration. Each resource
(AIG, AIL, AIP) is a participant with its own period and filler status.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import DATA_TYPE_ERROR, MapContext
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    Rep,
    codeable,
    comp,
    ei,
    instant,
    number,
    period,
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.orders import order_key
from fhir_gateway.ingest.hl7v2.mapping.resources import location, practitioner

UNIT_MINUTES = {"MIN": 1, "M": 1, "S": 1 / 60, "H": 60, "HR": 60, "D": 1440, "WK": 10080}
DELETE = "D"  # table 0206 segment action code
NO_DATES_ALLOWED = frozenset({"proposed", "cancelled", "waitlist"})


def _first(seg: Segment, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None)


def map_sch(seg: Segment, ctx: MapContext) -> None:
    status = tables.APPOINTMENT_STATUS_0278.get(seg.value(25).upper())
    status = status or tables.APPOINTMENT_STATUS_BY_TRIGGER.get(ctx.message.trigger, "booked")
    appt: Json = {"resourceType": "Appointment", "status": status, "participant": []}
    ids = [i for i in (ei(_first(seg, 1)), ei(_first(seg, 2))) if i]
    put(appt, "identifier", ids)
    if status == "cancelled":
        put(appt, "cancelationReason", codeable(_first(seg, 6)))
    _reason_and_type(seg, appt)
    minutes = _minutes(seg, 9, ctx)
    if minutes is not None and minutes >= 1:
        appt["minutesDuration"] = int(minutes)
    start, end = instant(seg.value(11, 4), ctx.tz), instant(seg.value(11, 5), ctx.tz)
    if start and not end and minutes:
        end = _after(start, minutes)
    if start and end:
        appt["start"], appt["end"] = start, end
    res_id = order_key("Appointment", _first(seg, 2), _first(seg, 1)) or ctx.message_id("Appointment", seg)
    appt = ctx.keep(appt, res_id)
    ctx.appointment = appt
    ctx.order = ctx.report = None
    ctx.last = appt


def _reason_and_type(seg: Segment, appt: Json) -> None:
    """SCH-7 appointment reason → reasonCode, SCH-8 appointment type → appointmentType (IG SCH).
    SCH-6 is the reason for this scheduling event (a cancellation's reason), not for the visit.
    An SCH-7 in table 0276 (ROUTINE, FOLLOWUP …) names the kind of appointment instead: it is the
    appointmentType when SCH-8 gives none (IG SCH-7: "depending on whether the system uses the
    meaning of HL70276 or HL70277")."""
    reason, kind = _first(seg, 7), codeable(_first(seg, 8))
    if reason and not kind and comp(reason, 1).upper() in tables.APPOINTMENT_REASON_0276:
        kind, reason = codeable(reason), None
    put(appt, "reasonCode", [c for c in (codeable(reason),) if c])
    put(appt, "appointmentType", kind)


def _minutes(seg: Segment, at: int, ctx: MapContext) -> float | None:
    """A duration (SCH-9, AIS-7, AIG-11, AIL-9, AIP-9) in minutes, by its units field after it
    (minutes when empty); a unit that is no time unit gives no duration, with a warning."""
    duration = number(seg.value(at))
    if duration is None or duration <= 0:
        return None
    unit = seg.value(at + 1).upper()
    factor = UNIT_MINUTES.get(unit or "MIN")
    if factor is None:
        ctx.warn(
            seg, at + 1, DATA_TYPE_ERROR, f"{seg.name}-{at + 1} (duration units) is no time unit; ignored"
        )
        return None
    return duration * factor


def _after(start: str, minutes: float) -> str:
    # instant() only returns ISO values with a zone
    return (datetime.fromisoformat(start) + timedelta(minutes=minutes)).isoformat()


def _participant(
    ctx: MapContext, seg: Segment, actor: Json | None, role: Json | None, at: tuple[int, int, int]
) -> None:
    """A resource segment's participant: its actor and type, its period (start `at[0]`, duration
    `at[1]`) and its status from its filler status field `at[2]` (IG AIG/AIL/AIP); in S20-S22 the
    resources the message names are the ones taken off the appointment (declined)."""
    appt = ctx.appointment
    if appt is None or actor is None:
        return
    participant: Json = {"actor": actor, "status": _participant_status(seg, ctx, at[2])}
    if role:
        participant["type"] = [role]
    put(participant, "period", _resource_period(seg, ctx, at[0], at[1]))
    appt["participant"].append(participant)
    ctx.last = appt


def _participant_status(seg: Segment, ctx: MapContext, at: int) -> str:
    """Declined when the message removes the resource (S20-S22, or segment action code D, table
    0206), else by the resource's filler status; accepted when it has none."""
    if ctx.message.trigger in tables.RESOURCE_REMOVAL_TRIGGERS or seg.value(2).upper() == DELETE:
        return "declined"
    return tables.PARTICIPANT_STATUS_0278.get(seg.value(at).upper(), "accepted")


def _resource_period(seg: Segment, ctx: MapContext, start_at: int, duration_at: int) -> Json | None:
    """Start + duration of one resource; the first resource with both fixes the appointment's
    start/end when SCH/TQ1 gave none."""
    start = instant(seg.value(start_at), ctx.tz)
    if not start:
        return None
    minutes = _minutes(seg, duration_at, ctx)
    end = _after(start, minutes) if minutes else None
    appt = ctx.appointment
    if appt is not None and end and "start" not in appt:
        appt["start"], appt["end"] = start, end
    return period(start, end)


def map_ais(seg: Segment, ctx: MapContext) -> None:
    if ctx.appointment is None:
        return
    service = codeable(_first(seg, 3))
    if service:
        ctx.appointment.setdefault("serviceType", []).append(service)
    _resource_period(seg, ctx, 4, 7)
    ctx.last = ctx.appointment


def map_aig(seg: Segment, ctx: MapContext) -> None:
    """AIG (general resource: equipment, rooms …) → a participant named by AIG-3."""
    resource = _first(seg, 3)
    name = comp(resource, 2) or comp(resource, 1) if resource else ""
    _participant(ctx, seg, {"display": name} if name else None, codeable(_first(seg, 4)), (8, 11, 14))


def map_ail(seg: Segment, ctx: MapContext) -> None:
    rep = _first(seg, 3)
    if rep and not comp(rep, 2) and len(rep[0]) > 1:  # PL sent with '&' instead of '^' (seen in the wild)
        rep = [[s] for s in rep[0]]
    _participant(ctx, seg, location(rep, ctx), codeable(_first(seg, 4)), (6, 9, 12))


def map_aip(seg: Segment, ctx: MapContext) -> None:
    _participant(ctx, seg, practitioner(_first(seg, 3), ctx), codeable(_first(seg, 4)), (6, 9, 12))


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
