"""SQL conditions for one search value against the index columns that hold it (R4 search.html §3.1.1).

Each function takes the columns rather than a table, because the same value kinds are compared in
their own index table and inside a composite row (`c2_num`, `c2_low`/`c2_high` ...). Every
condition here is plain comparison and LIKE/substr, so it means the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, func, literal, not_, or_, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from fhir_gateway.store.search.values import DateValue, NumberValue, QuantityValue, ReferenceValue, TokenValue

Column = ColumnElement[Any]


@dataclass(frozen=True, slots=True)
class Span:
    """The stored side of a date comparison: a half-open range [low, high), or a point in time.

    A point p behaves as the range [p, p + epsilon): `high <= x` becomes `p < x` and `high > x`
    becomes `p >= x`, so `resources.last_updated` is compared with the same rules as a range.
    """

    low: Column
    high: Column
    point: bool = False

    def high_le(self, bound: float) -> ColumnElement[bool]:
        return self.low < bound if self.point else self.high <= bound

    def high_gt(self, bound: float) -> ColumnElement[bool]:
        return self.low >= bound if self.point else self.high > bound


def number(col: Column, v: NumberValue) -> ColumnElement[bool]:
    """eq/ne/ge/le/ap honour the implicit precision range; gt/lt/sa/eb compare with the value itself."""
    inside = and_(col >= v.low, col < v.high)
    match v.prefix:
        case "eq":
            return inside
        case "ne":
            return or_(col < v.low, col >= v.high)
        case "gt" | "sa":
            return col > v.value
        case "lt" | "eb":
            return col < v.value
        case "ge":
            return col >= v.low
        case "le":
            return col < v.high
        case _:  # ap: [low, high] was widened by 10% when parsed
            return and_(col >= v.low, col <= v.high)


def date(span: Span, v: DateValue) -> ColumnElement[bool]:
    """Range against range, as the spec's prefix table says (target = stored, search = v)."""
    within = and_(span.low >= v.low, span.high_le(v.high))
    match v.prefix:
        case "eq":
            return within
        case "ne":
            return not_(within)
        case "gt":
            return span.high_gt(v.high)
        case "lt":
            return span.low < v.low
        case "ge":
            return or_(span.high_gt(v.high), within)
        case "le":
            return or_(span.low < v.low, within)
        case "sa":
            return span.low >= v.high
        case "eb":
            return span.high_le(v.low)
        case _:  # ap: overlap with the widened range
            return and_(span.low < v.high, span.high_gt(v.low))


def token(system: Column, code: Column, v: TokenValue) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if v.no_system:
        conditions.append(system.is_(None))
    elif v.system is not None:
        conditions.append(system == v.system)
    if v.code is not None:
        conditions.append(code == v.code)
    return and_(*conditions)


def token_matches(system: str | None, code: str | None, v: TokenValue) -> bool:
    """`token` for one index row in hand (the policy decision point's per-resource form); kept next
    to the SQL so the two cannot drift apart."""
    if v.no_system and system is not None:
        return False
    if v.system is not None and system != v.system:
        return False
    return v.code is None or code == v.code


def reference(
    target_type: Column, target_id: Column, url: Column | None, v: ReferenceValue
) -> ColumnElement[bool]:
    """`Type/id`, a bare id (any type), or an absolute URL (as written, or by its `Type/id` tail)."""
    conditions: list[ColumnElement[bool]] = []
    if v.target_type is not None:
        conditions.append(target_type == v.target_type)
    if v.target_id is not None:
        conditions.append(target_id == v.target_id)
    by_id = and_(*conditions) if conditions else None
    if v.url is None or url is None:
        assert by_id is not None, "a reference value has an id or a URL"
        return by_id
    return or_(url == v.url, by_id) if by_id is not None else url == v.url


def quantity(
    value: Column, system: Column, code: Column, unit: Column | None, v: QuantityValue
) -> ColumnElement[bool]:
    """The number with its prefix; with no system the code may match the coded unit or the unit text."""
    conditions = [number(value, v.number)]
    if v.system is not None:
        conditions.append(system == v.system)
    if v.code is not None:
        code_match = code == v.code
        if v.system is None and unit is not None:
            code_match = or_(code_match, unit == v.code)
        conditions.append(code_match)
    return and_(*conditions)


def string(col: Column, modifier: str | None, text: str) -> ColumnElement[bool]:
    """Starts-with by default, substring for `:contains`, equality for `:exact` (on the exact column)."""
    if modifier == "contains":
        return col.contains(text, autoescape=True)
    if modifier == "exact":
        return col == text
    return and_(PrefixRange(col, text), col.startswith(text, autoescape=True))


class PrefixRange(ColumnElement[bool]):
    """`col >= text AND col < text || U+10FFFF`: the index-usable half of a starts-with match.

    SQLite cannot use an index for LIKE (it is case-insensitive there), but it can for a range under
    its binary collation, which turns a prefix search from a scan of every value of the parameter
    into an index seek. The range is only emitted for SQLite: under PostgreSQL's locale collations a
    code point range is not a prefix range, so there it compiles to TRUE and LIKE alone decides.
    """

    inherit_cache = True
    type = Boolean()
    # The range is built here as ordinary clauses, so the statement cache key and the bound values
    # come from it like from any other condition.
    _traverse_internals = [("range", InternalTraversal.dp_clauseelement)]

    def __init__(self, col: Column, text: str) -> None:
        self.range = and_(col >= text, col < text + "\U0010ffff")


@compiles(PrefixRange)
def _prefix_range_default(element: PrefixRange, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(true(), **kw)


@compiles(PrefixRange, "sqlite")
def _prefix_range_sqlite(element: PrefixRange, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.range, **kw)


def uri(col: Column, modifier: str | None, text: str) -> ColumnElement[bool]:
    """Exact; `:below` = the stored URI starts with the value; `:above` = the value starts with it.

    substr() instead of LIKE: URIs are case-sensitive and SQLite's LIKE is not.
    """
    if modifier == "below":
        return func.substr(col, 1, len(text)) == text
    if modifier == "above":
        return and_(func.length(col) > 0, func.substr(literal(text), 1, func.length(col)) == col)
    return col == text
