"""PostgreSQL: SQLAlchemy's async engine for every statement, asyncpg itself for the hot ones.

A statement through SQLAlchemy's asyncpg dialect costs about 100 µs of Python on top of the round
trip (execution context, parameter and result processing, and a greenlet switch into the driver),
about as much as the round trip itself on a local server; over HL7 ingest that was a quarter of the
process's CPU. The hot statements (see store/database.py: a resource by key, the buffered writes,
IN-list reads and deletes, savepoints) therefore run on the asyncpg connection under the
SQLAlchemy one, compiled once to asyncpg's `$n` SQL; everything else (searches, the audit chain,
administration) still goes through SQLAlchemy, on the same connection.

Transactions are PostgreSQL's own: the connection is checked out in autocommit mode, in which
SQLAlchemy's adapter leaves transaction control alone, and `begin()` sends BEGIN and COMMIT (or
ROLLBACK) itself. (In transactional mode the adapter sends BEGIN only before its own first
statement, so a first statement sent to asyncpg directly would have run outside the transaction.)
Reads run in autocommit as before: a read-only connection in a transaction paid two more round trips
for nothing, since under READ COMMITTED every statement sees its own snapshot anyway.

Driver errors are raised as SQLAlchemy's (IntegrityError, OperationalError, DBAPIError), so the
store maps them as it maps every other; a connection found closed is invalidated, so the pool opens
a new one instead of handing it out again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

from fhir_gateway.store import engine as engines
from fhir_gateway.store.database import DriverStatement, driver_statement

_BEGIN, _COMMIT, _ROLLBACK = "BEGIN", "COMMIT", "ROLLBACK"


class PostgresDatabase:
    """The Database of a PostgreSQL URL (store/database.py `open_database`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect_name = engine.dialect.name
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[PostgresConnection]:
        """A connection inside one transaction: committed when the block ends, rolled back (and
        the exception re-raised) when it raises."""
        async with self._autocommit.connect() as conn:
            driver = await PostgresConnection.open(conn)
            await driver.control(_BEGIN)
            try:
                yield driver
            except BaseException:
                await driver.abort()
                raise
            try:
                await driver.commit()
            except asyncio.CancelledError:  # the COMMIT's outcome is unknown: never reuse the connection
                await conn.invalidate()
                raise

    @asynccontextmanager
    async def connect(self, *, offload: bool = False) -> AsyncIterator[PostgresConnection]:
        """A connection for reads, each statement its own transaction (`offload` is SQLite's)."""
        async with self._autocommit.connect() as conn:
            yield await PostgresConnection.open(conn)

    async def upgrade(self) -> None:
        await engines.upgrade(self.engine)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


class PostgresConnection:
    """One checked-out connection: SQLAlchemy's for `execute`, asyncpg's for the hot statements."""

    __slots__ = ("_conn", "_driver")

    def __init__(self, conn: AsyncConnection, driver: asyncpg.Connection) -> None:
        self._conn = conn
        self._driver = driver

    @classmethod
    async def open(cls, conn: AsyncConnection) -> PostgresConnection:
        raw = await conn.get_raw_connection()
        return cls(conn, raw.driver_connection)

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        return await self._conn.execute(statement, parameters)

    async def control(self, sql: str) -> None:
        """A statement without parameters (BEGIN, SAVEPOINT ...): one simple-query round trip."""
        await self._call(self._driver.execute, sql)

    async def fetch_first(
        self, statement: DriverStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Any] | None:
        row: Sequence[Any] | None = await self._call(
            self._driver.fetchrow, statement.sql, *statement.values(parameters)
        )
        return row

    async def fetch_expanded(
        self, statement: UpdateBase | Select[Any], parameters: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]:
        sql, values = DriverStatement.expanded(statement, self.dialect, parameters)
        rows: list[Sequence[Any]] = await self._call(self._driver.fetch, sql, *values)
        return rows

    async def write_many(self, statement: DriverStatement, rows: Sequence[Mapping[str, Any]]) -> None:
        if len(rows) == 1:
            await self._call(self._driver.execute, statement.sql, *statement.values(rows[0]))
        else:
            await self._call(self._driver.executemany, statement.sql, [statement.values(r) for r in rows])

    async def insert_returning_key(
        self, statement: UpdateBase, returning: UpdateBase, row: Mapping[str, Any]
    ) -> int:
        compiled = driver_statement(returning, self.dialect, row)
        key: int = await self._call(self._driver.fetchval, compiled.sql, *compiled.values(row))
        return key

    async def commit(self) -> None:
        """COMMIT, and make sure it did: PostgreSQL answers COMMIT in a transaction that has failed
        with a ROLLBACK and no error, and what was not committed must never be acknowledged."""
        status = await self._call(self._driver.execute, _COMMIT)
        if status != _COMMIT:
            raise DBAPIError(_COMMIT, None, RuntimeError(f"the server ended the transaction with {status}"))

    async def abort(self) -> None:
        """Roll the transaction back after an error (which the caller re-raises); a connection that
        cannot do even that is not handed out again."""
        if self._driver.is_closed():
            return  # already invalidated by _translated
        try:
            await self._driver.execute(_ROLLBACK)
        except Exception:  # noqa: BLE001 - the caller's error is the one to report
            await self._conn.invalidate()

    async def _call(self, method: Callable[..., Awaitable[Any]], sql: str, *args: Any) -> Any:
        """`method(sql, *args)` on the asyncpg connection, its errors raised as SQLAlchemy's."""
        try:
            return await method(sql, *args)
        except Exception as exc:
            raise await self._translated(exc, sql) from exc

    async def _translated(self, exc: Exception, sql: str) -> Exception:
        """The SQLAlchemy exception for a driver error, as SQLAlchemy's own dialect would raise it."""
        if self._driver.is_closed() or isinstance(exc, (OSError, ConnectionError, asyncpg.InterfaceError)):
            await self._conn.invalidate()
            return OperationalError(sql, None, exc, connection_invalidated=True)
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
            return IntegrityError(sql, None, exc)
        return DBAPIError(sql, None, exc)
