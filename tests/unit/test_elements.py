"""_summary and _elements subsets: what is kept, the SUBSETTED tag, and the input left untouched."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_gateway.fhir.elements import SUBSETTED, elements, summary

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "2", "tag": [{"system": "http://example.org/tags", "code": "vip"}]},
    "implicitRules": "http://example.org/rules",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jim</div>'},
    "name": [{"family": "Chalmers"}],
    "birthDate": "1974-12-25",
    "_birthDate": {"extension": [{"url": "http://example.org/time", "valueString": "14:35"}]},
    "deceasedBoolean": False,
    "multipleBirthInteger": 2,
    "contact": [{"name": {"family": "du Marché"}}],
    "photo": [{"contentType": "image/png"}],
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">BP</div>'},
    "status": "final",
    "code": {"text": "BP"},
    "valueQuantity": {"value": 120},
    "note": [{"text": "resting"}],
    "effectiveDateTime": "2021-01-01",
}


def tags(resource: dict[str, Any]) -> list[dict[str, str]]:
    tag_list: list[dict[str, str]] = resource["meta"]["tag"]
    return tag_list


def test_summary_true_keeps_summary_elements() -> None:
    before = copy.deepcopy(PATIENT)
    out = summary(PATIENT, "true")
    assert set(out) == {
        "resourceType",
        "id",
        "meta",
        "implicitRules",
        "name",
        "birthDate",
        "_birthDate",
        "deceasedBoolean",
    }
    assert tags(out) == [PATIENT["meta"]["tag"][0], SUBSETTED]
    assert before == PATIENT  # the input is never modified


def test_summary_text_keeps_text_and_mandatory() -> None:
    out = summary(OBSERVATION, "text")
    assert set(out) == {"resourceType", "id", "meta", "text", "status", "code"}
    assert tags(out) == [SUBSETTED]
    assert "meta" not in OBSERVATION


def test_summary_data_drops_only_text() -> None:
    out = summary(OBSERVATION, "data")
    assert set(out) == (set(OBSERVATION) | {"meta"}) - {"text"}
    untouched = {"resourceType": "Observation", "status": "final"}
    assert summary(untouched, "data") == untouched  # nothing removed: no tag


def test_summary_false_and_unknown_modes() -> None:
    assert summary(PATIENT, "false") is PATIENT
    for mode in ("count", "yes", ""):
        with pytest.raises(ValueError):
            summary(PATIENT, mode)


def test_elements_keeps_listed_and_mandatory() -> None:
    out = elements(OBSERVATION, ["valueQuantity", "note.text"])
    assert set(out) == {"resourceType", "id", "meta", "status", "code", "valueQuantity", "note"}
    assert tags(out) == [SUBSETTED]


def test_elements_choice_prefix_and_extensions() -> None:
    out = elements(PATIENT, ["deceased", "birthDate"])
    assert set(out) == {"resourceType", "id", "meta", "deceasedBoolean", "birthDate", "_birthDate"}
    assert set(elements(OBSERVATION, ["effectiveDateTime"])) >= {"effectiveDateTime"}


def test_subsetted_is_added_once() -> None:
    first = elements(PATIENT, ["name"])
    assert elements(first, ["name"]) == first
    narrower = elements(summary(PATIENT, "true"), ["name"])
    assert tags(narrower).count(SUBSETTED) == 1
    assert set(narrower) == set(first)


def test_nothing_removed_means_no_tag() -> None:
    minimal = {"resourceType": "Patient", "id": "p", "name": [{"family": "X"}]}
    assert elements(minimal, ["name"]) == minimal


def test_odd_meta_and_unknown_types() -> None:
    out = elements({"resourceType": "Patient", "meta": ["odd"], "gender": "male", "name": []}, ["name"])
    assert out == {"resourceType": "Patient", "meta": {"tag": [SUBSETTED]}, "name": []}
    odd_tags = elements({"resourceType": "Patient", "meta": {"tag": "x"}, "gender": "male"}, [])
    assert tags(odd_tags) == [SUBSETTED]
    unknown = summary({"resourceType": "Nope", "id": "1", "implicitRules": "r", "x": 1}, "true")
    assert set(unknown) == {"resourceType", "id", "implicitRules", "meta"}
    assert set(summary({"id": "1", "x": 1}, "true")) == {"id", "meta"}
