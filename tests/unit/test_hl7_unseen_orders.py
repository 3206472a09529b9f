"""ORM^O01 / OML^O21 orders (not in the corpus): ORC/TQ1/OBR/SPM → ServiceRequest (IG ORC, OBR,
TQ1[ServiceRequest] maps; OrderControlCode[ServiceRequest.status], OrderStatus, Priority concept
maps) and OBR-25 → DiagnosticReport.status (ResultStatus[Non-Queries])."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

PATIENT = [
    "PID|1||MRN7788^^^GENHOSP^MR||Garcia^Elena^M||19780412|F",
    "PV1|1|O|CLINIC^^^GENHOSP||||||||||||||||V5566^^^GENHOSP^VN",
]
PLAC = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}
FILL = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}


def message(kind: str, *segments: str) -> MappedMessage:
    msh = f"MSH|^~\\&|CPOE|GENHOSP|LIS|GENLAB|20240611093000-0400||{kind}|MSG0001|P|2.5.1"
    return mapped("\r".join([msh, *PATIENT, *segments]))


def request(result: MappedMessage) -> dict[str, Any]:
    [found] = of(result, "ServiceRequest")
    return found


def test_new_lab_order_with_tq1_between_orc_and_obr() -> None:
    """OML_O21/ORM_O01 put the TIMING group (TQ1) after ORC, before OBR: it still times the order."""
    result = message(
        "OML^O21^OML_O21",
        "ORC|NW|PLC-7001^EHR^2.16.840.1.113883.19.2^ISO|FIL-9^LAB|GRP-77^EHR|||||20240611092500-0400|||"
        "4455^Ordering^Oscar^^^Dr^^^NPI&2.16.840.1.113883.4.6&ISO^L^^^NPI",
        "TQ1|1||||||20240611100000-0400|20240611110000-0400|A",
        "OBR|1|PLC-7001^EHR^2.16.840.1.113883.19.2^ISO|FIL-9^LAB|2345-7^Glucose SerPl-mCnc^LN"
        + "|" * 27
        + "E11.9^Type 2 diabetes mellitus^I10",
        "SPM|1|SPC-1&EHR^||SER^Serum^HL70487|||||||||||||20240611094500-0400",
    )
    req = request(result)
    assert (req["status"], req["intent"], req["priority"]) == ("active", "order", "asap")
    assert req["occurrencePeriod"] == {
        "start": "2024-06-11T10:00:00-04:00",
        "end": "2024-06-11T11:00:00-04:00",
    }
    assert req["authoredOn"] == "2024-06-11T09:25:00-04:00"
    assert req["identifier"] == [
        {
            "value": "PLC-7001",
            "system": "urn:oid:2.16.840.1.113883.19.2",
            "assigner": {"display": "EHR"},
            "type": {"coding": [PLAC]},
        },
        {"value": "FIL-9", "assigner": {"display": "LAB"}, "type": {"coding": [FILL]}},
        {
            "value": "GRP-77",
            "assigner": {"display": "EHR"},
            "type": {"coding": [{"code": "PGN"}]},  # not a code of R4's table 0203: no system claimed
        },
    ]
    assert req["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "2345-7", "display": "Glucose SerPl-mCnc"}
    ]
    assert req["reasonCode"] == [
        {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/sid/icd-10",
                    "code": "E11.9",
                    "display": "Type 2 diabetes mellitus",
                }
            ]
        }
    ]
    assert req["requester"] == {
        "identifier": {
            "value": "4455",
            "system": "urn:oid:2.16.840.1.113883.4.6",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NPI"}]},
        },
        "type": "Practitioner",
        "display": "Dr Oscar Ordering",
    }
    [specimen] = of(result, "Specimen")
    url = next(e["fullUrl"] for e in result.bundle["entry"] if e["resource"] is specimen)
    assert req["specimen"] == [{"reference": url}]
    assert not of(result, "DiagnosticReport")


def test_orc_7_timing_and_priority_of_a_v23_style_order() -> None:
    """ORC-7 TQ (start TQ-4, end TQ-5, priority TQ-6) times the order when no TQ1 is sent; OBR-27
    is only used without it (IG OBR[ServiceRequest] OBR-27 IF ORC-7 NOT VALUED)."""
    req = request(
        message(
            "ORM^O01^ORM_O01",
            "ORC|NW|PLC-55013^CPOE|||||^^^20240612080000-0400^20240612090000-0400^S||20240611092500-0400",
            "OBR|1|PLC-55013^CPOE||71046^XR chest 2 views^C4" + "|" * 23 + "^^^20240615080000-0400^^R",
        )
    )
    assert req["priority"] == "stat"
    assert req["occurrencePeriod"] == {
        "start": "2024-06-12T08:00:00-04:00",
        "end": "2024-06-12T09:00:00-04:00",
    }


def test_obr_27_then_obr_6_requested_time() -> None:
    only_obr27 = request(
        message(
            "ORM^O01",
            "ORC|NW|P-1^CPOE",
            "OBR|1|P-1^CPOE||71046^XR chest^C4" + "|" * 23 + "^^^20240615080000^^T",
        )
    )
    assert only_obr27["occurrencePeriod"] == {"start": "2024-06-15T08:00:00-04:00"}
    assert only_obr27["priority"] == "urgent"
    requested = request(
        message("ORM^O01", "ORC|NW|P-2^CPOE", "OBR|1|P-2^CPOE||71046^XR chest^C4||20240616070000")
    )
    assert requested["occurrenceDateTime"] == "2024-06-16T07:00:00-04:00"
    # a TQ1 after the OBR replaces the OBR-6 time: occurrence[x] is one element
    both = request(
        message(
            "ORM^O01",
            "ORC|NW|P-3^CPOE",
            "OBR|1|P-3^CPOE||71046^XR chest^C4||20240616070000",
            "TQ1|1||||||20240617070000",
        )
    )
    assert "occurrenceDateTime" not in both and both["occurrencePeriod"] == {
        "start": "2024-06-17T07:00:00-04:00"
    }


@pytest.mark.parametrize(
    ("orc", "status"),
    [
        ("ORC|NW|P-4^CPOE", "active"),
        ("ORC|CA|P-4^CPOE", "active"),  # a cancel request: the order stands until the filler answers
        ("ORC|CR|P-4^CPOE", "revoked"),
        ("ORC|OC|P-4^CPOE", "revoked"),
        ("ORC|DC|P-4^CPOE", "revoked"),
        ("ORC|HD|P-4^CPOE", "active"),  # a hold request
        ("ORC|HR|P-4^CPOE", "on-hold"),
        ("ORC|OH|P-4^CPOE", "on-hold"),
        ("ORC|RL|P-4^CPOE", "active"),
        ("ORC|CA|P-4^CPOE|||CA", "revoked"),  # ORC-5 decides when valued
        ("ORC|HD|P-4^CPOE|||HD", "on-hold"),
        ("ORC|SC|P-4^CPOE|||CM", "completed"),
        ("ORC|SC|P-4^CPOE|||IP", "active"),
        ("ORC|SC|P-4^CPOE|||ER", "entered-in-error"),
        ("ORC|SC|P-4^CPOE|||RP", "revoked"),
    ],
)
def test_status_from_orc_1_and_orc_5(orc: str, status: str) -> None:
    assert request(message("ORM^O01", orc, "OBR|1|P-4^CPOE||71046^XR chest^C4"))["status"] == status


def test_cancel_keeps_authored_on_and_records_the_reason() -> None:
    """ORC-9 of a cancel is the cancel time, not the order's authoring time (IG: authoredOn IF ORC-1
    is NW); ORC-16 is the status reason (request-statusReason), not a reason for the order."""
    req = request(
        message(
            "ORM^O01",
            "ORC|OC|P-5^CPOE|F-5^RIS||CA||||20240612101500-0400|||||||PATREQ^Patient request^L",
            "OBR|1|P-5^CPOE|F-5^RIS|71046^XR chest^C4",
        )
    )
    assert req["status"] == "revoked" and "authoredOn" not in req and "reasonCode" not in req
    assert req["extension"] == [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/request-statusReason",
            "valueCodeableConcept": {"coding": [{"code": "PATREQ", "display": "Patient request"}]},
        }
    ]


def test_reflex_order_and_requester_from_obr_16() -> None:
    req = request(
        message(
            "OML^O21",
            "ORC|NW|P-6^EHR",
            "OBR|1|P-6^EHR||3016-3^TSH^LN|||||||G|||||9988^Reflex^Rita",
        )
    )
    assert req["intent"] == "reflex-order"
    assert req["requester"] == {
        "identifier": {"value": "9988"},
        "type": "Practitioner",
        "display": "Rita Reflex",
    }


def test_orc_without_obr_is_timed_by_its_tq1() -> None:
    req = request(message("ORM^O01", "ORC|NW|P-7^CPOE", "TQ1|1||||||20240620080000-0400||S"))
    assert req["occurrencePeriod"] == {"start": "2024-06-20T08:00:00-04:00"} and req["priority"] == "stat"


@pytest.mark.parametrize("code", ["Y", "Z", "Q"])
def test_report_status_without_a_fhir_status_is_unknown_not_final(code: str) -> None:
    result = message(
        "ORU^R01",
        "ORC|RE|P-8^EHR|F-8^LAB",
        f"OBR|1|P-8^EHR|F-8^LAB|2345-7^Glucose^LN|||20240611080000{'|' * 18}{code}",
    )
    [report] = of(result, "DiagnosticReport")
    assert report["status"] == "unknown"
    assert [(i.severity, i.location) for i in result.issues] == [("W", "OBR-25")]


def test_invalid_timing_is_a_warning_naming_the_field() -> None:
    result = message("ORM^O01", "ORC|NW|P-9^CPOE|||||^^^2024-06-12", "OBR|1|P-9^CPOE||71046^XR chest^C4")
    assert "occurrencePeriod" not in request(result)
    assert [(i.severity, i.location) for i in result.issues] == [("W", "ORC-7")]
