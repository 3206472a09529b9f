"""Reading the header of one DICOM Part 10 instance (PS3.10 §7) into the facts the FHIR mapping needs.

pydicom reads with `stop_before_pixels` and defers large values, so Pixel Data is never loaded;
the bytes themselves go to the blob store untouched. pydicom is lenient by design (a truncated value
is read short, an invalid IS string only warns when converted), while an ingest must refuse what it
cannot trust, so this module adds the checks that make every failure clear and per instance:

    Part10Error                 (the instance is refused; `reason` says why, without PHI)
     ├── not DICOM              no "DICM" prefix and no data set either
     ├── no File Meta           a bare data set: no preamble, "DICM" prefix or group 0002
     ├── truncated              a declared value length runs past the end of the bytes
     ├── bad VR                 an unknown VR code, or a value that breaks its VR (IS "1A", UI "1.2.x")
     └── missing UID            Study, Series or SOP Instance UID, or SOP Class UID, absent or empty

Texts name elements by keyword and never quote a value: a bad value may be a patient's name or id.
"""

from __future__ import annotations

import functools
import io
import re
import struct
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import VR

PREAMBLE_LENGTH = 128
PREFIX = b"DICM"
DEFER_SIZE = "1 KB"  # values larger than this are skipped while reading the header (PS3.10 files only)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # PS3.4 Annex F: the DICOMDIR's SOP Class
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float Pixel, Double Float Pixel
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = 0xFFFEE000
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
# VRs whose values have a strict form that the mapping relies on, as PS3.5 Table 6.2-1 defines them
# (one value; leading/trailing spaces allowed except in UI). Free-text VRs (PN, LO, SH, ...) depend on
# the character set and senders are messy, so they are not checked here.
STRICT_FORMS = {
    "IS": re.compile(r" *[+-]?[0-9]{1,12} *"),
    "DS": re.compile(r"(?=.{1,16}$) *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"),
    # Leading zeros in a UID component break the rule but are common in the field: accepted.
    "UI": re.compile(r"(?=.{1,64}$)[0-9]+(?:\.[0-9]+)*"),
    "AS": re.compile(r"[0-9]{3}[DWMY]"),
}
KNOWN_VRS = frozenset(str(vr) for vr in VR)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 §7.1.2).
_EXPLICIT_VRS = frozenset(str(vr).encode() for vr in VR if len(str(vr)) == 2)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


class Part10Error(Exception):
    """The instance cannot be ingested; `reason` is safe to show to the sender (no PHI).

    `kind` names the problem for callers that answer with a code: not-dicom, no-meta, truncated,
    bad-vr, missing-uid, dicomdir, sop-class-mismatch, unparseable.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        # Filled when the data set could be read that far, so a STOW answer can name the instance.
        self.sop_class_uid: str | None = None
        self.sop_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The header facts of one instance that the ImagingStudy/Patient mapping and the blob store use.

    Values are as DICOM has them (DA "20040119", TM "072730.123", PN "Doe^John"); the mapping turns
    them into FHIR forms. Empty DICOM values are None.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    timezone_offset: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    series_date: str | None = None
    series_time: str | None = None
    body_part_examined: str | None = None
    laterality: str | None = None
    instance_number: int | None = None


def read_header(data: bytes) -> InstanceHeader:
    """The header facts of the Part 10 instance `data`; raises Part10Error when it cannot be trusted."""
    _check_prefix(data)
    stream = io.BytesIO(data)
    try:
        ds = dcmread(stream, stop_before_pixels=True, defer_size=DEFER_SIZE)
    except Exception:  # pydicom raises many kinds (struct.error, ValueError, KeyError...) on bad bytes
        raise Part10Error("unparseable", "the DICOM data set cannot be parsed") from None
    stopped_at = stream.tell()  # before anything reads a deferred value through the same stream
    try:
        return _checked_facts(ds, data, stopped_at)
    except Part10Error as exc:
        exc.sop_class_uid = _text(ds, "SOPClassUID")
        exc.sop_instance_uid = _text(ds, "SOPInstanceUID")
        raise
    except Exception:  # a value pydicom cannot convert (e.g. an unknown VR in the File Meta)
        raise Part10Error("unparseable", "the DICOM data set cannot be parsed") from None


def _checked_facts(ds: FileDataset, data: bytes, stopped_at: int) -> InstanceHeader:
    syntax = _transfer_syntax(ds, len(data))
    if ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        raise Part10Error("dicomdir", "a DICOMDIR (media directory), not an instance")
    # Offsets in a deflated data set refer to the inflated stream, so only the values are checked there.
    deflated = syntax == DeflatedExplicitVRLittleEndian
    _check_elements(ds, None if deflated else len(data), stopped_at)
    if not deflated:
        _check_rest(data, stopped_at, bool(syntax.is_little_endian))
    return _facts(ds, syntax)


def _check_prefix(data: bytes) -> None:
    if data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == PREFIX:
        return
    # A bare data set starts with a group 0002 or 0008 tag in either byte order (PS3.5 §7.1).
    if data[:2] in (b"\x02\x00", b"\x00\x02", b"\x08\x00", b"\x00\x08"):
        raise Part10Error("no-meta", "no DICOM File Meta Information (a bare data set)")
    raise Part10Error("not-dicom", "not a DICOM Part 10 file")


def _transfer_syntax(ds: FileDataset | Dataset, size: int) -> UID:
    meta = getattr(ds, "file_meta", None)
    group_length = meta.get("FileMetaInformationGroupLength") if meta is not None else None
    # The group length counts the meta bytes after its own 12-byte element (PS3.10 §7.1).
    if isinstance(group_length, int) and PREAMBLE_LENGTH + 4 + 12 + group_length > size:
        raise Part10Error("truncated", "truncated: the data ends inside the File Meta Information")
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise Part10Error("no-meta", "no Transfer Syntax UID in the DICOM File Meta Information")
    uid = UID(str(syntax))
    if not uid.is_transfer_syntax:
        raise Part10Error("unparseable", "the Transfer Syntax UID is not one this server can read")
    return uid


def _check_elements(ds: Dataset, size: int | None, stopped_at: int) -> None:
    """One pass over the raw top-level elements (not converted, so cheap).

    Every defined-length value must end inside the bytes (pydicom reads a short one silently), every
    VR must be known, and values of the strict VRs must have their form. pydicom also stops silently
    at a partial element header (fewer than 8 bytes) at the end; that is caught from the last end.
    """
    if size is not None and stopped_at > size:  # pydicom skipped a deferred value past the end
        raise Part10Error("truncated", "truncated: a value runs past the end of the data")
    last_end: int | None = None
    for tag in sorted(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)  # never reads or converts a value
        if not isinstance(raw, RawDataElement):
            last_end = None
            continue
        last_end = raw.value_tell + raw.length if raw.length != UNDEFINED_LENGTH else None
        if size is not None and raw.length != UNDEFINED_LENGTH and raw.value_tell + raw.length > size:
            where = _name(raw.tag)
            raise Part10Error("truncated", f"truncated: the value of {where} runs past the end of the data")
        if raw.VR is not None and raw.VR not in KNOWN_VRS:
            raise Part10Error("bad-vr", f"bad VR: {_name(raw.tag)} has an unknown Value Representation")
        vr = raw.VR or _dictionary_vr(raw.tag)  # implicit VR: the data dictionary says
        form = STRICT_FORMS.get(vr) if vr else None
        if form is not None and raw.value:
            _check_form(raw.tag, str(vr), form, raw.value)
    if size is not None and stopped_at == size and last_end is not None and 0 < size - last_end < 8:
        raise Part10Error("truncated", "truncated: the data ends inside an element header")


def _check_rest(data: bytes, at: int, little: bool) -> None:
    """From where pydicom stopped (Pixel Data) to the end, every element must be whole.

    Whether an element is explicit VR is read from its bytes, not from the transfer syntax: some
    senders write implicit VR under an explicit syntax, and pydicom reads them anyway.
    """
    end = "<" if little else ">"
    while at < len(data):
        if at + 8 > len(data):
            raise Part10Error("truncated", "truncated: the data ends inside an element header")
        group, element = struct.unpack(f"{end}HH", data[at : at + 4])
        tag = group << 16 | element
        vr = data[at + 4 : at + 6]
        if vr in _LONG_VRS:  # explicit VR with a 2-byte reserved field and a 4-byte length
            if at + 12 > len(data):
                raise Part10Error("truncated", "truncated: the data ends inside an element header")
            (length,) = struct.unpack(f"{end}L", data[at + 8 : at + 12])
            at += 12
        elif vr in _EXPLICIT_VRS:
            (length,) = struct.unpack(f"{end}H", data[at + 6 : at + 8])
            at += 8
        else:  # implicit VR: a 4-byte length follows the tag
            (length,) = struct.unpack(f"{end}L", data[at + 4 : at + 8])
            at += 8
        if length == UNDEFINED_LENGTH:
            if tag not in PIXEL_DATA_TAGS:
                return  # a sequence: its items are not walked here
            at = _check_fragments(data, at, end)
        elif at + length > len(data):
            raise Part10Error(
                "truncated", f"truncated: the value of {_name(tag)} runs past the end of the data"
            )
        else:
            at += length


def _check_fragments(data: bytes, at: int, end: str) -> int:
    """Encapsulated Pixel Data (PS3.5 §A.4): items of defined length up to a Sequence Delimiter.

    Returns where the Pixel Data element ends."""
    while at + 8 <= len(data):
        group, element, length = struct.unpack(f"{end}HHL", data[at : at + 8])
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER_TAG:
            return at + 8
        if tag != ITEM_TAG or at + 8 + length > len(data):
            break
        at += 8 + length
    raise Part10Error("truncated", "truncated: the encapsulated Pixel Data has no end")


def _check_form(tag: int, vr: str, form: re.Pattern[str], value: bytes) -> None:
    text = value.decode("latin-1").rstrip("\x00 ")  # padding: NUL for UI, space for the others
    for part in text.split("\\") if text else ():
        if part and not form.fullmatch(part):
            raise Part10Error("bad-vr", f"bad VR: the value of {_name(tag)} is not a valid {vr}")


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # private or unknown: no form to check
        return None


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _text(ds: Dataset, keyword: str) -> str | None:
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    try:
        elem = ds[tag]
        value: Any = elem.value
    except Exception:  # a value pydicom cannot convert is treated as absent, not as a crash
        return None
    actual_vr = str(elem.VR)
    if actual_vr != _dictionary_vr(tag):  # e.g. a PatientName sent as US: absent rather than garbage
        return None
    if value is None or isinstance(value, bytes):
        return None
    text = str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)  # an IS, whose form _check_elements has checked
    return int(text) if text is not None else None


def _facts(ds: Dataset, syntax: UID) -> InstanceHeader:
    uids = {keyword: _text(ds, keyword) for keyword in _REQUIRED_UIDS}
    missing = [keyword for keyword, value in uids.items() if not value]
    if missing:
        raise Part10Error("missing-uid", f"missing {', '.join(missing)}")
    media_class = ds.file_meta.get("MediaStorageSOPClassUID")
    if media_class and str(media_class) != uids["SOPClassUID"]:  # PS3.10 §7.1: they must be equal
        raise Part10Error("sop-class-mismatch", "the SOP Class UID differs from the File Meta's")
    return InstanceHeader(
        sop_class_uid=str(uids["SOPClassUID"]),
        sop_instance_uid=str(uids["SOPInstanceUID"]),
        study_instance_uid=str(uids["StudyInstanceUID"]),
        series_instance_uid=str(uids["SeriesInstanceUID"]),
        transfer_syntax_uid=str(syntax),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        timezone_offset=_text(ds, "TimezoneOffsetFromUTC"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician_name=_text(ds, "ReferringPhysicianName"),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        series_date=_text(ds, "SeriesDate"),
        series_time=_text(ds, "SeriesTime"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        laterality=_text(ds, "Laterality") or _text(ds, "ImageLaterality"),
        instance_number=_int(ds, "InstanceNumber"),
    )
