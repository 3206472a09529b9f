"""SMART scope grammar (v1 and v2, with query restrictions) and the allow matrix."""

from __future__ import annotations

import pytest

from fhir_gateway.auth.scopes import Scope, allows, granting, interaction_of, parse_scope, parse_scopes

ALL = frozenset({"create", "read", "update", "delete", "search"})


@pytest.mark.parametrize(
    ("text", "context", "res_type", "interactions", "version", "query"),
    [
        ("patient/*.rs", "patient", "*", {"read", "search"}, 2, ()),
        ("user/Observation.cruds", "user", "Observation", ALL, 2, ()),
        ("system/*.c", "system", "*", {"create"}, 2, ()),
        ("user/Patient.u", "user", "Patient", {"update"}, 2, ()),
        ("patient/Condition.d", "patient", "Condition", {"delete"}, 2, ()),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            "patient",
            "Observation",
            {"read", "search"},
            2,
            (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),),
        ),
        (
            "user/Observation.s?code=1234-5&status=final",
            "user",
            "Observation",
            {"search"},
            2,
            (("code", "1234-5"), ("status", "final")),
        ),
        ("patient/Observation.read", "patient", "Observation", {"read", "search"}, 1, ()),
        ("user/*.write", "user", "*", {"create", "update", "delete"}, 1, ()),
        ("system/*.*", "system", "*", ALL, 1, ()),
        ("*.*", None, "*", ALL, 1, ()),
        ("Observation.read", None, "Observation", {"read", "search"}, 1, ()),
    ],
)
def test_parse(
    text: str,
    context: str | None,
    res_type: str,
    interactions: set[str],
    version: int,
    query: tuple[str, ...],
) -> None:
    scope = parse_scope(text)
    assert scope is not None
    assert (scope.context, scope.resource_type, set(scope.interactions), scope.version, scope.query) == (
        context,
        res_type,
        interactions,
        version,
        query,
    )
    assert scope.raw == text


@pytest.mark.parametrize(
    "text",
    [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "offline_access",
        "patient/Observation.sr",  # v2 letters must be in c r u d s order
        "patient/Observation.rr",
        "patient/Observation.",
        "patient/Observation.x",
        "patient/observation.rs",  # types start upper-case
        "doctor/*.rs",
        "patient/*.read?code=1",  # queries are v2 only
        "patient/*.rs?",
        "patient/*.rs?=x",
        "Observation.rs",  # v2 always names a context
        "patient/*",
        "",
    ],
)
def test_not_resource_scopes(text: str) -> None:
    assert parse_scope(text) is None


def test_parse_scopes_splits_and_drops_the_rest() -> None:
    parsed = parse_scopes("openid fhirUser launch/patient patient/*.rs  user/Observation.cruds")
    assert [s.raw for s in parsed] == ["patient/*.rs", "user/Observation.cruds"]
    assert parse_scopes(["patient/*.rs user/*.read", "bogus"]) == (
        parse_scope("patient/*.rs"),
        parse_scope("user/*.read"),
    )


MATRIX = [
    # scopes, context, type, interaction, expected
    ("patient/*.rs", "patient", "Observation", "read", True),
    ("patient/*.rs", "patient", "Observation", "search", True),
    ("patient/*.rs", "patient", "Observation", "create", False),
    ("patient/*.rs", "user", "Observation", "read", False),
    ("patient/*.rs", None, "Observation", "read", True),
    ("user/Observation.cruds", "user", "Observation", "delete", True),
    ("user/Observation.cruds", "user", "Condition", "read", False),
    ("user/Observation.cu", "user", "Observation", "read", False),
    ("user/Observation.cu", "user", "Observation", "update", True),
    ("user/Observation.cu", "user", "Observation", "patch", True),
    ("system/*.*", "system", "Patient", "delete", True),
    ("system/*.*", "user", "Patient", "delete", False),
    ("user/*.read", "user", "Patient", "search", True),
    ("user/*.read", "user", "Patient", "vread", True),
    ("user/*.read", "user", "Patient", "history", True),
    ("user/*.read", "user", "Patient", "update", False),
    ("user/*.write", "user", "Patient", "read", False),
    ("user/*.write", "user", "Patient", "c", True),
    ("*.*", "patient", "Encounter", "d", True),
    ("*.*", "system", "Encounter", "s", True),
    ("Observation.read", "patient", "Observation", "r", True),
    ("openid fhirUser launch", "user", "Patient", "read", False),
    ("", "user", "Patient", "read", False),
    ("patient/Observation.rs?category=laboratory", "patient", "Observation", "search", True),
    ("patient/Observation.rs?category=laboratory", "patient", "Condition", "search", False),
    ("user/Patient.r user/Observation.s", "user", "Observation", "search", True),
    ("user/Patient.r user/Observation.s", "user", "Observation", "read", False),
]


@pytest.mark.parametrize(("scopes", "context", "res_type", "interaction", "expected"), MATRIX)
def test_allow_matrix(
    scopes: str, context: str | None, res_type: str, interaction: str, expected: bool
) -> None:
    assert allows(scopes, context, res_type, interaction) is expected
    assert allows(scopes.split(), context, res_type, interaction) is expected
    assert allows(list(parse_scopes(scopes)), context, res_type, interaction) is expected


def test_granting_exposes_query_restrictions() -> None:
    scopes = "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs"
    found = granting(scopes, "patient", "Observation", "search")
    assert [s.query for s in found] == [(("category", "laboratory"),), (("category", "vital-signs"),)]
    # one unrestricted grant among them means the caller is not narrowed
    wider = granting(f"{scopes} patient/*.rs", "patient", "Observation", "search")
    assert any(not s.query for s in wider)


def test_interaction_names() -> None:
    assert interaction_of("s") == "search"
    assert interaction_of("vread") == "read"
    with pytest.raises(ValueError, match="unknown interaction"):
        interaction_of("operate")
    with pytest.raises(ValueError):
        allows("user/*.*", "user", "Patient", "$everything")


def test_scope_is_immutable_and_hashable() -> None:
    scope = parse_scope("user/*.rs")
    assert isinstance(scope, Scope)
    assert {scope, parse_scope("user/*.rs")} == {scope}
    with pytest.raises(AttributeError):
        scope.resource_type = "Patient"  # type: ignore[misc]


def test_scope_queries_on_encrypted_parameters_are_known_only_with_crypto_on() -> None:
    from fhir_gateway.privacy.scope_filter import encrypted_for
    from tests.conftest import make_settings

    on = encrypted_for(make_settings("sqlite+aiosqlite:///:memory:"))
    off = encrypted_for(make_settings("sqlite+aiosqlite:///:memory:", crypto={"enabled": False}))
    assert "identifier" in on("Patient") and "category" not in on("Observation")
    assert off("Patient") == ()
