"""hl7v2 receiver: idempotency (hl7_messages) and error queue (hl7_errors)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hl7_messages",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("sending_application", sa.String(length=227), nullable=False),
        sa.Column("sending_facility", sa.String(length=227), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ack", sa.Text(), nullable=False),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint(
            "sending_application", "sending_facility", "control_id", name="uq_hl7_messages_key"
        ),
    )
    op.create_table(
        "hl7_errors",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("sending_application", sa.String(length=227), nullable=False),
        sa.Column("sending_facility", sa.String(length=227), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("last_attempt_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("err_text", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("replayed", sa.Boolean(), nullable=False),
        sa.Column("replayed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    with op.batch_alter_table("hl7_errors", schema=None) as batch_op:
        batch_op.create_index("ix_hl7_errors_open", ["replayed", "pk"], unique=False)
        batch_op.create_index(
            "ix_hl7_errors_key", ["sending_application", "sending_facility", "control_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("hl7_errors", schema=None) as batch_op:
        batch_op.drop_index("ix_hl7_errors_key")
        batch_op.drop_index("ix_hl7_errors_open")
    op.drop_table("hl7_errors")
    op.drop_table("hl7_messages")
