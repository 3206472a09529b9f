"""PostgreSQL connections: one left idle while its server session died is replaced before use, one
handed back a moment ago is used without a check (no ping round trips on a busy pool), and reads
run outside a transaction."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fhir_gateway.store import engine as engines
from fhir_gateway.store.database import AsyncDatabase
from tests.conftest import PG_URL

pytestmark = pytest.mark.postgres


async def backend_pid(database: AsyncDatabase) -> int:
    async with database.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(pid: int) -> None:
    admin = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_an_idle_connection_whose_session_died_is_replaced_before_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engines, "IDLE_PING_SECONDS", 0.0)  # every handed-back connection counts as idle
    database = AsyncDatabase(engines.create_engine(PG_URL))
    try:
        first = await backend_pid(database)
        await terminate(first)
        assert await backend_pid(database) != first  # the request succeeded, on a new session
    finally:
        await database.dispose()


async def test_a_recently_used_connection_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "IDLE_PING_SECONDS", 3600.0)
    database = AsyncDatabase(engines.create_engine(PG_URL))
    try:
        await terminate(await backend_pid(database))
        # Not checked, so the dead session is only found by the statement itself ...
        with pytest.raises(DBAPIError):
            await backend_pid(database)
        # ... which makes the pool drop its connections: the next checkout reconnects.
        assert await backend_pid(database) > 0
    finally:
        await database.dispose()


async def test_reads_run_outside_a_transaction() -> None:
    database = AsyncDatabase(engines.create_engine(PG_URL))
    try:
        async with database.connect() as conn:
            # Each statement is its own transaction: no transaction id is held between them.
            assert (await conn.execute(text("SELECT txid_current()"))).scalar_one() != (
                await conn.execute(text("SELECT txid_current()"))
            ).scalar_one()
        async with database.begin() as conn:
            assert (await conn.execute(text("SELECT txid_current()"))).scalar_one() == (
                await conn.execute(text("SELECT txid_current()"))
            ).scalar_one()
    finally:
        await database.dispose()
