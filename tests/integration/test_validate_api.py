"""$validate over HTTP, and the validation stage on real writes (SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_gateway.api.app import create_app
from fhir_gateway.validation.api import build_validate_router
from tests.conftest import make_settings

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
STAGE = "fhir_gateway.validation.stage:validation_stage"
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
    "gender": "female",
}


async def _client(tmp_path: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/gw.db", **overrides)
    app = create_app(settings)
    app.include_router(build_validate_router(app.state.runtime, "/fhir"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(tmp_path, pipeline=[STAGE]):
        yield c


def _issues(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return list(body.get("issue", []))


async def test_validate_a_bare_resource(client: httpx.AsyncClient) -> None:
    ok = await client.post("/fhir/Patient/$validate", json=PATIENT, headers=FHIR)
    assert ok.status_code == 200 and _issues(ok)[0]["diagnostics"] == "All OK"
    bad = await client.post("/fhir/Patient/$validate", json=PATIENT | {"gender": "bogus"}, headers=FHIR)
    assert bad.status_code == 200  # the operation succeeded; the resource is invalid
    assert [(i["severity"], i["expression"]) for i in _issues(bad) if i["severity"] == "error"] == [
        ("error", ["Patient.gender"])
    ]


async def test_validate_parameters_with_mode_and_profile(client: httpx.AsyncClient) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": PATIENT},
            {"name": "mode", "valueCode": "update"},
            {"name": "profile", "valueUri": "http://example.org/StructureDefinition/unknown"},
        ],
    }
    response = await client.post("/fhir/Patient/$validate", json=params, headers=FHIR)
    texts = [i["diagnostics"] for i in _issues(response) if i["severity"] == "error"]
    assert any("must have an id" in t for t in texts) and any("not known" in t for t in texts)
    bad_mode = await client.post("/fhir/Patient/$validate?mode=nonsense", json=PATIENT, headers=FHIR)
    assert bad_mode.status_code == 400


async def test_a_stored_profile_is_used(client: httpx.AsyncClient) -> None:
    url = "http://example.org/StructureDefinition/needs-birthdate"
    profile = {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "NeedsBirthDate",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}]},
    }
    stored = await client.post("/fhir/StructureDefinition", json=profile, headers=FHIR)
    assert stored.status_code == 201, stored.text
    claimed = PATIENT | {"meta": {"profile": [url]}}
    response = await client.post("/fhir/Patient/$validate", json=claimed, headers=FHIR)
    assert any("Patient.birthDate: minimum required" in i["diagnostics"] for i in _issues(response))


async def test_an_extension_is_known_once_its_definition_is_stored(client: httpx.AsyncClient) -> None:
    url = "http://hospital.example.net/fhir/StructureDefinition/ward-preference"
    patient = PATIENT | {"extension": [{"url": url, "valueString": "quiet"}]}
    unknown = f"The extension {url} could not be found so is not allowed here"
    before = await client.post("/fhir/Patient/$validate", json=patient, headers=FHIR)
    assert [(i["severity"], i["expression"]) for i in _issues(before) if i["diagnostics"] == unknown] == [
        ("error", ["Patient.extension[0]"])
    ]
    # the write path stores it: an extension nobody defined does not refuse a write
    written = await client.post("/fhir/Patient", json=patient, headers=FHIR)
    assert written.status_code == 201, written.text
    definition = {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "WardPreference",
        "status": "active",
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": "element", "expression": "Patient"}],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Extension.url", "path": "Extension.url", "fixedUri": url}]},
    }
    stored = await client.post("/fhir/StructureDefinition", json=definition, headers=FHIR)
    assert stored.status_code == 201, stored.text
    after = await client.post("/fhir/Patient/$validate", json=patient, headers=FHIR)
    assert _issues(after)[0]["diagnostics"] == "All OK"


async def test_made_up_extensions_cost_a_bounded_number_of_lookups(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhir_gateway.gateway import Gateway
    from fhir_gateway.validation.api import MAX_DEFINITION_LOOKUPS

    searched: list[str] = []
    search = Gateway.search

    async def counting(self: Gateway, res_type: str, *args: Any, **kwargs: Any) -> Any:
        searched.append(res_type)
        return await search(self, res_type, *args, **kwargs)

    monkeypatch.setattr(Gateway, "search", counting)
    made_up = [{"url": f"http://made.example.net/ext-{n}", "valueString": "x"} for n in range(200)]
    response = await client.post(
        "/fhir/Patient/$validate", json=PATIENT | {"extension": made_up}, headers=FHIR
    )
    unknown = [i for i in _issues(response) if "could not be found" in i["diagnostics"]]
    assert len(unknown) == 200 and searched.count("StructureDefinition") == MAX_DEFINITION_LOOKUPS


async def test_instance_level_and_delete_mode(client: httpx.AsyncClient) -> None:
    created = await client.post("/fhir/Patient", json=PATIENT, headers=FHIR)
    assert created.status_code == 201
    pid = created.json()["id"]
    stored = await client.get(f"/fhir/Patient/{pid}/$validate")
    assert stored.status_code == 200 and _issues(stored)[0]["diagnostics"] == "All OK"
    other_id = await client.post(
        f"/fhir/Patient/{pid}/$validate", json=PATIENT | {"id": "other"}, headers=FHIR
    )
    assert _issues(other_id)[0]["severity"] == "error"
    assert (await client.get(f"/fhir/Patient/{pid}/$validate?mode=delete")).status_code == 200
    assert (await client.get("/fhir/Patient/nope/$validate?mode=delete")).status_code == 404
    assert (await client.get("/fhir/Patient/$validate?mode=delete")).status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/fhir/Patient/$validate", b"{not json", 400),
        ("/fhir/Nonsense/$validate", b"{}", 404),
        ("/fhir/Patient/$validate", b"[1, 2]", 200),
        ("/fhir/Patient/$validate", b'{"resourceType": "Observation"}', 200),
        ("/fhir/Patient/$validate", b"[" * 5000 + b"]" * 5000, 400),
    ],
)
async def test_bad_input_is_an_operation_outcome(
    client: httpx.AsyncClient, path: str, body: bytes, status: int
) -> None:
    response = await client.post(path, content=body, headers=FHIR)
    assert response.status_code == status
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_type_level_get_without_a_resource(client: httpx.AsyncClient) -> None:
    assert (await client.get("/fhir/Patient/$validate")).status_code == 400


async def test_the_stage_rejects_invalid_writes_with_all_issues(client: httpx.AsyncClient) -> None:
    bad = PATIENT | {"gender": "bogus", "birthDate": "2020-02-30"}
    response = await client.post("/fhir/Patient", json=bad, headers=FHIR)
    assert response.status_code == 422
    expressions = [i.get("expression") for i in _issues(response)]
    assert ["Patient.gender"] in expressions and ["Patient.birthDate"] in expressions
    assert (await client.get("/fhir/Patient")).json().get("total", 0) == 0  # nothing was written


async def test_the_stage_names_the_entry_of_a_transaction(client: httpx.AsyncClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}},
            {"resource": PATIENT | {"gender": "bogus"}, "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = await client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 422
    wheres = [e for i in _issues(response) for e in i.get("expression", [])]
    assert any(e.startswith("Bundle.entry[1].resource/*Patient/") and e.endswith("*/.gender") for e in wheres)


async def test_the_stage_keeps_warnings(client: httpx.AsyncClient) -> None:
    marital = {"coding": [{"system": "http://example.org/local", "code": "x"}]}
    response = await client.post(
        "/fhir/Patient",
        json=PATIENT | {"maritalStatus": marital},
        headers=FHIR | {"Prefer": "return=OperationOutcome"},
    )
    assert response.status_code == 201
    warnings = [i for i in _issues(response) if i["severity"] == "warning"]
    assert [i["expression"] for i in warnings if i["code"] == "code-invalid"] == [["Patient.maritalStatus"]]


async def test_strictness_is_a_setting(tmp_path: Path) -> None:
    from fhir_gateway.context import RequestContext
    from fhir_gateway.errors import Unprocessable
    from fhir_gateway.pipeline.stage import Change
    from fhir_gateway.validation.stage import ValidationStage, validation_stage

    def change(resource: dict[str, Any]) -> Change:
        return Change("POST", "Patient", "p1", resource, None, {"entry": [{}]}, 0)

    marital = {"coding": [{"system": "http://example.org/local", "code": "x"}]}
    strict = ValidationStage(mode="strict")
    with pytest.raises(Unprocessable):
        await strict(change(PATIENT | {"maritalStatus": marital}), RequestContext())
    lenient = change(PATIENT | {"gender": "bogus"})
    await ValidationStage()(lenient, RequestContext.system("hl7v2"))  # feeds warn by default
    assert [w.severity for w in lenient.warnings if w.code == "code-invalid"] == ["warning"]
    off = change(PATIENT | {"gender": "bogus"})
    await ValidationStage(mode="off")(off, RequestContext())
    assert off.warnings == []
    assert validation_stage(make_settings("sqlite+aiosqlite:///x.db")) == ValidationStage()
