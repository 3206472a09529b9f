"""The compiled R4 tables: what the loaders read is right, and the compiler reproduces them exactly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest

from fhir_gateway.definitions.search_parameters import (
    Step,
    get,
    params_for,
    parse_reference,
    resource_types,
    target_type,
)

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "fhir-r4"
PROFILES = REPO / "fhir_gateway" / "profiles"
TOOL = REPO / "tools" / "compile_definitions.py"
needs_source = pytest.mark.skipif(not SOURCE.is_dir(), reason="R4 definitions not present")


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compile_definitions", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_resource_types_are_the_concrete_r4_ones() -> None:
    types = resource_types()
    assert len(types) == 147  # profiles-resources.json: kind=resource, abstract=false, specialization
    assert {"Patient", "Observation", "Bundle", "Binary", "Parameters"} <= types
    assert not {"Resource", "DomainResource", "MetadataResource"} & types


def test_patient_parameters() -> None:
    birthdate = get("Patient", "birthdate")
    assert birthdate is not None and birthdate.type == "date"
    assert [(p.steps, p.type) for p in birthdate.paths] == [((Step("birthDate"),), "date")]
    name = get("Patient", "name")
    assert name is not None and name.type == "string" and name.paths[0].type == "HumanName"
    organization = get("Patient", "organization")
    assert organization is not None and organization.type == "reference"
    assert organization.targets == ("Organization",)
    assert organization.paths[0].steps == (Step("managingOrganization"),)
    assert organization.url == "http://hl7.org/fhir/SearchParameter/Patient-organization"


def test_every_type_has_the_resource_level_parameters() -> None:
    for resource_type in resource_types():
        params = params_for(resource_type)
        assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"} <= params.keys(), (
            resource_type
        )
        assert not {"_text", "_content", "_query"} & params.keys()  # no expression: nothing to index
        assert params["_lastUpdated"].paths[0].steps == (Step("meta"), Step("lastUpdated"))


def test_unknown_type_or_code() -> None:
    assert params_for("NoSuchType") == {}
    assert get("Patient", "no-such-param") is None


def test_an_expression_for_several_types_gives_each_its_own_part() -> None:
    practitioner = get("Practitioner", "name")
    assert practitioner is not None
    assert [p.steps for p in practitioner.paths] == [(Step("name"),)]


def test_choice_elements_become_json_keys() -> None:
    value = get("Observation", "value-quantity")
    assert value is not None
    assert [(p.steps[0].name, p.type) for p in value.paths] == [
        ("valueQuantity", "Quantity")
    ]  # SampledData left out
    date = get("Observation", "date")
    assert date is not None
    assert sorted(p.steps[0].name for p in date.paths) == [
        "effectiveDateTime",
        "effectiveInstant",
        "effectivePeriod",
        "effectiveTiming",
    ]
    onset = get("Condition", "onset-age")
    assert onset is not None  # Condition.onset.as(Age) | Condition.onset.as(Range)
    assert [(p.steps[0].name, p.type) for p in onset.paths] == [("onsetAge", "Age"), ("onsetRange", "Range")]
    concept_text = get("Observation", "value-concept")
    assert concept_text is not None and concept_text.paths[0].type == "CodeableConcept"


def test_filters() -> None:
    email = get("Patient", "email")
    assert email is not None and email.paths[0].steps == (Step("telecom", where=("system", "email")),)
    patient = get("Observation", "patient")
    assert patient is not None and patient.paths[0].steps == (Step("subject", resolves="Patient"),)
    composition = get("Bundle", "composition")
    assert composition is not None
    assert composition.paths[0].steps == (Step("entry", index=0), Step("resource"))
    assert composition.paths[0].type == "Resource"
    composed = get("PlanDefinition", "composed-of")
    assert composed is not None
    assert composed.paths[0].steps == (
        Step("relatedArtifact", where=("type", "composed-of")),
        Step("resource"),
    )
    assert composed.paths[0].type == "canonical"


def test_deceased_is_a_boolean_test() -> None:
    deceased = get("Patient", "deceased")
    assert deceased is not None and deceased.type == "token"
    assert sorted(p.steps[0].name for p in deceased.paths) == ["deceasedBoolean", "deceasedDateTime"]
    assert all(p.exists_not_false for p in deceased.paths)


def test_composites() -> None:
    param = get("Observation", "code-value-quantity")
    assert param is not None and param.type == "composite"
    assert [p.steps for p in param.paths] == [()]  # the Observation itself
    assert [(c.code, c.type) for c in param.components] == [("code", "token"), ("value-quantity", "quantity")]
    assert param.components[1].paths[0].steps == (Step("valueQuantity"),)
    combo = get("Observation", "combo-code-value-quantity")
    assert combo is not None and sorted(p.steps for p in combo.paths) == [(), (Step("component"),)]
    coordinate = get("MolecularSequence", "chromosome-variant-coordinate")
    assert coordinate is not None
    assert [c.type for c in coordinate.components] == ["token", "number", "number"]
    assert coordinate.components[0].paths[0].from_resource  # %resource.referenceSeq.chromosome
    # R4 pairs each of these two component expressions with the other one's definition
    relationship = get("DocumentReference", "relationship")
    assert relationship is not None
    assert [(c.type, c.paths[0].steps) for c in relationship.components] == [
        ("reference", (Step("target"),)),
        ("token", (Step("code"),)),
    ]


def test_parse_reference_and_target_type() -> None:
    assert parse_reference("Patient/1") == ("Patient", "1", None)
    assert parse_reference("Patient/1/_history/2") == ("Patient", "1", None)
    assert parse_reference("http://x.org/fhir/Patient/1/_history/2") == (
        "Patient",
        "1",
        "http://x.org/fhir/Patient/1",
    )
    assert parse_reference("http://x.org/other") == (None, None, "http://x.org/other")
    assert parse_reference("urn:uuid:abc") == (None, None, "urn:uuid:abc")
    for unreadable in (
        "#c1",
        "",
        None,
        7,
        "Nope/1",
        "Patient/",
        "Patient/a b",
        "Patient?identifier=x",
        "a/b/c",
    ):
        assert parse_reference(unreadable) is None
    assert target_type({"reference": "Group/1"}) == "Group"
    assert target_type({"reference": "urn:uuid:x", "type": "Patient"}) == "Patient"
    assert target_type({"type": "http://hl7.org/fhir/StructureDefinition/Device"}) == "Device"
    assert target_type({"display": "x"}) is None
    assert target_type("Patient/1") is None


def test_summary_elements_table() -> None:
    table = orjson.loads((PROFILES / "summary-elements.json").read_bytes())
    assert table["generated"].startswith("by tools/compile_definitions.py from FHIR R4 4.0.1")
    patient = table["types"]["Patient"]
    assert {"birthDate", "deceased", "name", "id", "meta"} <= set(patient["summary"])
    assert "contact" not in patient["summary"] and "deceased" in patient["choices"]
    assert table["types"]["Observation"]["mandatory"] == ["code", "status"]


@needs_source
def test_compiler_reproduces_the_committed_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--source", str(SOURCE), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("search-parameters.json", "summary-elements.json"):
        assert (tmp_path / "profiles" / name).read_bytes() == (PROFILES / name).read_bytes(), name


def test_compiler_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tool().main(["--source", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    assert "compile_definitions:" in capsys.readouterr().err


def test_compiler_refuses_unknown_expression_shapes() -> None:
    tool = _tool()
    with pytest.raises(tool.DefinitionError):
        tool._segments("Patient.name.first()")


# --- validator tables (profiles/structures.json, terminology/*.json) ------------------------------

TERMINOLOGY = REPO / "fhir_gateway" / "terminology"


@needs_source
def test_compiler_reproduces_the_validator_tables(tmp_path: Path) -> None:
    assert _tool().main(["--source", str(SOURCE), "--out", str(tmp_path)]) == 0
    for name in ("structures.json", "extensions.json"):
        assert (tmp_path / "profiles" / name).read_bytes() == (PROFILES / name).read_bytes(), name
    for name in ("valuesets.json", "codesystems.json"):
        assert (tmp_path / "terminology" / name).read_bytes() == (TERMINOLOGY / name).read_bytes(), name


def test_structures_table() -> None:
    table = orjson.loads((PROFILES / "structures.json").read_bytes())
    assert table["generated"].startswith("by tools/compile_definitions.py from FHIR R4 4.0.1")
    patient = table["types"]["Patient"]
    assert patient["kind"] == "resource" and patient["base"] == "DomainResource"
    assert patient["elements"]["Patient.gender"]["binding"] == [
        "required",
        "http://hl7.org/fhir/ValueSet/administrative-gender",
    ]
    assert patient["elements"]["Patient.deceased[x]"]["types"] == ["boolean", "dateTime"]
    assert patient["elements"]["Patient.link.other"]["min"] == 1
    assert patient["elements"]["Patient.managingOrganization"]["targets"] == ["Organization"]
    assert table["constraints"]["pat-1"][0:2] == ["pat-1", "error"]
    assert "ele-1" not in table["constraints"] and "ext-1" not in table["constraints"]  # checked natively
    assert (
        table["types"]["Questionnaire"]["elements"]["Questionnaire.item.item"]["ref"] == "Questionnaire.item"
    )
    assert table["types"]["date"]["regex"].startswith("([0-9]")
    assert table["types"]["Observation"]["elements"]["Observation.referenceRange.low"]["types"] == [
        "SimpleQuantity"
    ]


def test_terminology_tables() -> None:
    valuesets = orjson.loads((TERMINOLOGY / "valuesets.json").read_bytes())
    gender = valuesets["valueSets"]["http://hl7.org/fhir/ValueSet/administrative-gender"]
    assert gender["codes"] == {
        "http://hl7.org/fhir/administrative-gender": ["female", "male", "other", "unknown"]
    }
    assert "is not shipped" in valuesets["notExpanded"]["http://hl7.org/fhir/ValueSet/ucum-units"]
    systems = orjson.loads((TERMINOLOGY / "codesystems.json").read_bytes())["codeSystems"]
    assert systems["http://hl7.org/fhir/administrative-gender"]["concepts"]["male"] == "Male"


def test_value_set_expansion_rules() -> None:
    tool = _tool()
    cs = tool._CodeSystem.read(
        {
            "url": "http://x/cs",
            "content": "complete",
            "caseSensitive": True,
            "concept": [
                {
                    "code": "a",
                    "display": "A",
                    "concept": [{"code": "b", "property": [{"code": "k", "valueCode": "v"}]}],
                },
                {"code": "c", "property": [{"code": "subsumedBy", "valueCode": "b"}]},
            ],
        }
    )
    sets = {
        "http://x/all": {"compose": {"include": [{"system": "http://x/cs"}]}},
        "http://x/isa": {
            "compose": {
                "include": [
                    {"system": "http://x/cs", "filter": [{"property": "concept", "op": "is-a", "value": "b"}]}
                ]
            }
        },
        "http://x/desc": {
            "compose": {
                "include": [
                    {
                        "system": "http://x/cs",
                        "filter": [{"property": "concept", "op": "descendent-of", "value": "a"}],
                    }
                ]
            }
        },
        "http://x/not": {
            "compose": {
                "include": [
                    {
                        "system": "http://x/cs",
                        "filter": [{"property": "concept", "op": "is-not-a", "value": "b"}],
                    }
                ]
            }
        },
        "http://x/prop": {
            "compose": {
                "include": [{"system": "http://x/cs", "filter": [{"property": "k", "op": "=", "value": "v"}]}]
            }
        },
        "http://x/re": {
            "compose": {
                "include": [
                    {
                        "system": "http://x/cs",
                        "filter": [{"property": "code", "op": "regex", "value": "[ab]"}],
                    }
                ]
            }
        },
        "http://x/import": {
            "compose": {
                "include": [{"valueSet": ["http://x/all"]}],
                "exclude": [{"system": "http://x/cs", "concept": [{"code": "a"}]}],
            }
        },
        "http://x/loop": {"compose": {"include": [{"valueSet": ["http://x/loop"]}]}},
        "http://x/sct": {"compose": {"include": [{"system": "http://snomed.info/sct"}]}},
        "http://x/odd": {
            "compose": {
                "include": [
                    {"system": "http://x/cs", "filter": [{"property": "concept", "op": "in", "value": "a"}]}
                ]
            }
        },
        "http://x/expanded": {"expansion": {"contains": [{"system": "http://x/cs", "code": "a"}]}},
    }
    expander = tool._Expander({"http://x/cs": cs}, sets)

    def codes(url: str) -> list[str]:
        return sorted(code for _, code in expander.expand(url))

    assert codes("http://x/all") == ["a", "b", "c"]
    assert codes("http://x/isa") == ["b", "c"]
    assert codes("http://x/desc") == ["b", "c"]
    assert codes("http://x/not") == ["a"]
    assert codes("http://x/prop") == ["b"]
    assert codes("http://x/re") == ["a", "b"]
    assert codes("http://x/import") == ["b", "c"]
    assert codes("http://x/expanded") == ["a"]
    for url in ("http://x/loop", "http://x/sct", "http://x/odd", "http://x/missing"):
        with pytest.raises(tool.Unexpandable):
            expander.expand(url)
