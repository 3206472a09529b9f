"""ORU^R01 OBX value types and fields the corpus barely has, against the IG's OBX[Observation] map."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

HEAD = [
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240601120000+0000||ORU^R01^ORU_R01|ORU0001|P|2.5.1",
    "PID|1||MRN77^^^HOSP^MR||Green^Lee||19900101|M",
    "ORC|RE|PL-1^EHR|FL-1^LIS",
    "OBR|1|PL-1^EHR|FL-1^LIS|24323-8^Metabolic panel^LN|||20240601080000+0000|||||||||||||||"
    "20240601113000+0000|||F",
]
UCUM = "http://unitsofmeasure.org"


def oru(*obx: str) -> MappedMessage:
    return mapped("\r".join([*HEAD, *obx]))


def observation(result: MappedMessage) -> dict[str, Any]:
    [found] = of(result, "Observation")
    return found


def test_nm_with_units_range_flag_status_and_times() -> None:
    obs = observation(
        oru(
            "OBX|1|NM|2345-7^Glucose^LN||105|mg/dL^mg/dL^UCUM|70-99|H^High^HL70078|||C|||"
            "20240601080000+0000|||||20240601100000+0000"
        )
    )
    assert obs["status"] == "corrected"
    assert obs["valueQuantity"] == {"value": 105, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    assert obs["referenceRange"] == [
        {
            "low": {"value": 70, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
            "high": {"value": 99, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
            "text": "70-99",
        }
    ]
    assert obs["interpretation"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": "H",
                    "display": "High",
                }
            ]
        }
    ]
    assert obs["effectiveDateTime"] == "2024-06-01T08:00:00+00:00"
    # OBX-19 is the analysis time (IG extension), the result is issued with its report (OBR-22)
    assert obs["extension"] == [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time",
            "valueDateTime": "2024-06-01T10:00:00+00:00",
        }
    ]
    assert obs["issued"] == "2024-06-01T11:30:00+00:00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<^0.5", {"valueQuantity": {"value": 0.5, "comparator": "<"}}),
        (">=^10", {"valueQuantity": {"value": 10, "comparator": ">="}}),
        ("^1^:^128", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}),
        ("^1^/^2", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 2}}}),
        ("^1.005^-^1.010", {"valueRange": {"low": {"value": 1.005}, "high": {"value": 1.01}}}),
        ("^2^+", {"valueString": "2 +"}),
        ("<>^5", {"valueString": "<> 5"}),
    ],
)
def test_structured_numeric(value: str, expected: dict[str, Any]) -> None:
    obs = observation(oru(f"OBX|1|SN|X^Y^L||{value}||||||F"))
    assert {k: v for k, v in obs.items() if k.startswith("value")} == expected


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("DTM", "20240601073000+0000", {"valueDateTime": "2024-06-01T07:30:00+00:00"}),
        ("DT", "20240530", {"valueDateTime": "2024-05-30"}),
        ("TS", "202405301215", {"valueDateTime": "2024-05-30T12:15:00+00:00"}),
        ("DR", "20240101^20240131", {"valuePeriod": {"start": "2024-01-01", "end": "2024-01-31"}}),
        ("NR", "3.5^5.1", {"valueRange": {"low": {"value": 3.5}, "high": {"value": 5.1}}}),
        ("TX", "Line one~Line two~Line three", {"valueString": "Line one\nLine two\nLine three"}),
        ("FT", "Para 1\\.br\\Para 2", {"valueString": "Para 1\nPara 2"}),
        ("CWE", "^^^^^^^^Gram negative rods", {"valueCodeableConcept": {"text": "Gram negative rods"}}),
        ("CWE", "^No growth", {"valueCodeableConcept": {"text": "No growth"}}),
    ],
)
def test_value_types(kind: str, value: str, expected: dict[str, Any]) -> None:
    obs = observation(oru(f"OBX|1|{kind}|X^Y^L||{value}||||||F"))
    assert {k: v for k, v in obs.items() if k.startswith("value")} == expected


@pytest.mark.parametrize(
    ("code", "status"), [("F", "final"), ("C", "corrected"), ("P", "preliminary"), ("X", "cancelled")]
)
def test_result_status(code: str, status: str) -> None:
    assert observation(oru(f"OBX|1|NM|X^Y^L||{'' if code == 'X' else '1'}||||||{code}"))["status"] == status


def test_cancelled_result_says_why_its_value_is_absent() -> None:
    obs = observation(oru("OBX|1|NM|2823-3^Potassium^LN||||||||X"))
    assert obs["dataAbsentReason"] == {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": "not-performed",
            }
        ]
    }


def test_bad_values_are_warnings_naming_the_field() -> None:
    result = oru("OBX|1|DR|X^Y^L||20241399^20240131||||||F", "OBX|2|SN|X^Z^L||abc||||||F")
    assert [(i.severity, i.location) for i in result.issues] == [("W", "OBX-5"), ("W", "OBX-5")]
    texts = [e["resource"].get("valueString") for e in result.bundle["entry"]]
    assert "abc" in texts
