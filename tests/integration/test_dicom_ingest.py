"""DICOM in, FHIR out: STOW-RS, WADO-RS, the C-STORE SCP and file ingest against the real app and store.

Instances are pydicom's bundled sample files (found by globbing its test_files folder: no network),
including its deliberately broken ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, RTDoseStorage, Verification  # type: ignore[attr-defined]

from fhir_gateway.api.app import create_app
from fhir_gateway.api.dicomweb import build_dicomweb_router
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Conflict, ServiceUnavailable, Unprocessable
from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.dicom.blobs import BlobStore
from fhir_gateway.ingest.dicom.files import dicom_files, ingest_dicom_paths, is_dicom_path
from fhir_gateway.ingest.dicom.imaging_study import endpoint_resource_id, study_resource_id
from fhir_gateway.ingest.dicom.ingest import DicomIngester, default_dicomweb_base
from fhir_gateway.ingest.dicom.scp import DicomListener, dicom_listener, no_delay, quick_ack
from fhir_gateway.ingest.dicom.stow import split_multipart
from fhir_gateway.pipeline.stage import Change
from fhir_gateway.settings import Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about odd sample files

FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT = FILES / "CT_small.dcm"
MR = FILES / "MR_small.dcm"
CT2 = sorted((FILES / "dicomdirtests" / "77654033" / "CT2").iterdir())  # one study, one series, 4 instances
CR = sorted((FILES / "dicomdirtests" / "77654033").glob("CR*/*"))  # another study of the same patient
BAD_VR = FILES / "badVR.dcm"
BROKEN = [FILES / "no_meta.dcm", BAD_VR, FILES / "MR_truncated.dcm"]
FHIR = {"Content-Type": "application/fhir+json"}
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XbOuNdArYx'
FAILED_SOP, REFERENCED_SOP, FAILURE_REASON, RETRIEVE_URL = "00081198", "00081199", "00081197", "00081190"
SOP_INSTANCE, ERROR_COMMENT = "00081155", "00000902"


@dataclass
class Gw:
    client: httpx.AsyncClient
    runtime: Runtime
    ingester: DicomIngester
    settings: Settings
    blobs: Path


@asynccontextmanager
async def gateway(tmp_path: Path, **overrides: Any) -> AsyncIterator[Gw]:
    blobs = tmp_path / "blobs"
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/gw.db", dicom={"blob_path": str(blobs)}, **overrides
    )
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    ingester = DicomIngester.from_settings(runtime.gateway, settings)
    app.include_router(build_dicomweb_router(runtime, ingester=ingester))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Gw(client, runtime, ingester, settings, blobs)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gw]:
    async with gateway(tmp_path) as g:
        yield g


def multipart(*parts: bytes | tuple[str, bytes]) -> bytes:
    out = b"preamble to ignore\r\n"
    for part in parts:
        kind, content = part if isinstance(part, tuple) else ("application/dicom", part)
        out += b"--XbOuNdArYx\r\nContent-Type: " + kind.encode() + b"\r\n\r\n" + content + b"\r\n"
    return out + b"--XbOuNdArYx--\r\n"


async def stow(gw: Gw, *paths: Path, study: str | None = None) -> httpx.Response:
    url = "/dicomweb/studies" + (f"/{study}" if study else "")
    body = multipart(*(p.read_bytes() for p in paths))
    return await gw.client.post(url, content=body, headers={"Content-Type": STOW_TYPE})


def uid_of(path: Path, keyword: str = "StudyInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


async def imaging_studies(gw: Gw) -> list[dict[str, Any]]:
    bundle = (await gw.client.get("/fhir/ImagingStudy", params={"_count": "100"})).json()
    return [e["resource"] for e in bundle.get("entry", [])]


async def read(gw: Gw, res_type: str, res_id: str) -> httpx.Response:
    return await gw.client.get(f"/fhir/{res_type}/{res_id}")


def variant(path: Path, tmp_path: Path, **values: str) -> Path:
    """A copy of a sample file with some attributes changed (and new UIDs unless given)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = values.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = values.pop("SeriesInstanceUID", generate_uid())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    out = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


# ---- STOW-RS ---------------------------------------------------------------------------------------
async def test_stow_stores_good_instances_and_refuses_broken_ones_each_with_a_reason(gw: Gw) -> None:
    r = await stow(gw, CT, *BROKEN, MR, *CT2)
    assert r.status_code == 202
    assert r.headers["content-type"].startswith("application/dicom+json")
    body = r.json()
    stored = [item[SOP_INSTANCE]["Value"][0] for item in body[REFERENCED_SOP]["Value"]]
    assert stored == [uid_of(p, "SOPInstanceUID") for p in (CT, MR, *CT2)]
    failed = body[FAILED_SOP]["Value"]
    assert [f[FAILURE_REASON]["Value"][0] for f in failed] == [0xC000] * 3
    assert [f[ERROR_COMMENT]["Value"][0] for f in failed] == [
        "not a DICOM Part 10 file",
        "bad VR: the value of NumberOfFrames is not a valid IS",
        "truncated: the value of PixelData runs past the end of the data",
    ]
    assert failed[1][SOP_INSTANCE]["Value"] == [uid_of(FILES / "badVR.dcm", "SOPInstanceUID")]
    first_url = body[REFERENCED_SOP]["Value"][0][RETRIEVE_URL]["Value"][0]
    assert first_url.startswith(f"http://test/dicomweb/studies/{uid_of(CT)}/series/")
    # Three studies, three ImagingStudies: never merged.
    studies = {s["id"]: s for s in await imaging_studies(gw)}
    assert set(studies) == {study_resource_id(uid_of(p)) for p in (CT, MR, CT2[0])}
    ct2 = studies[study_resource_id(uid_of(CT2[0]))]
    assert (ct2["numberOfSeries"], ct2["numberOfInstances"]) == (1, 4)
    # Only the stored instances have blobs, and no pixel data went into FHIR.
    assert len(list(gw.blobs.rglob("*.dcm"))) == 6
    assert all(len(str(s)) < 4000 for s in studies.values())


async def test_stow_answers_200_409_415(gw: Gw) -> None:
    ok = await stow(gw, CT)
    assert ok.status_code == 200
    assert ok.json()[RETRIEVE_URL]["Value"] == [f"http://test/dicomweb/studies/{uid_of(CT)}"]
    assert FAILED_SOP not in ok.json()
    none = await stow(gw, *BROKEN)
    assert none.status_code == 409 and REFERENCED_SOP not in none.json()
    for content_type in ("application/dicom", 'multipart/related; type="application/dicom+json"; boundary=x'):
        r = await gw.client.post("/dicomweb/studies", content=b"x", headers={"Content-Type": content_type})
        assert r.status_code == 415
        assert r.json()["resourceType"] == "OperationOutcome"
    no_boundary = await gw.client.post(
        "/dicomweb/studies", content=b"", headers={"Content-Type": "multipart/related"}
    )
    assert no_boundary.status_code == 400
    mixed = multipart(("text/plain", b"hello"), CT.read_bytes())
    r = await gw.client.post("/dicomweb/studies", content=mixed, headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 202
    assert r.json()[FAILED_SOP]["Value"][0][ERROR_COMMENT]["Value"] == ["the part is not application/dicom"]


@pytest.mark.parametrize(
    "body",
    [b"", b"no boundary here", b"--XbOuNdArYx", b"--XbOuNdArYx\r\nContent-Type: x", b"--XbOuNdArYx--\r\n"],
)
async def test_malformed_multipart_is_a_400(gw: Gw, body: bytes) -> None:
    r = await gw.client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 400


async def test_stow_to_a_study_refuses_instances_of_other_studies(gw: Gw) -> None:
    r = await stow(gw, CT, MR, study=uid_of(CT))
    assert r.status_code == 202
    failed = r.json()[FAILED_SOP]["Value"]
    assert [f[FAILURE_REASON]["Value"][0] for f in failed] == [0xC409]
    assert len(await imaging_studies(gw)) == 1


async def test_instances_arriving_later_update_the_same_imaging_study(gw: Gw, tmp_path: Path) -> None:
    study_uid = uid_of(CT2[0])
    for path in CT2[:2]:
        assert (await stow(gw, path)).status_code == 200
    first = (await read(gw, "ImagingStudy", study_resource_id(study_uid))).json()
    assert first["numberOfInstances"] == 2 and first["meta"]["versionId"] == "2"
    other_series = variant(MR, tmp_path, StudyInstanceUID=study_uid)
    assert (await stow(gw, *CT2[2:], other_series, CT2[0])).status_code == 200  # CT2[0] is sent again
    study = (await read(gw, "ImagingStudy", study_resource_id(study_uid))).json()
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 5)
    assert [m["code"] for m in study["modality"]] == ["CT", "MR"]
    assert study["meta"]["versionId"] == "3"  # one transaction per study and request
    assert len(await imaging_studies(gw)) == 1


async def test_an_instance_sent_twice_in_one_request_counts_once(gw: Gw) -> None:
    r = await stow(gw, CT, CT)
    assert r.status_code == 200 and len(r.json()[REFERENCED_SOP]["Value"]) == 2
    study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT)))).json()
    assert study["numberOfInstances"] == 1
    assert (await stow(gw, CT)).status_code == 200  # sent again later: stored, and nothing changes
    again = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT)))).json()
    assert again["numberOfInstances"] == 1 and again["meta"]["versionId"] == "1"


async def test_a_deleted_study_is_created_again(gw: Gw) -> None:
    await stow(gw, CT2[0])
    study = f"ImagingStudy/{study_resource_id(uid_of(CT2[0]))}"
    # imaging data belongs to the PACS (the system of record): a REST client may not delete it ...
    assert (await gw.client.delete(f"/fhir/{study}")).status_code == 422
    # ... the DICOM feed may
    delete = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": study}}],
    }
    await gw.runtime.gateway.submit(delete, RequestContext.system("dicom", "PACS"))
    assert (await stow(gw, CT2[1])).status_code == 200
    study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT2[0])))).json()
    assert study["numberOfInstances"] == 1 and study["meta"]["versionId"] == "3"


async def test_concurrent_ingests_of_one_study_lose_no_instance(gw: Gw) -> None:
    # Two ingesters (as two server processes would be) race on the same new study.
    other = DicomIngester.from_settings(gw.runtime.gateway, gw.settings)
    data = [p.read_bytes() for p in CT2]
    results = await asyncio.gather(
        *(
            ing.ingest([d], source_system="test")
            for ing, d in zip([gw.ingester, other] * 2, data, strict=True)
        )
    )
    assert all(outcomes[0].ok for outcomes in results)
    study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT2[0])))).json()
    assert study["numberOfInstances"] == 4


class RejectMR:
    """A pipeline stage refusing MR studies, to show that a refused study leaves nothing behind."""

    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        if change.res_type == "ImagingStudy" and any(
            m.get("code") == "MR" for m in (change.resource or {}).get("modality", [])
        ):
            raise Unprocessable("MR studies are refused here", expression="ImagingStudy.modality")


def reject_mr(_settings: Settings) -> RejectMR:
    return RejectMR()


class FailOnDescription:
    """Fails the write the way the StudyDescription says: how the ingest reports each kind of failure."""

    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        description = (
            (change.resource or {}).get("description") if change.res_type == "ImagingStudy" else None
        )
        if description == "db-down":
            raise ServiceUnavailable("The database is unavailable; nothing was written")
        if description == "busy":
            raise Conflict("A concurrent write changed this resource; retry the request")
        if description == "bug":
            raise RuntimeError("a bug with PHI: Doe^Jane")


def fail_on_description(_settings: Settings) -> FailOnDescription:
    return FailOnDescription()


async def test_a_refused_study_leaves_nothing_half_written(tmp_path: Path) -> None:
    async with gateway(tmp_path, pipeline=[f"{__name__}:reject_mr"]) as gw:
        r = await stow(gw, CT, MR)
        assert r.status_code == 202
        failed = r.json()[FAILED_SOP]["Value"]
        assert failed[0][SOP_INSTANCE]["Value"] == [uid_of(MR, "SOPInstanceUID")]
        assert failed[0][FAILURE_REASON]["Value"] == [0x0110]
        assert failed[0][ERROR_COMMENT]["Value"] == ["MR studies are refused here"]
        assert [s["id"] for s in await imaging_studies(gw)] == [study_resource_id(uid_of(CT))]
        mr_patient = stable_id("Patient", None, str(pydicom.dcmread(MR).PatientID))
        assert (await read(gw, "Patient", mr_patient)).status_code == 404  # rolled back with its study
        assert not gw.ingester.blobs.path_for(hashlib.sha256(MR.read_bytes()).hexdigest()).exists()
        assert gw.ingester.blobs.path_for(hashlib.sha256(CT.read_bytes()).hexdigest()).exists()


async def test_one_bad_instance_does_not_take_its_study_down(tmp_path: Path) -> None:
    async with gateway(tmp_path, pipeline=[f"{__name__}:reject_mr"]) as gw:
        mr_in_ct_study = variant(MR, tmp_path, StudyInstanceUID=uid_of(CT2[0]))
        r = await stow(gw, *CT2[:2], mr_in_ct_study, *CT2[2:])
        assert r.status_code == 202
        assert [f[SOP_INSTANCE]["Value"] for f in r.json()[FAILED_SOP]["Value"]] == [
            [uid_of(mr_in_ct_study, "SOPInstanceUID")]
        ]
        study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT2[0])))).json()
        assert study["numberOfInstances"] == 4 and [m["code"] for m in study["modality"]] == ["CT"]


@pytest.mark.parametrize(
    ("description", "reason", "comment", "status"),
    [
        ("db-down", 0xA700, "the database is unavailable", 503),
        ("busy", 0x0110, "the study kept changing concurrently; send it again", 409),
        ("bug", 0x0110, "internal error; nothing was stored", 409),
    ],
)
async def test_failures_are_reported_per_instance_without_phi(
    tmp_path: Path, description: str, reason: int, comment: str, status: int
) -> None:
    async with gateway(tmp_path, pipeline=[f"{__name__}:fail_on_description"]) as gw:
        r = await stow(gw, variant(CT, tmp_path, StudyDescription=description))
        assert r.status_code == status
        failed = r.json()[FAILED_SOP]["Value"][0]
        assert (failed[FAILURE_REASON]["Value"], failed[ERROR_COMMENT]["Value"]) == ([reason], [comment])
        assert "Doe" not in r.text
        assert list(gw.blobs.rglob("*.dcm")) == []  # the blob written before the commit is gone again


async def test_no_room_for_blobs_is_out_of_resources(tmp_path: Path) -> None:
    (tmp_path / "blobs").write_text("a file where the blob folder should be")
    async with gateway(tmp_path) as gw:
        r = await stow(gw, CT)
        assert r.status_code == 503
        assert r.json()[FAILED_SOP]["Value"][0][FAILURE_REASON]["Value"] == [0xA700]
        assert await imaging_studies(gw) == []


# ---- Patient, order, endpoint ------------------------------------------------------------------------
async def test_a_v2_patient_meets_the_dicom_study_and_is_not_overwritten(gw: Gw, tmp_path: Path) -> None:
    # What an HL7v2 ADT with PID-3 "MRN-4711^^^HOSP" wrote before the images came.
    pid = stable_id("Patient", "HOSP", "MRN-4711")
    richer = {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Registered", "given": ["Properly"]}],
        "address": [{"city": "Springfield"}],
    }
    assert (await gw.client.put(f"/fhir/Patient/{pid}", json=richer, headers=FHIR)).status_code == 201
    path = variant(CT, tmp_path, PatientID="MRN-4711", IssuerOfPatientID="hosp", PatientName="Other^Name")
    assert (await stow(gw, path)).status_code == 200
    study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(path)))).json()
    assert study["subject"] == {"reference": f"Patient/{pid}"}
    patient = (await read(gw, "Patient", pid)).json()
    assert patient["meta"]["versionId"] == "1" and patient["name"][0]["family"] == "Registered"


async def test_dicom_creates_the_patient_when_there_is_none(gw: Gw) -> None:
    assert (await stow(gw, CT)).status_code == 200
    patient = (await read(gw, "Patient", stable_id("Patient", None, "1CT1"))).json()
    assert patient["name"] == [{"family": "CompressedSamples", "given": ["CT1"]}]
    assert patient["gender"] == "other"


async def test_study_links_its_order_by_accession_and_carries_a_working_endpoint(
    gw: Gw, tmp_path: Path
) -> None:
    order = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/x"},
        "identifier": [{"type": {"coding": [{"code": "ACSN"}]}, "value": "ACC,42"}],
    }
    created = (await gw.client.post("/fhir/ServiceRequest", json=order, headers=FHIR)).json()
    path = variant(CT, tmp_path, AccessionNumber="ACC,42")
    assert (await stow(gw, path)).status_code == 200
    study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(path)))).json()
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{created['id']}"}]
    assert study["identifier"][1] == {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
        "value": "ACC,42",
    }
    endpoint_ref = study["endpoint"][0]["reference"]
    assert endpoint_ref == f"Endpoint/{endpoint_resource_id('http://test/dicomweb')}"
    endpoint = (await gw.client.get(f"/fhir/{endpoint_ref}")).json()
    series_uid = study["series"][0]["uid"]
    instance_uid = study["series"][0]["instance"][0]["uid"]
    url = f"{endpoint['address']}/studies/{uid_of(path)}/series/{series_uid}/instances/{instance_uid}"
    got = await gw.client.get(url.removeprefix("http://test"))
    assert got.status_code == 200


# ---- WADO-RS ----------------------------------------------------------------------------------------
async def test_wado_returns_the_stored_bytes(gw: Gw) -> None:
    await stow(gw, *CT2, MR)
    study, series = uid_of(CT2[0]), uid_of(CT2[0], "SeriesInstanceUID")
    sop = uid_of(CT2[1], "SOPInstanceUID")
    r = await gw.client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}")
    assert r.status_code == 200
    content_type = r.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.rsplit("boundary=", 1)[1]
    parts = split_multipart(r.content, boundary.encode())
    assert [p.content_type for p in parts] == ["application/dicom"]
    assert parts[0].content == CT2[1].read_bytes()
    whole = await gw.client.get(
        f"/dicomweb/studies/{study}", headers={"Accept": "multipart/related; type=application/dicom"}
    )
    boundary = whole.headers["content-type"].rsplit("boundary=", 1)[1]
    assert [p.content for p in split_multipart(whole.content, boundary.encode())] == [
        p.read_bytes() for p in CT2
    ]
    assert (await gw.client.get(f"/dicomweb/studies/{study}/series/{series}")).status_code == 200


async def test_wado_errors(gw: Gw) -> None:
    await stow(gw, CT)
    study, series = uid_of(CT), uid_of(CT, "SeriesInstanceUID")
    assert (await gw.client.get("/dicomweb/studies/1.2.3")).status_code == 404
    assert (await gw.client.get(f"/dicomweb/studies/{study}/series/1.2.3")).status_code == 404
    assert (
        await gw.client.get(f"/dicomweb/studies/{study}/series/{series}/instances/1.2")
    ).status_code == 404
    json_only = {"Accept": "application/json"}
    assert (await gw.client.get(f"/dicomweb/studies/{study}", headers=json_only)).status_code == 406
    dicom_only = {"Accept": "application/dicom"}
    assert (await gw.client.get(f"/dicomweb/studies/{study}/metadata", headers=dicom_only)).status_code == 406


async def test_metadata_is_dicom_json_without_pixel_data(gw: Gw) -> None:
    await stow(gw, *CT2, CT)
    study, series = uid_of(CT2[0]), uid_of(CT2[0], "SeriesInstanceUID")
    r = await gw.client.get(
        f"/dicomweb/studies/{study}/metadata", headers={"Accept": "application/dicom+json"}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    items = r.json()
    assert [i["00080018"]["Value"][0] for i in items] == [uid_of(p, "SOPInstanceUID") for p in CT2]
    assert all(i["0020000D"]["Value"] == [study] for i in items)
    assert not any("7FE00010" in i for i in items)
    series_items = (await gw.client.get(f"/dicomweb/studies/{study}/series/{series}/metadata")).json()
    assert len(series_items) == 4
    ct_sop = uid_of(CT, "SOPInstanceUID")
    ct_series = uid_of(CT, "SeriesInstanceUID")
    one = (
        await gw.client.get(f"/dicomweb/studies/{uid_of(CT)}/series/{ct_series}/instances/{ct_sop}/metadata")
    ).json()
    assert one[0]["00100020"]["Value"] == ["1CT1"]
    assert not any("7FE00010" in i for i in one)
    large_binary = [
        t for t, v in one[0].items() if v["vr"] in ("OB", "OW") and len(v.get("InlineBinary", "")) > 1400
    ]
    assert large_binary == []


# ---- C-STORE SCP ------------------------------------------------------------------------------------
def scu_session(port: int, paths: list[Path]) -> tuple[int, list[tuple[int, str | None]]]:
    ae = AE(ae_title="MODALITY1")
    for context in (Verification, CTImageStorage, MRImageStorage, RTDoseStorage):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="FHIRGW")
    assert assoc.is_established
    try:
        echo = int(assoc.send_c_echo().Status)
        results = []
        for path in paths:
            status = assoc.send_c_store(path)
            results.append((int(status.Status), status.get("ErrorComment")))
        return echo, results
    finally:
        assoc.release()


async def test_cstore_stores_after_commit_and_refuses_with_a_status(gw: Gw) -> None:
    async with dicom_listener(gw.runtime, "127.0.0.1", 0, ingester=gw.ingester) as listener:
        echo, results = await asyncio.to_thread(scu_session, listener.port, [CT, FILES / "badVR.dcm", *CT2])
    assert echo == 0x0000
    assert results[0] == (0x0000, None)
    assert results[1] == (0xC000, "bad VR: the value of NumberOfFrames is not a valid IS")
    assert [status for status, _ in results[2:]] == [0x0000] * 4
    study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT2[0])))).json()
    assert study["numberOfInstances"] == 4
    ct = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT)))).json()
    assert ct["endpoint"]  # the configured/derived DICOMweb base, as there is no request to take it from


async def test_cstore_reports_out_of_resources(tmp_path: Path) -> None:
    (tmp_path / "blobs").write_text("not a folder")
    async with gateway(tmp_path) as gw, dicom_listener(gw.runtime, "127.0.0.1", 0) as listener:
        _echo, results = await asyncio.to_thread(scu_session, listener.port, [CT])
    assert results == [(0xA700, "the instance store cannot write")]


async def test_cstore_answers_out_of_resources_when_the_database_is_down(tmp_path: Path) -> None:
    settings = make_settings(
        "postgresql+asyncpg://nobody@127.0.0.1:1/none", dicom={"blob_path": str(tmp_path)}
    )
    runtime = Runtime(settings)
    try:
        async with dicom_listener(runtime, "127.0.0.1", 0) as listener:
            echo, results = await asyncio.to_thread(scu_session, listener.port, [CT])
    finally:
        await runtime.stop()
    assert echo == 0x0000  # the listener itself is up
    assert results == [(0xA700, "the database is unavailable")]


async def test_cstore_that_takes_too_long_is_refused(gw: Gw) -> None:
    listener = DicomListener(gw.runtime, host="127.0.0.1", port=0, ingester=gw.ingester, timeout_seconds=1e-6)
    with pytest.raises(RuntimeError):
        _ = listener.port
    await listener.start()
    try:
        _echo, results = await asyncio.to_thread(scu_session, listener.port, [CT])
    finally:
        await listener.stop()
    assert results == [(0xA700, "the store did not answer in time")]


class UndecodableStore:
    """What pynetdicom hands the handler when the peer's data cannot even be re-encoded."""

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        raise ValueError("broken P-DATA")


async def test_store_handler_edge_cases(gw: Gw) -> None:
    listener = DicomListener(gw.runtime, ingester=gw.ingester)
    undecodable = listener.handle_store(UndecodableStore())  # type: ignore[arg-type]
    assert (undecodable.Status, undecodable.ErrorComment) == (0xC000, "the data set cannot be decoded")

    class Sent:
        assoc = type("Assoc", (), {"requestor": type("Requestor", (), {"ae_title": "X"})()})()

        def encoded_dataset(self, include_meta: bool = True) -> bytes:
            return CT.read_bytes()

    stopped = listener.handle_store(Sent())  # type: ignore[arg-type]
    assert (stopped.Status, stopped.ErrorComment) == (0xA700, "the listener is stopping")
    closed = asyncio.new_event_loop()
    closed.close()
    listener._loop = closed  # the server loop went away while an association was still open
    gone = await asyncio.to_thread(listener.handle_store, Sent())  # type: ignore[arg-type]
    assert gone.Status == 0xA700


DCMTK = {tool: shutil.which(tool, path=os.defpath) for tool in ("storescu", "echoscu")}  # Debian's dcmtk


@pytest.mark.skipif(None in DCMTK.values(), reason="dcmtk is not installed (apt-get install dcmtk)")
async def test_dcmtk_storescu_and_echoscu(gw: Gw) -> None:
    async with dicom_listener(gw.runtime, "127.0.0.1", 0, ingester=gw.ingester) as listener:
        port = str(listener.port)
        echo = await asyncio.to_thread(
            subprocess.run, [str(DCMTK["echoscu"]), "-aec", "FHIRGW", "127.0.0.1", port], capture_output=True
        )
        store = await asyncio.to_thread(
            subprocess.run,
            [
                str(DCMTK["storescu"]),
                "-v",
                "-aec",
                "FHIRGW",
                "127.0.0.1",
                port,
                *map(str, CT2),
                str(BAD_VR),
            ],
            capture_output=True,
            timeout=60,
        )
    assert echo.returncode == 0, echo.stderr
    output = (store.stdout + store.stderr).decode(errors="replace")
    assert output.count("Received Store Response (Success)") == 4, output
    assert "Received Store Response (Error: CannotUnderstand)" in output, output  # badVR refused
    study = (await read(gw, "ImagingStudy", study_resource_id(uid_of(CT2[0])))).json()
    assert study["numberOfInstances"] == 4


# ---- files and folders ------------------------------------------------------------------------------
async def test_ingest_folders_dicomdir_and_files(gw: Gw, tmp_path: Path) -> None:
    folder = tmp_path / "media"
    shutil.copytree(FILES / "dicomdirtests" / "77654033", folder / "77654033")
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(FILES / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")  # skipped inside a folder
    seen: list[str] = []
    gateway_ = await gw.runtime.ready_gateway()
    outcomes = await ingest_dicom_paths(
        gateway_, [folder, FILES / "no_meta.dcm"], lambda o: seen.append(o.path.name), batch_size=3
    )
    assert len(outcomes) == len(seen) == len(CT2) + len(CR) + 1
    assert [o.ok for o in outcomes] == [True] * (len(CT2) + len(CR)) + [False]
    assert outcomes[-1].error == "not a DICOM Part 10 file (status 0xC000)"
    assert {s["numberOfInstances"] for s in await imaging_studies(gw)} == {3, 4}
    dicomdir = list(dicom_files([FILES / "dicomdirtests" / "DICOMDIR"]))
    assert len(dicomdir) == 31 and all(p.is_file() for p in dicomdir)
    assert is_dicom_path(folder) and is_dicom_path(CT) and not is_dicom_path(folder / "notes.txt")
    assert list(dicom_files([CT, CT])) == [CT]


async def test_unreadable_file_and_broken_dicomdir(gw: Gw, tmp_path: Path) -> None:
    broken = tmp_path / "DICOMDIR"
    broken.write_bytes(b"not a dicomdir")
    gateway_ = await gw.runtime.ready_gateway()
    outcomes = await ingest_dicom_paths(
        gateway_, [broken, tmp_path / "missing.dcm"], dicomweb_base="http://x"
    )
    assert [o.error for o in outcomes] == [
        "not a DICOM Part 10 file (status 0xC000)",
        "cannot read the file (No such file or directory)",
    ]


async def test_bad_token_is_refused_before_storing(gw: Gw) -> None:
    r = await gw.client.post(
        "/dicomweb/studies",
        content=multipart(CT.read_bytes()),
        headers={"Content-Type": STOW_TYPE, "Authorization": "Bearer not-a-token"},
    )
    assert r.status_code == 401
    assert await imaging_studies(gw) == []


async def test_storing_needs_the_right_to_write_imaging_studies(gw: Gw) -> None:
    reader = mint_token(gw.settings, sub="Practitioner/1", roles=["clinician"], scope="user/*.rs")
    headers = {"Content-Type": STOW_TYPE, "Authorization": f"Bearer {reader}"}
    r = await gw.client.post("/dicomweb/studies", content=multipart(CT.read_bytes()), headers=headers)
    assert r.status_code == 403
    writer = mint_token(
        gw.settings, sub="Device/modality", roles=["integration"], scope="system/ImagingStudy.cu"
    )
    headers["Authorization"] = f"Bearer {writer}"
    assert (
        await gw.client.post("/dicomweb/studies", content=multipart(CT.read_bytes()), headers=headers)
    ).status_code == 200


def test_the_dicomweb_base_without_a_request() -> None:
    url = "sqlite+aiosqlite:///x.db"
    assert (
        default_dicomweb_base(make_settings(url, dicom={"dicomweb_base": "https://pacs/dw/"}))
        == "https://pacs/dw"
    )
    assert default_dicomweb_base(make_settings(url, base_url="https://gw/fhir")) == "https://gw/dicomweb"
    assert default_dicomweb_base(make_settings(url, base_url="https://gw/api")) == "https://gw/api/dicomweb"
    assert default_dicomweb_base(make_settings(url, port=8081)) == "http://127.0.0.1:8081/dicomweb"


async def test_blob_store_shares_identical_bytes_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path, fsync=False)
    first, second = await store.stage(b"same"), await store.stage(b"same")
    assert first.created and not second.created and first.sha256 == second.sha256
    store.release(first, keep=False)  # the other ingest still holds it
    assert store.path_for(first.sha256).exists()
    store.release(second, keep=True)
    assert await store.read(first.sha256) == b"same"
    with pytest.raises(ValueError):
        store.path_for("../../etc/passwd")

    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        await store.stage(b"other")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [f"{first.sha256}.dcm"]


def test_dicom_json_bodies_parse_with_pydicom() -> None:
    # The STOW response must be readable by a DICOM toolkit, not just by us.
    from fhir_gateway.ingest.dicom.ingest import FailureReason, InstanceOutcome
    from fhir_gateway.ingest.dicom.stow import stow_response

    status, body = stow_response(
        [
            InstanceOutcome("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2", "1.2.1"),
            InstanceOutcome(failure=FailureReason.CANNOT_UNDERSTAND, reason="x" * 80),
        ],
        "http://h/dicomweb",
    )
    ds = pydicom.Dataset.from_json(body)
    assert status == 202
    assert (
        ds.ReferencedSOPSequence[0].RetrieveURL
        == "http://h/dicomweb/studies/1.2/series/1.2.1/instances/1.2.3"
    )
    assert ds.FailedSOPSequence[0].FailureReason == 0xC000
    assert len(ds.FailedSOPSequence[0].ErrorComment) == 64


def test_the_scp_sends_and_acknowledges_without_tcp_delays() -> None:
    """TCP_NODELAY when an association opens, TCP_QUICKACK on every PDU received: without them an
    association sending instances one by one waits for delayed ACKs (~40 ms) at every instance."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            event: Any = SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=None)))
            no_delay(event)  # a connection already gone: nothing to set, nothing raised
            quick_ack(event)
            event.assoc.dul.socket = SimpleNamespace(socket=accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            no_delay(event)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            quick_ack(event)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
