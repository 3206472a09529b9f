"""Invariants, references, Bundles, narrative and profiles, as a client of `validate` sees them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_gateway.validation import fhirpath, invariants
from fhir_gateway.validation.structure import walk_resource
from fhir_gateway.validation.validator import is_valid, validate
from fhir_gateway.validation.walk import Walk


def errors(resource: Any, **kwargs: Any) -> list[tuple[str, str, str]]:
    return [
        (i.code, i.expression[0] if i.expression else "", i.diagnostics)
        for i in validate(resource, **kwargs)
        if i.severity in ("error", "fatal")
    ]


CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "clinicalStatus": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
    },
    "subject": {"reference": "Patient/p1"},
}


# --- invariants ------------------------------------------------------------------------------------


def test_resource_invariants() -> None:
    assert is_valid(validate(CONDITION))
    abated = CONDITION | {"abatementDateTime": "2020-01-01"}
    assert [e[:2] for e in errors(abated)] == [("invariant", "Condition")]
    assert "con-4" in errors(abated)[0][2]


def test_datatype_and_backbone_invariants_report_where_they_apply() -> None:
    patient = {"resourceType": "Patient", "telecom": [{"value": "555"}], "contact": [{"gender": "male"}]}
    found = {(e[1], e[2].split(":")[1].strip()) for e in errors(patient)}
    assert found == {("Patient.telecom[0]", "cpt-2"), ("Patient.contact[0]", "pat-1")}
    period = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "period": {"start": "2020-01-02T00:00:00Z", "end": "2020-01-01T00:00:00Z"},
    }
    assert [e[1] for e in errors(period)] == ["Encounter.period"]


def test_warnings_from_best_practice_constraints() -> None:
    issues = validate({"resourceType": "Basic", "code": {"text": "x"}})
    dom6 = [i for i in issues if "dom-6" in i.diagnostics]
    assert dom6 and dom6[0].severity == "warning" and is_valid(issues)


def test_an_invariant_that_cannot_be_evaluated_is_information() -> None:
    walk = Walk()
    scope = walk_resource(walk, {"resourceType": "Basic", "code": {"text": "x"}}, "Basic")
    assert scope is not None
    broken = invariants.Constraint("x-1", "error", "code.noSuchFunction()", "broken")
    invariants._run_one(walk, broken, scope.resource, "Basic", "Basic", scope)
    assert [(i.severity, i.code) for i in walk.issues] == [("information", "informational")]


@pytest.mark.parametrize(
    ("expression", "node", "expected"),
    [
        ("code.empty() or system.exists()", {"code": "a"}, [False]),
        ("value.exists()", {"valueString": "x"}, [True]),
        ("a.where(b = 'x').count() = 1", {"a": [{"b": "x"}, {"b": "y"}]}, [True]),
        ("a.all(b.exists())", {"a": [{"b": 1}, {"c": 1}]}, [False]),
        ("a.select(b).isDistinct()", {"a": [{"b": 1}, {"b": 1}]}, [False]),
        ("x.exists() implies y.exists()", {"x": 1}, [False]),
        ("x.exists() xor y.exists()", {"x": 1, "y": 2}, [False]),
        ("n > 0 and n <= 100", {"n": 50}, [True]),
        ("s.startsWith('ab') and s.matches('^a.c$') and s.contains('b')", {"s": "abc"}, [True]),
        ("(a | b).count()", {"a": 1, "b": 1}, [1]),
        ("'#' + id in %resource.ids", {"id": "x"}, [True]),
        ("iif(a.exists(), 'y', 'n')", {}, ["n"]),
        ("a.first().hasValue() and a.tail().empty() and a.count() = 1", {"a": [1]}, [True]),
        (
            "a.intersect(b).exists() and a.combine(b).count() = 4 and a.exclude(b).count() = 1",
            {"a": [1, 2], "b": [2, 3]},
            [True],
        ),
        ("x.length() = 3 and x[0] = 'abc' and true and not_there.not().empty()", {"x": "abc"}, [True]),
    ],
)
def test_the_fast_fhirpath_subset(expression: str, node: dict[str, Any], expected: list[Any]) -> None:
    fn = fhirpath.compile_expression(expression)
    assert fn([node], {"resource": {"ids": ["#x"]}, "$this": node}) == expected


@pytest.mark.parametrize(
    "expression", ["a.resolve()", "a is Quantity", "-1", "a.ofType(Quantity)", "%other", "a.b("]
)
def test_outside_the_subset_is_refused_at_compile_time(expression: str) -> None:
    with pytest.raises(fhirpath.Unsupported):
        fhirpath.compile_expression(expression)


def test_dates_compare_with_precision() -> None:
    compare = fhirpath.compile_expression("start <= end")
    assert compare([{"start": "2020-01-02", "end": "2020-01-01"}], {}) == [False]
    assert compare([{"start": "2020-01", "end": "2021"}], {}) == [True]
    assert compare([{"start": "2020", "end": "2020-01"}], {}) == []  # unknown: not a failure
    assert compare([{"start": "2020-01-01T10:00:00+02:00", "end": "2020-01-01T09:00:00Z"}], {}) == [True]
    with pytest.raises(fhirpath.Fallback):
        compare([{"start": "2020-01-01", "end": "2020-01-01T09:00:00Z"}], {})
    enc = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "period": {"start": "2020-01-02", "end": "2020-01-01"},
    }
    assert [e[1] for e in errors(enc)] == ["Encounter.period"]


def test_runtime_fallback_to_fhirpathpy() -> None:
    walk = Walk()
    node = {"a": 1}
    scope = walk_resource(walk, {"resourceType": "Basic", "code": {"text": "x"}}, "Basic")
    assert scope is not None
    assert invariants.evaluate("a.toString() = '1'", node, "Basic", scope) == [True]  # not in the subset


def test_quantities_compare_natively_in_one_unit_and_are_not_guessed_across_units() -> None:
    def observation(high_unit: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "valueRange": {"low": {"value": 5, "unit": "mg"}, "high": {"value": 1, "unit": high_unit}},
        }

    assert [e[1] for e in errors(observation("mg"))] == ["Observation.value.ofType(Range)"]
    issues = validate(observation("g"))
    assert is_valid(issues)
    assert any(i.severity == "information" and "rng-2" in i.diagnostics for i in issues)


# --- contained resources and references ------------------------------------------------------------------


def test_contained_resources() -> None:
    practitioner = {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "X"}]}
    referenced = CONDITION | {"contained": [practitioner], "asserter": {"reference": "#pr1"}}
    assert is_valid(validate(referenced))
    orphan = CONDITION | {"contained": [practitioner]}
    assert (
        errors(orphan) == [("invalid", "Condition.contained[0]", errors(orphan)[0][2])]
        and "dom-3" in errors(orphan)[0][2]
    )
    dangling = CONDITION | {"asserter": {"reference": "#nope"}}
    assert [e[:2] for e in errors(dangling)] == [("invariant", "Condition.asserter")]
    nested = copy.deepcopy(referenced)
    nested["contained"][0]["contained"] = [{"resourceType": "Basic", "id": "b", "code": {"text": "x"}}]
    nested["contained"][0]["meta"] = {"versionId": "1", "security": [{"code": "R"}]}
    keys = {e[2].split(":")[1].strip() for e in errors(nested) if e[0] == "invariant"}
    assert {"dom-2", "dom-4", "dom-5"} <= keys


def _bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def test_bundle_rules() -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    good = _bundle("collection", [{"fullUrl": "http://x.org/fhir/Patient/p1", "resource": patient}])
    assert is_valid(validate(good))
    relative = _bundle("collection", [{"fullUrl": "Patient/p1", "resource": patient}])
    assert [e[:2] for e in errors(relative)] == [("invalid", "Bundle.entry[0]")]
    mismatch = _bundle("collection", [{"fullUrl": "http://x.org/fhir/Patient/p2", "resource": patient}])
    assert [e[1] for e in errors(mismatch)] == ["Bundle.entry[0]"]
    twice = _bundle("collection", [{"fullUrl": "http://x.org/fhir/Patient/p1", "resource": patient}] * 2)
    assert any("bdl-7" in e[2] for e in errors(twice))
    no_request = _bundle(
        "transaction", [{"fullUrl": "urn:uuid:6f1b2c3d-0000-4000-8000-000000000001", "resource": patient}]
    )
    assert any("bdl-3" in e[2] for e in errors(no_request))


def test_references_inside_bundles() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "urn:uuid:6f1b2c3d-0000-4000-8000-00000000000f"},
    }
    entry = {
        "fullUrl": "urn:uuid:6f1b2c3d-0000-4000-8000-000000000001",
        "resource": obs,
        "request": {"method": "POST", "url": "Observation"},
    }
    tx = _bundle("transaction", [entry])
    assert [e[1] for e in errors(tx)] == ["Bundle.entry[0].resource/*Observation/null*/.subject"]
    target = {
        "fullUrl": "urn:uuid:6f1b2c3d-0000-4000-8000-00000000000f",
        "resource": {"resourceType": "Patient"},
        "request": {"method": "POST", "url": "Patient"},
    }
    assert is_valid(validate(_bundle("transaction", [entry, target])))
    collection = _bundle("collection", [{k: v for k, v in entry.items() if k != "request"}])
    issues = validate(collection)
    assert is_valid(issues) and any(i.code == "not-found" and i.severity == "warning" for i in issues)


# --- narrative -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("div", "problem"),
    [
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>ok</p></div>', None),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><img src="x.png"/></div>', None),
        ("<div><p>no namespace</p></div>", "namespace"),
        ('<p xmlns="http://www.w3.org/1999/xhtml">x</p>', "root"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><script>x</script></div>', "script"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">x</p></div>', "onclick"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:x()">x</a></div>', "javascript"),
        ('<div xmlns="http://www.w3.org/1999/xhtml">  </div>', "txt-2"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>', "well-formed"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><div xmlns="http://www.w3.org/1999/xhtml">&a;</div>', "DOCTYPE"),
    ],
)
def test_narrative(div: str, problem: str | None) -> None:
    found = errors(
        {"resourceType": "Basic", "code": {"text": "x"}, "text": {"status": "generated", "div": div}}
    )
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0][1] == "Basic.text.div" and problem in found[0][2], found


# --- profiles --------------------------------------------------------------------------------------

PROFILE_URL = "http://example.org/StructureDefinition/bp"
PROFILE: dict[str, Any] = {
    "resourceType": "StructureDefinition",
    "url": PROFILE_URL,
    "type": "Observation",
    "derivation": "constraint",
    "differential": {
        "element": [
            {
                "id": "Observation",
                "path": "Observation",
                "constraint": [
                    {
                        "key": "bp-1",
                        "severity": "error",
                        "human": "needs subject",
                        "expression": "subject.exists()",
                    }
                ],
            },
            {"id": "Observation.status", "path": "Observation.status", "fixedCode": "final"},
            {
                "id": "Observation.category",
                "path": "Observation.category",
                "min": 1,
                "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"},
            },
            {
                "id": "Observation.category:VSCat",
                "path": "Observation.category",
                "sliceName": "VSCat",
                "min": 1,
                "max": "1",
                "patternCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                        }
                    ]
                },
            },
            {
                "id": "Observation.component",
                "path": "Observation.component",
                "min": 2,
                "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "closed"},
            },
            {
                "id": "Observation.component:Sys",
                "path": "Observation.component",
                "sliceName": "Sys",
                "min": 1,
                "max": "1",
            },
            {
                "id": "Observation.component:Sys.code",
                "path": "Observation.component.code",
                "patternCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            },
            {
                "id": "Observation.component:Sys.value[x]",
                "path": "Observation.component.value[x]",
                "type": [{"code": "Quantity"}],
            },
            {
                "id": "Observation.component:Dia",
                "path": "Observation.component",
                "sliceName": "Dia",
                "min": 1,
                "max": "1",
            },
            {
                "id": "Observation.component:Dia.code",
                "path": "Observation.component.code",
                "patternCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            },
            {
                "id": "Observation.value[x]",
                "path": "Observation.value[x]",
                "slicing": {"discriminator": [{"type": "type", "path": "$this"}], "rules": "closed"},
            },
            {
                "id": "Observation.value[x]:valueQuantity",
                "path": "Observation.value[x]",
                "sliceName": "valueQuantity",
                "type": [{"code": "Quantity"}],
            },
        ]
    },
}


def _bp() -> dict[str, Any]:
    def component(code: str, value: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value},
        }

    return {
        "resourceType": "Observation",
        "meta": {"profile": [PROFILE_URL]},
        "status": "final",
        "subject": {"reference": "Patient/1"},
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [component("8480-6", 120), component("8462-4", 80)],
    }


def test_a_conformant_instance_passes_its_profile() -> None:
    assert errors(_bp(), structure_definitions={PROFILE_URL: PROFILE}) == []


def test_profile_violations() -> None:
    bad = _bp()
    bad["status"] = "preliminary"
    del bad["category"], bad["subject"]
    bad["component"][1]["code"]["coding"][0]["code"] = "other"
    bad["component"][0]["valueString"] = bad["component"][0].pop("valueQuantity") and "x"
    bad["valueString"] = "x"
    found = errors(bad, structure_definitions={PROFILE_URL: PROFILE})
    assert ("value", "Observation.status") in [e[:2] for e in found]
    assert ("invariant", "Observation") in [e[:2] for e in found]
    texts = [e[2] for e in found]
    assert any(t.startswith("Observation.category: minimum required = 1") for t in texts)
    assert any(t.startswith("Slice 'Observation.category:VSCat'") for t in texts)
    assert any(t.startswith("Slice 'Observation.component:Dia'") for t in texts)
    wheres = [e[1] for e in found]
    assert "Observation.component[1]" in wheres  # closed slicing: no slice matches
    assert "Observation.component[0].value.ofType(string)" in wheres  # type not allowed in the slice
    assert "Observation.value.ofType(string)" in wheres  # closed type slicing on value[x]


def test_unknown_and_mismatched_profiles() -> None:
    warned = validate(_bp())
    assert is_valid(warned) and any("not known" in i.diagnostics for i in warned)
    assert errors(_bp(), profile="http://example.org/none")[0][:2] == ("not-supported", "Observation")
    patient_profile = PROFILE | {"type": "Patient", "url": "http://example.org/p"}
    found = errors(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
        profile="http://example.org/p",
        structure_definitions={"http://example.org/p": patient_profile},
    )
    assert found[0][:2] == ("invalid", "Observation")
    broken = {
        "resourceType": "StructureDefinition",
        "type": "Observation",
        "snapshot": {"element": [{"min": 1}]},
    }
    found = errors(_bp(), structure_definitions={PROFILE_URL: broken})
    assert "could not be read" in found[0][2]
    base = "http://hl7.org/fhir/StructureDefinition/Observation"
    assert errors(_bp() | {"meta": {"profile": [base]}}) == []
