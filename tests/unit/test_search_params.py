"""Search query parsing: value syntax, modifiers, result parameters, and what becomes an error."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fhir_gateway.errors import BadRequest
from fhir_gateway.store.search import criteria
from fhir_gateway.store.search import values as v
from fhir_gateway.store.search.criteria import Chain, Has, Match, Missing
from fhir_gateway.store.search.params import Include, ParsedSearch, parse_search


def parse(
    resource_type: str, query: list[tuple[str, str]], *, strict: bool = True, **kw: Any
) -> ParsedSearch:
    return parse_search(
        resource_type, query, strict=strict, default_count=kw.get("default", 20), max_count=kw.get("max", 100)
    )


def only(resource_type: str, key: str, value: str) -> Any:
    parsed = parse(resource_type, [(key, value)])
    assert len(parsed.filters) == 1
    return parsed.filters[0]


def bad(resource_type: str, query: list[tuple[str, str]], *, strict: bool = True) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(resource_type, query, strict=strict)
    return info.value


# ---- value syntax -----------------------------------------------------------------------------


def test_split_and_unescape() -> None:
    assert v.split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert v.split_escaped(r"a\\,b", ",") == [r"a\\", "b"]
    assert v.split_escaped("trailing\\", ",") == ["trailing\\"]
    assert v.unescape(r"a\,b\|c\$d\\e") == r"a,b|c$d\e"


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("100", 99.5, 100.5),
        ("1e2", 99.5, 100.5),
        ("100.00", 99.995, 100.005),
        ("0.25", 0.245, 0.255),
        ("-3", -3.5, -2.5),
        (".5", 0.45, 0.55),
    ],
)
def test_number_precision(text: str, low: float, high: float) -> None:
    number = v.parse_number(text)
    assert number.low == pytest.approx(low) and number.high == pytest.approx(high)


def test_number_ap_widens_by_ten_percent() -> None:
    number = v.parse_number("100", "ap")
    assert (number.low, number.high) == (90.0, 110.0)


@pytest.mark.parametrize(
    "text", ["abc", "1,5", "nan", "Infinity", "1e", "", "--1", "1e9999999", "1e-999", "9" * 400]
)
def test_number_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        v.parse_number(text)


def test_date_ap_widens_by_distance_to_now_at_least_a_day() -> None:
    near = v.parse_date("2024-01-01", "ap", now=v.parse_date("2024-01-01").low)
    assert near.high - near.low == pytest.approx(3 * v.DAY)
    far = v.parse_date("2014-01-01", "ap", now=v.parse_date("2024-01-01").low)
    assert far.high - far.low > 700 * v.DAY


def test_token_forms() -> None:
    assert v.parse_token("abc") == v.TokenValue(None, "abc")
    assert v.parse_token("http://s|abc") == v.TokenValue("http://s", "abc")
    assert v.parse_token("|abc") == v.TokenValue(None, "abc", no_system=True)
    assert v.parse_token("http://s|") == v.TokenValue("http://s", None)
    assert v.parse_token(r"a\|b") == v.TokenValue(None, "a|b")
    for text in ("|", "a|b|c"):
        with pytest.raises(ValueError):
            v.parse_token(text)


def test_of_type() -> None:
    assert v.parse_of_type("http://t|MR|123") == v.TokenValue("http://t|MR", "123")
    with pytest.raises(ValueError):
        v.parse_of_type("MR|123")


def test_reference_forms() -> None:
    types = frozenset({"Patient", "Organization"})
    assert v.parse_reference("Patient/1", types) == v.ReferenceValue("Patient", "1")
    assert v.parse_reference("Patient/1/_history/3", types) == v.ReferenceValue("Patient", "1")
    assert v.parse_reference("1", types) == v.ReferenceValue(None, "1")
    assert v.parse_reference("1", types, target_type="Patient") == v.ReferenceValue("Patient", "1")
    assert v.parse_reference("Patient/1", types, target_type="Patient") == v.ReferenceValue("Patient", "1")
    url = "http://x.org/fhir/Patient/7"
    assert v.parse_reference(url, types) == v.ReferenceValue("Patient", "7", url)
    assert v.parse_reference("http://x.org/vs|1.0", types) == v.ReferenceValue(None, None, "http://x.org/vs")
    for text, target in (("Foo/1", None), ("Patient/", None), ("Organization/1", "Patient")):
        with pytest.raises(ValueError):
            v.parse_reference(text, types, target_type=target)


def test_quantity_forms() -> None:
    q = v.parse_quantity("gt5.4|http://unitsofmeasure.org|mg")
    assert (q.number.prefix, q.number.value, q.system, q.code) == (
        "gt",
        5.4,
        "http://unitsofmeasure.org",
        "mg",
    )
    assert v.parse_quantity("5.4||mg").system is None
    assert v.parse_quantity("5.4").code is None
    for text in ("5|mg", "abc", "xx5"):
        with pytest.raises(ValueError):
            v.parse_quantity(text)


def test_prefix() -> None:
    assert v.split_prefix("ge2000") == ("ge", "2000")
    assert v.split_prefix("2000") == ("eq", "2000")


# ---- filters ----------------------------------------------------------------------------------


def test_comma_is_or_and_repetition_is_and() -> None:
    parsed = parse("Patient", [("family", "smith,jones"), ("family", "a")])
    assert [len(f.values) for f in parsed.filters if isinstance(f, Match)] == [2, 1]


def test_string_is_normalised_except_exact() -> None:
    assert only("Patient", "name", "MÜLLER").values == (v.StringValue("muller"),)
    assert only("Patient", "name:exact", "Müller").values == (v.StringValue("Müller"),)
    assert only("Patient", "name", r"a\,b").values == (v.StringValue("a,b"),)


def test_token_modifiers() -> None:
    assert only("Patient", "gender:not", "male") == Match(
        "gender", "token", "not", (v.TokenValue(None, "male"),)
    )
    assert only("Observation", "code:text", "Blood  Pressure").values == (v.StringValue("blood pressure"),)
    of_type = only("Patient", "identifier:of-type", "http://t|MR|1")
    assert of_type.values == (v.TokenValue("http://t|MR", "1"),)


def test_missing_on_any_type() -> None:
    assert only("Patient", "birthdate:missing", "true") == Missing("birthdate", "date", True)
    assert only("Observation", "subject:missing", "false") == Missing("subject", "reference", False)
    assert bad("Patient", [("birthdate:missing", "yes")]).issues[0].code == "value"


def test_reference_type_modifier() -> None:
    crit = only("Observation", "subject:Patient", "123")
    assert crit.values == (v.ReferenceValue("Patient", "123"),)


def test_id_and_last_updated() -> None:
    assert only("Patient", "_id", "a,b").values == (v.TokenValue(None, "a"), v.TokenValue(None, "b"))
    assert only("Patient", "_lastUpdated", "gt2024").values[0].prefix == "gt"


def test_composite_components_are_typed() -> None:
    crit = only("Observation", "code-value-quantity", "http://loinc.org|8480-6$lt60")
    (value,) = crit.values
    assert value.parts[0] == v.TokenValue("http://loinc.org", "8480-6")
    assert value.parts[1].number.prefix == "lt"
    date_part = only("Observation", "code-value-date", "1234$ge2020").values[0].parts[1]
    assert isinstance(date_part, v.DateValue) and date_part.prefix == "ge"
    string_part = only("Observation", "code-value-string", "1234$Positive").values[0].parts[1]
    assert string_part == v.StringValue("positive")
    # R4 declares DocumentReference.relationship as reference$token (the components are swapped).
    reference_part = (
        only("DocumentReference", "relationship", "DocumentReference/9$replaces").values[0].parts[0]
    )
    assert reference_part == v.ReferenceValue("DocumentReference", "9")
    numbers = only("MolecularSequence", "chromosome-variant-coordinate", "1$gt10$lt20").values[0].parts
    assert [p.prefix for p in numbers[1:]] == ["gt", "lt"]


def test_composite_with_an_unknown_component_type_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    components = (SimpleNamespace(type="token"), SimpleNamespace(type="uri"))
    odd = SimpleNamespace(code="odd", type="composite", targets=(), components=components)
    monkeypatch.setattr(criteria, "get", lambda resource_type, code: odd if code == "odd" else None)
    assert bad("Basic", [("odd", "a$b")]).issues[0].code == "not-supported"


def test_chain_and_has() -> None:
    chain = only("Observation", "subject:Patient.birthdate", "ge2000")
    assert isinstance(chain, Chain) and [t for t, _ in chain.targets] == ["Patient"]
    multi = only("Observation", "subject.name", "peter")
    assert {t for t, _ in multi.targets} == {"Patient", "Location"}  # Group and Device have no `name`
    has = only("Patient", "_has:Observation:patient:code", "1234-5")
    assert isinstance(has, Has) and has.source_type == "Observation" and isinstance(has.inner, Match)
    nested = only("Patient", "_has:Observation:patient:_has:Provenance:target:agent", "Practitioner/1")
    assert isinstance(nested, Has) and isinstance(nested.inner, Has)
    deep = only("Observation", "subject:Patient.organization.name", "acme")
    assert isinstance(deep.targets[0][1], Chain)


@pytest.mark.parametrize(
    ("resource_type", "key"),
    [
        ("Patient", "nonsense"),
        ("Patient", "name:fuzzy"),
        ("Patient", "gender:in"),
        ("Patient", "gender:below"),
        ("Observation", "subject:identifier"),
        ("Observation", "subject:Medication"),
        ("Patient", "_text"),
        ("Patient", "_has:Nothing:patient:code"),
        ("Patient", "_has:Observation:nope:code"),
        ("Patient", "_has:Observation:code:code"),
        ("Patient", "_has:Organization:partof:name"),
        ("Patient", "_has:Observation:patient"),
        ("Patient", "gender.name"),
        ("Observation", "subject:Organization.name"),
        ("Observation", "subject.nonexistent"),
        ("Patient", "_id:exact"),
        ("Location", "near"),
    ],
)
def test_unsupported_is_warning_or_error(resource_type: str, key: str) -> None:
    lenient = parse(resource_type, [(key, "x"), ("_count", "5")], strict=False)
    assert lenient.filters == ()
    (warning,) = lenient.warnings
    assert warning.severity == "warning" and warning.expression == [key]
    assert lenient.link_params(offset=0) == [("_count", "5"), ("_offset", "0")]
    assert bad(resource_type, [(key, "x")]).issues[0].code == "not-supported"


@pytest.mark.parametrize(
    ("resource_type", "key", "value"),
    [
        ("Patient", "birthdate", "notadate"),
        ("Patient", "birthdate", "xx2000"),
        ("Patient", "birthdate", "2000-02-30"),
        ("RiskAssessment", "probability", "abc"),
        ("Observation", "value-quantity", "abc"),
        ("Observation", "code-value-quantity", "8480-6"),
        ("Observation", "code-value-quantity", "8480-6$"),
        ("Observation", "subject", "Foo/1"),
        ("Patient", "identifier:of-type", "MR|1"),
        ("Patient", "gender", "a,,b"),
        ("Patient", "_count", "abc"),
        ("Patient", "_count", "-1"),
        ("Patient", "_count", "²"),
        ("Patient", "_offset", "x"),
        ("Patient", "_total", "maybe"),
        ("Patient", "_summary", "yes"),
        ("Patient", "_sort", "-"),
    ],
)
def test_invalid_values_name_the_parameter_and_not_the_value(
    resource_type: str, key: str, value: str
) -> None:
    error = bad(resource_type, [(key, value)], strict=False)
    issue = error.issues[0]
    assert issue.expression == [key]
    assert issue.code == "value"
    if len(value) > 2:
        assert value not in issue.diagnostics


def test_empty_filter_value_is_ignored_and_format_silently() -> None:
    parsed = parse("Patient", [("name", ""), ("_format", "json"), ("_pretty", "true")])
    assert parsed.filters == () and parsed.warnings == () and parsed.query == ()


# ---- result parameters ------------------------------------------------------------------------


def test_count_offset_total_summary_elements() -> None:
    parsed = parse(
        "Patient",
        [
            ("_count", "500"),
            ("_offset", "40"),
            ("_total", "accurate"),
            ("_summary", "count"),
            ("_elements", "name, gender,"),
        ],
        max=50,
    )
    assert (parsed.count, parsed.offset, parsed.total, parsed.summary) == (50, 40, "accurate", "count")
    assert parsed.elements == ("name", "gender")
    default = parse("Patient", [], default=7)
    assert (default.count, default.offset, default.total, default.summary, default.elements) == (
        7,
        0,
        None,
        None,
        None,
    )
    assert parse("Patient", [("_count", "0")]).count == 0


def test_sort() -> None:
    parsed = parse("Patient", [("_sort", "-birthdate,family,_id,-_lastUpdated")])
    assert parsed.sort == (("birthdate", True), ("family", False), ("_id", False), ("_lastUpdated", True))
    assert bad("Patient", [("_sort", "organization")]).issues[0].code == "not-supported"
    assert parse("Patient", [("_sort", "nonsense")], strict=False).sort == ()


def test_includes() -> None:
    parsed = parse(
        "Observation",
        [
            ("_include", "Observation:subject"),
            ("_include", "Observation:subject:Patient"),
            ("_include:iterate", "Patient:organization"),
            ("_include:recurse", "Organization:partof"),
            ("_include", "*"),
            ("_revinclude", "Provenance:target"),
            ("_revinclude:iterate", "Observation:*"),
        ],
    )
    assert parsed.includes == (
        Include("Observation", "subject", None, False),
        Include("Observation", "subject", "Patient", False),
        Include("Patient", "organization", None, True),
        Include("Organization", "partof", None, True),
        Include(None, None, None, False),
    )
    assert parsed.revincludes == (
        Include("Provenance", "target", None, False),
        Include("Observation", None, None, True),
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_include", "Observation"),
        ("_include", "Nothing:subject"),
        ("_include", "Observation:code"),
        ("_include", "Observation:subject:Medication"),
        ("_include:deep", "Observation:subject"),
    ],
)
def test_bad_includes(key: str, value: str) -> None:
    assert bad("Observation", [(key, value)]).issues[0].code == "not-supported"
    assert parse("Observation", [(key, value)], strict=False).includes == ()


def test_link_params_keep_what_was_used() -> None:
    query = [
        ("family", "smith"),
        ("bogus", "1"),
        ("_count", "10"),
        ("_sort", "-birthdate"),
        ("_include", "Patient:organization"),
        ("_offset", "30"),
        ("_format", "json"),
    ]
    parsed = parse("Patient", query, strict=False)
    assert parsed.link_params(offset=40) == [
        ("family", "smith"),
        ("_sort", "-birthdate"),
        ("_include", "Patient:organization"),
        ("_count", "10"),
        ("_offset", "40"),
    ]
