"""Rollout schedules and maintenance windows (issue 21 item 2).

``rollouts.starts_at``: no offers before it (NULL: from creation, as before); ``rollouts.windows``: the
recurring local-time windows inside which stages advance and new offers are made (NULL: always open).
Existing rollouts get NULL in both and behave as they did.

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-12 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('starts_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('windows', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_column('windows')
        batch_op.drop_column('starts_at')
