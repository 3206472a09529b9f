"""Running a parsed search against the store and answering it as a searchset Bundle.

Filtering happens inside the SQL (query.where_clause), before paging, so `total`, page sizes and
next/prev links only ever reflect rows the query admits. `_include`/`_revinclude` run after the page
is fixed, a few rounds deep for `:iterate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, exists, func, select

from fhir_gateway.fhir import elements as subsetting
from fhir_gateway.fhir.json import Resource
from fhir_gateway.privacy.compartment import COMPARTMENT_PARAM
from fhir_gateway.store.database import Connection
from fhir_gateway.store.schema import idx_reference, resources
from fhir_gateway.store.search.params import ParsedSearch
from fhir_gateway.store.search.query import Visible, everything, include_step, order_by, where_clause
from fhir_gateway.store.store import Store, StoredVersion, current_from_row, select_current

MAX_INCLUDE_ROUNDS = 4


@dataclass(slots=True)
class Page:
    matches: list[StoredVersion]
    total: int | None
    includes: list[StoredVersion] = field(default_factory=list)


async def run(store: Store, parsed: ParsedSearch, *, visible: Visible = everything) -> Page:
    """One page of matches (and its includes), counting and including only `visible` rows."""
    where = where_clause(parsed, visible=visible)
    async with store.reader(offload=True) as conn:
        if parsed.summary == "count" or parsed.count == 0:
            wanted = parsed.total != "none" or parsed.summary == "count"
            return Page([], await _count(conn, where) if wanted else None)
        stmt = (
            select_current()
            .where(where)
            .order_by(*order_by(parsed))
            .limit(parsed.count)
            .offset(parsed.offset)
        )
        matches = [current_from_row(r) for r in (await conn.execute(stmt)).all()]
        total: int | None = None
        if parsed.total != "none":
            # A page that is not full, and is not past the end, already tells the total exactly.
            last_page = len(matches) < parsed.count and (matches or parsed.offset == 0)
            total = parsed.offset + len(matches) if last_page else await _count(conn, where)
        page = Page(matches, total)
        if matches and (parsed.includes or parsed.revincludes):
            seen = {v.pk for v in matches}
            frontier = [v.pk for v in matches if v.pk is not None]
            for round_no in range(MAX_INCLUDE_ROUNDS):
                stmt_inc = include_step(parsed, frontier, iterate_only=round_no > 0, visible=visible)
                if stmt_inc is None:
                    break
                new = [current_from_row(r) for r in (await conn.execute(stmt_inc)).all() if r.pk not in seen]
                if not new:
                    break
                seen.update(v.pk for v in new)
                page.includes.extend(new)
                frontier = [v.pk for v in new if v.pk is not None]
        return page


async def compartment(
    store: Store, patient_id: str, *, count: int, offset: int, visible: Visible = everything
) -> tuple[list[StoredVersion], int]:
    """One page of everything in a patient's compartment (Patient/$everything), and the total."""
    ref = idx_reference.alias()
    member = exists().where(
        ref.c.res_pk == resources.c.pk, ref.c.param == COMPARTMENT_PARAM, ref.c.target_id == patient_id
    )
    where = and_(resources.c.deleted.is_(False), member, visible(resources))
    stmt = select_current().where(where).order_by(resources.c.res_type, resources.c.pk)
    async with store.reader(offload=True) as conn:
        rows = (await conn.execute(stmt.limit(count).offset(offset))).all()
        return [current_from_row(r) for r in rows], await _count(conn, where)


async def count(store: Store, where: ColumnElement[bool]) -> int:
    """How many current resources satisfy `where`."""
    async with store.reader(offload=True) as conn:
        return await _count(conn, where)


async def _count(conn: Connection, where: ColumnElement[bool]) -> int:
    return int((await conn.execute(select(func.count()).select_from(resources).where(where))).scalar_one())


def bundle(parsed: ParsedSearch, page: Page, base: str) -> Resource:
    url = f"{base}/{parsed.resource_type}"

    def link_for(offset: int) -> str:
        return f"{url}?{urlencode(parsed.link_params(offset=offset))}"

    has_more = (
        page.total > parsed.offset + len(page.matches)
        if page.total is not None
        else (len(page.matches) == parsed.count and parsed.count > 0)
    )
    result: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        result["total"] = page.total
    result["link"] = links(link_for, parsed.offset, parsed.count, has_more)
    entries = [_entry(v, base, "match", parsed) for v in page.matches]
    entries += [_entry(v, base, "include", parsed) for v in page.includes]
    if parsed.warnings:
        outcome = {"resourceType": "OperationOutcome", "issue": [w.to_fhir() for w in parsed.warnings]}
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    result["entry"] = entries
    return result


def links(link_for: Callable[[int], str], offset: int, count: int, has_more: bool) -> list[dict[str, str]]:
    """self/first/previous/next links; they carry offset and the full query, so they never expire."""
    out = [{"relation": "self", "url": link_for(offset)}, {"relation": "first", "url": link_for(0)}]
    if offset > 0:
        out.append({"relation": "previous", "url": link_for(max(0, offset - count))})
    if has_more:
        out.append({"relation": "next", "url": link_for(offset + count)})
    return out


def page_links(
    url: str, keep: Sequence[tuple[str, str]], offset: int, count: int, total: int
) -> list[dict[str, str]]:
    """Links for a history Bundle, whose query is just `_since` and the pinned `_before`."""

    def link_for(off: int) -> str:
        return f"{url}?{urlencode([*keep, ('_count', str(count)), ('_offset', str(off))])}"

    return links(link_for, offset, count, total > offset + count)


def _entry(v: StoredVersion, base: str, mode: str, parsed: ParsedSearch) -> Resource:
    resource = v.resource()
    if parsed.summary and parsed.summary != "false":
        resource = subsetting.summary(resource, parsed.summary)
    elif parsed.elements:
        resource = subsetting.elements(resource, list(parsed.elements))
    return {"fullUrl": f"{base}/{v.res_type}/{v.res_id}", "resource": resource, "search": {"mode": mode}}
