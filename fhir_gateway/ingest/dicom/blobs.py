"""The instance blob store: received DICOM bytes kept on the filesystem, content-addressed by SHA-256.

An instance's bytes are written (and fsync'ed) *before* the database commit that makes the
ImagingStudy point at them, so a committed study never references a missing file. When the commit
does not happen, the caller releases the blob unkept and a file this ingest created is removed again.
Two ingests of identical bytes share one file: a file is only removed when it was created by this
process, no other ingest still holds it, and the caller did not keep it. (A crash between write and
commit leaves an unreferenced file behind, never a dangling reference.)

`stage_sync` and `release` may be called from any thread: the holder count is taken under a lock
*before* looking for an existing file, and a file is only removed under the same lock, so an ingest
that rolls back can never delete the file another ingest is about to reference.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

SUFFIX = ".dcm"


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """One blob written for an ingest that has not yet committed (or been rolled back)."""

    sha256: str
    size: int
    created: bool  # this write made the file; only then may a rollback remove it


@dataclass
class BlobStore:
    root: Path
    fsync: bool = True
    _pending: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}{SUFFIX}"

    async def stage(self, data: bytes) -> StagedBlob:
        """Write `data` (unless the same bytes are already there) and hold it until `release`."""
        return await asyncio.to_thread(self.stage_sync, data)

    def stage_sync(self, data: bytes) -> StagedBlob:
        sha256 = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._pending[sha256] = self._pending.get(sha256, 0) + 1
        try:
            created = self._write(sha256, data)
        except BaseException:
            self.release(StagedBlob(sha256, len(data), False), keep=False)
            raise
        return StagedBlob(sha256, len(data), created)

    def release(self, blob: StagedBlob, *, keep: bool) -> None:
        """Keep the blob (its reference was committed) or drop what this ingest created."""
        with self._lock:
            holders = self._pending.get(blob.sha256, 0) - 1
            if holders > 0:
                self._pending[blob.sha256] = holders
            else:
                self._pending.pop(blob.sha256, None)
            if not keep and blob.created and holders <= 0:
                self.path_for(blob.sha256).unlink(missing_ok=True)

    async def read(self, sha256: str) -> bytes:
        """The stored bytes; FileNotFoundError when the blob is gone."""
        return await asyncio.to_thread(self.path_for(sha256).read_bytes)

    def _write(self, sha256: str, data: bytes) -> bool:
        path = self.path_for(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, path)  # atomic: a reader sees the whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True
