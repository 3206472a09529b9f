"""Removing the elements a consent withholds, and saying so with the REDACTED label.

Paths are FHIR element paths as a consent states them (`Patient.address`, `Patient.name.given`,
`Observation.value[x]`); arrays on the way are walked, and a choice element `[x]` removes
whichever `valueQuantity`, `valueString` ... the resource carries. The answer is a masked copy:
the stored resource is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from fhir_gateway.fhir.json import Resource

REDACTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "REDACTED",
    "display": "redacted",
}


def redact(resource: Resource, paths: Sequence[str]) -> Resource:
    masked = copy.deepcopy(resource)
    removed = False
    for path in paths:
        res_type, _, rest = path.partition(".")
        if res_type == masked.get("resourceType") and rest:
            removed |= _remove(masked, rest.split("."))
    if removed:
        security = masked.setdefault("meta", {}).setdefault("security", [])
        if not any(c.get("code") == "REDACTED" for c in security if isinstance(c, dict)):
            security.append(dict(REDACTED))
    return masked


def _remove(node: Any, steps: list[str]) -> bool:
    if isinstance(node, list):
        return any([_remove(item, steps) for item in node])
    if not isinstance(node, dict):
        return False
    name, rest = steps[0], steps[1:]
    if rest:
        return name in node and _remove(node[name], rest)
    if name.endswith("[x]"):  # value[x] → valueQuantity, valueString, ... whichever is present
        stem = name[:-3]
        found = [k for k in node if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
    else:
        found = [name] if name in node else []
    for key in found:
        del node[key]
        node.pop("_" + key, None)
    return bool(found)
