"""closing the ways around the rules: columns and tables they need

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.store.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SSH certificates: issued serials, revoked on logout, token revocation, lockout
    op.create_table(
        "ssh_certs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("issued_at", broker.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_until", broker.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", broker.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ssh_certs")),
    )
    with op.batch_alter_table("ssh_certs", schema=None) as batch_op:
        batch_op.create_index("ix_ssh_certs_user_id", ["user_id"], unique=False)
        batch_op.create_index("ix_ssh_certs_serial", ["serial"], unique=False)
    # typed secrets in recordings: input recording is a hospital policy, off by default
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("record_input", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    pass


def downgrade() -> None:
    # typed secrets in recordings
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("record_input")
    # SSH certificates
    op.drop_table("ssh_certs")
    pass
