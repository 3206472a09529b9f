"""RDE^O11 pharmacy orders (not in the corpus): ORC/TQ1/RXE/RXR → MedicationRequest (IG RXO, RXR,
TQ1[MedicationRequest] maps; RXE fields are the RXO ones of the encoded order)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

HEAD = [
    "MSH|^~\\&|CPOE|HOSP|PHARM|HOSP|20240502143000+0200||RDE^O11^RDE_O11|RDE0001|P|2.5.1",
    "PID|1||MRN55^^^HOSP^MR||Brown^Tom||19650304|M",
    "PV1|1|I|4W^401^A^HOSP||||||||||||||||VN900^^^HOSP^VN",
]
RXE = (
    "RXE|^^^20240502150000+0200^^R|197806^Ibuprofen 600 MG Oral Tablet^RXNORM|600|800|"
    "mg^milligram^UCUM|TAB^Tablet^HL70292|^Take with food||N|21|TAB^Tablet^UCUM|2"
)


def rde(*segments: str) -> MappedMessage:
    return mapped("\r".join([*HEAD, *segments]))


def request(result: MappedMessage) -> dict[str, Any]:
    [found] = of(result, "MedicationRequest")
    return found


def test_encoded_order() -> None:
    result = rde(
        "ORC|NW|ORD-7781^CPOE|||||||20240502142500+0200|||1234^Welby^Marcus^^^Dr",
        "TQ1|1||Q8H&Every 8 hours&HL70335||||20240502150000+0200|20240509150000+0200|R",
        RXE,
        "RXR|PO^Oral^HL70162",
    )
    req = request(result)
    assert (req["status"], req["intent"]) == ("active", "order")
    assert req["medicationCodeableConcept"]["coding"] == [
        {
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "code": "197806",
            "display": "Ibuprofen 600 MG Oral Tablet",
        }
    ]
    dosage = req["dosageInstruction"][0]
    [dose] = dosage["doseAndRate"]
    assert dose["type"]["coding"][0]["code"] == "ordered"
    assert dose["doseRange"]["low"] == {
        "value": 600,
        "unit": "milligram",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert dose["doseRange"]["high"]["value"] == 800
    assert dosage["route"]["coding"][0]["code"] == "PO" and dosage["text"] == "Take with food"
    assert dosage["timing"] == {
        "code": {
            "coding": [
                {"code": "Q8H", "display": "Every 8 hours"}  # table 0335 lists only the Q<integer>H pattern
            ]
        },
        "repeat": {
            "boundsPeriod": {"start": "2024-05-02T15:00:00+02:00", "end": "2024-05-09T15:00:00+02:00"}
        },
    }
    assert req["priority"] == "routine"
    assert req["dispenseRequest"] == {
        "quantity": {"value": 21, "unit": "Tablet", "system": "http://unitsofmeasure.org", "code": "TAB"},
        "numberOfRepeatsAllowed": 2,
    }
    assert req["requester"]["display"] == "Dr Marcus Welby"


def test_single_dose_and_timing_after_rxe() -> None:
    rxe = "RXE||197806^Ibuprofen^RXNORM|400||mg^mg^UCUM"
    req = request(rde("ORC|NW|ORD-2^CPOE", rxe, "TQ1|1||BID||||20240503080000+0200||S"))
    assert req["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 400
    assert req["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"] == {
        "start": "2024-05-03T08:00:00+02:00"
    }
    assert req["priority"] == "stat"


@pytest.mark.parametrize(
    ("orc", "status"),
    [
        ("ORC|DC|ORD-3^CPOE", "stopped"),
        ("ORC|OD|ORD-3^CPOE", "stopped"),
        ("ORC|CA|ORD-3^CPOE", "cancelled"),
        ("ORC|OC|ORD-3^CPOE", "cancelled"),
        ("ORC|SC|ORD-3^CPOE|||CM", "completed"),
        ("ORC|SC|ORD-3^CPOE|||DC", "stopped"),
        ("ORC|HD|ORD-3^CPOE", "on-hold"),
    ],
)
def test_status_is_a_medication_request_status(orc: str, status: str) -> None:
    assert request(rde(orc, "RXE||197806^Ibuprofen^RXNORM|400||mg^mg^UCUM"))["status"] == status


def test_rxo_alone_is_the_original_order() -> None:
    req = request(rde("ORC|NW|ORD-4^CPOE", "RXO|197806^Ibuprofen^RXNORM|200|400|mg^mg^UCUM"))
    assert req["intent"] == "original-order"
    assert req["dosageInstruction"][0]["doseAndRate"][0]["doseRange"]["high"]["value"] == 400
