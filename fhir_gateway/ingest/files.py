"""`fhir-gateway ingest`: FHIR JSON, HL7 v2 and DICOM files through the one write path.

`.hl7`/`.er7` files go through the HL7 v2 receiver (the same mapping, idempotency and error queue
as MLLP); DICOM Part 10 files (recognised by their DICM preamble, in folders too) and DICOMDIRs
through the DICOM ingester (the same ImagingStudy mapping and blob store as STOW-RS and C-STORE).
A transaction/batch Bundle is submitted as it is; any other Bundle (collection, searchset, document)
becomes a batch of its entries; a single resource becomes a PUT when it has an id (so re-ingesting
a file updates instead of duplicating) and a POST when it has none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import GatewayError
from fhir_gateway.fhir.json import Resource, loads
from fhir_gateway.gateway import Gateway
from fhir_gateway.ingest.dicom.files import FileOutcome, dicom_files, ingest_dicom_paths, is_dicom_path
from fhir_gateway.ingest.dicom.ingest import default_dicomweb_base
from fhir_gateway.ingest.hl7v2.files import SUFFIXES as HL7_SUFFIXES
from fhir_gateway.ingest.hl7v2.files import failed, ingest_file
from fhir_gateway.ingest.hl7v2.receiver import Receiver, Reply
from fhir_gateway.settings import Settings

SUFFIXES = {".json", *HL7_SUFFIXES}


def iter_files(paths: Sequence[Path]) -> Iterator[Path]:
    """FHIR JSON and HL7 v2 files: those named, and those with their suffixes inside folders."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.suffix.lower() in SUFFIXES or not is_dicom_path(path):
            yield path


def dicom_roots(paths: Sequence[Path]) -> list[Path]:
    """Folders (which may hold DICOM files without any suffix), DICOMDIRs and Part 10 files."""
    return [p for p in paths if p.suffix.lower() not in SUFFIXES and is_dicom_path(p)]


def as_bundle(data: Any) -> Resource:
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise GatewayError("not a FHIR resource (no resourceType)")
    if data["resourceType"] == "Bundle":
        if data.get("type") in ("transaction", "batch"):
            return data
        entries = [e.get("resource") for e in data.get("entry", []) if isinstance(e, dict)]
        return {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [_entry(r) for r in entries if isinstance(r, dict)],
        }
    return {"resourceType": "Bundle", "type": "transaction", "entry": [_entry(data)]}


def _entry(resource: Resource) -> Resource:
    res_type = resource.get("resourceType")
    res_id = resource.get("id")
    if isinstance(res_id, str) and res_id:
        return {"resource": resource, "request": {"method": "PUT", "url": f"{res_type}/{res_id}"}}
    return {"resource": resource, "request": {"method": "POST", "url": str(res_type)}}


async def ingest_paths(settings: Settings, paths: Sequence[Path], console: Console) -> int:
    """Ingest every file; returns the number of files that failed (each reported on its own line)."""
    files = list(iter_files(paths))
    dicom = list(dicom_files(dicom_roots(paths)))
    runtime = Runtime(settings)
    failures = 0

    def report(path: Path, problem: str | None) -> None:
        nonlocal failures
        if problem:
            failures += 1
            console.print(f"[yellow]{path}[/yellow]: {problem}", markup=True, highlight=False)

    try:
        await runtime.ensure_schema()
        ctx = RequestContext.system("cli")
        receiver = Receiver(runtime)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("ingesting", total=len(files) + len(dicom))
            for path in files:
                try:
                    if path.suffix.lower() in HL7_SUFFIXES:
                        problem = _hl7_problem(await ingest_file(receiver, path))
                    else:
                        problem = await _fhir_problem(runtime.gateway, ctx, path)
                except (GatewayError, OSError) as exc:
                    problem = str(exc)
                report(path, problem)
                progress.advance(task)
            if dicom:

                def done(outcome: FileOutcome) -> None:
                    report(outcome.path, outcome.error)
                    progress.advance(task)

                await ingest_dicom_paths(
                    runtime.gateway, dicom, done, dicomweb_base=default_dicomweb_base(settings)
                )
        total = len(files) + len(dicom)
        console.print(f"ingested {total - failures} of {total} files")
    finally:
        await runtime.stop()
    return failures


async def _fhir_problem(gateway: Gateway, ctx: RequestContext, path: Path) -> str | None:
    bundle = as_bundle(loads(path.read_bytes(), what=path.name))
    results = await gateway.submit_entries(bundle, ctx)
    failed = [r for r in results if r.status >= 400]
    return f"{len(failed)} of {len(results)} entries failed" if failed else None


def _hl7_problem(replies: list[Reply]) -> str | None:
    bad = failed(replies)
    return (
        f"{bad} of {len(replies)} messages were not accepted (see `fhir-gateway hl7 errors`)" if bad else None
    )
