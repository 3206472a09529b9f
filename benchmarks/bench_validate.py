"""Validator throughput on a mixed set (Patient, Observation, a transaction Bundle of 100 entries), and
`fhir.resources.R4B` model_validate of the same resources in the same run as the peer.

    python benchmarks/bench_validate.py [--seconds 2]

fhir.resources only parses (it checks types, not bindings, invariants or references); our validator
does all of that, so the ratio says what the extra checks cost. Printed per kind: µs per resource
for structure only and for the full validation. The last line is resources/s (full validation,
the mix) and the ratio to the R4B parse of the same mix.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

from fhir_gateway.validation.validator import validate

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Peter Chalmers</div>'},
    "identifier": [
        {
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
        }
    ],
    "active": True,
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [{"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
    "contact": [
        {
            "relationship": [
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}
            ],
            "name": {"family": "du Marché", "given": ["Bénédicte"]},
            "gender": "female",
        }
    ],
    "managingOrganization": {"reference": "Organization/1"},
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Weight 67.5 kg</div>'},
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2016-03-28T10:00:00+01:00",
    "valueQuantity": {"value": 67.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    "referenceRange": [
        {
            "low": {"value": 50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
            "high": {"value": 90, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        }
    ],
}


def bundle_of(n: int) -> dict[str, Any]:
    entries = []
    for i in range(n):
        resource = copy.deepcopy(PATIENT if i % 2 == 0 else OBSERVATION)
        resource["id"] = f"r{i}"
        entries.append(
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def per_second(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of fn over about `seconds` (after one warm-up call)."""
    fn()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        count += 1
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from fhir.resources.R4B import get_fhir_model_class

    bundle = bundle_of(100)
    mix = [(PATIENT, 1), (OBSERVATION, 1), (bundle, 101)]  # (resource, resources it holds)
    for resource, _ in mix:
        assert not any(i.severity in ("error", "fatal") for i in validate(resource)), resource["resourceType"]
    ours_total = peer_total = 0.0
    for resource, size in mix:
        name = resource["resourceType"]
        model = get_fhir_model_class(name)
        structure = per_second(lambda r=resource: validate(r, run_invariants=False), args.seconds / 3)
        full = per_second(lambda r=resource: validate(r), args.seconds / 3)
        peer = per_second(lambda r=resource, m=model: m.model_validate(r), args.seconds / 3)
        print(
            f"{name:<12} ({size:>3} resources): structure {1e6 / structure / size:7.1f} µs/resource, "
            f"full {1e6 / full / size:7.1f} µs/resource, R4B parse {1e6 / peer / size:7.1f} µs/resource"
        )
        ours_total += 1 / full  # seconds per call; a call validates `size` resources
        peer_total += 1 / peer
    resources = sum(size for _, size in mix)
    ours_rate = resources / ours_total
    peer_rate = resources / peer_total
    print(
        f"validate: {ours_rate:.0f} resources/s vs fhir.resources.R4B model_validate "
        f"{peer_rate:.0f} resources/s "
        f"(ratio {ours_rate / peer_rate:.2f})"
    )


if __name__ == "__main__":
    main()
