"""SPM, GT1, IN2, ROL/PRT and CON mappers: field by field, links to their group, edges, R4 validity."""

from __future__ import annotations

import base64
import importlib
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.ack import Outcome, acknowledgements
from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.messages import MappedMessage, check_supported, map_message
from tests.unit.test_hl7_mapping import PID, mapped, one, resources, seg

PATIENT_ID = stable_id("Patient", "HOSP", "MRN1")
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def valid(result: MappedMessage) -> MappedMessage:
    """Every resource of the Bundle is valid R4 structure, and nothing failed the message."""
    assert not result.failed, result.issues
    for entry in result.bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return result


def url(result: MappedMessage, resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in result.bundle["entry"] if e["resource"] is resource)


def ref(result: MappedMessage, resource: dict[str, Any]) -> dict[str, str]:
    return {"reference": url(result, resource)}


def issues(result: MappedMessage) -> set[tuple[str, str, str]]:
    return {(i.severity, i.code, i.location) for i in result.issues}


def message(header: str, *segments: str, pid: str = PID) -> MappedMessage:
    return map_message(
        parse(
            f"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240301101500+0100||{header}|M1|P|2.5.1\r"
            + pid
            + "\r".join(segments)
        )
    )


# ---- SPM → Specimen -------------------------------------------------------------------------------
OBR = "OBR|1|P1^EHR|F1^LAB|CBC^Blood count^L|||20240301080000||||||||||||||||||F"
SPM = seg(
    "SPM",
    f1="1",
    f2="SP-1&EHR^SF-1&LAB",
    f3="PARENT-1&LAB",
    f4="119297000^Blood specimen^SCT",
    f6="EDTA^EDTA K2^HL70371~HEP^Heparin^HL70371",
    f7="VENIP^Venipuncture^HL70488",
    f8="LACF^Left antecubital fossa^HL70163",
    f12="5^mL&milliliter&UCUM",
    f14="Drawn after fasting",
    f17="20240301074500+0100^20240301075000+0100",
    f18="20240301083000+0100",
    f20="Y",
    f24="COOL^Cool^HL70493",
    f27="PPT^Plastic tube^HL70785",
    f30="ACC-9^^^LAB",
)


def test_spm_to_specimen_field_by_field_and_linked_to_its_order_group() -> None:
    result = valid(
        mapped(
            "ORU^R01^ORU_R01",
            "ORC|RE|P1^EHR|F1^LAB",
            OBR,
            "OBX|1|NM|718-7^Hemoglobin^LN||13.2|g/dL^g/dL^UCUM|||||F",
            "OBX|2|NM|4544-3^Hematocrit^LN||40|%^%^UCUM|||||F",
            SPM,
            "OBX|3|NM|SPVOL^Specimen volume^L||5|mL^mL^UCUM|||||F",
        )
    )
    specimen = one(result, "Specimen")
    assert specimen["id"] == stable_id("Specimen", "LAB", "SF-1")
    assert specimen["identifier"] == [
        {
            "value": "SP-1",
            "assigner": {"display": "EHR"},
            "type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
        },
        {
            "value": "SF-1",
            "assigner": {"display": "LAB"},
            "type": {"coding": [{"system": V2_0203, "code": "FILL"}]},
        },
    ]
    assert specimen["accessionIdentifier"] == {"value": "ACC-9", "assigner": {"display": "LAB"}}
    assert specimen["parent"] == [
        {"identifier": {"value": "PARENT-1", "assigner": {"display": "LAB"}}, "type": "Specimen"}
    ]
    assert specimen["type"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "119297000",
        "display": "Blood specimen",
    }
    assert specimen["status"] == "available"
    assert specimen["receivedTime"] == "2024-03-01T08:30:00+01:00"
    assert specimen["collection"] == {
        "collectedPeriod": {"start": "2024-03-01T07:45:00+01:00", "end": "2024-03-01T07:50:00+01:00"},
        "quantity": {"value": 5, "unit": "milliliter", "system": "http://unitsofmeasure.org", "code": "mL"},
        "method": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0488",
                    "code": "VENIP",
                    "display": "Venipuncture",
                }
            ]
        },
        "bodySite": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0163",
                    "code": "LACF",
                    "display": "Left antecubital fossa",
                }
            ]
        },
    }
    assert [c["additiveCodeableConcept"]["coding"][0]["code"] for c in specimen["container"]] == [
        "EDTA",
        "HEP",
    ]
    assert specimen["container"][0]["type"]["coding"][0]["code"] == "PPT"
    assert specimen["condition"][0]["coding"][0]["code"] == "COOL"
    assert specimen["note"] == [{"text": "Drawn after fasting"}]
    assert specimen["subject"] == ref(result, one(result, "Patient"))
    link = ref(result, specimen)
    assert one(result, "DiagnosticReport")["specimen"] == [link]
    assert one(result, "ServiceRequest")["specimen"] == [link]
    hgb, hct, volume = resources(result, "Observation")
    assert hgb["specimen"] == link and hct["specimen"] == link
    assert (
        volume["focus"] == [link] and "specimen" not in volume
    )  # about the specimen (IG SPECIMEN_OBSERVATION)


def test_two_specimens_of_one_group_and_the_next_group_without_one() -> None:
    result = valid(
        mapped(
            "ORU^R01",
            OBR,
            "OBX|1|NM|718-7^Hemoglobin^LN||13.2|||||F",
            "SPM|1|A1&LAB||BLD^Blood^HL70487",
            "SPM|2|A2&LAB||SER^Serum^HL70487",
            "OBR|2|P2^EHR|F2^LAB|GLU^Glucose^L||||||||||||||||||||F",
            "OBX|1|NM|2345-7^Glucose^LN||5.5|||||F",
        )
    )
    first, second = resources(result, "Specimen")
    report, other = resources(result, "DiagnosticReport")
    assert report["specimen"] == [ref(result, first), ref(result, second)]
    assert "specimen" not in other  # a later group does not inherit the SPM of the one before it
    assert all("specimen" not in o and "focus" not in o for o in resources(result, "Observation"))


def test_specimen_first_structure_heads_the_order_groups_that_follow() -> None:
    result = valid(
        mapped(
            "OUL^R22^OUL_R22",
            "SPM|1|S1&LAB||BLD^Blood^HL70487",
            "OBX|1|NM|SPVOL^Volume^L||4|mL^mL^UCUM|||||F",
            "OBR|1|P1^EHR|F1^LAB|CBC^Blood count^L||||||||||||||||||||F",
            "ORC|SC|P1^EHR|F1^LAB",
            "OBX|1|NM|718-7^Hemoglobin^LN||13.2|||||F",
            "SPM|2|S2&LAB||SER^Serum^HL70487",
            "OBR|2|P2^EHR|F2^LAB|GLU^Glucose^L||||||||||||||||||||F",
            "OBX|1|NM|2345-7^Glucose^LN||5.5|||||F",
        )
    )
    blood, serum = resources(result, "Specimen")
    cbc, glucose = resources(result, "DiagnosticReport")
    assert cbc["specimen"] == [ref(result, blood)] and glucose["specimen"] == [ref(result, serum)]
    volume, hgb, glu = resources(result, "Observation")
    assert volume["focus"] == [ref(result, blood)]
    assert hgb["specimen"] == ref(result, blood) and glu["specimen"] == ref(result, serum)
    requests = resources(result, "ServiceRequest")
    assert [r["specimen"] for r in requests] == [[ref(result, blood)], [ref(result, serum)]]
    assert cbc["result"] == [ref(result, hgb)] and glucose["result"] == [ref(result, glu)]
    # the ORC after its OBR (OUL) completes that order, it does not open the next one
    assert requests[0]["id"] == stable_id("ServiceRequest", "EHR", "P1")
    assert requests[1]["id"] == stable_id("ServiceRequest", "EHR", "P2")
    assert {i["value"] for i in requests[0]["identifier"]} == {"P1", "F1"}


@pytest.mark.parametrize(
    ("header", "segments"),
    [
        (
            "OML^O21^OML_O21",
            ("ORC|NW|P1^EHR", "OBR|1|P1^EHR||CBC^Blood count^L", "SPM|1|S1&EHR||BLD^Blood^HL70487"),
        ),
        (
            "OML^O33^OML_O33",
            ("SPM|1|S1&EHR||BLD^Blood^HL70487", "ORC|NW|P1^EHR", "OBR|1|P1^EHR||CBC^Blood count^L"),
        ),
    ],
)
def test_order_messages_put_the_specimen_on_the_service_request(
    header: str, segments: tuple[str, ...]
) -> None:
    result = valid(mapped(header, *segments))
    assert one(result, "ServiceRequest")["specimen"] == [ref(result, one(result, "Specimen"))]
    assert not resources(result, "DiagnosticReport")


def test_specimen_edges_are_warnings_naming_the_field() -> None:
    result = valid(
        mapped(
            "ORU^R01",
            OBR,
            seg(
                "SPM",
                f1="1",
                f2="S1&LAB",
                f4="BLD^Blood^HL70487",
                f12="lots",
                f17="2024-03-01",
                f18="20241345",
            ),
            "SPM|2|S2&LAB",
            "SPM|3",
        )
    )
    first, second = resources(result, "Specimen")
    assert "collection" not in first and "receivedTime" not in first
    assert "type" not in second and second["id"] == stable_id("Specimen", "LAB", "S2")
    assert issues(result) == {
        ("W", "102", "SPM-12"),
        ("W", "102", "SPM-17"),
        ("W", "102", "SPM-18"),
        ("W", "101", "SPM-4"),
    }
    assert sum(i.location == "SPM-4" for i in result.issues) == 2  # SPM 2 kept (it has an id), SPM 3 not
    undated = one(
        valid(mapped("ORU^R01", OBR, seg("SPM", f1="1", f4="BLD^Blood^HL70487", f17="20240301"))), "Specimen"
    )
    assert undated["collection"] == {"collectedDateTime": "2024-03-01"}
    # Without an id, a specimen is its order group's: the same order's in the next message is the
    # same Specimen (a corrected result updates it), another order's or another SPM-1's is not.
    assert undated["id"] == one(valid(mapped("ORU^R01", OBR, "SPM|1|||BLD^Blood", n=2)), "Specimen")["id"]
    other_order = OBR.replace("F1^LAB", "F2^LAB")
    assert undated["id"] != one(valid(mapped("ORU^R01", other_order, "SPM|1|||BLD^Blood")), "Specimen")["id"]
    assert undated["id"] != one(valid(mapped("ORU^R01", OBR, "SPM|2|||BLD^Blood")), "Specimen")["id"]
    heading = one(valid(mapped("OUL^R22", "SPM|1|||BLD^Blood", OBR)), "Specimen")
    assert heading["id"] != one(valid(mapped("OUL^R22", "SPM|1|||BLD^Blood", OBR, n=2)), "Specimen")["id"]


def test_specimen_first_structures_are_those_of_the_v2_definitions() -> None:
    """The table is what the v2.5.1-2.8.2 message structures say (SPECIMEN group encloses OBR)."""
    found: set[str] = set()
    for version in ("2_5_1", "2_6", "2_7", "2_8", "2_8_1", "2_8_2"):
        module = importlib.import_module(f"hl7apy.v{version}")
        for name, node in module.MESSAGES.items():
            spm, obr = _paths(module, node, "SPM"), _paths(module, node, "OBR")
            if any(len(o) > len(s) and o[: len(s)] == s for s in spm for o in obr):
                found.add(name)
    assert found == tables.SPECIMEN_FIRST_STRUCTURES


def test_orc_after_obr_structures_are_those_of_the_v2_definitions() -> None:
    found: set[str] = set()
    for version in ("2_5_1", "2_6", "2_7", "2_8", "2_8_1", "2_8_2"):
        module = importlib.import_module(f"hl7apy.v{version}")
        found |= {name for name, node in module.MESSAGES.items() if _orc_follows_obr(module, node)}
    assert found == tables.ORC_AFTER_OBR_STRUCTURES


def _orc_follows_obr(module: Any, node: Any) -> bool:
    names = [child[0] for child in node[1]]
    if "OBR" in names and "ORC" in names and names.index("OBR") < names.index("ORC"):
        return True
    groups = (module.GROUPS.get(c[0], c[1]) for c in node[1] if c[3] == "GRP")
    return any(_orc_follows_obr(module, group) for group in groups)


def _paths(module: Any, node: Any, segment: str, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The group paths at which `segment` occurs in a message structure definition."""
    out = []
    for child in node[1]:
        name, definition, kind = child[0], child[1], child[3]
        if kind == "SEG" and name == segment:
            out.append(path)
        elif kind == "GRP":
            out.extend(_paths(module, module.GROUPS.get(name, definition), segment, (*path, name)))
    return out


# ---- GT1 → Account.guarantor ----------------------------------------------------------------------
GT1 = seg(
    "GT1",
    f1="1",
    f2="G-77^^^HOSP",
    f3="Doe^John^Q",
    f5="1 Main St^^Town^ST^12345^USA^H",
    f6="^PRN^PH^^1^555^1112222",
    f7="^WPN^PH^^1^555^3334444",
    f8="19750102",
    f9="M",
    f11="SPO^Spouse^HL70063",
    f12="222-33-4444",
    f13="20240101",
    f14="20241231",
    f22="N",
)


def test_gt1_person_is_a_related_person_guarantor_of_the_patient_account() -> None:
    result = valid(mapped("ADT^A01", GT1))
    account, person, patient = one(result, "Account"), one(result, "RelatedPerson"), one(result, "Patient")
    assert account["id"] == stable_id("Account", "HOSP", "ACC9")  # PID-18 of the patient
    assert account["status"] == "active" and account["subject"] == [ref(result, patient)]
    assert account["identifier"][0]["value"] == "ACC9"
    assert account["identifier"][0]["type"]["coding"][0]["code"] == "AN"
    assert account["guarantor"] == [
        {
            "party": ref(result, person),
            "onHold": False,
            "period": {"start": "2024-01-01", "end": "2024-12-31"},
        }
    ]
    assert person["id"] == stable_id("RelatedPerson", PATIENT_ID, "guarantor|G-77")
    assert person["patient"] == ref(result, patient) and person["gender"] == "male"
    assert (
        person["name"] == [{"family": "Doe", "given": ["John", "Q"]}] and person["birthDate"] == "1975-01-02"
    )
    assert person["relationship"] == [{"coding": [{"system": tables.ROLE_CODE_SYSTEM, "code": "SPS"}]}]
    assert {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "222-33-4444"}.items() <= person[
        "identifier"
    ][1].items()
    assert person["identifier"][0]["value"] == "G-77"
    assert person["address"][0]["city"] == "Town"
    assert person["telecom"] == [
        {"system": "phone", "value": "1 555 1112222", "use": "home"},
        {"system": "phone", "value": "1 555 3334444", "use": "work"},
    ]


def test_gt1_self_and_organisation_guarantors_share_the_patient_account() -> None:
    pid = "PID|1||MRN1^^^HOSP^MR||Doe^Jane||19800215|F\r"
    result = valid(
        message(
            "DFT^P03",
            "GT1|1||||||||||SEL^Self^HL70063|||||||||||Y",
            seg("GT1", f1="2", f21="Acme Corp^^^^^^^^^ACME-1"),
            pid=pid,
        )
    )
    account = one(result, "Account")
    assert account["id"] == stable_id("Account", f"Patient/{PATIENT_ID}", "guarantor|LAB^HOSP")
    assert "identifier" not in account
    assert account["guarantor"] == [
        {"party": ref(result, one(result, "Patient")), "onHold": True},
        {"party": {"display": "Acme Corp", "identifier": {"value": "ACME-1"}, "type": "Organization"}},
    ]
    assert not resources(result, "RelatedPerson")
    again = valid(message("DFT^P03", "GT1|1||||||||||SEL", pid=pid))
    assert one(again, "Account")["id"] == account["id"]  # the GT1 of every update lands on one Account


def test_gt1_edges() -> None:
    result = valid(
        mapped("BAR^P01", "GT1|1", seg("GT1", f1="2", f3="Roe^Rita", f8="1975-01-02", f9="Q", f13="2024"))
    )
    assert issues(result) == {("W", "101", "GT1-3"), ("W", "102", "GT1-8"), ("W", "103", "GT1-9")}
    person = one(result, "RelatedPerson")
    assert "birthDate" not in person and "gender" not in person
    assert one(result, "Account")["guarantor"] == [
        {"party": ref(result, person), "period": {"start": "2024"}}
    ]
    nobody = map_message(parse("MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rGT1|1||Doe^John\r"))
    assert not resources(nobody, "Account") and not nobody.issues


# ---- IN2 → Coverage -------------------------------------------------------------------------------
IN1 = "IN1|1|GOLD^Gold plan|INS1|Acme Insurance"


def test_in2_enriches_the_coverage_of_its_in1() -> None:
    in2 = seg(
        "IN2",
        f2="111-22-3333",
        f6="MC-123",
        f8="MA-456",
        f61="MB-789^^^ACME",
        f70="Big Employer Inc^^^^^^^^^EMP-1",
        f72="01^Patient is insured^HL70344",
    )
    pid = "PID|1||MRN1^^^HOSP^MR||Doe^Jane||19800215|F\r"
    result = valid(message("ADT^A01", IN1, in2, pid=pid))
    coverage, patient = one(result, "Coverage"), one(result, "Patient")
    assert coverage["identifier"] == [
        {
            "system": "http://hl7.org/fhir/sid/us-medicare",
            "value": "MC-123",
            "type": {"coding": [{"system": V2_0203, "code": "MC"}]},
        },
        {
            "system": "http://hl7.org/fhir/sid/us-medicaid",
            "value": "MA-456",
            "type": {"coding": [{"system": V2_0203, "code": "MA"}]},
        },
        {"value": "MB-789", "type": {"coding": [{"system": V2_0203, "code": "MB"}]}},
    ]
    assert coverage["relationship"]["coding"][0]["code"] == "self"
    assert coverage["subscriber"] == ref(result, patient)
    assert coverage["policyHolder"] == {
        "display": "Big Employer Inc",
        "identifier": {"value": "EMP-1"},
        "type": "Organization",
    }
    assert {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "111-22-3333"}.items() <= patient[
        "identifier"
    ][-1].items()


def test_in1_relationship_wins_and_in2_edges() -> None:
    in1 = IN1 + "|||||||||||||SPO"
    result = valid(
        mapped(
            "ADT^A08",
            in1,
            "IN2||999-00-1111|||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||01",
        )
    )
    coverage, patient = one(result, "Coverage"), one(result, "Patient")
    assert coverage["relationship"]["coding"][0]["code"] == "spouse" and "subscriber" not in coverage
    assert "999-00-1111" not in str(patient)  # not the patient's SSN: the patient is not the subscriber
    assert "identifier" not in coverage
    unknown = valid(mapped("ADT^A08", IN1, seg("IN2", f72="09^Unknown^HL70344")))
    assert "relationship" not in one(unknown, "Coverage") and issues(unknown) == {("W", "103", "IN2-72")}
    alone = valid(mapped("ADT^A08", seg("IN2", f6="MC-1")))
    assert not resources(alone, "Coverage")
    skipped = valid(mapped("ADT^A08", IN1, "IN2", "IN1|2", seg("IN2", f6="MC-2")))
    assert "identifier" not in one(skipped, "Coverage")  # the second IN2 belongs to the skipped IN1
    assert issues(skipped) == {("W", "101", "IN1-3")}
    # a plan without a company: the Coverage is kept, its payor (1..1) marked unknown
    plan_only = valid(mapped("ADT^A04", "IN1|1|PAR^PARENT||||LUIGI"))
    unknown_payor = one(plan_only, "Coverage")
    assert unknown_payor["payor"] == [
        {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
            ]
        }
    ]
    assert unknown_payor["class"][0]["value"] == "PAR" and issues(plan_only) == {("W", "101", "IN1-3")}
    kept = valid(mapped("ADT^A08", IN1 + "|||||||||||||SEL", seg("IN2", f2="000-00-0000")))
    ssns = [i["value"] for i in one(kept, "Patient")["identifier"] if i.get("system", "").endswith("us-ssn")]
    assert ssns == ["123-45-6789"]  # PID-19 stays the patient's SSN


# ---- ROL / PRT → participation --------------------------------------------------------------------
def test_rol_after_pid_after_pv1_and_after_pr1() -> None:
    result = valid(
        mapped(
            "ADT^A01",
            "PD1",
            "ROL|1|AD|PP^Primary Care Provider^HL70443|GP1^Good^Gina",
            "ROL|2|AD|FHCP^Family health care professional^HL70443|N1^Nurse^Nia||||||||^WPN^PH^^^555^1234567",
            "PV1|1|I|W^1^2||||||||||||||||V1^^^HOSP^VN",
            "ROL|3|AD|AT^Attending^HL70443|A1^Attend^Ann|20240301080000+0100|20240302",
            "ROL|4|AD|CP|C1^Cons^Cid",
            "ROL|5|DE|RP^Referring^HL70443|R1^Ref^Rob",
            "PR1|1||0DTJ4ZZ^Appendectomy^I10P||20240302",
            "ROL|6|AD|SURG^Surgeon^L|S1^Surgeon^Sam",
        )
    )
    patient, encounter = one(result, "Patient"), one(result, "Encounter")
    assert patient["generalPractitioner"] == [
        {"identifier": {"value": "GP1"}, "type": "Practitioner", "display": "Gina Good"}
    ]
    team = one(result, "CareTeam")
    assert team["id"] == stable_id("CareTeam", f"Patient/{PATIENT_ID}", "LAB^HOSP")
    assert team["subject"] == ref(result, patient) and team["status"] == "active"
    assert team["participant"] == [
        {
            "member": {"identifier": {"value": "N1"}, "type": "Practitioner", "display": "Nia Nurse"},
            "role": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0443",
                            "code": "FHCP",
                            "display": "Family health care professional",
                        }
                    ]
                }
            ],
        }
    ]
    attending, consultant = encounter["participant"]
    assert attending["individual"]["identifier"]["value"] == "A1"
    assert attending["type"][0]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0443", "code": "AT", "display": "Attending"},
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "ATND",
            "display": "attender",
        },
    ]
    assert attending["period"] == {"start": "2024-03-01T08:00:00+01:00", "end": "2024-03-02"}
    assert [c["code"] for c in consultant["type"][0]["coding"]] == ["CP", "CON"]  # no system sent: table 0443
    procedure = one(result, "Procedure")
    assert procedure["performer"] == [
        {
            "actor": {"identifier": {"value": "S1"}, "type": "Practitioner", "display": "Sam Surgeon"},
            "function": {"coding": [{"code": "SURG", "display": "Surgeon"}]},
        }
    ]


def test_rol_and_prt_edges() -> None:
    result = valid(
        mapped(
            "ADT^A08",
            "PV1|1|O",
            "ROL|1|AD|AT^Attending^HL70443",
            "ROL|2|AD|AT^Attending^HL70443|A1^Attend^Ann|2024-03-01",
            "ROL|3|D|AT^Attending^HL70443|A2^Gone^Gil",
            "PRT|1|AD||AD^Admitting Provider^HL70912|||||General Hospital",
            "IN1|1|GOLD|INS1|Acme",
            "ROL|4|AD|AT|A3^Insurer^Ian",
        )
    )
    [participant] = one(result, "Encounter")["participant"]
    assert participant["individual"]["identifier"]["value"] == "A1" and "period" not in participant
    assert issues(result) == {("W", "101", "ROL-4"), ("W", "102", "ROL-5")}
    assert "participant" not in one(result, "Coverage")
    assert not resources(
        map_message(parse("MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rROL|1|AD|PP|X1\r")), "Patient"
    )


def test_prt_in_result_and_order_groups() -> None:
    prt = "PRT|{n}|AD||{role}^Role^HL70912|{who}^Person^Pat"
    result = valid(
        message(
            "ORU^R01^ORU_R01",
            "ORC|RE|P1^EHR|F1^LAB",
            prt.format(n=1, role="OP", who="OP1"),
            "OBR|1|P1^EHR|F1^LAB|CBC^Blood count^L||||||||||||||||||||F",
            prt.format(n=2, role="PRI", who="PRI1"),
            prt.format(n=3, role="TN", who="TN1"),
            prt.format(n=4, role="CP", who="CP1"),
            "OBX|1|NM|718-7^Hemoglobin^LN||13.2|||||F",
            prt.format(n=5, role="RO", who="OBS1"),
            "SPM|1|S1&LAB||BLD^Blood^HL70487",
            prt.format(n=6, role="SC", who="SC1"),
        )
    )
    request, report, obs = (
        one(result, "ServiceRequest"),
        one(result, "DiagnosticReport"),
        one(result, "Observation"),
    )
    assert request["requester"]["identifier"]["value"] == "OP1"  # ORC-12 and OBR-16 are empty
    assert [p["identifier"]["value"] for p in report["resultsInterpreter"]] == ["PRI1"]
    assert [p["identifier"]["value"] for p in report["performer"]] == ["TN1"]
    assert [p["identifier"]["value"] for p in obs["performer"]] == ["OBS1"]
    assert one(result, "Specimen")["collection"]["collector"]["identifier"]["value"] == "SC1"
    order = valid(
        message(
            "OML^O21^OML_O21",
            seg("ORC", f1="NW", f2="P2^EHR", f12="D1^Doc^Dan"),
            prt.format(n=1, role="OP", who="OP2"),
            "OBR|1|P2^EHR||CBC^Blood count^L",
            prt.format(n=2, role="TN", who="TN2"),
            prt.format(n=3, role="OP", who="OP3"),
        )
    )
    request = one(order, "ServiceRequest")
    assert request["requester"]["identifier"]["value"] == "D1"  # ORC-12 first, then the PRT
    assert [p["identifier"]["value"] for p in request["performer"]] == ["TN2"]


# ---- CON → Consent --------------------------------------------------------------------------------
TXA = "TXA|1|CN^Consult note^HL70270|TX|20240301||20240301||||||DOC-7^EHR|||||AU||AV"
CON = seg(
    "CON",
    f1="1",
    f2="001^Release of Information^HL70496",
    f3="ROI-FORM v2",
    f4="CF-42^EHR",
    f5="I do not authorise the release of this note.",
    f6="Withhold from all recipients.",
    f11="A^Active^HL70498",
    f13="20240301093000+0100",
    f14="20240301",
    f15="20250301",
    f21="N",
)


def _mdm(*segments: str, version: str = "2.8") -> MappedMessage:
    header = f"MSH|^~\\&|DOCS|HOSP|GW|HOSP|20240301101500+0100||MDM^T02^MDM_T02|C1|P|{version}\r"
    return map_message(parse(header + PID + "\r".join(segments)))


def test_con_to_consent_field_by_field() -> None:
    result = valid(_mdm(TXA, CON, "OBX|1|TX|NOTE^Note^L||Sensitive text||||||F"))
    consent, document = one(result, "Consent"), one(result, "DocumentReference")
    assert consent["id"] == stable_id("Consent", "EHR", "CF-42")
    assert consent["identifier"] == [{"value": "CF-42", "assigner": {"display": "EHR"}}]
    assert consent["status"] == "active"
    assert consent["scope"] == {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
        ]
    }
    assert consent["category"] == [
        {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "64292-6",
                    "display": "Release of information consent",
                },
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0496",
                    "code": "001",
                    "display": "Release of Information/MR / Authorization to Disclosure "
                    "Protected Health Information",
                },
            ],
            "text": "Release of Information",  # the sender's words, beside table 0496's display
        }
    ]
    assert consent["patient"] == ref(result, one(result, "Patient"))
    assert consent["performer"] == [consent["patient"]]
    assert consent["dateTime"] == "2024-03-01T09:30:00+01:00"
    assert consent["policyRule"] == {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "OPTOUT",
                "display": "op-out",
            }
        ],
        "text": "ROI-FORM v2",
    }
    assert consent["provision"] == {
        "type": "deny",
        "period": {"start": "2024-03-01", "end": "2025-03-01"},
        "data": [{"meaning": "instance", "reference": ref(result, document)}],
    }
    attachment = consent["sourceAttachment"]
    assert attachment["contentType"] == "text/plain" and attachment["title"] == "ROI-FORM v2"
    text = base64.b64decode(attachment["data"]).decode()
    assert text == "I do not authorise the release of this note.\nWithhold from all recipients."


@pytest.mark.parametrize(
    ("code", "status"),
    [("A", "active"), ("L", "active"), ("P", "proposed"), ("X", "inactive")],
)
def test_con_11_status_table_0498(code: str, status: str) -> None:
    con = CON.replace("A^Active^HL70498", code)
    assert one(valid(_mdm(TXA, con)), "Consent")["status"] == status


def test_a_refused_privacy_consent_is_an_enforced_deny_and_a_refused_treatment_consent_is_rejected() -> None:
    """CON-11 R on a disclosure consent: the patient said no. A `rejected` Consent would not be in
    force and the default policy could disclose; it becomes an active deny, whatever CON-21 says."""
    refused = one(valid(_mdm(TXA, CON.replace("A^Active^HL70498", "R").replace("|N", "|F"))), "Consent")
    assert refused["status"] == "active" and refused["provision"]["type"] == "deny"
    assert refused["policyRule"]["coding"][0]["code"] == "OPTOUT"
    procedure = seg("CON", f1="1", f2="002^Medical Procedure (invasive)^HL70496", f3="SURG-1", f11="R")
    assert one(valid(_mdm(procedure)), "Consent")["status"] == "rejected"


@pytest.mark.parametrize(("status", "code"), [("B", "103"), ("Q", "103"), ("", "101")])
def test_con_without_a_consent_status_makes_no_consent_and_says_so(status: str, code: str) -> None:
    result = valid(_mdm(TXA, CON.replace("A^Active^HL70498", status)))
    assert not resources(result, "Consent")
    assert issues(result) == {("W", code, "CON-11")}
    [ack] = acknowledgements(
        parse("MSH|^~\\&|A|B|C|D|2024||MDM^T02|C1|P|2.8\r"), Outcome.ACCEPTED, result.issues
    )
    err = next(s for s in ack.split("\r") if s.startswith("ERR")).split("|")
    assert err[2] == "CON^1^11" and err[4] == "W"  # acknowledged AA with a warning, not rejected


def test_con_disclosure_levels_scope_and_consenter() -> None:
    full = one(valid(_mdm(TXA, CON.replace("|N", "|F"))), "Consent")
    assert full["provision"]["type"] == "permit" and full["policyRule"]["coding"][0]["code"] == "OPTIN"
    partial = valid(_mdm(TXA, CON.replace("|N", "|P")))
    assert (
        "provision" not in one(partial, "Consent") and "coding" not in one(partial, "Consent")["policyRule"]
    )
    assert issues(partial) == {("W", "103", "CON-21")}
    odd = valid(_mdm(TXA, CON.replace("|N", "|Z")))
    assert "provision" not in one(odd, "Consent") and issues(odd) == {("W", "103", "CON-21")}
    procedure = seg(
        "CON",
        f1="1",
        f2="002^Medical Procedure (invasive)^HL70496",
        f3="SURG-1",
        f11="A",
        f24="Roe^Rick",
        f25="2",
    )
    treatment = one(valid(_mdm(procedure)), "Consent")
    assert treatment["scope"]["coding"][0]["code"] == "treatment" and "provision" not in treatment
    assert treatment["category"][0]["coding"][0]["code"] == "59284-0"
    assert treatment["performer"] == [{"type": "RelatedPerson", "display": "Rick Roe"}]
    assert treatment["dateTime"] == "2024-03-01T10:15:00+01:00"  # no CON-13: MSH-7
    whole = one(
        valid(_mdm(seg("CON", f1="1", f2="001", f11="A", f13="2024-03-01", f24="Doe^Jane", f25="1"))),
        "Consent",
    )
    assert whole["provision"] == {"type": "permit"}  # an active release authorisation, not about one document
    assert whole["performer"] == [whole["patient"]]
    bad_date = valid(_mdm(seg("CON", f1="1", f2="001", f11="A", f13="2024-03-01", f14="soon")))
    assert issues(bad_date) == {("W", "102", "CON-13"), ("W", "102", "CON-14")}
    nothing = valid(_mdm(seg("CON", f1="1", f2="002", f11="A")))
    assert not resources(nothing, "Consent") and issues(nothing) == {("W", "101", "CON-3")}
    again = one(valid(_mdm(procedure)), "Consent")
    assert again["id"] == treatment["id"] == stable_id("Consent", f"Patient/{PATIENT_ID}", "002|SURG-1|")


def test_every_structure_that_carries_con_gets_a_consent() -> None:
    """hl7apy's v2 structures that carry CON (MDM_T01/T02 from v2.7): each maps its CON."""
    carried = set()
    for version in ("2_5", "2_5_1", "2_6", "2_7", "2_8", "2_8_1", "2_8_2"):
        module = importlib.import_module(f"hl7apy.v{version}")
        carried |= {(version, name) for name, node in module.MESSAGES.items() if _paths(module, node, "CON")}
    structures = {name for _, name in carried}
    assert structures == {"MDM_T01", "MDM_T02"}
    for version, name in sorted(carried):
        code, trigger = name.split("_")
        text = f"MSH|^~\\&|A|B|C|D|2024||{code}^{trigger}^{name}|1|P|{version.replace('_', '.')}\r" + PID
        msg = parse(text + TXA + "\r" + CON + "\r")
        assert check_supported(msg) is None
        assert one(valid(map_message(msg)), "Consent")["provision"]["type"] == "deny"


def test_segments_without_their_context_add_nothing() -> None:
    orphan = map_message(
        parse(
            "MSH|^~\\&|A|B|C|D|2024||MDM^T02|1|P|2.8\rCON|1|001|F||||||||A\rSPM|1|S1&L||BLD\rPRT|1|AD||OP|X1\r"
        )
    )
    assert [e["resource"]["resourceType"] for e in orphan.bundle["entry"]] == ["MessageHeader"]
    assert not orphan.issues
    result = valid(
        mapped(
            "ADT^A01",
            "ROL|1|AD||N2^Nurse^Nell",
            "PV1|1|O",
            "OBX|1|ST|||no code",
            "PRT|1|AD||TN^Technician^HL70912|T1^Tech^Tom",
            "SPM|1|S1&LAB||BLD^Blood^HL70487|||||||||||||||||||||||PPT^Plastic tube^HL70785",
            "PRT|2|AD||OP^Ordering^HL70912|O1^Order^Olga",
        )
    )
    assert one(result, "CareTeam")["participant"] == [
        {"member": {"identifier": {"value": "N2"}, "type": "Practitioner", "display": "Nell Nurse"}}
    ]
    assert "participant" not in one(result, "Encounter")  # the PRT followed a skipped OBX, not the PV1
    specimen = one(result, "Specimen")
    assert specimen["container"] == [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0785",
                        "code": "PPT",
                        "display": "Plastic tube",
                    }
                ]
            }
        }
    ]
    assert "collection" not in specimen  # an ordering provider is no collector
    assert {i.location for i in result.issues} == {"OBX-3"}
    lost = valid(
        mapped("ADT^A01", "PV2|||R^Reason", "ROL|1|AD|AT|A1^Attend", "OBX|1|ST|||x", "PRT|1|AD||TN|T1^Tech")
    )
    assert not resources(lost, "Encounter") and not resources(lost, "CareTeam")
    assert "participant" not in one(lost, "Patient") and {i.location for i in lost.issues} == {"OBX-3"}


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("123456789012345678901234567890", "an integer past 64 bits, which cannot be stored"),
        ("1" + "0" * 400 + ".5", "a float would be infinite (stored as null)"),
        ("0." + "0" * 400 + "1", "a float would be 0"),
    ],
)
def test_an_nm_value_no_fhir_decimal_holds_is_kept_as_text_with_a_warning(sent: str, kept: str) -> None:
    result = mapped("ORU^R01", f"OBR|1||F1|2345-7^Glucose^LN\rOBX|1|NM|2345-7^Glucose^LN||{sent}|mg|||||F")
    observation = one(result, "Observation")
    assert observation["valueString"] == sent and "valueQuantity" not in observation, kept
    assert [(i.severity, i.location) for i in result.issues] == [("W", "OBX-5")]


def test_nm_values_within_eighteen_significant_digits_stay_numbers() -> None:
    result = mapped(
        "ORU^R01", "OBR|1||F1|2345-7^Glucose^LN\rOBX|1|NM|2345-7^Glucose^LN||-000123456789012345.678|mg|||||F"
    )
    assert one(result, "Observation")["valueQuantity"]["value"] == -123456789012345.678
