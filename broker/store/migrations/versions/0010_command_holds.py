"""held shell command lines, shared by the replicas: listed and answered from any

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.store.tables

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = broker.store.tables.UTCDateTime(timezone=True)
    op.create_table(
        "command_holds",
        sa.Column("hold_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("pattern", sa.Text(), nullable=False),
        sa.Column("held_at", when, nullable=False),
        sa.Column("deadline", when, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("answered_by", sa.Text(), nullable=True),
        sa.Column("answered_at", when, nullable=True),
        sa.PrimaryKeyConstraint("hold_id", name=op.f("pk_command_holds")),
    )
    with op.batch_alter_table("command_holds", schema=None) as batch_op:
        batch_op.create_index("ix_command_holds_state", ["state"], unique=False)
        batch_op.create_index("ix_command_holds_replica_id", ["replica_id"], unique=False)


def downgrade() -> None:
    op.drop_table("command_holds")
