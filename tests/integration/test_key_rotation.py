"""PHI encryption against a real store (SQLite file and PostgreSQL): nothing readable at rest, exact
search by blind index, and key rotation that never leaves a row unreadable or unsearchable.

Resources are written the way the write path does once it is wired (crypto/service.py): extract the
index rows from the plaintext, seal the resource and blind the rows with the transaction's key ring,
then `Transaction.write`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from typer.testing import CliRunner

from fhir_gateway.crypto import rotation
from fhir_gateway.crypto.cli import keys_app
from fhir_gateway.crypto.config import CryptoSettings
from fhir_gateway.crypto.errors import DecryptionFailed, EncryptedSearchRefused, KeyringUnavailable
from fhir_gateway.crypto.fields import MARKER_URL
from fhir_gateway.crypto.keyring import LocalKms
from fhir_gateway.crypto.service import PhiCrypto, crypto_settings
from fhir_gateway.crypto.tables import crypto_keys
from fhir_gateway.settings import DEV_ENCRYPTION_KEY
from fhir_gateway.store import searching
from fhir_gateway.store.schema import INDEX_TABLES, resource_history, resources
from fhir_gateway.store.search.extract import extract
from fhir_gateway.store.search.params import parse_search
from fhir_gateway.store.store import Store, StoredVersion
from tests.conftest import make_settings, pg_schema

MRN = "http://hospital.example/mrn"


def patient(n: int, family: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"p{n}",
        "identifier": [
            {"system": MRN, "value": f"MRN{n:05d}"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"900-12-{n:04d}"},
        ],
        "name": [{"family": family or f"Fam{n:03d}xq", "given": [f"Giv{n:03d}zq"]}],
        "telecom": [{"system": "phone", "value": f"555-77{n:04d}"}],
        "gender": "female" if n % 2 else "male",
        "birthDate": f"19{50 + n % 40}-0{1 + n % 9}-1{n % 10}",
        "address": [{"line": [f"{n} Secretstreet"], "city": "Hiddenville", "postalCode": "12345"}],
    }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite+aiosqlite:///{tmp_path}/gw.db")
        await s.upgrade()
        yield s
        await s.dispose()
    else:
        async with pg_schema() as url:
            s = Store(url)
            await s.upgrade()
            yield s
            await s.dispose()


@pytest.fixture
async def crypto(store: Store) -> PhiCrypto:
    c = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))
    await c.start(store)
    return c


async def write(store: Store, crypto: PhiCrypto, resource: dict[str, Any]) -> None:
    res_type, res_id = resource["resourceType"], resource["id"]
    async with store.transaction() as tx:
        sealer = await crypto.sealer(tx.conn)
        previous = await tx.current(res_type, res_id)
        version_id = previous.version_id + 1 if previous is not None else 1
        stored, rows = sealer.seal(res_type, res_id, resource, extract(resource))
        version = StoredVersion(
            res_type,
            res_id,
            version_id,
            time.time(),
            False,
            orjson.dumps(stored),
            "PUT" if previous else "POST",
        )
        await tx.write(version, previous=previous, rows=rows)


async def read(store: Store, crypto: PhiCrypto, res_type: str, res_id: str) -> dict[str, Any]:
    version = await store.read(res_type, res_id)
    assert version is not None
    return await crypto.open(store, version.resource(), res_type, res_id)


async def search(store: Store, crypto: PhiCrypto, res_type: str, query: str) -> list[str]:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")]
    parsed = parse_search(res_type, pairs, strict=True, default_count=100, max_count=500)  # type: ignore[arg-type]
    page = await searching.run(store, await crypto.protect_search(store, parsed))
    return sorted(v.res_id for v in page.matches)


async def all_stored_bytes(store: Store) -> bytes:
    chunks = []
    async with store.reader() as conn:
        for table in (resources, resource_history, *INDEX_TABLES.values()):
            for row in (await conn.execute(select(table))).all():
                chunks.append(repr(tuple(row)).encode())
    return b"\n".join(chunks)


SECRETS = (
    "MRN00007",
    "900-12-0007",
    "Fam007xq",
    "fam007xq",
    "Giv007zq",
    "555-770007",
    "Secretstreet",
    "Hiddenville",
)


async def test_no_phi_is_stored_in_clear_and_exact_search_still_works(
    store: Store, crypto: PhiCrypto
) -> None:
    for n in range(1, 11):
        await write(store, crypto, patient(n))
    await write(store, crypto, {**patient(7), "gender": "other"})  # history holds two versions
    raw = await all_stored_bytes(store)
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    assert b"female" in raw  # non-PHI stays readable (and indexable)
    if store.sqlite:
        files = b"".join(p.read_bytes() for p in Path(store.url.split("///", 1)[1]).parent.glob("gw.db*"))
        for secret in SECRETS:
            assert secret.encode() not in files, secret
    assert (await read(store, crypto, "Patient", "p7")) == {**patient(7), "gender": "other"}
    assert await search(store, crypto, "Patient", f"identifier={MRN}|MRN00007") == ["p7"]
    assert await search(store, crypto, "Patient", "identifier=MRN00007,MRN00003") == ["p3", "p7"]
    assert await search(store, crypto, "Patient", "identifier=http://other|MRN00007") == []
    assert await search(store, crypto, "Patient", "family:exact=Fam007xq") == ["p7"]
    assert await search(store, crypto, "Patient", "family:exact=fam007xq") == []  # exact is case-sensitive
    assert await search(store, crypto, "Patient", f"birthdate={patient(7)['birthDate']}&gender=other") == [
        "p7"
    ]
    assert await search(store, crypto, "Patient", "phone=555-770004") == ["p4"]
    assert await search(store, crypto, "Patient", "address-city:exact=Hiddenville&gender=male") == [
        "p10",
        "p2",
        "p4",
        "p6",
        "p8",
    ]


async def test_prefix_search_is_refused_unless_configured(store: Store, tmp_path: Path) -> None:
    whole = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY), CryptoSettings(string_search="whole-value"))
    await whole.start(store)
    await write(store, whole, patient(1, family="Chalmers"))
    assert await search(store, whole, "Patient", "family=CHALMERS") == ["p1"]
    assert await search(store, whole, "Patient", "family=Chalm") == []  # whole values only
    strict = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))
    with pytest.raises(EncryptedSearchRefused, match="'family' is encrypted"):
        await search(store, strict, "Patient", "family=Chalm")


async def test_rotation_reencrypts_everything_while_readers_and_writers_go_on(
    store: Store, crypto: PhiCrypto
) -> None:
    count = 40
    for n in range(1, count + 1):
        await write(store, crypto, patient(n))
    for n in range(1, count + 1, 4):
        await write(store, crypto, {**patient(n), "active": True})
    await write(
        store, crypto, {"resourceType": "Observation", "id": "o1", "status": "final"}
    )  # nothing sealed
    stored_rows = count + (count + count // 4)  # current rows + history rows
    assert await rotation.key_usage(store) == {1: stored_rows}
    failures: list[str] = []
    checks = 0
    rotating = asyncio.create_task(rotation.rotate(store, crypto.keys, crypto.fields, batch_size=5))

    async def reader() -> None:
        nonlocal checks
        n = 0
        while not rotating.done():
            n = n % count + 1
            try:
                got = await read(store, crypto, "Patient", f"p{n}")
                if got["name"] != patient(n)["name"]:
                    failures.append(f"p{n} read wrong")
                if await search(store, crypto, "Patient", f"identifier=MRN{n:05d}") != [f"p{n}"]:
                    failures.append(f"p{n} not found")
            except DecryptionFailed as exc:
                failures.append(exc.diagnostics)
            checks += 1
            await asyncio.sleep(0)

    async def writer() -> None:
        n = count
        while not rotating.done():
            n += 1
            await write(store, crypto, patient(n))
            await asyncio.sleep(0)

    await asyncio.gather(reader(), writer(), rotating)
    progress = rotating.result()
    assert failures == [] and checks > 5
    assert progress.done and progress.target_version == 2 and progress.retired == (1,)
    assert progress.rows_reencrypted >= stored_rows and progress.rows_failed == 0
    assert set(await rotation.key_usage(store)) == {2}
    states = {v["version"]: v["state"] for v in await crypto.keys.describe(store)}
    assert states == {1: "retired", 2: "active"}
    assert [k.version for k in (await crypto.keys.ring(store)).search_versions] == [2]
    for n in (1, 17, count):
        assert (await read(store, crypto, "Patient", f"p{n}"))["name"] == patient(n)["name"]
        assert await search(store, crypto, "Patient", f"identifier=MRN{n:05d}") == [f"p{n}"]
    history = await store.vread("Patient", "p1", 1)
    assert history is not None
    assert (await crypto.open(store, history.resource(), "Patient", "p1"))["name"] == patient(1)["name"]


async def test_another_process_follows_a_rotation(store: Store, crypto: PhiCrypto) -> None:
    await write(store, crypto, patient(1))
    server = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))  # a second process with its own cache
    await server.start(store)
    assert (await read(store, server, "Patient", "p1"))["name"] == patient(1)["name"]
    await rotation.rotate(store, crypto.keys, crypto.fields)
    assert server.keys.cached is not None and server.keys.cached.active.version == 1  # stale
    assert (await read(store, server, "Patient", "p1"))["name"] == patient(1)["name"]  # reloads once
    async with store.transaction() as tx:
        assert (await server.sealer(tx.conn)).ring.active.version == 2  # writes follow at once
    assert await search(store, server, "Patient", "identifier=MRN00001") == ["p1"]


async def test_a_damaged_row_is_reported_and_keeps_its_version_from_retiring(
    store: Store, crypto: PhiCrypto
) -> None:
    for n in (1, 2, 3):
        await write(store, crypto, patient(n))
    version = await store.read("Patient", "p2")
    assert version is not None and version.content is not None
    damaged = orjson.loads(version.content)
    damaged["name"] = damaged["name"][:-8] + "AAAAAAA="
    async with store.transaction() as tx:
        await tx.conn.execute(
            update(resources).where(resources.c.pk == version.pk).values(content=orjson.dumps(damaged))
        )
    progress = await rotation.rotate(store, crypto.keys, crypto.fields, max_passes=2)
    assert progress.rows_failed == 1 and progress.passes == 2  # tried again on the second pass
    assert progress.remaining == {1: 1} and progress.retired == ()
    with pytest.raises(DecryptionFailed, match="Patient/p2 cannot be decrypted \\(element name"):
        await read(store, crypto, "Patient", "p2")
    for n in (1, 3):
        assert (await read(store, crypto, "Patient", f"p{n}"))["name"] == patient(n)["name"]
    await write(store, crypto, patient(2))  # repaired by a new version; history keeps the old one
    async with store.transaction() as tx:
        await tx.conn.execute(
            update(resource_history)
            .where(resource_history.c.res_id == "p2")
            .where(resource_history.c.version_id == 1)
            .values(content=None, deleted=True)
        )
    resumed = await rotation.rotate(store, crypto.keys, crypto.fields)
    assert resumed.resumed and resumed.target_version == 2 and resumed.retired == (1,)
    assert await rotation.retire_unused(store, crypto.keys) == ()


async def test_a_writer_that_got_there_first_wins(store: Store, crypto: PhiCrypto) -> None:
    await write(store, crypto, patient(1))
    old = await store.read("Patient", "p1")
    assert old is not None
    await crypto.keys.add_version(store)
    await write(store, crypto, {**patient(1), "active": False})
    ring = await crypto.keys.ring(store)
    stale = SimpleNamespace(
        pk=old.pk, res_type="Patient", res_id="p1", version_id=old.version_id, content=old.content
    )
    progress = rotation.RotationProgress()
    reindex: list[Any] = []
    async with store.transaction() as tx:
        await rotation._move_row(tx.conn, stale, True, ring, crypto.fields, progress, reindex)
    assert progress.rows_reencrypted == 0 and reindex == []
    assert (await read(store, crypto, "Patient", "p1"))["active"] is False


async def test_key_table_lifecycle(store: Store, tmp_path: Path) -> None:
    fresh = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))
    with pytest.raises(KeyringUnavailable, match="not initialised"):
        await fresh.keys.ring(store)
    rings = await asyncio.gather(fresh.start(store), PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY)).start(store))
    assert [r.active.version for r in rings] == [1, 1]
    assert len(await fresh.keys.describe(store)) == 1
    assert (await fresh.start(store)).active.version == 1  # idempotent
    with pytest.raises(KeyringUnavailable, match="another key-encryption key"):
        await PhiCrypto(LocalKms(Fernet.generate_key())).start(store)
    await fresh.keys.set_state(store, [], "retired")  # nothing to do
    async with store.transaction() as tx:
        await tx.conn.execute(update(crypto_keys).values(state="frozen"))
    with pytest.raises(KeyringUnavailable, match="unknown key state"):
        await PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY)).start(store)


async def test_two_processes_starting_at_once_agree_on_version_one(store: Store) -> None:
    first, second = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY)), PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))
    async with store.transaction():  # holds the writers back until both have seen an empty table
        starting = [asyncio.create_task(c.start(store)) for c in (first, second)]
        await asyncio.sleep(0.05)
    rings = await asyncio.gather(*starting)
    assert [r.active.version for r in rings] == [1, 1]
    assert rings[0].active.dek == rings[1].active.dek


async def test_rotating_an_empty_store(store: Store, crypto: PhiCrypto) -> None:
    progress = await rotation.rotate(store, crypto.keys, crypto.fields)
    assert progress.rows_scanned == 0 and progress.retired == (1,)
    assert await rotation.key_usage(store) == {}


def test_settings_switch(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert crypto_settings(settings) == CryptoSettings()
    assert PhiCrypto.from_settings(settings) is not None
    off = SimpleNamespace(crypto=CryptoSettings(enabled=False))
    assert PhiCrypto.from_settings(off) is None  # type: ignore[arg-type]
    assert CryptoSettings(phi_paths={"Patient": ["name"]}).phi_paths == (("Patient", ("name",)),)
    assert CryptoSettings(phi_paths=(("Patient", ("name",)),)).phi_paths == (("Patient", ("name",)),)


def test_keys_cli_rotates_and_reports(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    runner = CliRunner()
    empty = runner.invoke(keys_app, ["status", "--database-url", url])
    assert empty.exit_code == 0 and "no key versions yet" in empty.output

    async def seed() -> None:
        store = Store(url)
        await store.upgrade()
        crypto = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))
        await crypto.start(store)
        for n in (1, 2):
            await write(store, crypto, patient(n))
        await store.dispose()

    asyncio.run(seed())
    before = runner.invoke(keys_app, ["status", "--database-url", url])
    assert before.exit_code == 0 and "version 1: active   rows 4 (100%)" in before.output
    rotated = runner.invoke(keys_app, ["rotate", "--database-url", url, "--settle", "0", "--batch-size", "1"])
    assert rotated.exit_code == 0, rotated.output
    assert "rotated to key version 2; retired: 1" in rotated.output and "re-encrypted 4" in rotated.output
    after = runner.invoke(keys_app, ["status", "--database-url", url])
    assert (
        "version 1: retired  rows 0" in after.output and "version 2: active   rows 4 (100%)" in after.output
    )

    async def damage() -> None:
        store = Store(url)
        broken = {
            "resourceType": "Patient",
            "name": "enc:v1:2:AAAA",
            "meta": {"extension": [{"url": MARKER_URL, "valueString": "name"}]},
        }
        async with store.transaction() as tx:
            await tx.conn.execute(
                update(resources).where(resources.c.res_id == "p1").values(content=orjson.dumps(broken))
            )
        await store.dispose()

    asyncio.run(damage())
    first = runner.invoke(keys_app, ["rotate", "--database-url", url, "--settle", "0"])
    assert first.exit_code == 1 and "rotated to key version 3; retired: none" in first.output
    stuck = runner.invoke(keys_app, ["rotate", "--database-url", url, "--settle", "0"])
    assert stuck.exit_code == 1 and "resumed the rotation to key version 3" in stuck.output
    assert "1 row(s) still use old versions (1 could not be decrypted)" in stuck.output
