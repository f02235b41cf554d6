"""instruments: the keyboard layout an RDP desktop is typed on (en-US by default)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instruments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "keyboard_layout", sa.Text(), nullable=False, server_default=sa.text("'en-US'")
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("instruments", schema=None) as batch_op:
        batch_op.drop_column("keyboard_layout")
