"""WADO-RS without HTTP (PS3.18 §10.4): where a stored instance's bytes are, and its metadata as DICOM JSON.

The lookup is the ImagingStudy itself: its id is derived from the StudyInstanceUID and each instance
carries the SHA-256 of its blob, so retrieving goes through `Gateway.read` (the one read path, where
access policy applies) and needs no table of its own. Metadata is read from the stored file with
`stop_before_pixels`; bulk binary values (Pixel Data, overlays, ICC profiles ...) are left out rather
than inlined, as there is no bulk-data endpoint to point to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from fhir_gateway.errors import NotFound
from fhir_gateway.fhir.json import Resource
from fhir_gateway.ingest.dicom.imaging_study import iter_instances

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_THRESHOLD = 1024  # bytes; binary values above this are bulk data (PS3.18 §8.7.3.5)


def select_blobs(
    study: Resource, series_uid: str | None = None, instance_uid: str | None = None
) -> list[tuple[str, str]]:
    """(SOP Instance UID, blob sha256) of the instances asked for; NotFound when there are none."""
    found = [
        (sop_uid, sha256)
        for _series, sop_uid, sha256 in iter_instances(study, series_uid)
        if sha256 is not None and (instance_uid is None or sop_uid == instance_uid)
    ]
    if not found:
        what = "Instance" if instance_uid else "Series" if series_uid else "Study"
        raise NotFound(f"{what} not found", expression="url")
    return found


def instance_metadata(path: Path) -> dict[str, Any]:
    """The DICOM JSON of one stored instance, without Pixel Data and other bulk data."""
    ds = dcmread(path, stop_before_pixels=True, defer_size=BULK_THRESHOLD)
    _drop_bulk(ds)
    metadata: dict[str, Any] = ds.to_json_dict(suppress_invalid_tags=True)
    return metadata


def _drop_bulk(ds: Dataset) -> None:
    for raw in list(ds.elements()):
        vr = str(raw.VR or "")
        length = getattr(raw, "length", None)
        if length is None:  # an already converted element
            length = len(raw.value) if isinstance(raw.value, bytes) else 0
        if vr in BULK_VRS and length > BULK_THRESHOLD:
            del ds[raw.tag]
        elif vr == "SQ":
            for item in ds[raw.tag].value or ():
                _drop_bulk(item)
