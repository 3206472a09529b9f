"""The R4 SearchParameters, compiled by tools/compile_definitions.py into profiles/search-parameters.json.

INTERFACE (fixed; other modules code against it):

    @dataclass(frozen=True, slots=True)
    class SearchParameter:
        code: str                      # e.g. "birthdate", "_id", "code-value-quantity"
        type: str                      # number|date|string|token|reference|composite|quantity|uri|special
        url: str
        paths: tuple[Path, ...]        # compiled FHIRPath for THIS resource type (see compile script)
        targets: tuple[str, ...]       # reference target resource types ("Any" excluded), empty otherwise
        components: tuple[Component, ...]  # for composite: (code, type, compiled sub-path) in order

    def params_for(resource_type: str) -> Mapping[str, SearchParameter]   # incl. Resource/DomainResource ones
    def resource_types() -> frozenset[str]                                 # every concrete R4 resource type
    def get(resource_type: str, code: str) -> SearchParameter | None

Loaded lazily once per process (functools.cache).

A compiled path is what the FHIRPath expression selects, as steps over the resource's JSON: each
step takes a key from every current node (flattening arrays), then optionally keeps only the n-th
result (`entry[0]`), the objects with `field == value` (`where(system='email')`), or the references
to one resource type (`where(resolve() is Patient)`). Choice elements are already resolved to their
JSON key (`valueQuantity`), one path per allowed type, and each path names the FHIR type it selects,
so the extractor never guesses a datatype from the shape of the JSON.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import orjson

_TABLE = "profiles/search-parameters.json"
_HISTORY = re.compile(r"/_history/[^/]*$")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # R4 id


@dataclass(frozen=True, slots=True)
class Step:
    """One key to follow, with at most one filter on what it yields."""

    name: str
    index: int | None = None  # keep only the n-th node of the step's result
    where: tuple[str, str] | None = None  # keep objects whose `field` equals `value`
    resolves: str | None = None  # keep references whose target type is this


@dataclass(frozen=True, slots=True)
class Path:
    """Steps from the resource root (or from a composite's node), and the FHIR type they select.

    `from_resource`: a composite component that restarts at the resource root (`%resource.x`).
    `exists_not_false`: the value is `exists() and != false` over all of the parameter's paths,
    i.e. the boolean token "true"/"false" (R4 Patient.deceased is the one user).
    """

    steps: tuple[Step, ...]
    type: str
    from_resource: bool = False
    exists_not_false: bool = False

    def select(self, node: Any) -> list[Any]:
        """What the steps select from `node`: arrays flattened, nulls and non-objects dropped.

        Never raises, whatever the JSON: a key on a non-object selects nothing.
        """
        nodes = [node]
        for step in self.steps:
            name = step.name
            found: list[Any] = []
            for current in nodes:
                if isinstance(current, dict):
                    value = current.get(name)
                    if isinstance(value, list):
                        found.extend(value)
                    elif value is not None:
                        found.append(value)
            if step.index is not None:
                found = found[step.index : step.index + 1]
            elif step.where is not None:
                key, wanted = step.where
                found = [n for n in found if isinstance(n, dict) and n.get(key) == wanted]
            elif step.resolves is not None:
                found = [n for n in found if target_type(n) == step.resolves]
            if not found:
                return found
            nodes = found
        return nodes


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite parameter: the component parameter's code and type, and its paths
    relative to each node the composite's own paths select."""

    code: str
    type: str
    paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class SearchParameter:
    code: str
    type: str
    url: str
    paths: tuple[Path, ...]
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()


def params_for(resource_type: str) -> Mapping[str, SearchParameter]:
    """Every parameter of `resource_type` by code, the Resource-level ones included; empty if unknown."""
    return _load()[0].get(resource_type, _EMPTY)


def resource_types() -> frozenset[str]:
    return _load()[1]


def get(resource_type: str, code: str) -> SearchParameter | None:
    return params_for(resource_type).get(code)


def parse_reference(literal: Any) -> tuple[str | None, str | None, str | None] | None:
    """(type, id, url) of a literal reference, as the index and `resolve() is T` read it.

    `Type/id[/_history/n]` gives type and id; an absolute `.../Type/id[/_history/n]` gives both
    and the URL without its history part; `urn:uuid:`/`urn:oid:` and other absolute URLs give the
    URL alone. Contained (`#x`) and unreadable references give None.
    """
    if not isinstance(literal, str) or not literal or literal[0] == "#":
        return None
    if literal.startswith(("urn:uuid:", "urn:oid:")):
        return None, None, literal
    if "://" in literal:
        url = _HISTORY.sub("", literal)
        segments = url.rsplit("/", 2)
        if len(segments) == 3 and segments[1] in resource_types() and _ID.fullmatch(segments[2]):
            return segments[1], segments[2], url
        return None, None, url
    parts = literal.split("/")
    if (len(parts) == 2 or (len(parts) == 4 and parts[2] == "_history")) and parts[0] in resource_types():
        return (parts[0], parts[1], None) if _ID.fullmatch(parts[1]) else None
    return None


def target_type(reference: Any) -> str | None:
    """The resource type a Reference points to, as `resolve() is T` tests it without resolving:
    from its literal reference, else from Reference.type (a type name or its definition URL)."""
    if not isinstance(reference, dict):
        return None
    parsed = parse_reference(reference.get("reference"))
    if parsed is not None and parsed[0] is not None:
        return parsed[0]
    declared = reference.get("type")
    return declared.rsplit("/", 1)[-1] if isinstance(declared, str) else None


_EMPTY: Mapping[str, SearchParameter] = MappingProxyType({})


@functools.cache
def _load() -> tuple[dict[str, Mapping[str, SearchParameter]], frozenset[str]]:
    raw = orjson.loads(resources.files("fhir_gateway").joinpath(_TABLE).read_bytes())
    table: dict[str, Mapping[str, SearchParameter]] = {
        resource_type: MappingProxyType({code: _param(code, p) for code, p in params.items()})
        for resource_type, params in raw["parameters"].items()
    }
    return table, frozenset(raw["resourceTypes"])


def _param(code: str, raw: dict[str, Any]) -> SearchParameter:
    return SearchParameter(
        code=code,
        type=raw["type"],
        url=raw["url"],
        paths=_paths(raw["paths"]),
        targets=tuple(raw.get("targets", ())),
        components=tuple(
            Component(c["code"], c["type"], _paths(c["paths"])) for c in raw.get("components", ())
        ),
    )


def _paths(raw: list[dict[str, Any]]) -> tuple[Path, ...]:
    return tuple(
        Path(
            steps=tuple(_step(s) for s in p["steps"]),
            type=p["type"],
            from_resource=p.get("fromResource", False),
            exists_not_false=p.get("existsNotFalse", False),
        )
        for p in raw
    )


def _step(raw: str | dict[str, Any]) -> Step:
    """A bare key, or an object with the key and its one filter (see tools/compile_definitions.py)."""
    if isinstance(raw, str):
        return _plain_step(raw)
    where = raw.get("where")
    return Step(
        name=raw["name"],
        index=raw.get("index"),
        where=next(iter(where.items())) if where else None,
        resolves=raw.get("resolves"),
    )


@functools.cache
def _plain_step(name: str) -> Step:
    """Plain steps are shared: the table holds thousands of paths over a few hundred keys."""
    return Step(name)
