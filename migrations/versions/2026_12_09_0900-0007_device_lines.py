"""Several model lines per car, and releases (issue 20).

``device_lines``: one row per line a device has polled, holding what the ``devices`` row held for its one
line: the version and model it polls with (``running_*``), the version it last reported installing
(``reported_*``) and drift between the two.  Existing devices' columns move into it (one row for a device
that had polled), then the columns leave ``devices``.  ``devices.manifest_version`` stays: one increasing
counter per device is also increasing per line.

``releases`` and ``release_members``: a named, immutable set of versions, one per line (unique per release).

Downgrade copies each device's first line back
(alphabetically), so a car that ran several lines keeps only that one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 09:00:00

Chained on 0005: the compatibility migration 0006 was not on main when this was written; the lead renumbers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_MOVED = ('running_version', 'running_model_sha256', 'reported_version', 'reported_model_sha256', 'drift',
          'drift_detail')


def upgrade() -> None:
    op.create_table('device_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('line', sa.String(length=100), nullable=False),
    sa.Column('running_version', sa.Integer(), nullable=True),
    sa.Column('running_model_sha256', sa.String(length=64), nullable=True),
    sa.Column('reported_version', sa.Integer(), nullable=True),
    sa.Column('reported_model_sha256', sa.String(length=64), nullable=True),
    sa.Column('drift', sa.Boolean(), nullable=False),
    sa.Column('drift_detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_pk', 'line', name='uq_device_lines_device_line')
    )
    with op.batch_alter_table('device_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_lines_line'), ['line'], unique=False)
    cols = ', '.join(_MOVED)
    op.execute(f"INSERT INTO device_lines (device_pk, line, {cols}) "
               f"SELECT id, line, {cols.replace('drift,', 'COALESCE(drift, false),')} FROM devices "
               "WHERE line IS NOT NULL")
    with op.batch_alter_table('devices', schema=None) as batch_op:
        for name in ('line', *_MOVED):
            batch_op.drop_column(name)

    op.create_table('releases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('release_members',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=False),
    sa.Column('line_id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['line_id'], ['lines.id'], ),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], ),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('release_id', 'line_id', name='uq_release_members_line')
    )
    with op.batch_alter_table('release_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_release_members_release_id'), ['release_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('release_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_release_members_release_id'))
    op.drop_table('release_members')
    op.drop_table('releases')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('line', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('running_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('running_model_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('reported_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reported_model_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('drift', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('drift_detail', sa.Text(), nullable=True))
    first = "(SELECT min(l2.line) FROM device_lines l2 WHERE l2.device_pk = devices.id)"
    pick = "(SELECT l.{0} FROM device_lines l WHERE l.device_pk = devices.id AND l.line = " + first + ")"
    sets = ', '.join(f"{c} = {pick.format(c)}" if c != 'drift' else f"drift = COALESCE({pick.format(c)}, false)"
                     for c in ('line', *_MOVED))
    op.execute(f"UPDATE devices SET {sets}")
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.alter_column('drift', server_default=None)
    with op.batch_alter_table('device_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_lines_line'))
    op.drop_table('device_lines')
