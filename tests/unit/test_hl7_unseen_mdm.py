"""MDM^T01-T11 documents (beyond the corpus): TXA + OBX → DocumentReference (IG TXA[DocumentReference],
OBX[DocumentReference] maps; DocumentConfidentialityStatus concept map)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

PATIENT = [
    "PID|1||MRN7788^^^GENHOSP^MR||Garcia^Elena^M||19780412|F",
    "PV1|1|I|4W^401^A^GENHOSP||||||||||||||||V5566^^^GENHOSP^VN",
]
DOC_OID = "2.16.840.1.113883.19.5"


def txa(
    *,
    number: str = "DOC-2002",
    parent: str = "",
    completion: str = "LA",
    confidentiality: str = "",
    availability: str = "AV",
) -> str:
    return (
        "TXA|1|DS^Discharge summary^HL70270|TX|20240730100000-0400|7777^Primary^Pat|20240801113000-0400|"
        f"20240801115000-0400||8888^Author^Ann^^^Dr|9999^Signer^Sam||{number}^TRANS^{DOC_OID}^ISO|"
        f"{parent}|||ds_2002.txt|{completion}|{confidentiality}|{availability}||Corrected medications||||"
        "Discharge summary (revised)"
    )


def mdm(trigger: str, *segments: str) -> MappedMessage:
    msh = f"MSH|^~\\&|TRANS|GENHOSP|EHR|GENHOSP|20240801120000-0400||MDM^{trigger}|MDM4001|P|2.5.1"
    return mapped("\r".join([msh, f"EVN|{trigger}|20240801120000-0400", *PATIENT, *segments]))


def document(result: MappedMessage) -> dict[str, Any]:
    [found] = of(result, "DocumentReference")
    return found


def test_original_document_with_content() -> None:
    doc = document(
        mdm(
            "T02",
            txa(confidentiality="R"),
            "OBX|1|TX|18842-5^Discharge summary^LN||Patient discharged home.||||||F",
            "OBX|2|TX|18842-5^Discharge summary^LN||Follow up in 2 weeks.||||||F",
            "OBX|3|ED|18842-5^Discharge summary^LN||^application^pdf^Base64^SGVsbG8=||||||F",
        )
    )
    assert (doc["status"], doc["docStatus"]) == ("current", "final")
    assert doc["type"]["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0270",
            "code": "DS",
            "display": "Discharge summary",
        }
    ]
    assert doc["masterIdentifier"] == {
        "value": "DOC-2002",
        "system": f"urn:oid:{DOC_OID}",
        "assigner": {"display": "TRANS"},
    }
    assert doc["identifier"] == [{"value": "ds_2002.txt"}]  # TXA-16 unique document file name
    assert doc["date"] == "2024-08-01T11:30:00-04:00"  # TXA-6 origination, not TXA-4 activity
    assert doc["description"] == "Discharge summary (revised)"  # TXA-25
    assert doc["author"] == [
        {"identifier": {"value": "8888"}, "type": "Practitioner", "display": "Dr Ann Author"}
    ]
    assert doc["authenticator"]["display"] == "Sam Signer"
    assert doc["securityLabel"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0272",
                    "code": "R",
                    "display": "Restricted",
                },
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                    "code": "R",
                    "display": "restricted",
                },
            ]
        }
    ]
    text, pdf = doc["content"]
    assert text["attachment"]["contentType"] == "text/plain"
    assert (
        base64.b64decode(text["attachment"]["data"]).decode()
        == "Patient discharged home.\nFollow up in 2 weeks."
    )
    assert pdf == {"attachment": {"contentType": "application/pdf", "data": "SGVsbG8="}}
    assert "relatesTo" not in doc


@pytest.mark.parametrize(
    ("trigger", "code"), [("T06", "appends"), ("T05", "appends"), ("T10", "replaces"), ("T09", "replaces")]
)
def test_parent_document_is_appended_to_or_replaced(trigger: str, code: str) -> None:
    doc = document(mdm(trigger, txa(number="DOC-2003", parent=f"DOC-2001^TRANS^{DOC_OID}^ISO")))
    assert doc["relatesTo"] == [
        {
            "code": code,
            "target": {
                "identifier": {
                    "value": "DOC-2001",
                    "system": f"urn:oid:{DOC_OID}",
                    "assigner": {"display": "TRANS"},
                }
            },
        }
    ]


@pytest.mark.parametrize(
    ("confidentiality", "v3"),
    [("V", "V"), ("U", "N")],
)
def test_confidentiality_is_a_security_label(confidentiality: str, v3: str) -> None:
    doc = document(mdm("T02", txa(confidentiality=confidentiality)))
    assert [c["code"] for c in doc["securityLabel"][0]["coding"]] == [confidentiality, v3]


def test_unknown_confidentiality_is_a_warning() -> None:
    result = mdm("T02", txa(confidentiality="Q"))
    assert "securityLabel" not in document(result)
    assert [(i.severity, i.location) for i in result.issues] == [("W", "TXA-18")]


@pytest.mark.parametrize(
    ("trigger", "completion", "availability", "status", "doc_status"),
    [
        ("T01", "DI", "UN", "current", "preliminary"),
        ("T03", "AU", "AV", "current", "final"),
        ("T04", "LA", "OB", "superseded", "final"),
        ("T11", "LA", "AV", "entered-in-error", "final"),
        ("T08", "IP", "CA", "entered-in-error", "preliminary"),
    ],
)
def test_status_and_doc_status(
    trigger: str, completion: str, availability: str, status: str, doc_status: str
) -> None:
    doc = document(mdm(trigger, txa(completion=completion, availability=availability)))
    assert (doc["status"], doc["docStatus"]) == (status, doc_status)


def test_origination_without_time_falls_back_to_activity_time() -> None:
    segment = txa().replace("|20240801113000-0400|", "|20240801|", 1)
    assert document(mdm("T02", segment))["date"] == "2024-07-30T10:00:00-04:00"
