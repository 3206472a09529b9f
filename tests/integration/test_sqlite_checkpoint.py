"""SQLite WAL checkpoints run on their own thread, not inside a commit on the event loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import orjson
import structlog
from sqlalchemy import text

from fhir_gateway.store.checkpoint import Checkpointer
from fhir_gateway.store.database import SqliteDatabase
from fhir_gateway.store.store import Store, StoredVersion


def _patient(n: int) -> StoredVersion:
    body = orjson.dumps({"resourceType": "Patient", "id": f"p{n}", "text": {"div": os.urandom(3000).hex()}})
    return StoredVersion("Patient", f"p{n}", 1, 1_700_000_000.0 + n, False, body, "PUT")


async def test_the_database_file_is_filled_by_the_background_checkpoint(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/gw.db")
    await store.upgrade()
    db = tmp_path / "gw.db"
    try:
        assert isinstance(store.database, SqliteDatabase)
        async with store.transaction() as tx:  # commits themselves never checkpoint
            setting = await tx.conn.execute(text("PRAGMA wal_autocheckpoint"))
            assert setting.scalar_one() == 0
        before = db.stat().st_size
        for batch in range(4):  # ~2.4 MB of WAL
            async with store.transaction() as tx:
                for n in range(100):
                    await tx.write(_patient(batch * 100 + n), previous=None, rows=None)
        for _ in range(40):  # the thread's round (every 0.5 s) copies the pages into the file
            if db.stat().st_size > before + 2_000_000:
                break
            await asyncio.sleep(0.1)
        assert db.stat().st_size > before + 2_000_000
        assert await store.read("Patient", "p399") is not None
    finally:
        await store.dispose()
    assert store.database._checkpointer._thread is None


def test_a_failed_round_is_logged_and_the_thread_goes_on(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.close()  # any use now raises sqlite3.ProgrammingError
    with structlog.testing.capture_logs() as logs:
        Checkpointer.checkpoint(conn)
    assert logs[0]["event"] == "sqlite_checkpoint_failed"
    assert logs[0]["error"] == "ProgrammingError"
