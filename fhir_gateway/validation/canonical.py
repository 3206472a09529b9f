"""Canonical URLs that must be absolute, as the HL7 Java reference validator checks them.

- A canonical resource's own `url` (ValueSet.url, StructureDefinition.url, ...) identifies it
  everywhere, so it must be an absolute URI; a contained one's too, if it has one.
- `ValueSet.compose.include.system` / `exclude.system` names a code system by its canonical URL: a
  `#id` there is not a reference to a contained CodeSystem (that one is named by its absolute url,
  and pointed at with the valueset-system extension).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from fhir_gateway.validation.loader import node_for
from fhir_gateway.validation.walk import Walk

_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S")
CONTAINED_SYSTEM_HINT = (
    "To reference a contained code system, use the full CodeSystem URL and reference it using the "
    "http://hl7.org/fhir/StructureDefinition/valueset-system extension"
)


def check(walk: Walk) -> None:
    for scope in walk.scopes:
        resource = scope.resource
        url = resource.get("url")
        if isinstance(url, str) and url and not _ABSOLUTE.match(url) and _is_canonical(resource):
            if scope.contained:
                text = f"Canonical URLs in contained resources must be absolute URLs if present ({url})"
            else:
                text = f"Canonical URLs must be absolute URLs if they are not fragment references ({url})"
            walk.error("invalid", text, f"{scope.prefix}.url")
        if resource.get("resourceType") == "ValueSet":
            _compose_systems(walk, resource.get("compose"), scope.prefix)


@functools.cache
def _canonical_type(res_type: str) -> bool:
    """The R4 canonical (metadata) resources: a `url` and a `publisher`. Device.url, Contract.url
    and the like have a url too, but it is not the resource's identity."""
    node = node_for(res_type)
    return node is not None and "url" in node.keys and "publisher" in node.keys


def _is_canonical(resource: dict[str, Any]) -> bool:
    res_type = resource.get("resourceType")
    return isinstance(res_type, str) and _canonical_type(res_type)


def _compose_systems(walk: Walk, compose: Any, prefix: str) -> None:
    if not isinstance(compose, dict):
        return
    for part in ("include", "exclude"):
        items = compose.get(part)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            system = item.get("system") if isinstance(item, dict) else None
            if isinstance(system, str) and not _ABSOLUTE.match(system):
                walk.error(
                    "invalid",
                    f"URI values in ValueSet.compose.{part}.system must be absolute. {CONTAINED_SYSTEM_HINT}",
                    f"{prefix}.compose.{part}[{index}]",
                )
