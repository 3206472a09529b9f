"""Clearance: role × purpose of use × label matrix, the SQL-facing hidden set, and policy files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.privacy.clearance import (
    ClearancePolicy,
    ClearanceRulesError,
    clearance_for,
    clearance_policy,
    cleared,
    deidentified_only,
    hidden_labels,
    hidden_security_labels,
)
from fhir_gateway.privacy.labels import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM, SENSITIVITY_CODES
from fhir_gateway.settings import load_settings


def conf(code: str) -> dict[str, str]:
    return {"system": CONFIDENTIALITY_SYSTEM, "code": code}


def act(code: str) -> dict[str, str]:
    return {"system": ACT_CODE_SYSTEM, "code": code}


def ctx(*roles: str, purpose: tuple[str, ...] = (), who: str = "u1") -> RequestContext:
    return RequestContext(subject=who, roles=roles, purpose_of_use=purpose)


LABELS = {
    "unlabelled": [],
    "U": [conf("U")],
    "N": [conf("N")],
    "R": [conf("R")],
    "V": [conf("V")],
    "R+PSY": [conf("R"), act("PSY")],
    "N+HIV": [conf("N"), act("HIV")],
    "R+SUD": [conf("R"), act("SUD"), act("42CFRPart2")],
    "N+legacy PSY": [conf("N"), {"system": CONFIDENTIALITY_SYSTEM, "code": "PSY"}],
    "R+handling only": [conf("R"), act("NORDSCLCD"), act("MASK")],
    "N+foreign label": [conf("N"), {"system": "http://local", "code": "PSY"}],
}
EVERYTHING = set(LABELS)
TREATMENT = {"unlabelled", "U", "N", "R", "R+handling only", "N+foreign label"}
NORMAL = {"unlabelled", "U", "N", "N+foreign label"}

MATRIX: list[tuple[tuple[str, ...], tuple[str, ...], set[str]]] = [
    (("admin",), (), EVERYTHING),
    (("privacy_officer",), ("HOPERAT",), EVERYTHING),
    (("clinician",), ("TREAT",), TREATMENT),
    (("clinician",), ("ETREAT",), TREATMENT),
    (("nurse",), ("TREAT",), TREATMENT),
    (("clinician",), (), NORMAL),  # no purpose of use: the least the role allows
    (("clinician",), ("HPAYMT",), NORMAL),
    (("clinician",), ("BTG",), NORMAL),  # BTG in the token alone overrides nothing
    (("emergency_access",), ("ETREAT",), TREATMENT),
    (("integration",), (), TREATMENT),
    (("researcher",), ("HRESCH",), NORMAL),
    (("researcher",), (), set()),
    (("unknown-role",), ("TREAT",), set()),
    ((), (), set()),
    (("clinician", "admin"), (), EVERYTHING),
]


@pytest.mark.parametrize(("roles", "purpose", "visible"), MATRIX)
def test_role_purpose_label_matrix(
    roles: tuple[str, ...], purpose: tuple[str, ...], visible: set[str]
) -> None:
    caller = ctx(*roles, purpose=purpose)
    seen = {name for name, labels in LABELS.items() if cleared(caller, labels)}
    assert seen == visible
    # the SQL form agrees: hidden iff a label is in the hidden set (or the caller sees nothing at all)
    hidden = hidden_security_labels(caller)
    clearance = clearance_for(caller)
    by_set = {
        name
        for name, labels in LABELS.items()
        if not clearance.sees_nothing and not any((c["system"], c["code"]) in hidden for c in labels)
    }
    assert by_set == visible


def test_break_glass_clears_everything() -> None:
    caller = ctx("clinician", purpose=("ETREAT",))
    assert all(cleared(caller, labels, break_glass=True) for labels in LABELS.values())
    assert hidden_labels(caller, break_glass=True) == set()
    assert clearance_for(caller, break_glass=True).sees_everything


def test_break_glass_keeps_configured_exceptions_closed() -> None:
    caller = ctx("emergency_access", purpose=("ETREAT",))
    exceptions = ("SUD", "ETHUD", "OPIOIDUD", "not-a-code")
    assert cleared(caller, LABELS["R+PSY"], break_glass=True, break_glass_exceptions=exceptions)
    assert cleared(caller, LABELS["V"], break_glass=True, break_glass_exceptions=exceptions)
    assert not cleared(caller, LABELS["R+SUD"], break_glass=True, break_glass_exceptions=exceptions)
    assert hidden_labels(caller, break_glass=True, break_glass_exceptions=exceptions) == {
        "SUD",
        "ETHUD",
        "OPIOIDUD",
    }


def test_policy_from_settings(tmp_path: Path) -> None:
    assert clearance_policy(load_settings(None, environ={})).version == "clearance-v1"
    path = tmp_path / "c.yaml"
    path.write_text("version: site-v7\n")

    class Privacy:
        clearance_rules = str(path)

    class FakeSettings:  # until privacy.clearance_rules exists in Settings
        privacy = Privacy()

    assert clearance_policy(FakeSettings()).version == "site-v7"  # type: ignore[arg-type]


def test_hidden_codes_for_a_treating_clinician() -> None:
    hidden = hidden_labels(ctx("clinician", purpose=("TREAT",)))
    assert "V" in hidden and "R" not in hidden and "N" not in hidden
    assert {
        "PSY",
        "HIV",
        "SUD",
        "ETHUD",
        "OPIOIDUD",
        "SDV",
        "GDIS",
        "SEX",
        "STD",
        "ETH",
        "BH",
        "MH",
    } <= hidden
    assert "NORDSCLCD" not in hidden and "42CFRPart2" not in hidden
    pairs = hidden_security_labels(ctx("clinician", purpose=("TREAT",)))
    assert (CONFIDENTIALITY_SYSTEM, "PSY") in pairs  # R4's legacy spelling is hidden too
    assert (CONFIDENTIALITY_SYSTEM, "R") not in pairs
    assert hidden_labels(ctx("admin")) == set()


def test_researchers_get_deidentified_data_only() -> None:
    researcher = ctx("researcher", purpose=("HRESCH",))
    assert deidentified_only(researcher)
    assert not deidentified_only(ctx("clinician", purpose=("TREAT",)))
    # identified access from another role wins over the de-identified research grant
    assert not deidentified_only(ctx("researcher", "clinician", purpose=("HRESCH",)))
    assert not clearance_for(researcher).sees_everything


def test_nothing_is_visible_without_an_applicable_grant() -> None:
    nobody = clearance_for(ctx())
    assert nobody.sees_nothing
    assert not nobody.sees([])
    assert hidden_labels(ctx()) >= {"U", "L", "M", "N", "R", "V"} | set(SENSITIVITY_CODES)


POLICY = ClearancePolicy.from_mapping(
    {
        "version": "site-v1",
        "roles": {
            "clinician": [{"purposes": ["TREAT"], "confidentiality": "R"}],
            "psychiatrist": [
                {"purposes": ["TREAT", "ETREAT"], "confidentiality": "R", "sensitivity": ["PSY", "MH"]}
            ],
        },
        "subjects": {"Practitioner/42": [{"confidentiality": "R", "sensitivity": ["HIV"]}]},
    }
)


def test_explicit_clearance_by_role_and_by_subject() -> None:
    psychiatrist = ctx("clinician", "psychiatrist", purpose=("TREAT",))
    assert cleared(psychiatrist, LABELS["R+PSY"], policy=POLICY)
    assert cleared(psychiatrist, LABELS["N+legacy PSY"], policy=POLICY)
    assert not cleared(psychiatrist, LABELS["N+HIV"], policy=POLICY)
    assert not cleared(psychiatrist, LABELS["V"], policy=POLICY)
    assert not cleared(ctx("psychiatrist", purpose=("HPAYMT",)), LABELS["R+PSY"], policy=POLICY)
    named = RequestContext(subject="idp|42", fhir_user="Practitioner/42", roles=("clinician",))
    assert cleared(named, LABELS["N+HIV"], policy=POLICY)
    assert not cleared(named, LABELS["R+PSY"], policy=POLICY)
    by_sub = RequestContext(subject="Practitioner/42", fhir_user="Practitioner/42")
    assert cleared(by_sub, LABELS["N+HIV"], policy=POLICY)
    assert POLICY.version == "site-v1"


BAD_POLICIES: list[tuple[Any, str]] = [
    ("text", "expected a mapping"),
    ({"version": "v", "users": {}}, "expected a mapping"),
    ({"roles": {}}, "version"),
    ({"version": "v", "roles": []}, "must map names"),
    ({"version": "v", "roles": {"a": {"confidentiality": "R"}}}, "list of grants"),
    ({"version": "v", "roles": {"a": ["R"]}}, r"roles\.a\[0\]"),
    ({"version": "v", "roles": {"a": [{"confidentiality": "R", "colour": 1}]}}, "a grant has"),
    ({"version": "v", "roles": {"a": [{"confidentiality": "Z"}]}}, "U L M N R V"),
    ({"version": "v", "roles": {"a": [{"confidentiality": "R", "sensitivity": ["FLU"]}]}}, "sensitivity"),
    ({"version": "v", "roles": {"a": [{"confidentiality": "R", "sensitivity": "PSY"}]}}, "sensitivity"),
    ({"version": "v", "subjects": {"x": [{"confidentiality": "R", "purposes": "TREAT"}]}}, "purposes"),
]


@pytest.mark.parametrize(("data", "message"), BAD_POLICIES)
def test_bad_policies_fail_with_a_message(data: Any, message: str) -> None:
    with pytest.raises(ClearanceRulesError, match=message):
        ClearancePolicy.from_mapping(data)


def test_policy_files(tmp_path: Path) -> None:
    path = tmp_path / "clearance.yaml"
    path.write_text("version: local-v2\nroles:\n  auditor: [{confidentiality: V, sensitivity: '*'}]\n")
    policy = ClearancePolicy.load(path)
    assert cleared(ctx("auditor"), LABELS["R+SUD"], policy=policy)
    assert not cleared(ctx("admin"), LABELS["N"], policy=policy)  # a replacement, not an overlay
    path.write_text("version: x\nsubjects:\n")
    assert ClearancePolicy.load(path).subjects == {}
    path.write_text("version: [")
    with pytest.raises(ClearanceRulesError, match="not valid YAML"):
        ClearancePolicy.load(path)
    with pytest.raises(ClearanceRulesError, match="cannot read"):
        ClearancePolicy.load(tmp_path / "missing.yaml")
    assert ClearancePolicy.load().version == "clearance-v1"
