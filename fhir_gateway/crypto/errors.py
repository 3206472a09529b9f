"""Errors of the crypto package.

    GatewayError (fhir_gateway.errors)
     ├── DecryptionFailed          (500, exception)  one stored resource cannot be decrypted
     ├── KeyringUnavailable        (503, transient)  no usable key ring (not initialised, wrong KEK)
     └── BadRequest
          └── EncryptedSearchRefused (400, not-supported)  a search form a blind index cannot answer

    CipherError (internal, never shown to a caller as is)
     ├── UnknownKeyVersion         the envelope names a key version the ring does not hold
     └── BadCiphertext             malformed envelope, or GCM authentication failed

Texts name resource types, ids, element paths and key versions, never a value.
"""

from __future__ import annotations

from fhir_gateway.errors import BadRequest, GatewayError, ServiceUnavailable


class CipherError(Exception):
    """A ciphertext could not be opened; the message is a reason without any value in it."""


class UnknownKeyVersion(CipherError):
    def __init__(self, version: int) -> None:
        super().__init__(f"key version {version} is not in the key ring")
        self.version = version


class BadCiphertext(CipherError):
    """The envelope is malformed or fails authentication (tampered, moved or truncated)."""


class DecryptionFailed(GatewayError):
    """This resource (and only it) cannot be shown: never wrong or partial data instead."""

    status = 500
    code = "exception"

    def __init__(
        self, res_type: str, res_id: str, path: str, reason: str, *, missing_version: int | None = None
    ) -> None:
        super().__init__(
            f"{res_type}/{res_id} cannot be decrypted (element {path}: {reason})",
            expression=f"{res_type}.{path}" if path else res_type,
        )
        self.res_type = res_type
        self.res_id = res_id
        self.path = path
        self.reason = reason
        self.missing_version = missing_version  # set when a key version was not in the ring


class KeyringUnavailable(ServiceUnavailable):
    """The data keys cannot be loaded or unwrapped, so nothing can be encrypted or decrypted."""


class EncryptedSearchRefused(BadRequest):
    code = "not-supported"
