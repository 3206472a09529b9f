"""A stolen database file must not reveal who the patients are: after writes through the API, none of
the PHI values appears in the raw bytes of the SQLite file (resources, history, index rows, audit),
while the API still reads them back and finds the patient by exact identifier and name."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_settings, open_client

FHIR = {"Content-Type": "application/fhir+json"}
PHI = ["Zebulon", "Quixotic", "MRN-778899", "555-0199", "Wisteria Lane", "Springfieldia", "1931-04-05"]


async def test_no_phi_in_the_database_file(tmp_path: Path) -> None:
    db = tmp_path / "phi.db"
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "MRN-778899"}],
        "name": [{"family": "Quixotic", "given": ["Zebulon"]}],
        "telecom": [{"system": "phone", "value": "555-0199"}],
        "address": [{"line": ["12 Wisteria Lane"], "city": "Springfieldia", "state": "MA"}],
        "birthDate": "1931-04-05",
    }
    async for client in open_client(make_settings(f"sqlite+aiosqlite:///{db}")):
        created = await client.post("/fhir/Patient", json=patient, headers=FHIR)
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        patient["id"] = pid
        patient["gender"] = "female"
        assert (await client.put(f"/fhir/Patient/{pid}", json=patient, headers=FHIR)).status_code == 200
        read = (await client.get(f"/fhir/Patient/{pid}")).json()
        assert read["name"][0]["family"] == "Quixotic" and read["birthDate"] == "1931-04-05"
        for query in (
            {"identifier": "urn:mrn|MRN-778899"},
            {"family:exact": "Quixotic"},
            {"birthdate": "1931-04-05"},
        ):
            assert (await client.get("/fhir/Patient", params=query)).json()["total"] == 1, query
        refused = await client.get("/fhir/Patient", params={"family": "Quix"})
        assert refused.status_code == 400 and refused.json()["issue"][0]["code"] == "not-supported"
        assert "Quix" not in refused.text  # the refusal does not echo the value
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("phi.db*"))
    assert len(stored) > 10_000
    leaked = [value for value in PHI if value.encode() in stored or value.lower().encode() in stored]
    assert leaked == []
