"""The two ways the store talks to its database, behind one small async interface.

PostgreSQL goes through SQLAlchemy's async engine (asyncpg): network round trips are what an event
loop is for. SQLite does not: it is a library call into a local file, typically 10-50 µs for a read
by key. aiosqlite runs every statement on a helper thread and costs two thread hand-offs per
statement (≈100-200 µs each under load), which made a one-row read ten times dearer than the query
itself. So the embedded SQLite backend runs statements inline on the event loop, through a plain
SQLAlchemy engine on the stdlib driver, and sends only potentially long statements (searches,
history pages) to a worker thread, where a slow query cannot stall the other requests.

Both backends hand out `Connection` objects with one async method, `execute`, returning a buffered
SQLAlchemy `Result`, so the store, the search runner and adapters (commit hooks) are dialect-blind.
The hottest statements (a resource by key, buffered and one-row inserts, IN-list reads and deletes)
go through `first_row`, `insert_row`, `write_rows` and `expanding_rows` instead: on SQLite they run
on the sqlite3 cursor, compiled once (SQLAlchemy's per-execution work cost more than SQLite's own),
elsewhere through SQLAlchemy as any other statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.engine import Dialect, Engine, Result, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

from fhir_gateway.store import engine as engines
from fhir_gateway.store.checkpoint import Checkpointer

OFFLOAD_THREADS = 4  # concurrent long reads on SQLite; more would only queue on the one file


class Connection(Protocol):
    """What the store needs from a database connection (an AsyncConnection satisfies it)."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]: ...


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
    return AsyncDatabase(engines.create_engine(url))


class AsyncDatabase:
    """PostgreSQL (or any async driver): SQLAlchemy's AsyncEngine as it comes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect_name = engine.dialect.name
        # Reads run in autocommit: a read-only connection in a transaction paid two more round
        # trips (BEGIN before its first statement, ROLLBACK when handed back) for nothing, since
        # under READ COMMITTED every statement sees its own snapshot anyway.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self, *, offload: bool = False) -> AsyncIterator[AsyncConnection]:
        async with self._autocommit.connect() as conn:
            yield conn

    async def upgrade(self) -> None:
        await engines.upgrade(self.engine)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


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

    def control(self, sql: str) -> None:
        """A transaction-control statement (SAVEPOINT, RELEASE, ROLLBACK TO) on the sqlite3 cursor:
        a group commit issues two per message, and SQLAlchemy's execution set-up costs ten times
        the statement. SQLAlchemy keeps no state about savepoints it did not begin."""
        with self._cursor(sql) as cursor:
            cursor.execute(sql)

    def first(self, statement: DriverStatement, parameters: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a hot one-row read (a resource by key) as a plain tuple, on the sqlite3
        cursor: SQLAlchemy's execution and result set-up cost four times the indexed lookup."""
        with self._cursor(statement.sql) as cursor:
            cursor.execute(statement.sql, statement.values(parameters))
            row: tuple[Any, ...] | None = cursor.fetchone()
            return row

    def run(
        self, statement: UpdateBase | Select[Any], parameters: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """A statement with expanding `IN` parameters (one `?` per list item) on the sqlite3
        cursor; its rows. SQLAlchemy renders such a statement afresh on every execution; here the
        compiled form is kept and only the placeholders are expanded (DriverStatement.expanded)."""
        sql, values = DriverStatement.expanded(statement, parameters)
        with self._cursor(sql) as cursor:
            cursor.execute(sql, values)
            return cursor.fetchall()

    def write(self, statement: DriverStatement, rows: Sequence[Mapping[str, Any]]) -> int | None:
        """Run a hot write on the sqlite3 cursor itself; the new rowid when one row was inserted.

        The store's buffered writes (history, index rows, current rows) are a dozen statements per
        resource version, and SQLAlchemy's per-statement work (execution context, parameter
        processing, result set-up) cost more than SQLite's own. The statement is compiled once by
        SQLAlchemy (DriverStatement) and runs in the same transaction on the same connection; driver
        errors are wrapped as SQLAlchemy's, so the store maps them as it maps every other.
        """
        with self._cursor(statement.sql) as cursor:
            if len(rows) == 1:
                cursor.execute(statement.sql, statement.values(rows[0]))
                rowid: int | None = cursor.lastrowid
                return rowid
            cursor.executemany(statement.sql, [statement.values(row) for row in rows])
            return None

    @contextmanager
    def _cursor(self, sql: str) -> Iterator[sqlite3.Cursor]:
        """A cursor of the sqlite3 connection under this one; driver errors become SQLAlchemy's."""
        cursor = self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            yield cursor
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
        finally:
            cursor.close()


class DriverStatement:
    """A statement compiled once to the SQLite driver's SQL: an INSERT, UPDATE or DELETE for
    InlineConnection.write, a SELECT for InlineConnection.first.

    `keys` are the parameters it takes (for an INSERT, the columns it sets), in the order of the
    driver's `?` placeholders. Column types needing conversion are not allowed here: only the
    store's own tables, whose values are str, int, float, bool, bytes and None (a Boolean column
    comes back as 0 or 1).
    """

    __slots__ = ("names", "sql")

    def __init__(self, statement: UpdateBase | Select[Any], keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=_SQLITE, column_keys=list(keys) if keys else None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())

    def values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple([row[name] for name in self.names])

    @staticmethod
    def expanded(
        statement: UpdateBase | Select[Any], parameters: Mapping[str, Any]
    ) -> tuple[str, tuple[Any, ...]]:
        """The driver SQL and values of a statement whose `IN` lists are expanding parameters."""
        compiled = _EXPANDING.get(statement)
        if compiled is None:
            compiled = _EXPANDING[statement] = statement.compile(dialect=_SQLITE)
            assert isinstance(compiled, SQLCompiler)
        state = compiled.construct_expanded_state(dict(parameters))
        return state.statement, tuple([state.parameters[name] for name in state.positiontup or ()])


_SQLITE = sqlite_dialect.dialect()
_EXPANDING: dict[UpdateBase | Select[Any], Any] = {}  # statement → its SQLCompiler (DriverStatement.expanded)
_DRIVER_STATEMENTS: dict[tuple[UpdateBase | Select[Any], tuple[str, ...]], DriverStatement] = {}


def driver_statement(
    statement: UpdateBase | Select[Any], row: Mapping[str, Any] | None = None
) -> DriverStatement:
    """`statement` compiled once per set of keys `row` gives (an INSERT sets exactly those columns;
    a SELECT takes its bind parameters, so no row)."""
    key = (statement, tuple(row or ()))
    found = _DRIVER_STATEMENTS.get(key)
    if found is None:
        found = _DRIVER_STATEMENTS[key] = DriverStatement(statement, key[1])
    return found


async def first_row(
    conn: Connection, statement: Select[Any], parameters: Mapping[str, Any]
) -> Sequence[Any] | None:
    """The first row of a hot lookup by key: on SQLite the driver's plain tuple
    (InlineConnection.first), else a SQLAlchemy Row; read both by position."""
    if isinstance(conn, InlineConnection):
        return conn.first(driver_statement(statement), parameters)
    row: Sequence[Any] | None = (await conn.execute(statement, parameters)).first()
    return row


async def insert_row(
    conn: Connection, statement: UpdateBase, row: Mapping[str, Any], *, returning: UpdateBase
) -> int:
    """Insert one row into a table keyed by an integer primary key; returns the new key. On SQLite
    through the driver, whose lastrowid *is* that key; else `returning`, the same INSERT with
    RETURNING the key (both built once by the caller)."""
    if isinstance(conn, InlineConnection):
        key = conn.write(driver_statement(statement, row), [row])
        assert key is not None
        return key
    created: int = (await conn.execute(returning, row)).scalar_one()
    return created


async def expanding_rows(
    conn: Connection, statement: UpdateBase | Select[Any], parameters: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """Run a hot statement with expanding `IN` parameters; its rows (none for a DELETE), by position."""
    if isinstance(conn, InlineConnection):
        return conn.run(statement, parameters)
    result = await conn.execute(statement, parameters)
    return result.all() if statement.is_select else []


async def write_rows(conn: Connection, statement: UpdateBase, rows: Sequence[Mapping[str, Any]]) -> None:
    """A batch write of rows that all give the same keys: on SQLite through the driver
    (InlineConnection.write), else one SQLAlchemy executemany."""
    if isinstance(conn, InlineConnection):
        conn.write(driver_statement(statement, rows[0]), rows)
    else:
        await conn.execute(statement, rows if len(rows) > 1 else rows[0])


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
