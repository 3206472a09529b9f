"""A ParsedSearch as SQLAlchemy Core: the WHERE clause, the ORDER BY and the include rounds.

Every criterion is an EXISTS (or NOT EXISTS) sub-query on one index table keyed by `resources.pk`,
so the whole filter sits inside the one SQL statement that is counted and paged: nothing is
filtered afterwards.

Access policy goes in the same SQL. `visible` (a function from a `resources` row to a condition,
e.g. the PDP's compiled label/consent filter) is ANDed onto the searched row and onto every other
resource row the query looks at: chain targets, `_has` sources and included resources. So a
resource the caller may not see can neither match through a chain or `_has` (which would let the
caller infer its values) nor be included.

Each sub-query uses fresh aliases of the tables it reads. SQLAlchemy correlates a sub-query with
any enclosing FROM that names the same table, which would silently tie a `_has` inside a chain to
the wrong rows if two levels shared a table object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)

from fhir_gateway.definitions.search_parameters import get
from fhir_gateway.store.schema import (
    idx_composite,
    idx_date,
    idx_number,
    idx_quantity,
    idx_reference,
    idx_string,
    idx_token,
    idx_uri,
    resources,
)
from fhir_gateway.store.search import conditions as cond
from fhir_gateway.store.search import values as v
from fhir_gateway.store.search.criteria import Chain, Criterion, Has, Match, Missing
from fhir_gateway.store.search.params import Include, ParsedSearch

TABLES = {
    "string": idx_string,
    "token": idx_token,
    "reference": idx_reference,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "uri": idx_uri,
    "composite": idx_composite,
}
SORT_COLUMNS = {"string": "value", "token": "code", "number": "value", "quantity": "value", "uri": "value"}

# The access policy as SQL: given `resources` or an alias of it, the condition for rows the caller may see.
Visible = Callable[[FromClause], ColumnElement[bool]]


def everything(_res: FromClause) -> ColumnElement[bool]:
    return true()


def where_clause(parsed: ParsedSearch, *, visible: Visible = everything) -> ColumnElement[bool]:
    """Current, non-deleted, visible resources of the searched type that satisfy every criterion.

    When a criterion already limits the rows to index rows of this type (`pk IN (...)`), the type
    test is left out: it adds nothing, and without it the planner drives the query from that index
    instead of scanning every resource of the type.
    """
    narrowed = any(_by_index(c) for c in parsed.filters)
    return and_(
        true() if narrowed else resources.c.res_type == parsed.resource_type,
        resources.c.deleted.is_(False),
        visible(resources),
        *(criterion(c, resources, visible, res_type=parsed.resource_type) for c in parsed.filters),
    )


def _by_index(crit: Criterion) -> bool:
    return isinstance(crit, Match) and crit.code not in ("_id", "_lastUpdated") and crit.modifier != "not"


def criterion(
    crit: Criterion, res: FromClause, visible: Visible = everything, *, res_type: str | None = None
) -> ColumnElement[bool]:
    """One criterion about the resource row `res` (the searched table, or a chain/_has alias).

    With `res_type` known, a value match becomes `pk IN (index rows of that type and parameter)`,
    which the (res_type, param, value) lookup index answers directly; a correlated EXISTS would be
    evaluated once per resource of the type, i.e. a scan of the whole type per search.
    """
    match crit:
        case Missing():
            return _missing(crit, res)
        case Chain():
            return or_(
                *(_chain_step(crit.code, target, inner, res, visible) for target, inner in crit.targets)
            )
        case Has():
            return _has(crit, res, visible)
        case Match(code="_id"):
            ids = [val.code for val in crit.values if isinstance(val, v.TokenValue)]
            return res.c.res_id.not_in(ids) if crit.modifier == "not" else res.c.res_id.in_(ids)
        case Match(code="_lastUpdated"):
            span = cond.Span(res.c.last_updated, res.c.last_updated, point=True)
            return or_(*(cond.date(span, val) for val in crit.values if isinstance(val, v.DateValue)))
        case _:
            table = TABLES[crit.type].alias()
            param = f"{crit.code}:of-type" if crit.modifier == "of-type" else crit.code
            matches = or_(*(_value(table, crit.modifier, val) for val in crit.values))
            if res_type is not None:
                pks = select(table.c.res_pk).where(
                    table.c.res_type == res_type, table.c.param == param, matches
                )
                return res.c.pk.not_in(pks) if crit.modifier == "not" else res.c.pk.in_(pks)
            found = exists().where(table.c.res_pk == res.c.pk, table.c.param == param, matches)
            return not_(found) if crit.modifier == "not" else found


def _missing(crit: Missing, res: FromClause) -> ColumnElement[bool]:
    if crit.code in ("_id", "_lastUpdated"):
        return false() if crit.missing else true()
    table = TABLES[crit.type].alias()
    found = exists().where(table.c.res_pk == res.c.pk, table.c.param == crit.code)
    return not_(found) if crit.missing else found


def _chain_step(
    code: str, target_type: str, inner: Criterion, res: FromClause, visible: Visible
) -> ColumnElement[bool]:
    """Some `target_type` resource that `res` references through `code` satisfies `inner`."""
    ref = idx_reference.alias()
    target = resources.alias()
    return (
        select(literal(1))
        .select_from(
            ref.join(target, and_(target.c.res_type == ref.c.target_type, target.c.res_id == ref.c.target_id))
        )
        .where(
            ref.c.res_pk == res.c.pk,
            ref.c.param == code,
            ref.c.target_type == target_type,
            target.c.deleted.is_(False),
            visible(target),
            criterion(inner, target, visible, res_type=target_type),
        )
        .exists()
    )


def _has(crit: Has, res: FromClause, visible: Visible) -> ColumnElement[bool]:
    """Some `source_type` resource refers to `res` through `ref_code` and satisfies the inner criterion.

    Index rows exist only for current, non-deleted versions, so a deleted source never counts.
    """
    ref = idx_reference.alias()
    source = resources.alias()
    return (
        select(literal(1))
        .select_from(ref.join(source, source.c.pk == ref.c.res_pk))
        .where(
            ref.c.res_type == crit.source_type,
            ref.c.param == crit.ref_code,
            ref.c.target_type == res.c.res_type,
            ref.c.target_id == res.c.res_id,
            visible(source),
            criterion(crit.inner, source, visible, res_type=crit.source_type),
        )
        .exists()
    )


def _value(table: FromClause, modifier: str | None, val: v.Value) -> ColumnElement[bool]:
    c = table.c
    match val:
        case v.StringValue(text=text) if modifier == "text":
            return c.text.contains(text, autoescape=True)
        case v.StringValue(text=text):
            return cond.string(c.exact if modifier == "exact" else c.value, modifier, text)
        case v.TokenValue():
            return cond.token(c.system, c.code, val)
        case v.ReferenceValue():
            return cond.reference(c.target_type, c.target_id, c.url, val)
        case v.DateValue():
            return cond.date(cond.Span(c.low, c.high), val)
        case v.NumberValue():
            return cond.number(c.value, val)
        case v.QuantityValue():
            return cond.quantity(c.value, c.system, c.code, c.unit, val)
        case v.UriValue(uri=uri):
            return cond.uri(c.value, modifier, uri)
        case _:
            assert isinstance(val, v.CompositeValue)
            return _composite(table, val)


def _composite(table: FromClause, val: v.CompositeValue) -> ColumnElement[bool]:
    """Components in order: c1 (token or reference), c2 (any value kind), c3 (a number)."""
    c = table.c
    first, second, *third = val.parts
    conditions = [_component(c.c1_system, c.c1_code, first)]
    match second:
        case v.DateValue():
            conditions.append(cond.date(cond.Span(c.c2_low, c.c2_high), second))
        case v.NumberValue():
            conditions.append(cond.number(c.c2_num, second))
        case v.QuantityValue():
            conditions.append(cond.quantity(c.c2_num, c.c2_system, c.c2_code, None, second))
        case v.StringValue(text=text):
            conditions.append(cond.string(c.c2_text, None, text))
        case _:
            conditions.append(_component(c.c2_system, c.c2_code, second))
    for extra in third:
        assert isinstance(extra, v.NumberValue), "a third composite component is a number"
        conditions.append(cond.number(c.c3_num, extra))
    return and_(*conditions)


def _component(system: cond.Column, code: cond.Column, val: v.Value) -> ColumnElement[bool]:
    """A token component, or a reference stored as system=type, code=id."""
    if isinstance(val, v.ReferenceValue):
        return cond.reference(system, code, None, val)
    assert isinstance(val, v.TokenValue)
    return cond.token(system, code, val)


def order_by(parsed: ParsedSearch) -> list[ColumnElement[Any]]:
    """`_sort` keys, then `resources.pk` so pages never overlap or skip.

    A parameter with several values sorts by its least value ascending and its greatest descending
    (dates: earliest start / latest end). Resources without a value come last either way.
    """
    keys: list[ColumnElement[Any]] = []
    for code, descending in parsed.sort:
        column = _sort_column(parsed.resource_type, code, descending)
        keys.append((column.desc() if descending else column.asc()).nulls_last())
    keys.append(resources.c.pk.asc())
    return keys


def _sort_column(resource_type: str, code: str, descending: bool) -> ColumnElement[Any]:
    if code == "_id":
        return resources.c.res_id
    if code == "_lastUpdated":
        return resources.c.last_updated
    param = get(resource_type, code)
    assert param is not None, "params.py admits only known sort parameters"
    table = TABLES[param.type].alias()
    if param.type == "date":
        value = func.max(table.c.high) if descending else func.min(table.c.low)
    else:
        column = table.c[SORT_COLUMNS[param.type]]
        value = func.max(column) if descending else func.min(column)
    return (
        select(value)
        .where(table.c.res_pk == resources.c.pk, table.c.param == code)
        .correlate(resources)
        .scalar_subquery()
    )


def include_step(
    parsed: ParsedSearch, pks: Sequence[int], *, iterate_only: bool, visible: Visible = everything
) -> Select[Any] | None:
    """Rows of `resources` that the `_include`/`_revinclude`s reach from the resources `pks`.

    The first round starts from the page's matches and applies every include; later rounds start
    from the resources the previous round added and apply only the `:iterate` ones, so the caller
    loops until a round adds nothing new. None when there is nothing to do.
    """
    includes = [i for i in parsed.includes if i.iterate or not iterate_only]
    revincludes = [i for i in parsed.revincludes if i.iterate or not iterate_only]
    if not pks or not (includes or revincludes):
        return None
    reached = [_included(i, pks) for i in includes] + [_revincluded(i, pks) for i in revincludes]
    return select(resources).where(
        resources.c.deleted.is_(False),
        visible(resources),
        resources.c.pk.not_in(list(pks)),
        or_(*reached),
    )


def _included(inc: Include, pks: Sequence[int]) -> ColumnElement[bool]:
    """`resources` is a target of one of `pks` through the include's reference parameter."""
    ref = idx_reference.alias()
    conditions = [
        ref.c.res_pk.in_(list(pks)),
        ref.c.target_type == resources.c.res_type,
        ref.c.target_id == resources.c.res_id,
    ]
    conditions += _include_filters(ref, inc)
    if inc.target_type is not None:
        conditions.append(ref.c.target_type == inc.target_type)
    return exists().where(*conditions)


def _revincluded(inc: Include, pks: Sequence[int]) -> ColumnElement[bool]:
    """`resources` refers to one of `pks` through the revinclude's reference parameter."""
    ref = idx_reference.alias()
    target = resources.alias()
    conditions = [
        ref.c.res_pk == resources.c.pk,
        target.c.pk.in_(list(pks)),
        ref.c.target_type == target.c.res_type,
        ref.c.target_id == target.c.res_id,
    ]
    conditions += _include_filters(ref, inc)
    if inc.target_type is not None:
        conditions.append(target.c.res_type == inc.target_type)
    return select(literal(1)).select_from(ref, target).where(*conditions).exists()


def _include_filters(ref: FromClause, inc: Include) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if inc.source_type is not None:
        conditions.append(ref.c.res_type == inc.source_type)
    if inc.param is not None:
        conditions.append(ref.c.param == inc.param)
    return conditions
