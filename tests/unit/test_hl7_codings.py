"""Codings of known code systems are made true to them at the end of every mapping."""

from __future__ import annotations

from typing import Any

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.mapping.codings import settle_codings
from fhir_gateway.ingest.hl7v2.mapping.context import MapContext

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"


def _settled(resource: dict[str, Any]) -> dict[str, Any]:
    ctx = MapContext(parse("MSH|^~\\&|A|B|C|D|20240101||ADT^A08|1|P|2.5.1"), "A^B")
    ctx.keep(resource, stable_id(resource["resourceType"], "A^B", "x"))
    settle_codings(ctx)
    return resource


def test_a_local_code_of_an_hl7_table_keeps_code_and_display_but_not_the_system() -> None:
    identifier = {"value": "7", "type": {"coding": [{"system": V2_0203, "code": "LOCAL", "display": "Ours"}]}}
    patient = _settled({"resourceType": "Patient", "identifier": [identifier]})
    assert patient["identifier"][0]["type"] == {"coding": [{"code": "LOCAL", "display": "Ours"}]}


def test_a_known_code_takes_the_official_display_and_the_senders_words_become_text() -> None:
    coding = {"system": V2_0203, "code": "MR", "display": "Hospital number"}
    patient = _settled(
        {"resourceType": "Patient", "identifier": [{"value": "7", "type": {"coding": [coding]}}]}
    )
    assert patient["identifier"][0]["type"] == {
        "coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}],
        "text": "Hospital number",
    }
    # text the concept already has stays; a display differing only in case and spacing stays too
    kept = {"coding": [{"system": V2_0203, "code": "MR", "display": "medical  RECORD number"}], "text": "MRN"}
    assert _settled({"resourceType": "Patient", "identifier": [{"value": "7", "type": kept}]})["identifier"][
        0
    ]["type"] == {
        "coding": [{"system": V2_0203, "code": "MR", "display": "medical  RECORD number"}],
        "text": "MRN",
    }


def test_a_lone_coding_and_systems_not_shipped_whole() -> None:
    header = _settled(
        {
            "resourceType": "MessageHeader",
            "eventCoding": {
                "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                "code": "A08",
                "display": "ADT A08",
            },
        }
    )
    assert header["eventCoding"]["display"] == "ADT/ACK -  Update patient information"  # as table 0003 has it
    loinc = {"coding": [{"system": LOINC, "code": "not-a-loinc", "display": "whatever"}]}
    observation = _settled({"resourceType": "Observation", "code": loinc})
    assert observation["code"] == {
        "coding": [{"system": LOINC, "code": "not-a-loinc", "display": "whatever"}]
    }
    bare = _settled({"resourceType": "Observation", "code": {"coding": [{"system": V2_0203, "code": "MR"}]}})
    assert bare["code"] == {"coding": [{"system": V2_0203, "code": "MR"}]}  # no display is invented


def test_only_a_real_oid_makes_a_urn_oid() -> None:
    from fhir_gateway.ingest.hl7v2.mapping.tables import is_oid

    assert is_oid("2.16.840.1.113883.19.2") and is_oid("0.1")
    assert not any(is_oid(text) for text in ("1.2edutake", "3.1", "1.02", "1", "2.16..1", "ISO"))
