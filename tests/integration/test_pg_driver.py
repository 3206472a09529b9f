"""PostgreSQL's hot statements run on asyncpg itself, under the SQLAlchemy connection
(store/postgres.py). They must keep every promise the SQLAlchemy path kept: they run inside the
store's transaction (rolled back with it), a unique clash is a 409 Conflict, a dead session is a
503 and is replaced, and a transaction the server has already failed is never reported committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import bindparam, func, insert, literal_column, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from fhir_gateway.errors import Conflict, ServiceUnavailable
from fhir_gateway.pipeline.tables import change_feed
from fhir_gateway.store import engine as engines
from fhir_gateway.store.database import first_row, write_rows
from fhir_gateway.store.postgres import PostgresConnection
from fhir_gateway.store.schema import resources
from fhir_gateway.store.store import Store
from tests.conftest import opened_store
from tests.integration.test_pg_pool import backend_pid, terminate

pytestmark = pytest.mark.postgres
ROW = {"category": "clinical", "res_type": "Patient", "res_id": "p1", "version_id": 1}
BY_ID = select(resources.c.pk).where(resources.c.res_id == bindparam("i"))
CURRENT = {"res_type": "Patient", "res_id": "p1", "version_id": 1, "last_updated": 1.0, "deleted": False}


async def feed_rows(store: Store) -> int:
    async with store.reader() as conn:
        return int((await conn.execute(select(func.count()).select_from(change_feed))).scalar_one())


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    async with opened_store(pg_url) as opened:
        yield opened


async def test_driver_writes_commit_and_roll_back_with_the_transaction(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await write_rows(tx.conn, insert(change_feed), [ROW, {**ROW, "res_id": "p2"}])
            assert await feed_rows(store) == 0  # not visible outside before the commit
            raise RuntimeError("the submit failed after its writes")
    assert await feed_rows(store) == 0
    async with store.transaction() as tx:
        await write_rows(tx.conn, insert(change_feed), [ROW])
    assert await feed_rows(store) == 1


async def test_a_unique_clash_on_a_driver_write_is_a_conflict(store: Store) -> None:
    row = {**CURRENT, "content": b"{}"}
    async with store.transaction() as tx:
        await write_rows(tx.conn, insert(resources), [row])
    with pytest.raises(Conflict):
        async with store.transaction() as tx:
            await write_rows(tx.conn, insert(resources), [row])


async def test_a_transaction_the_server_failed_is_not_reported_committed(store: Store) -> None:
    """An error swallowed inside a transaction leaves it failed; PostgreSQL then answers COMMIT
    with ROLLBACK and no error. Acknowledging that as a commit would lose the writes before it."""
    with pytest.raises(DBAPIError, match="ended the transaction with ROLLBACK"):
        async with store.database.begin() as conn:
            await write_rows(conn, insert(change_feed), [ROW])
            with pytest.raises(DBAPIError):
                await conn.execute(text("SELECT 1 / 0"))
    assert await feed_rows(store) == 0


async def test_a_dead_session_met_by_a_driver_read_is_replaced(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "IDLE_PING_SECONDS", 3600.0)  # no check at checkout: the read meets it
    await terminate(await backend_pid(store.database))
    with pytest.raises(ServiceUnavailable):
        await store.read("Patient", "p1")
    assert await store.read("Patient", "p1") is None  # a new session answers


async def test_a_write_whose_session_dies_is_unavailable_and_the_next_one_succeeds(store: Store) -> None:
    with pytest.raises(ServiceUnavailable):
        async with store.transaction() as tx:
            await write_rows(tx.conn, insert(change_feed), [ROW])
            await terminate(int((await tx.conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
            await first_row(tx.conn, BY_ID, {"i": "p1"})
    async with store.transaction() as tx:
        await write_rows(tx.conn, insert(change_feed), [ROW])
    assert await feed_rows(store) == 1


async def test_a_dead_session_is_an_operational_error_marked_invalidated(store: Store) -> None:
    async with store.database.connect() as conn:
        await terminate(int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
        with pytest.raises(OperationalError) as raised:
            await first_row(conn, BY_ID, {"i": "p1"})
    assert raised.value.connection_invalidated


async def test_any_other_driver_error_is_a_database_error_and_rolls_back(store: Store) -> None:
    with pytest.raises(DBAPIError) as raised:
        async with store.database.begin() as conn:
            await write_rows(conn, insert(change_feed), [ROW])
            await first_row(conn, select(literal_column("1 / 0")), {})
    assert isinstance(raised.value.orig, asyncpg.DivisionByZeroError)
    assert not isinstance(raised.value, OperationalError)  # not taken for an outage
    assert await feed_rows(store) == 0


async def test_a_connection_whose_commit_was_cancelled_is_not_reused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COMMIT interrupted by cancellation may or may not have happened, and the connection may be
    in the middle of its reply: it is dropped, never handed to the next request."""
    used = await backend_pid(store.database)
    assert await backend_pid(store.database) == used  # an idle pool hands the same connection back

    async def cancelled(self: PostgresConnection) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(PostgresConnection, "commit", cancelled)
    with pytest.raises(asyncio.CancelledError):
        async with store.database.begin() as conn:
            assert int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()) == used
    assert await backend_pid(store.database) != used


async def test_a_connection_that_cannot_roll_back_is_not_reused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = await backend_pid(store.database)
    execute = asyncpg.Connection.execute

    async def failing_rollback(self: asyncpg.Connection, query: str, *args: object) -> object:
        if query == "ROLLBACK":
            raise asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
        return await execute(self, query, *args)

    monkeypatch.setattr(asyncpg.Connection, "execute", failing_rollback)
    with pytest.raises(RuntimeError, match="the submit failed"):  # the caller's error, not the rollback's
        async with store.database.begin():
            raise RuntimeError("the submit failed")
    monkeypatch.undo()
    assert await backend_pid(store.database) != used
