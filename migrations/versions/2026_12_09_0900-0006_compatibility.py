"""What a version needs and what a car has (issue 20 item 3, compatibility).

``versions.requirements``: protocol/platform.py ``Requirements.to_dict()`` (IR version and opsets read
from the model at publish, plus the publisher's), null for versions published before: they need nothing.
``devices.platform``: the car's reported ``Platform.to_dict()`` and ``devices.platform_sha256`` its digest
(what a poll carries), null for a car that never reported one: it is treated as able to run anything.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('requirements', sa.JSON(), nullable=True))
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('platform', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('platform_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('platform_sha256')
        batch_op.drop_column('platform')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_column('requirements')
