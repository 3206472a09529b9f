"""`$de-identify` over HTTP: role gating, a round trip, the report header, bad bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from fhir_gateway.api.app import create_app
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.privacy.deid import PSEUDONYM_SYSTEM, DeidConfig, deidentify, installation_key
from fhir_gateway.privacy.deid_api import build_deid_router
from fhir_gateway.settings import Settings
from tests.conftest import make_settings

URL = "/fhir/$de-identify"
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-4711"}],
    "name": [{"family": "Quixote", "given": ["Alonso"]}],
    "birthDate": "1980-04-15",
    "gender": "male",
    "address": [{"city": "Toboso", "state": "NM", "postalCode": "87501"}],
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"text": "note"},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2020-01-10",
    "note": [{"text": "Alonso Quixote feels well"}],
}


async def open_deid_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    before = len(app.router.routes)
    app.include_router(build_deid_router(app.state.runtime, "/fhir"))
    # as the lead wires it: before the REST router, whose POST /fhir/{res_type} would match first
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[:0] = added
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.headers["Accept"] = "application/fhir+json"
            yield client


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in open_deid_client(make_settings(sqlite_url)):
        yield c


@pytest.fixture
async def secured(sqlite_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    settings = make_settings(sqlite_url, security={"allow_anonymous": False})
    async for c in open_deid_client(settings):
        yield c, settings


def bearer(settings: Settings, *roles: str) -> dict[str, str]:
    token = mint_token(settings, sub="u1", roles=roles, scope="user/*.rs")
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


async def test_round_trip_of_a_bundle(client: httpx.AsyncClient, sqlite_url: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": PATIENT}, {"resource": OBSERVATION}],
    }
    r = await client.post(
        URL, content=orjson.dumps(bundle), headers={"Content-Type": "application/fhir+json"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    text = r.text
    for value in ("Quixote", "Alonso", "MRN-4711", "Toboso", "1980-04-15", "2020-01-10", '"p1"'):
        assert value not in text
    pat, obs = (e["resource"] for e in body["entry"])
    assert obs["subject"]["reference"] == f"Patient/{pat['id']}"
    assert pat["identifier"][0]["system"] == PSEUDONYM_SYSTEM
    report = orjson.loads(r.headers["X-Deid-Report"])
    assert report["label"] == "PSEUDED" and report["counts"]["names"] == 1
    assert report["kAnonymity"] == {"k": 1, "patients": 1, "classes": 1}
    # the key is the installation's: the CLI and the operation give the same pseudonyms
    settings = make_settings(sqlite_url)
    key = installation_key(settings.security.encryption_key.get_secret_value())
    assert deidentify(bundle, key=key, config=DeidConfig()).data == body


async def test_parameters_input_and_year_mode(client: httpx.AsyncClient) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": PATIENT}, {"name": "dates", "valueCode": "year"}],
    }
    r = await client.post(URL, json=params)
    assert r.status_code == 200, r.text
    assert r.json()["birthDate"] == "1980" and r.json()["meta"]["security"][0]["code"] == "ANONYED"
    r = await client.post(URL + "?dates=year&_pretty=true", json=OBSERVATION)
    assert r.json()["effectiveDateTime"] == "2020"


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"no": "type"},
        {"resourceType": "Parameters", "parameter": [{"name": "other"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": PATIENT}] * 2},
    ],
)
async def test_bad_bodies_are_400(client: httpx.AsyncClient, body: Any) -> None:
    r = await client.post(URL, json=body)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_bad_dates_mode_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(URL + "?dates=month", json=PATIENT)
    assert r.status_code == 400 and "shift or year" in r.text


async def test_roles_gate_the_operation(secured: tuple[httpx.AsyncClient, Settings]) -> None:
    client, settings = secured
    body = orjson.dumps(PATIENT)
    assert (await client.post(URL, content=body, headers=bearer(settings, "clinician"))).status_code == 403
    assert (await client.post(URL, content=body)).status_code == 401
    for role in ("researcher", "privacy_officer", "admin"):
        r = await client.post(URL, content=body, headers=bearer(settings, role))
        assert r.status_code == 200, (role, r.text)
        assert "Quixote" not in r.text
