"""The resource store: current versions, full history and search index rows, in one SQL schema.

Only `Gateway.submit` writes, through `Store.transaction()`: everything one submit changes is
committed in a single database transaction (resources + history + index rows), so a failure leaves
nothing half-written. Reads go through `read`, `vread`, `history` and `search` on short read-only
connections. Driver errors that mean "the database is not there" become `ServiceUnavailable` (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.elements import BindParameter

from fhir_gateway.errors import Conflict, ServiceUnavailable
from fhir_gateway.fhir.json import Resource, loads
from fhir_gateway.store.database import (
    Connection,
    Database,
    InlineConnection,
    expanding_rows,
    first_row,
    insert_row,
    open_database,
    write_rows,
)
from fhir_gateway.store.schema import INDEX_TABLES, resource_history, resources
from fhir_gateway.store.search.rows import IndexRows


@dataclass(slots=True, frozen=True)
class StoredVersion:
    """One version of one resource as stored (content is the serialised JSON, None when deleted)."""

    res_type: str
    res_id: str
    version_id: int
    last_updated: float
    deleted: bool
    content: bytes | None
    method: str = ""
    pk: int | None = None

    def resource(self) -> Resource:
        assert self.content is not None, "a deleted version has no content"
        parsed: Resource = loads(self.content, what="stored resource")
        return parsed


_CURRENT_COLUMNS = (
    resources.c.pk,
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version_id,
    resources.c.last_updated,
    resources.c.deleted,
    resources.c.content,
)


def current_from_row(row: Sequence[Any]) -> StoredVersion:
    """A row of `_CURRENT_COLUMNS`: a SQLAlchemy Row or the driver's plain tuple (by position)."""
    pk, res_type, res_id, version_id, last_updated, deleted, content = row
    return StoredVersion(
        res_type=res_type,
        res_id=res_id,
        version_id=version_id,
        last_updated=last_updated,
        deleted=bool(deleted),
        content=content,
        pk=pk,
    )


def _history_from_row(row: Any) -> StoredVersion:
    return StoredVersion(
        res_type=row.res_type,
        res_id=row.res_id,
        version_id=row.version_id,
        last_updated=row.last_updated,
        deleted=bool(row.deleted),
        content=row.content,
        method=row.method,
    )


def select_current() -> Select[Any]:
    return select(*_CURRENT_COLUMNS)


# The hot statements are built once, with bind parameters, so each call skips statement construction
# and hits SQLAlchemy's compiled cache (construction alone cost more than the SQLite read).
_BY_KEY = and_(resources.c.res_type == bindparam("t"), resources.c.res_id == bindparam("i"))
_READ_CURRENT = select_current().where(_BY_KEY)
_LOCK_CURRENT = _READ_CURRENT.with_for_update()
_KEYS: BindParameter[Any] = bindparam("keys", expanding=True)
_LOCK_CURRENTS = (
    select_current()
    .where(tuple_(resources.c.res_type, resources.c.res_id).in_(_KEYS))
    .order_by(resources.c.pk)
    .with_for_update()
)
_READ_CURRENTS = select_current().where(
    resources.c.res_type.in_(bindparam("types", expanding=True)),
    resources.c.res_id.in_(bindparam("ids", expanding=True)),
)
_READ_VERSION = select(resource_history).where(
    and_(
        resource_history.c.res_type == bindparam("t"),
        resource_history.c.res_id == bindparam("i"),
        resource_history.c.version_id == bindparam("v"),
    )
)
_INSERT_CURRENT = insert(resources).returning(resources.c.pk)
_INSERT_CURRENT_ROW = insert(resources)
_UPDATE_CURRENT = update(resources).where(resources.c.pk == bindparam("key"))
_INSERT_HISTORY = insert(resource_history)
PK_BLOCK = 32  # pks taken from the sequence at a time (PostgreSQL; Transaction)
_NEXT_PKS = text("SELECT nextval(pg_get_serial_sequence('resources', 'pk')) FROM generate_series(1, :n)")
_CLEAR_INDEX = {name: delete(t).where(t.c.res_pk.in_(_KEYS)) for name, t in INDEX_TABLES.items()}
_INSERT_INDEX = {name: insert(t) for name, t in INDEX_TABLES.items()}


_UNAVAILABLE = (OperationalError, InterfaceError, OSError, ConnectionError)


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Translate 'database unreachable' into 503; everything else propagates as a bug would."""
    try:
        yield
    except IntegrityError:
        raise Conflict(
            "A concurrent write changed this resource; retry the request", code="conflict"
        ) from None
    except _UNAVAILABLE as exc:
        raise ServiceUnavailable("The database is unavailable; nothing was written") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise ServiceUnavailable("The database connection was lost; nothing was written") from exc
        raise


class PkBlocks:
    """Primary keys for new current rows on PostgreSQL, taken from the table's sequence `PK_BLOCK`
    at a time (one round trip per block) and shared by the transactions of one Store. A sequence
    never hands out a value twice, whatever becomes of the transaction that took it, so sharing is
    safe; a key taken by a transaction that rolled back is a gap, as a rolled-back insert leaves."""

    def __init__(self) -> None:
        self._free: list[int] = []

    async def take(self, conn: Connection) -> int:
        if not self._free:
            taken = await conn.execute(_NEXT_PKS, {"n": PK_BLOCK})
            self._free.extend(sorted((int(pk) for (pk,) in taken.all()), reverse=True))
        return self._free.pop()


class Transaction:
    """The write side of one submit (or of a group of them): reads see the transaction's own writes.

    History rows and index rows are buffered and written by `flush()` with one executemany per
    table, and the index rows a resource had before are cleared with one DELETE per table for all
    updated resources: a corpus HL7 message touches ~14 resources, so this turns ~60 statements
    into ~25. Everything that reads history or index tables inside the transaction must flush first:
    `select()` does, `Store.transaction()` does before committing, and savepoints keep the buffers
    consistent with what they roll back (`current()` answers from memory for what is buffered).

    Current-version rows: on SQLite each is written at once (a driver call, whose rowid is the pk).
    On PostgreSQL each was a round trip of its own (INSERT ... RETURNING pk, or an UPDATE), 5.3 per
    HL7 message; there the pks of new rows come from `PkBlocks`, and the rows are buffered and
    written with one executemany each for inserts and updates at the end of each savepoint (so a
    unique-key clash with a concurrent writer fails that unit, not its whole group) and in `flush()`.
    """

    def __init__(self, conn: Connection, pks: PkBlocks) -> None:
        self.conn = conn
        self._pks = pks  # the Store's: shared by its transactions
        # The dialect decides how current rows are written (see the class docstring), how the
        # current rows are read (prefetch) and whether a savepoint is released (savepoint).
        self._sqlite = isinstance(conn, InlineConnection)
        self._history: list[dict[str, Any]] = []
        self._stale: set[int] = set()  # resource pks whose already-stored index rows must go
        self._rows: dict[int, tuple[str, IndexRows]] = {}  # pk -> the index rows to insert
        # PostgreSQL: current rows to insert and to update, by pk; pks taken from the sequence
        self._inserts: dict[int, dict[str, Any]] = {}
        self._updates: dict[int, dict[str, Any]] = {}
        # Current rows already read (prefetch) or written in this transaction: (type, id) -> version.
        self._known: dict[tuple[str, str], StoredVersion | None] = {}
        # The PHI sealer (crypto/service.py) for the key ring as this transaction found it: read
        # once per transaction, also when group commit puts several submits into it.
        self.sealer: Any = None

    async def prefetch(self, keys: Sequence[tuple[str, str]]) -> None:
        """Read the current rows of resources about to be written in one statement rather than one
        per resource; `current()` then answers from memory. On PostgreSQL the rows are also locked,
        in pk order, so concurrent submits cannot deadlock. SQLite (3.40) answers
        `(res_type, res_id) IN (...)` with a full scan, so there the statement asks for
        `res_type IN (...) AND res_id IN (...)` (unique-index lookups of every combination) and
        the pairs not asked for are dropped here."""
        asked = {k for k in keys if k not in self._known}
        if not asked:
            return
        wanted = sorted(asked)
        self._known.update(dict.fromkeys(wanted))
        rows: Sequence[Sequence[Any]]
        if self._sqlite:
            types, ids = sorted({t for t, _ in wanted}), sorted({i for _, i in wanted})
            rows = await expanding_rows(self.conn, _READ_CURRENTS, {"types": types, "ids": ids})
        else:
            rows = await expanding_rows(self.conn, _LOCK_CURRENTS, {"keys": wanted})
        for row in rows:
            version = current_from_row(row)
            if (version.res_type, version.res_id) in asked:
                self._known[(version.res_type, version.res_id)] = version

    async def current(self, res_type: str, res_id: str) -> StoredVersion | None:
        key = (res_type, res_id)
        if key in self._known:
            return self._known[key]
        return await _read_current(self.conn, res_type, res_id, lock=True)

    async def select(self, stmt: Select[Any]) -> list[StoredVersion]:
        await self.flush()
        return [current_from_row(r) for r in (await self.conn.execute(stmt)).all()]

    async def write(
        self,
        version: StoredVersion,
        *,
        previous: StoredVersion | None,
        rows: IndexRows | None,
    ) -> None:
        """Store a new current version, its history row and (unless deleted) its index rows."""
        values = {
            "version_id": version.version_id,
            "last_updated": version.last_updated,
            "deleted": version.deleted,
            "content": version.content,
        }
        if previous is not None and previous.pk is not None:
            pk = previous.pk
            if self._sqlite:
                await write_rows(self.conn, _UPDATE_CURRENT, [{"key": pk, **values}])
            elif pk in self._inserts:  # created earlier in this transaction: insert the latest
                self._inserts[pk] = {**self._inserts[pk], **values}
            else:
                self._updates[pk] = {"key": pk, **values}
            self._stale.add(pk)
        else:
            row = {"res_type": version.res_type, "res_id": version.res_id, **values}
            if self._sqlite:
                pk = await insert_row(self.conn, _INSERT_CURRENT_ROW, row, returning=_INSERT_CURRENT)
            else:
                pk = await self._pks.take(self.conn)
                self._inserts[pk] = {"pk": pk, **row}
        self._known[(version.res_type, version.res_id)] = replace(version, pk=pk, method="")
        self._history.append(
            {"res_type": version.res_type, "res_id": version.res_id, "method": version.method, **values}
        )
        if rows is not None and not version.deleted:
            self._rows[pk] = (version.res_type, rows)
        else:
            self._rows.pop(pk, None)

    async def flush_current(self) -> None:
        """Write the buffered current rows (PostgreSQL; on SQLite there are none)."""
        if self._inserts:
            inserts, self._inserts = list(self._inserts.values()), {}
            await write_rows(self.conn, _INSERT_CURRENT_ROW, inserts)
        if self._updates:
            updates, self._updates = list(self._updates.values()), {}
            await write_rows(self.conn, _UPDATE_CURRENT, updates)

    async def flush(self) -> None:
        """Write the buffered current, history and index rows (stale index rows before new ones)."""
        await self.flush_current()
        if self._history:
            history, self._history = self._history, []
            await write_rows(self.conn, _INSERT_HISTORY, history)
        if self._stale:
            stale, self._stale = sorted(self._stale), set()
            for clear in _CLEAR_INDEX.values():
                await expanding_rows(self.conn, clear, {"keys": stale})
        if self._rows:
            pending, self._rows = self._rows, {}
            for attr, statement in _INSERT_INDEX.items():
                batch = [
                    {"res_pk": pk, "res_type": res_type, **_row_dict(r)}
                    for pk, (res_type, rows) in pending.items()
                    for r in getattr(rows, attr)
                ]
                if batch:
                    await write_rows(self.conn, statement, batch)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: on an exception its writes, buffered ones included, are undone.

        Plain SAVEPOINT statements under one fixed name (units of a group run one after another, see
        store/group.py): SQLAlchemy's begin_nested() compiles a new statement for every savepoint
        name. On PostgreSQL a savepoint is not released: the next unit's SAVEPOINT of the same name
        stacks on it, ROLLBACK TO reaches the newest one of that name, and the commit ends them all,
        so RELEASE would be a round trip per unit for nothing. SQLite is released: there every open
        savepoint is checked on each page written after it (7 % of HL7 ingest with 8 callers).
        """
        saved = (
            len(self._history),
            set(self._stale),
            dict(self._rows),
            dict(self._known),
            dict(self._inserts),
            dict(self._updates),
        )
        await self.conn.control(_SAVEPOINT)
        try:
            yield
            await self.flush_current()
        except BaseException:
            await self.conn.control(_ROLLBACK_TO_SAVEPOINT)
            del self._history[saved[0] :]
            self._stale, self._rows, self._known, self._inserts, self._updates = saved[1:]
            raise
        if self._sqlite:
            await self.conn.control(_RELEASE_SAVEPOINT)


async def _read_current(
    conn: Connection, res_type: str, res_id: str, *, lock: bool = False
) -> StoredVersion | None:
    """The current row of one resource (the hottest statement: every read, every write's base);
    `lock` takes its row lock on PostgreSQL (SQLite's writer holds the whole database)."""
    row = await first_row(conn, _LOCK_CURRENT if lock else _READ_CURRENT, {"t": res_type, "i": res_id})
    return current_from_row(row) if row is not None else None


_SAVEPOINT = "SAVEPOINT fhir_gateway_unit"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT fhir_gateway_unit"
_RELEASE_SAVEPOINT = "RELEASE SAVEPOINT fhir_gateway_unit"


def _row_dict(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__slots__}


class Store:
    """Owns the engine; hands out transactions for writes and runs the reads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.database: Database = open_database(url)
        self.sqlite = self.database.dialect_name == "sqlite"
        # SQLite has one writer; serialising writers in-process avoids busy-waiting on the file lock.
        self._write_lock = asyncio.Lock() if self.sqlite else None
        self._pks = PkBlocks()

    async def upgrade(self) -> None:
        async with database_errors():
            await self.database.upgrade()

    async def ping(self) -> bool:
        try:
            await self.database.ping()
            return True
        except (*_UNAVAILABLE, DBAPIError):
            return False

    async def dispose(self) -> None:
        await self.database.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One database transaction: committed when the block ends, rolled back on any exception."""
        async with database_errors():
            if self._write_lock is None:
                async with self.database.begin() as conn:
                    tx = Transaction(conn, self._pks)
                    yield tx
                    await tx.flush()
            else:
                async with self._write_lock, self.database.begin() as conn:
                    tx = Transaction(conn, self._pks)
                    yield tx
                    await tx.flush()

    @asynccontextmanager
    async def reader(self, *, offload: bool = False) -> AsyncIterator[Connection]:
        """A read-only connection; `offload` for queries that may take long (searches, history)."""
        async with database_errors(), self.database.connect(offload=offload) as conn:
            yield conn

    async def read(self, res_type: str, res_id: str) -> StoredVersion | None:
        async with self.reader() as conn:
            return await _read_current(conn, res_type, res_id)

    async def vread(self, res_type: str, res_id: str, version_id: int) -> StoredVersion | None:
        async with self.reader() as conn:
            row = (await conn.execute(_READ_VERSION, {"t": res_type, "i": res_id, "v": version_id})).first()
        return _history_from_row(row) if row is not None else None

    async def history(
        self,
        *,
        res_type: str | None = None,
        res_id: str | None = None,
        since: float | None = None,
        at_or_before: float | None = None,
        count: int,
        offset: int = 0,
        visible: Callable[[FromClause], ColumnElement[bool]] | None = None,
    ) -> tuple[list[StoredVersion], int]:
        """Versions newest first, one page of them, and how many there are in all.

        `visible` (the caller's access rule over the resources table) keeps only the history of
        resources whose current version passes it.
        """
        h = resource_history.c
        conditions = []
        if res_type is not None:
            conditions.append(h.res_type == res_type)
        if res_id is not None:
            conditions.append(h.res_id == res_id)
        if since is not None:
            conditions.append(h.last_updated >= since)
        if at_or_before is not None:
            conditions.append(h.last_updated <= at_or_before)
        if visible is not None:
            cur = resources.alias()
            conditions.append(
                exists().where(cur.c.res_type == h.res_type, cur.c.res_id == h.res_id, visible(cur))
            )
        where = and_(True, *conditions)
        page = (
            select(resource_history)
            .where(where)
            .order_by(h.last_updated.desc(), h.res_type, h.res_id, h.version_id.desc())
            .limit(count)
            .offset(offset)
        )
        async with self.reader(offload=True) as conn:
            total = await conn.execute(select(func.count()).select_from(resource_history).where(where))
            rows = (await conn.execute(page)).all()
            return [_history_from_row(r) for r in rows], int(total.scalar_one())
