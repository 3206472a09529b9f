"""The hash chain: sealing events, appending them in order, and verifying the chain afterwards.

Each stored event carries `hash = SHA-256(prev_hash, seq, canonical event bytes)` (see `chain_hash`),
where `prev_hash` is the previous event's hash in the same chain and `seq` runs 1, 2, 3 ... So:

- an edited event no longer matches its own hash                        -> "edited"
- an event edited *and* re-hashed no longer matches the next link       -> "rehashed"
- a deleted event leaves a gap in `seq`, or the last one disagrees with the chain head -> "deleted"
- two events swapped sit after the wrong predecessor                    -> "reordered"
- a link pointing at no event (a deletion with the rest renumbered)     -> "unlinked"

`verify` names the first broken event by seq and AuditEvent id. The chain head row is an anchor
inside the database; whoever can rewrite the whole tail *and* the head can forge a consistent
chain, so operators who need more keep the printed head hash outside the database.

Writers append under a lock: PostgreSQL `pg_advisory_xact_lock` plus `SELECT ... FOR UPDATE` on the
head row, so several server processes share one chain; on SQLite the store's single writer
(BEGIN IMMEDIATE) serialises appends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, text, update

from fhir_gateway.audit.events import instant
from fhir_gateway.audit.tables import audit_chain_heads, audit_event_index, audit_events
from fhir_gateway.fhir.dates import date_range
from fhir_gateway.fhir.ids import uuid7_hex
from fhir_gateway.store.database import Connection, write_rows
from fhir_gateway.store.store import Store

Resource = dict[str, Any]

GENESIS = "0" * 64  # prev_hash of the first event of every chain
VERIFY_PAGE = 1000


def canonical(event: Resource) -> bytes:
    """The bytes that are hashed and stored: orjson with sorted keys, so equal events hash equal."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, seq: int, body: bytes) -> str:
    """SHA-256 over prev_hash (hex), seq (decimal) and the canonical event bytes, NUL-separated."""
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(b"\x00")
    digest.update(str(seq).encode("ascii"))
    digest.update(b"\x00")
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SealedEvent:
    """An AuditEvent frozen for the chain: its id, when it happened, its outcome, its bytes and
    what `GET AuditEvent` searches on."""

    event_id: str
    recorded: float
    outcome: str
    body: bytes
    facts: EventFacts


def seal(event: Resource) -> SealedEvent:
    """Give the event an id and meta (when it has none) and freeze its canonical bytes.

    Sealing is idempotent: a sealed event read back and sealed again gives the same bytes, which
    is what lets events spilled to disk at shutdown be reloaded unchanged. The search values are
    taken here, from the dict at hand: extracting them in the writer meant parsing the bytes again
    (as dear as the extraction itself).
    """
    if event.get("resourceType") != "AuditEvent":
        raise ValueError("only AuditEvent resources go into the audit trail")
    event = dict(event)
    if "id" not in event:
        event["id"] = uuid7_hex()
    if not isinstance(event.get("recorded"), str):
        event["recorded"] = instant(time.time())
    if "meta" not in event:
        event["meta"] = {"versionId": "1", "lastUpdated": event["recorded"]}
    return SealedEvent(
        event_id=str(event["id"]),
        recorded=_epoch(event["recorded"]),
        outcome=str(event.get("outcome", "0")),
        body=canonical(event),
        facts=facts(event),
    )


def _epoch(recorded: str) -> float:
    """AuditEvent.recorded as epoch seconds; ValueError for a malformed instant (a caller's bug)."""
    try:
        moment = datetime.fromisoformat(recorded)
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is not None:
        return moment.timestamp()
    return date_range(recorded)[0]


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What `GET AuditEvent` searches on (the R4 AuditEvent search parameters), from one event.

    type, subtype (the first) and action are columns of the event row; agent, entity and patient
    may repeat and go to the index table. The gateway's own server agent is left out (it is in
    every event), and a Patient entity is indexed once, as `patient` (an `entity` search looks at
    both).
    """

    type: str | None
    subtype: str | None
    action: str | None
    index: list[tuple[str, str]]


def facts(event: Resource) -> EventFacts:
    values: dict[tuple[str, str], None] = {}  # ordered and without repeats

    def add(param: str, value: Any) -> None:
        if isinstance(value, str) and value:
            values[(param, value)] = None

    for agent in event.get("agent") or []:
        if _is_server_agent(agent):
            continue
        who = agent.get("who") or {}
        reference = who.get("reference")
        add("patient" if str(reference).startswith("Patient/") else "agent", reference)
        add("agent", (who.get("identifier") or {}).get("value"))
    for entity in event.get("entity") or []:
        what = entity.get("what") or {}
        reference = str(what.get("reference", ""))
        if reference.startswith("Patient/"):
            add("patient", "/".join(reference.split("/")[:2]))
        else:
            add("entity", reference)
        add("entity", (what.get("identifier") or {}).get("value"))
    subtypes = event.get("subtype") or [None]
    action = event.get("action")
    return EventFacts(
        type=_token(event.get("type")),
        subtype=_token(subtypes[0]),
        action=action if isinstance(action, str) else None,
        index=list(values),
    )


def _token(coding: Any) -> str | None:
    if not isinstance(coding, dict) or not coding.get("code"):
        return None
    return f"{coding.get('system') or ''}|{coding['code']}"


def _is_server_agent(agent: Resource) -> bool:
    codes = ((agent.get("type") or {}).get("coding")) or [{}]
    return bool(codes[0].get("code") == "110152" and not agent.get("requestor"))


@dataclass(frozen=True, slots=True)
class ChainHead:
    chain: str
    seq: int
    hash: str


_INSERT_EVENT = insert(audit_events)
_INSERT_INDEX = insert(audit_event_index)
_HEAD = select(audit_chain_heads.c.seq, audit_chain_heads.c.hash).where(
    audit_chain_heads.c.chain == bindparam("c")
)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_INSERT_HEAD = insert(audit_chain_heads)
_UPDATE_HEAD = update(audit_chain_heads).where(audit_chain_heads.c.chain == bindparam("c"))


def lock_key(chain: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, one per chain."""
    return int.from_bytes(
        hashlib.sha256(f"fhir-gateway-audit:{chain}".encode()).digest()[:8], "big", signed=True
    )


async def lock_head(conn: Connection, chain: str) -> ChainHead:
    """Take the chain's append lock for this transaction and read its head (created when new)."""
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(chain)})
    row = (await conn.execute(_HEAD_FOR_UPDATE if postgres else _HEAD, {"c": chain})).first()
    if row is None:
        await conn.execute(_INSERT_HEAD, {"chain": chain, "seq": 0, "hash": GENESIS, "updated": time.time()})
        return ChainHead(chain, 0, GENESIS)
    return ChainHead(chain, int(row.seq), str(row.hash))


async def append(conn: Connection, chain: str, events: Sequence[SealedEvent]) -> ChainHead:
    """Append `events` in order to `chain` inside the caller's transaction; returns the new head."""
    head = await lock_head(conn, chain)
    if not events:
        return head
    seq, prev = head.seq, head.hash
    rows: list[dict[str, Any]] = []
    index_rows: list[dict[str, Any]] = []
    for event in events:
        about = event.facts
        seq += 1
        digest = chain_hash(prev, seq, event.body)
        rows.append(
            {
                "chain": chain,
                "seq": seq,
                "event_id": event.event_id,
                "recorded": event.recorded,
                "outcome": event.outcome,
                "type": about.type,
                "subtype": about.subtype,
                "action": about.action,
                "event": event.body,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        index_rows += [{"chain": chain, "seq": seq, "param": p, "value": v} for p, v in about.index]
        prev = digest
    await write_rows(conn, _INSERT_EVENT, rows)
    if index_rows:
        await write_rows(conn, _INSERT_INDEX, index_rows)
    await conn.execute(_UPDATE_HEAD, {"c": chain, "seq": seq, "hash": prev, "updated": time.time()})
    return ChainHead(chain, seq, prev)


async def existing_ids(conn: Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of these AuditEvent ids are stored already (after a commit whose outcome was unknown)."""
    if not event_ids:
        return set()
    stmt = select(audit_events.c.event_id).where(audit_events.c.event_id.in_(list(event_ids)))
    return {str(r.event_id) for r in (await conn.execute(stmt)).all()}


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainRow:
    seq: int
    event_id: str
    event: bytes
    prev_hash: str
    hash: str

    def self_consistent(self) -> bool:
        """Its hash matches its own prev_hash, seq and bytes, and the bytes carry its id."""
        if chain_hash(self.prev_hash, self.seq, self.event) != self.hash:
            return False
        try:
            body = orjson.loads(self.event)
        except orjson.JSONDecodeError:
            return False
        return isinstance(body, dict) and body.get("id") == self.event_id


@dataclass(frozen=True, slots=True)
class Break:
    """The first broken event: where, which, what kind of damage, and why we think so."""

    seq: int
    event_id: str | None
    kind: str  # edited | rehashed | deleted | reordered | unlinked | head
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    chain: str
    checked: int
    head_seq: int
    head_hash: str
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None


class ChainWalker:
    """Checks rows fed in seq order; `find` looks up which row holds a given hash (rare: failures only)."""

    def __init__(self) -> None:
        self.previous: ChainRow | None = None
        self.checked = 0

    def feed(self, row: ChainRow, holder_of: dict[str, int] | None = None) -> Break | None:
        prev = self.previous
        expected_seq = 1 if prev is None else prev.seq + 1
        expected_link = GENESIS if prev is None else prev.hash
        if row.seq != expected_seq:
            return Break(
                expected_seq,
                None,
                "deleted",
                f"event(s) {expected_seq}..{row.seq - 1} are missing before seq {row.seq} ({row.event_id})",
            )
        consistent = row.self_consistent()
        if row.prev_hash != expected_link:
            if consistent and prev is not None:
                return Break(
                    prev.seq,
                    prev.event_id,
                    "rehashed",
                    f"its hash differs from the link kept by seq {row.seq}: changed and re-hashed",
                )
            other = (holder_of or {}).get(row.prev_hash)
            if other is not None:
                return Break(row.seq, row.event_id, "reordered", f"it was chained after seq {other}")
            return Break(row.seq, row.event_id, "unlinked", "its link matches no stored event")
        if not consistent:
            return Break(row.seq, row.event_id, "edited", "its content no longer matches its hash")
        self.previous = row
        self.checked += 1
        return None

    def finish(self, head: ChainHead | None) -> Break | None:
        last = self.previous
        if head is None:
            if last is None:
                return None
            return Break(last.seq, last.event_id, "head", "the chain head row is missing")
        if last is None or last.seq < head.seq:
            missing = 1 if last is None else last.seq + 1
            return Break(missing, None, "deleted", f"the chain head says events run to seq {head.seq}")
        if last.seq > head.seq:
            return Break(head.seq + 1, None, "head", f"events continue past the chain head (seq {head.seq})")
        if last.hash != head.hash:
            return Break(last.seq, last.event_id, "rehashed", "its hash differs from the chain head")
        return None


async def _rows(
    store: Store, chain: str, page: int, *, after: int = 0, upto: int | None = None
) -> AsyncIterator[ChainRow]:
    e = audit_events.c
    stmt = (
        select(e.seq, e.event_id, e.event, e.prev_hash, e.hash)
        .where(e.chain == bindparam("c"), e.seq > bindparam("after"), e.seq <= bindparam("upto"))
        .order_by(e.seq)
        .limit(page)
    )
    limit = upto if upto is not None else 2**62
    while True:
        async with store.reader(offload=True) as conn:
            batch = (await conn.execute(stmt, {"c": chain, "after": after, "upto": limit})).all()
        for r in batch:
            yield ChainRow(int(r.seq), str(r.event_id), bytes(r.event), str(r.prev_hash), str(r.hash))
        if len(batch) < page:
            return
        after = int(batch[-1].seq)


async def _holders(store: Store, chain: str, digest: str) -> dict[str, int]:
    stmt = select(audit_events.c.seq).where(audit_events.c.chain == chain, audit_events.c.hash == digest)
    async with store.reader(offload=True) as conn:
        row = (await conn.execute(stmt)).first()
    return {digest: int(row.seq)} if row is not None else {}


async def read_head(store: Store, chain: str) -> ChainHead | None:
    async with store.reader() as conn:
        row = (await conn.execute(_HEAD, {"c": chain})).first()
    return ChainHead(chain, int(row.seq), str(row.hash)) if row is not None else None


async def verify(store: Store, chain: str = "main", *, page: int = VERIFY_PAGE) -> VerifyResult:
    """Walk the whole chain in seq order and name the first broken event, if any.

    The head is read after the walk: writers update rows and head in one transaction, so a head
    beyond the last row walked means either new events (walked on) or a deleted tail.
    """
    walker = ChainWalker()

    async def walk_from(rows: AsyncIterator[ChainRow]) -> Break | None:
        async for row in rows:
            broken = walker.feed(row)
            if broken is not None and broken.kind == "unlinked":
                broken = walker.feed(row, await _holders(store, chain, row.prev_hash))
            if broken is not None:
                return broken
        return None

    broken = await walk_from(_rows(store, chain, page))
    head = await read_head(store, chain)
    last = walker.previous.seq if walker.previous is not None else 0
    if broken is None and head is not None and last < head.seq:  # committed while we walked: walk on
        broken = await walk_from(_rows(store, chain, page, after=last, upto=head.seq))
    if broken is None:
        broken = walker.finish(head)
    return VerifyResult(
        chain=chain,
        checked=walker.checked,
        head_seq=head.seq if head else 0,
        head_hash=head.hash if head else GENESIS,
        broken=broken,
    )
