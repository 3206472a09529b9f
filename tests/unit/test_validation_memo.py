"""The validation memo gives exactly what the validator gives, for repeated and changed content."""

from __future__ import annotations

from fhir_gateway.validation.memo import ValidationMemo
from fhir_gateway.validation.validator import validate

BAD_PATIENT = {"resourceType": "Patient", "gender": "robot", "birthDate": "2020-02-30"}


def _texts(issues: list) -> list[tuple[str, str, list[str]]]:
    return [(i.severity, i.diagnostics, i.expression) for i in issues]


def test_a_repeat_gives_the_same_issues_as_the_validator_and_copies_the_caller_may_change() -> None:
    memo = ValidationMemo()
    first = memo.validate(BAD_PATIENT, mode="update", run_invariants=True, unknown_extensions="error")
    assert _texts(first) == _texts(validate(BAD_PATIENT, mode="update"))
    assert any("birthDate" in e for i in first for e in i.expression)
    first[0].expression[0] = "Bundle.entry[3].resource/*Patient/x*/.gender"  # a caller relocating
    again = memo.validate(dict(BAD_PATIENT), mode="update", run_invariants=True, unknown_extensions="error")
    assert _texts(again) == _texts(validate(BAD_PATIENT, mode="update"))


def _errors(issues: list) -> list[str]:
    return [i.diagnostics for i in issues if i.severity == "error"]


def test_changed_content_and_another_mode_are_validated_afresh() -> None:
    memo = ValidationMemo()
    male = {"resourceType": "Patient", "id": "p", "gender": "male"}
    assert _errors(memo.validate(male, mode="update", run_invariants=True, unknown_extensions="error")) == []
    robot = {**male, "gender": "robot"}
    assert (
        len(_errors(memo.validate(robot, mode="update", run_invariants=True, unknown_extensions="error")))
        == 1
    )
    no_id = {"resourceType": "Patient"}
    assert _errors(memo.validate(no_id, mode="create", run_invariants=True, unknown_extensions="error")) == []
    assert _errors(memo.validate(no_id, mode="update", run_invariants=True, unknown_extensions="error")) == [
        "A resource must have an id to be updated"
    ]
    national = {**male, "extension": [{"url": "http://example.net/fhir/national-id", "valueString": "x"}]}
    assert (
        len(_errors(memo.validate(national, mode="update", run_invariants=True, unknown_extensions="error")))
        == 1
    )
    lenient = memo.validate(national, mode="update", run_invariants=True, unknown_extensions="warning")
    assert _errors(lenient) == []
    assert [i.severity for i in lenient if "national-id" in i.diagnostics] == ["warning"]


def test_the_memo_is_bounded_and_content_json_cannot_hold_is_still_validated() -> None:
    memo = ValidationMemo(size=2)
    for n in range(5):
        memo.validate(
            {"resourceType": "Patient", "id": f"p{n}"},
            mode=None,
            run_invariants=False,
            unknown_extensions="error",
        )
    assert len(memo._issues) == 2
    huge = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueInteger": 2**70}
    issues = memo.validate(huge, mode=None, run_invariants=True, unknown_extensions="error")
    assert any("32-bit" in i.diagnostics for i in issues)
    assert len(memo._issues) == 2
