"""SPM → Specimen (IG: Segment SPM to Specimen), linked to the order group it belongs to.

Where an SPM sits decides what it belongs to. In most structures (ORU_R01, OML_O21, OUL_R24 …) the
SPECIMEN group closes an order group: the Specimen is the DiagnosticReport's and ServiceRequest's
(`specimen`), and — when the group has exactly one — every Observation's of that group too
(Observation.specimen is 0..1: with two SPMs it is left to the report). In specimen-oriented
structures (OUL_R22/R23, OML_O33/O35 …, `tables.SPECIMEN_FIRST_STRUCTURES`) the SPM heads the
order groups that follow it until the next SPM or PID. OBX directly after an SPM are observations
about the specimen (IG ORU_R01 SPECIMEN_OBSERVATION: Observation.focus).

The id is the filler-assigned specimen id (SPM-2.2), else the placer's (SPM-2.1), else the accession
id (SPM-30), with its namespace. Without any of them, an SPM that closes an order group is scoped to
that group's report (else its order) by SPM-1 and the specimen type, as its OBX are: a corrected
result for the same order updates the same Specimen instead of adding one per message (and a new
version of every result pointing at it). A specimen-first SPM, which has no order yet, is scoped to
the message.
"""

from __future__ import annotations

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    MapContext,
)
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    Rep,
    codeable,
    ei,
    identifier,
    number,
    put,
    quantity,
)


def _first(seg: Segment, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None)


def _eip(rep: Rep | None, part: int) -> Json | None:
    """One half of an EIP (placer ^ filler), each an EI written in subcomponents."""
    if rep is None or part > len(rep):
        return None
    return ei([[s] for s in rep[part - 1]])


def _typed(ident: Json | None, code: str) -> Json | None:
    if ident is not None:
        ident["type"] = {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": code}]}
    return ident


def map_spm(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None:
        return
    spm2 = _first(seg, 2)
    placer, filler = _typed(_eip(spm2, 1), "PLAC"), _typed(_eip(spm2, 2), "FILL")
    accession = identifier(_first(seg, 30))
    kind = codeable(_first(seg, 4))
    if kind is None:
        ctx.warn(seg, 4, REQUIRED_FIELD_MISSING, "SPM-4 (specimen type) is empty")
        if not (placer or filler or accession):
            return
    specimen: Json = {"resourceType": "Specimen", "subject": ctx.patient}
    ids = [placer, filler, *(identifier(r) for r in seg.repetitions(31)), _typed(ei(_first(seg, 32)), "SHIP")]
    put(specimen, "identifier", [i for i in ids if i])
    put(specimen, "accessionIdentifier", accession)
    availability = tables.lookup(tables.SPECIMEN_AVAILABILITY, seg.value(20))
    put(specimen, "status", availability)
    put(specimen, "type", kind)
    parents = [p for p in (_eip(r, 1) or _eip(r, 2) for r in seg.repetitions(3)) if p]
    put(specimen, "parent", [{"identifier": p, "type": "Specimen"} for p in parents])
    put(specimen, "receivedTime", ctx.when(seg, 18))
    put(specimen, "collection", _collection(seg, ctx))
    put(specimen, "container", _containers(seg))
    put(specimen, "condition", [c for c in (codeable(r) for r in seg.repetitions(24)) if c])
    put(
        specimen,
        "note",
        [{"text": t} for t in (seg.value(14, rep=i) for i in range(len(seg.field(14)))) if t],
    )
    specimen = ctx.keep(specimen, _specimen_id(seg, ctx, filler or placer or accession))
    _link(specimen, ctx)


def _specimen_id(seg: Segment, ctx: MapContext, source: Json | None) -> str:
    if source is not None:
        authority = (source.get("assigner") or {}).get("display") or ctx.source
        return stable_id("Specimen", authority, source["value"])
    owner = ctx.report or ctx.order
    if owner is None or _specimen_first(ctx):
        return ctx.message_id("Specimen", seg)
    return stable_id("Specimen", f"{owner['resourceType']}/{owner['id']}", f"{seg.value(1)}|{seg.value(4)}")


def _specimen_first(ctx: MapContext) -> bool:
    m = ctx.message
    return tables.structure(m.message_code, m.trigger, m.structure) in tables.SPECIMEN_FIRST_STRUCTURES


def _collection(seg: Segment, ctx: MapContext) -> Json:
    collection: Json = {}
    start = ctx.when(seg, 17, seg.value(17, 1, 1))
    end = ctx.when(seg, 17, seg.value(17, 2, 1))
    if start and end:
        collection["collectedPeriod"] = {"start": start, "end": end}
    else:
        put(collection, "collectedDateTime", start or end)
    amount = _first(seg, 12)
    value = number(seg.value(12)) if amount else None
    if amount and value is not None:
        units = [[s] for s in amount[1]] if len(amount) > 1 else None  # CQ-2 units: a CWE in subcomponents
        collection["quantity"] = quantity(value, units)
    elif amount:
        ctx.warn(seg, 12, DATA_TYPE_ERROR, "SPM-12 (specimen collection amount) is not a number; ignored")
    put(collection, "method", codeable(_first(seg, 7)))
    put(collection, "bodySite", codeable(_first(seg, 8)))
    return collection


def _containers(seg: Segment) -> list[Json]:
    """SPM-6 additives (one container each: additive[x] is 0..1) and SPM-27 container type."""
    containers = [{"additiveCodeableConcept": c} for c in (codeable(r) for r in seg.repetitions(6)) if c]
    kind = codeable(_first(seg, 27))
    if kind and containers:
        containers[0]["type"] = kind
    elif kind:
        containers = [{"type": kind}]
    return containers


def _link(specimen: Json, ctx: MapContext) -> None:
    ref = ctx.ref(specimen)
    ctx.specimen = specimen
    ctx.last = specimen
    ctx.specimen_header = _specimen_first(ctx)
    if ctx.specimen_header:  # a new specimen group: the order groups before it are closed
        ctx.order = ctx.report = None
        ctx.group_specimens = []
        return
    request = ctx.order if ctx.order is not None and ctx.order["resourceType"] == "ServiceRequest" else None
    for target in (ctx.report, request):
        if target is not None:
            target.setdefault("specimen", []).append(ref)
    ctx.group_specimens.append(ref)
    if ctx.report is None:
        return
    results = {r["reference"] for r in ctx.report.get("result", [])}
    observations = [e.resource for e in ctx.entries.values() if e.full_url in results]
    for obs in observations:
        if len(ctx.group_specimens) == 1:
            obs.setdefault("specimen", ref)
        elif obs.get("specimen") == ctx.group_specimens[0]:
            del obs["specimen"]  # two specimens in one group: Observation.specimen (0..1) is unknown


def open_order_group(ctx: MapContext, request: Json, report: Json | None) -> None:
    """An OBR starts an order group: in a specimen-first structure it is the current SPM's."""
    ctx.group_specimens = []
    if ctx.specimen is None:
        return
    if not ctx.specimen_header:  # the previous group's SPM does not carry over
        ctx.specimen = None
        return
    ref = ctx.ref(ctx.specimen)
    for target in (request, report):
        if target is not None and ref not in target.setdefault("specimen", []):
            target["specimen"].append(ref)
    ctx.group_specimens = [ref]


def close_order_group(ctx: MapContext) -> None:
    """An ORC ends the previous order group (and, outside specimen-first structures, its SPM)."""
    ctx.group_specimens = []
    if not ctx.specimen_header:
        ctx.specimen = None


def link_observation(obs: Json, ctx: MapContext) -> None:
    """An OBX in a specimen group: a result made on the specimen, or (right after the SPM, before
    any OBR of the group) an observation about the specimen itself."""
    if ctx.specimen is None:
        return
    ref = ctx.ref(ctx.specimen)
    if ctx.specimen_header and ctx.order is not None:
        obs["specimen"] = ref
    else:
        obs["focus"] = [ref]
