"""the cluster's live sessions: owner replica, audit columns, terminate requests

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.store.tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = broker.store.tables.UTCDateTime(timezone=True)
    op.create_table(
        "live_sessions",
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=True),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("port", sa.BigInteger(), nullable=False),
        sa.Column("grant_id", sa.String(length=64), nullable=False),
        sa.Column("src", sa.Text(), nullable=False),
        sa.Column("started", when, nullable=False),
        sa.Column("grant_ends", when, nullable=True),
        sa.Column("recording", sa.Text(), nullable=False),
        sa.Column("recording_location", sa.Text(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reaper", sa.String(length=64), nullable=False),
        sa.Column("terminate_by", sa.Text(), nullable=True),
        sa.Column("terminate_reason", sa.String(length=64), nullable=True),
        sa.Column("terminate_at", when, nullable=True),
        sa.Column("updated", when, nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_live_sessions")),
    )
    with op.batch_alter_table("live_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_live_sessions_replica_id", ["replica_id"], unique=False)


def downgrade() -> None:
    op.drop_table("live_sessions")
