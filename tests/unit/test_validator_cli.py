"""`validate_files`: what `fhir-gateway validate FILE...` prints and its exit code."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from fhir_gateway.validation.cli import validate_files

GOOD = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "female",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
}


def run(paths: list[Path]) -> tuple[int, str]:
    buffer = io.StringIO()
    code = validate_files(paths, console=Console(file=buffer, width=200, color_system=None))
    return code, buffer.getvalue()


def test_valid_files_exit_zero(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(GOOD))
    code, out = run([tmp_path / "p.json"])
    assert code == 0 and "0 error(s)" in out


def test_errors_exit_non_zero_and_are_listed(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(GOOD | {"gender": "bogus"}))
    (tmp_path / "broken.json").write_text("{not json")
    code, out = run([tmp_path])
    assert code == 1
    assert "Patient.gender" in out and "code-invalid" in out and "cannot read as JSON" in out


def test_profiles_among_the_files_are_used(tmp_path: Path) -> None:
    profile = {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/p",
        "name": "P",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}]},
    }
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    (tmp_path / "p.json").write_text(json.dumps(GOOD | {"meta": {"profile": [profile["url"]]}}))
    code, out = run([tmp_path / "profile.json", tmp_path / "p.json"])
    assert code == 1 and "Patient.birthDate: minimum required = 1" in out
