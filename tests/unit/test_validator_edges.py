"""Edge cases of the validator: odd JSON shapes, profile corners, Bundle corners. None may raise."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_gateway.validation import fhirpath, primitives
from fhir_gateway.validation.loader import code_system, node_for, not_expanded, value_set
from fhir_gateway.validation.validator import is_valid, validate


def errors(resource: Any, **kwargs: Any) -> list[tuple[str, str, str]]:
    return [
        (i.code, i.expression[0] if i.expression else "", i.diagnostics)
        for i in validate(resource, **kwargs)
        if i.severity in ("error", "fatal")
    ]


def test_odd_json_shapes_never_raise() -> None:
    basic = {"resourceType": "Basic", "code": {"text": "x"}}
    assert [e[1] for e in errors(basic | {"code": None})] == ["Basic.code", "Basic"]
    assert [e[1] for e in errors(basic | {"identifier": ["x"]})] == ["Basic.identifier[0]"]
    assert [e[1] for e in errors(basic | {"identifier": {"value": "x"}})] == ["Basic.identifier"]
    assert [e[1] for e in errors(basic | {"contained": [{"id": "x"}]})][0] == "Basic.contained[0]"
    assert errors(basic | {"extension": [{"url": "http://x.org/e", "valueString": None}]})
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "r", "resource": {"resourceType": "Nope"}}],
    }
    assert [e[1] for e in errors(params)] == ["Parameters.parameter[0].resource"]
    assert primitives.check("integer", 1.0) is not None and primitives.check("string", "x" * (2**20 + 1))
    assert primitives.check("uri", "urn:uuid:nope") is not None
    assert primitives.check("instant", "2024-02-30T10:00:00Z") is not None
    assert primitives.check("dateTime", "20240101") is not None
    assert primitives._kind([]) == "array" and primitives._kind(None) == "null"


def test_loader_lookups() -> None:
    assert node_for("string") is None and node_for("Nope") is None
    assert value_set("http://example.org/nope") is None and not_expanded("http://example.org/nope") is None
    loinc = not_expanded("http://hl7.org/fhir/ValueSet/report-codes")
    assert loinc is not None and "loinc" in loinc
    assert code_system("http://example.org/nope") is None
    insensitive = next(
        cs
        for url in ("http://terminology.hl7.org/CodeSystem/v2-0203", "urn:ietf:bcp:47")
        if (cs := code_system(url)) is not None
    )
    assert insensitive.lookup("no-such-code-at-all") is None


def test_required_codeable_concept_without_a_code() -> None:
    cond = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "clinicalStatus": {"text": "active"},
    }
    assert [e[:2] for e in errors(cond)] == [("code-invalid", "Condition.clinicalStatus")]


def test_fhirpath_corners() -> None:
    run = fhirpath.compile_expression
    assert run("a.b")([{"a": [{"b": 1}, "x", {"c": 1}]}], {}) == [1]
    assert run("Patient.x")([{"resourceType": "Patient", "x": 2}], {}) == [2]
    assert run("%ucum")([{}], {}) == ["http://unitsofmeasure.org"]
    assert run("'a\\'b'")([{}], {}) == ["a'b"]
    assert run("x = 1.5 and y != 'a' and z.empty().not()")([{"x": 1.5, "y": "b", "z": 1}], {}) == [True]
    assert run("x = y")([{"x": {"a": 1}, "y": {"a": 2}}], {}) == [False]
    assert run("x = y")([{"x": [1, 2], "y": [1]}], {}) == [False]
    assert run("x = y")([{"x": True, "y": 1}], {}) == [False]
    assert run("x and y")([{"x": True}], {}) == []
    assert run("x or y")([{"x": False, "y": False}], {}) == [False]
    assert run("x implies y")([{"y": True}], {}) == [True]
    assert run("x in y")([{"y": [1]}], {}) == []
    assert run("y contains x")([{"x": 1, "y": [1, 2]}], {}) == [True]
    assert run("(x + y) & z")([{"x": "a", "y": "b"}], {}) == ["ab"]
    assert run("x + y")([{"x": "a"}], {}) == []
    assert run("a.distinct().count() = 1 and a.length().empty()")([{"a": [1, 1]}], {}) == [True]
    assert run("a.union(b).count()")([{"a": [1], "b": [1, 2]}], {"$this": {"a": [1], "b": [1, 2]}}) == [2]
    assert run("x > 1 and x < 3 and x >= 2")([{"x": 2}], {}) == [True]
    for expression, node in [
        ("x.exists()", {"x": [True, False]}),
        ("x[y]", {"x": [1], "y": "a"}),
        ("x < y", {"x": [1, 2], "y": 1}),
        ("x in y", {"x": [1, 2], "y": [1]}),
        ("x + y", {"x": 1, "y": 2}),
        ("x.startsWith('a')", {"x": 1}),
        ("x < y", {"x": "2020-01-01T00:00:00Z", "y": "not a date"}),
        ("x < y", {"x": "2020-13-01T00:00:00Z", "y": "2020-01-01T00:00:00Z"}),
        ("x < y", {"x": {"value": 1, "code": "a"}, "y": {"value": 2, "code": "b"}}),
    ]:
        fn = run(expression)
        with pytest.raises(fhirpath.Fallback):
            fn([node], {}) if expression != "x.exists()" else run("x and true")([node], {})
    for bad in ["x y", "(x", "x.where(", "'unterminated", "x.1", "$other", "x and"]:
        with pytest.raises(fhirpath.Unsupported):
            run(bad)


URL = "http://example.org/StructureDefinition/p"


EXT = "http://example.org/ext"


def _profile(elements: list[dict[str, Any]], *, snapshot: bool = False) -> dict[str, dict[str, Any]]:
    body = {"snapshot" if snapshot else "differential": {"element": elements}}
    extension = {"resourceType": "StructureDefinition", "url": EXT, "type": "Extension"}
    return {
        URL: {"resourceType": "StructureDefinition", "url": URL, "type": "Patient"} | body,
        EXT: extension,
    }


def _patient(**extra: Any) -> dict[str, Any]:
    base = {
        "resourceType": "Patient",
        "meta": {"profile": [URL]},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
    }
    return base | extra


def test_profile_extension_slices_and_exists_discriminators() -> None:
    ext = EXT
    defs = _profile(
        [
            {"id": "Patient", "path": "Patient"},
            {
                "id": "Patient.extension",
                "path": "Patient.extension",
                "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"},
            },
            {
                "id": "Patient.extension:e",
                "path": "Patient.extension",
                "sliceName": "e",
                "min": 1,
                "max": "1",
                "type": [{"code": "Extension", "profile": [ext]}],
            },
            {
                "id": "Patient.telecom",
                "path": "Patient.telecom",
                "max": "1",
                "slicing": {"discriminator": [{"type": "exists", "path": "period"}], "rules": "closed"},
            },
            {"id": "Patient.telecom:dated", "path": "Patient.telecom", "sliceName": "dated"},
            {"id": "Patient.telecom:dated.period", "path": "Patient.telecom.period", "min": 1},
            {
                "id": "Patient.gender",
                "path": "Patient.gender",
                "binding": {
                    "strength": "required",
                    "valueSet": "http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1",
                },
            },
            {
                "id": "Patient.name",
                "path": "Patient.name",
                "patternHumanName": {"use": "official"},
                "constraint": [
                    {"key": "p-1", "severity": "warning", "human": "family", "expression": "family.exists()"},
                    {"key": "p-2", "severity": "error", "human": "odd", "expression": "family.resolve()"},
                ],
            },
            {"id": "Patient.name.family", "path": "Patient.name.family", "min": 0},
        ],
        snapshot=True,
    )
    good = _patient(
        extension=[{"url": ext, "valueString": "x"}],
        telecom=[{"system": "phone", "value": "1", "period": {"start": "2020"}}],
        name=[{"use": "official", "family": "F"}],
        gender="male",
    )
    assert errors(good, structure_definitions=defs) == []
    bad = _patient(
        extension=[{"url": "http://other", "valueString": "x"}],
        telecom=[{"system": "phone", "value": "1"}, {"system": "phone", "value": "2"}],
        name=[{"use": "usual", "given": ["G"]}],
    )
    issues = validate(bad, structure_definitions=defs)
    texts = [i.diagnostics for i in issues if i.severity == "error"]
    assert any(t.startswith("Slice 'Patient.extension:e'") for t in texts)
    assert any(t.startswith("Patient.telecom: max allowed = 1") for t in texts)
    assert any("does not match the pattern" in t for t in texts)
    assert any("does not match any known slice" in t for t in texts)  # telecom without period, closed
    assert any(i.severity == "warning" and "p-1" in i.diagnostics for i in issues)
    assert any(i.severity == "information" and "p-2" in i.diagnostics for i in issues)
    coded = copy.deepcopy(good) | {"gender": "bogus"}
    assert any(e[1] == "Patient.gender" for e in errors(coded, structure_definitions=defs))


def test_profile_slice_maximum_and_unknown_discriminators() -> None:
    defs = _profile(
        [
            {
                "id": "Patient.identifier",
                "path": "Patient.identifier",
                "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"},
            },
            {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn", "max": "1"},
            {
                "id": "Patient.identifier:mrn.system",
                "path": "Patient.identifier.system",
                "fixedUri": "urn:mrn",
            },
            {
                "id": "Patient.address",
                "path": "Patient.address",
                "slicing": {"discriminator": [{"type": "profile", "path": "$this"}], "rules": "closed"},
            },
            {"id": "Patient.address:a", "path": "Patient.address", "sliceName": "a"},
            {"id": "Patient.contact", "path": "Patient.contact", "slicing": {"rules": "closed"}},
            {"id": "Patient.contact:c", "path": "Patient.contact", "sliceName": "c"},
            {
                "id": "Patient.photo",
                "path": "Patient.photo",
                "slicing": {"discriminator": [{"type": "value", "path": "title"}], "rules": "closed"},
            },
            {"id": "Patient.photo:p", "path": "Patient.photo", "sliceName": "p"},
        ]
    )
    twice = _patient(
        identifier=[{"system": "urn:mrn", "value": "1"}, {"system": "urn:mrn", "value": "2"}],
        address=[{"city": "x"}],
        contact=[{"name": {"family": "x"}}],
        photo=[{"title": "t"}],
    )
    texts = [e[2] for e in errors(twice, structure_definitions=defs)]
    assert any(t.startswith("Slice 'Patient.identifier:mrn': at most 1") for t in texts)
    assert sum("does not match any known slice" in t for t in texts) == 3  # profile/none/no value: unmatched


def test_bundle_corners() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [
            {
                "fullUrl": "http://x.org/fhir/Composition/c",
                "resource": {
                    "resourceType": "Composition",
                    "id": "c",
                    "status": "final",
                    "type": {"text": "x"},
                    "date": "2020",
                    "title": "t",
                    "author": [{"reference": "Practitioner/gone"}],
                    "subject": {"reference": "Patient/p"},
                },
            },
            {"fullUrl": "http://x.org/fhir/Patient/p", "resource": {"resourceType": "Patient", "id": "p"}},
        ],
    }
    issues = validate(bundle)
    unresolved = [i.expression for i in issues if i.code == "not-found"]
    assert unresolved == [["Bundle.entry[0].resource/*Composition/c*/.author[0]"]]
    odd = {"resourceType": "Bundle", "type": "collection", "entry": "x"}
    assert errors(odd)
    assert is_valid(validate({"resourceType": "Bundle", "type": "collection"}))
