"""audit_events: the hash-chained AuditEvent trail, its chain heads and search index

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("recorded", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=4), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=True),
        sa.Column("subtype", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=1), nullable=True),
        sa.Column("event", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain", "seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_audit_events_recorded", "audit_events", ["recorded"])
    op.create_table(
        "audit_chain_heads",
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("chain"),
    )
    op.create_table(
        "audit_event_index",
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("param", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_event_index_lookup", "audit_event_index", ["param", "value"])
    op.create_index("ix_audit_event_index_event", "audit_event_index", ["chain", "seq"])


def downgrade() -> None:
    op.drop_table("audit_event_index")
    op.drop_table("audit_chain_heads")
    op.drop_table("audit_events")
