"""The lean read path answers exactly as the router did: same status, headers, body, AuditEvent.

The first read of a type goes through the FastAPI router (that is how the lean path learns that
the type's reads belong to the REST read route); later reads take the lean path. So comparing the
first and the second read of the same resource compares the two paths.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fhir_gateway.api.app import create_app
from fhir_gateway.api.fastpath import ReadFastPath
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.settings import Settings
from tests.conftest import make_settings

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
VOLATILE = {"date", "x-request-id"}


class Served:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, settings: Settings) -> None:
        self.app = app
        self.client = client
        self.settings = settings

    def auth(self, *roles: str, scope: str = "user/*.cruds") -> dict[str, str]:
        token = mint_token(self.settings, sub="Practitioner/doc", roles=roles, scope=scope, purpose=["TREAT"])
        return {**FHIR, "Authorization": f"Bearer {token}"}

    def fast_path(self) -> ReadFastPath:
        layer: Any = self.app.middleware_stack
        while not isinstance(layer, ReadFastPath):
            layer = layer.app
        return layer

    async def audit_of(self, reference: str) -> list[dict[str, Any]]:
        await self.app.state.runtime.audit.flush(timeout=10)
        found = await self.client.get(
            "/fhir/AuditEvent", params={"entity": reference, "_count": "50"}, headers=self.auth("admin")
        )
        assert found.status_code == 200, found.text
        return [e["resource"] for e in found.json()["entry"]]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/fast.db",
        security={"allow_anonymous": False},
        audit={"flush_interval_ms": 5, "spill_path": str(tmp_path / "spill")},
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Served(app, client, settings)


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert {k: v for k, v in a.headers.items() if k not in VOLATILE} == {
        k: v for k, v in b.headers.items() if k not in VOLATILE
    }
    assert a.content == b.content


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """An AuditEvent without what differs between any two events (id, times, request id)."""
    kept = {k: v for k, v in event.items() if k not in ("id", "meta", "recorded", "period")}
    kept["entity"] = [e for e in event.get("entity", []) if e.get("type", {}).get("code") != "XrequestId"]
    return kept


async def test_reads_through_the_router_and_the_lean_path_are_indistinguishable(served: Served) -> None:
    c, h = served.client, served.auth("clinician")
    created = await c.post(
        "/fhir/Patient", json={"resourceType": "Patient", "birthDate": "1970-01-01"}, headers=h
    )
    pid = created.json()["id"]
    routed = await c.get(f"/fhir/Patient/{pid}", headers=h)
    assert served.fast_path().learnt == {"Patient": True}
    lean = await c.get(f"/fhir/Patient/{pid}", headers=h)
    same_answer(routed, lean)
    assert routed.status_code == 200 and lean.headers["etag"] == 'W/"1"' and "last-modified" in lean.headers
    assert lean.headers["content-type"].startswith("application/fhir+json")
    # query parameters, conditional reads and errors behave the same on the lean path
    summary = await c.get(f"/fhir/Patient/{pid}", params={"_elements": "birthDate"}, headers=h)
    assert summary.json()["birthDate"] == "1970-01-01" and "meta" in summary.json()
    unchanged = await c.get(f"/fhir/Patient/{pid}", headers={**h, "If-None-Match": 'W/"1"'})
    assert unchanged.status_code == 304
    assert (await c.get("/fhir/Patient/no-such", headers=h)).json()["issue"][0]["code"] == "not-found"
    no_token = await c.get(f"/fhir/Patient/{pid}")
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"
    # one AuditEvent per read, the same from either path
    events = await served.audit_of(f"Patient/{pid}")
    reads = sorted((e for e in events if e["subtype"][0]["code"] == "read"), key=lambda e: e["recorded"])
    assert len(reads) == 4  # routed, lean, _elements, 304 (the 401 names no resource)
    assert comparable(reads[0]) == comparable(reads[1])


async def test_reads_another_router_serves_keep_going_through_it(served: Served) -> None:
    c = served.client
    officer = served.auth("privacy_officer", scope="user/*.rs")
    for _ in range(2):
        refused = await c.get("/fhir/AuditEvent/abc", headers=served.auth("nurse"))
        assert refused.status_code == 403  # the audit router's own rule, not a REST read
    assert served.fast_path().learnt == {"AuditEvent": False}
    assert (await c.get("/fhir/AuditEvent/nope", headers=officer)).status_code == 404
    # ids outside the FHIR id syntax and unknown types never take the lean path
    assert (await c.get("/fhir/Patient/$validate", headers=officer)).status_code != 404
    assert (await c.get("/fhir/NoSuchType/1", headers=officer)).status_code == 404
    assert set(served.fast_path().learnt) == {"AuditEvent"}
