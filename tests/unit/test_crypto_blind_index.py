"""Index rows of PHI parameters hold keyed blind values; everything else passes through untouched."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_gateway.crypto.blind_index import blind, blind_number, date_text, encrypted_params, protect_rows
from fhir_gateway.crypto.fields import DEFAULT_FIELDS, PhiFields
from fhir_gateway.crypto.keyring import Keyring, KeyVersion, new_dek
from fhir_gateway.fhir.dates import value_range
from fhir_gateway.store.search.extract import extract


@pytest.fixture
def ring() -> Keyring:
    return Keyring([KeyVersion(1, "retiring", new_dek()), KeyVersion(2, "active", new_dek())])


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {
            "system": "http://hospital.example/mrn",
            "value": "12345",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        }
    ],
    "name": [{"family": "Chalmers", "given": ["Peter"]}],
    "telecom": [{"system": "email", "value": "peter@example.org"}],
    "birthDate": "1974-12-25",
    "gender": "male",
    "deceasedBoolean": False,
    "generalPractitioner": [{"reference": "Practitioner/1"}],
}


def test_the_relation_between_phi_paths_and_search_parameters() -> None:
    patient = encrypted_params("Patient", DEFAULT_FIELDS)
    assert {"identifier", "name", "family", "given", "address-city", "telecom", "email", "birthdate"} <= set(
        patient
    )
    assert "gender" not in patient and "general-practitioner" not in patient  # not PHI / a reference
    assert "deceased" not in patient  # only true/false
    assert encrypted_params("Observation", DEFAULT_FIELDS) == {}
    custom = PhiFields.of({"Observation": ["valueString"], "ValueSet": ["useContext"]})
    assert set(encrypted_params("Observation", custom)) == {"value-string", "code-value-string"}
    assert {"context-quantity", "context-type-quantity"} <= set(encrypted_params("ValueSet", custom))


def test_patient_rows_are_blinded_and_the_rest_untouched(ring: Keyring) -> None:
    plain = extract(PATIENT)
    rows = protect_rows(plain, "Patient", ring, DEFAULT_FIELDS)
    text = repr(rows)
    for secret in ("Chalmers", "chalmers", "Peter", "12345", "peter@example.org"):
        assert secret not in text
    family = [r for r in rows.strings if r.param == "family"]
    assert family[0].value == blind(ring, "chalmers", "Patient.family", 2)
    assert family[0].exact == blind(ring, "Chalmers", "Patient.family#exact", 2)
    ident = {r.param: r for r in rows.tokens if r.param.startswith("identifier")}
    assert ident["identifier"].system == "http://hospital.example/mrn"  # namespace stays in clear
    assert ident["identifier"].code == blind(ring, "12345", "Patient.identifier", 2)
    assert ident["identifier:of-type"].code == ident["identifier"].code
    assert ident["identifier:of-type"].system == "http://terminology.hl7.org/CodeSystem/v2-0203|MR"
    (birth,) = [r for r in rows.dates if r.param == "birthdate"]
    low, high = value_range("1974-12-25")  # type: ignore[misc]
    assert birth.low == birth.high == blind_number(ring, date_text(low, high), "Patient.birthdate#date", 2)
    assert birth.low < 2**48 and birth.low == int(birth.low)
    untouched = {("gender", "male"), ("deceased", "false")}
    assert untouched <= {(r.param, r.code) for r in rows.tokens}
    assert rows.references == plain.references


def test_blind_values_differ_per_version_and_value(ring: Keyring) -> None:
    v1 = protect_rows(extract(PATIENT), "Patient", ring, DEFAULT_FIELDS, version=1)
    v2 = protect_rows(extract(PATIENT), "Patient", ring, DEFAULT_FIELDS)
    again = protect_rows(extract(PATIENT), "Patient", ring, DEFAULT_FIELDS)
    assert v2 == again
    assert {r.code for r in v1.tokens if r.param == "identifier"}.isdisjoint(
        {r.code for r in v2.tokens if r.param == "identifier"}
    )
    other = protect_rows(extract({**PATIENT, "birthDate": "1974-12-26"}), "Patient", ring, DEFAULT_FIELDS)
    assert [r for r in other.dates if r.param == "birthdate"] != [
        r for r in v2.dates if r.param == "birthdate"
    ]


def test_types_without_phi_parameters_are_not_copied(ring: Keyring) -> None:
    rows = extract({"resourceType": "Observation", "status": "final"})
    assert protect_rows(rows, "Observation", ring, DEFAULT_FIELDS) is rows


def test_uri_rows_are_blinded_and_numeric_and_composite_rows_dropped(ring: Keyring) -> None:
    fields = PhiFields.of({"ValueSet": ["url", "useContext"], "RiskAssessment": ["prediction"]})
    value_set = {
        "resourceType": "ValueSet",
        "url": "http://example.org/vs/peter",
        "version": "1",
        "useContext": [
            {
                "code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
                "valueQuantity": {"value": 42, "unit": "a"},
            }
        ],
    }
    plain = extract(value_set)
    assert plain.quantities and plain.composites
    rows = protect_rows(plain, "ValueSet", ring, fields)
    assert [r.value for r in rows.uris if r.param == "url"] == [
        blind(ring, "http://example.org/vs/peter", "ValueSet.url", 2)
    ]
    assert rows.quantities == [] and rows.composites == []
    assert [r for r in rows.tokens if r.param == "version"] == [
        r for r in plain.tokens if r.param == "version"
    ]
    risk = extract({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.25}]})
    assert risk.numbers and protect_rows(risk, "RiskAssessment", ring, fields).numbers == []
