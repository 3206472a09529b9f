"""Deterministic logical ids for resources derived from feeds (HL7v2, DICOM).

A re-sent message, or a DICOM study and a v2 ADT about the same person, must land on the same
resource instead of creating duplicates. The id is a hash of (resource type, assigning authority,
identifier value): the same business identifier always gives the same id, whatever channel sent it.
Authorities are compared case-insensitively and trimmed, because senders disagree on case
("HOSP" in PID-3.4, "hosp" in IssuerOfPatientID) far more often than they mean different systems.
"""

from __future__ import annotations

import hashlib


def stable_id(res_type: str, authority: str | None, value: str) -> str:
    """A 40-character FHIR id (`[a-f0-9]`) for `value` issued by `authority` (may be empty)."""
    key = f"{res_type}|{(authority or '').strip().lower()}|{value.strip()}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
