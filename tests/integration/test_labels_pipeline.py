"""The labels stage in a real server: labels are stored, searchable with `_security`, and propagate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.privacy.labels import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM, LABEL_RULES_SYSTEM
from tests.conftest import make_settings, open_client

STAGE = "fhir_gateway.privacy.labels:labels_stage"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"


def entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def observation(code: str, system: str = LOINC) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "urn:uuid:pat"},
    }


BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        entry("urn:uuid:pat", {"resourceType": "Patient", "name": [{"family": "Doe"}]}),
        entry("urn:uuid:psy", observation("F32.9", ICD10CM)),
        entry("urn:uuid:lab", observation("2345-7")),
        entry(
            "urn:uuid:rep",
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "11502-2"}]},
                "subject": {"reference": "urn:uuid:pat"},
                "result": [{"reference": "urn:uuid:psy"}, {"reference": "urn:uuid:lab"}],
            },
        ),
    ],
}


def codes(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in resource["meta"]["security"]}


async def test_labels_are_stored_searchable_and_propagated(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/gw.db", pipeline=[STAGE], security={"allow_anonymous": True}
    )
    async for client in open_client(settings):
        response = await client.post("/fhir", json=BUNDLE)
        assert response.status_code == 200, response.text
        locations = [e["response"]["location"].split("/_history")[0] for e in response.json()["entry"]]
        patient, psy, lab, report = [(await client.get(f"/fhir/{loc}")).json() for loc in locations]

        assert (CONFIDENTIALITY_SYSTEM, "N") in codes(patient)
        assert {(CONFIDENTIALITY_SYSTEM, "R"), (ACT_CODE_SYSTEM, "PSY")} <= codes(psy)
        assert codes(lab) == {(CONFIDENTIALITY_SYSTEM, "N")}
        assert {(CONFIDENTIALITY_SYSTEM, "R"), (ACT_CODE_SYSTEM, "PSY")} <= codes(report)  # inherited
        assert {"system": LABEL_RULES_SYSTEM, "code": "labels-v1"} in psy["meta"]["tag"]

        found = await client.get("/fhir/Observation", params={"_security": f"{ACT_CODE_SYSTEM}|PSY"})
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [psy["id"]]
        tagged = await client.get(
            "/fhir/DiagnosticReport", params={"_tag": f"{LABEL_RULES_SYSTEM}|labels-v1"}
        )
        assert [e["resource"]["id"] for e in tagged.json()["entry"]] == [report["id"]]

        # a clinician treating the patient is not cleared for PSY: the labelled ones stay hidden
        token = mint_token(
            settings, sub="Practitioner/1", roles=["clinician"], scope="user/*.rs", purpose=["TREAT"]
        )
        clinician = {"Authorization": f"Bearer {token}"}
        seen = await client.get("/fhir/Observation", headers=clinician)
        assert [e["resource"]["id"] for e in seen.json().get("entry", [])] == [lab["id"]]
        hidden = await client.get(f"/fhir/DiagnosticReport/{report['id']}", headers=clinician)
        assert hidden.status_code == 404


async def test_a_client_cannot_lower_labels_by_update(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/gw.db", pipeline=[STAGE], security={"allow_anonymous": True}
    )
    async for client in open_client(settings):
        created = await client.post("/fhir/Observation", json=observation("F10.20", ICD10CM))
        body = created.json()
        body["meta"]["security"] = [{"system": CONFIDENTIALITY_SYSTEM, "code": "L"}]
        updated = await client.put(f"/fhir/Observation/{body['id']}", json=body)
        assert updated.status_code == 200, updated.text
        assert {(CONFIDENTIALITY_SYSTEM, "R"), (ACT_CODE_SYSTEM, "SUD")} <= codes(updated.json())
        assert (CONFIDENTIALITY_SYSTEM, "L") not in codes(updated.json())


async def test_a_report_before_its_results_in_the_bundle_still_inherits(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/gw.db", pipeline=[STAGE], security={"allow_anonymous": True}
    )
    reordered = {**BUNDLE, "entry": [BUNDLE["entry"][i] for i in (0, 3, 1, 2)]}
    async for client in open_client(settings):
        response = await client.post("/fhir", json=copy.deepcopy(reordered))
        location = response.json()["entry"][1]["response"]["location"].split("/_history")[0]
        report = (await client.get(f"/fhir/{location}")).json()
        assert (ACT_CODE_SYSTEM, "PSY") in codes(report)
