"""Validation against profiles: `meta.profile` and the `profile` parameter, resolved to StructureDefinitions
the caller supplies (stored on the server, or given with the request / on the command line).

A profile's elements (its snapshot, else its differential — a differential only states what it
changes, which is exactly what needs checking on top of the base validation) are arranged as a tree
by element id (`Observation.component:SystolicBP.code`). The instance is walked along that tree:
- cardinality where the profile tightens the base (`min`/`max`), per slice too;
- fixed[x] (exact) and pattern[x] (the instance contains the pattern) values;
- type restrictions of choice elements and required bindings to value sets we can expand;
- slicing (https://hl7.org/fhir/R4/profiling.html#slicing): each repetition is matched to slices by
  the discriminators of type value, pattern, type and exists (extension slices also by their
  profile's URL); with closed slicing an unmatched repetition is an error; each slice's min/max is
  checked and its children are checked on the repetitions it matched;
- constraints the profile adds (FHIRPath, via invariants.evaluate).

A profile that cannot be found is a warning ("not checked"), one requested with the `profile`
parameter an error; a malformed profile gives an issue, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_gateway.validation import invariants
from fhir_gateway.validation.bindings import check as check_binding
from fhir_gateway.validation.loader import STRUCTURE_URL, Binding, structures, value_set
from fhir_gateway.validation.walk import Scope, Walk


@dataclass(eq=False)
class _Def:
    """One element of the profile, with the element definitions below it."""

    element: dict[str, Any]
    name: str  # JSON name, `value[x]` kept as is
    children: dict[str, _Def] = field(default_factory=dict)  # by name
    slices: dict[str, _Def] = field(default_factory=dict)  # by sliceName


def check(
    walk: Walk, resource: Any, here: str, wanted: list[str], definitions: Mapping[str, Mapping[str, Any]]
) -> None:
    for scope in list(walk.scopes):
        meta = scope.resource.get("meta")
        claimed = meta.get("profile") if isinstance(meta, dict) else None
        urls = [(p, False) for p in claimed if isinstance(p, str)] if isinstance(claimed, list) else []
        if scope.parent is None:
            urls += [(p, True) for p in wanted]
        for url, requested in dict.fromkeys(urls):
            _check_one(walk, scope, url, requested, definitions)


def _check_one(
    walk: Walk, scope: Scope, url: str, requested: bool, definitions: Mapping[str, Mapping[str, Any]]
) -> None:
    canonical = url.split("|")[0]
    rt = scope.resource.get("resourceType")
    if canonical == f"{STRUCTURE_URL}{rt}":
        return  # the base definition: already validated
    sd = definitions.get(canonical)
    if sd is None:
        text = f"Profile {canonical} is not known to this server; the resource was not checked against it"
        if requested:
            walk.error("not-supported", text, scope.here)
        else:
            walk.warning("not-supported", text, scope.here)
        return
    if sd.get("type") != rt:
        walk.error("invalid", f"Profile {canonical} is for {sd.get('type')!s:.64}, not {rt}", scope.here)
        return
    try:
        root = _tree(sd)
    except (KeyError, TypeError, ValueError, AttributeError):
        walk.error(
            "invalid", f"Profile {canonical} could not be read (malformed element definitions)", scope.here
        )
        return
    if root is not None:
        _Checker(walk, scope, canonical).object(scope.resource, root, scope.here, scope.prefix, str(rt))


def _tree(sd: Mapping[str, Any]) -> _Def | None:
    elements = (
        (sd.get("snapshot") or {}).get("element") or (sd.get("differential") or {}).get("element") or []
    )
    root: _Def | None = None
    for element in elements:
        ident = element.get("id") or element["path"]
        parts = ident.split(".")
        if root is None:
            root = _Def(element if len(parts) == 1 else {}, parts[0])
            if len(parts) == 1:
                continue
        node = root
        for part in parts[1:-1]:
            node = _step(node, part)
        last = parts[-1]
        name, _, slice_name = last.partition(":")
        parent = node.children.setdefault(name, _Def({}, name))
        if slice_name:
            parent.slices.setdefault(slice_name, _Def({}, name)).element = element
        else:
            parent.element = element
    return root


def _step(node: _Def, part: str) -> _Def:
    name, _, slice_name = part.partition(":")
    child = node.children.setdefault(name, _Def({}, name))
    return child.slices.setdefault(slice_name, _Def({}, name)) if slice_name else child


def _items(obj: dict[str, Any], name: str, prefix: str) -> list[tuple[Any, str, str]]:
    """(value, expression, type suffix) of every repetition of `name` in obj (choices by prefix)."""
    if name.endswith("[x]"):
        stem = name[:-3]
        keys = [k for k in obj if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
        out = []
        for key in keys:
            suffix = key[len(stem) :]
            out += _repeat(obj[key], f"{prefix}.{stem}.ofType({suffix[0].lower() + suffix[1:]})", suffix)
        return out
    return _repeat(obj.get(name), f"{prefix}.{name}", "") if name in obj else []


def _repeat(value: Any, expr: str, suffix: str) -> list[tuple[Any, str, str]]:
    if isinstance(value, list):
        return [(v, f"{expr}[{i}]", suffix) for i, v in enumerate(value) if v is not None]
    return [] if value is None else [(value, expr, suffix)]


class _Checker:
    def __init__(self, walk: Walk, scope: Scope, url: str) -> None:
        self.walk = walk
        self.scope = scope
        self.url = url

    def object(self, obj: Any, node: _Def, here: str, prefix: str, base: str) -> None:
        if not isinstance(obj, dict):
            return
        self._constraints(node.element, obj, here, base)
        for name, child in node.children.items():
            items = _items(obj, name, prefix)
            self._element(child, items, here, f"{base}.{name}")

    def _element(self, node: _Def, items: list[tuple[Any, str, str]], here: str, path: str) -> None:
        element = node.element
        self._cardinality(element, len(items), here, element.get("path", path))
        types = {_type_code(t) for t in element.get("type") or []}
        for value, expr, suffix in items:
            if suffix and types and suffix[0].lower() + suffix[1:] not in types and suffix not in types:
                self.walk.error(
                    "structure",
                    f"{element.get('path', path)}: the type {suffix} is not allowed by "
                    f"the profile {self.url}",
                    expr,
                )
            self._value(element, value, expr)
        matched: dict[str, list[tuple[Any, str, str]]] = {name: [] for name in node.slices}
        slicing = element.get("slicing")
        for item in items:
            found = [name for name, s in node.slices.items() if self._matches(slicing, s, item)]
            if found:
                matched[found[0]].append(item)
            elif node.slices and isinstance(slicing, dict) and slicing.get("rules") == "closed":
                self.walk.error(
                    "structure",
                    f"This element does not match any known slice defined in the profile {self.url}",
                    item[1],
                )
            if not found or node.children:
                self._children(node, item, path)
        for name, slice_node in node.slices.items():
            self._slice_cardinality(slice_node, matched[name], here, path, name)
            for item in matched[name]:
                self._value(slice_node.element, item[0], item[1])
                self._children(slice_node, item, path)

    def _children(self, node: _Def, item: tuple[Any, str, str], path: str) -> None:
        value, expr, _ = item
        if node.children and isinstance(value, dict):
            self.object(value, node, expr, expr, path)

    def _cardinality(self, element: dict[str, Any], count: int, here: str, path: str) -> None:
        minimum = element.get("min")
        maximum = element.get("max")
        if isinstance(minimum, int) and count < minimum and minimum > _base_min(path):
            self.walk.error(
                "structure",
                f"{path}: minimum required = {minimum}, but only found {count} (from {self.url})",
                here,
            )
        if isinstance(maximum, str) and maximum.isdigit() and count > int(maximum):
            self.walk.error(
                "structure", f"{path}: max allowed = {maximum}, but found {count} (from {self.url})", here
            )

    def _slice_cardinality(self, node: _Def, items: list[Any], here: str, path: str, name: str) -> None:
        minimum, maximum = node.element.get("min", 0), node.element.get("max", "*")
        if isinstance(minimum, int) and len(items) < minimum:
            self.walk.error(
                "structure",
                f"Slice '{path}:{name}': a matching slice is required, but not found (from {self.url})",
                here,
            )
        if isinstance(maximum, str) and maximum.isdigit() and len(items) > int(maximum):
            self.walk.error(
                "structure",
                f"Slice '{path}:{name}': at most {maximum} allowed, but found {len(items)} (from {self.url})",
                here,
            )

    def _value(self, element: dict[str, Any], value: Any, expr: str) -> None:
        for key, wanted in element.items():
            if key.startswith("fixed") and key[5:6].isupper() and value != wanted:
                self.walk.error(
                    "value", f"The value does not match the fixed value required by {self.url}", expr
                )
            elif key.startswith("pattern") and key[7:8].isupper() and not _contains(value, wanted):
                self.walk.error("value", f"The value does not match the pattern required by {self.url}", expr)
        binding = element.get("binding")
        if isinstance(binding, dict) and binding.get("strength") == "required" and binding.get("valueSet"):
            url = str(binding["valueSet"]).split("|")[0]
            kind = _json_kind(value)
            if kind and value_set(url) is not None:
                check_binding(self.walk, Binding("required", url), kind, value, expr)

    def _constraints(self, element: dict[str, Any], obj: Any, here: str, base: str) -> None:
        known = structures()["constraints"]
        for c in element.get("constraint") or []:
            key, expression = c.get("key"), c.get("expression")
            if not isinstance(expression, str) or key in known or key in invariants.NATIVE:
                continue
            try:
                result = invariants.evaluate(expression, obj, element.get("path", base), self.scope)
            except Exception:  # an engine failure must not fail the validation
                self.walk.information(
                    "informational", f"Constraint {key} could not be evaluated; not checked", here
                )
                continue
            if len(result) == 1 and result[0] is False:
                severity = "error" if c.get("severity") == "error" else "warning"
                self.walk.add(
                    severity, "invariant", f"Constraint failed: {key}: '{c.get('human', '')}'", here
                )

    def _matches(self, slicing: Any, node: _Def, item: tuple[Any, str, str]) -> bool:
        value, _, suffix = item
        discriminators = slicing.get("discriminator") if isinstance(slicing, dict) else None
        if not discriminators:
            return False
        for d in discriminators:
            kind, path = d.get("type"), d.get("path", "$this")
            if kind == "type":
                types = {_type_code(t) for t in node.element.get("type") or []}
                actual = (
                    value.get("resourceType")
                    if isinstance(value, dict) and "resourceType" in value
                    else suffix
                )
                if types and actual and actual not in types and actual[:1].lower() + actual[1:] not in types:
                    return False
            elif kind in ("value", "pattern"):
                expected = _expected(node, path)
                if expected is None:
                    return False
                found = _select(value, path)
                if not any(_contains(v, expected) for v in found):
                    return False
            elif kind == "exists":
                target = _descend(node, path)
                must = target is not None and target.element.get("min", 0) > 0
                if bool(_select(value, path)) != must:
                    return False
            else:
                return False  # profile discriminators need the referenced profile: not matched here
        return True


def _descend(node: _Def, path: str) -> _Def | None:
    if path == "$this":
        return node
    current: _Def | None = node
    for part in path.split("."):
        if current is None:
            return None
        current = current.children.get(part) or current.children.get(part + "[x]")
    return current


def _expected(node: _Def, path: str) -> Any:
    target = _descend(node, path)
    if target is not None:
        for key, value in target.element.items():
            if (key.startswith("fixed") and key[5:6].isupper()) or (
                key.startswith("pattern") and key[7:8].isupper()
            ):
                return value
    if path == "url":  # an extension slice names its definition in type.profile
        for t in node.element.get("type") or []:
            for profile in t.get("profile") or []:
                return profile
    return None


def _select(value: Any, path: str) -> list[Any]:
    nodes = [value]
    if path == "$this":
        return nodes
    for part in path.split("."):
        out: list[Any] = []
        for n in nodes:
            if isinstance(n, dict) and part in n:
                v = n[part]
                out.extend(v if isinstance(v, list) else [v])
        nodes = out
    return nodes


def _contains(value: Any, pattern: Any) -> bool:
    """pattern[x] semantics: every property of the pattern is in the value (arrays: each pattern item
    matches some item of the value)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_contains(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(_contains(i, p) for i in items) for p in pattern)
    return bool(value == pattern)


def _type_code(t: Any) -> str:
    return str(t.get("code", "")) if isinstance(t, dict) else ""


def _json_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "code"
    if isinstance(value, dict):
        return "CodeableConcept" if "coding" in value or "text" in value else "Coding"
    return None


def _base_min(path: str) -> int:
    """The base definition's min for a resource-level path (0 when it is not a path of the base)."""
    root = path.split(".")[0]
    info = structures()["types"].get(root)
    record = info["elements"].get(path) if info else None
    return int(record["min"]) if record else 0
