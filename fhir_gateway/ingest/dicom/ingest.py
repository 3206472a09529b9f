"""DICOM instances → blob store + one transaction Bundle per study → `Gateway.submit`.

The one ingest path for STOW-RS, the C-STORE SCP and `fhir-gateway ingest`. Per batch:

1. read every header (part10); a bad instance fails alone with a reason and the rest go on;
2. write each instance's bytes to the blob store (before any commit);
3. per study, read the current ImagingStudy through the Gateway, merge the new instances in and
   submit ImagingStudy (+ Patient when absent, + Endpoint when absent) as ONE transaction. A commit
   hook checks that the ImagingStudy version is the one the merge started from; when a concurrent
   ingest got there first the transaction rolls back and the merge is redone on the new version.
   When a study's transaction fails, its instances are retried one by one so that one bad instance
   cannot take the others down;
4. blobs of committed instances are kept, the others removed: nothing is half-written.

Failure reasons are DICOM status codes (PS3.4 Table B.2-1, PS3.18 FailureReason) with a text that
never carries PHI.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Conflict, GatewayError, Gone, NotFound, ServiceUnavailable
from fhir_gateway.fhir.json import Resource
from fhir_gateway.gateway import Gateway
from fhir_gateway.ingest.dicom import imaging_study as mapping
from fhir_gateway.ingest.dicom.blobs import BlobStore, StagedBlob
from fhir_gateway.ingest.dicom.part10 import InstanceHeader, Part10Error, read_header
from fhir_gateway.settings import Settings
from fhir_gateway.store.schema import resource_history
from fhir_gateway.store.store import StoredVersion, Transaction
from fhir_gateway.transaction import EntryResult

log = structlog.get_logger("fhir_gateway.dicom")


class FailureReason(IntEnum):
    """Why an instance was not stored (PS3.4 Table B.2-1 Storage statuses; PS3.7 C.4.2.1.4)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    STUDY_INSTANCE_UID_MISMATCH = 0xC409  # STOW-RS to /studies/{uid} with another study (as dcm4chee does)


CANNOT_UNDERSTAND = FailureReason.CANNOT_UNDERSTAND
STUDY_MISMATCH = FailureReason.STUDY_INSTANCE_UID_MISMATCH
MISMATCH = FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


@dataclass(slots=True)
class InstanceOutcome:
    """What became of one received instance; `reason` is safe to send back (no PHI)."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    failure: FailureReason | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(slots=True)
class _Received:
    """One instance past the header read, on its way to the store."""

    index: int
    header: InstanceHeader
    blob: StagedBlob | None = None


def default_dicomweb_base(settings: Settings) -> str:
    """The DICOMweb base to put in Endpoint.address when there is no request to take it from."""
    if settings.dicom.dicomweb_base:
        return settings.dicom.dicomweb_base.rstrip("/")
    if settings.base_url:
        fhir_base = settings.base_url.rstrip("/")
        root = fhir_base.removesuffix("/fhir") if fhir_base.endswith("/fhir") else fhir_base
        return f"{root}/dicomweb"
    return f"http://{settings.host}:{settings.port}/dicomweb"


class DicomIngester:
    """Long-lived (one per server): holds the per-study locks and the Endpoints known to exist."""

    def __init__(self, gateway: Gateway, blobs: BlobStore, *, attempts: int = 5) -> None:
        self.gateway = gateway
        self.blobs = blobs
        self.attempts = attempts
        self._study_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._endpoints: set[str] = set()

    @classmethod
    def from_settings(cls, gateway: Gateway, settings: Settings) -> DicomIngester:
        return cls(gateway, BlobStore(Path(settings.dicom.blob_path)))

    async def ingest(
        self,
        items: Sequence[bytes],
        *,
        source_system: str,
        dicomweb_base: str | None = None,
        expected_study: str | None = None,
    ) -> list[InstanceOutcome]:
        """Store every Part 10 instance of `items`; one outcome per item, in order."""
        ctx = RequestContext.system("dicom", source_system=source_system)
        outcomes, received, duplicates = await asyncio.to_thread(self._prepare, items, expected_study)
        by_study: dict[str, list[_Received]] = {}
        for item in received.values():
            if item.blob is not None:
                by_study.setdefault(item.header.study_instance_uid, []).append(item)
        for group in by_study.values():
            await self._store_study(group, outcomes, ctx, dicomweb_base)
        for index, sop_uid in duplicates.items():
            outcomes[index] = outcomes[received[sop_uid].index]
        return outcomes

    def _prepare(
        self, items: Sequence[bytes], expected_study: str | None
    ) -> tuple[list[InstanceOutcome], dict[str, _Received], dict[int, str]]:
        """Header reads and blob writes, in a worker thread (both are CPU or disk bound)."""
        outcomes: list[InstanceOutcome] = []
        received: dict[str, _Received] = {}  # by SOP Instance UID: a re-sent instance counts once
        duplicates: dict[int, str] = {}
        for index, data in enumerate(items):
            try:
                header = read_header(data)
            except Part10Error as exc:
                failure = MISMATCH if exc.kind == "sop-class-mismatch" else CANNOT_UNDERSTAND
                outcomes.append(
                    InstanceOutcome(
                        exc.sop_class_uid, exc.sop_instance_uid, failure=failure, reason=exc.reason
                    )
                )
                continue
            outcomes.append(_outcome_for(header))
            if expected_study is not None and header.study_instance_uid != expected_study:
                _fail(outcomes[index], STUDY_MISMATCH, "not of the study named in the request")
                continue
            earlier = received.get(header.sop_instance_uid)
            item = received[header.sop_instance_uid] = _Received(index, header)
            try:
                item.blob = self.blobs.stage_sync(data)
            except OSError:
                log.exception("dicom_blob_write_failed")
                _fail(outcomes[index], FailureReason.OUT_OF_RESOURCES, "the instance store cannot write")
            if earlier is not None:  # the last copy wins; the earlier one is answered like it
                duplicates[earlier.index] = header.sop_instance_uid
                if earlier.blob is not None:
                    self.blobs.release(earlier.blob, keep=False)
        return outcomes, received, duplicates

    async def _store_study(
        self, group: list[_Received], outcomes: list[InstanceOutcome], ctx: RequestContext, base: str | None
    ) -> None:
        study_uid = group[0].header.study_instance_uid
        lock = self._study_locks.get(study_uid)
        if lock is None:
            lock = self._study_locks[study_uid] = asyncio.Lock()
        async with lock:
            failure = await self._commit(group, ctx, base)
            if failure is not None and len(group) > 1:
                for item in group:  # find the instance(s) at fault; the others are stored
                    self._settle([item], outcomes, await self._commit([item], ctx, base))
            else:
                self._settle(group, outcomes, failure)

    def _settle(
        self,
        group: list[_Received],
        outcomes: list[InstanceOutcome],
        failure: tuple[FailureReason, str] | None,
    ) -> None:
        for item in group:
            assert item.blob is not None
            self.blobs.release(item.blob, keep=failure is None)
            if failure is not None:
                _fail(outcomes[item.index], *failure)

    async def _commit(
        self, group: list[_Received], ctx: RequestContext, base: str | None
    ) -> tuple[FailureReason, str] | None:
        """Merge `group` into its study and commit; None when stored, else (reason code, text)."""
        try:
            for _ in range(self.attempts):
                try:
                    await self._try_commit(group, ctx, base)
                    return None
                except Conflict:
                    continue  # someone else changed the study meanwhile: merge again on their version
            return FailureReason.PROCESSING_FAILURE, "the study kept changing concurrently; send it again"
        except ServiceUnavailable:
            return FailureReason.OUT_OF_RESOURCES, "the database is unavailable"
        except GatewayError as exc:
            return FailureReason.PROCESSING_FAILURE, exc.diagnostics
        except Exception:
            log.exception("dicom_ingest_failed")
            return FailureReason.PROCESSING_FAILURE, "internal error; nothing was stored"

    async def _try_commit(self, group: list[_Received], ctx: RequestContext, base: str | None) -> None:
        first = group[0].header
        study_id = mapping.study_resource_id(first.study_instance_uid)
        current = await self._current("ImagingStudy", study_id, ctx)
        existing = current.resource() if current is not None else None
        entries: list[Resource] = []
        if existing is not None:
            patient_reference = str(existing.get("subject", {}).get("reference", ""))
        else:
            patient = mapping.patient_resource(first)
            patient_reference = f"Patient/{patient['id']}"
            if await self._current("Patient", patient["id"], ctx) is None:
                entries.append(_put(patient))  # never overwrite a richer Patient (e.g. from an HL7v2 ADT)
        endpoint_reference = None
        if base:
            endpoint = mapping.endpoint_resource(base)
            endpoint_reference = f"Endpoint/{endpoint['id']}"
            known = endpoint["id"] in self._endpoints
            if not known and await self._current("Endpoint", endpoint["id"], ctx) is None:
                entries.append(_put(endpoint))
        based_on: list[str] = []
        if first.accession_number and (existing is None or "basedOn" not in existing):
            based_on = await self._service_requests(first.accession_number, ctx)
        study = mapping.merge_instances(
            existing,
            [(item.header, item.blob.sha256) for item in group if item.blob is not None],
            patient_reference=patient_reference,
            endpoint_reference=endpoint_reference,
            based_on=based_on,
        )
        entries.append(_put(study))

        async def unchanged_since_read(tx: Transaction, results: list[EntryResult]) -> None:
            """The version written must directly follow the one merged into (or a deletion/nothing).

            A re-sent instance changes nothing, and an unchanged update keeps the current version.
            """
            written = results[-1].version  # the ImagingStudy is the last entry
            assert written is not None, "a PUT always answers with a version"
            if current is not None:
                fresh = written.version_id in (current.version_id, current.version_id + 1)
            else:
                fresh = written.version_id == 1 or await _was_deleted(
                    tx, "ImagingStudy", study_id, written.version_id - 1
                )
            if not fresh:
                raise Conflict("the ImagingStudy changed during the ingest")

        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        await self.gateway.submit_entries(bundle, ctx, within=unchanged_since_read)
        if endpoint_reference:
            self._endpoints.add(endpoint_reference.removeprefix("Endpoint/"))

    async def _current(self, res_type: str, res_id: str, ctx: RequestContext) -> StoredVersion | None:
        try:
            return await self.gateway.read(res_type, res_id, ctx)
        except (NotFound, Gone):
            return None

    async def _service_requests(self, accession: str, ctx: RequestContext) -> list[str]:
        """The ServiceRequests carrying this accession number (the order the study fulfils)."""
        bundle = await self.gateway.search("ServiceRequest", [("identifier", _escape(accession))], ctx)
        found: list[str] = []
        for entry in bundle.get("entry", []):
            resource: Any = entry.get("resource")
            if entry.get("search", {}).get("mode", "match") == "match" and isinstance(resource, dict):
                found.append(f"ServiceRequest/{resource.get('id')}")
        return found


async def _was_deleted(tx: Transaction, res_type: str, res_id: str, version_id: int) -> bool:
    await tx.flush()  # the version may have been written in this transaction (history is buffered)
    row = (
        await tx.conn.execute(
            select(resource_history.c.deleted).where(
                resource_history.c.res_type == res_type,
                resource_history.c.res_id == res_id,
                resource_history.c.version_id == version_id,
            )
        )
    ).first()
    return row is not None and bool(row.deleted)


def _outcome_for(h: InstanceHeader) -> InstanceOutcome:
    return InstanceOutcome(
        sop_class_uid=h.sop_class_uid,
        sop_instance_uid=h.sop_instance_uid,
        study_instance_uid=h.study_instance_uid,
        series_instance_uid=h.series_instance_uid,
    )


def _fail(outcome: InstanceOutcome, failure: FailureReason, reason: str) -> None:
    outcome.failure = failure
    outcome.reason = reason


def _put(resource: Resource) -> Resource:
    return {
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def _escape(value: str) -> str:
    """FHIR search escaping (search.html#escaping) so "," "$" "|" in an accession stay literal."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|")
