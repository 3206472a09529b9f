"""The audit trail's tables, on the store's shared `metadata` (created by migration 0005_audit_events).

`audit_events` is the hash chain: per chain, `seq` runs 1, 2, 3 ... without gaps, and `hash` is
SHA-256 over (prev_hash, seq, event bytes), so any edit, deletion or reordering breaks a link that
`chain.verify` finds. `audit_chain_heads` holds the last (seq, hash) of each chain: the row writers
lock to append in order, and the anchor that also catches a deleted or re-hashed last event.
`audit_event_index` holds the repeating search values (agent, entity, patient) of each event;
it is a convenience for `GET AuditEvent` and is not covered by the chain.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, LargeBinary, String, Table, Text

from fhir_gateway.store.schema import metadata

audit_events = Table(
    "audit_events",
    metadata,
    Column("chain", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False, unique=True),  # AuditEvent.id
    Column("recorded", Float, nullable=False),  # epoch seconds, UTC (AuditEvent.recorded)
    Column("outcome", String(4), nullable=False),
    Column("type", String(255), nullable=True),  # system|code of AuditEvent.type
    Column("subtype", String(255), nullable=True),  # system|code of the first AuditEvent.subtype
    Column("action", String(1), nullable=True),
    Column("event", LargeBinary, nullable=False),  # canonical JSON: orjson with sorted keys
    Column("prev_hash", String(64), nullable=False),  # hex; GENESIS for seq 1
    Column("hash", String(64), nullable=False),  # hex SHA-256 (see chain.chain_hash)
)
Index("ix_audit_events_recorded", audit_events.c.recorded)

audit_chain_heads = Table(
    "audit_chain_heads",
    metadata,
    Column("chain", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated", Float, nullable=False),
)

audit_event_index = Table(
    "audit_event_index",
    metadata,
    Column("chain", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("param", String(16), nullable=False),  # agent | entity | patient
    Column("value", Text, nullable=False),
)
Index("ix_audit_event_index_lookup", audit_event_index.c.param, audit_event_index.c.value)
Index("ix_audit_event_index_event", audit_event_index.c.chain, audit_event_index.c.seq)
