"""VXU^V04 as a CDC-style immunization registry message (not in the corpus): RXA/RXR/OBX against
the IG's RXA[Immunization], RXR[Immunization] and VXU_V04 maps."""

from __future__ import annotations

from typing import Any

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

VXU = "\r".join(
    [
        "MSH|^~\\&|MYEHR|CLINIC|IIS|STATE|20240410093000-0500||VXU^V04^VXU_V04|VXU0001|P|2.5.1|||ER|AL",
        "PID|1||PAT123^^^CLINIC^MR||Smith^Anna^M^^^^L||20200115|F",
        "ORC|RE||IZ-8801^MYEHR",
        "RXA|0|1|20240410091500-0500||03^MMR^CVX^90707^MMR^CPT|0.5|mL^milliliters^UCUM||"
        "00^New immunization record^NIP001|7832-1^Lemon^Mike^A|||||Z0860BB|20251130|"
        "MSD^Merck and Co., Inc.^MVX|||CP|A|20240410092000-0500|||||CLINIC-A",
        "RXR|C28161^Intramuscular^NCIT|LA^Left Arm^HL70163",
        "OBX|1|CE|64994-7^Vaccine funding program eligibility category^LN|1|"
        "V02^VFC eligible - Medicaid^HL70064||||||F|||20240410",
        "OBX|2|TS|29769-7^Date vaccine information statement presented^LN|2|20240410||||||F",
        "ORC|RE||IZ-8802^MYEHR",
        "RXA|0|1|20240410||998^No vaccine administered^CVX|999||||||||||||00^Parental decision^NIP002||RE",
        "ORC|RE||IZ-8803^MYEHR",
        "RXA|0|1|20240301||141^Influenza, seasonal, injectable^CVX|0.25|mL^mL^UCUM||"
        "01^Historical information^NIP001||||||||||34^Immune: Measles^CDCPHINVS|PA",
        "RXR|IM^Intramuscular^HL70162|RD^Right Deltoid^HL70163",
        "ORC|RE||IZ-8804^MYEHR",
        "RXA|0|1|20240301||141^Influenza^CVX|0.5|mL^mL^UCUM|||||||||||||CP|D",
    ]
)


def _mapped() -> MappedMessage:
    return mapped(VXU)


def _url(result: MappedMessage, resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in result.bundle["entry"] if e["resource"] is resource)


def test_administered_dose() -> None:
    given = of(_mapped(), "Immunization")[0]
    assert given["status"] == "completed" and given["primarySource"] is True
    assert given["vaccineCode"]["coding"] == [
        {"system": "http://hl7.org/fhir/sid/cvx", "code": "03", "display": "MMR"},
        {"system": "http://www.ama-assn.org/go/cpt", "code": "90707", "display": "MMR"},
    ]
    assert given["occurrenceDateTime"] == "2024-04-10T09:15:00-05:00"
    assert given["recorded"] == "2024-04-10T09:20:00-05:00"  # RXA-22, RXA-21 A
    assert given["doseQuantity"] == {
        "value": 0.5,
        "unit": "milliliters",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }
    assert given["lotNumber"] == "Z0860BB" and given["expirationDate"] == "2025-11-30"
    assert given["manufacturer"] == {
        "identifier": {"system": "http://terminology.hl7.org/CodeSystem/MVX", "value": "MSD"},
        "display": "Merck and Co., Inc.",
    }
    assert given["performer"][0]["function"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0443",
        "code": "AP",
    }
    assert given["performer"][0]["actor"]["display"] == "Mike A Lemon"
    assert given["location"] == {"display": "CLINIC-A"}  # RXA-27


def test_rxr_route_keeps_the_senders_code_system() -> None:
    given, _, historical, _ = of(_mapped(), "Immunization")
    assert given["route"]["coding"] == [
        {
            "system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
            "code": "C28161",
            "display": "Intramuscular",
        }
    ]
    assert given["site"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0163"
    assert historical["route"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0162",
        "code": "IM",
        "display": "Intramuscular",
    }


def test_refusal_partial_and_deleted_doses() -> None:
    _, refused, historical, deleted = of(_mapped(), "Immunization")
    assert refused["status"] == "not-done" and "doseQuantity" not in refused  # RXA-6 999
    assert refused["statusReason"]["coding"][0] == {"code": "00", "display": "Parental decision"}
    assert historical["status"] == "completed"  # PA: IG CompletionStatus → completed
    assert historical["primarySource"] is False
    assert historical["reasonCode"][0]["coding"][0]["code"] == "34"  # RXA-19 indication
    assert deleted["status"] == "entered-in-error"  # RXA-21 D


def test_order_group_obx_are_part_of_the_immunization() -> None:
    result = _mapped()
    given = of(result, "Immunization")[0]
    funding, vis = of(result, "Observation")
    assert funding["partOf"] == [{"reference": _url(result, given)}]
    assert vis["partOf"] == funding["partOf"] and vis["valueDateTime"] == "2024-04-10"
    assert funding["valueCodeableConcept"]["coding"][0]["code"] == "V02"
