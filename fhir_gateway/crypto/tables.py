"""The `crypto_keys` table: one row per data-key version, the key itself only in wrapped form.

On the store's shared `metadata`, so the alembic migration 0004 and the schema agree; created by
migration 0004_crypto_keys.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, LargeBinary, String, Table

from fhir_gateway.store.schema import metadata

crypto_keys = Table(
    "crypto_keys",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("wrapped_key", LargeBinary, nullable=False),  # the DEK wrapped by the KEK (Kms.wrap)
    Column("kek_id", String(64), nullable=False),  # which KEK wrapped it (Kms.key_id), not secret
    Column("created", Float, nullable=False),  # epoch seconds, UTC
    Column("state", String(16), nullable=False),  # active | retiring | retired
    Column("state_changed", Float, nullable=False),
)
