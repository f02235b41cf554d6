"""notifications: the durable outbox and each organisation's channels

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.store.tables

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = broker.store.tables.UTCDateTime
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("dedupe", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", when(timezone=True), nullable=False),
        sa.Column("next_attempt_at", when(timezone=True), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", when(timezone=True), nullable=True),
        sa.Column("sent_at", when(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        sa.UniqueConstraint("dedupe", name=op.f("uq_notification_outbox_dedupe")),
    )
    op.create_index(
        "ix_notification_outbox_due",
        "notification_outbox",
        ["sent_at", "next_attempt_at"],
        unique=False,
    )
    op.create_table(
        "notification_settings",
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.Boolean(), nullable=False),
        sa.Column("emails", sa.JSON(), nullable=False),
        sa.Column("teams_url", sa.Text(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=False),
        sa.Column("updated_at", when(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_notification_settings")),
    )


def downgrade() -> None:
    op.drop_table("notification_settings")
    op.drop_index("ix_notification_outbox_due", table_name="notification_outbox")
    op.drop_table("notification_outbox")
