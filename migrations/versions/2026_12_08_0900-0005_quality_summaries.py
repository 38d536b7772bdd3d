"""Shadow mode and model-quality gates (issue 18).

``quality_summaries``: per (device, rollout, candidate version, kind) the car's latest cumulative
comparison (protocol/quality.py ``QualitySummary``), the one with the highest ``seq``; ``frames`` and
``agree`` are copied out of the JSON for cheap sums.  ``quality_history``: "agreement over time" per
rollout, one point per change seen at a tick, at most 500 per rollout (the oldest are deleted).

``rollouts.gates`` (a JSON list of gate texts, ``agreement>=0.97``) and ``rollouts.shadow`` (the shadow
stage's settings, or null); ``rollout_stages.mode``: ``shadow`` (stage 0 of a rollout with a shadow
stage) or ``live``.  Existing rows get no gates, no shadow stage, and live stages.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('quality_summaries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('candidate_version', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=True),
    sa.Column('frames', sa.BigInteger(), nullable=False),
    sa.Column('agree', sa.BigInteger(), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_pk', 'rollout_id', 'candidate_version', 'kind', name='uq_quality_summaries_key')
    )
    with op.batch_alter_table('quality_summaries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quality_summaries_rollout_id'), ['rollout_id'], unique=False)

    op.create_table('quality_history',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('frames', sa.BigInteger(), nullable=False),
    sa.Column('agreement', sa.Float(), nullable=True),
    sa.Column('latency_p99_ratio', sa.Float(), nullable=True),
    sa.Column('class_shift', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quality_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quality_history_rollout_id'), ['rollout_id'], unique=False)

    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gates', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('shadow', sa.JSON(), nullable=True))
    with op.batch_alter_table('rollout_stages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mode', sa.String(length=10), nullable=False, server_default='live'))


def downgrade() -> None:
    with op.batch_alter_table('rollout_stages', schema=None) as batch_op:
        batch_op.drop_column('mode')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_column('shadow')
        batch_op.drop_column('gates')
    with op.batch_alter_table('quality_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quality_history_rollout_id'))
    op.drop_table('quality_history')
    with op.batch_alter_table('quality_summaries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quality_summaries_rollout_id'))
    op.drop_table('quality_summaries')
