"""The state one message's mapping shares: the Bundle being built, the anchors, and the issues.

Segment mappers are pure functions `(segment, ctx) -> None`: they read the segment, add resources
through `ctx.add` (which gives each a deterministic id and a `urn:uuid` fullUrl), remember anchors
other segments attach to (the patient, the encounter, the current order or report), and report
problems with `ctx.error` / `ctx.warn` instead of raising. An error makes the message fail (AE); a
warning is acknowledged with the message (ERR severity W). Issue texts name fields, never values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Message, Segment
from fhir_gateway.ingest.hl7v2.mapping.datatypes import Zone, date_time, instant

Resource = dict[str, Any]
Reference = dict[str, Any]

# Table 0357 Message Error Condition Codes (the ones the mappers use)
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY = "204"
DUPLICATE_KEY = "205"
RECORD_LOCKED = "206"
INTERNAL_ERROR = "207"


@dataclass(frozen=True, slots=True)
class MapIssue:
    """One problem, located as ERR-2 wants it: segment id, segment sequence (1-based), field."""

    severity: str  # "E" error (message fails) | "W" warning
    code: str  # table 0357
    text: str  # no PHI: names the field and the problem
    segment: str = ""
    sequence: int = 0
    field: int = 0

    @property
    def location(self) -> str:
        return f"{self.segment}-{self.field}" if self.field else self.segment


@dataclass(slots=True)
class Entry:
    resource: Resource
    full_url: str


@dataclass(slots=True)
class MapContext:
    message: Message
    source: str  # "MSH-3^MSH-4" of the sender: the authority of message-scoped ids
    # applied to times sent without a zone: the sender's UTC offset (MSH-7), else the configured zone
    tz: Zone | None = None
    issues: list[MapIssue] = field(default_factory=list)
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    patient: Reference | None = None
    patient_id: str | None = None
    encounter: Reference | None = None
    order: Resource | None = None  # the current ServiceRequest (ORC/OBR group)
    report: Resource | None = None  # the current DiagnosticReport (OBR group)
    document: Resource | None = None  # the current DocumentReference (TXA)
    appointment: Resource | None = None  # the current Appointment (SCH)
    specimen: Resource | None = None  # the current Specimen (SPM) until the next order group or SPM
    specimen_header: bool = False  # that SPM heads the order groups after it (SPECIMEN_FIRST_STRUCTURES)
    group_specimens: list[Reference] = field(default_factory=list)  # SPMs of the current order group
    requester: Reference | None = None  # PRT-5 of an ordering provider after ORC, for the order's OBR
    last: Resource | None = None  # the resource the previous segment produced (NTE, RXR attach here)
    pending_orc: Segment | None = None  # an ORC no detail segment (OBR, RXO, RXE, RXA) has used yet
    group_orc: Segment | None = None  # the ORC of the current order group
    pending_timing: list[Segment] = field(default_factory=list)  # TQ1 between an ORC and its RXO/RXE
    document_text: list[str] = field(default_factory=list)  # OBX text lines of the current TXA
    mapped: int = 0  # segments that produced something

    # ---- issues ---------------------------------------------------------------------------------
    def error(self, seg: Segment, fld: int, code: str, text: str) -> None:
        self.issues.append(MapIssue("E", code, text, seg.name, self.sequence(seg), fld))

    def warn(self, seg: Segment, fld: int, code: str, text: str) -> None:
        self.issues.append(MapIssue("W", code, text, seg.name, self.sequence(seg), fld))

    def when(self, seg: Segment, fld: int, text: str | None = None) -> str | None:
        """A DTM field (or the leaf `text` of it) as a dateTime; a value that is not one is ignored
        with a warning naming the field."""
        raw = seg.value(fld) if text is None else text
        value = date_time(raw, self.tz) if raw else None
        if raw and value is None:
            self.warn(seg, fld, DATA_TYPE_ERROR, f"{seg.name}-{fld} is not a valid date/time; ignored")
        return value

    def sequence(self, seg: Segment) -> int:
        """The segment's position among segments of its name (ERR-2.2)."""
        return sum(1 for s in self.message.segments[: seg.index + 1] if s.name == seg.name)

    @property
    def failed(self) -> bool:
        return any(i.severity == "E" for i in self.issues)

    # ---- ids and resources ----------------------------------------------------------------------
    def message_id(self, res_type: str, seg: Segment, extra: str = "") -> str:
        """An id scoped to this message (sender + MSH-10 + segment position): stable on resend/replay."""
        return stable_id(res_type, f"msg:{self.source}", f"{self.message.control_id}#{seg.index}{extra}")

    def add(self, resource: Resource, res_id: str) -> Reference:
        """Add (or merge into) a resource with a deterministic id; return a reference to it."""
        return self.ref(self.keep(resource, res_id))

    def keep(self, resource: Resource, res_id: str) -> Resource:
        """Add a resource, or merge it into the one with the same id (two segments naming one
        order, practitioner …: the first keeps its values, the second fills gaps); return the
        resource that stays in the Bundle, which later segments must edit."""
        key = (resource["resourceType"], res_id)
        existing = self.entries.get(key)
        if existing is not None:
            for name, value in resource.items():
                existing.resource.setdefault(name, value)
            return existing.resource
        resource["id"] = res_id
        self.entries[key] = Entry(resource, f"urn:uuid:{uuid.UUID(res_id[:32])}")
        self.mapped += 1
        return resource

    def resolve(self, ref: Reference | None) -> Resource | None:
        """The resource of this Bundle a reference made by `add`/`ref` points at."""
        if ref is None:
            return None
        return next((e.resource for e in self.entries.values() if e.full_url == ref.get("reference")), None)

    def ref(self, resource: Resource) -> Reference:
        entry = self.entries[(resource["resourceType"], resource["id"])]
        return {"reference": entry.full_url}

    def bundle(self) -> Resource:
        """The transaction Bundle: one PUT per resource, in the order they were first added."""
        msh = self.message.msh
        bundle: Resource = {"resourceType": "Bundle", "type": "transaction"}
        control_id = self.message.control_id
        if control_id:
            bundle["identifier"] = {"value": control_id}
        timestamp = msh.value(7)
        stamp = instant(timestamp, self.tz) if timestamp else None
        if stamp:
            bundle["timestamp"] = stamp
        bundle["entry"] = [
            {
                "fullUrl": e.full_url,
                "resource": e.resource,
                "request": {"method": "PUT", "url": f"{t}/{i}"},
            }
            for (t, i), e in self.entries.items()
        ]
        return bundle
