"""Acknowledgements (HL7 v2 chapter 2: original and enhanced acknowledgment modes).

Original mode (MSH-15 and MSH-16 empty): one ACK, MSA-1 AA (committed), AE (message error: it is
kept in the error queue) or AR (rejected: unsupported, or the store is down — send it again).
Enhanced mode (MSH-15 or MSH-16 valued): a commit ACK (CA / CE / CR) when MSH-15 asks for one,
then an application ACK (AA / AE / AR) when MSH-16 does; AL always, NE never, ER only on an error,
SU only on success (table 0155). A frame always gets at least one answer, even when the sender
asked for none, so a client that waits for a reply never hangs.

The ACK mirrors the inbound encoding characters and version; MSA-2 echoes MSH-10. Problems are
ERR segments: ERR-2 location (segment ^ sequence ^ field), ERR-3 table 0357 code, ERR-4 severity
(v2.5+); older versions get the ERR-1 ELD form (segment ^ sequence ^ field ^ code&text&HL70357).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from enum import Enum

from fhir_gateway.ingest.hl7v2.er7 import DEFAULT, Delimiters, Message
from fhir_gateway.ingest.hl7v2.mapping.context import MapIssue

DEFAULT_VERSION = "2.5.1"
SENDER = "FHIR_GATEWAY"


class Outcome(Enum):
    ACCEPTED = "accepted"  # committed (AA / CA)
    ERROR = "error"  # content error, kept in the error queue (AE; commit CA since it is stored)
    REJECTED = "rejected"  # unsupported or unreadable (AR / CR)
    UNAVAILABLE = "unavailable"  # store down: nothing kept, the sender must retry (AR / CR)


ORIGINAL = {
    Outcome.ACCEPTED: "AA",
    Outcome.ERROR: "AE",
    Outcome.REJECTED: "AR",
    Outcome.UNAVAILABLE: "AR",
}
COMMIT = {
    Outcome.ACCEPTED: "CA",
    Outcome.ERROR: "CA",
    Outcome.REJECTED: "CR",
    Outcome.UNAVAILABLE: "CR",
}


def escape(text: str, d: Delimiters = DEFAULT) -> str:
    """Escape delimiter characters in a text written into an ACK field."""
    out = text.replace(d.escape, f"{d.escape}E{d.escape}")
    for char, code in ((d.field, "F"), (d.component, "S"), (d.repetition, "R"), (d.subcomponent, "T")):
        out = out.replace(char, f"{d.escape}{code}{d.escape}")
    return out.replace("\r", " ").replace("\n", " ")


def is_enhanced(message: Message | None) -> bool:
    return message is not None and bool(message.msh.value(15) or message.msh.value(16))


def _wanted(condition: str, success: bool) -> bool:
    condition = condition.upper()
    if condition == "AL":
        return True
    if condition == "ER":
        return not success
    if condition == "SU":
        return success
    return False  # NE, or empty in enhanced mode


def acknowledgements(
    message: Message | None,
    outcome: Outcome,
    issues: Sequence[MapIssue] = (),
    *,
    text: str = "",
    raw_control_id: str = "",
) -> list[str]:
    """The ACK message(s) to send back for `message`, in order (at least one)."""
    if not is_enhanced(message):
        return [build_ack(message, ORIGINAL[outcome], issues, text=text, raw_control_id=raw_control_id)]
    assert message is not None
    commit = COMMIT[outcome]
    acks = []
    if _wanted(message.msh.value(15), commit == "CA"):
        acks.append(build_ack(message, commit, issues if commit != "CA" else (), text=text))
    if commit == "CA" and _wanted(message.msh.value(16), outcome is Outcome.ACCEPTED):
        acks.append(build_ack(message, ORIGINAL[outcome], issues, text=text))
    if not acks:
        acks.append(build_ack(message, commit, issues if commit != "CA" else (), text=text))
    return acks


def build_ack(
    message: Message | None,
    code: str,
    issues: Sequence[MapIssue] = (),
    *,
    text: str = "",
    raw_control_id: str = "",
    now: float | None = None,
) -> str:
    """One ACK message (segments joined by CR, no trailing CR)."""
    d = message.delimiters if message is not None else DEFAULT
    fs = d.field
    version = (message.msh.value(12) if message is not None else "") or DEFAULT_VERSION
    msh = message.msh if message is not None else None
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now if now is not None else time.time())) + "+0000"
    trigger = message.trigger if message is not None else ""
    msg_type = f"ACK{d.component}{trigger}{d.component}ACK" if trigger else "ACK"
    if trigger and version < "2.4":
        msg_type = f"ACK{d.component}{trigger}"
    fields = [
        "MSH",
        d.encoding_characters,
        msh.raw(5) if msh is not None and msh.raw(5) else SENDER,
        msh.raw(6) if msh is not None else "",
        msh.raw(3) if msh is not None else "",
        msh.raw(4) if msh is not None else "",
        stamp,
        "",
        msg_type,
        uuid.uuid4().hex[:20],
        (msh.raw(11) if msh is not None else "") or "P",
        escape(version, d),
    ]
    segments = [fs.join(fields)]
    control_id = msh.raw(10) if msh is not None else escape(raw_control_id, d)
    msa = ["MSA", code, control_id]
    if text:
        msa.append(escape(text, d))
    segments.append(fs.join(msa))
    segments.extend(err_segment(issue, d, version) for issue in issues[:20])
    return "\r".join(segments)


def err_segment(issue: MapIssue, d: Delimiters, version: str) -> str:
    fs, cs, ss = d.field, d.component, d.subcomponent
    location = cs.join([issue.segment, str(issue.sequence) if issue.sequence else "", str(issue.field or "")])
    location = location.rstrip(cs)
    text = escape(issue.text, d)
    if version < "2.5":
        eld = cs.join(
            [
                issue.segment,
                str(issue.sequence or ""),
                str(issue.field or ""),
                ss.join([issue.code, text, "HL70357"]),
            ]
        )
        return f"ERR{fs}{eld}"
    severity = issue.severity if issue.severity in ("E", "W", "I") else "E"
    code = cs.join([issue.code, text, "HL70357"])
    return fs.join(["ERR", "", location, code, severity, "", "", "", text])
