"""The store's buffered writes: what one transaction writes is read back whole, and a clash is a
409 that leaves nothing behind — on SQLite (driver-level writes) as on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from sqlalchemy import select

from fhir_gateway.errors import Conflict
from fhir_gateway.store.schema import idx_token
from fhir_gateway.store.search.rows import IndexRows, TokenRow
from fhir_gateway.store.store import PK_BLOCK, Store, StoredVersion, database_errors
from tests.conftest import opened_store


@pytest.fixture
async def store(any_db_url: str) -> AsyncIterator[Store]:
    async with opened_store(any_db_url) as opened:
        yield opened


def version(res_id: str, n: int, family: str) -> StoredVersion:
    content = orjson.dumps({"resourceType": "Patient", "id": res_id, "name": [{"family": family}]})
    return StoredVersion("Patient", res_id, n, 1_700_000_000.0 + n, False, content, "PUT")


def rows(code: str) -> IndexRows:
    index = IndexRows()
    index.tokens.append(TokenRow("identifier", "urn:mrn", code, None))
    return index


async def test_versions_history_and_index_rows_of_one_transaction_are_all_there(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.write(version("a", 1, "Alpha"), previous=None, rows=rows("A1"))
        await tx.write(version("b", 1, "Beta"), previous=None, rows=rows("B1"))
        first = await tx.current("Patient", "a")
        assert first is not None and first.pk is not None
        await tx.write(version("a", 2, "Alpha2"), previous=first, rows=rows("A2"))
    current = await store.read("Patient", "a")
    assert current is not None and current.version_id == 2
    assert orjson.loads(current.content or b"")["name"] == [{"family": "Alpha2"}]
    old = await store.vread("Patient", "a", 1)
    assert old is not None and orjson.loads(old.content or b"")["name"] == [{"family": "Alpha"}]
    async with store.reader() as conn:
        codes = (await conn.execute(select(idx_token.c.code).order_by(idx_token.c.code))).scalars().all()
    assert codes == ["A2", "B1"]  # the update replaced a's index rows
    async with store.transaction() as tx:
        await tx.prefetch([("Patient", "a"), ("Patient", "b"), ("Patient", "missing")])
        b = await tx.current("Patient", "b")
        assert b is not None and b.version_id == 1
        assert await tx.current("Patient", "missing") is None


async def test_a_duplicate_version_is_a_conflict_and_nothing_of_its_transaction_stays(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.write(version("a", 1, "Alpha"), previous=None, rows=rows("A1"))
    with pytest.raises(Conflict):
        async with store.transaction() as tx:
            await tx.write(version("c", 1, "Gamma"), previous=None, rows=rows("C1"))
            await tx.write(version("a", 1, "Again"), previous=None, rows=None)  # (Patient, a) exists
    assert await store.read("Patient", "c") is None
    kept = await store.read("Patient", "a")
    assert kept is not None and orjson.loads(kept.content or b"")["name"] == [{"family": "Alpha"}]


async def test_a_clash_inside_a_savepoint_undoes_that_savepoint_only(store: Store) -> None:
    """Group commit's units: on PostgreSQL the current rows are written when a savepoint ends, so a
    clash must still surface there, fail that unit, and leave the units around it."""
    async with store.transaction() as tx:
        await tx.write(version("a", 1, "Alpha"), previous=None, rows=rows("A1"))
    async with store.transaction() as tx:
        async with tx.savepoint():
            await tx.write(version("b", 1, "Beta"), previous=None, rows=rows("B1"))
        with pytest.raises(Conflict):
            async with database_errors(), tx.savepoint():
                await tx.write(version("c", 1, "Gamma"), previous=None, rows=rows("C1"))
                await tx.write(version("a", 1, "Again"), previous=None, rows=None)  # (Patient, a) exists
        async with tx.savepoint():
            await tx.write(version("d", 1, "Delta"), previous=None, rows=rows("D1"))
    assert [await store.read("Patient", i) is not None for i in "abcd"] == [True, True, False, True]
    kept = await store.read("Patient", "a")
    assert kept is not None and orjson.loads(kept.content or b"")["name"] == [{"family": "Alpha"}]
    async with store.reader() as conn:
        codes = (await conn.execute(select(idx_token.c.code).order_by(idx_token.c.code))).scalars().all()
    assert codes == ["A1", "B1", "D1"]


async def test_more_new_resources_than_one_block_of_keys_are_all_stored(store: Store) -> None:
    n = PK_BLOCK * 2 + 3
    async with store.transaction() as tx:
        for i in range(n):
            await tx.write(version(f"p{i}", 1, f"F{i}"), previous=None, rows=rows(f"C{i}"))
        again = await tx.current("Patient", "p0")
        assert again is not None
        await tx.write(version("p0", 2, "F0b"), previous=again, rows=rows("C0b"))
    for i in range(n):
        stored = await store.read("Patient", f"p{i}")
        assert stored is not None and stored.version_id == (2 if i == 0 else 1)
    async with store.reader() as conn:
        codes = set((await conn.execute(select(idx_token.c.code))).scalars().all())
    assert codes == {"C0b"} | {f"C{i}" for i in range(1, n)}
