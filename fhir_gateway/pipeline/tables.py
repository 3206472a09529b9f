"""The authority tables: `conflicts` (contradicting writes the authority rules could not settle, and
the log of those they settled) and the per-category change feed (`change_feed`, `change_feed_head`).

Created by migration 0007. One row per conflict on one resource version:

- `status` `open` is the review queue (`GET [base]/$conflicts`); `resolved` once a reviewer chose
  (`$resolve`, the chosen resource written through `Gateway.submit`); `auto` when a rule decided at
  write time (authority, then source timestamp) — kept so the losing values are never lost.
- `base_version` is the version the proposal met; `elements` the top-level element names in
  conflict (JSON array); `proposed` the losing/proposed values by element (JSON object).
  `proposed` is PHI like any resource content: rows are for reviewers and operators, never logged,
  and the API shows a row only to callers who may read its resource.
- `source` / `source_time` say who proposed and when the source says the data was true.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

from fhir_gateway.store.schema import PK, metadata

conflicts = Table(
    "conflicts",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("created", Float, nullable=False),
    Column("status", String(16), nullable=False),  # open | resolved | auto
    Column("category", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("base_version", Integer, nullable=False),
    Column("source", String(255), nullable=False),
    Column("source_time", Float, nullable=True),
    Column("reason", String(32), nullable=False),  # queue-rule | timestamp-tie | authority | timestamp
    Column("elements", Text, nullable=False),  # JSON array of element names
    Column("proposed", Text, nullable=False),  # JSON object element -> losing/proposed value (PHI)
    Column("decision", Text, nullable=True),  # JSON object element -> "proposed" | "current"
    Column("resolved_at", Float, nullable=True),
    Column("resolved_by", String(255), nullable=True),
    Column("result_version", Integer, nullable=True),
)
Index("ix_conflicts_status", conflicts.c.status, conflicts.c.created)
Index("ix_conflicts_resource", conflicts.c.res_type, conflicts.c.res_id)

# The change feed (migration 0008; pipeline/feed.py says how positions are given). One row per
# version of a governed resource, written in the version's own transaction; `seq` is its position
# in the category's feed, NULL until a reader seals it; `change_feed_head` holds each category's
# last given position (its row lock serialises sealing).
change_feed = Table(
    "change_feed",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("category", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("seq", BigInteger, nullable=True),
)
Index("ix_change_feed_position", change_feed.c.category, change_feed.c.seq)

change_feed_head = Table(
    "change_feed_head",
    metadata,
    Column("category", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)
