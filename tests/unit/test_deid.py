"""HIPAA Safe Harbor de-identification: each identifier kind, dates, links, free text, the report."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_gateway.ingest.hl7v2 import er7
from fhir_gateway.ingest.hl7v2.messages import map_message
from fhir_gateway.privacy.deid import (
    AGE_90_PLUS,
    PSEUDONYM_SYSTEM,
    DeidConfig,
    deidentify,
    installation_key,
    k_anonymity,
)
from fhir_gateway.privacy.deid_cli import deidentify_files

KEY = installation_key("test secret")
CORPUS = Path("/work/shared/corpus/hl7v2/messages")


def patient(pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
            {"system": "urn:oid:1.2.3", "value": "MRN77881", "type": {"text": "MRN"}},
        ],
        "name": [{"family": "Quixote", "given": ["Alonso", "Q"]}],
        "telecom": [
            {"system": "phone", "value": "555-201-7788"},
            {"system": "fax", "value": "555-201-7799"},
            {"system": "email", "value": "alonso@example.org"},
            {"system": "url", "value": "https://alonso.example.org"},
        ],
        "gender": "male",
        "birthDate": "1980-04-15",
        "address": [
            {
                "line": ["12 Windmill Road"],
                "city": "Toboso",
                "district": "La Mancha",
                "state": "NM",
                "postalCode": "87501",
                "country": "US",
                "text": "12 Windmill Road, Toboso",
            }
        ],  # fmt: skip
        "photo": [{"contentType": "image/jpeg", "data": "AAAA"}],
        "contact": [
            {"name": {"family": "Panza", "given": ["Sancho"]}, "telecom": [{"value": "555-000-1111"}]}
        ],
        **extra,
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "collection",
        "link": [{"relation": "self", "url": "https://ehr.example.org/fhir/Patient?name=Quixote"}],
        "entry": [
            {"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
        ],
    }


def observation(oid: str, pid: str, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}", "display": "Alonso Quixote"},
        "effectiveDateTime": when,
        **extra,
    }


def strings(node: Any) -> list[str]:
    return [s for s in re.findall(r'"((?:[^"\\]|\\.)*)"', json.dumps(node))]


def run(data: dict[str, Any], **config: Any) -> Any:
    return deidentify(data, key=KEY, config=DeidConfig(**config) if config else None)


def test_names_everywhere_are_removed() -> None:
    practitioner = {"resourceType": "Practitioner", "id": "dr", "name": [{"text": "Dr Miguel Cervantes"}]}
    related = {
        "resourceType": "RelatedPerson",
        "id": "rp",
        "patient": {"reference": "Patient/p1"},
        "name": [{"family": "Panza"}],
    }
    maiden = {
        "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
        "valueString": "Lorenzo",
    }
    out = run(bundle(patient(extension=[maiden]), practitioner, related))
    text = json.dumps(out.data)
    for name in ("Quixote", "Alonso", "Panza", "Sancho", "Cervantes", "Miguel", "Lorenzo"):
        assert name not in text
    assert out.report.counts["names"] == 5
    assert all("name" not in e["resource"] for e in out.data["entry"])


def test_address_keeps_state_and_zip3() -> None:
    out = run(patient()).data
    assert out["address"] == [{"state": "NM", "country": "US", "postalCode": "875"}]


@pytest.mark.parametrize("zip_code", ["03601", "05901", "89301-1234", "82100"])
def test_restricted_zip3_becomes_000(zip_code: str) -> None:
    data = patient(address=[{"postalCode": zip_code, "state": "NH"}])
    assert run(data).data["address"][0]["postalCode"] == "000"


def test_non_us_postal_code_is_removed() -> None:
    data = patient(address=[{"postalCode": "SW1A 1AA", "country": "GB", "city": "London"}])
    assert run(data).data["address"] == [{"country": "GB"}]


def test_telecom_photo_and_attachments_are_removed() -> None:
    doc = {
        "resourceType": "DocumentReference",
        "id": "d",
        "subject": {"reference": "Patient/p1"},
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": "https://x.org/d.pdf",
                    "data": "JVBERi0=",
                    "title": "Scan",
                }
            }
        ],
    }
    out = run(bundle(patient(), doc))
    pat, ref = (e["resource"] for e in out.data["entry"])
    assert "telecom" not in pat and "photo" not in pat and "telecom" not in pat["contact"][0]
    assert ref["content"] == [{"attachment": {"contentType": "application/pdf", "title": "Scan"}}]
    assert out.report.counts["telecom"] == 5 and out.report.counts["photos"] == 1
    assert out.report.counts["attachments"] == 1


def test_identifiers_become_keyed_pseudonyms() -> None:
    device = {
        "resourceType": "Device",
        "id": "dev",
        "patient": {"reference": "Patient/p1"},
        "serialNumber": "SN-998877",
        "udiCarrier": [{"deviceIdentifier": "0088442211", "carrierHRF": "(01)00884"}],
        "identifier": [{"system": "urn:licence", "value": "LIC-5"}],
    }
    coverage = {
        "resourceType": "Coverage",
        "id": "cov",
        "beneficiary": {"reference": "Patient/p1"},
        "subscriberId": "PLAN-4455",
        "identifier": [{"value": "ACCT-0091"}],
    }
    first = run(bundle(patient(), device, coverage)).data
    second = run(bundle(patient(), device, coverage)).data
    assert first == second  # keyed, deterministic
    text = json.dumps(first)
    for value in (
        "123-45-6789",
        "MRN77881",
        "SN-998877",
        "0088442211",
        "(01)00884",
        "LIC-5",
        "PLAN-4455",
        "ACCT-0091",
    ):
        assert value not in text
    ident = first["entry"][0]["resource"]["identifier"][1]
    assert ident["system"] == PSEUDONYM_SYSTEM and ident["type"] == {"text": "MRN"}
    other_key = deidentify(patient(), key=installation_key("other"))
    assert other_key.data["identifier"] != first["entry"][0]["resource"]["identifier"]


def test_dates_shift_by_one_offset_per_patient() -> None:
    data = bundle(
        patient("p1"),
        patient("p2"),
        observation("o1", "p1", "2020-01-10T08:00:00Z"),
        observation("o2", "p1", "2020-01-20T08:00:00Z"),
        observation("o3", "p2", "2020-01-10T08:00:00Z"),
    )
    out = run(data)
    entries = [e["resource"] for e in out.data["entry"]]
    o1, o2, o3 = (dt.datetime.fromisoformat(e["effectiveDateTime"]) for e in entries[2:])
    assert o2 - o1 == dt.timedelta(days=10)  # intervals of one patient survive
    born = dt.date.fromisoformat(entries[0]["birthDate"])
    assert (o1.date() - born) == dt.date(2020, 1, 10) - dt.date(1980, 4, 15)  # across resources too
    assert o1 != dt.datetime(2020, 1, 10, 8, tzinfo=dt.UTC) and o1 != o3
    assert entries[2]["effectiveDateTime"].endswith("T08:00:00Z")
    assert out.report.counts["dates_shifted"] == 5


def test_year_mode_keeps_only_years() -> None:
    obs = observation("o1", "p1", "2020-01-10T08:00:00Z", issued="2020-01-11T09:00:00Z")
    obs["effectivePeriod"] = {"start": "2020-02", "end": "2021"}
    out = run(bundle(patient(), obs), dates="year")
    pat, o = (e["resource"] for e in out.data["entry"])
    assert pat["birthDate"] == "1980"
    assert o["effectiveDateTime"] == "2020" and o["issued"] == "2020-01-01T00:00:00Z"
    assert o["effectivePeriod"] == {"start": "2020", "end": "2021"}
    assert out.report.label == "ANONYED"
    assert o["meta"]["security"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "ANONYED"}
    ]


def test_month_precision_dates_shift_and_keep_precision() -> None:
    out = run(patient(birthDate="1980-04"))
    assert re.fullmatch(r"\d{4}-\d{2}", out.data["birthDate"])


def test_ages_over_89_are_aggregated() -> None:
    old = patient(birthDate="1920-06-01")
    obs = observation("o", "p1", "2020-01-01", valueQuantity={"value": 97, "unit": "years", "code": "a"})
    out = run(bundle(old, obs), reference_year=2024)
    pat, o = (e["resource"] for e in out.data["entry"])
    assert "birthDate" not in pat
    assert pat["_birthDate"]["extension"][0]["valueCode"] == "masked"
    assert {"url": AGE_90_PLUS, "valueBoolean": True} in pat["extension"]
    assert o["valueQuantity"] == {"value": 90, "comparator": ">=", "unit": "years", "code": "a"}
    assert out.report.counts["ages_over_89"] == 2
    young = run(patient(birthDate="1935-01-01"), reference_year=2024).data
    assert "birthDate" in young


def test_references_and_ids_are_consistent_across_a_bundle() -> None:
    obs = observation("o1", "p1", "2020-01-10")
    obs["performer"] = [{"reference": "https://ehr.example.org/fhir/Practitioner/dr/_history/2"}]
    obs["hasMember"] = [{"reference": "urn:uuid:0f6d2b1e-0000-4000-8000-000000000001"}]
    obs["derivedFrom"] = [{"reference": "not a reference"}, {"reference": "#contained-1"}]
    practitioner = {"resourceType": "Practitioner", "id": "dr"}
    out = run(bundle(patient(), obs, practitioner)).data
    pat, o, pr = (e["resource"] for e in out["entry"])
    assert o["subject"] == {"reference": f"Patient/{pat['id']}"}  # display (a name) removed
    assert pat["id"] != "p1" and re.fullmatch(r"[0-9a-f]{32}", pat["id"])
    assert out["entry"][0]["fullUrl"] == f"https://deid.invalid/fhir/Patient/{pat['id']}"
    assert o["performer"] == [{"reference": f"https://deid.invalid/fhir/Practitioner/{pr['id']}"}]
    assert o["hasMember"][0]["reference"].startswith("urn:uuid:")
    assert o["derivedFrom"] == [{"reference": "#contained-1"}]
    assert "link" not in out and out["id"] != "b1"


def test_urn_uuid_links_survive_in_transactions() -> None:
    pat = patient()
    del pat["id"]
    obs = observation("o1", "p1", "2020-01-10T00:00:00Z")
    obs["subject"] = {"reference": "urn:uuid:11111111-2222-4333-8444-555555555555"}
    data = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-2222-4333-8444-555555555555",
                "resource": pat,
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=MRN77881"},
            },
            {
                "fullUrl": "urn:uuid:9",
                "resource": obs,
                "request": {"method": "PUT", "url": "Observation?identifier=x|MRN77881"},
            },
        ],
    }
    other = observation("o2", "p1", "2020-01-20T00:00:00Z")
    other["subject"] = dict(obs["subject"])
    data["entry"].append({"fullUrl": "urn:uuid:10", "resource": other})
    out = run(data).data
    first, second, third = out["entry"]
    assert second["resource"]["subject"]["reference"] == first["fullUrl"] != data["entry"][0]["fullUrl"]
    assert first["request"] == {"method": "POST", "url": "Patient"}
    assert second["request"] == {"method": "PUT", "url": "Observation"}
    days = dt.datetime.fromisoformat(third["resource"]["effectiveDateTime"]) - dt.datetime.fromisoformat(
        second["resource"]["effectiveDateTime"]
    )
    assert days == dt.timedelta(days=10)


def test_free_text_is_scrubbed_of_what_the_record_knows() -> None:
    note = (
        "Alonso Quixote (MRN77881) seen 2020-01-10 with Sancho; call 555-201-7788 or (505) 555-0101, "
        "mail alonso@example.org, see https://ehr.example.org/x from 10.1.2.3; SSN 987-65-4321; "
        "lives at 12 Windmill Road; visit on 3/4/2021, 4 March 2021, and 20200110. Vital signs stable."
    )
    obs = observation("o1", "p1", "2020-01-10", note=[{"text": note}])
    obs["text"] = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><b>Quixote</b> &amp; co</div>',
    }
    out = run(bundle(patient(), obs))
    o = out.data["entry"][1]["resource"]
    scrubbed = o["note"][0]["text"]
    for leaked in ("Alonso", "Quixote", "MRN77881", "Sancho", "2020-01-10", "555", "alonso@", "ehr.example",
                   "10.1.2.3", "987-65", "Windmill", "3/4/2021", "March", "20200110"):  # fmt: skip
        assert leaked not in scrubbed, leaked
    assert "Vital signs stable." in scrubbed and "[NAME]" in scrubbed and "[ID]" in scrubbed
    assert o["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml">[NAME] &amp; co</div>'
    assert out.report.counts["narratives"] == 1 and out.report.counts["free_text"] >= 2


def test_network_addresses_and_unique_codes_go() -> None:
    event = {
        "resourceType": "AuditEvent",
        "id": "a",
        "recorded": "2020-01-01T00:00:00Z",
        "meta": {
            "versionId": "3",
            "source": "https://ehr.example.org",
            "security": ["bad", {"code": "PSEUDED"}],
        },
        "agent": [{"requestor": True, "network": {"address": "10.0.0.7", "type": "2"}}],
    }
    loc = {
        "resourceType": "Location",
        "id": "l",
        "position": {"latitude": 1.0, "longitude": 2.0},
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme"}],
    }
    out = run(bundle(event, loc), dates="year")
    ev, lo = (e["resource"] for e in out.data["entry"])
    assert ev["agent"] == [{"requestor": True, "network": {"type": "2"}}]
    assert ev["meta"] == {
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "ANONYED"}
        ]
    }
    assert "position" not in lo and lo["contained"][0]["id"] == "org1"  # local ids stay with #refs
    assert out.report.counts["network_addresses"] == 1 and out.report.counts["geo_positions"] == 1


def test_keep_paths_leave_elements_untouched() -> None:
    data = bundle(patient(), observation("o1", "p1", "2020-01-10T08:00:00Z"))
    keep = (
        "Patient.address.city",
        "Patient.address.postalCode",
        "Observation.effective[x]",
        "Patient.id",
        "Patient.identifier.value",
        "Patient.birthDate",
    )
    out = run(data, keep=keep, dates="year", reference_year=2100)
    pat, obs = (e["resource"] for e in out.data["entry"])
    assert pat["address"][0]["city"] == "Toboso" and pat["address"][0]["postalCode"] == "87501"
    assert obs["effectiveDateTime"] == "2020-01-10T08:00:00Z" and pat["id"] == "p1"
    assert pat["birthDate"] == "1980-04-15"
    assert pat["identifier"][1]["value"] == "MRN77881"
    assert out.report.label == "PSEUDED"


def test_input_is_not_mutated() -> None:
    data = bundle(patient(), observation("o1", "p1", "2020-01-10"))
    before = copy.deepcopy(data)
    run(data)
    assert data == before


def test_k_anonymity_over_quasi_identifiers() -> None:
    people = [
        patient("a", gender="female", birthDate="1980-01-01"),
        patient("b", gender="female", birthDate="1980-01-01"),
        patient("c", gender="male", birthDate="1920-01-01"),
        patient("d", gender="male", birthDate="1920-01-01", address=[]),
    ]
    report = run(bundle(*people), dates="year", reference_year=2024).report
    assert (report.k_anonymity.k, report.k_anonymity.patients, report.k_anonymity.classes) == (1, 4, 3)
    assert report.to_json()["kAnonymity"] == {"k": 1, "patients": 4, "classes": 3}
    assert k_anonymity({"resourceType": "Observation"}).k is None


def test_odd_input_does_not_crash() -> None:
    out = run(
        {"resourceType": "Patient", "meta": "x", "birthDate": "soon", "name": "plain", "extension": [1]}
    )
    assert out.data["meta"]["security"][0]["code"] == "PSEUDED"
    assert run({"resourceType": "Bundle", "entry": ["x", {"resource": 3}]}).data["entry"] == [
        "x",
        {"resource": 3},
    ]
    endpoint = {
        "resourceType": "Endpoint",
        "address": "https://10.0.0.1/fhir",
        "_address": {"id": "a1"},
        "subject": {"reference": 5},
        "identifier": [{"system": "urn:x"}, {"use": "old", "value": "E-1"}],
    }
    out = run(endpoint).data
    assert "address" not in out and "_address" not in out and out["subject"] == {"reference": 5}
    assert out["identifier"] == [
        {"use": "old", "system": PSEUDONYM_SYSTEM, "value": out["identifier"][0]["value"]}
    ]


def hl7_identifiers(raw: bytes) -> tuple[set[str], set[str]]:
    """PID-5 names, PID-3 ids, PID-13 phones (tokens) and PID-7 birth dates of one ER7 message."""
    tokens: set[str] = set()
    dates: set[str] = set()
    for segment in raw.decode("latin-1").replace("\n", "\r").split("\r"):
        fields = [*segment.split("|"), *[""] * 20]
        if fields[0] != "PID":
            continue
        for rep in fields[5].split("~"):
            parts = rep.split("^")
            tokens |= {parts[0].split("&")[0], *(parts[1:3])}
        tokens |= {rep.split("^")[0] for rep in fields[3].split("~")}
        for rep in fields[13].split("~"):
            parts = rep.split("^")
            tokens |= {parts[i] for i in (0, 3, 6, 11) if i < len(parts)}
        birth = fields[7][:8]
        if len(birth) == 8:
            dates |= {birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"}
    return {t for t in tokens if len(t) >= 3}, dates


def test_corpus_messages_leave_no_known_identifier() -> None:
    checked = 0
    for path in sorted(CORPUS.glob("*")):
        raw = path.read_bytes()
        tokens, dates = hl7_identifiers(raw)
        mapped = map_message(er7.parse(raw))
        text = orjson.dumps(deidentify(mapped.bundle, key=KEY).data).decode()
        for token in tokens:
            assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(token)}(?![0-9A-Za-z])", text, re.I), (
                path,
                token,
            )
        for date in dates:
            assert date not in text, (path, date)
        checked += bool(tokens)
    assert checked >= 30


def test_cli_writes_deidentified_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.json").write_bytes(orjson.dumps(patient()))
    (tmp_path / "bad.json").write_text("{not json")
    out = tmp_path / "out"
    assert deidentify_files([tmp_path / "p.json"], out, "year") == 0
    written = orjson.loads((out / "p.json").read_bytes())
    assert written["birthDate"] == "1980" and "name" not in written
    assert "ANONYED" in capsys.readouterr().err
    assert deidentify_files([tmp_path / "p.json", tmp_path / "bad.json"], None, "shift") == 1
    captured = capsys.readouterr()
    assert orjson.loads(captured.out)["meta"]["security"][0]["code"] == "PSEUDED"
    assert "bad.json: not readable" in captured.err and "{not json" not in captured.err
    assert deidentify_files([], None, "month") == 2
