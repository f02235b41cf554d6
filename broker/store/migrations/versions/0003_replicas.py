"""several broker replicas: the replica table (pinned peer keys) and tunnel ownership

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.store.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "broker_replicas",
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("peer_host", sa.Text(), nullable=False),
        sa.Column("peer_port", sa.BigInteger(), nullable=False),
        sa.Column("peer_key", sa.Text(), nullable=False),
        sa.Column("started_at", broker.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", broker.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("replica_id", name=op.f("pk_broker_replicas")),
    )
    op.create_table(
        "gateway_tunnels",
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.String(length=64), nullable=False),
        sa.Column("beat", sa.BigInteger(), nullable=False),
        sa.Column("connected_at", broker.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", broker.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "replica_id", name=op.f("pk_gateway_tunnels")),
    )
    with op.batch_alter_table("gateway_tunnels", schema=None) as batch_op:
        batch_op.create_index("ix_gateway_tunnels_replica_id", ["replica_id"], unique=False)


def downgrade() -> None:
    op.drop_table("gateway_tunnels")
    op.drop_table("broker_replicas")
