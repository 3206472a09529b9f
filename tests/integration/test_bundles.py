"""Transaction and batch Bundles.

Atomicity, ordering, urn:uuid and conditional references, per-entry answers.
"""

from __future__ import annotations

import base64

import httpx
import orjson

FHIR = {"Content-Type": "application/fhir+json"}


def tx(*entries: dict[str, object], kind: str = "transaction") -> dict[str, object]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


async def test_transaction_resolves_urn_uuid_and_answers_in_order(any_client: httpx.AsyncClient) -> None:
    bundle = tx(
        {
            "fullUrl": "urn:uuid:obs-1",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "t"},
                "subject": {"reference": "urn:uuid:pat-1"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "fullUrl": "urn:uuid:pat-1",
            "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
            "request": {"method": "POST", "url": "Patient"},
        },
    )
    r = await any_client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["type"] == "transaction-response"
    obs_entry, pat_entry = resp["entry"]
    assert obs_entry["response"]["status"].startswith("201")
    pat_loc = pat_entry["response"]["location"]
    assert pat_loc.startswith("Patient/")
    pid = pat_loc.split("/")[1]
    obs = (
        await any_client.get("/fhir/" + obs_entry["response"]["location"].rsplit("/_history", 1)[0])
    ).json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"


async def test_transaction_is_atomic(any_client: httpx.AsyncClient) -> None:
    bundle = tx(
        {
            "resource": {"resourceType": "Patient", "name": [{"family": "Kept?"}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "resource": {"resourceType": "Patient", "id": "x"},
            "request": {"method": "PUT", "url": "Patient/y"},
        },
    )
    r = await any_client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.id"] or "Bundle.entry[1]" in str(r.json())
    assert (await any_client.get("/fhir/Patient")).json()["total"] == 0


async def test_transaction_conditional_reference_and_if_none_exist(any_client: httpx.AsyncClient) -> None:
    await any_client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]},
        headers=FHIR,
    )
    bundle = tx(
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "hb"},
                "subject": {"reference": "Patient?identifier=urn:mrn|42"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "fullUrl": "urn:uuid:p2",
            "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]},
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|42"},
        },
    )
    r = await any_client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    obs_entry, pat_entry = r.json()["entry"]
    assert pat_entry["response"]["status"].startswith("200")
    pid = pat_entry["resource"]["id"]
    obs = obs_entry["resource"]
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert (await any_client.get("/fhir/Patient")).json()["total"] == 1
    missing = tx(
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient?identifier=urn:mrn|nope"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
    )
    assert (await any_client.post("/fhir", json=missing, headers=FHIR)).status_code == 404


async def test_transaction_processing_order_delete_before_create(client: httpx.AsyncClient) -> None:
    await client.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=FHIR)
    bundle = tx(
        {"request": {"method": "GET", "url": "Patient/p1"}},
        {
            "resource": {"resourceType": "Patient", "id": "p1", "gender": "male"},
            "request": {"method": "PUT", "url": "Patient/p1"},
        },
        {"request": {"method": "DELETE", "url": "Patient/p1"}},
    )
    r = await client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    get_entry, put_entry, delete_entry = r.json()["entry"]
    assert delete_entry["response"]["status"].startswith("204")
    assert put_entry["response"]["etag"] == 'W/"3"'  # delete (v2) came first, then the update (v3)
    assert get_entry["resource"]["gender"] == "male"  # GET runs last


async def test_transaction_patch_entry_with_binary(client: httpx.AsyncClient) -> None:
    await client.put("/fhir/Patient/p9", json={"resourceType": "Patient", "id": "p9"}, headers=FHIR)
    patch = base64.b64encode(orjson.dumps([{"op": "add", "path": "/gender", "value": "female"}])).decode()
    bundle = tx(
        {
            "resource": {
                "resourceType": "Binary",
                "contentType": "application/json-patch+json",
                "data": patch,
            },
            "request": {"method": "PATCH", "url": "Patient/p9"},
        }
    )
    r = await client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    assert (await client.get("/fhir/Patient/p9")).json()["gender"] == "female"


async def test_batch_entries_are_independent(any_client: httpx.AsyncClient) -> None:
    bundle = tx(
        {
            "resource": {"resourceType": "Patient", "name": [{"family": "Ok"}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/none"}},
        {"request": {"method": "GET", "url": "Patient?family:exact=Ok"}},
        {"request": {"method": "GET", "url": "Patient?family=Ok"}},
        kind="batch",
    )
    r = await any_client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 200
    entries = r.json()["entry"]
    assert r.json()["type"] == "batch-response"
    assert entries[0]["response"]["status"].startswith("201")
    assert entries[1]["response"]["status"] == "400"
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["response"]["status"] == "404"
    assert entries[3]["resource"]["type"] == "searchset" and entries[3]["resource"]["total"] == 1
    # names are encrypted at rest: exact search works on their blind index, prefix search is refused
    assert entries[4]["response"]["status"] == "400"
    assert entries[4]["response"]["outcome"]["issue"][0]["code"] == "not-supported"
    assert (await any_client.get("/fhir/Patient")).json()["total"] == 1


async def test_bad_bundles(client: httpx.AsyncClient) -> None:
    cases = [
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "type": "collection"},
        {"resourceType": "Bundle", "type": "transaction", "entry": {}},
        tx({"resource": {"resourceType": "Patient"}}),
        tx({"request": {"method": "FETCH", "url": "Patient"}}),
        tx({"request": {"method": "POST"}}),
        tx({"request": {"method": "POST", "url": "Nope"}}),
        tx({"request": {"method": "PUT", "url": "Patient/1/$validate"}}),
        tx(
            {
                "fullUrl": "urn:uuid:a",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:a",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ),
    ]
    for bundle in cases:
        r = await client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code in (400, 404), (bundle, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    assert (await client.get("/fhir/Patient")).json()["total"] == 0
