"""Indexes for the inventory at a million cars (issue 21 item 1).

``GET /api/v1/devices`` pages by ``devices.device_id`` (its unique index) and filters in SQL; the Fleet page's
cards are SQL aggregates.  What they need besides the indexes that exist:

- ``device_updates (device_pk, id)``: a car's newest offer (the ``state`` filter, the page's "latest update"
  column) is one probe of this index instead of a sort of the car's rows;
- ``device_updates (state, updated_at)``: the "stuck" card counts offers in flight older than a limit;
- ``device_lines (drift, device_pk)``: the "drifting" card and the ``drift`` filter read the few drifting rows;
- ``devices (last_seen_at)``: the "seen in the last hour" card and the ``seen_since`` filter.

Revision ID: 0011
Revises: 0012 (written beside 0012, applied after it)
Create Date: 2026-12-12 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0011'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('device_updates', schema=None) as batch_op:
        batch_op.create_index('ix_device_updates_device_pk_id', ['device_pk', 'id'], unique=False)
        batch_op.create_index('ix_device_updates_state_updated_at', ['state', 'updated_at'], unique=False)
    with op.batch_alter_table('device_lines', schema=None) as batch_op:
        batch_op.create_index('ix_device_lines_drift_device_pk', ['drift', 'device_pk'], unique=False)
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index('ix_devices_last_seen_at', ['last_seen_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index('ix_devices_last_seen_at')
    with op.batch_alter_table('device_lines', schema=None) as batch_op:
        batch_op.drop_index('ix_device_lines_drift_device_pk')
    with op.batch_alter_table('device_updates', schema=None) as batch_op:
        batch_op.drop_index('ix_device_updates_state_updated_at')
        batch_op.drop_index('ix_device_updates_device_pk_id')
