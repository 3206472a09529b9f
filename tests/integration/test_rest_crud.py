"""The REST interactions a FHIR client relies on, over HTTP against the real app (SQLite and PostgreSQL)."""

from __future__ import annotations

import httpx
import pytest

FHIR = {"Content-Type": "application/fhir+json"}


def patient(family: str = "Smith", **extra: object) -> dict[str, object]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Anna"]}], **extra}


async def create(client: httpx.AsyncClient, resource: dict[str, object]) -> dict[str, object]:
    r = await client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_create_read_headers(any_client: httpx.AsyncClient) -> None:
    r = await any_client.post("/fhir/Patient", json=patient(), headers=FHIR)
    assert r.status_code == 201
    body = r.json()
    pid = body["id"]
    assert r.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert r.headers["etag"] == 'W/"1"'
    assert "GMT" in r.headers["last-modified"]
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert body["meta"]["versionId"] == "1"
    got = await any_client.get(f"/fhir/Patient/{pid}")
    assert got.status_code == 200
    assert got.json()["name"][0]["family"] == "Smith"
    assert got.headers["etag"] == 'W/"1"'
    not_modified = await any_client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert not_modified.status_code == 304


async def test_create_ignores_client_id(client: httpx.AsyncClient) -> None:
    body = await create(client, patient(id="chosen-by-client"))
    assert body["id"] != "chosen-by-client"


async def test_update_versions_and_vread(any_client: httpx.AsyncClient) -> None:
    body = await create(any_client, patient())
    pid = body["id"]
    body["name"][0]["family"] = "Jones"
    r = await any_client.put(f"/fhir/Patient/{pid}", json=body, headers=FHIR)
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"
    v1 = await any_client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.json()["name"][0]["family"] == "Smith"
    v2 = await any_client.get(f"/fhir/Patient/{pid}/_history/2")
    assert v2.json()["name"][0]["family"] == "Jones"
    assert (await any_client.get(f"/fhir/Patient/{pid}/_history/3")).status_code == 404
    assert (await any_client.get(f"/fhir/Patient/{pid}/_history/x")).status_code == 404


async def test_update_as_create(client: httpx.AsyncClient) -> None:
    r = await client.put("/fhir/Patient/p-new", json=patient(id="p-new"), headers=FHIR)
    assert r.status_code == 201
    assert r.headers["location"].endswith("/Patient/p-new/_history/1")


async def test_update_id_must_match(client: httpx.AsyncClient) -> None:
    r = await client.put("/fhir/Patient/a1", json=patient(id="b2"), headers=FHIR)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    missing = await client.put("/fhir/Patient/a1", json=patient(), headers=FHIR)
    assert missing.status_code == 400


async def test_delete_then_gone_and_history_keeps_it(any_client: httpx.AsyncClient) -> None:
    pid = (await create(any_client, patient()))["id"]
    r = await any_client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 204
    gone = await any_client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    again = await any_client.delete(f"/fhir/Patient/{pid}")
    assert again.status_code == 204
    hist = (await any_client.get(f"/fhir/Patient/{pid}/_history")).json()
    assert hist["total"] == 2
    assert hist["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in hist["entry"][0]
    assert (await any_client.delete("/fhir/Patient/never-was")).status_code == 404
    revived = await any_client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=FHIR)
    assert revived.status_code == 201
    assert revived.json()["meta"]["versionId"] == "3"


async def test_if_match(any_client: httpx.AsyncClient) -> None:
    body = await create(any_client, patient())
    pid = body["id"]
    stale = await any_client.put(f"/fhir/Patient/{pid}", json=body, headers={**FHIR, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    ok = await any_client.put(f"/fhir/Patient/{pid}", json=body, headers={**FHIR, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    bad = await any_client.put(f"/fhir/Patient/{pid}", json=body, headers={**FHIR, "If-Match": "garbage"})
    assert bad.status_code == 400


async def test_json_patch(any_client: httpx.AsyncClient) -> None:
    pid = (await create(any_client, patient(gender="female")))["id"]
    ops = [
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/active", "value": True},
    ]
    r = await any_client.patch(
        f"/fhir/Patient/{pid}", json=ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "male"
    assert r.json()["active"] is True
    assert r.json()["meta"]["versionId"] == "2"
    bad = await any_client.patch(
        f"/fhir/Patient/{pid}",
        json=[{"op": "remove", "path": "/nothing"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert bad.status_code == 422
    id_change = await any_client.patch(
        f"/fhir/Patient/{pid}",
        json=[{"op": "replace", "path": "/id", "value": "x"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert id_change.status_code == 422
    not_list = await any_client.patch(
        f"/fhir/Patient/{pid}", json={"op": "add"}, headers={"Content-Type": "application/json-patch+json"}
    )
    assert not_list.status_code == 400
    missing = await any_client.patch(
        "/fhir/Patient/nope", json=ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert missing.status_code == 404


async def test_prefer_return(client: httpx.AsyncClient) -> None:
    minimal = await client.post("/fhir/Patient", json=patient(), headers={**FHIR, "Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert "location" in minimal.headers
    oo = await client.post(
        "/fhir/Patient", json=patient(), headers={**FHIR, "Prefer": "return=OperationOutcome"}
    )
    assert oo.status_code == 201
    assert oo.json()["resourceType"] == "OperationOutcome"
    assert oo.json()["issue"][0]["severity"] == "information"


async def test_conditional_create(any_client: httpx.AsyncClient) -> None:
    res = patient(identifier=[{"system": "urn:mrn", "value": "123"}])
    first = await any_client.post(
        "/fhir/Patient", json=res, headers={**FHIR, "If-None-Exist": "identifier=urn:mrn|123"}
    )
    assert first.status_code == 201
    second = await any_client.post(
        "/fhir/Patient", json=res, headers={**FHIR, "If-None-Exist": "identifier=urn:mrn|123"}
    )
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    await create(any_client, res)  # now two match
    third = await any_client.post(
        "/fhir/Patient", json=res, headers={**FHIR, "If-None-Exist": "identifier=urn:mrn|123"}
    )
    assert third.status_code == 412


async def test_conditional_update_and_delete(any_client: httpx.AsyncClient) -> None:
    res = patient(identifier=[{"system": "urn:mrn", "value": "777"}])
    created = await any_client.put("/fhir/Patient?identifier=urn:mrn|777", json=res, headers=FHIR)
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = await any_client.put(
        "/fhir/Patient?identifier=urn:mrn|777", json={**res, "gender": "other"}, headers=FHIR
    )
    assert updated.status_code == 200
    assert updated.json()["id"] == pid
    deleted = await any_client.delete("/fhir/Patient?identifier=urn:mrn|777")
    assert deleted.status_code == 204
    assert (await any_client.get(f"/fhir/Patient/{pid}")).status_code == 410
    nothing = await any_client.delete("/fhir/Patient?identifier=urn:mrn|777")
    assert nothing.status_code == 204
    no_query = await any_client.delete("/fhir/Patient")
    assert no_query.status_code == 400


async def test_history_type_system_since_count(client: httpx.AsyncClient) -> None:
    a = await create(client, patient("A"))
    await create(client, {"resourceType": "Organization", "name": "Org"})
    a["gender"] = "female"
    await client.put(f"/fhir/Patient/{a['id']}", json=a, headers=FHIR)
    type_hist = (await client.get("/fhir/Patient/_history")).json()
    assert type_hist["type"] == "history"
    assert type_hist["total"] == 2
    system = (await client.get("/fhir/_history", params={"_count": "100"})).json()
    written = [e for e in system["entry"] if "/Provenance/" not in e["fullUrl"]]
    assert len(written) == 3 and system["total"] == 6  # and one Provenance per written version
    page = (await client.get("/fhir/_history", params={"_count": "1"})).json()
    assert len(page["entry"]) == 1
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    page2 = (await client.get(next_url)).json()
    assert len(page2["entry"]) == 1
    assert (
        page2["entry"][0]["fullUrl"] != page["entry"][0]["fullUrl"]
        or page2["entry"][0]["response"]["etag"] != page["entry"][0]["response"]["etag"]
    )
    future = (await client.get("/fhir/_history", params={"_since": "2999-01-01"})).json()
    assert future["total"] == 0
    bad = await client.get("/fhir/_history", params={"_since": "yesterday"})
    assert bad.status_code == 400
    assert (await client.get("/fhir/Patient/zzz/_history")).status_code == 404


async def test_summary_and_elements_on_read(client: httpx.AsyncClient) -> None:
    pid = (
        await create(
            client,
            patient(
                gender="female",
                text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            ),
        )
    )["id"]
    summary = (await client.get(f"/fhir/Patient/{pid}", params={"_summary": "true"})).json()
    assert "text" not in summary
    assert summary["gender"] == "female"
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    only = (await client.get(f"/fhir/Patient/{pid}", params={"_elements": "gender"})).json()
    assert "name" not in only
    assert only["gender"] == "female"
    bad = await client.get(f"/fhir/Patient/{pid}", params={"_summary": "nonsense"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status"),
    [
        ("post", "/fhir/Patient", {"content": b"{not json", "headers": FHIR}, 400),
        ("post", "/fhir/Patient", {"content": b"", "headers": FHIR}, 400),
        ("post", "/fhir/Patient", {"json": {"resourceType": "Observation"}, "headers": FHIR}, 400),
        ("post", "/fhir/Patient", {"json": [1, 2], "headers": FHIR}, 400),
        ("post", "/fhir/NotAType", {"json": {"resourceType": "NotAType"}, "headers": FHIR}, 404),
        ("get", "/fhir/NotAType/1", {}, 404),
        ("get", "/fhir/Patient/bad$id", {}, 400),
        ("get", "/fhir/Patient/missing", {}, 404),
        (
            "post",
            "/fhir/Patient",
            {"content": b"<Patient/>", "headers": {"Content-Type": "application/fhir+xml"}},
            415,
        ),
        ("get", "/fhir/Patient?_format=xml", {}, 406),
        ("get", "/fhir/metadata", {"headers": {"Accept": "application/fhir+xml"}}, 406),
        ("get", "/fhir/Patient?birthdate=notadate", {}, 400),
    ],
)
async def test_bad_input_gets_operation_outcome(
    client: httpx.AsyncClient, method: str, url: str, kwargs: dict[str, object], status: int
) -> None:
    r = await client.request(method.upper(), url, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    assert outcome["issue"][0]["code"]


async def test_oversized_body_is_413(sqlite_url: str) -> None:
    from tests.conftest import make_settings, open_client

    async for c in open_client(make_settings(sqlite_url, max_body_bytes=200)):
        big = patient(text={"status": "generated", "div": "<div>" + "x" * 500 + "</div>"})
        r = await c.post("/fhir/Patient", json=big, headers=FHIR)
        assert r.status_code == 413
        assert r.json()["issue"][0]["code"] == "too-costly"
        assert (await c.get("/fhir/Patient")).json()["total"] == 0


async def test_metadata_lists_types_and_search_params(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["fhirVersion"] == "4.0.1"
    resources = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert len(resources) > 140
    patient_params = {p["name"]: p["type"] for p in resources["Patient"]["searchParam"]}
    assert patient_params["birthdate"] == "date"
    assert patient_params["_id"] == "token"
    assert {"read", "vread", "patch", "history-instance"} <= {
        i["code"] for i in resources["Patient"]["interaction"]
    }
    assert {o["name"] for o in resources["Patient"]["operation"]} == {
        "validate",
        "provenance",
        "everything",
        "break-glass",
    }
    assert {i["code"] for i in resources["AuditEvent"]["interaction"]} == {"read", "search-type"}
    assert cs["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    written = await client.post("/fhir/AuditEvent", json={"resourceType": "AuditEvent"}, headers=FHIR)
    assert written.status_code == 405  # the audit trail is written by the server alone


async def test_health_ready_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    ready = await client.get("/ready")
    assert ready.status_code == 200
    metrics = await client.get("/metrics")
    assert "fhir_gateway_http_requests" in metrics.text


async def test_x_provenance_is_linked_not_duplicated(client: httpx.AsyncClient) -> None:
    import json as std_json

    mine = {
        "resourceType": "Provenance",
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"display": "registration desk"}}],
        "target": [{"reference": "Patient/placeholder"}],
    }
    r = await client.post(
        "/fhir/Patient", json=patient(), headers={**FHIR, "X-Provenance": std_json.dumps(mine)}
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    provs = (await client.get("/fhir/Provenance", params={"target": f"Patient/{pid}"})).json()
    by_agent = {
        e["resource"]["agent"][0].get("who", {}).get("display"): e["resource"] for e in provs["entry"]
    }
    theirs = by_agent.pop("registration desk")  # the client's own, stored as sent
    [ours] = by_agent.values()  # and the gateway's record of the write, which links to it as its source
    assert {"what": {"reference": f"Provenance/{theirs['id']}"}, "role": "source"} in ours["entity"]
    bad = await client.post("/fhir/Patient", json=patient(), headers={**FHIR, "X-Provenance": "{nope"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["X-Provenance"]
    lineage = (await client.get(f"/fhir/Patient/{pid}/$provenance")).json()
    assert lineage["resourceType"] == "Bundle" and lineage["entry"]
