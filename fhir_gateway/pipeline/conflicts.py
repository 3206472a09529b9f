"""Conflict resolution between two sources' versions of one resource, and the review queue.

Pure part — `resolve(current, incoming, held, new, protected=...)`: which value of each differing
top-level element is kept, by rule, in this order:

1. authority: a value held by the system of record (`protected` elements of a version the SoR
   wrote) beats a non-authoritative one; an authoritative incoming value beats a non-authoritative
   held one;
2. source timestamp: between equals, the value the source says is newer wins (a v2 message's
   MSH-7, a Bundle.timestamp, a client's meta.lastUpdated; the receive time when the source gives
   none, so an ordinary update simply wins);
3. manual: an exact tie goes to the review queue; the current value stays until a reviewer decides.

The same source updating its own data is never a conflict. The loser is never lost: when the
incoming value loses, it is kept in the `conflicts` table (status `auto`, or `open` when queued);
when it wins, the losing value is the previous version, kept in history.

Queue part — `record`, `open_conflicts`, `get`, `mark_resolved`: the `conflicts` table
(pipeline/tables.py), inside the caller's transaction where a write is involved.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from sqlalchemy import CursorResult, func, insert, select, update

from fhir_gateway.fhir.json import Resource
from fhir_gateway.pipeline.tables import conflicts
from fhir_gateway.store.database import Connection, insert_row
from fhir_gateway.store.store import Store

# Elements that say nothing about the subject: never compared, never merged.
NOT_DATA = frozenset({"resourceType", "id", "meta", "text", "implicitRules", "language"})
STATUSES = ("open", "resolved", "auto")


@dataclass(frozen=True, slots=True)
class Claim:
    """Who stands behind a version: its source, whether that source is the system of record for the
    resource's category, and when the source says its data was current (epoch seconds)."""

    source: str
    authoritative: bool
    time: float | None


@dataclass(slots=True)
class Resolution:
    """The resource to store and what happened to each contested element."""

    resource: Resource
    kept: dict[str, str] = field(default_factory=dict)  # element -> reason the current value won
    taken: dict[str, str] = field(default_factory=dict)  # element -> reason the incoming value won
    queued: list[str] = field(default_factory=list)  # elements waiting for a reviewer

    @property
    def merged(self) -> bool:
        """The stored resource combines two sources' values."""
        return bool(self.kept or self.queued)

    def losing(self, incoming: Mapping[str, Any]) -> dict[str, Any]:
        """The incoming values that did not make it into the stored resource (absent ones are None)."""
        return {name: incoming.get(name) for name in (*self.kept, *self.queued)}


def differing(current: Mapping[str, Any], incoming: Mapping[str, Any]) -> list[str]:
    """Top-level data elements whose values differ (absent on one side counts), in a stable order."""
    names = dict.fromkeys(k for k in (*current, *incoming) if k not in NOT_DATA)
    return [name for name in names if current.get(name) != incoming.get(name)]


def resolve(
    current: Mapping[str, Any],
    incoming: Mapping[str, Any],
    held: Claim,
    new: Claim,
    *,
    protected: Collection[str] | None,
    held_by_sor: bool,
) -> Resolution:
    """Settle each differing element by authority, then source timestamp, else leave it queued.

    `protected` names the SoR's elements of the category (None: every element); `held_by_sor` says
    the current version carries SoR data (its protected elements are authoritative).
    """
    result = Resolution(dict(incoming))
    if held.source == new.source:  # a source correcting its own data: never a conflict
        result.taken.update(dict.fromkeys(differing(current, incoming), "same-source"))
        return result
    for name in differing(current, incoming):
        held_auth = held_by_sor and (protected is None or name in protected)
        if held_auth and not new.authoritative:
            result.kept[name] = "authority"
        elif new.authoritative and not held_auth:
            result.taken[name] = "authority"
        elif held.time is not None and new.time is not None and held.time > new.time:
            result.kept[name] = "timestamp"
        elif held.time is not None and new.time is not None and held.time == new.time:
            result.queued.append(name)
        else:
            result.taken[name] = "timestamp"
    for name in (*result.kept, *result.queued):
        if name in current:
            result.resource[name] = current[name]
        else:
            result.resource.pop(name, None)
    return result


# --- the queue ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConflictRow:
    id: int
    created: float
    status: str
    category: str
    res_type: str
    res_id: str
    base_version: int
    source: str
    source_time: float | None
    reason: str
    elements: list[str]
    proposed: dict[str, Any]
    decision: dict[str, str] | None
    resolved_at: float | None
    resolved_by: str | None
    result_version: int | None


def _row(row: Any) -> ConflictRow:
    return ConflictRow(
        id=row.id,
        created=row.created,
        status=row.status,
        category=row.category,
        res_type=row.res_type,
        res_id=row.res_id,
        base_version=row.base_version,
        source=row.source,
        source_time=row.source_time,
        reason=row.reason,
        elements=orjson.loads(row.elements),
        proposed=orjson.loads(row.proposed),
        decision=orjson.loads(row.decision) if row.decision is not None else None,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
        result_version=row.result_version,
    )


# Built once: a statement made per call costs SQLAlchemy its construction and cache key each time.
_INSERT_CONFLICT = insert(conflicts)
_INSERT_CONFLICT_RETURNING = _INSERT_CONFLICT.returning(conflicts.c.id)


async def record(
    conn: Connection,
    *,
    status: str,
    category: str,
    res_type: str,
    res_id: str,
    base_version: int,
    claim: Claim,
    reason: str,
    proposed: Mapping[str, Any],
    now: float | None = None,
) -> int:
    """Insert one conflict (in the write's own transaction); returns its id."""
    return await insert_row(
        conn,
        _INSERT_CONFLICT,
        {
            "created": time.time() if now is None else now,
            "status": status,
            "category": category,
            "res_type": res_type,
            "res_id": res_id,
            "base_version": base_version,
            "source": claim.source[:255],
            "source_time": claim.time,
            "reason": reason,
            "elements": orjson.dumps(list(proposed)).decode(),
            "proposed": orjson.dumps(dict(proposed)).decode(),
        },
        returning=_INSERT_CONFLICT_RETURNING,
    )


async def open_conflicts(
    store: Store, *, status: str = "open", res_type: str | None = None, res_id: str | None = None
) -> list[ConflictRow]:
    """Conflicts by status (oldest first), optionally for one resource."""
    stmt = select(conflicts).where(conflicts.c.status == status)
    if res_type is not None:
        stmt = stmt.where(conflicts.c.res_type == res_type)
    if res_id is not None:
        stmt = stmt.where(conflicts.c.res_id == res_id)
    async with store.reader() as conn:
        rows = (await conn.execute(stmt.order_by(conflicts.c.created, conflicts.c.id))).all()
    return [_row(r) for r in rows]


async def count(store: Store, status: str = "open") -> int:
    async with store.reader() as conn:
        result = await conn.execute(
            select(func.count()).select_from(conflicts).where(conflicts.c.status == status)
        )
    return int(result.scalar_one())


async def get(store: Store, conflict_id: int) -> ConflictRow | None:
    async with store.reader() as conn:
        row = (await conn.execute(select(conflicts).where(conflicts.c.id == conflict_id))).first()
    return _row(row) if row is not None else None


async def mark_resolved(
    conn: Connection,
    conflict_id: int,
    *,
    decision: Mapping[str, str],
    by: str,
    result_version: int | None,
    now: float | None = None,
) -> bool:
    """Close an open conflict (inside the transaction that applied the choice); False when it was
    no longer open (resolved concurrently): the caller rolls back."""
    result = await conn.execute(
        update(conflicts)
        .where(conflicts.c.id == conflict_id, conflicts.c.status == "open")
        .values(
            status="resolved",
            decision=orjson.dumps(dict(decision)).decode(),
            resolved_at=time.time() if now is None else now,
            resolved_by=by[:255],
            result_version=result_version,
        )
    )
    return cast(CursorResult[Any], result).rowcount == 1
