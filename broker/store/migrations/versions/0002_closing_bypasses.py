"""closing the ways around the rules: columns and tables they need

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # typed secrets in recordings: input recording is a hospital policy, off by default
    with op.batch_alter_table('policies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('record_input', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    pass


def downgrade() -> None:
    # typed secrets in recordings
    with op.batch_alter_table('policies', schema=None) as batch_op:
        batch_op.drop_column('record_input')
    pass
