"""The structure pass as a client sees it: which issues a resource gets, with what code and where."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_gateway.errors import Issue
from fhir_gateway.validation import primitives
from fhir_gateway.validation.validator import is_valid, validate

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Peter</div>'},
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "telecom": [{"system": "phone", "value": "555"}],
}


def errors(resource: Any, **kwargs: Any) -> list[tuple[str, str, str]]:
    return [
        (i.code, i.expression[0] if i.expression else "", i.diagnostics)
        for i in validate(resource, **kwargs)
        if i.severity in ("error", "fatal")
    ]


def where(resource: Any) -> list[str]:
    return [e for _, e, _ in errors(resource)]


def patient(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(PATIENT)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_a_good_patient_is_valid() -> None:
    issues = validate(PATIENT)
    assert is_valid(issues), issues
    assert all(isinstance(i, Issue) for i in issues)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ([], "A resource must be a JSON object"),
        ({"name": []}, "Unable to find the resourceType property"),
        ({"resourceType": "Nonsense"}, "Unknown resource type"),
        ({"resourceType": "DomainResource"}, "Unknown resource type"),
    ],
)
def test_bad_input_gives_issues_not_exceptions(resource: Any, expected: str) -> None:
    found = errors(resource)
    assert len(found) == 1 and found[0][2] == expected and found[0][0] == "structure"


def test_unknown_element_is_reported_at_its_parent() -> None:
    assert errors(patient(colour="blue")) == [("structure", "Patient", "Unrecognized property 'colour'")]
    nested = patient(name=[{"family": "x", "nickname": "y"}])
    assert where(nested) == ["Patient.name[0]"]


def test_array_and_single_values() -> None:
    assert errors(patient(name={"family": "x"}))[0][:2] == ("structure", "Patient.name")
    assert errors(patient(gender=["male"]))[0][:2] == ("structure", "Patient.gender")
    assert errors(patient(name=[]))[0][:2] == ("structure", "Patient.name")


def test_empty_objects_strings_and_nulls() -> None:
    assert where(patient(name=[{}])) == ["Patient.name[0]"]
    assert where(patient(name=[{"id": "only-an-id"}])) == ["Patient.name[0]"]  # ele-1
    assert where(patient(birthDate="")) == ["Patient.birthDate"]
    assert where(patient(gender=None) | {"gender": None}) == ["Patient.gender"]
    assert where(patient(name=[{"given": ["a", None]}])) == ["Patient.name[0].given[1]"]


def test_primitive_extensions_pair_with_their_values() -> None:
    ext = {
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "y"}]
    }
    assert is_valid(validate(patient(birthDate=None) | {"_birthDate": ext}))
    given = patient(name=[{"given": ["a", None], "_given": [None, ext]}])
    assert is_valid(validate(given))
    assert where(patient(name=[{"given": ["a"], "_given": [None, ext]}])) == ["Patient.name[0].given"]
    assert where(patient(_birthDate="x")) == ["Patient.birthDate"]
    assert where(patient(_birthDate={})) == ["Patient.birthDate"]
    assert where(patient(_colour=ext)) == ["Patient"]


def test_cardinality_and_choices() -> None:
    link = patient(link=[{"type": "seealso"}])
    assert errors(link) == [
        ("structure", "Patient.link[0]", "Patient.link.other: minimum required = 1, but only found 0")
    ]
    both = patient(deceasedBoolean=True, deceasedDateTime="2020-01-01")
    assert where(both) == ["Patient"]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert is_valid(validate(obs | {"valueQuantity": {"value": 1}}))
    assert where(obs | {"valueBogus": 1}) == ["Observation"]
    assert errors(obs | {"valueInteger": "1"})[0][:2] == ("invalid", "Observation.value.ofType(integer)")


def test_expressions_of_nested_resources() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "http://x.org/fhir/Patient/p1", "resource": patient(gender="bogus")}],
    }
    assert where(bundle) == ["Bundle.entry[0].resource/*Patient/p1*/.gender"]
    contained = patient(
        contained=[{"resourceType": "Practitioner", "id": "bad_id"}],
        generalPractitioner=[{"reference": "#bad_id"}],
    )
    assert "Patient.contained[0]/*Practitioner/bad_id*/.id" in where(contained)


def test_too_deep_nesting_is_refused_not_walked() -> None:
    q: dict[str, Any] = {"linkId": "0", "type": "group"}
    top = {"resourceType": "Questionnaire", "status": "draft", "item": [q]}
    for i in range(80):
        inner = {"linkId": str(i + 1), "type": "group"}
        q["item"] = [inner]
        q = inner
    found = errors(top)
    assert any(code == "too-costly" for code, _, _ in found)


@pytest.mark.parametrize(
    ("type_name", "good", "bad"),
    [
        ("boolean", [True, False], ["true", 1, None]),
        ("integer", [0, -5, 2147483647], [2147483648, 1.5, "1", True]),
        ("positiveInt", [1], [0, -1]),
        ("unsignedInt", [0], [-1]),
        ("decimal", [1, 1.5, -0.25], ["1.5", False]),
        ("id", ["a-b.C9", "x" * 64], ["a_b", "x" * 65, "a b"]),
        ("code", ["a b", "x"], [" a", "a  b", "a\tb", ""]),
        (
            "uri",
            ["http://x.org/a", "urn:oid:1.2.3", "urn:uuid:3b0a1f5e-7f7d-4c3e-9d7e-0a1b2c3d4e5f"],
            ["http://x y", "urn:oid:1.02"],
        ),
        ("oid", ["urn:oid:2.16.840"], ["2.16.840"]),
        ("uuid", ["urn:uuid:3b0a1f5e-7f7d-4c3e-9d7e-0a1b2c3d4e5f"], ["urn:uuid:nope"]),
        ("base64Binary", ["aGVsbG8=", "aGVs bG8="], ["%%%2@()()", "abc"]),
        (
            "date",
            ["2024", "2024-02", "2024-02-29"],
            ["2023-02-29", "2024-13", "24-01-01", "2024-01-01T10:00:00Z"],
        ),
        (
            "dateTime",
            ["2024", "2024-01-05", "2024-01-05T10:00:00Z", "2024-01-05T10:00:00.123+14:00"],
            [
                "2024-01-05T10:00",
                "2024-01-05T10:00:00",
                "2024-02-30",
                "2024-01-05T25:00:00Z",
                "2024-01-05T10:00:00+15:00",
            ],
        ),
        ("instant", ["2024-01-05T10:00:00Z"], ["2024-01-05", "2024-01-05T10:00:00"]),
        ("time", ["10:00:00", "23:59:59.5"], ["10:00", "24:00:00"]),
        ("string", ["x", " padded "], ["   ", 5]),
        ("markdown", ["*bold*", "a < b"], ["<resource type>\\<id>"]),
    ],
)
def test_primitives(type_name: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert primitives.check(type_name, value) is None, (type_name, value)
    for value in bad:
        assert primitives.check(type_name, value) is not None, (type_name, value)


def test_bindings_by_strength() -> None:
    assert errors(patient(gender="bogus")) == [
        (
            "code-invalid",
            "Patient.gender",
            "The code provided is not in the value set 'AdministrativeGender' "
            "(http://hl7.org/fhir/ValueSet/administrative-gender), "
            "and a code is required from this value set",
        )
    ]
    marital = {"coding": [{"system": "http://example.org/local", "code": "x"}]}
    issues = validate(patient(maritalStatus=marital))
    assert is_valid(issues)
    assert [(i.severity, i.expression) for i in issues if i.code == "code-invalid"] == [
        ("warning", ["Patient.maritalStatus"])
    ]


def test_codings_against_shipped_code_systems() -> None:
    status = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "bogus"}]
    }
    cond = {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": status}
    assert ("code-invalid", "Condition.clinicalStatus.coding[0].code") in [e[:2] for e in errors(cond)]
    display = copy.deepcopy(cond)
    display["clinicalStatus"]["coding"][0] |= {"code": "active", "display": "ACTIVE "}
    assert is_valid(validate(display))  # case and spacing are forgiven
    display["clinicalStatus"]["coding"][0]["display"] = "Gone"
    assert where(display) == ["Condition.clinicalStatus.coding[0].display"]
    relative = {"resourceType": "Basic", "code": {"coding": [{"system": "local", "code": "x"}]}}
    assert where(relative) == ["Basic.code.coding[0].system"]
    value_set = {
        "resourceType": "Basic",
        "code": {"coding": [{"system": "http://hl7.org/fhir/ValueSet/measure-type", "code": "x"}]},
    }
    assert where(value_set) == ["Basic.code.coding[0].system"]


def test_unexpandable_value_sets_say_not_checked() -> None:
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "NZ"}]}],  # extensible, ISO
    }
    notes = [i for i in validate(questionnaire) if i.code == "not-supported"]
    assert notes and notes[0].severity == "information" and "not checked" in notes[0].diagnostics


BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"


def test_extensions() -> None:
    both = patient(
        extension=[
            {"url": BIRTH_TIME, "valueDateTime": "2020", "extension": [{"url": "b", "valueString": "c"}]}
        ]
    )
    assert errors(both)[0][:2] == ("invariant", "Patient.extension[0]")
    neither = patient(extension=[{"url": BIRTH_TIME}])
    assert where(neither) == ["Patient.extension[0]"]
    versioned = patient(extension=[{"url": "http://x.org/e|1.0", "valueString": "a"}])
    assert where(versioned) == ["Patient.extension[0]"]


def test_attachment_size_must_match_the_data() -> None:
    media = {
        "resourceType": "Media",
        "status": "completed",
        "content": {"contentType": "text/plain", "data": "aGVscCBpJ20gYSBidWc=", "size": 100},
    }
    assert errors(media)[0][:2] == ("structure", "Media.content")
    media["content"]["size"] = 14
    assert is_valid(validate(media))


def test_update_mode_needs_an_id() -> None:
    assert where(patient(id=None)) == []
    assert errors(patient(id=None), mode="update")[0][:2] == ("required", "Patient")


def test_a_choice_of_simple_quantity_is_named_after_quantity() -> None:
    statement = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "subject": {"reference": "Patient/1"},
        "medicationCodeableConcept": {"text": "atorvastatin"},
    }
    dose = {"value": 40, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    assert errors(statement | {"dosage": [{"doseAndRate": [{"doseQuantity": dose}]}]}) == []
    assert where(statement | {"dosage": [{"doseAndRate": [{"doseSimpleQuantity": dose}]}]}) == [
        "MedicationStatement.dosage[0].doseAndRate[0]"
    ]
    # SimpleQuantity prohibits a comparator (max 0): counted and refused, not taken for an array
    compared = statement | {"dosage": [{"doseAndRate": [{"doseQuantity": dose | {"comparator": "<"}}]}]}
    assert {(e[1], e[2]) for e in errors(compared)} == {
        (
            "MedicationStatement.dosage[0].doseAndRate[0].dose.ofType(Quantity)",
            "Quantity.comparator: max allowed = 0, but found 1",
        ),
        (
            "MedicationStatement.dosage[0].doseAndRate[0].dose.ofType(Quantity)",
            "Constraint failed: sqty-1: 'The comparator is not used on a SimpleQuantity'",
        ),
    }


def test_official_example_shapes_the_validator_once_refused() -> None:
    # a no-break space is \S for the spec's (Java) string regex
    assert errors(patient(name=[{"family": "van\u00a0Dijk"}])) == []
    # an extension whose value is given only as its primitive extension still has a value (ext-1)
    note = {
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "_valueCode": {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}
            ]
        },
    }
    assert errors(patient(extension=[note])) == []
    # que-7: an 'exists' condition answers with a boolean
    condition = {"question": "q1", "operator": "exists", "answerBoolean": True}
    item = {"linkId": "q2", "type": "string", "enableWhen": [condition]}
    questionnaire = {"resourceType": "Questionnaire", "status": "draft", "item": [item]}
    assert errors(questionnaire) == []
    item["enableWhen"] = [{"question": "q1", "operator": "exists", "answerString": "yes"}]
    assert [e[2][:24] for e in errors(questionnaire)] == ["Constraint failed: que-7"]
