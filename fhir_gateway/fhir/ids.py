"""Ids the gateway mints: deterministic ones for resources from feeds, time-ordered ones for rows
that are only ever appended (`uuid7_hex`).

`stable_id`, for resources derived from feeds (HL7v2, DICOM): a re-sent message, or a DICOM study
and a v2 ADT about the same person, must land on the same resource instead of creating duplicates.
The id is a hash of (resource type, assigning authority, identifier value): the same business
identifier always gives the same id, whatever channel sent it. Authorities are compared
case-insensitively and trimmed, because senders disagree on case ("HOSP" in PID-3.4, "hosp" in
IssuerOfPatientID) far more often than they mean different systems.
"""

from __future__ import annotations

import hashlib
import os
import time


def stable_id(res_type: str, authority: str | None, value: str) -> str:
    """A 40-character FHIR id (`[a-f0-9]`) for `value` issued by `authority` (may be empty)."""
    key = f"{res_type}|{(authority or '').strip().lower()}|{value.strip()}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def uuid7_hex() -> str:
    """A UUIDv7 (RFC 9562) as 32 lowercase hex digits: 48 bits of Unix milliseconds, then random.

    For the keys of append-only tables (AuditEvent ids, request ids, both indexed): a new key lands
    at the right edge of its B-tree, so a group commit of a few hundred rows dirties a few index
    pages, where random (uuid4) keys dirty a page per row and, once the index outgrows the cache,
    read one back per row too. 74 random bits keep ids minted in the same millisecond apart.
    """
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & _MILLIS) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & _LOW_62
    return f"{value:032x}"


_MILLIS = (1 << 48) - 1
_LOW_62 = (1 << 62) - 1
