"""One v2 message → one FHIR transaction Bundle (+ the issues found), and which messages we take.

`map_message` walks the segments in order and hands each to its mapper (mapping/__init__.py); a
mapper that raises is a bug, but never a dropped message: it becomes an internal-error issue (207)
and the message is answered AE and kept in the error queue. `check_supported` decides AR for
messages that truly have no meaning here (table 0076 message types we do not take, unknown
trigger events, non-v2 versions).
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from datetime import tzinfo

import structlog

from fhir_gateway.ingest.hl7v2.er7 import Message
from fhir_gateway.ingest.hl7v2.mapping import FINISHERS, SEGMENT_MAPPERS
from fhir_gateway.ingest.hl7v2.mapping.context import (
    INTERNAL_ERROR,
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_VERSION_ID,
    MapContext,
    MapIssue,
    Resource,
)
from fhir_gateway.ingest.hl7v2.mapping.datatypes import offset

log = structlog.get_logger("fhir_gateway.hl7v2")

# Message type (table 0076) → the trigger events (table 0003) that carry data we map. Z triggers
# (locally defined events) are accepted for every type: their standard segments still map.
SUPPORTED_TRIGGERS: dict[str, str] = {
    "ADT": r"A(0[1-9]|[1-5]\d|6[0-2])",
    "BAR": r"P(0[1-2]|0[5-7]|1[0-2])",
    "DFT": r"P(03|11)",
    "ORU": r"R(0[1-4]|3[0-2]|40|41)",
    "OUL": r"R2[1-4]",
    "ORM": r"O01",
    "OML": r"O(21|33|35|39|59)",
    "OMG": r"O19",
    "OMI": r"O23",
    "OMB": r"O27",
    "OMD": r"O03",
    "OMN": r"O07",
    "OMP": r"O09",
    "OMS": r"O05",
    "OPL": r"O37",
    "ORL": r"O(22|34|36|40)",
    "RDE": r"O(01|11|25)",
    "RDS": r"O(01|13)",
    "RGV": r"O(01|15)",
    "RAS": r"O(01|17)",
    "VXU": r"V04",
    "SIU": r"S(1[2-9]|2[0-6])",
    "SRM": r"S(0[1-9]|1[01])",
    "MDM": r"T(0[1-9]|1[01])",
    "PPR": r"PC[1-3]",
    "PPP": r"PC[B-D]",
    "PGL": r"PC[6-8]",
    "REF": r"I1[2-5]",
    "RRI": r"I1[2-5]",
    "CCM": r"I21",
}
_TRIGGERS = {code: re.compile(rf"({pattern}|Z\w{{2}})\Z") for code, pattern in SUPPORTED_TRIGGERS.items()}


@dataclass(slots=True)
class MappedMessage:
    bundle: Resource
    issues: list[MapIssue] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(i.severity == "E" for i in self.issues)

    @property
    def references(self) -> list[str]:
        return [e["request"]["url"] for e in self.bundle.get("entry", [])]


def source_system(message: Message) -> str:
    """`MSH-3^MSH-4` (namespace ids, else universal ids): the sender, as idempotency keys and
    `RequestContext.source_system` name it."""
    msh = message.msh
    return f"{msh.value(3) or msh.value(3, 2)}^{msh.value(4) or msh.value(4, 2)}"


def check_supported(message: Message) -> MapIssue | None:
    """The reason to reject (AR) a message outright, or None when it is one we take."""
    msh = message.msh
    if not message.message_code:
        return MapIssue("E", REQUIRED_FIELD_MISSING, "MSH-9 (message type) is required", "MSH", 1, 9)
    if not message.control_id:
        return MapIssue("E", REQUIRED_FIELD_MISSING, "MSH-10 (message control id) is required", "MSH", 1, 10)
    version = msh.value(12)
    if version and not version.startswith("2."):
        return MapIssue("E", UNSUPPORTED_VERSION_ID, "MSH-12 must be an HL7 v2.x version", "MSH", 1, 12)
    pattern = _TRIGGERS.get(message.message_code)
    if pattern is None:
        return MapIssue("E", UNSUPPORTED_MESSAGE_TYPE, "Unsupported message type (MSH-9.1)", "MSH", 1, 9)
    trigger = message.trigger or _default_trigger(message.structure)
    if not pattern.match(trigger):
        return MapIssue("E", UNSUPPORTED_EVENT_CODE, "Unsupported trigger event (MSH-9.2)", "MSH", 1, 9)
    return None


def _default_trigger(structure: str) -> str:
    """A message without MSH-9.2 but with a structure (ADT_A01) takes the structure's trigger."""
    return structure.partition("_")[2]


def map_message(message: Message, zone: tzinfo | None = None) -> MappedMessage:
    """The message as a transaction Bundle. `zone` (settings `hl7.timezone`) dates the times of a
    sender whose MSH-7 carries no UTC offset; without either, such times are cut to their date."""
    ctx = MapContext(message, source_system(message), tz=offset(message.msh.value(7)) or zone)
    try:
        for seg in message.segments:
            mapper = SEGMENT_MAPPERS.get(seg.name)
            if mapper is not None:
                mapper(seg, ctx)
        for finish in FINISHERS:
            finish(ctx)
    except Exception as exc:  # a mapper bug must not lose the message: it goes to the error queue
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        log.error(  # no exception text: it may quote message content (PHI)
            "hl7v2_mapping_failed",
            error=type(exc).__name__,
            where=f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}",
            message_type=message.message_code,
            trigger=message.trigger,
        )
        ctx.issues.append(MapIssue("E", INTERNAL_ERROR, "Internal error while mapping the message"))
    return MappedMessage(ctx.bundle(), ctx.issues)
