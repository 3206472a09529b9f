"""The store's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

`resources` holds the current version of every resource (deleted ones stay as tombstones so a read
answers 410 and ids are never reused); `resource_history` holds every version ever written. Search
index tables hold rows for the current version only and are keyed by `resources.pk`, so a search is
a set of EXISTS sub-queries on small integer-keyed tables. The alembic migration in
store/migrations/versions creates exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

PK = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", Float, nullable=False),  # epoch seconds, UTC
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", LargeBinary, nullable=True),  # resource JSON (orjson bytes); NULL when deleted
    UniqueConstraint("res_type", "res_id", name="uq_resources_type_id"),
)
Index("ix_resources_type_updated", resources.c.res_type, resources.c.last_updated)

resource_history = Table(
    "resource_history",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", Float, nullable=False),
    Column("method", String(8), nullable=False),  # POST | PUT | PATCH | DELETE
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", LargeBinary, nullable=True),
)
Index("ix_history_updated", resource_history.c.last_updated)
Index("ix_history_type_updated", resource_history.c.res_type, resource_history.c.last_updated)


def _index_table(name: str, *columns: Column) -> Table:  # type: ignore[type-arg]
    table = Table(
        name,
        metadata,
        Column("res_pk", PK, ForeignKey("resources.pk", ondelete="CASCADE"), nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        *columns,
    )
    Index(f"ix_{name}_res", table.c.res_pk)
    return table


idx_string = _index_table("idx_string", Column("value", Text), Column("exact", Text))
Index("ix_idx_string_lookup", idx_string.c.res_type, idx_string.c.param, idx_string.c.value)

idx_token = _index_table("idx_token", Column("system", Text), Column("code", Text), Column("text", Text))
Index("ix_idx_token_lookup", idx_token.c.res_type, idx_token.c.param, idx_token.c.code)

idx_reference = _index_table(
    "idx_reference", Column("target_type", String(64)), Column("target_id", String(64)), Column("url", Text)
)
Index("ix_idx_reference_lookup", idx_reference.c.res_type, idx_reference.c.param, idx_reference.c.target_id)
Index("ix_idx_reference_target", idx_reference.c.target_type, idx_reference.c.target_id)

idx_date = _index_table("idx_date", Column("low", Float), Column("high", Float))
Index("ix_idx_date_lookup", idx_date.c.res_type, idx_date.c.param, idx_date.c.low)

idx_number = _index_table("idx_number", Column("value", Float))
Index("ix_idx_number_lookup", idx_number.c.res_type, idx_number.c.param, idx_number.c.value)

idx_quantity = _index_table(
    "idx_quantity", Column("value", Float), Column("system", Text), Column("code", Text), Column("unit", Text)
)
Index("ix_idx_quantity_lookup", idx_quantity.c.res_type, idx_quantity.c.param, idx_quantity.c.value)

idx_uri = _index_table("idx_uri", Column("value", Text))
Index("ix_idx_uri_lookup", idx_uri.c.res_type, idx_uri.c.param, idx_uri.c.value)

idx_composite = _index_table(
    "idx_composite",
    Column("c1_system", Text),
    Column("c1_code", Text),
    Column("c2_system", Text),
    Column("c2_code", Text),
    Column("c2_num", Float),
    Column("c2_low", Float),
    Column("c2_high", Float),
    Column("c2_text", Text),
    Column("c3_num", Float),
)
Index("ix_idx_composite_lookup", idx_composite.c.res_type, idx_composite.c.param, idx_composite.c.c1_code)

INDEX_TABLES: dict[str, Table] = {
    "strings": idx_string,
    "tokens": idx_token,
    "references": idx_reference,
    "dates": idx_date,
    "numbers": idx_number,
    "quantities": idx_quantity,
    "uris": idx_uri,
    "composites": idx_composite,
}
