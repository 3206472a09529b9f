"""The change feed: every version of a governed resource, per data category, in commit order, with a
durable cursor (`GET [base]/$changes?category=..&_cursor=N`, api/changes.py).

    append(tx, category, res_type, res_id, version)   the authority stage, in the version's own
                                                       transaction: the row commits with the version
    seal(store, category)                              give committed rows their positions
    page(store, category, after, count, types, visible) the versions at positions > after, in order

Why positions are given by readers, not by writers. An autoincrement id is handed out when a row is
inserted, not when its transaction commits: on PostgreSQL a transaction that took id 7 may commit
after one that took id 8. A reader that saw 8 and moved its cursor past it would never see 7: a
cursor over insertion ids is not gap-free. Serialising writers on a counter would make it so, at
the price of one global lock held from the first governed write of a submit to its commit.

Instead a row is inserted with no position (`seq` NULL). Before a read, `seal` takes the
category's head row lock, selects the committed rows that have no position yet (in insertion
order) and numbers them after the head, then commits. A row committed later is invisible to that
seal and gets a higher position in a later one. So positions are

- monotonic and gap-free: each seal numbers head+1..head+k, and rows are never renumbered;
- final: a reader only reads sealed positions, which no later commit can precede;
- in commit order between seals, and per resource always (version n+1 of a resource is written
  under the row lock of version n, so it is inserted after n committed).

Under READ COMMITTED every statement after the lock sees what was committed before it, including
the previous seal; SQLite has one writer, where the same steps simply run in turn. Writers take no
lock of their own; a seal costs readers one short write transaction.

Rows whose version was never stored (a stage that later found nothing to write) are not in the
history and are dropped by the read's join, so they take a position nobody sees.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import FromClause

from fhir_gateway.pipeline.tables import change_feed, change_feed_head
from fhir_gateway.store.database import write_rows
from fhir_gateway.store.schema import resource_history, resources
from fhir_gateway.store.store import (
    Store,
    StoredVersion,
    Transaction,
    _history_from_row,  # the history row → version mapping, once
)

SEAL_BATCH = 10_000  # rows numbered per seal; the rest get theirs in the next one
Visible = Callable[[FromClause], ColumnElement[bool]]

_NUMBER = update(change_feed).where(change_feed.c.id == bindparam("key")).values(seq=bindparam("position"))
_APPEND = change_feed.insert()  # built once: it runs with most writes


async def append(tx: Transaction, category: str, res_type: str, res_id: str, version_id: int) -> None:
    """Note a version in its category's feed, in the transaction that writes it."""
    row = {"category": category, "res_type": res_type, "res_id": res_id, "version_id": version_id}
    await write_rows(tx.conn, _APPEND, [row])


async def seal(store: Store, category: str) -> int:
    """Number the category's committed, unnumbered rows after its head; returns the new head."""
    async with store.transaction() as tx:
        conn = tx.conn
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(
            dialect.insert(change_feed_head)
            .values(category=category, seq=0)
            .on_conflict_do_nothing(index_elements=["category"])
        )
        head_row = select(change_feed_head.c.seq).where(change_feed_head.c.category == category)
        head = int((await conn.execute(head_row.with_for_update())).scalar_one())
        unnumbered = (
            select(change_feed.c.id)
            .where(and_(change_feed.c.category == category, change_feed.c.seq.is_(None)))
            .order_by(change_feed.c.id)
            .limit(SEAL_BATCH)
        )
        ids = list((await conn.execute(unnumbered)).scalars())
        if not ids:
            return head
        await conn.execute(_NUMBER, [{"key": key, "position": head + n} for n, key in enumerate(ids, 1)])
        head += len(ids)
        await conn.execute(
            update(change_feed_head).where(change_feed_head.c.category == category).values(seq=head)
        )
        return head


async def page(
    store: Store,
    category: str,
    *,
    after: int,
    count: int,
    types: Collection[str],
    visible: Visible | None,
) -> list[tuple[int, StoredVersion]]:
    """Up to `count` sealed (position, version) pairs after `after`, in feed order, of the given
    resource types; `visible` (the caller's access rule over the current resource, as for
    `_history`) keeps only changes of resources the caller may see."""
    f, h = change_feed.c, resource_history.c
    conditions: list[Any] = [
        f.category == category,
        f.seq > after,
        f.res_type.in_(list(types)),
    ]
    if visible is not None:
        cur = resources.alias()
        conditions.append(
            exists().where(cur.c.res_type == f.res_type, cur.c.res_id == f.res_id, visible(cur))
        )
    stmt = (
        select(f.seq, resource_history)
        .join(
            resource_history,
            and_(h.res_type == f.res_type, h.res_id == f.res_id, h.version_id == f.version_id),
        )
        .where(and_(*conditions))
        .order_by(f.seq)
        .limit(count)
    )
    async with store.reader(offload=True) as conn:
        rows = (await conn.execute(stmt)).all()
    return [(int(row.seq), _history_from_row(row)) for row in rows]
