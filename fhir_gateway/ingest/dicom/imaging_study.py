"""DICOM header facts → FHIR R4 ImagingStudy, Patient and Endpoint (pure functions, no I/O).

One ImagingStudy per StudyInstanceUID, with the deterministic id `stable_id("ImagingStudy", None, uid)`,
so instances of a study that arrive later (another STOW, another C-STORE association) are merged
into the same resource by `merge_instances`, and instances of different studies are never merged
(the dicom2fhir flaw). The merge only adds: series and instances are matched by UID, a re-sent
instance replaces its entry, study-level facts fill what is missing, counts are recomputed.

The Patient id is `stable_id("Patient", IssuerOfPatientID, PatientID)`: the HL7v2 feed uses the same
scheme for PID-3 (authority PID-3.4), so a v2 ADT and a DICOM study of one person meet on one Patient.

Dates: FHIR dateTime requires a time zone when a time is given; DICOM times are local unless
TimezoneOffsetFromUTC (0008,0201) says otherwise, so without an offset only the date is kept.
Pixel data never enters FHIR: each instance carries only the SHA-256 of its blob (an extension).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.sr.codedict import codes
from pydicom.uid import UID

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.fhir.json import Resource, dumps, loads
from fhir_gateway.ingest.dicom.part10 import InstanceHeader

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
URI_SYSTEM = "urn:ietf:rfc:3986"
SNOMED_SYSTEM = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
BLOB_EXTENSION = "urn:fhir-gateway:dicom-instance-blob"  # valueString "sha256:<hex>" of the stored bytes
UNKNOWN_PATIENT_AUTHORITY = "urn:dicom:no-patient-id"  # a study without PatientID gets a Patient of its own
# PS3.3 C.7.3.1 Laterality / C.7.6.2 Image Laterality → the R4 example binding bodysite-laterality (SNOMED).
LATERALITY = {
    "L": ("419161000", "Unilateral left"),
    "R": ("419465000", "Unilateral right"),
    "B": ("51440002", "Right and left"),
}
SEX = {"M": "male", "F": "female", "O": "other"}  # PS3.3 C.7.1.1 Patient's Sex; anything else: unknown
_OID = re.compile(r"[0-9]+(?:\.[0-9]+)+")


def study_resource_id(study_instance_uid: str) -> str:
    return stable_id("ImagingStudy", None, study_instance_uid)


def patient_resource_id(header: InstanceHeader) -> str:
    if header.patient_id:
        return stable_id("Patient", header.issuer_of_patient_id, header.patient_id)
    return stable_id("Patient", UNKNOWN_PATIENT_AUTHORITY, header.study_instance_uid)


def endpoint_resource_id(dicomweb_base: str) -> str:
    return stable_id("Endpoint", None, dicomweb_base)


def patient_resource(header: InstanceHeader) -> Resource:
    """The Patient as DICOM knows it; written only when no Patient with this id exists yet."""
    patient: dict[str, Any] = {"resourceType": "Patient", "id": patient_resource_id(header)}
    if header.patient_id:
        identifier: dict[str, Any] = {
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "value": header.patient_id,
        }
        issuer = header.issuer_of_patient_id
        if issuer and _OID.fullmatch(issuer):
            identifier["system"] = f"urn:oid:{issuer}"
        elif issuer:
            identifier["assigner"] = {"display": issuer}
        patient["identifier"] = [identifier]
    name = human_name(header.patient_name)
    if name:
        patient["name"] = [name]
    if birth_date := fhir_date(header.patient_birth_date):
        patient["birthDate"] = birth_date
    if header.patient_sex:
        patient["gender"] = SEX.get(header.patient_sex.upper(), "unknown")
    return patient


def endpoint_resource(dicomweb_base: str) -> Resource:
    return {
        "resourceType": "Endpoint",
        "id": endpoint_resource_id(dicomweb_base),
        "status": "active",
        "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "name": "DICOMweb (WADO-RS) of fhir_gateway",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": dicomweb_base,
    }


def merge_instances(
    existing: Resource | None,
    instances: Sequence[tuple[InstanceHeader, str]],
    *,
    patient_reference: str,
    endpoint_reference: str | None = None,
    based_on: Sequence[str] = (),
) -> Resource:
    """`existing` (or a new ImagingStudy) with `instances` (header, blob sha256) merged in.

    All instances must belong to one study; `existing` is not modified.
    """
    if not instances:
        raise ValueError("no instances to merge")
    study_uid = instances[0][0].study_instance_uid
    if any(h.study_instance_uid != study_uid for h, _ in instances):
        raise ValueError("instances of different studies cannot go into one ImagingStudy")
    study: dict[str, Any] = loads(dumps(existing)) if existing else _new_study(study_uid, patient_reference)
    first = instances[0][0]
    _fill_study(study, first, endpoint_reference, based_on)
    series_by_uid = {s.get("uid"): s for s in study.setdefault("series", [])}
    for header, sha256 in instances:
        series = series_by_uid.get(header.series_instance_uid)
        if series is None:
            series = _new_series(header)
            study["series"].append(series)
            series_by_uid[header.series_instance_uid] = series
        else:
            _fill_series(series, header)
        _put_instance(series, header, sha256)
    _recount(study)
    return study


def _new_study(study_uid: str, patient_reference: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": study_resource_id(study_uid),
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "subject": {"reference": patient_reference},
    }


def _fill_study(
    study: dict[str, Any], h: InstanceHeader, endpoint_reference: str | None, based_on: Sequence[str]
) -> None:
    identifiers = study.setdefault("identifier", [])
    if h.accession_number and not any(_is_accession(i) for i in identifiers):
        identifiers.append(
            {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": h.accession_number}
        )
    if "started" not in study and (started := fhir_datetime(h.study_date, h.study_time, h.timezone_offset)):
        study["started"] = started
    if "description" not in study and h.study_description:
        study["description"] = h.study_description
    if "referrer" not in study and (referrer := display_name(h.referring_physician_name)):
        study["referrer"] = {"display": referrer}
    if endpoint_reference and "endpoint" not in study:
        study["endpoint"] = [{"reference": endpoint_reference}]
    if based_on and "basedOn" not in study:
        study["basedOn"] = [{"reference": ref} for ref in based_on]


def _is_accession(identifier: Any) -> bool:
    codings = identifier.get("type", {}).get("coding", []) if isinstance(identifier, dict) else []
    return any(c.get("code") == "ACSN" for c in codings if isinstance(c, dict))


def _new_series(h: InstanceHeader) -> dict[str, Any]:
    series: dict[str, Any] = {
        "uid": h.series_instance_uid,
        "modality": {"system": DCM_SYSTEM, "code": h.modality or "OT"},  # OT: Other (PS3.3 C.7.3.1.1.1)
        "instance": [],
    }
    _fill_series(series, h)
    return series


def _fill_series(series: dict[str, Any], h: InstanceHeader) -> None:
    if "number" not in series and h.series_number is not None and h.series_number >= 0:
        series["number"] = h.series_number
    if "description" not in series and h.series_description:
        series["description"] = h.series_description
    if "bodySite" not in series and h.body_part_examined:
        series["bodySite"] = body_site(h.body_part_examined)
    if "laterality" not in series and h.laterality and h.laterality.upper() in LATERALITY:
        code, display = LATERALITY[h.laterality.upper()]
        series["laterality"] = {"system": SNOMED_SYSTEM, "code": code, "display": display}
    started = fhir_datetime(h.series_date, h.series_time, h.timezone_offset)
    if "started" not in series and started:
        series["started"] = started


def _put_instance(series: dict[str, Any], h: InstanceHeader, sha256: str) -> None:
    sop_class: dict[str, Any] = {"system": URI_SYSTEM, "code": f"urn:oid:{h.sop_class_uid}"}
    name = UID(h.sop_class_uid).name
    if name and name != h.sop_class_uid:
        sop_class["display"] = name
    instance: dict[str, Any] = {
        "extension": [{"url": BLOB_EXTENSION, "valueString": f"sha256:{sha256}"}],
        "uid": h.sop_instance_uid,
        "sopClass": sop_class,
    }
    if h.instance_number is not None and h.instance_number >= 0:
        instance["number"] = h.instance_number
    instances = series.setdefault("instance", [])
    for i, known in enumerate(instances):
        if known.get("uid") == h.sop_instance_uid:
            instances[i] = instance
            return
    instances.append(instance)


def _recount(study: dict[str, Any]) -> None:
    total = 0
    modalities: list[dict[str, Any]] = list(study.get("modality", []))
    for series in study["series"]:
        series["numberOfInstances"] = len(series.get("instance", []))
        total += series["numberOfInstances"]
        modality = series.get("modality")
        if isinstance(modality, dict) and not any(_same_coding(modality, m) for m in modalities):
            modalities.append({"system": modality.get("system"), "code": modality.get("code")})
    study["modality"] = modalities
    study["numberOfSeries"] = len(study["series"])
    study["numberOfInstances"] = total


def _same_coding(a: dict[str, Any], b: Any) -> bool:
    return isinstance(b, dict) and a.get("system") == b.get("system") and a.get("code") == b.get("code")


def iter_instances(study: Resource, series_uid: str | None = None) -> Iterable[tuple[str, str, str | None]]:
    """(series UID, SOP Instance UID, blob sha256 or None) of a stored ImagingStudy, in order."""
    for series in study.get("series", []):
        if not isinstance(series, dict) or (series_uid is not None and series.get("uid") != series_uid):
            continue
        for instance in series.get("instance", []):
            if isinstance(instance, dict):
                yield str(series.get("uid")), str(instance.get("uid")), blob_sha256(instance)


def blob_sha256(instance: Resource) -> str | None:
    for ext in instance.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == BLOB_EXTENSION:
            value = ext.get("valueString")
            if isinstance(value, str) and value.startswith("sha256:"):
                return value.removeprefix("sha256:")
    return None


# ---- DICOM value forms → FHIR --------------------------------------------------------------------
def fhir_date(value: str | None) -> str | None:
    """DA "YYYYMMDD" (or the ACR-NEMA "YYYY.MM.DD") → "YYYY-MM-DD"; None when not a real date."""
    digits = (value or "").replace(".", "").strip()
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:])).isoformat()
    except ValueError:
        return None


def fhir_datetime(date: str | None, time: str | None, offset: str | None) -> str | None:
    """DA + TM (+ offset "+hhmm") → FHIR dateTime; the date alone when the time zone is unknown."""
    day = fhir_date(date)
    if day is None:
        return None
    zone = _zone(offset)
    clock = _clock(time)
    if zone is None or clock is None:
        return day
    return f"{day}T{clock}{zone}"


def _clock(value: str | None) -> str | None:
    text = (value or "").replace(":", "").strip()  # ACR-NEMA wrote "hh:mm:ss"
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        return None
    hh, mm, ss = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    clock = f"{hh:02d}:{mm:02d}:{min(ss, 59):02d}"
    return f"{clock}.{fraction}" if fraction.isdigit() else clock


def _zone(offset: str | None) -> str | None:
    text = (offset or "").strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    return f"{text[:3]}:{text[3:]}"


def human_name(pn: str | None) -> dict[str, Any] | None:
    """PN "Family^Given^Middle^Prefix^Suffix" (its alphabetic group) → HumanName."""
    parts = [p.strip() for p in (pn or "").split("=")[0].split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if givens := [g for g in (given, middle) if g]:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name or None


def display_name(pn: str | None) -> str | None:
    name = human_name(pn)
    if name is None:
        return None
    words = [*name.get("prefix", []), *name.get("given", []), name.get("family", ""), *name.get("suffix", [])]
    return " ".join(w for w in words if w) or None


def body_site(body_part: str) -> dict[str, Any]:
    """Body Part Examined (0018,0015) → SNOMED CT via DICOM CID 4031, or the defined term as display."""
    key = body_part.strip().upper().replace(" ", "")
    code = _anatomic_regions().get(key)
    if code is None:
        return {"display": body_part.strip()}
    return {"system": SNOMED_SYSTEM, "code": code[0], "display": code[1]}


@functools.cache
def _anatomic_regions() -> dict[str, tuple[str, str]]:
    """CID 4031 "Common Anatomic Region" from pydicom's generated tables, keyed like the defined terms."""
    table: dict[str, tuple[str, str]] = {}
    cid = codes.cid4031
    for keyword in cid.dir():
        code = getattr(cid, keyword)
        table[keyword.upper()] = (code.value, code.meaning)
    return table
