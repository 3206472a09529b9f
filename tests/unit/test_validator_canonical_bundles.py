"""Absolute canonical URLs, contained code systems named by canonical, and search-result Bundles."""

from __future__ import annotations

from typing import Any

from fhir_gateway.validation.canonical import CONTAINED_SYSTEM_HINT
from fhir_gateway.validation.validator import validate

CODE_SYSTEM = {
    "resourceType": "CodeSystem",
    "id": "c1",
    "url": "http://hospital.example.net/CodeSystem/c1",
    "status": "active",
    "content": "complete",
    "concept": [{"code": "a", "display": "A"}],
}


def _errors(resource: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [(i.diagnostics, i.expression) for i in validate(resource) if i.severity == "error"]


def _value_set(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "status": "active", **elements}


def test_a_contained_code_system_named_by_its_url_and_the_valueset_system_extension() -> None:
    pointer = {"url": "http://hl7.org/fhir/StructureDefinition/valueset-system", "valueCanonical": "#c1"}
    include = {"system": CODE_SYSTEM["url"], "_system": {"extension": [pointer]}}
    good = _value_set(url="http://hospital.example.net/ValueSet/v", contained=[CODE_SYSTEM])
    assert _errors(good | {"compose": {"include": [include]}}) == []  # dom-3 counts the canonical #c1


def test_canonical_urls_must_be_absolute() -> None:
    relative = _value_set(
        url="ValueSet/v",
        contained=[CODE_SYSTEM | {"url": "c1"}],
        compose={"include": [{"system": "#c1"}], "exclude": [{"system": "local"}]},
    )
    assert sorted(_errors(relative)) == sorted(
        [
            (
                "Canonical URLs must be absolute URLs if they are not fragment references (ValueSet/v)",
                ["ValueSet.url"],
            ),
            (
                "Canonical URLs in contained resources must be absolute URLs if present (c1)",
                ["ValueSet.contained[0]/*CodeSystem/c1*/.url"],
            ),
            (
                f"URI values in ValueSet.compose.include.system must be absolute. {CONTAINED_SYSTEM_HINT}",
                ["ValueSet.compose.include[0]"],
            ),
            (
                f"URI values in ValueSet.compose.exclude.system must be absolute. {CONTAINED_SYSTEM_HINT}",
                ["ValueSet.compose.exclude[0]"],
            ),
        ]
    )
    assert _errors(_value_set(url="urn:uuid:6a2ee390-978e-42c6-8f88-c17dff3bd8a3")) == []
    # Device.url is a network address, not a canonical identity
    assert _errors({"resourceType": "Device", "url": "device-7"}) == []


def _search_set(link: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": link}],
        "entry": list(entries),
    }


PATIENT = {"resourceType": "Patient", "id": "p1"}
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "information", "code": "informational"}],
}


def _entry(resource: dict[str, Any], mode: str | None) -> dict[str, Any]:
    full_url = f"http://h/fhir/{resource['resourceType']}/{resource.get('id', 'new')}"
    entry: dict[str, Any] = {"fullUrl": full_url, "resource": resource}
    return entry | ({"search": {"mode": mode}} if mode else {})


def test_search_results() -> None:
    good = _search_set(
        "http://h/fhir/Patient?name=x",
        _entry(PATIENT, "match"),
        _entry({"resourceType": "Organization", "id": "o", "name": "Ward 4"}, "include"),
        _entry(OUTCOME, "outcome"),
    )
    assert _errors(good) == []
    assert _errors(_search_set("http://h/fhir/Patient?name=x", _entry(OUTCOME, None))) == []
    bad = _search_set(
        "http://h/fhir?_type=Observation,DocumentReference",
        _entry(PATIENT, "outcome"),
        _entry({"resourceType": "Patient"}, "match"),
    )
    assert _errors(bad) == [
        ("This is not an OperationOutcome (Patient)", ["Bundle.entry[0].resource"]),
        ("Search results must have ids", ["Bundle.entry[1].resource"]),
        (
            "This is not a matching resource type for the specified search "
            "(Patient expecting [Observation, DocumentReference])",
            ["Bundle.entry[1].resource"],
        ),
    ]
    unknown_search = _search_set(
        "http://h/fhir/Patient/p1/$everything", _entry(OUTCOME | {"id": "o"}, "match")
    )
    assert _errors(unknown_search) == []


def test_paging_links_occur_once() -> None:
    bundle = _search_set("http://h/fhir/Patient", _entry(PATIENT, "match"))
    bundle["link"] += [
        {"relation": "next", "url": "http://h/fhir/Patient?page=2"},
        {"relation": "self", "url": "http://h/fhir/Patient?again"},
        {"relation": "next", "url": "http://h/fhir/Patient?page=3"},
        {"relation": "alternate", "url": "http://h/fhir/Patient?_format=xml"},
        {"relation": "alternate", "url": "http://h/fhir/Patient?_format=ttl"},
    ]
    assert _errors(bundle) == [
        ("The link relationship type 'self' can only occur once", ["Bundle.link[2]"]),
        ("The link relationship type 'next' can only occur once", ["Bundle.link[3]"]),
    ]


def test_a_canonical_naming_a_core_definition_of_another_type() -> None:
    answers = {"resourceType": "QuestionnaireResponse", "status": "completed"}
    wrong = answers | {"questionnaire": "http://hl7.org/fhir/ValueSet/example-extensional|4.0.1"}
    assert _errors(wrong) == [
        (
            "Canonical URL 'http://hl7.org/fhir/ValueSet/example-extensional|4.0.1' refers to a resource "
            "that has the wrong type. Found ValueSet expecting one of [Questionnaire]",
            ["QuestionnaireResponse.questionnaire"],
        )
    ]
    assert _errors(answers | {"questionnaire": "http://hospital.example.net/Questionnaire/intake"}) == []
    # an element whose targets include any resource accepts every definition
    library = {"resourceType": "Library", "status": "active", "type": {"text": "x"}}
    assert (
        _errors(library | {"relatedArtifact": [{"type": "depends-on", "resource": CODE_SYSTEM["url"]}]}) == []
    )


def test_a_capability_statement_cites_search_parameters_with_their_type() -> None:
    param = {
        "name": "clinical-status",
        "definition": "http://hl7.org/fhir/SearchParameter/AllergyIntolerance-clinical-status|4.0.1",
    }
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "implementation": {"description": "x"},
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": "AllergyIntolerance", "searchParam": [param | {"type": "date"}]}],
            }
        ],
    }
    assert _errors(statement) == [
        (
            f"Type mismatch - SearchParameter '{param['definition']}' type is token, but type here is date",
            ["CapabilityStatement.rest[0].resource[0].searchParam[0]"],
        )
    ]
    statement["rest"][0]["resource"][0]["searchParam"] = [param | {"type": "token"}]
    assert _errors(statement) == []


def test_more_than_one_enable_when_needs_enable_behavior() -> None:
    # que-12's R4 expression says "> 2" against its own text; the reference validator checks "> 1"
    conditions = [{"question": q, "operator": "=", "answerInteger": 1} for q in ("n0", "n1")]
    item = {"linkId": "n2", "type": "integer", "enableWhen": conditions}
    questionnaire = {"resourceType": "Questionnaire", "status": "draft", "item": [item]}
    assert [where for _, where in _errors(questionnaire)] == [["Questionnaire.item[0]"]]
    assert _errors(questionnaire | {"item": [item | {"enableBehavior": "all"}]}) == []
