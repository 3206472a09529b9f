"""TXA (+ its OBX content) → DocumentReference (IG: Segment TXA to DocumentReference; MDM messages).

The id is TXA-12 (unique document number) with its namespace, so the addenda, edits and status
changes of one document (T02…T11) update one DocumentReference. Text OBX lines become one
text/plain attachment; ED/RP OBX values become attachments of their own. A parent document
(TXA-13) is what an addendum appends to and what a replacement (T09/T10) replaces. TXA-6
(origination) dates the document, TXA-18 (confidentiality, table 0272) labels it, TXA-25 is its
title.
"""

from __future__ import annotations

import base64

from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import TABLE_VALUE_NOT_FOUND, MapContext
from fhir_gateway.ingest.hl7v2.mapping.datatypes import Json, Rep, code_in, comp, ei, instant, put
from fhir_gateway.ingest.hl7v2.mapping.orders import order_key
from fhir_gateway.ingest.hl7v2.mapping.resources import practitioner

DOCUMENT_CHANGE_TRIGGERS = frozenset({"T03", "T04", "T05", "T06", "T07", "T08", "T09", "T10", "T11"})
REPLACEMENT_TRIGGERS = frozenset({"T09", "T10"})  # document replacement notification (and content)


def _first(seg: Segment, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None)


def map_txa(seg: Segment, ctx: MapContext) -> None:
    finish_document(ctx)
    if ctx.patient is None:
        return
    status = tables.DOC_AVAILABILITY_0275.get(seg.value(19).upper(), "current")
    if ctx.message.trigger == "T11":  # document cancel
        status = "entered-in-error"
    doc: Json = {"resourceType": "DocumentReference", "status": status, "subject": ctx.patient}
    put(doc, "docStatus", tables.DOC_STATUS_0271.get(seg.value(17).upper()))
    put(doc, "type", code_in(_first(seg, 2), "0270"))
    master = ei(_first(seg, 12))
    put(doc, "masterIdentifier", master)
    put(doc, "date", instant(seg.value(6), ctx.tz) or instant(seg.value(4), ctx.tz))
    put(doc, "description", seg.value(25))
    put(doc, "securityLabel", [c for c in (_confidentiality(seg, ctx),) if c])
    file_name = seg.value(16)
    if file_name:
        doc["identifier"] = [{"value": file_name}]
    authors = [p for p in (practitioner(r, ctx) for r in seg.repetitions(9)) if p]
    put(doc, "author", authors or [p for p in (practitioner(r, ctx) for r in seg.repetitions(5)) if p])
    authenticator = practitioner(_first(seg, 10), ctx)
    if authenticator:
        doc["authenticator"] = authenticator
    if ctx.encounter is not None:
        doc["context"] = {"encounter": [ctx.encounter]}
    parent = ei(_first(seg, 13))
    if parent is not None:
        code = "replaces" if ctx.message.trigger in REPLACEMENT_TRIGGERS else "appends"
        doc["relatesTo"] = [{"code": code, "target": {"identifier": parent}}]
    res_id = order_key("DocumentReference", _first(seg, 12), _first(seg, 16)) or ctx.message_id(
        "DocumentReference", seg
    )
    doc = ctx.keep(doc, res_id)
    ctx.document = doc
    ctx.document_text = []
    ctx.order = ctx.report = None
    ctx.last = doc
    content_type = seg.value(3).upper()
    doc["_content_type"] = "text/plain" if content_type in ("", "TX", "FT", "ST") else content_type


def _confidentiality(seg: Segment, ctx: MapContext) -> Json | None:
    """TXA-18 → securityLabel: the v2-0272 code (IG DocumentConfidentialityStatus) and its v3
    Confidentiality counterpart, the label the privacy rules and the security-labels binding know."""
    code = seg.value(18).upper()
    if not code:
        return None
    known = tables.DOC_CONFIDENTIALITY_0272.get(code)
    if known is None:
        ctx.warn(
            seg, 18, TABLE_VALUE_NOT_FOUND, "TXA-18 (confidentiality status) is not in table 0272; ignored"
        )
        return None
    display, v3_code, v3_display = known
    return {
        "coding": [
            {"system": tables.V2_SYSTEM.format(table="0272"), "code": code, "display": display},
            {"system": tables.V3_CONFIDENTIALITY, "code": v3_code, "display": v3_display},
        ]
    }


def finish_document(ctx: MapContext) -> None:
    """Close the current TXA: its text lines become the text/plain attachment (content is 1..*)."""
    doc = ctx.document
    if doc is None:
        return
    content_type = doc.pop("_content_type", "text/plain")
    if ctx.document_text:
        text = "\n".join(ctx.document_text)
        data = base64.b64encode(text.encode("utf-8")).decode("ascii")
        mime = content_type if "/" in content_type else "text/plain"
        doc.setdefault("content", []).insert(0, {"attachment": {"contentType": mime, "data": data}})
    if not doc.get("content"):
        doc["content"] = [{"attachment": {"contentType": "text/plain", "title": "no content in message"}}]
    ctx.document = None
    ctx.document_text = []


__all__ = ["comp", "finish_document", "map_txa"]
