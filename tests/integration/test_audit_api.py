"""`GET [base]/AuditEvent`: only privacy officers and admins read it, searches work, reads are audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_gateway.api.app import create_app
from fhir_gateway.audit.events import (
    Interaction,
    consent_event,
    login_failure_event,
    rest_event,
)
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.context import RequestContext
from fhir_gateway.settings import Settings
from tests.conftest import make_settings

JAN, FEB, MAR = 1704067200.0, 1706745600.0, 1709251200.0  # 2024-01-01, 2024-02-01, 2024-03-01 UTC
SEEDED = "le2024-12-31"  # the seeded events, not the audit of our own reads (recorded now)


class Harness:
    def __init__(self, client: httpx.AsyncClient, log: AuditLog, settings: Settings) -> None:
        self.client = client
        self.log = log
        self.settings = settings

    def auth(self, sub: str, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, sub=sub, roles=roles)}"}

    async def search(self, sub: str, params: Any, *roles: str) -> httpx.Response:
        await self.log.flush(timeout=10)
        return await self.client.get("/fhir/AuditEvent", params=params, headers=self.auth(sub, *roles))

    async def ids(self, params: Any) -> list[str]:
        response = await self.search("po-1", params, "privacy_officer")
        assert response.status_code == 200, response.text
        return [e["resource"]["id"] for e in response.json()["entry"]]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/gw.db",
        base_url="http://gw.test/fhir",
        security={"allow_anonymous": False},
        audit={"flush_interval_ms": 5, "spill_path": str(tmp_path / "spill")},
    )
    app = create_app(settings)  # serves AuditEvent through the runtime's own log, as in production
    log = app.state.runtime.audit
    async with app.router.lifespan_context(app):  # its shutdown flushes every queued event
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Harness(client, log, settings)


def ctx(sub: str, fhir_user: str | None = None) -> RequestContext:
    return RequestContext(subject=sub, roles=("clinician",), fhir_user=fhir_user, jti=f"jti-{sub}")


async def seed(log: AuditLog) -> list[str]:
    source = log.source
    events = [
        rest_event(
            ctx("u1", "Practitioner/d1"),
            source,
            Interaction.READ,
            resources=["Observation/o1"],
            patients=["p1"],
            recorded=JAN,
        ),
        rest_event(
            ctx("u2"),
            source,
            Interaction.SEARCH_TYPE,
            resources=["Observation/o2", "Observation/o3"],
            patients=["p2"],
            query="code=x",
            recorded=FEB,
        ),
        rest_event(ctx("u2"), source, Interaction.CREATE, status=422, patients=["p1"], recorded=MAR),
        consent_event(
            ctx("u1"), source, permit=False, patient="p3", consents=["Consent/c1"], recorded=MAR + 60
        ),
    ]
    return [await log.record(e) for e in events]


async def test_only_privacy_officers_and_admins_read_and_refusals_are_audited(harness: Harness) -> None:
    await seed(harness.log)
    refused = await harness.search("nurse-7", {}, "clinician", "nurse")
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "forbidden"
    read_refused = await harness.client.get("/fhir/AuditEvent/abc", headers=harness.auth("nurse-7", "nurse"))
    assert read_refused.status_code == 403
    anonymous = await harness.client.get("/fhir/AuditEvent")
    assert anonymous.status_code == 401
    forged = await harness.client.get("/fhir/AuditEvent", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 401
    admin = await harness.search("admin-1", {"date": SEEDED}, "admin")
    assert admin.status_code == 200, admin.text

    denials = (await harness.search("po-1", {"agent": "nurse-7", "outcome": "4"}, "privacy_officer")).json()
    assert denials["total"] == 2
    kinds = {e["resource"]["subtype"][0]["code"] for e in denials["entry"]}
    assert kinds == {"search-type", "read"}
    assert all("(role)" in e["resource"]["outcomeDesc"] for e in denials["entry"])
    logins = (await harness.search("po-1", {"type": "110114"}, "privacy_officer")).json()
    assert logins["total"] == 2
    assert {e["resource"]["outcomeDesc"] for e in logins["entry"]} == {
        "Authentication failed (no token)",
        "Authentication failed (invalid token)",
    }


async def test_search_parameters(harness: Harness) -> None:
    read, search, create, consent = await seed(harness.log)
    assert await harness.ids({"date": SEEDED}) == [consent, create, search, read]  # newest first
    assert await harness.ids([("patient", "p1"), ("date", SEEDED)]) == [create, read]
    assert await harness.ids([("patient", "Patient/p3,p2"), ("date", SEEDED)]) == [consent, search]
    assert await harness.ids({"agent": "Practitioner/d1"}) == [read]
    assert await harness.ids([("agent", "u2"), ("date", SEEDED)]) == [create, search]
    assert await harness.ids({"entity": "Observation/o3"}) == [search]
    assert await harness.ids({"entity": "Consent/c1"}) == [consent]
    assert await harness.ids([("entity", "Patient/p3"), ("date", SEEDED)]) == [consent]
    assert await harness.ids({"subtype": "read", "date": SEEDED}) == [read]
    assert await harness.ids(
        {"subtype": "http://hl7.org/fhir/restful-interaction|search-type", "date": SEEDED}
    ) == [search]
    assert await harness.ids({"subtype": "AuthZ-Consent"}) == [consent]
    assert await harness.ids({"action": "C"}) == [create]
    assert await harness.ids([("outcome", "4"), ("date", SEEDED)]) == [consent, create]
    assert await harness.ids([("date", "ge2024-02-01"), ("date", "lt2024-03-01")]) == [search]
    assert await harness.ids([("date", "gt2024-01-01"), ("date", "le2024-02-01")]) == [search]
    assert await harness.ids([("date", "2024-01-01")]) == [read]
    assert await harness.ids([("date", "ne2024-03"), ("date", "eb2024-12-31")]) == [search, read]
    assert await harness.ids([("date", "sa2024-02-01"), ("date", SEEDED)]) == [consent, create]
    assert await harness.ids({"_id": create}) == [create]


async def test_paging(harness: Harness) -> None:
    ids = await seed(harness.log)
    first = (await harness.search("po-1", {"date": SEEDED, "_count": "3"}, "privacy_officer")).json()
    assert first["type"] == "searchset" and first["total"] == 4
    assert [e["resource"]["id"] for e in first["entry"]] == ids[::-1][:3]
    assert first["entry"][0]["fullUrl"] == f"http://gw.test/fhir/AuditEvent/{ids[3]}"
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "previous" not in links
    following = await harness.client.get(
        links["next"].replace("http://gw.test", ""), headers=harness.auth("po-1", "privacy_officer")
    )
    second = following.json()
    assert [e["resource"]["id"] for e in second["entry"]] == [ids[0]]
    assert "next" not in {link["relation"] for link in second["link"]}
    assert "previous" in {link["relation"] for link in second["link"]}


async def test_read_and_the_audit_of_reading(harness: Harness) -> None:
    ids = await seed(harness.log)
    headers = harness.auth("po-1", "privacy_officer")
    await harness.log.flush(timeout=10)
    response = await harness.client.get(f"/fhir/AuditEvent/{ids[0]}", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == ids[0] and body["meta"]["versionId"] == "1"
    assert body["subtype"][0]["code"] == "read" and "Patient/p1" in response.text

    # The privacy officer's read is itself an AuditEvent naming what was read and whose data it was.
    reads = (await harness.search("po-1", {"entity": f"AuditEvent/{ids[0]}"}, "privacy_officer")).json()
    [audit] = [e["resource"] for e in reads["entry"]]
    user = next(a for a in audit["agent"] if a["requestor"])
    assert user["who"]["identifier"]["value"] == "po-1"
    assert audit["subtype"][0]["code"] == "read"
    assert {e["what"].get("reference") for e in audit["entity"]} >= {f"AuditEvent/{ids[0]}", "Patient/p1"}

    # So is the search just made: it lists the AuditEvent it returned and carries the query.
    searches = (
        await harness.search("po-1", {"subtype": "search-type", "agent": "po-1"}, "privacy_officer")
    ).json()
    assert any(
        any(
            e["what"].get("reference") == f"AuditEvent/{audit['id']}" for e in s["resource"].get("entity", [])
        )
        for s in searches["entry"]
    )
    assert all(
        any(e.get("role", {}).get("code") == "24" for e in s["resource"]["entity"]) for s in searches["entry"]
    )

    missing = await harness.client.get("/fhir/AuditEvent/nope", headers=headers)
    assert missing.status_code == 404
    assert (await harness.client.get("/fhir/AuditEvent/bad$id", headers=headers)).status_code == 400
    failed = (await harness.search("po-1", {"entity": "AuditEvent/nope"}, "privacy_officer")).json()
    assert failed["entry"][0]["resource"]["outcome"] == "4"
    pretty = await harness.client.get(f"/fhir/AuditEvent/{ids[1]}?_pretty=true", headers=headers)
    assert pretty.text.startswith("{\n")


@pytest.mark.parametrize(
    "params",
    [
        {"name": "x"},
        {"date": "yesterday"},
        {"_count": "many"},
        {"subtype": "a|b|c"},
        {"subtype": "http://x|"},
        {"patient:missing": "true"},
        {"agent": ""},
    ],
)
async def test_bad_search_parameters_are_400_and_audited(harness: Harness, params: dict[str, str]) -> None:
    response = await harness.search("po-1", params, "privacy_officer")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    failures = (await harness.search("po-1", {"outcome": "4"}, "privacy_officer")).json()
    assert failures["total"] == 1


async def test_login_failure_events_reach_the_api(harness: Harness) -> None:
    event_id = await harness.log.record(login_failure_event(harness.log.source, reason="expired"))
    assert await harness.ids({"type": "http://dicom.nema.org/resources/ontology/DCM|110114"}) == [event_id]
