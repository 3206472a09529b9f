"""The two ways the store talks to its database, behind one small async interface.

PostgreSQL goes through SQLAlchemy's async engine (asyncpg; store/postgres.py): network round
trips are what an event loop is for. SQLite does not: it is a library call into a local file,
typically 10-50 µs for a read by key. aiosqlite runs every statement on a helper thread and
costs two thread hand-offs per statement (≈100-200 µs each under load), which made a one-row read
ten times dearer than the query itself. So the embedded SQLite backend runs statements inline on
the event loop, through a plain SQLAlchemy engine on the stdlib driver, and sends only potentially
long statements (searches, history pages) to a worker thread, where a slow query cannot stall the
other requests.

Both backends hand out `Connection` objects whose `execute` returns a buffered SQLAlchemy
`Result`, so the store, the search runner and adapters (commit hooks) are dialect-blind. The
hottest statements (a resource by key, buffered and one-row inserts, IN-list reads and deletes)
go through `first_row`, `insert_row`, `write_rows` and `expanding_rows` instead, compiled once
(`DriverStatement`) and run on the driver itself: on SQLite the sqlite3 cursor, on PostgreSQL the
asyncpg connection. SQLAlchemy's per-execution work (execution context, parameter and result
processing, and on PostgreSQL a greenlet switch) cost more than SQLite's own statement, and on
PostgreSQL about as much as the round trip.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.engine import Dialect, Engine, Result, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

from fhir_gateway.store import engine as engines
from fhir_gateway.store.checkpoint import Checkpointer

OFFLOAD_THREADS = 4  # concurrent long reads on SQLite; more would only queue on the one file


class Connection(Protocol):
    """What the store needs from a database connection: `execute` for any statement (a buffered
    SQLAlchemy Result), and the driver methods behind `first_row`, `insert_row`, `expanding_rows`,
    `write_rows` and savepoints. InlineConnection (SQLite) and PostgresConnection implement it."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]: ...

    async def fetch_first(
        self, statement: DriverStatement, parameters: Mapping[str, Any]
    ) -> Sequence[Any] | None: ...

    async def fetch_expanded(
        self, statement: UpdateBase | Select[Any], parameters: Mapping[str, Any]
    ) -> Sequence[Sequence[Any]]: ...

    async def write_many(self, statement: DriverStatement, rows: Sequence[Mapping[str, Any]]) -> None: ...

    async def insert_returning_key(
        self, statement: UpdateBase, returning: UpdateBase, row: Mapping[str, Any]
    ) -> int: ...

    async def control(self, sql: str) -> None: ...


class Database(Protocol):
    dialect_name: str

    def begin(self) -> Any: ...  # async context manager yielding a Connection inside a transaction

    def connect(self, *, offload: bool = False) -> Any: ...  # async context manager, read-only use

    async def upgrade(self) -> None: ...

    async def ping(self) -> None: ...

    async def dispose(self) -> None: ...


def open_database(url: str) -> Database:
    if engines.is_sqlite(url):
        return SqliteDatabase(url)
    from fhir_gateway.store.postgres import PostgresDatabase  # it builds on this module

    return PostgresDatabase(engines.create_engine(url))


class InlineConnection:
    """A synchronous SQLite connection used from the event loop (see the module docstring).

    With `offload`, statements run on a worker thread and their rows are buffered there, so no
    cursor is touched from two threads; only the read paths that may be slow ask for it.
    """

    __slots__ = ("_conn", "_offload")

    def __init__(self, conn: SyncConnection, offload: bool) -> None:
        self._conn = conn
        self._offload = offload

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        if self._offload:
            return await asyncio.to_thread(self._buffered, statement, parameters)
        return self._conn.execute(statement, parameters)

    def _buffered(self, statement: Executable, parameters: Any) -> Result[Any]:
        return self._conn.execute(statement, parameters).freeze()()

    async def control(self, sql: str) -> None:
        """A transaction-control statement (SAVEPOINT, RELEASE, ROLLBACK TO) on the sqlite3 cursor:
        a group commit issues two per message, and SQLAlchemy's execution set-up costs ten times
        the statement. SQLAlchemy keeps no state about savepoints it did not begin."""
        with self._cursor(sql) as cursor:
            cursor.execute(sql)

    async def fetch_first(
        self, statement: DriverStatement, parameters: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row of a hot one-row read (a resource by key) as a plain tuple."""
        with self._cursor(statement.sql) as cursor:
            cursor.execute(statement.sql, statement.values(parameters))
            row: tuple[Any, ...] | None = cursor.fetchone()
            return row

    async def fetch_expanded(
        self, statement: UpdateBase | Select[Any], parameters: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """A statement with expanding `IN` parameters (DriverStatement.expanded); its rows."""
        sql, values = DriverStatement.expanded(statement, self.dialect, parameters)
        with self._cursor(sql) as cursor:
            cursor.execute(sql, values)
            return cursor.fetchall()

    async def write_many(self, statement: DriverStatement, rows: Sequence[Mapping[str, Any]]) -> None:
        """A hot write (history, index and current rows: a dozen statements per resource version),
        in the same transaction on the same connection as everything else."""
        with self._cursor(statement.sql) as cursor:
            if len(rows) == 1:
                cursor.execute(statement.sql, statement.values(rows[0]))
            else:
                cursor.executemany(statement.sql, [statement.values(row) for row in rows])

    async def insert_returning_key(
        self, statement: UpdateBase, returning: UpdateBase, row: Mapping[str, Any]
    ) -> int:
        """Insert one row with `statement`; its integer primary key, which in SQLite *is* the rowid
        (so `returning`, the same INSERT with RETURNING the key, is not needed)."""
        compiled = driver_statement(statement, self.dialect, row)
        with self._cursor(compiled.sql) as cursor:
            cursor.execute(compiled.sql, compiled.values(row))
            rowid = cursor.lastrowid
            assert rowid is not None
            return rowid

    @contextmanager
    def _cursor(self, sql: str) -> Iterator[sqlite3.Cursor]:
        """A cursor of the sqlite3 connection under this one; driver errors become SQLAlchemy's, so
        the store maps them as it maps every other."""
        cursor = self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            yield cursor
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
        finally:
            cursor.close()


class DriverStatement:
    """A statement compiled once to a driver's SQL: an INSERT, UPDATE or DELETE for the hot writes,
    a SELECT for the hot reads.

    `keys` are the parameters it takes (for an INSERT, the columns it sets), in the order of the
    driver's placeholders (`?` for sqlite3, `$n` for asyncpg). Column types needing conversion are
    not allowed here: only the store's own tables, whose values are str, int, float, bool, bytes
    and None (on SQLite a Boolean column comes back as 0 or 1).
    """

    __slots__ = ("names", "sql")

    def __init__(
        self, statement: UpdateBase | Select[Any], dialect: Dialect, keys: Sequence[str] | None = None
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())

    def values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple([row[name] for name in self.names])

    @staticmethod
    def expanded(
        statement: UpdateBase | Select[Any], dialect: Dialect, parameters: Mapping[str, Any]
    ) -> tuple[str, tuple[Any, ...]]:
        """The driver SQL and values of a statement whose `IN` lists are expanding parameters:
        SQLAlchemy renders such a statement afresh on every execution; here the compiled form is
        kept and only the placeholders are expanded, one per list item."""
        key = (dialect.name, statement)
        compiled = _EXPANDING.get(key)
        if compiled is None:
            compiled = _EXPANDING[key] = statement.compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
        state = compiled.construct_expanded_state(dict(parameters))
        return state.statement, tuple([state.parameters[name] for name in state.positiontup or ()])


# statement → its SQLCompiler, per dialect (DriverStatement.expanded)
_EXPANDING: dict[tuple[str, UpdateBase | Select[Any]], Any] = {}
_DRIVER_STATEMENTS: dict[tuple[str, UpdateBase | Select[Any], tuple[str, ...]], DriverStatement] = {}


def driver_statement(
    statement: UpdateBase | Select[Any], dialect: Dialect, row: Mapping[str, Any] | None = None
) -> DriverStatement:
    """`statement` compiled once per dialect and set of keys `row` gives (an INSERT sets exactly
    those columns; a SELECT takes its bind parameters, so no row)."""
    key = (dialect.name, statement, tuple(row or ()))
    found = _DRIVER_STATEMENTS.get(key)
    if found is None:
        found = _DRIVER_STATEMENTS[key] = DriverStatement(statement, dialect, key[2])
    return found


async def first_row(
    conn: Connection, statement: Select[Any], parameters: Mapping[str, Any]
) -> Sequence[Any] | None:
    """The first row of a hot lookup by key, read by position (a plain tuple or asyncpg Record)."""
    return await conn.fetch_first(driver_statement(statement, conn.dialect), parameters)


async def insert_row(
    conn: Connection, statement: UpdateBase, row: Mapping[str, Any], *, returning: UpdateBase
) -> int:
    """Insert one row into a table keyed by an integer primary key; returns the new key. `returning`
    is the same INSERT with RETURNING the key (both built once by the caller), for the drivers
    that do not give the key otherwise."""
    return await conn.insert_returning_key(statement, returning, row)


async def expanding_rows(
    conn: Connection, statement: UpdateBase | Select[Any], parameters: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """Run a hot statement with expanding `IN` parameters; its rows (none for a DELETE), by position."""
    return await conn.fetch_expanded(statement, parameters)


async def write_rows(conn: Connection, statement: UpdateBase, rows: Sequence[Mapping[str, Any]]) -> None:
    """A batch write of rows that all give the same keys, one driver executemany."""
    await conn.write_many(driver_statement(statement, conn.dialect, rows[0]), rows)


class SqliteDatabase:
    """The embedded default: the stdlib sqlite3 driver in WAL mode, statements inline."""

    dialect_name = "sqlite"

    def __init__(self, url: str) -> None:
        parsed = make_url(url).set(drivername="sqlite+pysqlite")
        engines.ensure_sqlite_directory(parsed.database)
        # Checking a connection out must never block the event loop: offloaded reads are limited by
        # a semaphore *before* checkout, inline work holds a connection only while it runs, and the
        # pool may grow past its size rather than wait (max_overflow=-1).
        self._offload_slots = asyncio.Semaphore(OFFLOAD_THREADS)
        self.engine: Engine = create_sync_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=OFFLOAD_THREADS + 2,
            max_overflow=-1,
        )
        event.listen(self.engine, "connect", _configure_connection)
        event.listen(self.engine, "begin", _begin)
        # Checkpoints leave the commits for a thread of their own (checkpoint.py).
        self._checkpointer = Checkpointer(str(parsed.database))
        # One long-lived connection each for inline reads (autocommit: every statement sees the latest
        # commit) and for writes (writers are serialised by the store): a pool checkout plus
        # BEGIN/ROLLBACK cost more than the read itself.
        self._reader: SyncConnection | None = None
        self._writer: SyncConnection | None = None

    def _writing(self) -> SyncConnection:
        # BEGIN IMMEDIATE takes the write lock up front, so a CLI process writing beside the server
        # waits (busy_timeout) instead of failing half-way with "database is locked".
        if self._writer is None or self._writer.closed:
            self._writer = self.engine.connect().execution_options(sqlite_begin="BEGIN IMMEDIATE")
            self._checkpointer.start()  # with the first write: a process that only reads needs none
        return self._writer

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[InlineConnection]:
        conn = self._writing()
        with conn.begin():
            yield InlineConnection(conn, offload=False)

    @asynccontextmanager
    async def connect(self, *, offload: bool = False) -> AsyncIterator[InlineConnection]:
        if not offload:
            if self._reader is None or self._reader.closed:
                self._reader = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            yield InlineConnection(self._reader, offload=False)
            return
        async with self._offload_slots:
            with self.engine.connect() as conn:
                yield InlineConnection(conn, offload=True)

    async def upgrade(self) -> None:
        conn = self._writing()
        with conn.begin():
            engines.upgrade_sync(conn)

    async def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        self._checkpointer.stop()
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None
        self.engine.dispose()


def _configure_connection(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (SQLAlchemy's
    # documented recipe for pysqlite), then the pragmas every connection needs.
    dbapi_connection.isolation_level = None
    engines.sqlite_pragmas(dbapi_connection, _record)
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer's thread does them


def _begin(conn: SyncConnection) -> None:
    options = conn.get_execution_options()
    if options.get("isolation_level") != "AUTOCOMMIT":
        conn.exec_driver_sql(options.get("sqlite_begin", "BEGIN"))
