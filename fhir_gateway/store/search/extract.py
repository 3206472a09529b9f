"""Search index rows for one resource, by running its compiled search-parameter paths over the JSON.

This runs on every write, so the work per resource type is planned once (`_plan`, cached): each
compiled path is paired with the function that turns what it selects into rows, chosen by the
parameter type and the FHIR type the path is known to select (R4 search.html §3.1.1 says what each
pair indexes), and filed under the top-level key it starts from, so a resource only pays for the
elements it has. Running a plan is plain dict walking, with no FHIRPath engine.

Extraction never raises on odd JSON: a value of the wrong shape (null, a list where an object
belongs, an unparseable date, a non-finite number) is skipped. Validation is another stage's job;
the index holds what can be read. `_id` and `_lastUpdated` are not extracted: the store searches
and sorts them on the resource row itself (store/search/query.py).

Choices made where R4 leaves room:
- ContactPoint tokens carry ContactPoint.system (`email`, `phone`) as their system, so both
  `telecom=x` and `telecom=email|x` match; code-typed elements have no system (the bound code
  system is not looked up).
- Each coding of a CodeableConcept gets a row per distinct text (its display and the concept's
  text), so `:text` finds either; a concept with only text gets a row with no system and code.
- An Identifier with a typed `type` also gets `{code}:of-type` rows with system
  `typesystem|typecode` and code = the value, for the `:of-type` modifier (see values.parse_of_type).
- A Timing is indexed by its outer limits (events and repeat.boundsPeriod), as search.html says.
- A composite's quantity component stores the unit code, or the unit text when there is no code.
"""

from __future__ import annotations

import functools
import itertools
import math
import unicodedata
from collections.abc import Callable
from typing import Any

from fhir_gateway.definitions.search_parameters import (
    Path,
    SearchParameter,
    params_for,
    parse_reference,
    resource_types,
)
from fhir_gateway.fhir.dates import period_range, timing_range, value_range
from fhir_gateway.store.search.rows import (
    DATE_MAX,
    DATE_MIN,
    CompositeRow,
    DateRow,
    IndexRows,
    NumberRow,
    QuantityRow,
    ReferenceRow,
    StringRow,
    TokenRow,
    UriRow,
)

RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})
ISO_4217 = "urn:iso:std:iso:4217"

Handler = Callable[["_Found", str, Any], None]  # (rows found, parameter code, one selected value)
Runner = Callable[[dict[str, Any], "_Found"], None]
Plan = tuple[dict[str, tuple[Runner, ...]], tuple[Runner, ...]]  # by first key, and always run
# A composite component value in the layout of the row's second slot: system, code, num, low, high, text.
Part = tuple[str | None, str | None, float | None, float | None, float | None, str | None]


class _Found:
    """Rows as plain tuples in field order while extracting. Duplicates are dropped before any row
    object is made: making one is most of a row's cost (a frozen dataclass sets each field through
    object.__setattr__)."""

    __slots__ = ("strings", "tokens", "references", "dates", "numbers", "quantities", "uris", "composites")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, [])

    strings: list[tuple[Any, ...]]
    tokens: list[tuple[Any, ...]]
    references: list[tuple[Any, ...]]
    dates: list[tuple[Any, ...]]
    numbers: list[tuple[Any, ...]]
    quantities: list[tuple[Any, ...]]
    uris: list[tuple[Any, ...]]
    composites: list[tuple[Any, ...]]


_ROW_TYPES = (StringRow, TokenRow, ReferenceRow, DateRow, NumberRow, QuantityRow, UriRow, CompositeRow)


def extract(resource: dict[str, Any]) -> IndexRows:
    """The deduplicated index rows of every search parameter of the resource's type."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource_type, str) or resource_type not in resource_types():
        return IndexRows()
    found = _Found()
    by_key, always = _plan(resource_type)
    for run in always:
        run(resource, found)
    for key in resource:
        for run in by_key.get(key, ()):
            run(resource, found)
    return IndexRows(
        *(
            [row_type(*values) for values in dict.fromkeys(rows)] if (rows := getattr(found, name)) else []
            for name, row_type in zip(_Found.__slots__, _ROW_TYPES, strict=True)
        )
    )


def normalize_string(text: str) -> str:
    """Accent- and case-folded, whitespace collapsed: what string search compares (both sides)."""
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


# --- plans ------------------------------------------------------------------------------------


@functools.cache
def _plan(resource_type: str) -> Plan:
    by_key: dict[str, list[Runner]] = {}
    always: list[Runner] = []

    def add(path: Path, runner: Runner) -> None:
        if path.steps:
            by_key.setdefault(path.steps[0].name, []).append(runner)
        else:
            always.append(runner)

    for param in params_for(resource_type).values():
        if param.code in RESOURCE_COLUMNS:
            continue
        if param.type == "composite":
            for path in param.paths:
                add(path, _composite_runner(param, path))
        elif any(p.exists_not_false for p in param.paths):
            always.append(_truth_runner(param.code, param.paths))
        else:
            for path in param.paths:
                handler = _handler(param, path)
                if handler is not None:
                    add(path, _path_runner(param.code, path, handler))
    return {key: tuple(runners) for key, runners in by_key.items()}, tuple(always)


def _handler(param: SearchParameter, path: Path) -> Handler | None:
    if param.type == "reference":
        if path.type == "Resource":
            return functools.partial(_inline_resource, frozenset(param.targets))
        return _reference if path.type == "Reference" else _canonical_reference
    return HANDLERS.get((param.type, path.type))


def _plain_key(path: Path) -> str | None:
    """The key of a path that is one unfiltered step (most are), else None."""
    step = path.steps[0] if len(path.steps) == 1 else None
    if step is None or step.index is not None or step.where is not None or step.resolves is not None:
        return None
    return step.name


def _getter(path: Path) -> Callable[[Any], list[Any]]:
    """Path.select, or for a single plain key a shortcut that skips the step machinery."""
    name = _plain_key(path)
    if name is None:
        return path.select

    def get(node: Any) -> list[Any]:
        value = node.get(name) if isinstance(node, dict) else None
        return value if isinstance(value, list) else [] if value is None else [value]

    return get


def _path_runner(code: str, path: Path, handler: Handler) -> Runner:
    name = _plain_key(path)
    if name is None:

        def run_path(resource: dict[str, Any], rows: _Found) -> None:
            for value in path.select(resource):
                handler(rows, code, value)

        return run_path

    def run_key(resource: dict[str, Any], rows: _Found) -> None:
        value = resource.get(name)
        if isinstance(value, list):
            for item in value:
                handler(rows, code, item)
        elif value is not None:
            handler(rows, code, value)

    return run_key


def _truth_runner(code: str, paths: tuple[Path, ...]) -> Runner:
    """`x.exists() and x != false` as a boolean token; no value at all is false, as in FHIRPath."""

    def run(resource: dict[str, Any], rows: _Found) -> None:
        truth = any(v is not False for p in paths for v in p.select(resource))
        rows.tokens.append((code, None, "true" if truth else "false", None))

    return run


def _composite_runner(param: SearchParameter, path: Path) -> Runner:
    """One row per combination of component values, node by node, so a code is only ever paired
    with the value of the same node (the same Observation.component).

    The row holds two or three components, the third a number: the compiler admits no other shape.
    Components are read last first: the value is the part most often missing, and then nothing else
    is read.
    """
    code, nodes = param.code, _getter(path)
    readers = [
        [(p.from_resource, _getter(p), read) for p in c.paths if (read := PART_READERS.get((c.type, p.type)))]
        for c in reversed(param.components)
    ]

    def run(resource: dict[str, Any], rows: _Found) -> None:
        for node in nodes(resource):
            parts: list[list[Part]] = []
            for component in readers:
                found = [
                    part
                    for from_resource, get, read in component
                    for value in get(resource if from_resource else node)
                    for part in read(value)
                ]
                if not found:
                    break
                parts.append(found)
            else:
                for *third, second, first in itertools.product(*parts):
                    c3 = third[0][2] if third else None
                    rows.composites.append((code, first[0], first[1], *second, c3))

    return run


# --- reading values ---------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


Quantity = tuple[float, str | None, str | None, str | None]  # value, system, code, unit


def _quantity(value: Any) -> list[Quantity]:
    if isinstance(value, dict) and (number := _number(value.get("value"))) is not None:
        return [(number, _text(value.get("system")), _text(value.get("code")), _text(value.get("unit")))]
    return []


def _money(value: Any) -> list[Quantity]:
    if isinstance(value, dict) and (number := _number(value.get("value"))) is not None:
        return [(number, ISO_4217, _text(value.get("currency")), None)]
    return []


def _range(value: Any) -> list[Quantity]:
    return [*_quantity(value.get("low")), *_quantity(value.get("high"))] if isinstance(value, dict) else []


QUANTITY_TYPES = ("Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity")
QUANTITIES: dict[str, Callable[[Any], list[Quantity]]] = {
    **dict.fromkeys(QUANTITY_TYPES, _quantity),
    "Money": _money,
    "Range": _range,
}
SPANS: dict[str, Callable[[Any], tuple[float, float] | None]] = {
    **dict.fromkeys(("date", "dateTime", "instant"), value_range),
    "Period": period_range,
    "Timing": timing_range,
}
STRING_PRIMITIVES = ("string", "markdown", "code", "id", "uri", "url", "canonical")
TOKEN_PRIMITIVES = ("code", "string", "id", "uri", "url", "canonical", "oid", "uuid")
NUMBERS = ("integer", "decimal", "positiveInt", "unsignedInt")


# --- rows -------------------------------------------------------------------------------------


def _string(rows: _Found, code: str, value: Any) -> None:
    if isinstance(value, str) and value:
        rows.strings.append((code, normalize_string(value), value))


def _string_parts(singles: tuple[str, ...], lists: tuple[str, ...]) -> Handler:
    """HumanName and Address: every part is its own row, so `name=pet` finds a given name."""

    def handle(rows: _Found, code: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in singles:
                if (part := value.get(key)) is not None:
                    _string(rows, code, part)
            for key in lists:
                if (parts := value.get(key)) is not None:
                    for item in _items(parts):
                        _string(rows, code, item)

    return handle


def _primitive_token(rows: _Found, code: str, value: Any) -> None:
    if isinstance(value, str) and value:
        rows.tokens.append((code, None, value, None))


def _boolean(rows: _Found, code: str, value: Any) -> None:
    if isinstance(value, bool):
        rows.tokens.append((code, None, "true" if value else "false", None))


def _coding(rows: _Found, code: str, value: Any) -> None:
    _coding_rows(rows, code, value, None)


def _coding_rows(rows: _Found, code: str, value: Any, concept_text: str | None) -> bool:
    """Rows for one Coding, one per distinct text; False when it has nothing to index."""
    if not isinstance(value, dict):
        return False
    system, token, display = _text(value.get("system")), _text(value.get("code")), _text(value.get("display"))
    text = normalize_string(display) if display else None
    if system is None and token is None and text is None:
        return False
    rows.tokens.append((code, system, token, text or concept_text))
    if text and concept_text and concept_text != text:
        rows.tokens.append((code, system, token, concept_text))
    return True


def _concept(rows: _Found, code: str, value: Any) -> None:
    if not isinstance(value, dict):
        return
    text = _text(value.get("text"))
    normalized = normalize_string(text) if text else None
    found = False
    for coding in _items(value.get("coding")):
        found = _coding_rows(rows, code, coding, normalized) or found
    if normalized and not found:
        rows.tokens.append((code, None, None, normalized))


def _identifier(rows: _Found, code: str, value: Any) -> None:
    if not isinstance(value, dict):
        return
    system, token, kind = _text(value.get("system")), _text(value.get("value")), value.get("type")
    kind = kind if isinstance(kind, dict) else {}
    kind_text = _text(kind.get("text"))
    if system or token:
        rows.tokens.append((code, system, token, normalize_string(kind_text) if kind_text else None))
    if token:
        for coding in _items(kind.get("coding")):
            if isinstance(coding, dict) and (type_code := _text(coding.get("code"))):
                type_system = _text(coding.get("system")) or ""
                rows.tokens.append((f"{code}:of-type", f"{type_system}|{type_code}", token, None))


def _contact_point(rows: _Found, code: str, value: Any) -> None:
    if isinstance(value, dict) and (token := _text(value.get("value"))):
        rows.tokens.append((code, _text(value.get("system")), token, None))


def _reference(rows: _Found, code: str, value: Any) -> None:
    parsed = parse_reference(value.get("reference")) if isinstance(value, dict) else None
    if parsed is not None:
        rows.references.append((code, *parsed))


def _canonical_reference(rows: _Found, code: str, value: Any) -> None:
    """A canonical/uri used as a reference: always by URL, and by type/id too when it reads as one."""
    if isinstance(value, str) and value:
        url = value.split("|", 1)[0]
        parsed = parse_reference(url)
        target_type, target_id = (parsed[0], parsed[1]) if parsed is not None else (None, None)
        rows.references.append((code, target_type, target_id, url))


def _inline_resource(targets: frozenset[str], rows: _Found, code: str, value: Any) -> None:
    """A resource held in place (Bundle.entry[0].resource): indexed as a reference to its type/id."""
    if isinstance(value, dict):
        kind, ident = value.get("resourceType"), value.get("id")
        if isinstance(kind, str) and (not targets or kind in targets) and isinstance(ident, str) and ident:
            rows.references.append((code, kind, ident, None))


def _dates(read: Callable[[Any], tuple[float, float] | None]) -> Handler:
    """Open ends (+/-inf) become the stored sentinels DATE_MIN/DATE_MAX."""

    def handle(rows: _Found, code: str, value: Any) -> None:
        if (span := read(value)) is not None:
            rows.dates.append((code, max(span[0], DATE_MIN), min(span[1], DATE_MAX)))

    return handle


def _numeric(rows: _Found, code: str, value: Any) -> None:
    if (number := _number(value)) is not None:
        rows.numbers.append((code, number))


def _quantities(read: Callable[[Any], list[Quantity]]) -> Handler:
    def handle(rows: _Found, code: str, value: Any) -> None:
        for quantity in read(value):
            rows.quantities.append((code, *quantity))

    return handle


def _uri(rows: _Found, code: str, value: Any) -> None:
    if isinstance(value, str) and value:
        rows.uris.append((code, value))


def _canonical_uri(rows: _Found, code: str, value: Any) -> None:
    if isinstance(value, str) and value:
        rows.uris.append((code, value.split("|", 1)[0]))


HANDLERS: dict[tuple[str, str], Handler] = {
    **{("string", t): _string for t in STRING_PRIMITIVES},
    ("string", "HumanName"): _string_parts(("family", "text"), ("given", "prefix", "suffix")),
    ("string", "Address"): _string_parts(
        ("city", "district", "state", "postalCode", "country", "text"), ("line",)
    ),
    **{("token", t): _primitive_token for t in TOKEN_PRIMITIVES},
    ("token", "boolean"): _boolean,
    ("token", "Coding"): _coding,
    ("token", "CodeableConcept"): _concept,
    ("token", "Identifier"): _identifier,
    ("token", "ContactPoint"): _contact_point,
    **{("date", t): _dates(read) for t, read in SPANS.items()},
    **{("number", t): _numeric for t in NUMBERS},
    **{("quantity", t): _quantities(read) for t, read in QUANTITIES.items()},
    **{("uri", t): _uri for t in ("uri", "url", "oid", "uuid")},
    ("uri", "canonical"): _canonical_uri,
}


# --- composite parts --------------------------------------------------------------------------


def _pair(system: Any, code: Any) -> list[Part]:
    token = _text(code)
    return [(_text(system), token, None, None, None, None)] if token else []


def _coding_pair(v: Any) -> list[Part]:
    return _pair(v.get("system"), v.get("code")) if isinstance(v, dict) else []


def _concept_pairs(v: Any) -> list[Part]:
    return [p for c in _items(v.get("coding")) for p in _coding_pair(c)] if isinstance(v, dict) else []


def _reference_pair(v: Any) -> list[Part]:
    parsed = parse_reference(v.get("reference")) if isinstance(v, dict) else None
    return _pair(parsed[0], parsed[1]) if parsed is not None and parsed[0] else []


def _number_part(v: Any) -> list[Part]:
    number = _number(v)
    return [] if number is None else [(None, None, number, None, None, None)]


def _string_part(v: Any) -> list[Part]:
    return [(None, None, None, None, None, normalize_string(v))] if isinstance(v, str) and v else []


def _span_parts(read: Callable[[Any], tuple[float, float] | None]) -> Callable[[Any], list[Part]]:
    def parts(value: Any) -> list[Part]:
        span = read(value)
        if span is None:
            return []
        return [(None, None, None, max(span[0], DATE_MIN), min(span[1], DATE_MAX), None)]

    return parts


def _quantity_parts(read: Callable[[Any], list[Quantity]]) -> Callable[[Any], list[Part]]:
    return lambda v: [(system, code or unit, n, None, None, None) for n, system, code, unit in read(v)]


PART_READERS: dict[tuple[str, str], Callable[[Any], list[Part]]] = {
    **{("token", t): lambda v: _pair(None, v) for t in TOKEN_PRIMITIVES},
    ("token", "boolean"): lambda v: _pair(None, ("false", "true")[v]) if isinstance(v, bool) else [],
    ("token", "Coding"): _coding_pair,
    ("token", "CodeableConcept"): _concept_pairs,
    ("reference", "Reference"): _reference_pair,
    **{("string", t): _string_part for t in STRING_PRIMITIVES},
    **{("number", t): _number_part for t in NUMBERS},
    **{("date", t): _span_parts(read) for t, read in SPANS.items()},
    **{("quantity", t): _quantity_parts(read) for t, read in QUANTITIES.items()},
}
