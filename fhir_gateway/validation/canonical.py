"""Canonical URLs, as the HL7 Java reference validator checks them.

- A canonical resource's own `url` (ValueSet.url, StructureDefinition.url, ...) identifies it
  everywhere, so it must be an absolute URI; a contained one's too, if it has one.
- `ValueSet.compose.include.system` / `exclude.system` names a code system by its canonical URL: a
  `#id` there is not a reference to a contained CodeSystem (that one is named by its absolute url,
  and pointed at with the valueset-system extension).
- A canonical element that may only point at some resource types (QuestionnaireResponse.questionnaire:
  Questionnaire) must not name a core definition of another type (a ValueSet's url, say).
- A CapabilityStatement search parameter that cites a core SearchParameter has that one's type.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from fhir_gateway.definitions.search_parameters import params_for, resource_types
from fhir_gateway.validation import extensions
from fhir_gateway.validation.loader import (
    STRUCTURE_URL,
    code_system_urls,
    node_for,
    structures,
    value_set_urls,
)
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
        elif resource.get("resourceType") == "CapabilityStatement":
            _capability_search_params(walk, resource, scope.prefix)


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


def check_target(walk: Walk, targets: tuple[str, ...], url: str, expr: str) -> None:
    """A canonical value against the types its element may point at (`targets`; the compiled tables
    leave targets out where any resource type may be named)."""
    found = _core_types().get(url.split("|")[0])
    if found is not None and found not in targets:
        walk.error(
            "invalid",
            f"Canonical URL '{url}' refers to a resource that has the wrong type. "
            f"Found {found} expecting one of [{', '.join(targets)}]",
            expr,
        )


@functools.cache
def _core_types() -> dict[str, str]:
    """Canonical URL -> resource type of every definition shipped with R4 the validator knows."""
    found = {url: "SearchParameter" for url in _search_parameter_types()}
    found.update((url, "CodeSystem") for url in code_system_urls())
    found.update((url, "ValueSet") for url in value_set_urls())
    found.update((url, "StructureDefinition") for url in extensions.core())
    found.update((STRUCTURE_URL + name, "StructureDefinition") for name in structures()["types"])
    return found


@functools.cache
def _search_parameter_types() -> dict[str, str]:
    """Core SearchParameter url -> its type (token, date, ...)."""
    return {p.url: p.type for t in resource_types() for p in params_for(t).values()}


def _capability_search_params(walk: Walk, resource: dict[str, Any], prefix: str) -> None:
    rests = resource.get("rest")
    for r, rest in enumerate(rests if isinstance(rests, list) else ()):
        kinds = rest.get("resource") if isinstance(rest, dict) else None
        for k, kind in enumerate(kinds if isinstance(kinds, list) else ()):
            params = kind.get("searchParam") if isinstance(kind, dict) else None
            for i, param in enumerate(params if isinstance(params, list) else ()):
                if not isinstance(param, dict):
                    continue
                definition, declared = param.get("definition"), param.get("type")
                if not isinstance(definition, str) or not isinstance(declared, str):
                    continue
                actual = _search_parameter_types().get(definition.split("|")[0])
                if actual is not None and actual != declared:
                    walk.error(
                        "invalid",
                        f"Type mismatch - SearchParameter '{definition}' type is {actual}, "
                        f"but type here is {declared}",
                        f"{prefix}.rest[{r}].resource[{k}].searchParam[{i}]",
                    )
