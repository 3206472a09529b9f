"""MSH → MessageHeader, EVN (+ MSH) → Provenance (IG: Segment MSH to MessageHeader, EVN to Provenance).

Both are message-scoped (id from sender + MSH-10), so a replayed message rewrites them instead of
adding copies. The Provenance targets every resource the message produced, with the trigger event
as its activity and the sender (or EVN-5 operator) as its agent.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import MapContext
from fhir_gateway.ingest.hl7v2.mapping.datatypes import Json, comp, date_time, instant, put
from fhir_gateway.ingest.hl7v2.mapping.resources import practitioner

DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
EVENT_SYSTEM = tables.V2_SYSTEM.format(table="0003")
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def _endpoint(seg: Segment, n: int) -> Json:
    """MessageHeader endpoint (1..1 in R4): the HD's OID or URI when it has one, else data-absent."""
    rep = next(iter(seg.repetitions(n)), None)
    universal, kind = (comp(rep, 2), comp(rep, 3).upper()) if rep else ("", "")
    if universal and kind == "ISO" and tables.is_oid(universal):
        return {"endpoint": f"urn:oid:{universal}"}
    if universal and kind in ("URI", "DNS") and ":" in universal:
        return {"endpoint": universal}
    return {"_endpoint": {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}}


def map_msh(seg: Segment, ctx: MapContext) -> None:
    header: Json = {"resourceType": "MessageHeader"}
    event: Json = {"system": EVENT_SYSTEM, "code": ctx.message.trigger or ctx.message.message_code}
    event["display"] = "^".join(p for p in (seg.value(9, 1), seg.value(9, 2), seg.value(9, 3)) if p)
    header["eventCoding"] = event
    source: Json = {}
    put(source, "name", seg.value(3) or seg.value(3, 2))
    source.update(_endpoint(seg, 3))
    header["source"] = source
    destination: Json = {}
    put(destination, "name", seg.value(5) or seg.value(5, 2))
    if destination or seg.has(6):
        destination.update(_endpoint(seg, 5))
        receiver = seg.value(6) or seg.value(6, 2)
        if receiver:
            destination["receiver"] = {"display": receiver}
        header["destination"] = [destination]
    sender = seg.value(4) or seg.value(4, 2)
    if sender:
        header["sender"] = {"display": sender}
    processing = seg.value(11)
    if processing:
        header["meta"] = {"tag": [{"system": tables.V2_SYSTEM.format(table="0103"), "code": processing}]}
    ctx.add(header, stable_id("MessageHeader", ctx.source, ctx.message.control_id or str(id(seg))))


def finish_header(ctx: MapContext) -> None:
    """MessageHeader.focus and the Provenance, once every resource of the message is known."""
    targets = [
        {"reference": e.full_url}
        for (t, _), e in ctx.entries.items()
        if t not in ("MessageHeader", "Provenance", "Practitioner", "Location")
    ]
    header_key = ("MessageHeader", stable_id("MessageHeader", ctx.source, ctx.message.control_id or ""))
    header = ctx.entries.get(header_key)
    if header is not None and targets:
        header.resource["focus"] = targets[:50]
    if not targets:
        return
    msh = ctx.message.msh
    evn = ctx.message.first("EVN")
    recorded = (
        (instant(evn.value(2), ctx.tz) if evn else None)
        or instant(msh.value(7), ctx.tz)
        or "1970-01-01T00:00:00Z"
    )
    agent: Json = {"type": {"coding": [{"system": PROVENANCE_AGENT, "code": "author"}]}}
    operator = practitioner(next(iter(evn.repetitions(5)), None), ctx) if evn else None
    agent["who"] = operator or {"display": ctx.source or "unknown sender"}
    provenance: Json = {
        "resourceType": "Provenance",
        "target": targets,
        "recorded": recorded,
        "activity": {"coding": [{"system": EVENT_SYSTEM, "code": ctx.message.trigger or "UNK"}]},
        "agent": [agent],
    }
    if evn is not None:
        put(provenance, "occurredDateTime", date_time(evn.value(6), ctx.tz))
        reason = evn.value(4)
        if reason:
            provenance["reason"] = [
                {"coding": [{"system": tables.V2_SYSTEM.format(table="0062"), "code": reason}]}
            ]
    if ctx.message.control_id:
        provenance["entity"] = [
            {
                "role": "source",
                "what": {"identifier": {"value": ctx.message.control_id}, "display": "HL7v2 message"},
            }
        ]
    ctx.add(provenance, stable_id("Provenance", ctx.source, ctx.message.control_id or ""))
