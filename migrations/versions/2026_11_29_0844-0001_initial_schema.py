"""Initial schema: lines, versions, packages (full or delta-on-predecessor),
transfer deltas, devices, device updates and reports, rollouts and stages,
transfers (server-measured bytes), audit log.

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 08:44:52.202302
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('deltas',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('base_sha256', sa.String(length=64), nullable=False),
    sa.Column('target_sha256', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('base_sha256', 'target_sha256', name='uq_deltas_base_target')
    )
    with op.batch_alter_table('deltas', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deltas_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_deltas_target_sha256'), ['target_sha256'], unique=False)

    op.create_table('devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=200), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('poll_interval_s', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('line', sa.String(length=100), nullable=True),
    sa.Column('running_version', sa.Integer(), nullable=True),
    sa.Column('running_model_sha256', sa.String(length=64), nullable=True),
    sa.Column('reported_version', sa.Integer(), nullable=True),
    sa.Column('reported_model_sha256', sa.String(length=64), nullable=True),
    sa.Column('drift', sa.Boolean(), nullable=False),
    sa.Column('drift_detail', sa.Text(), nullable=True),
    sa.Column('manifest_version', sa.BigInteger(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('stable_version', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('line_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('source_sha256', sa.String(length=64), nullable=False),
    sa.Column('source_bytes', sa.BigInteger(), nullable=False),
    sa.Column('publisher', sa.String(length=200), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('input_name', sa.String(length=200), nullable=False),
    sa.Column('input_shape', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['line_id'], ['lines.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('line_id', 'number', name='uq_versions_line_number')
    )
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_versions_line_id'), ['line_id'], unique=False)

    op.create_table('packages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('codec', sa.String(length=20), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('model_sha256', sa.String(length=64), nullable=False),
    sa.Column('fidelity', sa.JSON(), nullable=False),
    sa.Column('smoke', sa.JSON(), nullable=False),
    sa.Column('storage_kind', sa.String(length=10), nullable=False),
    sa.Column('storage_blob', sa.String(length=64), nullable=False),
    sa.Column('storage_base_sha256', sa.String(length=64), nullable=True),
    sa.Column('storage_bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version_id', 'codec', name='uq_packages_version_codec')
    )
    with op.batch_alter_table('packages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_packages_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_packages_version_id'), ['version_id'], unique=False)

    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('line_id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('target_version', sa.Integer(), nullable=False),
    sa.Column('previous_stable', sa.Integer(), nullable=True),
    sa.Column('codec', sa.String(length=20), nullable=False),
    sa.Column('selector', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('current_stage', sa.Integer(), nullable=False),
    sa.Column('stage_started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rollback', sa.Boolean(), nullable=False),
    sa.Column('error_threshold_pct', sa.Float(), nullable=True),
    sa.Column('error_threshold_count', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['line_id'], ['lines.id'], ),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollouts_line_id'), ['line_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollouts_state'), ['state'], unique=False)

    op.create_table('device_updates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('rollout_key', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('target_version', sa.Integer(), nullable=False),
    sa.Column('codec', sa.String(length=20), nullable=False),
    sa.Column('package_sha256', sa.String(length=64), nullable=False),
    sa.Column('delta_sha256', sa.String(length=64), nullable=True),
    sa.Column('base_package_sha256', sa.String(length=64), nullable=True),
    sa.Column('rollback', sa.Boolean(), nullable=False),
    sa.Column('manifest_version', sa.BigInteger(), nullable=False),
    sa.Column('envelope', sa.JSON(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('bytes_reported', sa.BigInteger(), nullable=False),
    sa.Column('artifact_reported', sa.String(length=10), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_pk', 'rollout_key', 'version_id', name='uq_device_updates_offer')
    )
    with op.batch_alter_table('device_updates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_updates_device_pk'), ['device_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_updates_rollout_id'), ['rollout_id'], unique=False)

    op.create_table('rollout_stages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('percent', sa.Float(), nullable=False),
    sa.Column('min_soak_s', sa.Float(), nullable=False),
    sa.Column('success_threshold_pct', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id', 'position', name='uq_rollout_stages_position')
    )
    with op.batch_alter_table('rollout_stages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_stages_rollout_id'), ['rollout_id'], unique=False)

    op.create_table('device_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('update_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['update_id'], ['device_updates.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_pk', 'seq', name='uq_device_reports_device_seq')
    )
    with op.batch_alter_table('device_reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_reports_device_pk'), ['device_pk'], unique=False)

    op.create_table('transfers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=True),
    sa.Column('update_id', sa.Integer(), nullable=True),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('base_version', sa.Integer(), nullable=True),
    sa.Column('target_version', sa.Integer(), nullable=True),
    sa.Column('artifact_bytes', sa.BigInteger(), nullable=False),
    sa.Column('range_start', sa.BigInteger(), nullable=False),
    sa.Column('bytes_sent', sa.BigInteger(), nullable=False),
    sa.Column('complete', sa.Boolean(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.ForeignKeyConstraint(['update_id'], ['device_updates.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transfers_device_pk'), ['device_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_transfers_rollout_id'), ['rollout_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transfers_rollout_id'))
        batch_op.drop_index(batch_op.f('ix_transfers_device_pk'))

    op.drop_table('transfers')
    with op.batch_alter_table('device_reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_reports_device_pk'))

    op.drop_table('device_reports')
    with op.batch_alter_table('rollout_stages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_stages_rollout_id'))

    op.drop_table('rollout_stages')
    with op.batch_alter_table('device_updates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_updates_rollout_id'))
        batch_op.drop_index(batch_op.f('ix_device_updates_device_pk'))

    op.drop_table('device_updates')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollouts_state'))
        batch_op.drop_index(batch_op.f('ix_rollouts_line_id'))

    op.drop_table('rollouts')
    with op.batch_alter_table('packages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_packages_version_id'))
        batch_op.drop_index(batch_op.f('ix_packages_sha256'))

    op.drop_table('packages')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_versions_line_id'))

    op.drop_table('versions')
    op.drop_table('lines')
    op.drop_table('devices')
    with op.batch_alter_table('deltas', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deltas_target_sha256'))
        batch_op.drop_index(batch_op.f('ix_deltas_sha256'))

    op.drop_table('deltas')
    op.drop_table('audit_log')
