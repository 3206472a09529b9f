"""DICOM ingest rate: STOW-RS and C-STORE against the plain pydicom header-read floor, in one run.

Instances are pydicom's bundled CT/MR samples re-keyed with fresh Study/Series/SOP Instance UIDs
(S studies of I instances each), so every one is new work. Measured:

1. floor: `pydicom.dcmread(stop_before_pixels=True)` of every instance from memory — the least any
   ingest must do;
2. header: our `read_header` (the floor plus the truncation / VR / UID checks);
3. STOW-RS: instances/s committed through `POST /dicomweb/studies` (one request per study, ASGI
   in-process, SQLite) — header read, blob write with fsync, one transaction per study;
4. C-STORE: instances/s through the pynetdicom SCP from a pynetdicom SCU over loopback (one
   transaction per instance, as C-STORE acknowledges each one after its commit).

The last line is STOW-RS instances/s as a ratio of the floor. Not a test: it prints, never asserts.
Usage: python benchmarks/bench_dicom.py [--studies 10] [--instances 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from fhir_gateway.api.app import create_app
from fhir_gateway.api.dicomweb import build_dicomweb_router
from fhir_gateway.ingest.dicom.ingest import DicomIngester
from fhir_gateway.ingest.dicom.part10 import read_header
from fhir_gateway.ingest.dicom.scp import dicom_listener
from fhir_gateway.settings import load_settings

FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SAMPLES = [FILES / "CT_small.dcm", FILES / "MR_small.dcm"]
BOUNDARY = "bench-boundary"


def make_studies(studies: int, per_study: int) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    for s in range(studies):
        template = pydicom.dcmread(SAMPLES[s % len(SAMPLES)])
        study_uid, series_uid = generate_uid(), generate_uid()
        batch = []
        for i in range(per_study):
            template.StudyInstanceUID, template.SeriesInstanceUID = study_uid, series_uid
            template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            template.InstanceNumber = i + 1
            buffer = io.BytesIO()
            template.save_as(buffer, enforce_file_format=True)
            batch.append(buffer.getvalue())
        out.append(batch)
    return out


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def floor(instances: list[bytes]) -> float:
    start = time.perf_counter()
    for data in instances:
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return rate(len(instances), time.perf_counter() - start)


def headers(instances: list[bytes]) -> float:
    start = time.perf_counter()
    for data in instances:
        read_header(data)
    return rate(len(instances), time.perf_counter() - start)


def body(batch: list[bytes]) -> bytes:
    parts = [
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in batch
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def scu(port: int, instances: list[bytes]) -> int:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="FHIRGW")
    stored = 0
    try:
        for data in instances:
            ds = pydicom.dcmread(io.BytesIO(data))
            stored += int(assoc.send_c_store(ds).Status) == 0
    finally:
        assoc.release()
    return stored


async def ingest_rates(
    stow_set: list[list[bytes]], cstore_set: list[bytes], workdir: Path
) -> tuple[float, float]:
    settings = load_settings(
        None,
        environ={},
        overrides={
            "database_url": f"sqlite+aiosqlite:///{workdir}/gw.db",
            "dicom": {"blob_path": str(workdir / "b")},
            "security": {"allow_anonymous": True},  # a benchmark of ingest, not of token checks
        },
    )
    app = create_app(settings)
    runtime = app.state.runtime
    ingester = DicomIngester.from_settings(runtime.gateway, settings)
    app.include_router(build_dicomweb_router(runtime, ingester=ingester))
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            bodies = [body(batch) for batch in stow_set]
            start = time.perf_counter()
            for payload in bodies:
                r = await client.post(
                    "/dicomweb/studies", content=payload, headers={"Content-Type": content_type}
                )
                assert r.status_code == 200, r.text
            stow_rate = rate(sum(map(len, stow_set)), time.perf_counter() - start)
        async with dicom_listener(runtime, "127.0.0.1", 0, ingester=ingester) as listener:
            start = time.perf_counter()
            stored = await asyncio.to_thread(scu, listener.port, cstore_set)
            cstore_rate = rate(stored, time.perf_counter() - start)
    return stow_rate, cstore_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--instances", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    stow_set = make_studies(args.studies, args.instances)
    cstore_set = [data for batch in make_studies(2, args.instances) for data in batch]
    everything = [data for batch in stow_set for data in batch]
    floor_rate = floor(everything)
    header_rate = headers(everything)
    with tempfile.TemporaryDirectory() as tmp:
        stow_rate, cstore_rate = asyncio.run(ingest_rates(stow_set, cstore_set, Path(tmp)))
    print(
        f"instances: {len(everything)} via STOW-RS in {args.studies} studies, {len(cstore_set)} via C-STORE"
    )
    print(f"floor   pydicom header read : {floor_rate:10.0f} instances/s")
    print(f"header  read_header (checks): {header_rate:10.0f} instances/s ({header_rate / floor_rate:.2f}x)")
    print(f"STOW-RS committed           : {stow_rate:10.0f} instances/s")
    print(f"C-STORE committed           : {cstore_rate:10.0f} instances/s ({cstore_rate / floor_rate:.3f}x)")
    print(f"STOW-RS / pydicom floor = {stow_rate / floor_rate:.3f}")


if __name__ == "__main__":
    main()
