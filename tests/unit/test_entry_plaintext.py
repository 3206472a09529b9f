"""The write path opens a stored version once per submit and hands every caller its own copy."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from fhir_gateway.store.store import StoredVersion
from fhir_gateway.transaction import EntryProcessor


class _Gateway:
    """Stands in for Gateway.plaintext: counts how often a version is opened (decrypted)."""

    def __init__(self) -> None:
        self.opened = 0

    async def plaintext(self, version: StoredVersion, conn: Any = None) -> dict[str, Any]:
        self.opened += 1
        return version.resource()


async def test_each_caller_gets_its_own_copy_of_a_version_opened_once() -> None:
    stored = {"resourceType": "Patient", "id": "p", "name": [{"family": "Ng"}]}
    version = StoredVersion("Patient", "p", 3, 0.0, False, orjson.dumps(stored))
    gateway = _Gateway()
    processor = EntryProcessor(gateway, SimpleNamespace(conn=None), SimpleNamespace(), {})  # type: ignore[arg-type]
    first = await processor.plaintext(version)
    first["name"][0]["family"] = "changed by the first caller"
    second = await processor.plaintext(version)
    assert second == stored and second is not first
    second["name"].clear()
    assert await processor.plaintext(version) == stored
    assert gateway.opened == 1
