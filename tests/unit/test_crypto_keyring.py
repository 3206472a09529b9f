"""Envelope encryption primitives: KEK wrapping, AES-256-GCM envelopes bound to their place, blind keys."""

from __future__ import annotations

import base64
import hmac

import pytest
from cryptography.fernet import Fernet

from fhir_gateway.crypto.errors import BadCiphertext, KeyringUnavailable, UnknownKeyVersion
from fhir_gateway.crypto.keyring import PREFIX, Keyring, KeyVersion, LocalKms, envelope_version, new_dek
from fhir_gateway.settings import DEV_ENCRYPTION_KEY


def ring(*states: str) -> Keyring:
    return Keyring(KeyVersion(i + 1, s, new_dek()) for i, s in enumerate(states))  # type: ignore[arg-type]


def test_local_kms_wraps_and_unwraps_a_data_key() -> None:
    kms = LocalKms(DEV_ENCRYPTION_KEY)
    dek = new_dek()
    wrapped = kms.wrap(dek)
    assert dek not in wrapped
    assert kms.unwrap(wrapped) == dek
    assert LocalKms(DEV_ENCRYPTION_KEY.encode()).key_id == kms.key_id
    assert kms.key_id.startswith("local:")


def test_another_kek_cannot_unwrap_and_has_another_id() -> None:
    kms, other = LocalKms(DEV_ENCRYPTION_KEY), LocalKms(Fernet.generate_key())
    assert other.key_id != kms.key_id
    with pytest.raises(KeyringUnavailable, match="cannot be unwrapped"):
        other.unwrap(kms.wrap(new_dek()))


def test_a_malformed_kek_is_refused_without_echoing_it() -> None:
    with pytest.raises(KeyringUnavailable, match="not a valid Fernet key") as info:
        LocalKms("not-a-key")
    assert "not-a-key" not in str(info.value)


def test_a_data_key_must_be_256_bits() -> None:
    with pytest.raises(KeyringUnavailable, match="256-bit"):
        KeyVersion(1, "active", b"short")


def test_a_ring_needs_an_active_version_and_seals_with_the_newest() -> None:
    with pytest.raises(KeyringUnavailable, match="no active"):
        ring("retiring")
    keys = ring("retired", "retiring", "active")
    assert keys.active.version == 3
    assert [k.version for k in keys.search_versions] == [3, 2]
    assert sorted(keys.versions) == [1, 2, 3]


def test_seal_and_open_round_trip_with_a_fresh_nonce_each_time() -> None:
    keys = ring("active")
    first = keys.seal(b'"Smith"', "Patient", "p1", "name")
    second = keys.seal(b'"Smith"', "Patient", "p1", "name")
    assert first.startswith(f"{PREFIX}1:") and first != second
    assert "Smith" not in first
    assert keys.open(first, "Patient", "p1", "name") == b'"Smith"'
    assert envelope_version(first) == 1


@pytest.mark.parametrize(
    ("res_type", "res_id", "path"),
    [("RelatedPerson", "p1", "name"), ("Patient", "p2", "name"), ("Patient", "p1", "address")],
)
def test_a_ciphertext_moved_to_another_resource_or_element_fails(
    res_type: str, res_id: str, path: str
) -> None:
    keys = ring("active")
    sealed = keys.seal(b'"Smith"', "Patient", "p1", "name")
    with pytest.raises(BadCiphertext, match="authentication failed"):
        keys.open(sealed, res_type, res_id, path)


def test_relabelling_the_key_version_fails_authentication() -> None:
    keys = ring("retiring", "active")
    sealed = keys.seal(b"1", "Patient", "p1", "name")
    relabelled = sealed.replace(f"{PREFIX}2:", f"{PREFIX}1:")
    with pytest.raises(BadCiphertext):
        keys.open(relabelled, "Patient", "p1", "name")


def test_tampered_ciphertext_is_detected() -> None:
    keys = ring("active")
    sealed = keys.seal(b'"1970-01-01"', "Patient", "p1", "birthDate")
    head, body = sealed.rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    with pytest.raises(BadCiphertext):
        keys.open(f"{head}:{base64.b64encode(bytes(raw)).decode()}", "Patient", "p1", "birthDate")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Smith", "not an encrypted envelope"),
        (f"{PREFIX}x:AAAA", "not an encrypted envelope"),
        (f"{PREFIX}1", "not an encrypted envelope"),
        (f"{PREFIX}1:not base64!", "not valid base64"),
        (f"{PREFIX}1:ÄÖ", "not valid base64"),
        (f"{PREFIX}1:AAAA", "truncated"),
    ],
)
def test_malformed_envelopes_are_bad_ciphertext(text: str, reason: str) -> None:
    with pytest.raises(BadCiphertext, match=reason):
        ring("active").open(text, "Patient", "p1", "name")


def test_an_unknown_key_version_is_named() -> None:
    keys = ring("active")
    with pytest.raises(UnknownKeyVersion, match="key version 7") as info:
        keys.open(f"{PREFIX}7:AAAA", "Patient", "p1", "name")
    assert info.value.version == 7
    assert envelope_version("plain") is None


def test_blind_values_are_keyed_per_version_and_context() -> None:
    keys = ring("retiring", "active")
    a = keys.blind("smith", "Patient.family", 1)
    assert a == keys.blind("smith", "Patient.family", 1)
    assert a != keys.blind("smith", "Patient.family", 2)
    assert a != keys.blind("smith", "Patient.given", 1)
    assert a != keys.blind("smyth", "Patient.family", 1)
    assert a != ring("active").blind("smith", "Patient.family", 1)  # another data key
    with pytest.raises(UnknownKeyVersion):
        keys.blind("smith", "Patient.family", 9)
    key = keys.get(1)
    assert a == hmac.digest(key.blind_key, b"Patient.family\x1fsmith", "sha256")  # plain HMAC-SHA256
