"""PID race, ethnic group, religion and birth time as the extensions FHIR has for them."""

from __future__ import annotations

from typing import Any

from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.mapping.demographics import BIRTH_TIME, CDCREC, ETHNICITY, RACE, RELIGION
from fhir_gateway.ingest.hl7v2.messages import map_message
from fhir_gateway.validation.validator import validate


def _patient(pid: str, msh7: str = "20240701090000") -> dict[str, Any]:
    message = parse(f"MSH|^~\\&|ADT|HOSP|EHR|HOSP|{msh7}||ADT^A08|D1|P|2.5.1\r{pid}")
    [patient] = [
        e["resource"]
        for e in map_message(message).bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert [i.diagnostics for i in validate(patient) if i.severity == "error"] == []
    return patient


def _extension(patient: dict[str, Any], url: str) -> Any:
    return next((e for e in patient.get("extension", []) if e["url"] == url), None)


def _pid(**fields: str) -> str:
    numbered = {int(k[1:]): v for k, v in fields.items()}
    return "|".join(["PID", *(numbered.get(i, "") for i in range(1, max(numbered) + 1))])


def test_race_omb_categories_detailed_codes_and_local_words() -> None:
    patient = _patient(
        _pid(f3="MRN1^^^HOSP^MR", f5="Doe^Jo", f10="2106-3^White^CDCREC~2029-7^Asian Indian^CDCREC~W^Wit^L")
    )
    assert _extension(patient, RACE) == {
        "url": RACE,
        "extension": [
            {"url": "ombCategory", "valueCoding": {"system": CDCREC, "code": "2106-3", "display": "White"}},
            {
                "url": "detailed",
                "valueCoding": {"system": CDCREC, "code": "2029-7", "display": "Asian Indian"},
            },
            {"url": "text", "valueString": "White, Asian Indian, Wit"},
        ],
    }
    alternate = _patient(_pid(f3="MRN1^^^HOSP^MR", f10="W^Wit^L^2106-3^White^CDCREC"))
    assert _extension(alternate, RACE)["extension"] == [
        {"url": "ombCategory", "valueCoding": {"system": CDCREC, "code": "2106-3", "display": "White"}},
        {"url": "text", "valueString": "Wit"},
    ]
    bare = _patient(_pid(f3="MRN1^^^HOSP^MR", f10="2054-5"))
    assert _extension(bare, RACE)["extension"][-1] == {
        "url": "text",
        "valueString": "Black or African American",
    }
    assert _extension(_patient(_pid(f3="MRN1^^^HOSP^MR")), RACE) is None


def test_ethnic_group_from_table_0189_or_cdc_codes() -> None:
    hispanic = _extension(_patient(_pid(f3="MRN1^^^HOSP^MR", f22="H^Hispanic or Latino^HL70189")), ETHNICITY)
    assert hispanic["extension"][0] == {
        "url": "ombCategory",
        "valueCoding": {"system": CDCREC, "code": "2135-2", "display": "Hispanic or Latino"},
    }
    unknown = _extension(_patient(_pid(f3="MRN1^^^HOSP^MR", f22="U")), ETHNICITY)
    assert unknown["extension"] == [
        {
            "url": "ombCategory",
            "valueCoding": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
                "code": "UNK",
                "display": "unknown",
            },
        },
        {"url": "text", "valueString": "unknown"},
    ]


def test_religion_and_birth_time() -> None:
    patient = _patient(
        _pid(f3="MRN1^^^HOSP^MR", f7="200001021530", f17="CAT^Roman Catholic^HL70006"), "20240701090000+0100"
    )
    assert _extension(patient, RELIGION)["valueCodeableConcept"]["coding"][0]["code"] == "CAT"
    assert patient["birthDate"] == "2000-01-02"
    assert patient["_birthDate"] == {
        "extension": [{"url": BIRTH_TIME, "valueDateTime": "2000-01-02T15:30:00+01:00"}]
    }
    # a time with no zone anywhere keeps the date only
    assert "_birthDate" not in _patient(_pid(f3="MRN1^^^HOSP^MR", f7="200001021530"))
