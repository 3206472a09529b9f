"""PID demographics that FHIR carries as extensions (IG: Segment PID to Patient).

- PID-10 race and PID-22 ethnic group → the US Core race and ethnicity extensions: CDC race and
  ethnicity codes (CDCREC, which v2 tables 0005/0189 suggest) of the OMB categories as ombCategory,
  other CDCREC codes as detailed, and every value's text (the extensions' required `text`), so a
  site's own codes ("W", "B") are kept as words. Table 0189's H/N/U are the IG's translations.
- PID-17 religion → the core patient-religion extension (table 0006).
- PID-7 with a time of day → the core patient-birthTime extension on birthDate (when the time has a
  zone: the value's, MSH-7's or `hl7.timezone`).
"""

from __future__ import annotations

import re

from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping.context import MapContext
from fhir_gateway.ingest.hl7v2.mapping.datatypes import Json, Rep, code_in, comp, date_time, put

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
RACE = US_CORE + "us-core-race"
ETHNICITY = US_CORE + "us-core-ethnicity"
RELIGION = "http://hl7.org/fhir/StructureDefinition/patient-religion"
BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
CDCREC = "urn:oid:2.16.840.1.113883.6.238"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"

OMB_RACE = {
    "1002-5": "American Indian or Alaska Native",
    "2028-9": "Asian",
    "2054-5": "Black or African American",
    "2076-8": "Native Hawaiian or Other Pacific Islander",
    "2106-3": "White",
}
OMB_ETHNICITY = {"2135-2": "Hispanic or Latino", "2186-5": "Not Hispanic or Latino"}
ETHNIC_GROUP_0189 = {"H": "2135-2", "N": "2186-5", "U": "UNK"}  # IG ConceptMap table 0189 → CDCREC
_CDCREC_CODE = re.compile(r"\d{4}-\d")
_CDCREC_NAMES = frozenset({"", "CDCREC", "HL70005", "HL70189"})
_UNKNOWN = {"UNK": "unknown", "ASKU": "asked but unknown"}  # v3 NullFlavor, as US Core allows


def map_demographics(seg: Segment, patient: Json, ctx: MapContext) -> None:
    extensions = [
        e
        for e in (
            _omb(seg.repetitions(10), RACE, OMB_RACE, {}),
            _omb(seg.repetitions(22), ETHNICITY, OMB_ETHNICITY, ETHNIC_GROUP_0189),
            _religion(seg),
        )
        if e
    ]
    if extensions:
        patient["extension"] = [*patient.get("extension", []), *extensions]
    birth = date_time(seg.value(7), ctx.tz) if patient.get("birthDate") else None
    if birth and "T" in birth:
        patient["_birthDate"] = {"extension": [{"url": BIRTH_TIME, "valueDateTime": birth}]}


def _omb(reps: list[Rep], url: str, categories: dict[str, str], local: dict[str, str]) -> Json | None:
    parts: list[Json] = []
    words: list[str] = []
    for rep in reps:
        code, display = comp(rep, 1), comp(rep, 2)
        if not code and not display:
            continue
        # the CDC code: the primary triplet's, else the alternate's (W^White^L^2106-3^White^CDCREC)
        cdc, cdc_display = next(
            (
                (local.get(comp(rep, at).upper(), comp(rep, at)), comp(rep, at + 1))
                for at in (1, 4)
                if comp(rep, at) and comp(rep, at + 2).upper() in _CDCREC_NAMES
            ),
            ("", ""),
        )
        words.append(display or categories.get(cdc) or _UNKNOWN.get(cdc) or code)
        if cdc in categories:
            parts.append({"url": "ombCategory", "valueCoding": _coding(CDCREC, cdc, categories[cdc])})
        elif cdc in _UNKNOWN:
            parts.append({"url": "ombCategory", "valueCoding": _coding(NULL_FLAVOR, cdc, _UNKNOWN[cdc])})
        elif _CDCREC_CODE.fullmatch(cdc):
            parts.append({"url": "detailed", "valueCoding": _coding(CDCREC, cdc, cdc_display)})
    if not words:
        return None
    return {"url": url, "extension": [*parts, {"url": "text", "valueString": ", ".join(words)}]}


def _coding(system: str, code: str, display: str) -> Json:
    coding: Json = {"system": system, "code": code}
    put(coding, "display", display)
    return coding


def _religion(seg: Segment) -> Json | None:
    religion = code_in(seg.field(17)[0], "0006") if seg.has(17) else None
    return {"url": RELIGION, "valueCodeableConcept": religion} if religion else None
