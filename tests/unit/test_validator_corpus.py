"""Agreement with the HL7 Java reference validator on the shared corpus (verdicts and error locations).

cases.json holds R4 resources with the reference validator's verdict and error expressions;
mutations-dev.json holds valid base resources and single-fault mutations with the expression of the
fault. The figures printed here go into benchmarks/README.md. The thresholds are the product's aim
(≥95 % verdict agreement), checked on these files but not tuned to them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_gateway.validation.validator import is_valid, validate

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "validator"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="validator corpus not present")


def _load(name: str) -> list[dict[str, Any]]:
    return list(json.loads((CORPUS / name).read_text()))


def _error_expressions(resource: Any) -> set[str]:
    return {e for i in validate(resource) if i.severity in ("error", "fatal") for e in i.expression}


@needs_corpus
def test_reference_validator_cases() -> None:
    cases = _load("cases.json")
    agree = matched = expected_total = 0
    for case in cases:
        ours = _error_expressions(case["resource"])
        expected = case["expected"]
        agree += (not ours) == expected["valid"]
        wanted = {e["expression"] for e in expected["errors"]}
        expected_total += len(wanted)
        matched += len(wanted & ours)
    print(f"\ncases.json: verdict {agree}/{len(cases)}, error locations {matched}/{expected_total}")
    assert agree / len(cases) >= 0.95
    assert matched / expected_total >= 0.5


@needs_corpus
def test_mutations() -> None:
    cases = _load("mutations-dev.json")
    agree = located = faults = 0
    for case in cases:
        issues = validate(case["resource"])
        agree += is_valid(issues) == case["valid"]
        if case["where"]:
            faults += 1
            located += case["where"] in {e for i in issues if i.severity == "error" for e in i.expression}
    print(f"\nmutations-dev.json: verdict {agree}/{len(cases)}, fault located {located}/{faults}")
    assert agree == len(cases)
    assert located / faults >= 0.9
