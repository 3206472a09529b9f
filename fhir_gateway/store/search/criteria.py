"""One filter parameter (`name:modifier=v1,v2`, chains, `_has`) turned into a Criterion.

A search is the AND of its criteria; a criterion is the OR of its comma-separated values. Parsing
needs the SearchParameter definitions (types, reference targets, composite components); it never
touches SQL. Two kinds of failure are kept apart:
- `Unsupported`: an unknown parameter or modifier, or one this server does not implement. params.py
  turns it into a warning (lenient handling) or a 400 `not-supported` (strict handling).
- `ValueError` from values.py: the value is malformed; always a 400 naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_gateway.definitions.search_parameters import SearchParameter, get, resource_types
from fhir_gateway.store.search import values as v
from fhir_gateway.store.search.extract import normalize_string

# Defined in R4 (or result parameters) but not implemented here.
UNSUPPORTED_PARAMS = frozenset(
    {"_text", "_content", "_list", "_query", "_filter", "_contained", "_containedType"}
)
UNSUPPORTED_TYPES = frozenset({"special"})
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains"}),
    "token": frozenset({"not", "text", "of-type"}),
    "uri": frozenset({"below", "above"}),
}


class Unsupported(Exception):
    """A parameter or modifier this server does not know or implement (the text names it)."""


@dataclass(frozen=True, slots=True)
class Match:
    """Rows of parameter `code` matching any of `values` (`modifier` as written, or None)."""

    code: str
    type: str
    modifier: str | None
    values: tuple[v.Value, ...]


@dataclass(frozen=True, slots=True)
class Missing:
    """`code:missing=true|false`: the resource has no (true) or some (false) value for the parameter."""

    code: str
    type: str
    missing: bool


@dataclass(frozen=True, slots=True)
class Chain:
    """`ref.param=x`: some resource this one references through `code` matches `inner`.

    One (target type, inner criterion) per candidate type: the `:Type` modifier, or every target type
    of the reference that has the chained parameter.
    """

    code: str
    targets: tuple[tuple[str, Criterion], ...]


@dataclass(frozen=True, slots=True)
class Has:
    """`_has:Source:ref:param=x`: some `source_type` resource references this one through `ref` and
    matches `inner`."""

    source_type: str
    ref_code: str
    inner: Criterion


Criterion = Match | Missing | Chain | Has


def parse_criterion(resource_type: str, key: str, value: str) -> Criterion:
    """The criterion for one query parameter; Unsupported or ValueError when it cannot be one."""
    if key.startswith("_has:"):
        return _has(resource_type, key, value)
    head, dot, rest = key.partition(".")
    code, _, modifier = head.partition(":")
    param = _param(resource_type, code)
    if dot:
        return _chain(resource_type, param, modifier or None, rest, value)
    return _match(param, modifier or None, value)


def _param(resource_type: str, code: str) -> SearchParameter:
    param = get(resource_type, code)
    if param is None or code in UNSUPPORTED_PARAMS or param.type in UNSUPPORTED_TYPES:
        raise Unsupported(f"Search parameter '{code}' is not supported for {resource_type}")
    return param


def _has(resource_type: str, key: str, value: str) -> Criterion:
    parts = key.split(":", 3)
    if len(parts) != 4 or parts[1] not in resource_types():
        raise Unsupported("_has must be _has:Type:reference-parameter:parameter")
    source, ref_code, rest = parts[1], parts[2], parts[3]
    ref = _param(source, ref_code)
    if ref.type != "reference" or (ref.targets and resource_type not in ref.targets):
        raise Unsupported(f"{source}.{ref_code} cannot refer to {resource_type}")
    return Has(source, ref_code, parse_criterion(source, rest, value))


def _chain(
    resource_type: str, param: SearchParameter, type_modifier: str | None, rest: str, value: str
) -> Chain:
    if param.type != "reference":
        raise Unsupported(f"Only reference parameters can be chained ('{param.code}' is {param.type})")
    candidates = param.targets or tuple(sorted(resource_types()))
    if type_modifier is not None:
        if type_modifier not in candidates:
            raise Unsupported(f"'{type_modifier}' is not a target type of {resource_type}.{param.code}")
        candidates = (type_modifier,)
    chained = rest.partition(".")[0].partition(":")[0]
    targets = []
    for target in candidates:
        found = get(target, chained)
        if found is not None and found.type not in UNSUPPORTED_TYPES and chained not in UNSUPPORTED_PARAMS:
            targets.append((target, parse_criterion(target, rest, value)))
    if not targets:
        raise Unsupported(f"No target of {resource_type}.{param.code} has a search parameter '{chained}'")
    return Chain(param.code, tuple(targets))


def _match(param: SearchParameter, modifier: str | None, value: str) -> Criterion:
    if modifier == "missing":
        if value not in ("true", "false"):
            raise ValueError(":missing takes true or false")
        return Missing(param.code, param.type, value == "true")
    if modifier is not None and not _modifier_allowed(param, modifier):
        raise Unsupported(f"Modifier ':{modifier}' is not supported on search parameter '{param.code}'")
    pieces = v.split_escaped(value, ",")
    return Match(param.code, param.type, modifier, tuple(_value(param, modifier, p) for p in pieces))


def _modifier_allowed(param: SearchParameter, modifier: str) -> bool:
    if param.code == "_id":
        return modifier == "not"
    if param.type == "reference":
        return modifier in (param.targets or resource_types())
    return modifier in MODIFIERS.get(param.type, frozenset())


def _value(param: SearchParameter, modifier: str | None, text: str) -> v.Value:
    """One comma-separated item, parsed as the parameter's type and modifier say."""
    if not text:
        raise ValueError("empty value in a list")
    if param.code == "_id":
        return v.TokenValue(None, v.unescape(text))
    if modifier == "exact":
        return v.StringValue(v.unescape(text))
    if modifier == "text":
        return v.StringValue(normalize_string(v.unescape(text)))
    if modifier == "of-type":
        return v.parse_of_type(text)
    if param.type == "reference":
        return v.parse_reference(text, resource_types(), target_type=modifier)
    if param.type == "uri":
        return v.UriValue(v.unescape(text))
    if param.type == "composite":
        return _composite(param, text)
    return _plain(param.type, text)


def _composite(param: SearchParameter, text: str) -> v.CompositeValue:
    """`a$b[$c]`: one value per component, each parsed as its own type (the second may carry a prefix)."""
    pieces = v.split_escaped(text, "$")
    if len(pieces) != len(param.components) or not all(pieces):
        raise ValueError("a composite value needs one part per component, separated by $")
    return v.CompositeValue(tuple(_plain(c.type, p) for c, p in zip(param.components, pieces, strict=True)))


def _plain(kind: str, text: str) -> v.Value:
    """A value with no modifier: what a composite component or an unmodified parameter holds."""
    if kind == "token":
        return v.parse_token(text)
    if kind == "reference":
        return v.parse_reference(text, resource_types())
    if kind == "string":
        return v.StringValue(normalize_string(v.unescape(text)))
    if kind == "quantity":
        return v.parse_quantity(text)
    if kind not in ("number", "date"):
        raise Unsupported(f"Search values of type {kind} are not supported here")
    prefix, rest = v.split_prefix(text)
    rest = v.unescape(rest)
    return v.parse_number(rest, prefix) if kind == "number" else v.parse_date(rest, prefix)
