"""Searches on encrypted parameters become blind-index lookups, or a clear 400 when they cannot."""

from __future__ import annotations

import pytest

from fhir_gateway.crypto.blind_index import blind, blind_number, date_text
from fhir_gateway.crypto.errors import EncryptedSearchRefused
from fhir_gateway.crypto.fields import DEFAULT_FIELDS, PhiFields
from fhir_gateway.crypto.keyring import Keyring, KeyVersion, new_dek
from fhir_gateway.crypto.search import protect_search
from fhir_gateway.fhir.dates import date_range
from fhir_gateway.store.search import values as v
from fhir_gateway.store.search.criteria import Chain, Has, Match, Missing
from fhir_gateway.store.search.params import ParsedSearch, parse_search


@pytest.fixture
def ring() -> Keyring:
    return Keyring(
        [
            KeyVersion(1, "retired", new_dek()),
            KeyVersion(2, "retiring", new_dek()),
            KeyVersion(3, "active", new_dek()),
        ]
    )


def parsed(res_type: str, query: str) -> ParsedSearch:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")]
    return parse_search(res_type, pairs, strict=True, default_count=10, max_count=100)  # type: ignore[arg-type]


def only(search: ParsedSearch) -> Match:
    (criterion,) = search.filters
    assert isinstance(criterion, Match)
    return criterion


def test_exact_string_becomes_one_blind_value_per_searched_version(ring: Keyring) -> None:
    m = only(protect_search(parsed("Patient", "family:exact=Chalmers"), ring, DEFAULT_FIELDS))
    assert m.modifier == "exact"
    assert m.values == tuple(
        v.StringValue(blind(ring, "Chalmers", "Patient.family#exact", kv)) for kv in (3, 2)
    )  # the retired version is no longer searched


def test_plain_string_search_is_refused_unless_whole_value_matching_is_configured(ring: Keyring) -> None:
    with pytest.raises(EncryptedSearchRefused) as info:
        protect_search(parsed("Patient", "name=Chal"), ring, DEFAULT_FIELDS)
    assert info.value.status == 400 and info.value.code == "not-supported"
    assert "'name' is encrypted" in info.value.diagnostics and "Chal" not in info.value.diagnostics
    assert info.value.issues[0].expression == ["name"]
    m = only(
        protect_search(parsed("Patient", "name=CHALMERS"), ring, DEFAULT_FIELDS, string_search="whole-value")
    )
    assert m.values[0] == v.StringValue(blind(ring, "chalmers", "Patient.name", 3))
    with pytest.raises(EncryptedSearchRefused, match="name:contains"):
        protect_search(
            parsed("Patient", "name:contains=alm"), ring, DEFAULT_FIELDS, string_search="whole-value"
        )


def test_tokens_keep_their_system_and_blind_their_code(ring: Keyring) -> None:
    m = only(protect_search(parsed("Patient", "identifier=http://mrn|12345,999"), ring, DEFAULT_FIELDS))
    assert m.values == (
        v.TokenValue("http://mrn", blind(ring, "12345", "Patient.identifier", 3)),
        v.TokenValue("http://mrn", blind(ring, "12345", "Patient.identifier", 2)),
        v.TokenValue(None, blind(ring, "999", "Patient.identifier", 3)),
        v.TokenValue(None, blind(ring, "999", "Patient.identifier", 2)),
    )
    system_only = only(protect_search(parsed("Patient", "identifier=http://mrn|"), ring, DEFAULT_FIELDS))
    assert system_only.values == (v.TokenValue("http://mrn", None),)
    negated = only(protect_search(parsed("Patient", "telecom:not=phone|555"), ring, DEFAULT_FIELDS))
    assert negated.modifier == "not" and negated.values[0] == v.TokenValue(
        "phone", blind(ring, "555", "Patient.telecom", 3)
    )
    typed = only(
        protect_search(parsed("Patient", "identifier:of-type=http://t|MR|12345"), ring, DEFAULT_FIELDS)
    )
    assert typed.values[0] == v.TokenValue("http://t|MR", blind(ring, "12345", "Patient.identifier", 3))
    text = only(protect_search(parsed("Patient", "identifier:text=Medical Record"), ring, DEFAULT_FIELDS))
    assert text.values[0] == v.StringValue(blind(ring, "medical record", "Patient.identifier#text", 3))


def test_dates_match_exactly_at_the_precision_written(ring: Keyring) -> None:
    m = only(protect_search(parsed("Patient", "birthdate=1974-12-25"), ring, DEFAULT_FIELDS))
    point = blind_number(ring, date_text(*date_range("1974-12-25")), "Patient.birthdate#date", 3)
    assert m.values[0] == v.DateValue("eq", point, point)
    for query in ("birthdate=ge1974-12-25", "birthdate=ap1974"):
        with pytest.raises(EncryptedSearchRefused, match="exact date"):
            protect_search(parsed("Patient", query), ring, DEFAULT_FIELDS)


def test_parameters_not_on_phi_and_missing_pass_through(ring: Keyring) -> None:
    search = parsed("Patient", "gender=male&family:missing=true&general-practitioner=Practitioner/1")
    assert protect_search(search, ring, DEFAULT_FIELDS).filters == search.filters
    assert isinstance(search.filters[1], Missing)


def test_chains_and_has_are_rewritten_for_the_type_they_search(ring: Keyring) -> None:
    chained = protect_search(parsed("Observation", "subject:Patient.identifier=12345"), ring, DEFAULT_FIELDS)
    (chain,) = chained.filters
    assert isinstance(chain, Chain)
    ((target, inner),) = chain.targets
    assert target == "Patient" and isinstance(inner, Match)
    assert inner.values[0] == v.TokenValue(None, blind(ring, "12345", "Patient.identifier", 3))
    has = protect_search(
        parsed("Patient", "_has:Device:patient:identifier=SN1"),
        ring,
        PhiFields.of({"Device": ["identifier"]}),
    )
    (h,) = has.filters
    assert isinstance(h, Has) and isinstance(h.inner, Match)
    assert h.inner.values[0] == v.TokenValue(None, blind(ring, "SN1", "Device.identifier", 3))


def test_sorting_on_an_encrypted_parameter_is_refused(ring: Keyring) -> None:
    with pytest.raises(EncryptedSearchRefused, match="sorted"):
        protect_search(parsed("Patient", "_sort=-birthdate"), ring, DEFAULT_FIELDS)
    assert protect_search(parsed("Patient", "_sort=gender"), ring, DEFAULT_FIELDS).sort == (
        ("gender", False),
    )


def test_uri_number_quantity_and_composite_parameters_on_phi(ring: Keyring) -> None:
    fields = PhiFields.of({"ValueSet": ["url", "useContext"], "RiskAssessment": ["prediction"]})
    m = only(protect_search(parsed("ValueSet", "url=http://x/vs"), ring, fields))
    assert m.values[0] == v.UriValue(blind(ring, "http://x/vs", "ValueSet.url", 3))
    for res_type, query in (
        ("ValueSet", "url:below=http://x"),
        ("ValueSet", "context-quantity=5"),
        ("ValueSet", "context-type-quantity=age$5"),
        ("RiskAssessment", "probability=0.25"),
    ):
        with pytest.raises(EncryptedSearchRefused, match="exact values"):
            protect_search(parsed(res_type, query), ring, fields)
    with pytest.raises(EncryptedSearchRefused, match="not indexed"):
        protect_search(parsed("RiskAssessment", "probability:missing=true"), ring, fields)
    assert protect_search(parsed("ValueSet", "url:missing=true"), ring, fields).filters
