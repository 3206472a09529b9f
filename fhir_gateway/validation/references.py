"""Reference rules: contained resources, local `#id` references, and Bundle rules FHIRPath says badly.

Contained resources (https://hl7.org/fhir/R4/references.html#contained), natively rather than by
the dom-2..dom-5 expressions (dom-3 walks every descendant of the resource in FHIRPath):
dom-2 no nested contained, dom-3 each contained resource is referenced from the container (by a
Reference or, as dom-3's expression allows, a canonical/uri/url `#id`) or refers to it with `#`,
dom-4 no meta.versionId/lastUpdated, dom-5 no meta.security. A local reference `#x` must name a
contained resource (ref-1).

Bundles (https://hl7.org/fhir/R4/bundle.html): fullUrl must be absolute and agree with the
resource's type and id; in a transaction or batch a `urn:uuid:`/`urn:oid:` reference must resolve
to an entry (the server could not process it otherwise: error); elsewhere such a reference, and in
a document or message any reference, that does not resolve inside the Bundle is a warning. A paging
link relation (self, first, ...) occurs once; in a searchset, entries in `outcome` mode hold
OperationOutcomes, the others have ids, and a `match` is of a type its `self` link searched for (as
the HL7 Java validator checks). The bdl-* invariants (fullUrl uniqueness, request/response presence)
run in invariants.py.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_gateway.validation.loader import resource_types
from fhir_gateway.validation.walk import Scope, Walk

_RESTFUL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_HISTORY = re.compile(r"/_history/[^/]*$")
REF_1 = "Constraint failed: ref-1: 'SHALL have a contained resource if a local reference is provided'"


def check(walk: Walk) -> None:
    for scope in walk.scopes:
        _contained(walk, scope)
        if scope.resource.get("resourceType") == "Bundle":
            _bundle(walk, scope)


def _family(walk: Walk, scope: Scope) -> list[Scope]:
    """The scope and its contained resources (their references count as the container's)."""
    return [scope, *(s for s in walk.scopes if s.parent is scope and s.contained)]


def _contained(walk: Walk, scope: Scope) -> None:
    contained = scope.resource.get("contained")
    family = _family(walk, scope) if not scope.contained else [scope]
    local_refs = {ref for member in family for ref, _ in member.references if ref.startswith("#")}
    local_refs.update(uri for member in family for uri in member.local_uris)
    if not scope.contained:
        ids = (
            {r.get("id") for r in contained if isinstance(r, dict)} if isinstance(contained, list) else set()
        )
        for member in family:
            for ref, expr in member.references:
                if ref.startswith("#") and ref != "#" and ref[1:] not in ids:
                    walk.error(
                        "invariant",
                        REF_1,
                        expr,
                    )
    if not isinstance(contained, list) or scope.contained:
        return
    children = {id(s.resource): s for s in walk.scopes if s.parent is scope and s.contained}
    for index, resource in enumerate(contained):
        if not isinstance(resource, dict):
            continue
        expr = f"{scope.prefix}.contained[{index}]"
        if "contained" in resource:
            walk.error(
                "invariant",
                "Constraint failed: dom-2: 'If the resource is contained in another "
                "resource, it SHALL NOT contain nested Resources'",
                expr,
            )
        meta = resource.get("meta")
        if isinstance(meta, dict):
            if "versionId" in meta or "lastUpdated" in meta:
                walk.error(
                    "invariant",
                    "Constraint failed: dom-4: 'If a resource is contained in another "
                    "resource, it SHALL NOT have a meta.versionId or a meta.lastUpdated'",
                    expr,
                )
            if "security" in meta:
                walk.error(
                    "invariant",
                    "Constraint failed: dom-5: 'If a resource is contained in another "
                    "resource, it SHALL NOT have a security label'",
                    expr,
                )
        own = children.get(id(resource))
        refers_back = own is not None and (
            any(ref == "#" for ref, _ in own.references) or "#" in own.local_uris
        )
        rid = resource.get("id")
        if not refers_back and not (isinstance(rid, str) and f"#{rid}" in local_refs):
            walk.error(
                "invalid",
                "The contained resource is not referenced to from elsewhere in the containing resource "
                "nor does it refer to the containing resource (dom-3)",
                expr,
            )


_SINGLE_LINKS = frozenset({"self", "first", "prev", "previous", "next", "last"})


def _bundle(walk: Walk, scope: Scope) -> None:
    bundle = scope.resource
    _links(walk, bundle.get("link"), scope.prefix)
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return
    kind = bundle.get("type")
    targets: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        full_url = entry.get("fullUrl")
        expr = f"{scope.prefix}.entry[{index}]"
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            rid = resource.get("id")
            if isinstance(rid, str):
                targets.add(f"{resource['resourceType']}/{rid}")
        if not isinstance(full_url, str):
            continue
        targets.add(_HISTORY.sub("", full_url))
        if ":" not in full_url:
            walk.error("invalid", "The fullUrl must be an absolute URL", expr)
            continue
        match = _RESTFUL.search(full_url)
        if match and isinstance(resource, dict) and not full_url.startswith("urn:"):
            rid = resource.get("id")
            if match[1] != resource.get("resourceType") or (isinstance(rid, str) and match[2] != rid):
                walk.error("invalid", "The fullUrl does not match the type and id of the resource", expr)
    if kind == "searchset":
        _search_set(walk, bundle, entries, scope.prefix)
    entry_scopes = [s for s in walk.scopes if s.parent is scope and not s.contained]
    for entry_scope in entry_scopes:
        for member in _family(walk, entry_scope):
            for ref, expr in member.references:
                _resolve(walk, kind, ref, expr, targets)


def _links(walk: Walk, links: Any, prefix: str) -> None:
    """A paging relation (self, first, prev, next, last) names one page: it occurs once at most."""
    seen: set[str] = set()
    for index, link in enumerate(links if isinstance(links, list) else ()):
        relation = link.get("relation") if isinstance(link, dict) else None
        if relation in _SINGLE_LINKS:
            if relation in seen:
                walk.error(
                    "invalid",
                    f"The link relationship type '{relation}' can only occur once",
                    f"{prefix}.link[{index}]",
                )
            seen.add(relation)


def _search_set(walk: Walk, bundle: dict[str, Any], entries: list[Any], prefix: str) -> None:
    """A search result: outcome entries hold OperationOutcomes, the others have ids, and a match is
    of a type the search (its `self` link) asked for."""
    searched = _searched_types(bundle.get("link"))
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        res_type = resource.get("resourceType")
        expr = f"{prefix}.entry[{index}].resource"
        if mode == "outcome":
            if res_type != "OperationOutcome":
                walk.error("invalid", f"This is not an OperationOutcome ({res_type})", expr)
            continue
        if mode is None and res_type == "OperationOutcome":
            continue  # an outcome without a mode, as servers send it
        if not resource.get("id"):
            walk.error("invalid", "Search results must have ids", expr)
        if mode == "match" and searched and res_type not in searched:
            walk.error(
                "invalid",
                f"This is not a matching resource type for the specified search "
                f"({res_type} expecting [{', '.join(searched)}])",
                expr,
            )


def _searched_types(links: Any) -> list[str]:
    """The resource types a search asked for: `[base/]Type?...`, or its `_type` parameter."""
    for link in links if isinstance(links, list) else ():
        url = link.get("url") if isinstance(link, dict) else None
        if not isinstance(link, dict) or link.get("relation") != "self" or not isinstance(url, str):
            continue
        path, _, query = url.partition("?")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last in resource_types():
            return [last]
        for name, _, value in (part.partition("=") for part in query.split("&")):
            if name == "_type" and value:
                return [t for t in value.split(",") if t]
    return []


def _resolve(walk: Walk, kind: Any, ref: str, expr: str, targets: set[str]) -> None:
    if ref.startswith("#"):
        return
    plain = _HISTORY.sub("", ref)
    if plain in targets:
        return
    match = _RESTFUL.search(plain)
    if match and f"{match[1]}/{match[2]}" in targets:
        return
    if plain.startswith(("urn:uuid:", "urn:oid:")) and kind in ("transaction", "batch"):
        walk.error(
            "not-found", "The reference cannot be resolved: no entry in the Bundle has this fullUrl", expr
        )
    elif plain.startswith(("urn:uuid:", "urn:oid:")) or kind in ("document", "message"):
        walk.warning("not-found", "The reference cannot be resolved within the Bundle", expr)
