"""The structure pass: one walk over the JSON against the per-type plans from loader.py.

Checks, per JSON object: the keys it may hold (unknown elements), array vs single value, empty
objects/arrays/strings, nulls, primitive values with their `_name` extension partners, choice
elements (one `value[x]` at most), cardinality (min/max), ele-1 and ext-1 (done natively: they are
structural). On its way it checks bindings and Codings (bindings.py), and leaves FHIRPath
constraints and references to the later passes (walk.Task / walk.Scope).

Expressions follow the HL7 Java validator: `Patient.name[0].given[1]` (index only for elements
that may repeat), `Observation.value.ofType(Quantity)` for choices, and resources inside resources
as `Bundle.entry[0].resource/*Patient/1*/.name[0]`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fhir_gateway.validation import bindings, canonical, primitives
from fhir_gateway.validation.loader import PRIMITIVE_TYPES, Element, Node, json_type, node_for, resource_types
from fhir_gateway.validation.walk import MAX_DEPTH, Scope, Task, Walk

EXTENSION_TYPES = frozenset({"Extension"})
_URI_TYPES = frozenset({"canonical", "uri", "url"})  # whose `#id` values point at contained resources


def walk_resource(
    walk: Walk,
    resource: Any,
    here: str,
    *,
    parent: Scope | None = None,
    contained: bool = False,
    depth: int = 0,
) -> Scope | None:
    """Validate one resource; `here` is its expression (its type name at the top level)."""
    if not isinstance(resource, dict):
        walk.error("structure", "A resource must be a JSON object", here)
        return None
    rt = resource.get("resourceType")
    if not isinstance(rt, str) or not rt:
        walk.error("structure", "Unable to find the resourceType property", here)
        return None
    node = node_for(rt) if rt in resource_types() else None
    if node is None:
        walk.error("structure", "Unknown resource type", here)
        return None
    if parent is None:
        prefix = here if here == rt else f"{here}/*{rt}/{_text(resource.get('id'))}*/"
    else:
        prefix = f"{here}/*{rt}/{_text(resource.get('id'))}*/"
    scope = Scope(resource, here, prefix, parent, contained)
    walk.scopes.append(scope)
    if node.constraints:
        walk.tasks.append(Task(node.constraints, resource, rt, here, scope))
    walk_object(walk, resource, node, here, prefix, scope, depth)
    return scope


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "null"


def walk_object(
    walk: Walk, obj: dict[str, Any], node: Node, here: str, prefix: str, scope: Scope, depth: int
) -> None:
    """Check the keys of one JSON object against `node`, then its cardinalities."""
    if depth > MAX_DEPTH:
        walk.error("too-costly", "The content is nested too deeply to validate", here)
        return
    keys = node.keys
    counts: dict[Element, int] = {}
    chosen: dict[Element, str] = {}
    for key, value in obj.items():
        entry = keys.get(key)
        extension = None
        if entry is None:
            if key == "resourceType" and node.is_resource:
                continue
            base = keys.get(key[1:]) if key.startswith("_") else None
            if base is None or base[1] not in PRIMITIVE_TYPES:
                walk.error("structure", f"Unrecognized property '{key[:64]}'", here)
                continue
            if key[1:] in obj:
                continue  # checked together with its value
            entry, extension, value = base, value, None
        element, type_name = entry
        if element.choice:
            previous = chosen.get(element)
            if previous is not None and previous != type_name:
                walk.error("structure", f"{element.path}: only one choice of type may be present", here)
            chosen[element] = type_name
            expr = f"{prefix}.{element.name}.ofType({json_type(type_name)})"
        else:
            expr = f"{prefix}.{element.name}"
        if type_name in PRIMITIVE_TYPES:
            if extension is None:
                extension = obj.get("_" + key)
            n = _primitive(walk, element, type_name, value, extension, expr, scope, depth)
        else:
            n = _complex(walk, element, type_name, value, expr, scope, node, depth)
        counts[element] = counts.get(element, 0) + n
    for element in node.required:
        found = counts.get(element, 0)
        if found < element.min:
            walk.error(
                "structure", f"{element.path}: minimum required = {element.min}, but only found {found}", here
            )
    for element in node.bounded:
        found = counts.get(element, 0)
        if found > element.max:
            walk.error("structure", f"{element.path}: max allowed = {element.max}, but found {found}", here)


def _items(walk: Walk, element: Element, value: Any, expr: str) -> list[tuple[Any, str]]:
    """The values of an element with their expressions, after the array/single checks."""
    if element.array:
        if isinstance(value, list):
            if not value:
                walk.error("structure", "Array cannot be empty - the property should not be present", expr)
            return [(item, f"{expr}[{i}]") for i, item in enumerate(value)]
        walk.error("structure", "This property must be an Array, not a single value", expr)
        return [(value, f"{expr}[0]")]
    if isinstance(value, list):
        walk.error("structure", "This property must be a single value, not an Array", expr)
        return []
    return [(value, expr)]


def _primitive(
    walk: Walk,
    element: Element,
    type_name: str,
    value: Any,
    extension: Any,
    expr: str,
    scope: Scope,
    depth: int,
) -> int:
    if extension is None and value is not None and not element.array and not isinstance(value, list):
        _primitive_value(walk, element, type_name, value, expr, scope)  # the common case, directly
        return 1
    values = _items(walk, element, value, expr) if value is not None else []
    if value is None and extension is None:
        walk.error("structure", "Null values are not allowed", expr)
        return 0
    exts = _items(walk, element, extension, expr) if extension is not None else []
    if values and exts and len(values) != len(exts):
        walk.error("structure", "The value and extension arrays (_name) must have the same length", expr)
    count = max(len(values), len(exts))
    for i in range(count):
        item, item_expr = values[i] if i < len(values) else (None, exts[i][1])
        ext = exts[i][0] if i < len(exts) else None
        if item is None and ext is None:
            walk.error("structure", "Null values are not allowed unless an extension is present", item_expr)
            continue
        if item is not None:
            _primitive_value(walk, element, type_name, item, item_expr, scope)
        if ext is not None:
            if not isinstance(ext, dict):
                walk.error("structure", "The primitive's extension (_name) must be an object", item_expr)
            elif not _has_content(ext):
                walk.error("structure", "Object must have some content", item_expr)
            else:
                element_node = node_for("Element")
                assert element_node is not None
                walk_object(walk, ext, element_node, item_expr, item_expr, scope, depth + 1)
    return count


def _primitive_value(
    walk: Walk, element: Element, type_name: str, item: Any, item_expr: str, scope: Scope
) -> None:
    """One primitive value: its lexical form, length, binding; its constraints for later."""
    problem = primitives.check(type_name, item)
    if problem is not None:
        walk.error(problem[0], problem[1], item_expr)
    else:
        if type_name in _URI_TYPES and item.startswith("#"):
            scope.local_uris.add(item)
        elif type_name == "canonical" and element.targets:
            canonical.check_target(walk, element.targets, item, item_expr)
        if element.max_length is not None and isinstance(item, str) and len(item) > element.max_length:
            walk.error("too-long", f"The value exceeds the maximum length of {element.max_length}", item_expr)
        if element.binding is not None and type_name in bindings.BINDABLE_PRIMITIVES:
            bindings.check(walk, element.binding, type_name, item, item_expr)
    if element.constraints:
        walk.tasks.append(Task(element.constraints, item, type_name, item_expr, scope))


def _complex(
    walk: Walk,
    element: Element,
    type_name: str,
    value: Any,
    expr: str,
    scope: Scope,
    parent: Node,
    depth: int,
) -> int:
    if value is None:
        walk.error("structure", "Null values are not allowed", expr)
        return 0
    if not element.array and isinstance(value, dict):  # the common case, without _items
        return _complex_item(walk, element, type_name, value, expr, scope, parent, depth)
    count = 0
    for item, item_expr in _items(walk, element, value, expr):
        count += _complex_item(walk, element, type_name, item, item_expr, scope, parent, depth)
    return count


def _complex_item(
    walk: Walk,
    element: Element,
    type_name: str,
    item: Any,
    item_expr: str,
    scope: Scope,
    parent: Node,
    depth: int,
) -> int:
    """One value of a complex element (an object, or a contained resource); 1 when it counts."""
    if not isinstance(item, dict):
        walk.error("structure", f"This property must be an object, not a {primitives._kind(item)}", item_expr)
        return 0
    if type_name == "Resource":
        contained = element.name == "contained" and parent.is_resource
        walk_resource(walk, item, item_expr, parent=scope, contained=contained, depth=depth + 1)
        return 1
    if not _has_content(item):
        walk.error("structure", "Object must have some content", item_expr)
        return 1
    child = element.node or node_for(type_name)
    if child is None:
        return 1
    walk_object(walk, item, child, item_expr, item_expr, scope, depth + 1)
    if element.node is None and element.constraints:
        walk.tasks.append(Task(element.constraints, item, type_name, item_expr, scope))
    if child.constraints:
        walk.tasks.append(Task(child.constraints, item, child.path, item_expr, scope))
    if type_name == "Extension":
        _extension(walk, item, item_expr)
        walk.extensions.append((item, item_expr, element.name == "modifierExtension"))
    elif type_name == "Reference":
        reference = item.get("reference")
        if isinstance(reference, str):
            scope.references.append((reference, item_expr))
    elif type_name == "Coding":
        bindings.check_coding(walk, item, item_expr)
    elif type_name == "Attachment":
        _attachment(walk, item, item_expr)
    if element.binding is not None and type_name in bindings.BINDABLE_COMPLEX:
        bindings.check(walk, element.binding, type_name, item, item_expr)
    return 1


def _has_content(obj: dict[str, Any]) -> bool:
    """ele-1: an element has a value or children other than its id."""
    return any(key != "id" for key in obj)


def _attachment(walk: Walk, attachment: dict[str, Any], expr: str) -> None:
    """The stated size must be that of the data (the HL7 validator checks it too)."""
    data, size = attachment.get("data"), attachment.get("size")
    if not isinstance(data, str) or not isinstance(size, int) or isinstance(size, bool):
        return
    try:
        actual = len(base64.b64decode(data, validate=False))
    except (ValueError, binascii.Error):
        return  # the primitive check already reported the data
    if actual != size:
        walk.error(
            "structure", f"Stated Attachment Size {size} does not match actual attachment size {actual}", expr
        )


def _extension(walk: Walk, ext: dict[str, Any], expr: str) -> None:
    # a value given only as its primitive extension (`_valueString`) is a value too (ext-1's value.exists())
    has_value = any(key.startswith(("value", "_value")) for key in ext)
    if ("extension" in ext) == has_value:
        walk.error(
            "invariant", "Constraint failed: ext-1: 'Must have either extensions or value[x], not both'", expr
        )
    url = ext.get("url")
    if isinstance(url, str) and "|" in url:
        walk.error("invalid", "The extension URL must not contain a version", expr)
