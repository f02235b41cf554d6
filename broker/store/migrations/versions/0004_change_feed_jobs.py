"""the change feed's version row and the singleton jobs' claimed periods

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.store.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_feed",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_feed")),
    )
    op.execute("INSERT INTO change_feed (id, version) VALUES (1, 0)")
    op.create_table(
        "job_runs",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("period", sa.BigInteger(), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", broker.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", broker.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job", "period", name=op.f("pk_job_runs")),
    )


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_table("change_feed")
