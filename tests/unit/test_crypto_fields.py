"""PHI elements sealed in place and restored exactly; anything damaged fails for that resource only."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from fhir_gateway.crypto.errors import DecryptionFailed
from fhir_gateway.crypto.fields import (
    DEFAULT_FIELDS,
    MARKER_URL,
    PhiFields,
    decrypt_resource,
    encrypt_resource,
    versions_in,
)
from fhir_gateway.crypto.keyring import Keyring, KeyVersion, new_dek
from fhir_gateway.errors import Unprocessable

SECRETS = ("Chalmers", "Peter", "534 Erewhon", "555-3485", "12345", "123-45-6789", "1974-12-25", "Bénédicte")


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
        "text": {"status": "generated", "div": "<div>Peter Chalmers</div>"},
        "identifier": [
            {"system": "http://hospital.example/mrn", "value": "12345"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
        ],
        "active": True,
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}, {"text": "Bénédicte"}],
        "telecom": [{"system": "phone", "value": "555-3485"}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1974-12-25T14:35:45-05:00",
                }
            ]
        },
        "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
        "contact": [{"name": {"family": "du Marché"}, "telecom": [{"system": "phone", "value": "555-0000"}]}],
        "managingOrganization": {"reference": "Organization/1"},
    }


@pytest.fixture
def ring() -> Keyring:
    return Keyring([KeyVersion(1, "retiring", new_dek()), KeyVersion(2, "active", new_dek())])


def test_round_trip_restores_the_exact_original_and_leaves_the_input_alone(ring: Keyring) -> None:
    original = patient()
    before = copy.deepcopy(original)
    stored = encrypt_resource(original, "Patient", "p1", ring)
    assert original == before
    raw = orjson.dumps(stored)
    for secret in (*SECRETS, "du Marché", "555-0000", "PleasantVille", "birthTime"):
        assert secret.encode() not in raw, secret
    assert stored["gender"] == "male" and stored["managingOrganization"] == original["managingOrganization"]
    assert stored["text"]["status"] == "generated"
    marker = stored["meta"]["extension"][-1]
    assert marker["url"] == MARKER_URL and marker["id"] == "extension"  # meta had no extension
    assert marker["valueString"].split() == [
        "identifier",
        "name",
        "telecom",
        "address",
        "birthDate",
        "_birthDate",
        "contact",
        "text.div",
    ]
    restored = decrypt_resource(stored, "Patient", "p1", ring)
    assert restored == before
    assert orjson.dumps(restored) == orjson.dumps(before)  # key order too
    assert versions_in(stored) == {2}


def test_paths_through_arrays_seal_each_item_separately(ring: Keyring) -> None:
    fields = PhiFields.of({"Patient": ["contact.name", "contact.telecom", "link.other.display"]})
    original = patient()
    original["contact"].append({"gender": "female"})
    original["contact"].append("odd")  # not an object: left alone
    original["link"] = {"other": {"reference": "Patient/2", "display": "Old Chalmers"}, "type": "seealso"}
    stored = encrypt_resource(original, "Patient", "p1", ring, fields)
    assert stored["meta"]["extension"][-1]["valueString"] == (
        "contact[0].name contact[0].telecom link.other.display"
    )
    assert stored["contact"][1] == {"gender": "female"}
    assert stored["name"] == original["name"]  # not configured here
    assert decrypt_resource(stored, "Patient", "p1", ring) == original
    swapped = copy.deepcopy(stored)
    swapped["contact"][0]["name"], swapped["contact"][0]["telecom"] = (
        stored["contact"][0]["telecom"],
        stored["contact"][0]["name"],
    )
    with pytest.raises(DecryptionFailed, match="contact\\[0\\].name"):
        decrypt_resource(swapped, "Patient", "p1", ring)


def test_a_resource_without_phi_is_returned_as_it_is(ring: Keyring) -> None:
    obs = {"resourceType": "Observation", "id": "o1", "status": "final"}
    assert encrypt_resource(obs, "Observation", "o1", ring) is obs
    assert decrypt_resource(obs, "Observation", "o1", ring) is obs
    assert versions_in(obs) == set()
    odd_meta = {"resourceType": "Observation", "meta": {"extension": "x"}}
    assert decrypt_resource(odd_meta, "Observation", "o1", ring) is odd_meta


@pytest.mark.parametrize(
    "meta",
    [None, {"versionId": "3"}, {"extension": [{"url": "http://example.org/x", "valueBoolean": True}]}],
)
def test_the_marker_is_removed_exactly_whatever_meta_looked_like(ring: Keyring, meta: Any) -> None:
    original = {"resourceType": "Observation", "id": "o1", "note": [{"text": "Peter fell"}]}
    if meta is not None:
        original["meta"] = meta
    stored = encrypt_resource(original, "Observation", "o1", ring)
    assert b"Peter" not in orjson.dumps(stored)
    assert orjson.dumps(decrypt_resource(stored, "Observation", "o1", ring)) == orjson.dumps(original)


def test_meta_added_after_sealing_survives_decryption(ring: Keyring) -> None:
    stored = encrypt_resource(
        {"resourceType": "Observation", "note": [{"text": "x"}]}, "Observation", "o1", ring
    )
    stored["meta"]["versionId"] = "1"
    assert decrypt_resource(stored, "Observation", "o1", ring)["meta"] == {"versionId": "1"}


def test_a_client_may_not_send_the_reserved_marker(ring: Keyring) -> None:
    forged = {"resourceType": "Patient", "meta": {"extension": [{"url": MARKER_URL, "valueString": "name"}]}}
    with pytest.raises(Unprocessable, match="reserved"):
        encrypt_resource(forged, "Patient", "p1", ring)


def test_a_ciphertext_moved_to_another_record_fails_for_that_record_only(ring: Keyring) -> None:
    a = encrypt_resource(patient(), "Patient", "p1", ring)
    b = encrypt_resource({**patient(), "id": "p2"}, "Patient", "p2", ring)
    b["name"] = a["name"]
    with pytest.raises(DecryptionFailed) as info:
        decrypt_resource(b, "Patient", "p2", ring)
    assert info.value.status == 500 and info.value.code == "exception"
    assert info.value.diagnostics.startswith(
        "Patient/p2 cannot be decrypted (element name: authentication failed"
    )
    assert info.value.issues[0].expression == ["Patient.name"]
    assert not any(s in info.value.diagnostics for s in SECRETS)
    assert decrypt_resource(a, "Patient", "p1", ring)["name"] == patient()["name"]


def test_tampering_and_missing_keys_are_reported_not_guessed(ring: Keyring) -> None:
    stored = encrypt_resource(patient(), "Patient", "p1", ring)
    tampered = {**stored, "birthDate": stored["birthDate"][:-6] + "AAAAAA"}
    with pytest.raises(DecryptionFailed, match="birthDate"):
        decrypt_resource(tampered, "Patient", "p1", ring)
    newer = Keyring([KeyVersion(1, "active", new_dek())])
    with pytest.raises(DecryptionFailed, match="key version 2 is not in the key ring") as info:
        decrypt_resource(stored, "Patient", "p1", newer)
    assert info.value.missing_version == 2
    with pytest.raises(DecryptionFailed) as wrong:  # same version number, another data key
        decrypt_resource(stored, "Patient", "p1", Keyring([KeyVersion(2, "active", new_dek())]))
    assert wrong.value.missing_version is None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda r: r["meta"]["extension"][-1].update(valueString=""), "marker is damaged"),
        (lambda r: r["meta"]["extension"][-1].pop("valueString"), "marker is damaged"),
        (lambda r: r["meta"]["extension"][-1].update(id="forged"), "marker is damaged"),
        (lambda r: r["meta"]["extension"][-1].update(valueString="name.1bad"), "marker is damaged"),
        (lambda r: r.pop("telecom"), "telecom: the element recorded as encrypted is missing"),
        (lambda r: r.update(telecom=[1]), "telecom: the element is not an encrypted value"),
        (lambda r: r.update(name="plain"), "name: the value is not an encrypted envelope"),
        (lambda r: r.pop("text"), "text.div: the element recorded as encrypted is missing"),
        (lambda r: r.update(text="x"), "text.div: the element recorded as encrypted is missing"),
    ],
)
def test_a_damaged_record_fails_with_a_named_element(ring: Keyring, damage: Any, reason: str) -> None:
    stored = copy.deepcopy(encrypt_resource(patient(), "Patient", "p1", ring))
    damage(stored)
    with pytest.raises(DecryptionFailed, match=reason):
        decrypt_resource(stored, "Patient", "p1", ring)


def test_array_positions_in_the_marker_are_checked(ring: Keyring) -> None:
    fields = PhiFields.of({"Patient": ["contact.name"]})
    stored = encrypt_resource(patient(), "Patient", "p1", ring, fields)
    marker = stored["meta"]["extension"][-1]
    for recorded, reason in (("contact[3].name", "missing"), ("name[0]", "not an encrypted value")):
        with pytest.raises(DecryptionFailed, match=reason):
            decrypt_resource(
                {**stored, "meta": {"extension": [{**marker, "valueString": recorded}]}},
                "Patient",
                "p1",
                ring,
            )
    not_a_list = {**stored, "contact": {"name": "x"}}
    with pytest.raises(DecryptionFailed, match="missing"):
        decrypt_resource(not_a_list, "Patient", "p1", ring)


def test_a_sealed_value_that_is_not_json_is_reported(ring: Keyring) -> None:
    stored = encrypt_resource({"resourceType": "Observation", "note": "x"}, "Observation", "o1", ring)
    stored["note"] = ring.seal(b"not json", "Observation", "o1", "note")
    with pytest.raises(DecryptionFailed, match="not JSON"):
        decrypt_resource(stored, "Observation", "o1", ring)


def test_versions_in_reads_only_what_the_marker_records(ring: Keyring) -> None:
    stored = encrypt_resource(patient(), "Patient", "p1", ring)
    mixed = {
        **stored,
        "name": Keyring([KeyVersion(1, "active", ring.get(1).dek)]).seal(b"1", "Patient", "p1", "name"),
    }
    assert versions_in(mixed) == {1, 2}
    broken = copy.deepcopy(stored)
    broken["meta"]["extension"][-1]["valueString"] = "name.1bad telecom gone"
    broken["telecom"] = "plain"
    assert versions_in(broken) == set()
    broken["meta"]["extension"][-1]["valueString"] = 5
    assert versions_in(broken) == set()
    nested = encrypt_resource(patient(), "Patient", "p1", ring, PhiFields.of({"Patient": ["contact.name"]}))
    assert versions_in(nested) == {2}
    nested["meta"]["extension"][-1]["valueString"] = "contact[4].name"
    assert versions_in(nested) == set()


def test_configured_paths() -> None:
    assert "name" in DEFAULT_FIELDS.paths("Patient") and "text.div" in DEFAULT_FIELDS.paths("Patient")
    assert DEFAULT_FIELDS.paths("Observation") == ("note", "text.div")
    assert DEFAULT_FIELDS.paths("Basic") == ("text.div",)
    custom = PhiFields.configured([("Patient", ["name", "name"]), ("*", [])])
    assert custom.paths("Patient") == ("name",)
    assert custom.paths("Basic") == ()
    with pytest.raises(ValueError, match="crypto.phi_paths.Patient: 'name\\[0\\]'"):
        PhiFields.of({"Patient": ["name[0]"]})
