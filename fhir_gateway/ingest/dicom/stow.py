"""STOW-RS without I/O (PS3.18 §10.5): the multipart/related request in, the DICOM JSON response out.

Request: `Content-Type: multipart/related; type="application/dicom"; boundary=...`, one Part 10
instance per part (RFC 2387). Response: a DICOM JSON data set (PS3.18 Annex F) with

    (0008,1190) RetrieveURL            the study, when all stored instances belong to one study
    (0008,1199) ReferencedSOPSequence  stored: (0008,1150) SOP Class, (0008,1155) SOP Instance, RetrieveURL
    (0008,1198) FailedSOPSequence      refused: SOP Class/Instance (when known), (0008,1197) FailureReason,
                                       and (0000,0902) ErrorComment saying why, without PHI

and the status 200 (all stored), 202 (some failed), 409 (none stored), or 503 when nothing was
stored only because the server lacked resources (the client may simply retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

from pydicom.datadict import tag_for_keyword

from fhir_gateway.errors import BadRequest, UnsupportedMediaType
from fhir_gateway.ingest.dicom.ingest import FailureReason, InstanceOutcome

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART_RELATED = "multipart/related"
CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Part:
    content_type: str | None
    content: bytes


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """`type/subtype` (lower case) and its parameters, parsed as RFC 2045 says (quotes and all)."""
    message = Message()
    message["content-type"] = header or ""
    params = {k.lower(): str(v) for k, v in message.get_params(failobj=[])[1:]}
    return message.get_content_type(), params


def dicom_parts(body: bytes, content_type: str | None) -> list[Part]:
    """The parts of a STOW-RS request body; 415 unless it is multipart/related of application/dicom."""
    kind, params = media_type(content_type)
    part_type = params.get("type", DICOM).lower()
    if kind != MULTIPART_RELATED or part_type != DICOM:
        raise UnsupportedMediaType(
            'STOW-RS takes multipart/related; type="application/dicom" (Part 10 instances)',
            expression="Content-Type",
        )
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("multipart/related needs a boundary parameter", expression="Content-Type")
    parts = split_multipart(body, boundary.encode("latin-1"))
    if not parts:
        raise BadRequest("The multipart body has no parts", expression="body")
    return parts


def split_multipart(body: bytes, boundary: bytes) -> list[Part]:
    """The parts between `--boundary` lines (RFC 2046 §5.1.1); preamble and epilogue are ignored."""
    delimiter = b"--" + boundary
    at = 0 if body.startswith(delimiter) else body.find(CRLF + delimiter)
    if at < 0:
        raise BadRequest("The multipart body has no boundary line", expression="body")
    at = at if at == 0 else at + 2
    parts: list[Part] = []
    while True:
        at += len(delimiter)
        if body[at : at + 2] == b"--":
            return parts
        line_end = body.find(CRLF, at)  # the rest of the boundary line is transport padding
        if line_end < 0:
            raise BadRequest("The multipart body ends inside a boundary line", expression="body")
        start = line_end + 2
        end = body.find(CRLF + delimiter, start)
        if end < 0:
            raise BadRequest("The multipart body has no closing boundary", expression="body")
        parts.append(_part(body[start:end]))
        at = end + 2


def _part(raw: bytes) -> Part:
    if raw.startswith(CRLF):  # no part headers at all
        return Part(None, raw[2:])
    head, sep, content = raw.partition(CRLF + CRLF)
    if not sep:
        raise BadRequest("A multipart part has no blank line after its headers", expression="body")
    content_type = None
    for line in head.split(CRLF):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip()
    return Part(content_type, content)


def is_dicom_part(part: Part) -> bool:
    """A part without a Content-Type is taken as the request's `type` (RFC 2387 §3.1)."""
    return part.content_type is None or media_type(part.content_type)[0] == DICOM


def stow_response(outcomes: Sequence[InstanceOutcome], retrieve_base: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and DICOM JSON body answering a STOW-RS request with these outcomes."""
    stored = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    body: dict[str, Any] = {}
    studies = {o.study_instance_uid for o in stored}
    if len(studies) == 1:
        body[_tag("RetrieveURL")] = _value("UR", f"{retrieve_base}/studies/{studies.pop()}")
    if failed:
        body[_tag("FailedSOPSequence")] = {"vr": "SQ", "Value": [_failed_item(o) for o in failed]}
    if stored:
        body[_tag("ReferencedSOPSequence")] = {
            "vr": "SQ",
            "Value": [_stored_item(o, retrieve_base) for o in stored],
        }
    if not failed:
        return 200, body
    if stored:
        return 202, body
    if all(o.failure == FailureReason.OUT_OF_RESOURCES for o in failed):
        return 503, body
    return 409, body


def _stored_item(o: InstanceOutcome, base: str) -> dict[str, Any]:
    url = (
        f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}/instances/{o.sop_instance_uid}"
    )
    return {
        _tag("ReferencedSOPClassUID"): _value("UI", o.sop_class_uid),
        _tag("ReferencedSOPInstanceUID"): _value("UI", o.sop_instance_uid),
        _tag("RetrieveURL"): _value("UR", url),
    }


def _failed_item(o: InstanceOutcome) -> dict[str, Any]:
    item = {
        _tag("ReferencedSOPClassUID"): _value("UI", o.sop_class_uid),
        _tag("ReferencedSOPInstanceUID"): _value("UI", o.sop_instance_uid),
        _tag("FailureReason"): _value("US", int(o.failure or FailureReason.PROCESSING_FAILURE)),
    }
    if o.reason:
        item[_tag("ErrorComment")] = _value("LO", o.reason[:64])  # LO: at most 64 characters
    return item


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def _value(vr: str, value: str | int | None) -> dict[str, Any]:
    return {"vr": vr} if value is None else {"vr": vr, "Value": [value]}


def part_head(boundary: str, content_type: str) -> bytes:
    """The boundary line and headers that open one part of a multipart/related response."""
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1")


def closing_delimiter(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("latin-1")
