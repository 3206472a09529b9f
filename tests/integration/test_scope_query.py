"""SMART v2 scopes narrowed by a query, enforced as filters on every read path, over HTTP.

A token with `patient/Observation.rs?category=...|laboratory` sees only laboratory Observations:
the others answer like missing ones, are never listed, counted, included or returned by
`$everything`. Several scopes for one type are ORed. A query the server cannot enforce exactly is
refused when the token is verified, never silently widened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_access as access

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"category={CATEGORY}|laboratory"


def _observation(patient: str, category: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


class World(access.World):
    """Laboratory and vital-sign Observations of two patients, and a report citing one of each."""

    async def build(self) -> None:
        a = await self.create("A", {"resourceType": "Patient", "name": [{"family": "Alpha"}]})
        b = await self.create("B", {"resourceType": "Patient", "name": [{"family": "Beta"}]})
        await self.create("labA1", _observation(a, "laboratory", "glucose"))
        await self.create("labA2", _observation(a, "laboratory", "sodium"))
        await self.create("vitalA", _observation(a, "vital-signs", "pulse"))
        await self.create("labB", _observation(b, "laboratory", "glucose"))
        report = {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"text": "panel"},
            "subject": {"reference": f"Patient/{a}"},
            "result": [{"reference": f"Observation/{self.ids[n]}"} for n in ("labA1", "vitalA")],
        }
        await self.create("report", report)

    def headers(self, scope: str, **kwargs: Any) -> dict[str, str]:
        return self.token(roles=["clinician"], purpose=["TREAT"], scope=scope, **kwargs)

    def named(self, *names: str) -> set[str]:
        return {self.ids[n] for n in names}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async for w in access.built(World, request.param, tmp_path):
        yield w


def ids_of(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "outcome"
    }


async def test_patient_scope_with_a_query_shows_only_matching_resources(world: World) -> None:
    c, a = world.client, world.ids["A"]
    h = world.headers(
        f"patient/Observation.rs?{LAB} patient/Patient.rs patient/DiagnosticReport.rs", patient=a
    )
    # read: a non-matching resource answers exactly like a missing one
    hidden = await c.get(f"/fhir/Observation/{world.ids['vitalA']}", headers=h)
    missing = await c.get("/fhir/Observation/no-such-id", headers=h)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["issue"][0]["diagnostics"] == missing.json()["issue"][0]["diagnostics"]
    assert (await c.get(f"/fhir/Observation/{world.ids['labA1']}", headers=h)).status_code == 200
    # search lists and counts only matches (labB is another patient's)
    found = (await c.get("/fhir/Observation", headers=h)).json()
    assert ids_of(found) == world.named("labA1", "labA2") and found["total"] == 2
    by_code = (await c.get("/fhir/Observation", params={"code": "pulse"}, headers=h)).json()
    assert by_code["total"] == 0 and ids_of(by_code) == set()
    count = (await c.get("/fhir/Observation", params={"_summary": "count"}, headers=h)).json()
    assert count["total"] == 2
    # paging: one per page, two pages, never the vital sign
    page1 = (await c.get("/fhir/Observation", params={"_count": "1"}, headers=h)).json()
    nxt = next(link["url"] for link in page1["link"] if link["relation"] == "next")
    page2 = (await c.get(nxt.removeprefix("http://test"), headers=h)).json()
    assert ids_of(page1) | ids_of(page2) == world.named("labA1", "labA2")
    # _include / _revinclude / $everything never bring it in
    inc = (
        await c.get("/fhir/DiagnosticReport", params={"_include": "DiagnosticReport:result"}, headers=h)
    ).json()
    assert ids_of(inc) == world.named("report", "labA1")
    rev = (
        await c.get("/fhir/Patient", params={"_id": a, "_revinclude": "Observation:subject"}, headers=h)
    ).json()
    assert ids_of(rev) == world.named("A", "labA1", "labA2")
    everything = (await c.get(f"/fhir/Patient/{a}/$everything", headers=h)).json()
    assert ids_of(everything) == world.named("A", "labA1", "labA2", "report")
    assert everything["total"] == 4
    # a chain through the report cannot reach the hidden observation either
    chain = (await c.get("/fhir/DiagnosticReport", params={"result.code": "pulse"}, headers=h)).json()
    assert chain["total"] == 0


async def test_scopes_for_one_type_are_ored_and_an_unnarrowed_one_wins(world: World) -> None:
    c = world.client
    h = world.headers(f"user/Observation.rs?{LAB}&code=sodium user/Observation.rs?code=pulse")
    found = (await c.get("/fhir/Observation", headers=h)).json()
    assert ids_of(found) == world.named("labA2", "vitalA") and found["total"] == 2
    assert (await c.get(f"/fhir/Observation/{world.ids['labB']}", headers=h)).status_code == 404
    wide = world.headers(f"user/Observation.rs?{LAB} user/Observation.rs")
    assert (await c.get("/fhir/Observation", headers=wide)).json()["total"] == 4


@pytest.mark.parametrize(
    ("scope", "named"),
    [
        ("user/Observation.rs?subject=Patient/x", "subject"),  # a reference parameter
        ("user/Observation.rs?code:text=pulse", "code"),  # a modifier
        ("user/Observation.rs?no-such-param=1", "no-such-param"),
        ("user/Observation.cruds?category=laboratory", "writes"),  # a write scope
        ("user/*.rs?_security=R", "(*)"),
        ("user/Patient.rs?identifier=urn:mrn|123", "encrypted"),  # Patient.identifier is PHI
    ],
)
async def test_a_query_the_server_cannot_enforce_is_refused_at_verification(
    world: World, scope: str, named: str
) -> None:
    h = world.headers(f"user/Patient.rs {scope}")
    r = await world.client.get(f"/fhir/Patient/{world.ids['A']}", headers=h)
    assert r.status_code == 403
    issue = r.json()["issue"][0]
    assert issue["code"] == "not-supported" and named in issue["diagnostics"]
    assert scope.partition("?")[0] in issue["diagnostics"] and "not support" in issue["diagnostics"]
    value = scope.partition("=")[2]
    assert len(value) < 3 or value not in issue["diagnostics"]  # names the parameter, never its value
