"""DICOM Part 10 files and folders (and DICOMDIR media) for `fhir-gateway ingest`.

A folder is walked for files that carry the Part 10 "DICM" prefix (DICOM files often have no
extension; anything else in the folder is skipped, and DICOMDIR files are skipped because they only
index files the walk finds anyway). A DICOMDIR named on the command line contributes the files it
references. A file named on the command line is always tried, so a wrong one gets its error line.
Files are ingested in batches through the same ingester as STOW-RS and C-STORE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.fileset import FileSet

from fhir_gateway.gateway import Gateway
from fhir_gateway.ingest.dicom.ingest import DicomIngester
from fhir_gateway.ingest.dicom.part10 import PREAMBLE_LENGTH, PREFIX

DICOMDIR = "DICOMDIR"
BATCH_SIZE = 32


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """One file's result; `error` is None when stored, else a text without PHI."""

    path: Path
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


ProgressCallback = Callable[[FileOutcome], None]


def has_dicom_prefix(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(PREAMBLE_LENGTH + len(PREFIX))
    except OSError:
        return False
    return head[PREAMBLE_LENGTH:] == PREFIX


def is_dicom_path(path: Path) -> bool:
    """Whether the CLI should hand `path` to DICOM ingest (a folder always may hold DICOM)."""
    return path.is_dir() or path.name.upper() == DICOMDIR or has_dicom_prefix(path)


def dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The instance files `paths` name, folders walked, DICOMDIRs resolved, each file once."""
    seen: set[Path] = set()
    for path in paths:
        for found in _expand(path):
            key = found.resolve()
            if key not in seen:
                seen.add(key)
                yield found


def _expand(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for found in sorted(p for p in path.rglob("*") if p.is_file()):
            if found.name.upper() != DICOMDIR and has_dicom_prefix(found):
                yield found
    elif path.name.upper() == DICOMDIR:
        yield from _referenced(path)
    else:
        yield path


def _referenced(dicomdir: Path) -> Iterator[Path]:
    try:
        file_set = FileSet(dcmread(dicomdir))
    except Exception:  # not a readable DICOMDIR: try it as a file, which then fails with a reason
        yield dicomdir
        return
    for instance in file_set:
        yield Path(instance.path)


async def ingest_dicom_paths(
    gateway: Gateway,
    paths: Sequence[Path],
    progress_callback: ProgressCallback | None = None,
    *,
    ingester: DicomIngester | None = None,
    dicomweb_base: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> list[FileOutcome]:
    """Ingest every DICOM file under `paths`; one outcome per file, reported as it is known."""
    ingester = ingester or DicomIngester.from_settings(gateway, gateway.settings)
    results: list[FileOutcome] = []
    batch: list[Path] = []
    unreadable: dict[Path, str] = {}

    async def flush() -> None:
        contents: list[bytes | None] = []
        for path in batch:
            try:
                contents.append(path.read_bytes())
            except OSError as exc:
                contents.append(None)
                unreadable[path] = f"cannot read the file ({exc.strerror})"
        outcomes = iter(
            await ingester.ingest(
                [c for c in contents if c is not None], source_system="CLI", dicomweb_base=dicomweb_base
            )
        )
        for path, content in zip(batch, contents, strict=True):
            if content is None:
                _report(FileOutcome(path, unreadable.pop(path)), results, progress_callback)
                continue
            outcome = next(outcomes)
            error = None if outcome.ok else f"{outcome.reason} (status 0x{int(outcome.failure or 0):04X})"
            _report(FileOutcome(path, error), results, progress_callback)
        batch.clear()

    for path in dicom_files(paths):
        batch.append(path)
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    return results


def _report(outcome: FileOutcome, results: list[FileOutcome], callback: ProgressCallback | None) -> None:
    results.append(outcome)
    if callback is not None:
        callback(outcome)
