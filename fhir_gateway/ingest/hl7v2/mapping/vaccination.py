"""OBX of a VXU order group that describe the vaccination itself → Immunization elements.

CDC's immunization IG sends funding and Vaccine Information Statement facts as OBX after the RXA,
identified by LOINC; the v2-to-FHIR IG (OBX[Immunization]) and FHIR's Immunization have elements for
them. The OBX still becomes an Observation (partOf the Immunization): nothing is taken away.

- 64994-7 funding program eligibility → programEligibility;
- 30963-3 funding source → fundingSource;
- 69764-9 VIS document type (bar code), 29768-9 VIS publication date, 29769-7 VIS presentation date
  → education, one entry per OBX-4 sub-ID. An entry needs a document type (imm-1): a VIS named only
  by dates and vaccine type is left to its Observations (`finish_education`).
"""

from __future__ import annotations

from typing import Any

from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping.context import MapContext
from fhir_gateway.ingest.hl7v2.mapping.datatypes import Json, codeable, comp, date_time

PROGRAM_ELIGIBILITY = "64994-7"
FUNDING_SOURCE = "30963-3"
VIS_DOCUMENT_TYPE = "69764-9"
VIS_PUBLISHED = "29768-9"
VIS_PRESENTED = "29769-7"
_EDUCATION_DATES = {VIS_PUBLISHED: "publicationDate", VIS_PRESENTED: "presentationDate"}
_SUB_ID = "_subId"  # an education entry's OBX-4 while the message is mapped; removed at the end


def describe_immunization(seg: Segment, loinc: str, immunization: Json, ctx: MapContext) -> None:
    """Fill the Immunization element this OBX (OBX-3 LOINC `loinc`) describes, if any."""
    value = next(iter(seg.repetitions(5)), None)
    if value is None:
        return
    if loinc in (PROGRAM_ELIGIBILITY, FUNDING_SOURCE):
        concept = codeable(value)
        if concept:
            if loinc == PROGRAM_ELIGIBILITY:
                immunization.setdefault("programEligibility", []).append(concept)
            else:
                immunization.setdefault("fundingSource", concept)
    elif loinc == VIS_DOCUMENT_TYPE and comp(value, 1):
        _education(immunization, seg.value(4))["documentType"] = comp(value, 1)
    elif loinc in _EDUCATION_DATES:
        when = date_time(comp(value, 1), ctx.tz)
        if when:
            _education(immunization, seg.value(4))[_EDUCATION_DATES[loinc]] = when


def _education(immunization: Json, sub_id: str) -> Json:
    entries: list[Json] = immunization.setdefault("education", [])
    for entry in entries:
        if entry[_SUB_ID] == sub_id:
            return entry
    entry = {_SUB_ID: sub_id}
    entries.append(entry)
    return entry


def finish_education(ctx: MapContext) -> None:
    """Keep the education entries that name their document (imm-1), without their grouping key."""
    for entry in ctx.entries.values():
        immunization: dict[str, Any] = entry.resource
        if immunization.get("resourceType") != "Immunization" or "education" not in immunization:
            continue
        kept = [
            {k: v for k, v in e.items() if k != _SUB_ID}
            for e in immunization["education"]
            if "documentType" in e
        ]
        if kept:
            immunization["education"] = kept
        else:
            del immunization["education"]
