"""The validator's view of the compiled R4 definitions: per-type check plans, built once per process.

`profiles/structures.json` (written by tools/compile_definitions.py) holds one record per element of
every R4 resource and datatype. Walking it per resource would be slow, so each type is turned, on
first use, into a `Node`: a dict from the JSON keys an instance may carry (`valueQuantity`,
`_birthDate` is derived from `birthDate`) to the `Element` they belong to and the FHIR type of the
value. Backbone elements and content references (`Questionnaire.item.item`) get their own `Node`,
shared so recursive structures stay finite. Everything here is immutable after it is built and
cached with `functools.cache`, so concurrent requests share it.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

PRIMITIVE_TYPES = frozenset(
    {
        "base64Binary",
        "boolean",
        "canonical",
        "code",
        "date",
        "dateTime",
        "decimal",
        "id",
        "instant",
        "integer",
        "markdown",
        "oid",
        "positiveInt",
        "string",
        "time",
        "unsignedInt",
        "uri",
        "url",
        "uuid",
        "xhtml",
    }
)
UNBOUNDED = sys.maxsize
STRUCTURE_URL = "http://hl7.org/fhir/StructureDefinition/"


@dataclass(frozen=True, slots=True)
class Constraint:
    """One ElementDefinition.constraint: `key` (e.g. pat-1), error or warning, FHIRPath, human text."""

    key: str
    severity: str
    expression: str
    human: str


@dataclass(frozen=True, slots=True)
class Binding:
    strength: str  # required | extensible | preferred
    value_set: str  # canonical URL without version


@dataclass(eq=False, slots=True)
class Element:
    """One element of a type or backbone element, as the checks need it.

    `path` is the definition path (`Observation.value[x]`), `name` the JSON name without `[x]`.
    `node` is set for backbone elements and content references: their children are defined inline.
    `array` follows the base definition (max != 1), which decides JSON array vs single value.
    """

    path: str
    name: str
    min: int
    max: int
    types: tuple[str, ...]
    choice: bool
    array: bool
    binding: Binding | None = None
    constraints: tuple[Constraint, ...] = ()
    targets: tuple[str, ...] = ()
    fixed: tuple[str, Any] | None = None
    pattern: tuple[str, Any] | None = None
    max_length: int | None = None
    node: Node | None = None


@dataclass(eq=False, slots=True)
class Node:
    """What a JSON object of one type (or backbone element) may hold.

    `keys` maps each allowed JSON key to (element, FHIR type of the value); choice elements have one
    key per type. `constraints` are those of the type's root (qty-3, dom-2, ...) or, for a backbone
    element, those declared on the element itself (pat-1).
    """

    type_name: str
    path: str
    is_resource: bool = False
    keys: dict[str, tuple[Element, str]] = field(default_factory=dict)
    elements: tuple[Element, ...] = ()
    required: tuple[Element, ...] = ()
    bounded: tuple[Element, ...] = ()  # arrays with a finite max above 1
    constraints: tuple[Constraint, ...] = ()


def read_table(name: str) -> dict[str, Any]:
    """A compiled table shipped in the package (profiles/, terminology/)."""
    data: dict[str, Any] = orjson.loads(resources.files("fhir_gateway").joinpath(name).read_bytes())
    return data


@functools.cache
def structures() -> dict[str, Any]:
    return read_table("profiles/structures.json")


@functools.cache
def constraint(ident: str) -> Constraint:
    key, severity, expression, human = structures()["constraints"][ident]
    return Constraint(key, severity, expression, human)


def type_info(type_name: str) -> dict[str, Any] | None:
    info: dict[str, Any] | None = structures()["types"].get(type_name)
    return info


@functools.cache
def resource_types() -> frozenset[str]:
    """Concrete resource types (what `resourceType` may say)."""
    return frozenset(
        name
        for name, info in structures()["types"].items()
        if info["kind"] == "resource" and not info.get("abstract")
    )


@functools.cache
def primitive_regex(type_name: str) -> str | None:
    info = type_info(type_name)
    return None if info is None else info.get("regex")


@functools.cache
def node_for(type_name: str) -> Node | None:
    """The check plan for a resource or complex datatype; None for unknown and primitive types."""
    info = type_info(type_name)
    if info is None or info["kind"] == "primitive-type":
        return None
    return _build(type_name, info)


def _build(type_name: str, info: dict[str, Any]) -> Node:
    root = info["type"]
    is_resource = info["kind"] == "resource"
    records: dict[str, dict[str, Any]] = info["elements"]
    children: dict[str, list[str]] = {}
    for path in records:
        parent, _, _ = path.rpartition(".")
        children.setdefault(parent, []).append(path)
    nodes: dict[str, Node] = {root: Node(type_name, root, is_resource)}
    for path, record in records.items():
        if path in children and "ref" not in record:
            nodes[path] = Node(record.get("types", ["BackboneElement"])[0], path)
    for path, node in nodes.items():
        elements = [
            _element(p, records[p], nodes, is_resource and path == root, root) for p in children[path]
        ]
        _fill(node, elements)
    top = nodes[root]
    top.constraints = tuple(constraint(c) for c in info.get("constraints", ()))
    return top


def _element(
    path: str, record: dict[str, Any], nodes: dict[str, Node], resource_root: bool, root: str
) -> Element:
    name = path.rpartition(".")[2]
    choice = name.endswith("[x]")
    types = tuple(record.get("types", ()))
    if resource_root and name == "id":
        types = ("id",)  # R4 declares Resource.id as System.String; its rules are those of `id`
    ref = record.get("ref")
    node = nodes.get(ref) if ref else nodes.get(path)
    if ref and node is not None:
        types = (node.type_name,)
    max_text = record["max"]
    maximum = UNBOUNDED if max_text == "*" else int(max_text)
    binding = record.get("binding")
    element = Element(
        path=path,
        name=name.removesuffix("[x]"),
        min=int(record["min"]),
        max=maximum,
        types=types,
        choice=choice,
        array=maximum > 1,  # max 0 (a profile prohibiting it): one value is counted, not an array
        binding=Binding(binding[0], binding[1]) if binding else None,
        constraints=tuple(constraint(c) for c in record.get("constraints", ())),
        targets=tuple(record.get("targets", ())),
        fixed=(record["fixed"][0], record["fixed"][1]) if "fixed" in record else None,
        pattern=(record["pattern"][0], record["pattern"][1]) if "pattern" in record else None,
        max_length=record.get("maxLength"),
        node=node,
    )
    if node is not None and not ref:
        node.constraints = element.constraints
    return element


# Profiles of Quantity that the compiled tables name as types (so their constraints apply): in JSON
# and in expressions a choice of them is still named after Quantity (Dosage.doseAndRate.doseQuantity).
_JSON_TYPE_NAMES = {"SimpleQuantity": "Quantity", "MoneyQuantity": "Quantity"}


def json_type(type_name: str) -> str:
    """The type name a choice element's JSON key and `ofType()` use."""
    return _JSON_TYPE_NAMES.get(type_name, type_name)


def _fill(node: Node, elements: list[Element]) -> None:
    for element in elements:
        if element.choice:
            for t in element.types:
                suffix = json_type(t)
                node.keys[element.name + suffix[0].upper() + suffix[1:]] = (element, t)
        else:
            node.keys[element.name] = (element, element.types[0] if element.types else "BackboneElement")
    node.elements = tuple(elements)
    node.required = tuple(e for e in elements if e.min > 0)
    node.bounded = tuple(e for e in elements if e.max == 0 or 1 < e.max < UNBOUNDED)


# --- terminology ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueSet:
    url: str
    name: str
    codes: dict[str, frozenset[str]]  # system -> codes
    all_codes: frozenset[str]  # for `code` elements, which carry no system

    def contains(self, system: str | None, code: str) -> bool:
        if system is None:
            return code in self.all_codes
        codes = self.codes.get(system)
        return codes is not None and code in codes


@dataclass(frozen=True, slots=True)
class CodeSystem:
    url: str
    content: str
    case_sensitive: bool
    concepts: dict[str, Any]  # code -> display or [display, designations...]

    def lookup(self, code: str) -> Any:
        if code in self.concepts:
            return self.concepts[code]
        if not self.case_sensitive:
            lowered = code.lower()
            for known, display in self.concepts.items():
                if known.lower() == lowered:
                    return display
        return None


def preload() -> None:
    """Read every compiled definition file now (server start-up), not at the first request."""
    structures()
    _valuesets()
    _codesystems()


@functools.cache
def _valuesets() -> dict[str, Any]:
    return read_table("terminology/valuesets.json")


@functools.cache
def _codesystems() -> dict[str, Any]:
    return read_table("terminology/codesystems.json")


@functools.cache
def value_set(url: str) -> ValueSet | None:
    """The expanded value set, or None when it is not shipped expanded (see `not_expanded`)."""
    record = _valuesets()["valueSets"].get(url.split("|")[0])
    if record is None:
        return None
    codes = {system: frozenset(values) for system, values in record["codes"].items()}
    return ValueSet(url, record["name"], codes, frozenset(c for values in codes.values() for c in values))


def not_expanded(url: str) -> str | None:
    """Why a bound value set could not be expanded at build time (SNOMED CT, LOINC ...), if it was bound."""
    reason: str | None = _valuesets()["notExpanded"].get(url.split("|")[0])
    return reason


@functools.cache
def code_system(url: str) -> CodeSystem | None:
    record = _codesystems()["codeSystems"].get(url)
    if record is None:
        return None
    return CodeSystem(url, record["content"], record["caseSensitive"], record["concepts"])


@functools.cache
def code_system_urls() -> frozenset[str]:
    """Every CodeSystem canonical shipped in terminology/codesystems.json."""
    return frozenset(_codesystems()["codeSystems"])


@functools.cache
def value_set_urls() -> frozenset[str]:
    """Every ValueSet canonical in the R4 definitions (to spot a Coding.system naming a value set)."""
    return frozenset(_codesystems()["valueSetUrls"])
