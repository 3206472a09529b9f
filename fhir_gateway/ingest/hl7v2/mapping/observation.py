"""OBX → Observation typed by OBX-2 (IG: Segment OBX to Observation); NTE → annotations.

OBX-2 decides value[x]: NM → valueQuantity (OBX-6 units), CE/CWE/CNE/CF → valueCodeableConcept,
SN → valueQuantity with comparator, valueRange or valueRatio (else, e.g. `^2^+`, valueString), DT/DTM/
TS → valueDateTime, DR → valuePeriod, NR → valueRange, TM → valueTime, ST/TX/FT (and anything
textual) → valueString; ED/RP → an attachment on the report (R4 Observation has no attachment value).
OBX-19 (date/time of the analysis) is the IG's observation-analysis-date-time extension, not
`issued`: the result is issued with its report (OBR-22). OBX after a TXA is document content, not
an Observation.
The Observation id is derived from its report (or patient) and OBX-3/OBX-4/OBX-1, so a corrected
result (OBX-11 C) replaces the preliminary one.
"""

from __future__ import annotations

import base64
import re

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
    comp,
    date_time,
    number,
    period,
    put,
    quantity,
)
from fhir_gateway.ingest.hl7v2.mapping.resources import organization, practitioner
from fhir_gateway.ingest.hl7v2.mapping.specimen import link_observation
from fhir_gateway.ingest.hl7v2.mapping.vaccination import describe_immunization

CODED = frozenset({"CE", "CWE", "CNE", "CF", "CD", "IS", "ID"})
DATES = frozenset({"DT", "DTM", "TS"})
ANALYSIS_TIME = "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ATTACHMENTS = frozenset({"ED", "RP"})
_RANGE = re.compile(r"^\s*([-+]?\d*\.?\d+)\s*(?:-|to|–)\s*([-+]?\d*\.?\d+)\s*$", re.IGNORECASE)
_BOUND = re.compile(r"^\s*(<=?|>=?)\s*([-+]?\d*\.?\d+)\s*$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?")
NOTE_TARGETS = frozenset(
    {
        "Observation",
        "ServiceRequest",
        "AllergyIntolerance",
        "Condition",
        "Procedure",
        "Immunization",
        "MedicationRequest",
        "MedicationDispense",
        "ChargeItem",
    }
)


def map_obx(seg: Segment, ctx: MapContext) -> None:
    value_type = seg.value(2).upper()
    if ctx.document is not None and ctx.order is None:
        _document_content(seg, value_type, ctx)
        return
    if ctx.patient is None:
        return
    if value_type in ATTACHMENTS:
        _attachment(seg, value_type, ctx)
        return
    code_rep = next(iter(seg.repetitions(3)), None)
    code = codeable(code_rep)
    if code is None:
        ctx.warn(seg, 3, REQUIRED_FIELD_MISSING, "OBX-3 (observation identifier) is empty; OBX skipped")
        return
    status = tables.lookup(tables.OBSERVATION_STATUS_0085, seg.value(11)) or "unknown"
    obs: Json = {"resourceType": "Observation", "status": status, "code": code, "subject": ctx.patient}
    put(obs, "encounter", ctx.encounter)
    _value(seg, value_type, obs, ctx)
    if seg.value(11).upper() == "X" and not any(k.startswith("value") for k in obs):
        # IG: "results cannot be obtained" → cancelled, and the value's absence says why: R4's
        # data-absent-reason has no cannot-be-obtained, its not-performed says the test was not done
        obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-performed"}]}
    _reference_range(seg, obs)
    interpretation = [_interpretation(r) for r in seg.repetitions(8)]
    put(obs, "interpretation", [i for i in interpretation if i])
    effective = date_time(seg.value(14), ctx.tz)
    if effective is None and ctx.report is not None:
        effective = ctx.report.get("effectiveDateTime")
    put(obs, "effectiveDateTime", effective)
    put(obs, "issued", ctx.report.get("issued") if ctx.report is not None else None)
    analysed = ctx.when(seg, 19)
    if analysed:
        obs["extension"] = [{"url": ANALYSIS_TIME, "valueDateTime": analysed}]
    performers = [p for p in (practitioner(r, ctx) for r in seg.repetitions(16)) if p]
    lab = organization(seg.field(23)[0]) if seg.has(23) else None
    put(obs, "performer", performers + ([lab] if lab else []))
    put(obs, "method", codeable(next(iter(seg.repetitions(17)), None)))
    put(obs, "bodySite", codeable(next(iter(seg.repetitions(20)), None)))
    _link_order(obs, seg, ctx)
    link_observation(obs, ctx)
    key = "|".join([comp(code_rep or [], 1), comp(code_rep or [], 3), seg.value(4), seg.value(1)])
    if ctx.report is not None:
        obs_id = stable_id("Observation", f"DiagnosticReport/{ctx.report['id']}", key)
    elif effective and ctx.patient_id:
        obs_id = stable_id("Observation", f"Patient/{ctx.patient_id}", f"{key}|{effective}")
    else:
        obs_id = ctx.message_id("Observation", seg)
    obs = ctx.keep(obs, obs_id)
    if ctx.report is not None:
        ctx.report.setdefault("result", []).append(ctx.ref(obs))
    ctx.last = obs


def _link_order(obs: Json, seg: Segment, ctx: MapContext) -> None:
    """A result is basedOn its order; an OBX in a VXU order group (funding eligibility, VIS dates)
    is partOf the Immunization its RXA made (IG VXU_V04 ORDER.OBSERVATION), and fills the element
    of it that it describes (vaccination.py)."""
    order = ctx.order
    if order is None:
        return
    if order.get("resourceType") == "ServiceRequest":
        obs["basedOn"] = [ctx.ref(order)]
    elif order.get("resourceType") == "Immunization":
        obs["partOf"] = [ctx.ref(order)]
        loinc = next(
            (c["code"] for c in obs["code"].get("coding", ()) if c.get("system") == tables.LOINC), None
        )
        if loinc:
            describe_immunization(seg, loinc, order, ctx)


NOT_A_DECIMAL = "OBX-5 is not a number a FHIR decimal holds, although OBX-2 is NM; kept as text"


def _value(seg: Segment, value_type: str, obs: Json, ctx: MapContext) -> None:
    reps = seg.repetitions(5)
    if not reps:
        return
    first = reps[0]
    units = next(iter(seg.repetitions(6)), None)
    if value_type == "NM":
        num = number(comp(first, 1))
        if num is None:
            ctx.warn(
                seg,
                5,
                DATA_TYPE_ERROR,
                NOT_A_DECIMAL,
            )
            obs["valueString"] = comp(first, 1)
        else:
            obs["valueQuantity"] = quantity(num, units)
    elif value_type in CODED:
        put(obs, "valueCodeableConcept", codeable(first))
    elif value_type == "SN":
        _structured_numeric(first, units, obs, seg, ctx)
    elif value_type in DATES:
        when = date_time(comp(first, 1), ctx.tz)
        if when is None:
            ctx.warn(seg, 5, DATA_TYPE_ERROR, "OBX-5 is not a valid date/time; kept as text")
            obs["valueString"] = comp(first, 1)
        else:
            obs["valueDateTime"] = when
    elif value_type == "DR":
        span = period(ctx.when(seg, 5, comp(first, 1)), ctx.when(seg, 5, comp(first, 2)))
        put(obs, "valuePeriod", span)
    elif value_type == "NR":
        low, high = number(comp(first, 1)), number(comp(first, 2))
        rng: Json = {}
        put(rng, "low", quantity(low, units) if low is not None else None)
        put(rng, "high", quantity(high, units) if high is not None else None)
        put(obs, "valueRange", rng)
    elif value_type == "TM":
        m = _TIME.match(comp(first, 1))
        if m:
            obs["valueTime"] = f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}"
    elif value_type == "CQ":
        num = number(comp(first, 1))
        if num is not None:
            # CQ-2 is a CWE whose parts are subcomponents (10^mg&milligram&UCUM): as components.
            cq_units = [[part] for part in first[1]] if len(first) > 1 else None
            obs["valueQuantity"] = quantity(num, cq_units or units)
    else:  # ST, TX, FT and anything else: text (repetitions are lines)
        text = "\n".join(_text(r) for r in reps)
        put(obs, "valueString", text)


def _text(rep: Rep) -> str:
    return "^".join(" ".join(subs) if len(subs) > 1 else subs[0] for subs in rep).rstrip("^")


def _structured_numeric(rep: Rep, units: Rep | None, obs: Json, seg: Segment, ctx: MapContext) -> None:
    """SN (comparator ^ num1 ^ separator/suffix ^ num2) per the IG: `:` or `/` → valueRatio, `-` →
    valueRange, no separator → valueQuantity (with its comparator); anything else (`<>`, the `+`
    suffix of `^2^+`, text) is kept whole as valueString rather than cut to its first number."""
    comparator, n1, sep, n2 = comp(rep, 1), number(comp(rep, 2)), comp(rep, 3), number(comp(rep, 4))
    if comparator != "<>" and n1 is not None and n2 is not None and sep in (":", "/"):
        obs["valueRatio"] = {"numerator": quantity(n1, units), "denominator": quantity(n2, units)}
    elif comparator != "<>" and n1 is not None and n2 is not None and sep == "-":
        obs["valueRange"] = {"low": quantity(n1, units), "high": quantity(n2, units)}
    elif comparator in ("", "<", "<=", ">", ">=", "=") and n1 is not None and not sep and not comp(rep, 4):
        q = quantity(n1, units)
        if comparator in ("<", "<=", ">", ">="):
            q["comparator"] = comparator
        obs["valueQuantity"] = q
    else:
        text = " ".join(p for p in (*(comp(rep, i) for i in range(1, 5)), comp(units or [], 1)) if p)
        put(obs, "valueString", text)
        if not (n1 is not None and sep == "+"):
            ctx.warn(seg, 5, DATA_TYPE_ERROR, "OBX-5 is not a structured numeric (SN) value; kept as text")


def _reference_range(seg: Segment, obs: Json) -> None:
    text = seg.value(7)
    if not text:
        return
    units = next(iter(seg.repetitions(6)), None)
    rng: Json = {}
    m = _RANGE.match(text)
    b = _BOUND.match(text)
    if m:
        low, high = number(m.group(1)), number(m.group(2))
        if low is not None and high is not None:
            rng = {"low": _simple(quantity(low, units)), "high": _simple(quantity(high, units))}
    elif b:
        val = number(b.group(2))
        if val is not None:
            rng = {"high" if b.group(1).startswith("<") else "low": _simple(quantity(val, units))}
    rng["text"] = text
    obs["referenceRange"] = [rng]


def _simple(q: Json) -> Json:
    q.pop("comparator", None)
    return q


def _interpretation(rep: Rep) -> Json | None:
    code = comp(rep, 1)
    if not code:
        return None
    if code.upper() in tables.INTERPRETATION_0078:
        coding: Json = {"system": tables.INTERPRETATION_SYSTEM, "code": code.upper()}
        put(coding, "display", comp(rep, 2))
        return {"coding": [coding]}
    return codeable(rep)


def _attachment(seg: Segment, value_type: str, ctx: MapContext) -> None:
    attachment = ed_attachment(seg, value_type)
    if attachment is None:
        return
    if ctx.report is not None:
        ctx.report.setdefault("presentedForm", []).append(attachment)
    elif ctx.document is not None:
        ctx.document.setdefault("content", []).append({"attachment": attachment})


def ed_attachment(seg: Segment, value_type: str) -> Json | None:
    """ED (source ^ type ^ subtype ^ encoding ^ data) or RP (pointer ^ ... ^ type ^ subtype) → Attachment."""
    rep = next(iter(seg.repetitions(5)), None)
    if rep is None:
        return None
    if value_type == "RP":
        url = comp(rep, 1)
        return {"url": url, "contentType": _mime(comp(rep, 3), comp(rep, 4))} if url else None
    data, encoding = comp(rep, 5), comp(rep, 4).upper()
    if not data:
        return None
    if encoding != "BASE64":
        data = base64.b64encode(data.encode("utf-8")).decode("ascii")
    return {"contentType": _mime(comp(rep, 2), comp(rep, 3)), "data": data.replace("\n", "")}


def _mime(kind: str, subtype: str) -> str:
    kind, subtype = kind.lower(), subtype.lower()
    if "/" in subtype:
        return subtype
    major = {"ap": "application", "au": "audio", "im": "image", "tx": "text", "text": "text"}.get(kind, kind)
    if major and subtype:
        return f"{major}/{subtype}"
    return "application/octet-stream" if major != "text" else "text/plain"


def _document_content(seg: Segment, value_type: str, ctx: MapContext) -> None:
    assert ctx.document is not None
    if value_type in ATTACHMENTS:
        attachment = ed_attachment(seg, value_type)
        if attachment:
            ctx.document.setdefault("content", []).append({"attachment": attachment})
        return
    ctx.document_text.extend(_text(r) for r in seg.repetitions(5))


def map_nte(seg: Segment, ctx: MapContext) -> None:
    """NTE-3 comment → the note of the resource the previous segment made (Appointment: comment)."""
    text = "\n".join(_text(r) for r in seg.repetitions(3)).strip()
    target = ctx.last
    if not text or target is None:
        return
    res_type = target.get("resourceType")
    if res_type in NOTE_TARGETS:
        target.setdefault("note", []).append({"text": text})
    elif res_type == "Appointment":
        target["comment"] = f"{target['comment']}\n{text}" if target.get("comment") else text
    elif res_type == "DiagnosticReport":
        target["conclusion"] = f"{target['conclusion']}\n{text}" if target.get("conclusion") else text
