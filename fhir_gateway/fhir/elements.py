"""`_summary` and `_elements`: the subsets of a resource a client may ask for (R4 search.html §3.1.1.5).

Which elements are summary or mandatory comes from the base StructureDefinitions, compiled by
tools/compile_definitions.py into profiles/summary-elements.json; only top-level elements are
considered, as the spec asks. A subset that left anything out is tagged SUBSETTED (R4 §3.1.1.5.8),
so a client never mistakes it for the whole resource (and never writes it back as one). The input
is never modified: the result is a new top-level dict sharing the untouched values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
ALWAYS = frozenset({"resourceType", "id", "meta"})
_TABLE = "profiles/summary-elements.json"


@dataclass(frozen=True, slots=True)
class _Shape:
    """The top-level element names of one resource type that subsetting needs."""

    summary: frozenset[str]
    mandatory: frozenset[str]
    choices: frozenset[str]  # choice element prefixes: `deceased` for deceasedBoolean/deceasedDateTime

    def element(self, key: str) -> str:
        """The element a JSON key belongs to: `_birthDate` -> birthDate, `deceasedBoolean` -> deceased."""
        key = key.removeprefix("_")
        for prefix in self.choices:
            if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper():
                return prefix
        return key


_UNKNOWN = _Shape(frozenset(), frozenset(), frozenset())


def summary(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """`_summary=true|text|data|false`; `count` returns no resources, so it never gets here.

    Raises ValueError for any other mode.
    """
    if mode == "false":
        return resource
    shape = _shape(resource.get("resourceType"))
    keep: Callable[[str], bool]
    if mode == "true":
        keep = (ALWAYS | {"implicitRules"} | shape.summary).__contains__
    elif mode == "text":
        keep = (ALWAYS | {"text"} | shape.mandatory).__contains__
    elif mode == "data":
        keep = "text".__ne__
    else:
        raise ValueError(f"unknown _summary mode {mode!r}")
    return _subset(resource, shape, keep)


def elements(resource: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """`_elements=a,b`: those top-level elements, plus resourceType/id/meta and the mandatory ones.

    A choice element may be named by its prefix (`value`) or by one JSON key (`valueQuantity`); a
    dotted name keeps its whole top-level element.
    """
    shape = _shape(resource.get("resourceType"))
    wanted = {name.split(".", 1)[0] for name in names}
    wanted |= {shape.element(name) for name in wanted}
    return _subset(resource, shape, (ALWAYS | wanted | shape.mandatory).__contains__)


def _subset(resource: dict[str, Any], shape: _Shape, keep: Callable[[str], bool]) -> dict[str, Any]:
    out = {key: value for key, value in resource.items() if keep(key) or keep(shape.element(key))}
    if len(out) < len(resource):
        meta = out.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        tags = meta.get("tag")
        tags = list(tags) if isinstance(tags, list) else []
        if SUBSETTED not in tags:
            tags.append(dict(SUBSETTED))
        meta["tag"] = tags
        out["meta"] = meta
    return out


def _shape(resource_type: Any) -> _Shape:
    return _table().get(resource_type, _UNKNOWN) if isinstance(resource_type, str) else _UNKNOWN


@functools.cache
def _table() -> dict[str, _Shape]:
    raw = orjson.loads(resources.files("fhir_gateway").joinpath(_TABLE).read_bytes())
    return {
        name: _Shape(frozenset(t["summary"]), frozenset(t["mandatory"]), frozenset(t["choices"]))
        for name, t in raw["types"].items()
    }
