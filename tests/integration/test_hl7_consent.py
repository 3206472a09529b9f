"""A consent that arrives in HL7 v2 (CON in an MDM document message) is stored and governs REST reads.

Real components: the app with its SQLite store and the HL7 HTTP receiver; a clinician token reads
the patient's data through read, search and $everything, as tests/integration/test_consent.py does
for consents written over REST.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fhir_gateway.api.app import create_app
from fhir_gateway.api.hl7v2 import build_hl7_router
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_hl7_ingest import msa
from tests.unit.test_hl7_mapping import seg

V2 = {"content-type": "x-application/hl7-v2+er7"}
PATIENT = stable_id("Patient", "HOSP", "C-100")
SENSITIVE = stable_id("DocumentReference", "EHR", "DOC-1")
ROUTINE = stable_id("DocumentReference", "EHR", "DOC-2")
HEADER = "MSH|^~\\&|DOCS|HOSP|GW|HOSP|20240301101500+0100||{type}|{cid}|P|2.8\r"
PID = "PID|1||C-100^^^HOSP^MR||Roe^Rita||19700101|F\rPV1|1|O|CLINIC^1^A||||||||||||||||V-100^^^HOSP^VN\r"


def document(cid: str, doc: str, text: str, con: str = "", trigger: str = "T02") -> str:
    txa = f"TXA|1|CN^Consult note^HL70270|TX|20240301||20240301||||||{doc}^EHR|||||AU||AV\r"
    return (
        HEADER.format(type=f"MDM^{trigger}^MDM_T02", cid=cid)
        + PID
        + txa
        + con
        + f"OBX|1|TX|NOTE^Note^L||{text}||||||F\r"
    )


def con(status: str, disclosure: str) -> str:
    """CON-2 001 release of information, CON-3 form, CON-4 form number, CON-11 status, CON-21 level."""
    fields = {"f2": "001^Release of Information^HL70496", "f3": "ROI v2", "f4": "CF-1^EHR", "f10": "W"}
    return seg("CON", f1="1", **fields, f11=status, f13="20240301", f21=disclosure) + "\r"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/c.db", privacy={"consent_cache_seconds": 30})
    app = create_app(settings)
    app.include_router(build_hl7_router(app.state.runtime))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.headers["Accept"] = "application/fhir+json"
            yield client, settings


def clinician(settings: Settings) -> dict[str, str]:
    token = mint_token(
        settings,
        sub="Practitioner/doc",
        roles=["clinician"],
        scope="user/*.cruds",
        purpose=["TREAT"],
        fhir_user="Practitioner/doc",
    )
    return {"Authorization": f"Bearer {token}"}


async def send(client: httpx.AsyncClient, message: str) -> str:
    response = await client.post("/hl7v2", content=message, headers=V2)
    assert response.status_code == 200 and msa(response.text)[1] == "AA", response.text
    return response.text


async def documents_seen(client: httpx.AsyncClient, headers: dict[str, str]) -> set[str]:
    """The DocumentReferences a caller gets, asserting read, search and $everything agree."""
    read = {
        d
        for d in (SENSITIVE, ROUTINE)
        if (await client.get(f"/fhir/DocumentReference/{d}", headers=headers)).status_code == 200
    }
    found = (
        await client.get("/fhir/DocumentReference", params={"patient": f"Patient/{PATIENT}"}, headers=headers)
    ).json()
    searched = {e["resource"]["id"] for e in found.get("entry", [])}
    assert found["total"] == len(searched)
    everything = (await client.get(f"/fhir/Patient/{PATIENT}/$everything", headers=headers)).json()
    kinds = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in everything["entry"]}
    assert ("Patient", PATIENT) in kinds  # the consent is about this document, not the whole record
    assert any(t == "Encounter" for t, _ in kinds)
    via_everything = {i for t, i in kinds if t == "DocumentReference"}
    assert read == searched == via_everything
    return read


async def test_a_deny_in_con_hides_that_document_until_the_patient_rescinds_it(
    setup: tuple[httpx.AsyncClient, Settings],
) -> None:
    client, settings = setup
    doctor = clinician(settings)
    await send(client, document("D1", "DOC-1", "HIV counselling note", con("A", "N")))
    await send(client, document("D2", "DOC-2", "Routine follow-up"))
    consents = (await client.get("/fhir/Consent", params={"patient": f"Patient/{PATIENT}"})).json()
    [consent] = [e["resource"] for e in consents["entry"]]
    assert consent["status"] == "active" and consent["patient"] == {"reference": f"Patient/{PATIENT}"}
    assert consent["provision"]["type"] == "deny"
    assert consent["provision"]["data"] == [
        {"meaning": "instance", "reference": {"reference": f"DocumentReference/{SENSITIVE}"}}
    ]
    assert await documents_seen(client, doctor) == {ROUTINE}
    assert await documents_seen(client, {}) == {SENSITIVE, ROUTINE}  # the consent binds the clinician only
    # the patient rescinds it (CON-11 X) in a later edit of the same document: the same Consent ends
    await send(client, document("D3", "DOC-1", "HIV counselling note", con("X", "N"), trigger="T08"))
    ended = (await client.get(f"/fhir/Consent/{consent['id']}")).json()
    assert ended["status"] == "inactive" and ended["meta"]["versionId"] != consent["meta"]["versionId"]
    assert await documents_seen(client, doctor) == {SENSITIVE, ROUTINE}


async def test_a_partial_disclosure_is_stored_unenforced_and_acknowledged_with_a_warning(
    setup: tuple[httpx.AsyncClient, Settings],
) -> None:
    client, settings = setup
    ack = await send(client, document("P1", "DOC-1", "Note with limits", con("L", "P")))
    err = next(s for s in ack.split("\r") if s.startswith("ERR")).split("|")
    assert err[2] == "CON^1^21" and err[4] == "W" and "Note with limits" not in ack
    consents = (await client.get("/fhir/Consent", params={"patient": f"Patient/{PATIENT}"})).json()
    [consent] = [e["resource"] for e in consents["entry"]]
    assert consent["status"] == "active" and "provision" not in consent
    assert await documents_seen(client, clinician(settings)) == {SENSITIVE}
