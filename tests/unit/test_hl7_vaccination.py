"""VXU observations that describe the vaccination fill the Immunization (and stay Observations)."""

from __future__ import annotations

from typing import Any

from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.messages import map_message
from fhir_gateway.validation.validator import validate

VXU = "\r".join(
    [
        "MSH|^~\\&|IIS|CLINIC|STATE|STATE|20240410090000-0500||VXU^V04^VXU_V04|VX1|P|2.5.1",
        "PID|1||IZ-1^^^CLINIC^MR||Lee^Ana||20200101|F",
        "ORC|RE||IZ-9^CLINIC",
        "RXA|0|1|20240410091500-0500||08^Hep B^CVX|0.5|mL^mL^UCUM||00^New^NIP001",
        "OBX|1|CE|64994-7^Funding eligibility^LN|1|V02^VFC eligible - Medicaid^HL70064||||||F",
        "OBX|2|CE|30963-3^Vaccine funding source^LN|2|VXC50^Public^CDCPHINVS||||||F",
        "OBX|3|CE|69764-9^Document type^LN|3|253088698300028811170411^Hep B VIS^cdcgs1vis||||||F",
        "OBX|4|TS|29768-9^VIS publication date^LN|3|20230512||||||F",
        "OBX|5|TS|29769-7^VIS presented^LN|3|20240410||||||F",
        "OBX|6|CE|30956-7^Vaccine type^LN|4|45^Hep B^CVX||||||F",
        "OBX|7|TS|29769-7^VIS presented^LN|4|20240410||||||F",
    ]
)


def _resources(res_type: str) -> list[dict[str, Any]]:
    bundle = map_message(parse(VXU)).bundle
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == res_type]


def test_funding_and_vis_fill_the_immunization() -> None:
    [immunization] = _resources("Immunization")
    assert immunization["programEligibility"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0064",
                    "code": "V02",
                    "display": "VFC eligible - Medicaid",
                }
            ]
        }
    ]
    assert immunization["fundingSource"]["coding"][0]["code"] == "VXC50"
    # sub-ID 3 names its VIS document; sub-ID 4 has only a date and a vaccine type (imm-1: left out)
    assert immunization["education"] == [
        {
            "documentType": "253088698300028811170411",
            "publicationDate": "2023-05-12",
            "presentationDate": "2024-04-10",
        }
    ]
    assert [i.diagnostics for i in validate(immunization) if i.severity == "error"] == []
    observations = _resources("Observation")
    assert len(observations) == 7  # every OBX is still an Observation, part of the one Immunization
    assert len({str(o["partOf"]) for o in observations}) == 1
