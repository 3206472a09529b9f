"""break_glass_grants and outbox: emergency-access grants and the durable notification outbox

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "break_glass_grants",
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("fhir_user", sa.String(length=255), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("opened", sa.Float(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.Column("justification", sa.Text(), nullable=True),
        sa.Column("justified_at", sa.Float(), nullable=True),
        sa.Column("escalated_at", sa.Float(), nullable=True),
        sa.Column("closed", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("grant_id"),
    )
    op.create_index("ix_break_glass_grants_subject", "break_glass_grants", ["subject", "expires"])
    op.create_index("ix_break_glass_grants_opened", "break_glass_grants", ["opened"])
    op.create_index("ix_break_glass_grants_expires", "break_glass_grants", ["expires"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_outbox_due", "outbox", ["delivered_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("break_glass_grants")
