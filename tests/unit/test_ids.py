"""Ids the gateway mints: stable ones for feed resources, time-ordered ones for append-only rows."""

from __future__ import annotations

import re
import time
import uuid

from fhir_gateway.fhir.ids import stable_id, uuid7_hex

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_a_uuid7_is_a_version_7_rfc_9562_uuid_and_a_valid_fhir_id() -> None:
    minted = uuid7_hex()
    parsed = uuid.UUID(minted)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert FHIR_ID.fullmatch(minted) and len(minted) == 32
    millis = int(minted[:12], 16)
    assert abs(millis - time.time() * 1000) < 5_000  # the leading 48 bits are the minting time


def test_uuid7s_sort_by_minting_time_and_do_not_repeat() -> None:
    earlier = [uuid7_hex() for _ in range(50)]
    time.sleep(0.002)
    later = [uuid7_hex() for _ in range(50)]
    assert max(earlier) < min(later)  # what keeps an appended index key at the B-tree's right edge
    assert len(set(earlier + later)) == 100


def test_stable_ids_ignore_the_authoritys_case_and_whitespace() -> None:
    assert stable_id("Patient", " HOSP ", "123") == stable_id("Patient", "hosp", "123")
    assert stable_id("Patient", "hosp", "123") != stable_id("Encounter", "hosp", "123")
    assert len(stable_id("Patient", None, "123")) == 40
