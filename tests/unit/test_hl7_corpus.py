"""The corpus (../shared/corpus/hl7v2): every message is taken, and its key facts agree with a
reference converter's output (resource kinds, patient identifiers, gender, birth date, quantities).

The comparison is on facts any correct v2-to-FHIR mapping shares, not on the reference's shape
(it makes Organizations, Practitioners and Locations we keep as logical references). Every resource
we produce must also be valid R4 structure (fhir.resources R4B models, used off the hot path).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.mapping.datatypes import comp
from fhir_gateway.ingest.hl7v2.messages import check_supported, map_message
from fhir_gateway.validation.validator import validate

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hl7v2"
MESSAGES = sorted((CORPUS / "messages").glob("*.hl7"))
pytestmark = pytest.mark.skipif(not MESSAGES, reason="corpus not present")
# Resource kinds mapped from one segment each: where the reference has one, we must too.
SEGMENT_KINDS = (
    "Patient",
    "Encounter",
    "Observation",
    "AllergyIntolerance",
    "Coverage",
    "Appointment",
    "DocumentReference",
    "MedicationRequest",
    "Immunization",
    "Consent",
)
SEGMENT_OF_RECORD = (("SPM", "Specimen"), ("GT1", "Account"))


def _of(bundle: dict[str, Any], res_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == res_type]


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
def test_message_is_taken_and_valid(path: Path) -> None:
    message = parse(path.read_bytes())
    assert check_supported(message) is None
    result = map_message(message)
    assert not result.failed, result.issues
    for entry in result.bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        # and valid for the gateway's own validator: codes of known systems, their displays, OIDs
        issues = validate(resource)
        errors = [(i.expression, i.diagnostics) for i in issues if i.severity in ("error", "fatal")]
        assert errors == [], resource["resourceType"]


@pytest.mark.parametrize(
    "path",
    [p for p in MESSAGES if (CORPUS / "reference-fhir-converter" / f"{p.stem}.json").exists()],
    ids=lambda p: p.stem,
)
def test_key_facts_agree_with_the_reference(path: Path) -> None:
    reference = json.loads((CORPUS / "reference-fhir-converter" / f"{path.stem}.json").read_text())
    message = parse(path.read_bytes())
    ours = map_message(message).bundle
    for kind in SEGMENT_KINDS:
        if kind == "Observation" and message.message_code == "MDM":
            continue  # MDM OBX are the document's content (IG MDM map), not Observations
        if _of(reference, kind):
            assert _of(ours, kind), kind
    # Kinds the reference also makes from other segments (Specimen from OBR-15, Account from PID-18):
    # where the message has the segment of record, we must make one too.
    for segment, kind in SEGMENT_OF_RECORD:
        if message.first(segment) is not None and _of(reference, kind):
            assert _of(ours, kind), kind
    ref_patients, our_patients = _of(reference, "Patient"), _of(ours, "Patient")
    if ref_patients:
        for key in ("gender", "birthDate"):
            assert {p.get(key) for p in ref_patients} <= {p.get(key) for p in our_patients}, key
        pid = message.first("PID")
        assert pid is not None
        pid3 = {comp(r, 1) for r in pid.repetitions(3) if comp(r, 1)}
        ours_ids = {i["value"] for p in our_patients for i in p.get("identifier", [])}
        ref_ids = {i.get("value") for p in ref_patients for i in p.get("identifier", [])}
        assert pid3 <= ours_ids and pid3 <= ref_ids
    ref_values = Counter(
        o["valueQuantity"]["value"] for o in _of(reference, "Observation") if "valueQuantity" in o
    )
    our_values = Counter(
        o["valueQuantity"]["value"] for o in _of(ours, "Observation") if "valueQuantity" in o
    )
    assert not ref_values - our_values
    ref_codes = {
        o["code"]["coding"][0]["code"]
        for o in _of(reference, "Observation")
        if o.get("code", {}).get("coding")
    }
    our_codes = {c["code"] for o in _of(ours, "Observation") for c in o["code"].get("coding", [])}
    if message.message_code in ("ORU", "OUL"):
        assert ref_codes <= our_codes | {"death-certificate", "autopsy", "coroner", "injury-incident"}
