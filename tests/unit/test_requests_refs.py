"""Interaction URL parsing and reference rewriting."""

from __future__ import annotations

import pytest

from fhir_gateway.errors import BadRequest, NotFound
from fhir_gateway.fhir.references import iter_references, rewrite_references
from fhir_gateway.fhir.requests import parse_target

TYPES = frozenset({"Patient", "Observation"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("Patient", ("Patient", None, None, None, ())),
        ("Patient/1", ("Patient", "1", None, None, ())),
        ("Patient/1/_history/3", ("Patient", "1", 3, None, ())),
        ("Patient/1/_history", ("Patient", "1", None, "_history", ())),
        ("Patient/_history", ("Patient", None, None, "_history", ())),
        ("Patient/_search?name=x", ("Patient", None, None, "_search", (("name", "x"),))),
        ("Patient/1/$everything", ("Patient", "1", None, "$everything", ())),
        ("Patient?identifier=a|b", ("Patient", None, None, None, (("identifier", "a|b"),))),
        ("_history", (None, None, None, "_history", ())),
        ("$export", (None, None, None, "$export", ())),
        ("", (None, None, None, None, ())),
    ],
)
def test_parse_target(url: str, expected: tuple[object, ...]) -> None:
    t = parse_target(url, TYPES)
    assert (t.res_type, t.res_id, t.version_id, t.operation, t.query) == expected


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("Nope/1", NotFound),
        ("lower", NotFound),
        ("Patient/b@d", BadRequest),
        ("Patient/1/_history/x", NotFound),
        ("Patient/1/a/b", BadRequest),
    ],
)
def test_parse_target_errors(url: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_target(url, TYPES)


def test_rewrite_references_everywhere_including_contained() -> None:
    resource = {
        "resourceType": "Observation",
        "subject": {"reference": "urn:uuid:1"},
        "performer": [{"reference": "Practitioner/2"}, {"display": "no ref"}],
        "contained": [{"resourceType": "Specimen", "subject": {"reference": "urn:uuid:1"}}],
    }
    rewrite_references(iter_references(resource), {"urn:uuid:1": "Patient/abc"}.get)
    assert resource["subject"] == {"reference": "Patient/abc"}
    assert resource["contained"][0]["subject"] == {"reference": "Patient/abc"}  # type: ignore[index]
    assert [r["reference"] for r in iter_references(resource)] == [
        "Patient/abc",
        "Practitioner/2",
        "Patient/abc",
    ]


def test_stable_ids_match_across_channels_and_differ_across_authorities() -> None:
    from fhir_gateway.fhir.ids import stable_id
    from fhir_gateway.fhir.requests import check_id

    v2 = stable_id("Patient", "HOSP", "12345")
    dicom = stable_id("Patient", " hosp ", "12345 ")
    assert v2 == dicom and check_id(v2) == v2
    assert stable_id("Patient", "OTHER", "12345") != v2
    assert stable_id("Encounter", "HOSP", "12345") != v2
