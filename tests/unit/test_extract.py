"""Index extraction: the rows each FHIR datatype yields per parameter type; odd JSON never raises."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_gateway.definitions.search_parameters import params_for
from fhir_gateway.fhir.dates import date_range
from fhir_gateway.store.search.extract import extract, normalize_string
from fhir_gateway.store.search.rows import DATE_MAX, DATE_MIN, IndexRows

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "meta": {
        "versionId": "1",
        "lastUpdated": "2024-01-02T03:04:05.123+00:00",
        "tag": [{"system": "http://example.org/tags", "code": "vip"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "profile": ["http://example.org/StructureDefinition/my-patient|2.0"],
        "source": "http://example.org/source#abc",
    },
    "identifier": [
        {
            "type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Medical Record"},
            "system": "http://hospital.example/mrn",
            "value": "MRN001",
        },
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
    ],
    "active": True,
    "name": [
        {"use": "official", "family": "Müller", "given": ["Jürgen", "Karl"], "prefix": ["Dr."]},
        {"text": "Jürgen  Müller"},
    ],
    "telecom": [{"system": "phone", "value": "+49 30 1234"}, {"system": "email", "value": "jm@example.org"}],
    "gender": "male",
    "birthDate": "1980-05-12",
    "deceasedBoolean": False,
    "address": [
        {
            "line": ["Hauptstraße 1", "Hinterhaus"],
            "city": "São Paulo",
            "postalCode": "01000",
            "country": "BR",
            "state": "SP",
        }
    ],
    "generalPractitioner": [{"reference": "Practitioner/prac-1"}, {"reference": "#contained-1"}],
    "managingOrganization": {"reference": "http://other.example/fhir/Organization/org-9/_history/3"},
    "link": [{"other": {"reference": "urn:uuid:5f1c2a9e-0000-4000-8000-000000000001"}, "type": "seealso"}],
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "bp-1",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "Vital Signs",
                }
            ]
        }
    ],
    "code": {
        "coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
        "text": "BP",
    },
    "subject": {"reference": "Patient/pat-1"},
    "effectiveDateTime": "2021-03-01T09:30:00+01:00",
    "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    "component": [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
            "valueQuantity": {"value": 80.5, "unit": "mmHg"},
        },
        {"code": {"coding": [{"system": LOINC, "code": "9999-9"}]}},
    ],
}


def of(rows: IndexRows, kind: str, param: str) -> set[tuple[Any, ...]]:
    """The rows of one parameter, without the parameter column."""
    return {tuple(getattr(r, f) for f in r.__slots__[1:]) for r in getattr(rows, kind) if r.param == param}


def test_normalize_string() -> None:
    assert normalize_string("  Jürgen   MÜLLER ") == "jurgen muller"
    assert normalize_string("Ångström Straße") == "angstrom strasse"
    assert normalize_string("ＡＢＣ") == "abc"  # NFKD folds compatibility forms
    assert normalize_string("İstanbul") == "istanbul"
    assert normalize_string("Plain ascii\tText") == "plain ascii text"


def test_patient_strings() -> None:
    rows = extract(PATIENT)
    assert of(rows, "strings", "family") == {("muller", "Müller")}
    assert of(rows, "strings", "given") == {("jurgen", "Jürgen"), ("karl", "Karl")}
    assert of(rows, "strings", "name") == {
        ("muller", "Müller"),
        ("jurgen", "Jürgen"),
        ("karl", "Karl"),
        ("dr.", "Dr."),
        ("jurgen muller", "Jürgen  Müller"),
    }
    assert of(rows, "strings", "address") == {
        ("hauptstrasse 1", "Hauptstraße 1"),
        ("hinterhaus", "Hinterhaus"),
        ("sao paulo", "São Paulo"),
        ("01000", "01000"),
        ("br", "BR"),
        ("sp", "SP"),
    }
    assert of(rows, "strings", "address-city") == {("sao paulo", "São Paulo")}


def test_patient_tokens() -> None:
    rows = extract(PATIENT)
    assert of(rows, "tokens", "gender") == {(None, "male", None)}
    assert of(rows, "tokens", "active") == {(None, "true", None)}
    assert of(rows, "tokens", "deceased") == {(None, "false", None)}
    assert of(rows, "tokens", "identifier") == {
        ("http://hospital.example/mrn", "MRN001", "medical record"),
        ("http://hl7.org/fhir/sid/us-ssn", "123-45-6789", None),
    }
    assert of(rows, "tokens", "identifier:of-type") == {(f"{V2_0203}|MR", "MRN001", None)}
    assert of(rows, "tokens", "telecom") == {
        ("phone", "+49 30 1234", None),
        ("email", "jm@example.org", None),
    }
    assert of(rows, "tokens", "email") == {("email", "jm@example.org", None)}
    assert of(rows, "tokens", "phone") == {("phone", "+49 30 1234", None)}
    assert of(rows, "tokens", "_tag") == {("http://example.org/tags", "vip", None)}
    assert of(rows, "tokens", "_security") == {
        ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R", None)
    }
    assert not of(rows, "tokens", "_id")  # _id and _lastUpdated live on the resource row
    assert not of(rows, "dates", "_lastUpdated")


def test_patient_dates_uris_and_references() -> None:
    rows = extract(PATIENT)
    assert of(rows, "dates", "birthdate") == {date_range("1980-05-12")}
    assert of(rows, "uris", "_profile") == {("http://example.org/StructureDefinition/my-patient",)}
    assert of(rows, "uris", "_source") == {("http://example.org/source#abc",)}
    # the "#contained-1" reference is not indexed
    assert of(rows, "references", "general-practitioner") == {("Practitioner", "prac-1", None)}
    assert of(rows, "references", "organization") == {
        ("Organization", "org-9", "http://other.example/fhir/Organization/org-9")
    }
    assert of(rows, "references", "link") == {(None, None, "urn:uuid:5f1c2a9e-0000-4000-8000-000000000001")}


def test_deceased() -> None:
    def deceased(**extra: Any) -> set[tuple[Any, ...]]:
        return of(extract({"resourceType": "Patient", **extra}), "tokens", "deceased")

    assert deceased(deceasedBoolean=True) == {(None, "true", None)}
    assert deceased(deceasedDateTime="2020-01-01") == {(None, "true", None)}
    assert deceased(deceasedBoolean=False) == {(None, "false", None)}
    assert deceased() == {(None, "false", None)}  # `exists() and != false` is false when absent


def test_observation() -> None:
    rows = extract(OBSERVATION)
    assert of(rows, "tokens", "code") == {
        (LOINC, "85354-9", "blood pressure panel"),
        (LOINC, "85354-9", "bp"),
    }
    assert of(rows, "tokens", "combo-code") >= {(LOINC, "8480-6", None), (LOINC, "85354-9", "bp")}
    assert of(rows, "tokens", "component-code") == {
        (LOINC, "8480-6", None),
        (LOINC, "8462-4", None),
        (LOINC, "9999-9", None),
    }
    assert of(rows, "tokens", "category") == {
        ("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "vital signs")
    }
    assert of(rows, "references", "subject") == {("Patient", "pat-1", None)}
    assert of(rows, "references", "patient") == {("Patient", "pat-1", None)}
    assert of(rows, "dates", "date") == {date_range("2021-03-01T09:30:00+01:00")}
    assert of(rows, "quantities", "value-quantity") == {(120.0, UCUM, "mm[Hg]", "mmHg")}
    assert of(rows, "quantities", "component-value-quantity") == {
        (120.0, UCUM, "mm[Hg]", "mmHg"),
        (80.5, None, None, "mmHg"),
    }


def test_observation_composites() -> None:
    rows = extract(OBSERVATION)
    assert of(rows, "composites", "code-value-quantity") == {
        (LOINC, "85354-9", UCUM, "mm[Hg]", 120.0, None, None, None, None)
    }
    assert of(rows, "composites", "component-code-value-quantity") == {
        (LOINC, "8480-6", UCUM, "mm[Hg]", 120.0, None, None, None, None),
        (LOINC, "8462-4", None, "mmHg", 80.5, None, None, None, None),  # the unit text: there is no code
    }
    combo = of(rows, "composites", "combo-code-value-quantity")
    assert len(combo) == 3 and (LOINC, "8462-4", None, "mmHg", 80.5, None, None, None, None) in combo
    assert not of(rows, "composites", "code-value-concept")


def test_composite_kinds() -> None:
    date_obs = {
        "resourceType": "Observation",
        "code": {"coding": [{"code": "21112-8"}]},
        "valuePeriod": {"start": "2000-12-31"},
    }
    low = date_range("2000-12-31")[0]
    assert of(extract(date_obs), "composites", "code-value-date") == {
        (None, "21112-8", None, None, None, low, DATE_MAX, None, None)
    }
    string_obs = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "s", "code": "c"}]},
        "valueString": "Needs  Repeat",
    }
    assert of(extract(string_obs), "composites", "code-value-string") == {
        ("s", "c", None, None, None, None, None, "needs repeat", None)
    }
    doc = {
        "resourceType": "DocumentReference",
        "relatesTo": [
            {"code": "replaces", "target": {"reference": "DocumentReference/d0"}},
            {"code": "appends", "target": {"reference": "#x"}},
        ],
    }
    assert of(extract(doc), "composites", "relationship") == {
        ("DocumentReference", "d0", None, "replaces", None, None, None, None, None)
    }
    sequence = {
        "resourceType": "MolecularSequence",
        "referenceSeq": {"chromosome": {"coding": [{"system": "chr", "code": "1"}]}},
        "variant": [{"start": 100, "end": 101}, {"start": 5}],
    }
    assert of(extract(sequence), "composites", "chromosome-variant-coordinate") == {
        ("chr", "1", None, None, 100.0, None, None, None, 101.0)
    }
    context = {
        "resourceType": "ValueSet",
        "useContext": [
            {
                "code": {"system": "u", "code": "age"},
                "valueRange": {"low": {"value": 18}, "high": {"value": 65}},
            },
            {
                "code": {"system": "u", "code": "focus"},
                "valueCodeableConcept": {"coding": [{"system": "f", "code": "x"}]},
            },
        ],
    }
    rows = extract(context)
    assert of(rows, "composites", "context-type-quantity") == {
        ("u", "age", None, None, 18.0, None, None, None, None),
        ("u", "age", None, None, 65.0, None, None, None, None),
    }
    assert of(rows, "composites", "context-type-value") == {
        ("u", "focus", "f", "x", None, None, None, None, None)
    }
    group = {
        "resourceType": "Group",
        "characteristic": [{"code": {"coding": [{"code": "smoker"}]}, "valueBoolean": True}],
    }
    assert of(extract(group), "composites", "characteristic-value") == {
        (None, "smoker", None, "true", None, None, None, None, None)
    }


def test_encounter_period_and_quantity() -> None:
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "period": {"start": "2021-03-01T08:00:00Z", "end": "2021-03-01T12:00:00Z"},
        "length": {"value": 240, "unit": "min", "system": UCUM, "code": "min"},
    }
    rows = extract(encounter)
    assert of(rows, "dates", "date") == {
        (date_range("2021-03-01T08:00:00Z")[0], date_range("2021-03-01T12:00:00Z")[1])
    }
    assert of(rows, "quantities", "length") == {(240.0, UCUM, "min", "min")}
    open_start = extract({"resourceType": "Encounter", "period": {"end": "2021"}})
    assert of(open_start, "dates", "date") == {(DATE_MIN, date_range("2021")[1])}
    assert not extract({"resourceType": "Encounter", "period": {"start": "yesterday"}}).dates


def test_condition_onset_choices() -> None:
    age = extract(
        {"resourceType": "Condition", "onsetAge": {"value": 42, "unit": "a", "system": UCUM, "code": "a"}}
    )
    assert of(age, "quantities", "onset-age") == {(42.0, UCUM, "a", "a")}
    assert not age.dates
    when = extract({"resourceType": "Condition", "onsetDateTime": "2019-06", "abatementString": "later"})
    assert of(when, "dates", "onset-date") == {date_range("2019-06")}
    assert not when.quantities
    ranged = extract(
        {"resourceType": "Condition", "onsetRange": {"low": {"value": 40}, "high": {"value": 50}}}
    )
    assert of(ranged, "quantities", "onset-age") == {(40.0, None, None, None), (50.0, None, None, None)}


def test_practitioner_telecom() -> None:
    rows = extract(
        {
            "resourceType": "Practitioner",
            "telecom": [
                {"system": "email", "value": "doc@example.org"},
                {"system": "phone", "value": "555-1234"},
                {"value": "no-system"},
                {"system": "email"},
            ],
        }
    )
    assert of(rows, "tokens", "email") == {("email", "doc@example.org", None)}
    assert of(rows, "tokens", "phone") == {("phone", "555-1234", None)}
    assert of(rows, "tokens", "telecom") == {
        ("email", "doc@example.org", None),
        ("phone", "555-1234", None),
        (None, "no-system", None),
    }


def test_identifier_of_type_needs_a_value_and_a_type_code() -> None:
    rows = extract(
        {
            "resourceType": "Patient",
            "identifier": [
                {
                    "type": {
                        "coding": [{"system": V2_0203, "code": "MR"}, {"code": "local"}, {"system": "x"}]
                    },
                    "value": "A1",
                },
                {"type": {"coding": [{"system": V2_0203, "code": "SS"}]}, "system": "s"},
                {"type": {"text": "Passport"}, "value": "P9"},
            ],
        }
    )
    assert of(rows, "tokens", "identifier:of-type") == {(f"{V2_0203}|MR", "A1", None), ("|local", "A1", None)}
    assert of(rows, "tokens", "identifier") == {
        (None, "A1", None),
        ("s", None, None),
        (None, "P9", "passport"),
    }


def test_concepts() -> None:
    rows = extract(
        {
            "resourceType": "Condition",
            "code": {"text": "Free text only"},
            "category": [{"coding": [{"display": "Display only"}]}],
            "severity": {"coding": [{"system": "s", "code": "c", "display": "Same"}], "text": "same"},
        }
    )
    assert of(rows, "tokens", "code") == {(None, None, "free text only")}
    assert of(rows, "tokens", "category") == {(None, None, "display only")}
    assert of(rows, "tokens", "severity") == {("s", "c", "same")}


def test_money_range_number_and_canonicals() -> None:
    invoice = extract(
        {
            "resourceType": "Invoice",
            "totalGross": {"value": 99.5, "currency": "EUR"},
            "totalNet": {"currency": "EUR"},
        }
    )
    assert of(invoice, "quantities", "totalgross") == {(99.5, "urn:iso:std:iso:4217", "EUR", None)}
    assert not of(invoice, "quantities", "totalnet")  # no value, no row
    risk = extract(
        {
            "resourceType": "RiskAssessment",
            "prediction": [
                {"probabilityDecimal": 0.25},
                {"probabilityDecimal": True},
                {"probabilityDecimal": "0.3"},
                {"probabilityRange": {"low": {"value": 0.1}}},
            ],
        }
    )
    assert of(risk, "numbers", "probability") == {(0.25,)}
    plan = extract(
        {
            "resourceType": "PlanDefinition",
            "url": "http://example.org/PlanDefinition/p1",
            "relatedArtifact": [
                {"type": "composed-of", "resource": "http://example.org/fhir/ActivityDefinition/a1|1.2"},
                {"type": "depends-on", "resource": "Library/lib-1"},
                {"type": "composed-of", "resource": "urn:oid:1.2.3"},
            ],
        }
    )
    assert of(plan, "references", "composed-of") == {
        ("ActivityDefinition", "a1", "http://example.org/fhir/ActivityDefinition/a1"),
        (None, None, "urn:oid:1.2.3"),
    }
    assert of(plan, "references", "depends-on") == {("Library", "lib-1", "Library/lib-1")}
    assert of(plan, "uris", "url") == {("http://example.org/PlanDefinition/p1",)}
    for canonical, expected in [
        (
            "http://example.org/Questionnaire/q|3",
            ("Questionnaire", "q", "http://example.org/Questionnaire/q"),
        ),
        ("http://example.org/forms/intake|3", (None, None, "http://example.org/forms/intake")),
    ]:
        response = extract({"resourceType": "QuestionnaireResponse", "questionnaire": canonical})
        assert of(response, "references", "questionnaire") == {expected}


def test_bundle_composition_is_the_first_entry() -> None:
    document = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [
            {"resource": {"resourceType": "Composition", "id": "c1"}},
            {"resource": {"resourceType": "Composition", "id": "c2"}},
        ],
    }
    assert of(extract(document), "references", "composition") == {("Composition", "c1", None)}
    not_a_document = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}],
    }
    assert not of(extract(not_a_document), "references", "composition")


def test_special_parameters_and_non_values_give_nothing() -> None:
    location = extract({"resourceType": "Location", "position": {"latitude": 1.0, "longitude": 2.0}})
    assert location == IndexRows()  # `near` is special
    bundle = extract({"resourceType": "Bundle", "entry": [{"resource": "Composition/1"}]})
    assert not bundle.references
    value_set = extract({"resourceType": "ValueSet", "url": 5, "version": "", "meta": {"profile": [None]}})
    assert not value_set.uris and not value_set.tokens
    unreadable = extract(
        {"resourceType": "Observation", "code": {"coding": [{"code": "x"}]}, "valueDateTime": "not a date"}
    )
    assert not unreadable.composites


def test_references_filtered_by_target_type() -> None:
    rows = extract(
        {
            "resourceType": "Observation",
            "subject": {"reference": "Group/g1"},
            "performer": [
                {"reference": "http://x.org/fhir/Practitioner/p1"},
                {"reference": "urn:uuid:1", "type": "Patient"},
            ],
        }
    )
    assert of(rows, "references", "subject") == {("Group", "g1", None)}
    assert not of(rows, "references", "patient")  # .where(resolve() is Patient)
    assert of(rows, "references", "performer") == {
        ("Practitioner", "p1", "http://x.org/fhir/Practitioner/p1"),
        (None, None, "urn:uuid:1"),
    }


def test_timing() -> None:
    rows = extract(
        {
            "resourceType": "CarePlan",
            "activity": [
                {
                    "detail": {
                        "scheduledTiming": {
                            "event": ["2013-01-31"],
                            "repeat": {"boundsPeriod": {"start": "2013-01-31", "end": "2013-03-24"}},
                        }
                    }
                }
            ],
        }
    )
    assert of(rows, "dates", "activity-date") == {(date_range("2013-01-31")[0], date_range("2013-03-24")[1])}


def test_duplicates_are_dropped() -> None:
    rows = extract(
        {"resourceType": "Patient", "name": [{"family": "Smith"}, {"family": "Smith", "given": ["Smith"]}]}
    )
    assert [r.value for r in rows.strings if r.param == "family"] == ["smith"]
    assert len(rows.strings) == len(set(rows.strings))


def test_unknown_or_missing_resource_type() -> None:
    odd: list[Any] = [{}, {"resourceType": "NotAType", "name": "x"}, {"resourceType": 5}, [], None, "Patient"]
    for resource in odd:
        assert extract(resource) == IndexRows()


def test_odd_shapes_are_skipped() -> None:
    rows = extract(
        {
            "resourceType": "Patient",
            "name": [
                None,
                "Smith",
                {"family": ["not", "a", "string"], "given": "Solo"},
                [{"family": "Nested"}],
            ],
            "birthDate": "1980-02-30",
            "gender": 7,
            "active": "yes",
            "identifier": {"system": "s", "value": 12},
            "telecom": [{"system": "email", "value": None}],
            "managingOrganization": "Organization/1",
            "generalPractitioner": [{"reference": 42}, {"reference": ""}, {"reference": "Practitioner/a b"}],
            "meta": ["not", "an", "object"],
            "address": [{"line": [None, 3, ""], "city": {"name": "x"}}],
        }
    )
    assert of(rows, "strings", "given") == {("solo", "Solo")}
    assert not rows.dates and not rows.references and not rows.uris
    assert of(rows, "tokens", "identifier") == {("s", None, None)}
    assert not of(rows, "tokens", "gender") and not of(rows, "tokens", "active")
    assert not rows.numbers
    huge = extract(
        {
            "resourceType": "RiskAssessment",
            "prediction": [
                {"probabilityDecimal": 10**400},
                {"probabilityDecimal": float("nan")},
                {"probabilityDecimal": float("inf")},
            ],
        }
    )
    assert not huge.numbers


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["2020-01-01", "Patient/1", "urn:uuid:x", "http://x/fhir/Patient/1", "#c", "email"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "coding",
                    "system",
                    "code",
                    "value",
                    "display",
                    "text",
                    "reference",
                    "start",
                    "end",
                    "low",
                    "high",
                    "family",
                    "given",
                    "type",
                    "event",
                    "repeat",
                    "boundsPeriod",
                    "currency",
                    "unit",
                    "resource",
                    "resourceType",
                    "id",
                    "line",
                    "city",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
TYPES = [
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "Invoice",
    "PlanDefinition",
    "Bundle",
    "CarePlan",
    "MolecularSequence",
    "DocumentReference",
    "Group",
    "ValueSet",
    "RiskAssessment",
]


@st.composite
def odd_resources(draw: st.DrawFn) -> dict[str, Any]:
    resource_type = draw(st.sampled_from(TYPES))
    keys = sorted(
        {p.steps[0].name for param in params_for(resource_type).values() for p in param.paths if p.steps}
    )
    resource = draw(st.dictionaries(st.sampled_from(keys), JSON, max_size=8))
    return {**resource, "resourceType": resource_type}


@settings(max_examples=400, deadline=None)
@given(odd_resources())
def test_never_raises_on_odd_json(resource: dict[str, Any]) -> None:
    rows = extract(resource)
    for kind in rows.__slots__:
        found = getattr(rows, kind)
        assert len(found) == len(set(found))
