"""PostgreSQL connections: one left idle while its server session died is replaced before use, one
handed back a moment ago is used without a check (no ping round trips on a busy pool), reads
run outside a transaction, and a write never waits for a second connection while it holds one."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fhir_gateway.crypto.service import PhiCrypto
from fhir_gateway.store import engine as engines
from fhir_gateway.store.database import Database
from fhir_gateway.store.postgres import PostgresDatabase
from fhir_gateway.store.store import Store
from tests.conftest import PG_URL, make_settings, open_client

pytestmark = pytest.mark.postgres
FHIR = {"Content-Type": "application/fhir+json"}
MRN = "identifier=urn:mrn|7"


async def backend_pid(database: Database) -> int:
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
    database = PostgresDatabase(engines.create_engine(PG_URL))
    try:
        first = await backend_pid(database)
        await terminate(first)
        assert await backend_pid(database) != first  # the request succeeded, on a new session
    finally:
        await database.dispose()


async def test_a_recently_used_connection_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "IDLE_PING_SECONDS", 3600.0)
    database = PostgresDatabase(engines.create_engine(PG_URL))
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
    database = PostgresDatabase(engines.create_engine(PG_URL))
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


async def rotate(url: str) -> None:
    """Another process starts key version 2 (`fhir-gateway keys rotate` beside the server)."""
    crypto, store = PhiCrypto.from_settings(make_settings(url)), Store(url)
    assert crypto is not None
    try:
        await crypto.keys.add_version(store)
    finally:
        await store.dispose()


async def test_a_write_never_waits_for_a_second_connection(
    monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    """With one connection per process, the writes that read the key ring inside their transaction
    (conditional create and update on an encrypted identifier, a PATCH of a version sealed under a
    key this process has not loaded yet) still succeed. Were any of them to ask the pool for a second
    connection while holding one, it would wait for pool_timeout and fail: under load, with every
    connection held by such a request, all of them would."""
    monkeypatch.setattr(engines, "POOL_SIZE", 1)
    monkeypatch.setattr(engines, "POOL_TIMEOUT_SECONDS", 2.0)
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "7"}]}
    async for a in open_client(make_settings(pg_url)):
        created = (await a.post("/fhir/Patient", json=patient, headers=FHIR)).raise_for_status().json()
        again = await a.post("/fhir/Patient", json=patient, headers={**FHIR, "If-None-Exist": MRN})
        assert again.status_code == 200 and again.json()["id"] == created["id"]
        updated = await a.put(f"/fhir/Patient?{MRN}", json={**patient, "gender": "female"}, headers=FHIR)
        assert updated.status_code == 200 and updated.json()["id"] == created["id"]

        await rotate(pg_url)
        path = f"/fhir/Patient/{created['id']}"
        async for b in open_client(make_settings(pg_url)):  # a second server seals with version 2
            body = {**patient, "id": created["id"], "gender": "male"}
            (await b.put(path, json=body, headers=FHIR)).raise_for_status()
        patch = [{"op": "replace", "path": "/gender", "value": "other"}]
        patched = await a.patch(path, json=patch, headers={"Content-Type": "application/json-patch+json"})
        assert patched.status_code == 200 and patched.json()["gender"] == "other"
        assert (await a.get(path)).json()["identifier"] == patient["identifier"]
