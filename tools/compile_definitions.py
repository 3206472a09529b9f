"""Compile the official FHIR R4 4.0.1 definitions into the compact tables that ship in the wheel.

    python tools/compile_definitions.py [--source ../shared/fhir-r4] [--out fhir_gateway]

Writes `profiles/search-parameters.json`, `profiles/summary-elements.json`, the validator's element
tables `profiles/structures.json` and core extension definitions `profiles/extensions.json`, and the
terminology it binds to, `terminology/valuesets.json` and
`terminology/codesystems.json`, under --out. The output is deterministic (sorted keys, sorted
lists), so re-running it on the same source reproduces the committed files byte for byte; tests
check that.

Search-parameter expressions are compiled here, once, into step programs that the write path runs
without a FHIRPath engine (fhir_gateway/definitions/search_parameters.py documents the format). The
R4 expressions use only a handful of shapes: dotted paths, `as`/`as()` casts on choice elements,
`where(resolve() is T)`, `where(field='value')`, `[n]`, and the one `exists() and != false` test of
Patient.deceased; anything else stops the build rather than being guessed at. Every path records
the FHIR type of the element it selects (from the StructureDefinition snapshots), so extraction
never has to guess a datatype from JSON shape.
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
ROOT_TYPES = frozenset({"Resource", "DomainResource"})
SKIPPED = frozenset({"_text", "_content", "_query"})  # no expression: nothing to index
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
DECEASED = re.compile(r"(\w+)\.(\w+)\.exists\(\) and \1\.\2 != false")
CAST_IN_PARENS = re.compile(r"\((?P<inner>[^()]+) as (?P<type>\w+)\)")
SEGMENT = re.compile(
    r"\.?(?:as\((?P<cast>\w+)\)|where\(resolve\(\) is (?P<resolves>\w+)\)"
    r"|where\((?P<field>\w+)='(?P<value>[^']*)'\)|(?P<name>%?\w+)(?:\[(?P<index>\d+)\])?)"
)
# R4 invariants rewritten to what the HL7 Java validator evaluates: que-12's expression contradicts
# its own text ("more than one enableWhen"); que-7's `answer is Boolean` names System.Boolean, which
# the Java engine matches against a FHIR boolean and fhirpathpy does not, so it names the FHIR type.
CONSTRAINT_FIXES = {
    ("que-12", "enableWhen.count() > 2 implies enableBehavior.exists()"): (
        "enableWhen.count() > 1 implies enableBehavior.exists()"
    ),
    ("que-7", "operator = 'exists' implies (answer is Boolean)"): (
        "operator = 'exists' implies (answer is boolean)"
    ),
}
# The FHIR types each search-parameter type can index; anything else is a definition error.
_TEXTS = frozenset({"string", "markdown", "code", "id", "uri", "url", "canonical"})
_URIS = frozenset({"uri", "url", "canonical", "oid", "uuid"})
_QUANTITIES = frozenset(
    {"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"}
)
INDEXABLE: dict[str, frozenset[str]] = {
    "string": _TEXTS | {"HumanName", "Address"},
    "token": _TEXTS | _URIS | {"Coding", "CodeableConcept", "Identifier", "ContactPoint", "boolean"},
    "reference": frozenset({"Reference", "canonical", "uri", "url", "Resource"}),
    "date": frozenset({"date", "dateTime", "instant", "Period", "Timing"}),
    "number": frozenset({"integer", "decimal", "positiveInt", "unsignedInt"}),
    "quantity": _QUANTITIES | {"Money", "Range"},
    "uri": _URIS,
}


class DefinitionError(Exception):
    """An expression or element this compiler cannot represent; the build stops."""


@dataclass(frozen=True)
class Cursor:
    """Where a path under construction stands: its steps, the element, and the element's type(s).

    `choices` is non-empty while a choice element (`value[x]`) awaits its cast; the last step's
    name is then still the bare prefix (`value`).
    """

    steps: tuple[dict[str, Any], ...]
    element: str
    type: str
    choices: tuple[str, ...] = ()
    from_resource: bool = False  # a component path that restarts at the resource (`%resource.`)
    exists_not_false: bool = False  # the `x.exists() and x != false` test, indexed as a boolean


@dataclass
class Definitions:
    elements: dict[str, dict[str, Any]]  # element path -> ElementDefinition, for every base definition
    resource_types: list[str]  # concrete resource types
    domain_types: frozenset[str]  # those derived from DomainResource
    search_parameters: list[dict[str, Any]]
    build_id: str
    warnings: list[str] = field(default_factory=list)
    structures: list[dict[str, Any]] = field(default_factory=list)  # every StructureDefinition, as read

    @classmethod
    def load(cls, source: Path) -> Definitions:
        structures = [
            r
            for name in ("profiles-resources.json.gz", "profiles-types.json.gz")
            for r in _entries(source / name)
            if r["resourceType"] == "StructureDefinition"
        ]
        bases = [s for s in structures if s.get("derivation") != "constraint"]
        elements = {e["path"]: e for s in bases for e in s["snapshot"]["element"]}
        concrete = sorted(
            s["id"]
            for s in bases
            if s["kind"] == "resource" and not s.get("abstract") and s.get("derivation") == "specialization"
        )
        domain = frozenset(s["id"] for s in bases if s.get("baseDefinition", "").endswith("/DomainResource"))
        info = configparser.ConfigParser()
        info.read_string((source / "version.info").read_text())
        params = list(_entries(source / "search-parameters.json.gz"))
        return cls(elements, concrete, domain, params, info["FHIR"]["buildId"], structures=structures)

    def header(self) -> str:
        return f"by tools/compile_definitions.py from FHIR R4 4.0.1 (buildId {self.build_id}) — do not edit"

    # --- element navigation -----------------------------------------------------------------

    def child(self, cursor: Cursor, name: str) -> Cursor:
        """The cursor one step down: an inline (backbone) child, else a child of the element's type."""
        for base in dict.fromkeys((cursor.element, cursor.type)):
            for path in (f"{base}.{name}", f"{base}.{name}[x]"):
                element = self.elements.get(path)
                if element is not None:
                    return self._enter(cursor, name, path, element)
        raise DefinitionError(f"no element {name!r} under {cursor.element} ({cursor.type})")

    def _enter(self, cursor: Cursor, name: str, path: str, element: dict[str, Any]) -> Cursor:
        ref = element.get("contentReference")
        if ref:
            path, element = ref[1:], self.elements[ref[1:]]
        types = tuple(dict.fromkeys(_type_code(t) for t in element.get("type", ())))
        steps = (*cursor.steps, {"name": name})
        if path.endswith("[x]"):
            return replace(cursor, steps=steps, element=path, type="", choices=types)
        if len(types) != 1:
            raise DefinitionError(f"{path} has types {types}")
        return replace(cursor, steps=steps, element=path, type=types[0])

    # --- expressions -------------------------------------------------------------------------

    def compile(self, expression: str, start: Cursor, resource_type: str) -> list[Cursor]:
        """Every path of a union expression that applies to `resource_type`, starting at `start`.

        A part that names another resource type is left out; a part that names none (`name`,
        `value.as(Quantity)`) is relative to `start`; `%resource.` restarts at the resource root.
        """
        found: list[Cursor] = []
        for part in expression.split(" | "):
            match = DECEASED.fullmatch(part.strip())
            if match:
                if match[1] == resource_type:
                    root = Cursor((), resource_type, resource_type)
                    found += [replace(c, exists_not_false=True) for c in _expand(self.child(root, match[2]))]
                continue
            segments = _segments(part)
            head = segments[0].get("name", "")
            cursor = start
            if head == "%resource":
                cursor, segments = Cursor((), resource_type, resource_type, from_resource=True), segments[1:]
            elif head[:1].isupper():
                if head != resource_type and head not in ROOT_TYPES:
                    continue
                cursor, segments = Cursor((), resource_type, resource_type), segments[1:]
            found += self._walk(cursor, segments)
        return found

    def _walk(self, cursor: Cursor, segments: list[dict[str, str]]) -> list[Cursor]:
        cursors = [cursor]
        for seg in segments:
            if "cast" in seg:
                cursors = [_cast(c, seg["cast"]) for c in cursors]
            elif "name" in seg:
                cursors = [self.child(c, seg["name"]) for pending in cursors for c in _expand(pending)]
                if seg.get("index") is not None:
                    cursors = [_refine(c, index=int(seg["index"])) for c in cursors]
            elif "resolves" in seg:
                cursors = [_refine(c, resolves=seg["resolves"]) for c in cursors]
            else:
                cursors = [_refine(c, where={seg["field"]: seg["value"]}) for c in cursors]
        return [c for pending in cursors for c in _expand(pending)]


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path) as f:
        bundle = orjson.loads(f.read())
    for entry in bundle["entry"]:
        yield entry["resource"]


def _type_code(t: dict[str, Any]) -> str:
    """The FHIR type name; `System.String` ids carry theirs in an extension."""
    for ext in t.get("extension", ()):
        if ext["url"] == FHIR_TYPE_EXT:
            return str(ext["valueUrl"])
    return str(t["code"])


def _segments(part: str) -> list[dict[str, str]]:
    text = part.strip()
    text = CAST_IN_PARENS.sub(lambda m: f"{m['inner']}.as({m['type']})", text)
    segments: list[dict[str, str]] = []
    pos = 0
    while pos < len(text):
        match = SEGMENT.match(text, pos)
        if match is None or match.end() == pos:
            raise DefinitionError(f"unsupported expression {part!r}")
        segments.append({k: v for k, v in match.groupdict().items() if v is not None})
        pos = match.end()
    return segments


def _expand(cursor: Cursor) -> Iterator[Cursor]:
    """A pending choice element becomes one cursor per allowed type (`valueQuantity`, `valueString` ...)."""
    if not cursor.choices:
        yield cursor
        return
    for choice in cursor.choices:
        yield _cast(cursor, choice)


def _cast(cursor: Cursor, type_name: str) -> Cursor:
    if not cursor.choices:
        if cursor.type.lower() != type_name.lower():
            raise DefinitionError(f"cannot cast {cursor.element} ({cursor.type}) to {type_name}")
        return cursor
    matching = [t for t in cursor.choices if t.lower() == type_name.lower()]
    if not matching:
        raise DefinitionError(f"{cursor.element} has no choice {type_name}")
    chosen = matching[0]
    last = cursor.steps[-1]
    renamed = {**last, "name": last["name"] + chosen[0].upper() + chosen[1:]}
    return replace(cursor, steps=(*cursor.steps[:-1], renamed), type=chosen, choices=())


def _refine(cursor: Cursor, **condition: Any) -> Cursor:
    if cursor.choices or not cursor.steps:
        raise DefinitionError(f"cannot filter {cursor.element}")
    return replace(cursor, steps=(*cursor.steps[:-1], {**cursor.steps[-1], **condition}))


def _path_json(cursor: Cursor) -> dict[str, Any]:
    """A compiled path: steps (a bare name, or an object with its filter) and the selected type."""
    steps = [s["name"] if len(s) == 1 else s for s in cursor.steps]
    out: dict[str, Any] = {"type": cursor.type, "steps": steps}
    if cursor.from_resource:
        out["fromResource"] = True
    if cursor.exists_not_false:
        out["existsNotFalse"] = True
    return out


def _unique(paths: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {orjson.dumps(p, option=orjson.OPT_SORT_KEYS): p for p in paths}
    return [seen[k] for k in sorted(seen)]


def _check(defs: Definitions, where: str, param_type: str, paths: list[Cursor]) -> list[Cursor]:
    """Keep the paths whose type the parameter type can index; report the others."""
    usable = [c for c in paths if _indexable(param_type, c)]
    for c in paths:
        if c not in usable:
            defs.warnings.append(f"{where}: {param_type} cannot index {c.element} ({c.type}); left out")
    return usable


def _indexable(param_type: str, cursor: Cursor) -> bool:
    return param_type == "special" or cursor.exists_not_false or cursor.type in INDEXABLE[param_type]


# --- search parameters ------------------------------------------------------------------------


def compile_search_parameters(defs: Definitions) -> dict[str, Any]:
    by_url = {p["url"]: p for p in defs.search_parameters}
    table: dict[str, dict[str, Any]] = {t: {} for t in defs.resource_types}
    for param in defs.search_parameters:
        if param["code"] in SKIPPED:
            continue
        for resource_type in _applies_to(defs, param):
            compiled = _compile_param(defs, by_url, param, resource_type)
            if compiled is not None:
                table[resource_type][param["code"]] = compiled
    return {"generated": defs.header(), "resourceTypes": defs.resource_types, "parameters": table}


def _applies_to(defs: Definitions, param: dict[str, Any]) -> list[str]:
    types: set[str] = set()
    for base in param["base"]:
        if base == "Resource":
            types.update(defs.resource_types)
        elif base == "DomainResource":
            types.update(defs.domain_types)
        else:
            types.add(base)
    return sorted(types)


def _compile_param(
    defs: Definitions, by_url: dict[str, dict[str, Any]], param: dict[str, Any], resource_type: str
) -> dict[str, Any] | None:
    where = f"{resource_type}.{param['code']}"
    root = Cursor((), resource_type, resource_type)
    nodes = defs.compile(param["expression"], root, resource_type)
    if not nodes:
        defs.warnings.append(f"{where}: no part of {param['expression']!r} applies; left out")
        return None
    out: dict[str, Any] = {"type": param["type"], "url": param["url"]}
    if param["type"] == "composite":
        if not 2 <= len(param["component"]) <= 3:  # what an index row holds (store/search/rows.py)
            raise DefinitionError(f"{where} has {len(param['component'])} components")
        components = [_component(defs, by_url, c, nodes, resource_type) for c in param["component"]]
        out["components"] = _fix_swapped(defs, where, components)
        out["paths"] = _unique([_path_json(c) for c in nodes])
        return out
    out["paths"] = _unique([_path_json(c) for c in _check(defs, where, param["type"], nodes)])
    targets = sorted(t for t in param.get("target", ()) if t != "Any")
    if targets:
        out["targets"] = targets
    return out if out["paths"] else None


def _component(
    defs: Definitions,
    by_url: dict[str, dict[str, Any]],
    component: dict[str, Any],
    nodes: list[Cursor],
    resource_type: str,
) -> tuple[dict[str, Any], list[Cursor]]:
    """The component's parameter (code, type) and its sub-paths, compiled from each composite node."""
    definition = by_url[component["definition"]]
    paths = [
        c
        for node in nodes
        for c in defs.compile(component["expression"], replace(node, steps=()), resource_type)
    ]
    return {"code": definition["code"], "type": definition["type"]}, paths


def _fix_swapped(
    defs: Definitions, where: str, components: list[tuple[dict[str, Any], list[Cursor]]]
) -> list[dict[str, Any]]:
    """Components as JSON, repairing R4's DocumentReference `relationship`, whose two expressions are
    each paired with the other's definition: when the types only fit crosswise, the expressions swap."""
    if len(components) == 2:
        (first, first_paths), (second, second_paths) = components
        fits = all(_indexable(first["type"], c) for c in first_paths) and all(
            _indexable(second["type"], c) for c in second_paths
        )
        crosswise = all(_indexable(first["type"], c) for c in second_paths) and all(
            _indexable(second["type"], c) for c in first_paths
        )
        if not fits and crosswise:
            defs.warnings.append(f"{where}: component expressions swapped to match their definitions")
            components = [(first, second_paths), (second, first_paths)]
    out = []
    for index, (definition, paths) in enumerate(components):
        usable = _check(defs, f"{where}${index + 1}", definition["type"], paths)
        out.append({**definition, "paths": _unique([_path_json(c) for c in usable])})
    return out


# --- summary elements -------------------------------------------------------------------------


def compile_summary_elements(defs: Definitions) -> dict[str, Any]:
    """Per resource type: top-level elements marked isSummary, those with min >= 1, and which of
    them are choice elements.

    Choice elements appear as their prefix (`deceased` stands for the `deceased*` JSON keys whose
    rest is a type name, `deceasedBoolean`, `deceasedDateTime`); `choices` lists those prefixes.
    """
    types: dict[str, dict[str, list[str]]] = {}
    for resource_type in defs.resource_types:
        names: dict[str, set[str]] = {"summary": set(), "mandatory": set(), "choices": set()}
        prefix = resource_type + "."
        for path, element in defs.elements.items():
            if not path.startswith(prefix) or "." in path[len(prefix) :]:
                continue
            name = path[len(prefix) :].removesuffix("[x]")
            if element.get("isSummary"):
                names["summary"].add(name)
            if element.get("min", 0) >= 1:
                names["mandatory"].add(name)
            if path.endswith("[x]"):
                names["choices"].add(name)
        types[resource_type] = {key: sorted(value) for key, value in names.items()}
    return {"generated": defs.header(), "types": types}


# --- validator element tables -------------------------------------------------------------------

NATIVE_CONSTRAINTS = frozenset({"ele-1", "ext-1"})  # structural; the validator checks them natively
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
QUANTITY_PROFILES = frozenset({"SimpleQuantity", "MoneyQuantity"})
BOUND_STRENGTHS = ("required", "extensible", "preferred")


def compile_structures(defs: Definitions) -> dict[str, Any]:
    """Per StructureDefinition (every R4 resource and datatype): its kind, base, own root constraints,
    the primitive regex, and one record per element path from the snapshot.

    An element record holds `min`, `max` (as in FHIR: a number string or "*"), `types` (FHIR type
    names; a choice element lists all of its types and its path ends in `[x]`), `targets` (resource
    types a Reference may point to), `binding` ([strength, ValueSet url without version]),
    `constraints` (ids into the shared `constraints` table), `ref` (a content reference, e.g.
    `Questionnaire.item`), `fixed`/`pattern` ([type, value]) and `maxLength`. Constraints are stored
    once each (`dom-2` appears on every resource) as [key, severity, expression, human]; ele-1 and
    ext-1 are left to the validator's structural checks, which say the same thing faster.
    """
    constraints: dict[str, list[str]] = {}
    seen: dict[tuple[str, str], str] = {}
    types: dict[str, Any] = {}
    for sd in sorted(defs.structures, key=lambda s: str(s["id"])):
        elements: dict[str, dict[str, Any]] = {}
        root: dict[str, Any] = {}
        for element in sd["snapshot"]["element"]:
            record = _element_record(element, constraints, seen)
            if element["path"] == sd["type"]:
                root = record
            else:
                elements[element["path"]] = record
        entry: dict[str, Any] = {
            "kind": sd["kind"],
            "type": sd["type"],
            "base": sd.get("baseDefinition", "").removeprefix(SD_PREFIX) or None,
            "elements": elements,
        }
        if sd.get("abstract"):
            entry["abstract"] = True
        if root.get("constraints"):
            entry["constraints"] = root["constraints"]
        regex = _primitive_regex(sd)
        if regex:
            entry["regex"] = regex
        types[sd["id"]] = entry
    return {"generated": defs.header(), "constraints": constraints, "types": types}


def _element_record(
    element: dict[str, Any], constraints: dict[str, list[str]], seen: dict[tuple[str, str], str]
) -> dict[str, Any]:
    record: dict[str, Any] = {"min": element.get("min", 0), "max": element.get("max", "*")}
    if element.get("contentReference"):
        record["ref"] = element["contentReference"].lstrip("#")
    names: list[str] = []
    targets: set[str] = set()
    for t in element.get("type", ()):
        code = _type_code(t)
        profiles = [p.removeprefix(SD_PREFIX) for p in t.get("profile", ())]
        names.append(next((p for p in profiles if p in QUANTITY_PROFILES), code))
        targets.update(p.removeprefix(SD_PREFIX) for p in t.get("targetProfile", ()))
    if names:
        record["types"] = list(dict.fromkeys(names))
    if targets and not targets & {"Resource", "Any"}:
        record["targets"] = sorted(targets)
    binding = element.get("binding", {})
    if binding.get("valueSet") and binding.get("strength") in BOUND_STRENGTHS:
        record["binding"] = [binding["strength"], binding["valueSet"].split("|")[0]]
    ids = []
    for c in element.get("constraint", ()):
        if c["key"] in NATIVE_CONSTRAINTS or not c.get("expression"):
            continue
        ident = seen.get((c["key"], c["expression"]))
        if ident is None:
            ident = c["key"] if c["key"] not in constraints else f"{c['key']}#{len(seen)}"
            seen[(c["key"], c["expression"])] = ident
            expression = CONSTRAINT_FIXES.get((c["key"], c["expression"]), c["expression"])
            constraints[ident] = [c["key"], c["severity"], expression, c.get("human", "")]
        ids.append(ident)
    if ids:
        record["constraints"] = list(dict.fromkeys(ids))
    for key, value in element.items():
        for kind in ("fixed", "pattern"):
            if key.startswith(kind) and key[len(kind) :][:1].isupper():
                record[kind] = [key[len(kind) :], value]
    if element.get("maxLength"):
        record["maxLength"] = element["maxLength"]
    return record


def _primitive_regex(sd: dict[str, Any]) -> str | None:
    if sd["kind"] != "primitive-type":
        return None
    for element in sd["snapshot"]["element"]:
        if element["path"] == f"{sd['type']}.value":
            for t in element.get("type", ()):
                for ext in t.get("extension", ()):
                    if ext["url"] == REGEX_EXT:
                        return str(ext["valueString"])
    return None


# --- terminology --------------------------------------------------------------------------------

TERMINOLOGY_SOURCES = ("valuesets.json.gz", "v3-codesystems.json.gz", "v2-tables.json.gz")


class Unexpandable(Exception):
    """A value set whose members this build cannot list (e.g. it draws on SNOMED CT or LOINC)."""


@dataclass
class _CodeSystem:
    url: str
    content: str
    case_sensitive: bool
    concepts: dict[str, Any]  # code -> display, or [display, designation, ...]
    parents: dict[str, set[str]]  # code -> direct parents
    properties: dict[str, dict[str, str]]  # code -> property code -> value (as text)

    @classmethod
    def read(cls, resource: dict[str, Any]) -> _CodeSystem:
        cs = cls(
            resource["url"],
            resource.get("content", "complete"),
            bool(resource.get("caseSensitive")),
            {},
            {},
            {},
        )
        cs._add(resource.get("concept", ()), None)
        return cs

    def _add(self, concepts: Any, parent: str | None) -> None:
        for concept in concepts:
            code = concept["code"]
            display = concept.get("display", "")
            others = sorted(
                {d["value"] for d in concept.get("designation", ()) if d.get("value")} - {display}
            )
            self.concepts[code] = [display, *others] if others else display
            parents = self.parents.setdefault(code, set())
            if parent is not None:
                parents.add(parent)
            props = self.properties.setdefault(code, {})
            for prop in concept.get("property", ()):
                value = next((str(v) for k, v in prop.items() if k.startswith("value")), "")
                props[prop["code"]] = value
                if prop["code"] in ("subsumedBy", "parent"):
                    parents.add(value)
            self._add(concept.get("concept", ()), code)

    def descendants(self, code: str) -> set[str]:
        children: dict[str, set[str]] = {}
        for child, parents in self.parents.items():
            for parent in parents:
                children.setdefault(parent, set()).add(child)
        found: set[str] = set()
        todo = [code]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found


class _Expander:
    """ValueSet expansion over the shipped code systems: enumerated codes, whole code systems, the
    is-a / descendent-of / is-not-a / property = / code regex filters, imports and excludes."""

    def __init__(self, code_systems: dict[str, _CodeSystem], value_sets: dict[str, dict[str, Any]]) -> None:
        self.code_systems = code_systems
        self.value_sets = value_sets
        self.done: dict[str, set[tuple[str, str]]] = {}

    def expand(self, url: str, stack: tuple[str, ...] = ()) -> set[tuple[str, str]]:
        url = url.split("|")[0]
        if url in self.done:
            return self.done[url]
        if url in stack:
            raise Unexpandable(f"{url} includes itself")
        vs = self.value_sets.get(url)
        if vs is None:
            raise Unexpandable(f"value set {url} is not in the R4 definitions")
        compose = vs.get("compose")
        if compose is None:
            codes = {
                (c["system"], c["code"]) for c in vs.get("expansion", {}).get("contains", ()) if "code" in c
            }
        else:
            codes = set()
            for include in compose.get("include", ()):
                codes |= self._include(include, (*stack, url))
            for exclude in compose.get("exclude", ()):
                codes -= self._include(exclude, (*stack, url))
        self.done[url] = codes
        return codes

    def _include(self, include: dict[str, Any], stack: tuple[str, ...]) -> set[tuple[str, str]]:
        imported = [self.expand(v, stack) for v in include.get("valueSet", ())]
        system = include.get("system")
        if system is None:
            return set.intersection(*imported) if imported else set()
        if include.get("concept"):
            codes = {c["code"] for c in include["concept"]}
        else:
            cs = self.code_systems.get(system)
            if cs is None or cs.content != "complete":
                raise Unexpandable(f"code system {system} is not shipped")
            codes = set(cs.concepts)
            for filt in include.get("filter", ()):
                codes &= self._filter(cs, filt)
        found = {(system, code) for code in codes}
        for other in imported:
            found &= other
        return found

    def _filter(self, cs: _CodeSystem, filt: dict[str, Any]) -> set[str]:
        prop, op, value = filt["property"], filt["op"], filt["value"]
        if prop == "concept" and op == "is-a":
            return {value} | cs.descendants(value)
        if prop == "concept" and op == "descendent-of":
            return cs.descendants(value)
        if prop == "concept" and op == "is-not-a":
            return set(cs.concepts) - {value} - cs.descendants(value)
        if prop == "code" and op == "regex":
            return {c for c in cs.concepts if re.fullmatch(value, c)}
        if op == "=":
            return {c for c, props in cs.properties.items() if props.get(prop) == value}
        raise Unexpandable(f"filter {prop} {op} is not supported")


def compile_terminology(
    defs: Definitions, source: Path, structures: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The value sets the base definitions bind (required, extensible, preferred), expanded to
    {system: [codes]}, the ones that cannot be expanded with the reason why, and every shipped code
    system's codes with their displays (for "unknown code" and display checks on any Coding)."""
    code_systems: dict[str, _CodeSystem] = {}
    value_sets: dict[str, dict[str, Any]] = {}
    for name in TERMINOLOGY_SOURCES:
        for resource in _entries(source / name):
            if resource["resourceType"] == "CodeSystem" and resource.get("url"):
                code_systems.setdefault(resource["url"], _CodeSystem.read(resource))
            elif resource["resourceType"] == "ValueSet" and resource.get("url"):
                value_sets.setdefault(resource["url"], resource)
    bound = sorted(
        {
            element["binding"][1]
            for entry in structures["types"].values()
            for element in entry["elements"].values()
            if "binding" in element
        }
    )
    expander = _Expander(code_systems, value_sets)
    expanded: dict[str, Any] = {}
    not_expanded: dict[str, str] = {}
    for url in bound:
        try:
            codes = expander.expand(url)
        except Unexpandable as exc:
            not_expanded[url] = str(exc)
            continue
        systems: dict[str, list[str]] = {}
        for system, code in sorted(codes):
            systems.setdefault(system, []).append(code)
        vs = value_sets[url]
        expanded[url] = {"name": vs.get("name", vs.get("id", "")), "codes": systems}
    value_set_table = {
        "generated": defs.header(),
        "valueSets": expanded,
        "notExpanded": not_expanded,
    }
    systems_table = {
        url: {
            "content": cs.content,
            "caseSensitive": cs.case_sensitive,
            "concepts": dict(sorted(cs.concepts.items())),
        }
        for url, cs in sorted(code_systems.items())
    }
    valueset_urls = sorted(value_sets)
    return value_set_table, {
        "generated": defs.header(),
        "codeSystems": systems_table,
        "valueSetUrls": valueset_urls,
    }


# --- extension definitions ----------------------------------------------------------------------


def compile_extensions(defs: Definitions, source: Path) -> dict[str, Any]:
    """url -> what the validator checks of a core extension used in an instance: the types its
    value may have (`[]`: a complex extension, which has nested extensions and no value), whether it
    is a modifier, and the contexts it may be used in (element paths or type names)."""
    table: dict[str, Any] = {}
    for sd in _entries(source / "extension-definitions.json.gz"):
        if sd["resourceType"] != "StructureDefinition" or sd.get("type") != "Extension":
            continue
        elements = sd["snapshot"]["element"]
        value = next((e for e in elements if e["path"] == "Extension.value[x]"), None)
        types = (
            [] if value is None or value.get("max") == "0" else sorted(_type_code(t) for t in value["type"])
        )
        table[sd["url"]] = {
            "value": types,
            "modifier": bool(elements[0].get("isModifier")),
            "context": sorted({c["expression"] for c in sd.get("context", ())}),
        }
    return {"generated": defs.header(), "extensions": dict(sorted(table.items()))}


# --- command line -----------------------------------------------------------------------------


def write_json(path: Path, data: dict[str, Any], *, depth: int) -> int:
    """Sorted JSON, objects laid out one key per line down to `depth` and compact below, so a diff
    shows which parameter changed without the file growing by half in indentation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (_layout(data, depth, "") + "\n").encode()
    path.write_bytes(body)
    return len(body)


def _layout(value: Any, depth: int, pad: str) -> str:
    if depth == 0 or not isinstance(value, dict) or not value:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    inner = pad + "  "
    items = [
        f"{inner}{orjson.dumps(key).decode()}: {_layout(value[key], depth - 1, inner)}"
        for key in sorted(value)
    ]
    return "{\n" + ",\n".join(items) + "\n" + pad + "}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO.parent / "shared" / "fhir-r4",
        help="folder with the R4 definitions (*.json.gz, version.info)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "fhir_gateway", help="package folder to write profiles/ into"
    )
    args = parser.parse_args(argv)
    try:
        defs = Definitions.load(args.source)
        outputs = {  # file name -> (content, depth of the one-key-per-line layout)
            "search-parameters.json": (compile_search_parameters(defs), 3),
            "summary-elements.json": (compile_summary_elements(defs), 2),
        }
        structures = compile_structures(defs)
        outputs["structures.json"] = (structures, 3)
        outputs["extensions.json"] = (compile_extensions(defs, args.source), 2)
        valuesets, codesystems = compile_terminology(defs, args.source, structures)
    except (OSError, KeyError, DefinitionError) as exc:
        print(f"compile_definitions: {exc}", file=sys.stderr)
        return 1
    for warning in defs.warnings:
        print(f"note: {warning}", file=sys.stderr)
    for name, (data, depth) in outputs.items():
        size = write_json(args.out / "profiles" / name, data, depth=depth)
        print(f"wrote profiles/{name} ({size} bytes)")
    for name, data in (("valuesets.json", valuesets), ("codesystems.json", codesystems)):
        size = write_json(args.out / "terminology" / name, data, depth=2)
        print(f"wrote terminology/{name} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
