"""The PDP's per-version facts are remembered by stored bytes: never stale, and bounded."""

from __future__ import annotations

import orjson

from fhir_gateway.privacy.compartment import IndexRowsCache, patients_of

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def stored(labels: list[str], patient: str = "p1") -> bytes:
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
        "meta": {"security": [{"system": ACT, "code": c} for c in labels]},
    }
    return orjson.dumps(resource)


def labels_of(cache: IndexRowsCache, content: bytes) -> set[str]:
    rows = cache.rows("Observation", "o1", content, lambda: orjson.loads(content))
    return {t.code or "" for t in rows.tokens if t.param == "_security"}


def test_the_same_bytes_are_extracted_once() -> None:
    cache, calls = IndexRowsCache(), []
    content = stored([])

    def parse() -> dict[str, object]:
        calls.append(1)
        return dict(orjson.loads(content))

    first = cache.rows("Observation", "o1", content, parse)
    assert cache.rows("Observation", "o1", content, parse) is first and len(calls) == 1
    assert patients_of(first) == {"p1"}


def test_a_version_edited_in_place_is_extracted_afresh() -> None:
    cache = IndexRowsCache()
    assert labels_of(cache, stored([])) == set()
    assert labels_of(cache, stored(["PSY"])) == {"PSY"}  # relabelled, same id and version


def test_the_cache_is_bounded() -> None:
    cache = IndexRowsCache(size=2)
    for patient in ("a", "b", "c"):
        content = stored([], patient)
        cache.rows("Observation", "o1", content, lambda c=content: orjson.loads(c))  # type: ignore[misc]
    assert len(cache._rows) == 2
