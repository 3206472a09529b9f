"""Segment mappers: what a v2 message becomes in FHIR (IG segment maps), one concept per test."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.messages import MappedMessage, check_supported, map_message

MSH = "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240301101500+0100||{type}|MSG{n}|P|2.5.1\r"
PID = (
    "PID|1||MRN1^^^HOSP^MR~999-99-9999^^^SSA^SS||Doe^Jane^Q^Jr^Dr^^L||19800215|F|||"
    "1 Main St^Apt 2^Town^ST^12345^USA^H||^PRN^PH^^1^555^1234567~^NET^Internet^jane@example.org|"
    "^WPN^PH^^^555^7654321|en^English^ISO6391|M||ACC9^^^HOSP^AN|123-45-6789|||||Y|2||||20240301\r"
)


def seg(name: str, **fields: str) -> str:
    """A segment from `f<n>=value` keywords, so tests name fields by number instead of counting bars."""
    numbered = {int(k[1:]): v for k, v in fields.items()}
    return "|".join([name, *(numbered.get(i, "") for i in range(1, max(numbered) + 1))])


def mapped(type_: str, *segments: str, n: int = 1) -> MappedMessage:
    return map_message(parse(MSH.format(type=type_, n=n) + PID + "\r".join(segments)))


def resources(result: MappedMessage, res_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == res_type]


def one(result: MappedMessage, res_type: str) -> dict[str, Any]:
    found = resources(result, res_type)
    assert len(found) == 1, (res_type, len(found))
    return found[0]


def test_bundle_is_one_transaction_of_puts_with_urn_uuid_references() -> None:
    result = mapped("ADT^A01", "PV1|1|I|W^1^2||||||||||||||||V1^^^HOSP^VN")
    bundle = result.bundle
    assert bundle["type"] == "transaction" and bundle["identifier"] == {"value": "MSG1"}
    assert bundle["timestamp"] == "2024-03-01T10:15:00+01:00"
    for entry in bundle["entry"]:
        res = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}
        assert entry["fullUrl"].startswith("urn:uuid:")
    patient_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert one(result, "Encounter")["subject"] == {"reference": patient_url}


def test_pid_to_patient() -> None:
    patient = one(mapped("ADT^A08"), "Patient")
    assert patient["id"] == stable_id("Patient", "HOSP", "MRN1")
    mrn = patient["identifier"][0]
    assert (
        mrn["value"] == "MRN1"
        and mrn["type"]["coding"][0]["code"] == "MR"
        and mrn["assigner"]["display"] == "HOSP"
    )
    ssn = next(i for i in patient["identifier"] if i.get("system") == "http://hl7.org/fhir/sid/us-ssn")
    assert ssn["value"] == "123-45-6789"
    assert any(i["value"] == "ACC9" and i["type"]["coding"][0]["code"] == "AN" for i in patient["identifier"])
    assert patient["name"] == [
        {"family": "Doe", "given": ["Jane", "Q"], "suffix": ["Jr"], "prefix": ["Dr"], "use": "official"}
    ]
    assert patient["gender"] == "female" and patient["birthDate"] == "1980-02-15"
    assert patient["address"][0] == {
        "line": ["1 Main St", "Apt 2"],
        "city": "Town",
        "state": "ST",
        "postalCode": "12345",
        "country": "USA",
        "use": "home",
    }
    assert {"system": "phone", "value": "1 555 1234567", "use": "home"} in patient["telecom"]
    assert {"system": "email", "value": "jane@example.org", "use": "work"} in patient["telecom"]
    assert {"system": "phone", "value": "555 7654321", "use": "work"} in patient["telecom"]
    assert patient["communication"][0]["language"]["coding"][0]["code"] == "en"
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["multipleBirthInteger"] == 2
    assert patient["deceasedDateTime"] == "2024-03-01"


@pytest.mark.parametrize(
    ("sex", "gender"), [("M", "male"), ("F", "female"), ("O", "other"), ("U", "unknown")]
)
def test_gender_table_0001(sex: str, gender: str) -> None:
    msg = parse(MSH.format(type="ADT^A04", n=1) + f"PID|1||X^^^A||N^G||2001|{sex}\r")
    assert one(map_message(msg), "Patient")["gender"] == gender


def test_unknown_gender_and_bad_birth_date_are_warnings_not_failures() -> None:
    result = map_message(parse(MSH.format(type="ADT^A04", n=1) + "PID|1||X^^^A||N^G||20011345|Q\r"))
    patient = one(result, "Patient")
    assert "gender" not in patient and "birthDate" not in patient
    assert not result.failed
    assert {(i.code, i.location, i.severity) for i in result.issues} == {
        ("103", "PID-8", "W"),
        ("102", "PID-7", "W"),
    }


def test_missing_patient_identifier_fails_the_message() -> None:
    result = map_message(parse(MSH.format(type="ADT^A01", n=1) + "PID|1||||Doe^J\rPV1|1|I\r"))
    assert result.failed
    [issue] = result.issues
    assert (issue.code, issue.segment, issue.sequence, issue.field) == ("101", "PID", 1, 3)
    assert "Doe" not in issue.text


def test_pid2_is_the_key_for_v23_senders() -> None:
    msg = parse(MSH.format(type="ADT^A01", n=1) + "PID|1|EXT7^^^OLD||||19700101|M\r")
    assert one(map_message(msg), "Patient")["id"] == stable_id("Patient", "OLD", "EXT7")


@pytest.mark.parametrize(
    ("trigger", "status"),
    [
        ("A01", "in-progress"),
        ("A03", "finished"),
        ("A04", "planned"),
        ("A05", "planned"),
        ("A11", "cancelled"),
    ],
)
def test_encounter_status_follows_the_trigger(trigger: str, status: str) -> None:
    assert one(mapped(f"ADT^{trigger}", "PV1|1|E"), "Encounter")["status"] == status


def test_pv1_to_encounter() -> None:
    pv1 = (
        "PV1|1|I|ICU^12^B^MAIN||PRE1|OLD^1|A1^Attend^Ann|R1^Ref^Rob|C1^Cons^Cid|CAR||||7|||AD1^Adm^Al||"
        "VN77^^^HOSP^VN|||||||||||||||||01||||||||20240301080000+0100|20240305120000+0100"
    )
    result = mapped("ADT^A08", pv1, "PV2|||CP^Chest pain^L")
    enc = one(result, "Encounter")
    assert enc["id"] == stable_id("Encounter", "HOSP", "VN77")
    assert enc["class"]["code"] == "IMP" and enc["status"] == "finished"
    assert enc["period"] == {"start": "2024-03-01T08:00:00+01:00", "end": "2024-03-05T12:00:00+01:00"}
    assert enc["identifier"][0]["value"] == "VN77"
    codes = [p["type"][0]["coding"][0]["code"] for p in enc["participant"]]
    assert codes == ["ATND", "REF", "CON", "ADM"]
    assert enc["participant"][0]["individual"]["identifier"]["value"] == "A1"
    assert enc["location"][0] == {"location": {"display": "MAIN ICU 12 B"}, "status": "active"}
    assert enc["location"][1]["status"] == "completed"
    assert enc["hospitalization"]["preAdmissionIdentifier"]["value"] == "PRE1"
    assert enc["hospitalization"]["admitSource"]["coding"][0]["code"] == "7"
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "01"
    assert enc["reasonCode"][0]["coding"][0]["code"] == "CP"


def test_encounter_without_visit_number_is_stable_per_message() -> None:
    first = one(mapped("ADT^A04", "PV1|1|O"), "Encounter")["id"]
    assert first == one(mapped("ADT^A04", "PV1|1|O"), "Encounter")["id"]
    assert first != one(mapped("ADT^A04", "PV1|1|O", n=2), "Encounter")["id"]


def _obx(
    value_type: str, value: str, units: str = "", ref: str = "", flag: str = "", status: str = "F"
) -> str:
    return f"OBX|1|{value_type}|1234-5^Test^LN||{value}|{units}|{ref}|{flag}|||{status}|||20240301090000"


def _observation(obx: str) -> dict[str, Any]:
    result = mapped(
        "ORU^R01", "OBR|1|P1^EHR|F1^LAB|CBC^Blood count^L|||20240301080000||||||||||||||||||F", obx
    )
    assert not result.failed, result.issues
    return one(result, "Observation")


def test_obx_nm_is_a_quantity_with_ucum_units_and_reference_range() -> None:
    obs = _observation(_obx("NM", "4.41", "10*6/uL^million/uL^UCUM", "4.3 to 6.2", "N"))
    assert obs["valueQuantity"] == {
        "value": 4.41,
        "unit": "million/uL",
        "system": "http://unitsofmeasure.org",
        "code": "10*6/uL",
    }
    assert (
        obs["referenceRange"][0]["low"]["value"] == 4.3 and obs["referenceRange"][0]["high"]["value"] == 6.2
    )
    assert obs["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": "N",
    }
    assert obs["status"] == "final" and obs["code"]["coding"][0]["system"] == "http://loinc.org"
    assert obs["effectiveDateTime"] == "2024-03-01T09:00:00+01:00"


def test_obx_nm_units_without_a_system_keep_only_the_unit_text() -> None:
    obs = _observation(_obx("NM", "182", "mg/dl", "<200"))
    assert obs["valueQuantity"] == {"value": 182, "unit": "mg/dl"}
    assert obs["referenceRange"][0]["high"]["value"] == 200


def test_obx_non_numeric_nm_becomes_text_with_a_warning() -> None:
    result = mapped("ORU^R01", "OBR|1|P1||X^Y|||||||||||||||||||F", _obx("NM", "positive"))
    assert one(result, "Observation")["valueString"] == "positive"
    assert [(i.code, i.location) for i in result.issues] == [("102", "OBX-5")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("^182", {"valueQuantity": {"value": 182}}),
        ("<^5", {"valueQuantity": {"value": 5, "comparator": "<"}}),
        ("^1^:^128", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}),
        ("^10^-^20", {"valueRange": {"low": {"value": 10}, "high": {"value": 20}}}),
    ],
)
def test_obx_sn(value: str, expected: dict[str, Any]) -> None:
    obs = _observation(_obx("SN", value))
    key = next(iter(expected))
    assert obs[key] == expected[key]


@pytest.mark.parametrize(
    ("value_type", "value", "key", "expected"),
    [
        (
            "CWE",
            "260348001^Present^SCT",
            "valueCodeableConcept",
            {"coding": [{"system": "http://snomed.info/sct", "code": "260348001", "display": "Present"}]},
        ),
        ("DT", "20240102", "valueDateTime", "2024-01-02"),
        ("TS", "202401021030+0000", "valueDateTime", "2024-01-02T10:30:00+00:00"),
        ("TM", "1030", "valueTime", "10:30:00"),
        ("TX", "line one~line two", "valueString", "line one\nline two"),
        ("FT", "a\\.br\\b", "valueString", "a\nb"),
        (
            "CQ",
            "10^mg&milligram&UCUM",
            "valueQuantity",
            {"value": 10, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"},
        ),
    ],
)
def test_obx_types(value_type: str, value: str, key: str, expected: Any) -> None:
    assert _observation(_obx(value_type, value))[key] == expected


@pytest.mark.parametrize(
    ("code", "status"),
    [("F", "final"), ("C", "corrected"), ("P", "preliminary"), ("D", "entered-in-error"), ("X", "cancelled")],
)
def test_obx_11_status(code: str, status: str) -> None:
    assert _observation(_obx("ST", "x", status=code))["status"] == status


def test_obr_makes_request_and_report_and_ed_goes_to_presented_form() -> None:
    result = mapped(
        "ORU^R01",
        "ORC|RE|P1^EHR|F1^LAB||CM||||20240301070000|||D1^Doc^Dan",
        "OBR|1|P1^EHR|F1^LAB|CBC^Blood count^L|R||20240301080000|||||||||||||||20240301100000|||F",
        _obx("NM", "1"),
        "NTE|1||Checked twice",
        "OBX|2|ED|PDF^Report^L||^AP^PDF^Base64^SGVsbG8=||||||F",
    )
    request, report, obs = (
        one(result, "ServiceRequest"),
        one(result, "DiagnosticReport"),
        one(result, "Observation"),
    )
    assert request["id"] == stable_id("ServiceRequest", "EHR", "P1")
    assert report["id"] == stable_id("DiagnosticReport", "LAB", "F1")
    assert request["status"] == "completed" and request["intent"] == "order"
    assert request["requester"]["identifier"]["value"] == "D1"
    assert "authoredOn" not in request  # IG ORC[ServiceRequest]: ORC-9 is authoredOn only IF ORC-1 is NW
    assert {i["type"]["coding"][0]["code"] for i in request["identifier"]} == {"PLAC", "FILL"}
    assert report["status"] == "final" and report["issued"] == "2024-03-01T10:00:00+01:00"
    assert report["result"] == [{"reference": _url(result, obs)}]
    assert report["basedOn"] == [{"reference": _url(result, request)}]
    assert report["presentedForm"] == [{"contentType": "application/pdf", "data": "SGVsbG8="}]
    assert obs["note"] == [{"text": "Checked twice"}]
    assert obs["basedOn"] == [{"reference": _url(result, request)}]


def _url(result: MappedMessage, resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in result.bundle["entry"] if e["resource"] is resource)


def test_corrected_result_lands_on_the_same_observation() -> None:
    first = _observation(_obx("NM", "1", status="P"))
    corrected = _observation(_obx("NM", "2", status="C"))
    assert first["id"] == corrected["id"] and corrected["status"] == "corrected"


def test_order_message_makes_requests_only() -> None:
    result = mapped("ORM^O01", "ORC|NW|P9^EHR", "OBR|1|P9^EHR||XR^Chest X-ray^L|S", "ORC|CA|P10^EHR")
    requests = resources(result, "ServiceRequest")
    # IG OrderControlCode[ServiceRequest.status]: CA (cancel request) → active; CR/OC → revoked
    assert [r["status"] for r in requests] == ["active", "active"]
    assert requests[0]["priority"] == "stat" and not resources(result, "DiagnosticReport")


def test_obr_without_service_is_an_error() -> None:
    result = mapped("ORU^R01", "OBR|1|P1")
    assert result.failed and result.issues[0].location == "OBR-4"


def test_al1_dg1_pr1_in1_nk1() -> None:
    result = mapped(
        "ADT^A01",
        "NK1|1|Doe^John|SPO^Spouse|1 Main St^^Town|^PRN^PH^^^555^1111111",
        "PV1|1|I|||||||||||||||||V1^^^HOSP",
        "AL1|1|DA|PCN^Penicillin^L|SV|Hives~Rash|20200101",
        "DG1|1||I21^Acute MI^I10||20240301|A",
        "PR1|1||0DTJ4ZZ^Appendectomy^I10P||20240302",
        "IN1|1|GOLD^Gold plan|INS1|Acme Insurance||||GRP1|Group one|||20240101|20241231||HMO||SEL"
        "|||||||||||||||||||POL123",
    )
    person = one(result, "RelatedPerson")
    assert person["relationship"][0]["coding"][0]["code"] == "SPS" and person["name"][0]["family"] == "Doe"
    allergy = one(result, "AllergyIntolerance")
    assert allergy["category"] == ["medication"] and allergy["criticality"] == "high"
    assert [m["text"] for m in allergy["reaction"][0]["manifestation"]] == ["Hives", "Rash"]
    assert allergy["onsetDateTime"] == "2020-01-01"
    condition = one(result, "Condition")
    assert condition["code"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10",
        "code": "I21",
        "display": "Acute MI",
    }
    assert condition["encounter"] and condition["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    procedure = one(result, "Procedure")
    assert procedure["status"] == "completed" and procedure["performedDateTime"] == "2024-03-02"
    coverage = one(result, "Coverage")
    assert coverage["payor"] == [{"display": "Acme Insurance", "identifier": {"value": "INS1"}}]
    assert coverage["subscriberId"] == "POL123" and coverage["relationship"]["coding"][0]["code"] == "self"
    assert coverage["period"] == {"start": "2024-01-01", "end": "2024-12-31"}
    assert {c["value"] for c in coverage["class"]} == {"GOLD", "GRP1"}


def test_vxu_rxa_rxr_to_immunization() -> None:
    result = mapped(
        "VXU^V04",
        "ORC|RE||IZ-1^IIS",
        "RXA|0|1|20240110||08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001|N1^Nurse^Nia|||||LOT9|20251231|MSD^Merck^MVX|||CP|A",
        "RXR|IM^Intramuscular^HL70162|LA^Left arm^HL70163",
    )
    imm = one(result, "Immunization")
    assert imm["id"] == stable_id("Immunization", "IIS", "IZ-1")
    assert imm["status"] == "completed" and imm["occurrenceDateTime"] == "2024-01-10"
    assert imm["vaccineCode"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/cvx"
    assert (
        imm["primarySource"] is True and imm["lotNumber"] == "LOT9" and imm["expirationDate"] == "2025-12-31"
    )
    assert imm["doseQuantity"]["value"] == 0.5 and imm["manufacturer"] == {
        "identifier": {"system": "http://terminology.hl7.org/CodeSystem/MVX", "value": "MSD"},
        "display": "Merck",
    }
    assert imm["route"]["coding"][0]["code"] == "IM" and imm["site"]["coding"][0]["code"] == "LA"


def test_pharmacy_rxo_rxe_rxd() -> None:
    result = mapped(
        "RDS^O13",
        "ORC|NW|RX1^EHR",
        "RXO|ASA^Aspirin^L|81",
        "RXE||ASA^Aspirin^L|81||mg^mg^UCUM||^Once daily|||30|TAB^tablet|2",
        "RXR|PO^Oral",
        "RXD|1|ASA^Aspirin^L|20240301|30|TAB|||RX-77",
    )
    request = one(result, "MedicationRequest")
    assert request["id"] == stable_id("MedicationRequest", "EHR", "RX1") and request["status"] == "active"
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "ASA"
    assert request["dosageInstruction"][0]["route"]["coding"][0]["code"] == "PO"
    assert request["dispenseRequest"]["numberOfRepeatsAllowed"] == 2
    dispense = one(result, "MedicationDispense")
    assert dispense["quantity"]["value"] == 30 and dispense["whenHandedOver"] == "2024-03-01"
    assert dispense["authorizingPrescription"] == [{"reference": _url(result, request)}]


def test_siu_to_appointment() -> None:
    msg = (
        "MSH|^~\\&|SCHED|HOSP|EHR|HOSP|20240301||SIU^S12|S1|P|2.5.1\r"
        "SCH|PA1^EHR|FA1^SCHED||||RSN^Checkup^L|ROUTINE^Routine^L||30|min|^^^20240305090000+0000^20240305093000+0000|||||||||||||||BOOKED\r"
        "NTE|1||Bring results\r" + PID + "RGS|1\rAIS|1||CONS^Consultation^L\r"
        "AIL|1||CLINIC^101^^MAIN\rAIP|1||D1^Doc^Dan|ATND^Attending^L\r"
    )
    result = map_message(parse(msg))
    appt = one(result, "Appointment")
    assert appt["id"] == stable_id("Appointment", "SCHED", "FA1") and appt["status"] == "booked"
    assert appt["start"] == "2024-03-05T09:00:00+00:00" and appt["end"] == "2024-03-05T09:30:00+00:00"
    assert appt["minutesDuration"] == 30 and appt["comment"] == "Bring results"
    actors = [p["actor"] for p in appt["participant"]]
    assert actors[0]["reference"].startswith("urn:uuid:")
    assert {"display": "MAIN CLINIC 101"} in actors
    assert any(a.get("identifier", {}).get("value") == "D1" for a in actors)
    assert appt["serviceType"][0]["coding"][0]["code"] == "CONS"


@pytest.mark.parametrize(("trigger", "status"), [("S15", "cancelled"), ("S26", "noshow")])
def test_appointment_status_by_trigger(trigger: str, status: str) -> None:
    dates = "|" * 9 + "^^^20240305090000+0000^20240305093000+0000"
    msg = f"MSH|^~\\&|S|H|R|H|2024||SIU^{trigger}|S1|P|2.5.1\rSCH|PA1|FA1{dates}\r" + PID
    assert one(map_message(parse(msg)), "Appointment")["status"] == status


def test_mdm_txa_and_obx_to_document_reference() -> None:
    result = mapped(
        "MDM^T02",
        "PV1|1|O",
        "TXA|1|DS^Discharge summary|TX|20240301|||||A1^Author^Al|||DOC-9^EHR|||||AU||AV",
        "OBX|1|TX|TEXT^Text||Line one||||||F",
        "OBX|2|TX|TEXT^Text||Line two||||||F",
    )
    doc = one(result, "DocumentReference")
    assert doc["id"] == stable_id("DocumentReference", "EHR", "DOC-9") and doc["status"] == "current"
    assert doc["docStatus"] == "final" and doc["type"]["coding"][0]["code"] == "DS"
    data = doc["content"][0]["attachment"]["data"]
    assert base64.b64decode(data).decode() == "Line one\nLine two"
    assert not resources(result, "Observation")


def test_dft_ft1_to_charge_item() -> None:
    result = mapped("DFT^P03", "FT1|1|T100||20240301|20240302|CG|99213^Visit^C4|||2|150.00^USD")
    charge = one(result, "ChargeItem")
    assert charge["status"] == "billable" and charge["code"]["coding"][0]["code"] == "99213"
    assert charge["quantity"] == {"value": 2} and charge["priceOverride"] == {
        "value": 150.0,
        "currency": "USD",
    }


def test_ppr_prb_to_problem_list_condition() -> None:
    result = mapped("PPR^PC1", "PRB|AD|20240301|786.5^Chest pain^I9|P-1|||||20240310")
    condition = one(result, "Condition")
    assert condition["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert condition["clinicalStatus"]["coding"][0]["code"] == "resolved"
    assert condition["abatementDateTime"] == "2024-03-10"


def test_a40_merge_links_both_patients() -> None:
    result = mapped("ADT^A40", "MRG|OLD1^^^HOSP^MR")
    patients = {p["id"]: p for p in resources(result, "Patient")}
    old = patients[stable_id("Patient", "HOSP", "OLD1")]
    new = patients[stable_id("Patient", "HOSP", "MRN1")]
    assert old["active"] is False and old["link"][0]["type"] == "replaced-by"
    assert new["link"][0]["type"] == "replaces" and new["link"][0]["other"]["reference"].startswith(
        "urn:uuid:"
    )


def test_msh_to_message_header_and_provenance() -> None:
    result = mapped("ADT^A01^ADT_A01", "EVN|A01|20240301101500+0100||01|OP1^Operator^Ola")
    header = one(result, "MessageHeader")
    assert header["eventCoding"]["code"] == "A01" and header["source"]["name"] == "LAB"
    assert header["sender"] == {"display": "HOSP"} and header["meta"]["tag"][0]["code"] == "P"
    provenance = one(result, "Provenance")
    assert provenance["recorded"] == "2024-03-01T10:15:00+01:00"
    assert provenance["activity"]["coding"][0]["code"] == "A01"
    assert provenance["agent"][0]["who"]["identifier"]["value"] == "OP1"
    assert provenance["entity"][0]["what"]["identifier"]["value"] == "MSG1"
    patient_url = next(
        e["fullUrl"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert {"reference": patient_url} in provenance["target"]


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("MSH|^~\\&|A|B|C|D|2024||QBP^Q11|1|P|2.5", "200"),
        ("MSH|^~\\&|A|B|C|D|2024||ADT^R01|1|P|2.5", "201"),
        ("MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|3.0", "203"),
        ("MSH|^~\\&|A|B|C|D|2024|||1|P|2.5", "101"),
        ("MSH|^~\\&|A|B|C|D|2024||ADT^A01||P|2.5", "101"),
    ],
)
def test_unsupported_messages(header: str, code: str) -> None:
    problem = check_supported(parse(header + "\r"))
    assert problem is not None and problem.code == code


@pytest.mark.parametrize(
    "header", ["ADT^A60^ADT_A60", "ADT^Z99", "ORU^R01", "SIU^S26", "MDM^T11", "PPR^PC2", "ADT^^ADT_A01"]
)
def test_supported_messages(header: str) -> None:
    assert check_supported(parse(f"MSH|^~\\&|A|B|C|D|2024||{header}|1|P|2.5\r")) is None


def test_a_mapper_bug_becomes_an_internal_error_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir_gateway.ingest.hl7v2 import mapping

    def broken(seg: object, ctx: object) -> None:
        raise KeyError("Jane Doe")

    monkeypatch.setitem(mapping.SEGMENT_MAPPERS, "PV1", broken)
    result = mapped("ADT^A01", "PV1|1|I")
    assert result.failed and result.issues[-1].code == "207" and "Jane" not in result.issues[-1].text


def test_segments_without_a_patient_map_to_nothing_and_do_not_fail() -> None:
    body = "\r".join(
        [
            "NK1|1|X^Y",
            "PV1|1|I",
            "PV2|||R^Reason",
            "AL1|1|DA|X^Y",
            "DG1|1||X^Y",
            "PRB|AD|2024|X^Y",
            "PR1|1||X^Y",
            "IN1|1|P|C|Name",
            "FT1|1|T||2024|||X^Y",
            "ORC|NW|O1",
            "OBR|1|O1||X^Y",
            "OBX|1|ST|X^Y||v",
            "RXA|0|1|2024||X^Y",
            "RXO|X^Y",
            "RXD|1|X^Y",
            "TXA|1|DS",
        ]
    )
    result = map_message(parse(MSH.format(type="ADT^A01", n=1) + body + "\r"))
    assert not result.failed and not result.issues
    assert [e["resource"]["resourceType"] for e in result.bundle["entry"]] == ["MessageHeader"]


def test_required_codes_are_errors_or_warnings_by_how_much_they_matter() -> None:
    result = mapped(
        "ADT^A01",
        "AL1|1|DA",
        "DG1|1",
        "PRB|AD|2024",
        "PR1|1",
        "IN1|1",
        "FT1|1|T",
        "RXA|0|1|2024",
        "RXA|0|1|||X^Y",
        "RXE|",
        "RXD|1",
    )
    found = {(i.severity, i.location) for i in result.issues}
    assert found == {
        ("E", "AL1-3"),
        ("W", "DG1-3"),
        ("E", "PRB-3"),
        ("W", "PR1-3"),
        ("W", "IN1-3"),
        ("E", "FT1-7"),
        ("E", "RXA-5"),
        ("E", "RXA-3"),
        ("E", "RXE-2"),
        ("E", "RXD-2"),
    }


def test_allergy_variants_and_iam_delete() -> None:
    result = mapped("ADT^A60", "AL1|1|MC|LACT^Lactose^L|MO|Bloating", "IAM|1|FA|PNUT^Peanut^L|SV||D")
    lactose, peanut = resources(result, "AllergyIntolerance")
    assert lactose["type"] == "intolerance" and lactose["reaction"][0]["severity"] == "moderate"
    assert peanut["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in peanut and peanut["category"] == ["food"]


def test_condition_and_procedure_identifiers_and_problem_delete() -> None:
    result = mapped(
        "BAR^P01",
        seg("DG1", f1="1", f3="I21^MI^I10", f20="DX-1^EHR"),
        seg("PR1", f1="1", f3="P1^Proc^L", f19="PR-9^EHR"),
        "PRB|DE|2024|X1^Gone^L",
    )
    dx, problem = resources(result, "Condition")
    assert dx["id"] == stable_id("Condition", "EHR", "DX-1") and dx["identifier"][0]["value"] == "DX-1"
    assert problem["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert one(result, "Procedure")["id"] == stable_id("Procedure", "EHR", "PR-9")


def test_immunization_refusal_delete_and_fallback_id() -> None:
    rxa = seg(
        "RXA", f1="0", f2="1", f3="20240110", f5="08^HepB^CVX", f6="999", f18="00^Parent^NIP002", f20="RE"
    )
    refused = one(mapped("VXU^V04", rxa), "Immunization")
    assert refused["status"] == "not-done" and refused["statusReason"]["coding"][0]["code"] == "00"
    assert "doseQuantity" not in refused
    assert refused["id"] == stable_id(
        "Immunization", f"Patient/{stable_id('Patient', 'HOSP', 'MRN1')}", "08|CVX|2024-01-10"
    )
    rxa = seg("RXA", f1="0", f2="1", f3="20240110", f5="08^HepB^CVX", f20="CP", f21="D")
    deleted = one(mapped("VXU^V04", rxa), "Immunization")
    assert deleted["status"] == "entered-in-error"


def test_pharmacy_without_orc_and_dispense_edges() -> None:
    result = mapped(
        "RDE^O11", "RXE||ASA^Aspirin^L|x", "RXR|PO", "RXD|1|ASA^Aspirin^L|2024|many", "RXR|IV", "RXR|PO"
    )
    request, dispense = one(result, "MedicationRequest"), one(result, "MedicationDispense")
    assert request["status"] == "unknown" and "doseAndRate" not in request["dosageInstruction"][0]
    assert dispense["dosageInstruction"][0]["route"]["coding"][0]["code"] == "IV"
    assert [(i.code, i.location) for i in result.issues] == [("102", "RXD-4")]
    alone = mapped("RDE^O11", "RXR|PO")
    assert {e["resource"]["resourceType"] for e in alone.bundle["entry"]} == {
        "MessageHeader",
        "Patient",
        "Provenance",
    }


def test_encounter_class_fallbacks_and_nk1_details() -> None:
    odd = one(mapped("ADT^A08", "PV1|1|Z"), "Encounter")
    assert odd["class"] == {"code": "Z"}  # a site's own class, no code of table 0004: no system claimed
    empty = one(mapped("ORU^R01", seg("PV1", f1="1", f44="20240101")), "Encounter")
    assert empty["class"]["code"] == "UNK" and empty["status"] == "in-progress"
    assert one(mapped("ORU^R01", "PV1|1"), "Encounter")["status"] == "unknown"
    result = mapped(
        "ADT^A01", "NK1|1|Roe^Rick|XYZ||||EMC^Emergency^HL70131", "NK1|2|Poe^Pat|^Neighbour", "NK1|3"
    )
    first, second = resources(result, "RelatedPerson")
    assert [r["coding"][0]["code"] for r in first["relationship"]] == ["XYZ", "EMC"]
    assert second["relationship"] == [{"text": "Neighbour"}]


def test_observation_edges() -> None:
    adt_obs = one(
        mapped("ADT^A08", "OBX|1|NM|29463-7^Weight^LN||70|kg^kg^UCUM|||||F|||20240301"), "Observation"
    )
    patient_key = f"Patient/{stable_id('Patient', 'HOSP', 'MRN1')}"
    assert adt_obs["id"] == stable_id("Observation", patient_key, "29463-7|LN||1|2024-03-01")
    undated = mapped("ADT^A08", "OBX|1|DT|X^Y||2024-13-45", "OBX|2|SN|X^Z||abc", "OBX|3|CQ|Q^Q||5^mg")
    first, second, third = resources(undated, "Observation")
    assert first["valueString"] == "2024-13-45" and second["valueString"] == "abc"  # IG: SN else string
    assert third["valueQuantity"]["value"] == 5
    assert {(i.code, i.location) for i in undated.issues} == {("102", "OBX-5")}
    result = mapped(
        "ORU^R01",
        "OBR|1|P1||X^Y|||||||||||||||||||F",
        "NTE|1||Report remark",
        "OBX|1|RP|IMG^Image^L||http://x/1^^IM^JPEG||||||F",
        "OBX|2|ED|DOC^Doc^L||^TEXT^PLAIN^A^hello||||||F",
        "OBX|3|ED|DOC^Doc^L||^AP^^Base64^||||||F",
        "OBX|4|ST|X^Y||",
    )
    report = one(result, "DiagnosticReport")
    assert report["presentedForm"] == [
        {"url": "http://x/1", "contentType": "image/jpeg"},
        {"contentType": "text/plain", "data": base64.b64encode(b"hello").decode()},
    ]
    assert one(result, "ServiceRequest")["note"] == [{"text": "Report remark"}]
    assert "valueString" not in one(result, "Observation")


def test_document_variants() -> None:
    result = mapped(
        "MDM^T11",
        "TXA|1|CN|AP|20240301||20240301||||||DOC-1^EHR",
        "OBX|1|ED|PDF^PDF^L||^AP^PDF^Base64^SGk=||||||F",
        "TXA|2|CN",
    )
    first, second = resources(result, "DocumentReference")
    assert first["status"] == "entered-in-error" and first["content"][0]["attachment"]["data"] == "SGk="
    assert second["content"][0]["attachment"]["title"] == "no content in message"
    assert "_content_type" not in first and "_content_type" not in second


def test_appointment_times_from_resource_segments_and_general_resources() -> None:
    msg = (
        "MSH|^~\\&|S|H|R|H|20240301+0000||SIU^S12|S1|P|2.5.1\r"
        "SCH|PA1|FA1|||||||30|min\r" + PID + "RGS|1\r"
        "AIS|1||CONS^Consultation^L|20240305090000+0000|||45|min\r"
        "AIG|1||EQ1^X-ray unit^L|EQ^Equipment^L\r"
        "AIL|1||ROOM&1&&MAIN\r"
        "NTE|1||first\rNTE|2||second\r"
    )
    appt = one(map_message(parse(msg)), "Appointment")
    assert appt["start"] == "2024-03-05T09:00:00+00:00" and appt["end"] == "2024-03-05T09:45:00+00:00"
    assert {"display": "X-ray unit"} in [p["actor"] for p in appt["participant"]]
    assert {"display": "MAIN ROOM 1"} in [p["actor"] for p in appt["participant"]]
    assert appt["comment"] == "first\nsecond"
    undated = one(
        map_message(parse("MSH|^~\\&|S|H|R|H|2024||SIU^S12|S2|P|2.5.1\rSCH|PA2|FA2\r")), "Appointment"
    )
    assert undated["status"] == "proposed" and undated["participant"][0]["status"] == "needs-action"


def test_providers_named_by_xcn_are_kept_as_logical_references() -> None:
    """PR1-11, RXA-10, TXA-10 and FT1-20 name a provider by XCN: no Practitioner resource is written,
    but the performer/authenticator is kept, identified by XCN-1 and named by XCN-2/3."""
    surgeon = {"identifier": {"value": "S1"}, "type": "Practitioner", "display": "Sam Surgeon"}
    procedure = one(
        mapped("ADT^A01", "PR1|1||0DTJ4ZZ^Appendectomy^I10P||20240302||||||S1^Surgeon^Sam"), "Procedure"
    )
    assert procedure["performer"] == [{"actor": surgeon}]
    rxa = "RXA|0|1|20240110||08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001|N1^Nurse^Nia"
    imm = one(mapped("VXU^V04", "ORC|RE||IZ-1^IIS", rxa), "Immunization")
    assert imm["performer"][0]["actor"]["identifier"] == {"value": "N1"}
    assert imm["performer"][0]["function"]["coding"][0]["code"] == "AP"
    txa = "TXA|1|DS^Discharge summary|TX|20240301|||||A1^Author^Al|V1^Verifier^Val||DOC-9^EHR|||||AU||AV"
    doc = one(mapped("MDM^T02", "PV1|1|O", txa), "DocumentReference")
    assert doc["authenticator"]["display"] == "Val Verifier"
    ft1 = "FT1|1|T100||20240301|20240302|CG|99213^Visit^C4|||2|150.00^USD" + "|" * 9 + "D7^Doc^Dora"
    charge = one(mapped("DFT^P03", ft1), "ChargeItem")
    assert charge["performer"] == [
        {"actor": {"identifier": {"value": "D7"}, "type": "Practitioner", "display": "Dora Doc"}}
    ]


def test_times_without_a_zone_take_the_configured_one_with_its_daylight_saving() -> None:
    from zoneinfo import ZoneInfo

    def effective(msh7: str, obx14: str, zone: ZoneInfo | None) -> Any:
        text = "\r".join(
            [
                f"MSH|^~\\&|LAB|HOSP|EHR|HOSP|{msh7}||ORU^R01|TZ1|P|2.5.1",
                "PID|1||MRN7^^^HOSP^MR||Doe^Jo",
                "OBR|1||F1|24317-0^Hemogram^LN",
                f"OBX|1|NM|11273-0^Erythrocytes^LN||4.06|tera.l-1|||||F|||{obx14}",
            ]
        )
        mapped = map_message(parse(text), zone)
        [observation] = [
            e["resource"] for e in mapped.bundle["entry"] if e["resource"]["resourceType"] == "Observation"
        ]
        return observation.get("effectiveDateTime")

    chicago = ZoneInfo("America/Chicago")
    assert effective("201410060645", "201410060627", None) == "2014-10-06"  # no zone anywhere: the date only
    assert effective("201410060645", "201410060627", chicago) == "2014-10-06T06:27:00-05:00"  # CDT
    assert effective("201412060645", "201412060627", chicago) == "2014-12-06T06:27:00-06:00"  # CST
    # the sender's MSH-7 offset, and the value's own, come before the configured zone
    assert effective("201410060645+0200", "201410060627", chicago) == "2014-10-06T06:27:00+02:00"
    assert effective("201410060645", "201410060627+0100", chicago) == "2014-10-06T06:27:00+01:00"
