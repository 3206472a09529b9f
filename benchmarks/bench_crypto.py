"""PHI field encryption cost for a typical Patient, against the serialisation floor, in one run.

Figures (µs per Patient, best of several rounds):
- floor: orjson dumps + loads of the resource (what the store does anyway);
- crypto: encrypt_resource + dumps + loads + decrypt_resource (AES-256-GCM per PHI element);
- write side with index rows: extract + dumps (off) vs extract + seal + blind rows + dumps (on);
- store round trip on SQLite: one write transaction + one read, encryption off vs on.
The last line is the crypto / floor ratio. A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from fhir_gateway.crypto.blind_index import protect_rows
from fhir_gateway.crypto.fields import DEFAULT_FIELDS, decrypt_resource, encrypt_resource
from fhir_gateway.crypto.keyring import LocalKms
from fhir_gateway.crypto.service import PhiCrypto
from fhir_gateway.settings import DEV_ENCRYPTION_KEY
from fhir_gateway.store.search.extract import extract
from fhir_gateway.store.store import Store, StoredVersion

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "example",
    "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Peter Chalmers</div>'},
    "identifier": [
        {
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
            "assigner": {"display": "Acme Healthcare"},
        },
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
    ],
    "active": True,
    "name": [
        {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
        {"use": "usual", "given": ["Jim"]},
    ],
    "telecom": [
        {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
        {"system": "email", "value": "peter.chalmers@example.org"},
    ],
    "gender": "male",
    "birthDate": "1974-12-25",
    "deceasedBoolean": False,
    "address": [
        {
            "use": "home",
            "line": ["534 Erewhon St"],
            "city": "PleasantVille",
            "district": "Rainbow",
            "state": "Vic",
            "postalCode": "3999",
        }
    ],
    "contact": [
        {
            "relationship": [
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}
            ],
            "name": {"family": "du Marché", "given": ["Bénédicte"]},
            "telecom": [{"system": "phone", "value": "+33 (237) 998327"}],
        }
    ],
    "managingOrganization": {"reference": "Organization/1"},
}


def best(fn: Callable[[], Any], n: int = 2000, rounds: int = 5) -> float:
    """Best per-call time in µs over `rounds` rounds of `n` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


async def store_round_trip(crypto: PhiCrypto | None, n: int = 300) -> float:
    """µs per (write transaction + read) of one Patient on a fresh SQLite file."""
    with tempfile.TemporaryDirectory() as work:
        store = Store(f"sqlite+aiosqlite:///{work}/bench.db")
        await store.upgrade()
        if crypto is not None:
            await crypto.start(store)
        start = time.perf_counter()
        for i in range(n):
            res_id = f"p{i}"
            resource = {**PATIENT, "id": res_id}
            async with store.transaction() as tx:
                rows = extract(resource)
                stored = resource
                if crypto is not None:
                    stored, rows = (await crypto.sealer(tx.conn)).seal("Patient", res_id, resource, rows)
                version = StoredVersion(
                    "Patient", res_id, 1, time.time(), False, orjson.dumps(stored), "POST"
                )
                await tx.write(version, previous=None, rows=rows)
            got = await store.read("Patient", res_id)
            assert got is not None
            back = got.resource()
            if crypto is not None:
                back = await crypto.open(store, back, "Patient", res_id)
        elapsed = (time.perf_counter() - start) / n * 1e6
        await store.dispose()
        return elapsed


def main() -> None:
    crypto = PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))
    ring = asyncio.run(_ring(crypto))
    sealed = encrypt_resource(PATIENT, "Patient", "example", ring)
    raw_plain, raw_sealed = orjson.dumps(PATIENT), orjson.dumps(sealed)
    assert decrypt_resource(orjson.loads(raw_sealed), "Patient", "example", ring) == PATIENT

    floor = best(lambda: orjson.loads(orjson.dumps(PATIENT)))
    crypt = best(
        lambda: decrypt_resource(
            orjson.loads(orjson.dumps(encrypt_resource(PATIENT, "Patient", "example", ring))),
            "Patient",
            "example",
            ring,
        )
    )
    write_off = best(lambda: (extract(PATIENT), orjson.dumps(PATIENT)), n=1000)
    write_on = best(
        lambda: (
            protect_rows(extract(PATIENT), "Patient", ring, DEFAULT_FIELDS),
            orjson.dumps(encrypt_resource(PATIENT, "Patient", "example", ring)),
        ),
        n=1000,
    )
    off = asyncio.run(store_round_trip(None))
    on = asyncio.run(store_round_trip(PhiCrypto(LocalKms(DEV_ENCRYPTION_KEY))))
    print(f"stored size: {len(raw_plain)} B plain, {len(raw_sealed)} B sealed")
    print(
        f"write side (extract + dumps): {write_off:.1f} µs off, {write_on:.1f} µs on "
        f"({write_on / write_off:.2f}x)"
    )
    print(f"SQLite write transaction + read: {off:.0f} µs off, {on:.0f} µs on ({on / off:.2f}x)")
    print(f"floor orjson dumps+loads: {floor:.1f} µs; encrypt+dumps+loads+decrypt: {crypt:.1f} µs")
    print(f"crypto/floor ratio: {crypt / floor:.2f}x")


async def _ring(crypto: PhiCrypto) -> Any:
    with tempfile.TemporaryDirectory() as work:
        store = Store(f"sqlite+aiosqlite:///{work}/ring.db")
        await store.upgrade()
        ring = await crypto.start(store)
        await store.dispose()
        return ring


if __name__ == "__main__":
    main()
