"""console accounts: the step-up time of a token, an account's pending password change

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import broker.store.tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "stepped_up_at", broker.store.tables.UTCDateTime(timezone=True), nullable=True
            )
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "password_change_required",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("password_change_required")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("stepped_up_at")
