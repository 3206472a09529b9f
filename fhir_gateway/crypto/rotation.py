"""Key rotation: new writes use a new key version at once; existing rows move to it in the background.

    1. `KeyStore.add_version`: version N+1 becomes active, the old active version(s) `retiring`
       (still readable, still searched). A rotation that finds `retiring` versions resumes instead.
    2. Passes over `resources` and `resource_history` in small batches, each batch one transaction
       under the store's write lock: a row sealed with anything but the active version is decrypted,
       sealed again and, for current versions, re-indexed with blind indexes of the new version, all
       in that transaction. A row is thus readable before and after, never in between. A current row
       changed by a writer since it was read is left alone (the writer sealed it with the active
       version; the next pass checks). On PostgreSQL rows locked by a writer are skipped (SKIP
       LOCKED) and picked up by the next pass.
    3. Repeat until a read-only count finds no row on a retiring version; those versions become
       `retired`. A row that cannot be decrypted (damaged) is left as it is and keeps its version
       from being retired: nothing is ever made unreadable by rotation.

Retired versions keep their wrapped key (a backup from before the rotation stays readable); they
are neither used to seal nor searched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, insert, select, tuple_, update

from fhir_gateway.crypto.blind_index import protect_rows
from fhir_gateway.crypto.errors import DecryptionFailed
from fhir_gateway.crypto.fields import PhiFields, decrypt_resource, encrypt_resource, versions_in
from fhir_gateway.crypto.keyring import Keyring
from fhir_gateway.crypto.keystore import KeyStore
from fhir_gateway.store.database import Connection
from fhir_gateway.store.schema import INDEX_TABLES, resource_history, resources
from fhir_gateway.store.search.extract import extract
from fhir_gateway.store.search.rows import IndexRows
from fhir_gateway.store.store import Store


@dataclass
class RotationProgress:
    """What a rotation has done so far (`keys rotate` prints it; an admin operation can poll it)."""

    target_version: int = 0
    resumed: bool = False
    passes: int = 0
    rows_scanned: int = 0
    rows_reencrypted: int = 0
    rows_failed: int = 0  # could not be decrypted in the last pass: left as they are, their version kept
    remaining: dict[int, int] = field(default_factory=dict)  # rows still on each retiring version
    retired: tuple[int, ...] = ()
    done: bool = False


Report = Callable[[RotationProgress], None]


async def rotate(
    store: Store,
    keys: KeyStore,
    fields: PhiFields,
    *,
    batch_size: int = 200,
    settle_seconds: float = 0.0,
    max_passes: int = 5,
    report: Report | None = None,
    progress: RotationProgress | None = None,
) -> RotationProgress:
    """Rotate to a new key version (or finish an interrupted rotation) and retire what is unused.

    `settle_seconds` waits between activating the new version and moving rows, so other processes
    that checked the key table just before see the new version before they search for its rows."""
    state = progress or RotationProgress()
    ring = await keys.ring(store)
    retiring = [k.version for k in ring.versions.values() if k.state == "retiring"]
    state.resumed = bool(retiring)
    state.target_version = ring.active.version if retiring else await keys.add_version(store)
    await asyncio.sleep(settle_seconds)
    while state.passes < max_passes:
        state.passes += 1
        state.rows_failed = 0
        await _pass(store, keys, fields, batch_size, state, report)
        state.remaining = await _remaining(store, keys)
        if report is not None:
            report(state)
        if not state.remaining:
            break
    state.retired = await retire_unused(store, keys)
    state.done = True
    if report is not None:
        report(state)
    return state


async def key_usage(store: Store, *, batch_size: int = 500) -> dict[int, int]:
    """How many stored rows (current and history) hold data sealed with each key version."""
    usage: dict[int, int] = {}
    async for content in _contents(store, batch_size):
        for version in versions_in(content):
            usage[version] = usage.get(version, 0) + 1
    return usage


async def retire_unused(store: Store, keys: KeyStore) -> tuple[int, ...]:
    """Retire every `retiring` version that no stored row uses any more; the retired versions."""
    ring = await keys.ring(store)
    retiring = {k.version for k in ring.versions.values() if k.state == "retiring"}
    if not retiring:
        return ()
    used = await key_usage(store)
    unused = tuple(sorted(v for v in retiring if not used.get(v)))
    await keys.set_state(store, unused, "retired")
    return unused


async def _remaining(store: Store, keys: KeyStore) -> dict[int, int]:
    ring = await keys.ring(store)
    usage = await key_usage(store)
    return {v: n for v, n in usage.items() if v in ring.versions and ring.versions[v].state == "retiring"}


async def _contents(store: Store, batch_size: int) -> AsyncIterator[dict[str, Any]]:
    """Every parsed stored resource that carries sealed data, current rows then history, in batches."""
    for current in (True, False):
        async with store.reader() as conn:
            bound = await _bound(conn, current)
        after: tuple[Any, ...] | None = None
        while bound is not None:
            async with store.reader() as conn:
                rows = await _batch(conn, current, bound, after, batch_size, lock=False)
            if not rows:
                break
            after = _position(rows[-1], current)
            await asyncio.sleep(0)
            for row in rows:
                if _SEALED in row.content:
                    yield orjson.loads(row.content)


_SEALED = b'"enc:v1:'
_HISTORY_KEY = (resource_history.c.res_type, resource_history.c.res_id, resource_history.c.version_id)


async def _bound(conn: Connection, current: bool) -> Any:
    """Where a scan stops: rows stored after it started were sealed with the active version by
    their writers, and a scan that chased them could run for as long as writers keep writing."""
    column = resources.c.pk if current else resource_history.c.last_updated
    return (await conn.execute(select(func.max(column)))).scalar_one()


async def _pass(
    store: Store,
    keys: KeyStore,
    fields: PhiFields,
    batch_size: int,
    state: RotationProgress,
    report: Report | None,
) -> None:
    for current in (True, False):
        async with store.reader() as conn:
            bound = await _bound(conn, current)
        after: tuple[Any, ...] | None = None
        while bound is not None:
            async with store.transaction() as tx:
                ring = await keys.current(tx.conn)
                batch = await _batch(tx.conn, current, bound, after, batch_size, lock=True)
                if not batch:
                    break
                after = _position(batch[-1], current)
                reindex: list[tuple[int, str, IndexRows]] = []
                for row in batch:
                    state.rows_scanned += 1
                    await _move_row(tx.conn, row, current, ring, fields, state, reindex)
                await _replace_blinded_rows(tx.conn, reindex)
            if report is not None:
                report(state)
            await asyncio.sleep(0)  # SQLite statements run inline: let requests in between batches


async def _batch(
    conn: Connection, current: bool, bound: Any, after: tuple[Any, ...] | None, size: int, *, lock: bool
) -> list[Any]:
    if current:
        r = resources.c
        stmt = select(r.pk, r.res_type, r.res_id, r.version_id, r.content).where(r.pk <= bound)
        key: tuple[Any, ...] = (r.pk,)
    else:
        h = resource_history.c
        stmt = select(h.res_type, h.res_id, h.version_id, h.content).where(h.last_updated <= bound)
        key = _HISTORY_KEY
    stmt = stmt.where(key[0].table.c.content.is_not(None))
    if after is not None:
        stmt = stmt.where(key[0] > after[0] if current else tuple_(*key) > tuple_(*after))
    stmt = stmt.order_by(*key).limit(size)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list((await conn.execute(stmt)).all())


def _position(row: Any, current: bool) -> tuple[Any, ...]:
    return (row.pk,) if current else (row.res_type, row.res_id, row.version_id)


async def _move_row(
    conn: Connection,
    row: Any,
    current: bool,
    ring: Keyring,
    fields: PhiFields,
    state: RotationProgress,
    reindex: list[tuple[int, str, IndexRows]],
) -> None:
    """Seal one stored row again with the active key; a current row's index rows go to `reindex`."""
    if _SEALED not in row.content:
        return
    stored = orjson.loads(row.content)
    if not (versions_in(stored) - {ring.active.version}):
        return
    try:
        plain = decrypt_resource(stored, row.res_type, row.res_id, ring)
    except DecryptionFailed:
        state.rows_failed += 1
        return
    content = orjson.dumps(encrypt_resource(plain, row.res_type, row.res_id, ring, fields))
    if current:
        moved = await conn.execute(
            update(resources)
            .where(and_(resources.c.pk == row.pk, resources.c.version_id == row.version_id))
            .values(content=content)
            .returning(resources.c.pk)
        )
        if moved.first() is None:  # a writer stored a newer version since the batch was read
            return
        reindex.append((row.pk, row.res_type, protect_rows(extract(plain), row.res_type, ring, fields)))
    else:
        h = resource_history.c
        await conn.execute(
            update(resource_history)
            .where(and_(h.res_type == row.res_type, h.res_id == row.res_id, h.version_id == row.version_id))
            .values(content=content)
        )
    state.rows_reencrypted += 1


# Only these tables hold blind values (blind_index.protect_rows); the others do not change with the key.
BLINDED_TABLES = ("strings", "tokens", "dates", "uris")


async def _replace_blinded_rows(conn: Connection, reindex: list[tuple[int, str, IndexRows]]) -> None:
    """The blinded index rows of the moved resources, as the write path stores them (store.Transaction)."""
    if not reindex:
        return
    pks = [pk for pk, _, _ in reindex]
    for attr in BLINDED_TABLES:
        table = INDEX_TABLES[attr]
        await conn.execute(delete(table).where(table.c.res_pk.in_(pks)))
        values = [
            {"res_pk": pk, "res_type": res_type, **{n: getattr(r, n) for n in r.__slots__}}
            for pk, res_type, rows in reindex
            for r in getattr(rows, attr)
        ]
        if values:
            await conn.execute(insert(table), values)
