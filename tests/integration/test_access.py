"""The policy decision point on every read path: a leak suite.

A PSY-labelled Observation of patient A, and patient B's data, must never appear, be counted,
be included or influence a match for a caller not entitled to them — by any route: read, vread,
search (+_total), _include/_revinclude (incl. :iterate), chains, _has, history (instance, type,
system), batch GET entries, conditional create. Callers are real tokens over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.settings import Settings
from tests.conftest import database_url, make_settings, open_client

W = TypeVar("W", bound="World")
FHIR = {"Content-Type": "application/fhir+json"}
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PSY_CODE = {"coding": [{"system": "http://loinc.org", "code": "psy-note"}]}


def _observation(patient: str, code: dict[str, Any], ident: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": code,
        "subject": {"reference": f"Patient/{patient}"},
        "identifier": [{"system": "urn:obs", "value": ident}],
        **extra,
    }


class World:
    """The data every test reads, written by an anonymous admin (allowed in tests only)."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.ids: dict[str, str] = {}

    async def create(self, name: str, resource: dict[str, Any]) -> str:
        r = await self.client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
        assert r.status_code == 201, r.text
        self.ids[name] = r.json()["id"]
        return self.ids[name]

    async def build(self) -> None:
        a = await self.create("A", {"resourceType": "Patient", "name": [{"family": "Alpha"}]})
        b = await self.create("B", {"resourceType": "Patient", "name": [{"family": "Beta"}]})
        await self.create("obsA", _observation(a, {"text": "pulse"}, "o1"))
        psy = _observation(a, PSY_CODE, "secret", meta={"security": [{"system": ACT, "code": "PSY"}]})
        psy_id = await self.create("psyA", psy)
        # a second version, so vread and instance history have something to leak
        psy["id"] = psy_id
        psy["status"] = "amended"
        assert (
            await self.client.put(f"/fhir/Observation/{psy_id}", json=psy, headers=FHIR)
        ).status_code == 200
        await self.create("obsB", _observation(b, {"text": "pulse"}, "o3"))
        report = {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"text": "panel"},
            "subject": {"reference": f"Patient/{a}"},
            "result": [
                {"reference": f"Observation/{psy_id}"},
                {"reference": f"Observation/{self.ids['obsA']}"},
            ],
        }
        await self.create("reportA", report)

    def token(self, **kwargs: Any) -> dict[str, str]:
        kwargs.setdefault("sub", "Practitioner/doc")
        return {"Authorization": f"Bearer {mint_token(self.settings, **kwargs)}"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async for w in built(World, request.param, tmp_path):
        yield w


async def built(kind: type[W], dialect: str, tmp_path: Path) -> AsyncIterator[W]:
    """A served app on a fresh database of `dialect`, with `kind`'s data written into it."""
    async with database_url(dialect, tmp_path, "acl") as url:
        settings = make_settings(url)
        async for client in open_client(settings):
            w = kind(client, settings)
            await w.build()
            yield w


def clinician(w: World) -> dict[str, str]:
    return w.token(roles=["clinician"], scope="user/*.cruds", purpose=["TREAT"])


def ids_of(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "id" in e.get("resource", {})}


async def test_labelled_resource_is_invisible_by_every_route(world: World) -> None:
    c, h, psy, a = world.client, clinician(world), world.ids["psyA"], world.ids["A"]
    # read and vread: exactly the answer for a resource that does not exist
    hidden = await c.get(f"/fhir/Observation/{psy}", headers=h)
    missing = await c.get("/fhir/Observation/does-not-exist", headers=h)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["issue"][0]["diagnostics"] == missing.json()["issue"][0]["diagnostics"]
    assert (await c.get(f"/fhir/Observation/{psy}/_history/1", headers=h)).status_code == 404
    assert (await c.get(f"/fhir/Observation/{psy}/_history", headers=h)).status_code == 404
    # search: neither listed nor counted, also on _summary=count
    found = (await c.get("/fhir/Observation", params={"subject": f"Patient/{a}"}, headers=h)).json()
    assert ids_of(found) == {world.ids["obsA"]} and found["total"] == 1
    count = (await c.get("/fhir/Observation", params={"_summary": "count"}, headers=h)).json()
    assert count["total"] == 2
    # a hidden resource must not make another match: _has and chains
    has = (
        await c.get("/fhir/Patient", params={"_has:Observation:subject:code": "psy-note"}, headers=h)
    ).json()
    assert has["total"] == 0
    direct = (await c.get("/fhir/Observation", params={"identifier": "secret"}, headers=h)).json()
    assert direct["total"] == 0
    chain = (await c.get("/fhir/DiagnosticReport", params={"result.code": "psy-note"}, headers=h)).json()
    assert chain["total"] == 0
    inc = (
        await c.get("/fhir/DiagnosticReport", params={"_include": "DiagnosticReport:result"}, headers=h)
    ).json()
    assert ids_of(inc) == {world.ids["reportA"], world.ids["obsA"]}
    # includes never pull it in
    rev = (
        await c.get("/fhir/Patient", params={"_id": a, "_revinclude": "Observation:subject"}, headers=h)
    ).json()
    assert psy not in ids_of(rev) and world.ids["obsA"] in ids_of(rev)
    # history: type and system level do not list it
    assert psy not in {
        e["fullUrl"].rsplit("/", 1)[1]
        for e in (await c.get("/fhir/Observation/_history", headers=h)).json()["entry"]
    }
    system = (await c.get("/fhir/_history", params={"_count": "100"}, headers=h)).json()
    assert all(not e["fullUrl"].endswith(psy) for e in system["entry"])
    assert system["total"] == len(system["entry"])
    # batch GET entries go through the same decision
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{psy}"}},
            {"request": {"method": "GET", "url": "Observation?identifier=secret"}},
        ],
    }
    answer = (await c.post("/fhir", json=batch, headers={**h, **FHIR})).json()
    assert answer["entry"][0]["response"]["status"].startswith("404")
    assert answer["entry"][1]["resource"]["total"] == 0


async def test_conditional_create_is_no_existence_oracle(world: World) -> None:
    """If-None-Exist matching only a hidden resource answers exactly as if nothing matched."""
    c, h = world.client, clinician(world)
    obs = _observation(world.ids["A"], {"text": "x"}, "secret")
    r = await c.post(
        "/fhir/Observation", json=obs, headers={**h, **FHIR, "If-None-Exist": "identifier=secret"}
    )
    assert r.status_code == 201
    assert r.json()["id"] != world.ids["psyA"]


async def test_admin_and_cleared_callers_see_it(world: World) -> None:
    c, psy = world.client, world.ids["psyA"]
    admin = world.token(roles=["admin"], scope="system/*.*")
    assert (await c.get(f"/fhir/Observation/{psy}", headers=admin)).status_code == 200
    history = (await c.get(f"/fhir/Observation/{psy}/_history", headers=admin)).json()
    assert history["total"] == 2 and all("resource" in e for e in history["entry"])


async def test_patient_context_confines_to_the_compartment(world: World) -> None:
    c, a, b = world.client, world.ids["A"], world.ids["B"]
    h = world.token(
        sub="Patient/" + a, roles=["clinician"], scope="patient/*.rs", patient=a, purpose=["TREAT"]
    )
    assert (await c.get(f"/fhir/Patient/{a}", headers=h)).status_code == 200
    assert (await c.get(f"/fhir/Patient/{b}", headers=h)).status_code == 404
    assert (await c.get(f"/fhir/Observation/{world.ids['obsB']}", headers=h)).status_code == 404
    patients = (await c.get("/fhir/Patient", headers=h)).json()
    assert ids_of(patients) == {a} and patients["total"] == 1
    observations = (await c.get("/fhir/Observation", headers=h)).json()
    assert ids_of(observations) == {world.ids["obsA"]}
    # _include from a visible resource does not cross into another patient's compartment
    inc = (await c.get("/fhir/Observation", params={"_include": "Observation:subject"}, headers=h)).json()
    assert b not in ids_of(inc)


async def test_scopes_limit_types_and_interactions(world: World) -> None:
    c = world.client
    patients_only = world.token(roles=["clinician"], scope="user/Patient.rs", purpose=["TREAT"])
    r = await c.get(f"/fhir/Observation/{world.ids['obsA']}", headers=patients_only)
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    assert (await c.get("/fhir/Observation", headers=patients_only)).status_code == 403
    rev = (
        await c.get(
            "/fhir/Patient",
            params={"_id": world.ids["A"], "_revinclude": "Observation:subject"},
            headers=patients_only,
        )
    ).json()
    assert ids_of(rev) == {world.ids["A"]}  # includes of types outside the scopes are dropped
    read_only = world.token(roles=["clinician"], scope="user/*.rs", purpose=["TREAT"])
    w = await c.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={**read_only, **FHIR})
    assert w.status_code == 403
    nurse = world.token(roles=["nurse"], scope="user/*.cruds", purpose=["TREAT"])
    assert (await c.delete(f"/fhir/Patient/{world.ids['B']}", headers=nurse)).status_code == 403
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Patient/{world.ids['B']}"}}],
    }
    denied = await c.post("/fhir", json=tx, headers={**nurse, **FHIR})
    assert denied.status_code == 403
    assert denied.json()["issue"][0]["expression"] == ["Bundle.entry[0].request"]
    no_scopes = world.token(roles=["clinician"], scope="openid fhirUser")
    assert (await c.get("/fhir/Patient", headers=no_scopes)).status_code == 403


async def test_requests_without_a_token_are_refused_unless_allowed(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/anon.db", security={})
    async for c in open_client(settings):
        r = await c.get("/fhir/Patient")
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
        assert (await c.get("/fhir/metadata")).status_code == 200


async def test_everything_returns_only_what_the_caller_may_see(world: World) -> None:
    c, a, b = world.client, world.ids["A"], world.ids["B"]
    admin = world.token(roles=["admin"], scope="system/*.*")

    def clinical(bundle: dict[str, Any]) -> set[str]:  # the Provenance of each write is in it too
        return {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] != "Provenance"}

    full = (await c.get(f"/fhir/Patient/{a}/$everything", params={"_count": "100"}, headers=admin)).json()
    assert {world.ids[k] for k in ("A", "obsA", "psyA", "reportA")} == clinical(full)
    assert full["total"] == len(full["entry"])
    h = clinician(world)
    seen = (await c.get(f"/fhir/Patient/{a}/$everything", params={"_count": "100"}, headers=h)).json()
    assert clinical(seen) == {a, world.ids["obsA"], world.ids["reportA"]}
    assert seen["total"] == len(seen["entry"]) < full["total"]  # the PSY one, and its Provenance, not counted
    paged = (await c.get(f"/fhir/Patient/{a}/$everything", params={"_count": "2"}, headers=h)).json()
    assert len(paged["entry"]) == 2 and paged["total"] == seen["total"]
    assert any(link["relation"] == "next" for link in paged["link"])
    own = world.token(
        sub="Patient/" + a, roles=["clinician"], scope="patient/*.rs", patient=a, purpose=["TREAT"]
    )
    assert (await c.get(f"/fhir/Patient/{b}/$everything", headers=own)).status_code == 404
    assert (await c.get("/fhir/Patient/nobody/$everything", headers=admin)).status_code == 404


async def test_break_glass_opens_one_patient_for_its_holder_only(world: World) -> None:
    c, a, psy = world.client, world.ids["A"], world.ids["psyA"]
    sud = _observation(a, {"text": "x"}, "sud", meta={"security": [{"system": ACT, "code": "SUD"}]})
    sud_id = await world.create("sudA", sud)
    er = world.token(
        sub="Practitioner/er", roles=["clinician", "emergency_access"], scope="user/*.rs", purpose=["ETREAT"]
    )
    assert (await c.get(f"/fhir/Observation/{psy}", headers=er)).status_code == 404

    def outcomes(bundle: dict[str, Any]) -> list[str]:
        return [
            e["resource"]["issue"][0]["code"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"
        ]

    # who could break the glass is told that something was withheld (not what); nobody else is
    before = (await c.get("/fhir/Observation", params={"subject": f"Patient/{a}"}, headers=er)).json()
    assert outcomes(before) == ["suppressed"] and psy not in ids_of(before)
    plain = (
        await c.get("/fhir/Observation", params={"subject": f"Patient/{a}"}, headers=clinician(world))
    ).json()
    assert outcomes(plain) == []
    params = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "unconscious"}]}
    opened = await c.post(f"/fhir/Patient/{a}/$break-glass", json=params, headers={**er, **FHIR})
    assert opened.status_code == 200, opened.text
    assert (await c.get(f"/fhir/Observation/{psy}", headers=er)).status_code == 200
    found = (await c.get("/fhir/Observation", params={"subject": f"Patient/{a}"}, headers=er)).json()
    assert psy in ids_of(found) and sud_id not in ids_of(found)  # 42 CFR Part 2 stays closed
    assert (await c.get(f"/fhir/Observation/{sud_id}", headers=er)).status_code == 404
    # the grant is the caller's own: another clinician still does not see it
    assert (await c.get(f"/fhir/Observation/{psy}", headers=clinician(world))).status_code == 404
