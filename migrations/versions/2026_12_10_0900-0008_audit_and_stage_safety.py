"""A complete audit trail and rollout safety rules (issue 21 items 3 and 5).

``audit_log.target`` (what an action was done to: ``rollout:7``, ``device:car-1``, ``line:signs``, ...) and
``audit_log.outcome`` (``ok``, ``refused``, ``failed``) become columns so that ``GET /api/v1/audit`` can
filter on them with an index; rows written before 0008 get their target from their detail (rollout_id,
device_id, token_id, line) and their outcome from ``detail.outcome`` when it is refused or failed, else ``ok``.

``rollout_stages.min_installed``: the installs (with evidence) a stage needs before it may auto-advance;
existing stages get 0, their behaviour before 0008.  ``rollouts.in_progress_timeout_s``: a car whose
latest state in the rollout is offered/downloading/downloaded/verified for longer than this counts as an
error (``stuck``); null (every rollout before 0008) never times out.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def _target(detail: dict) -> str | None:
    # as server.audit.target_of (copied: a migration must not change when the code does)
    for key, kind in (("rollout_id", "rollout"), ("device_id", "device"), ("token_id", "token"), ("line", "line")):
        if detail.get(key) is not None:
            return f"{kind}:{detail[key]}"[:200]
    return None


def upgrade() -> None:
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('outcome', sa.String(length=20), server_default='ok', nullable=False))
        batch_op.create_index(batch_op.f('ix_audit_log_target'), ['target'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_at'), ['at'], unique=False)
    with op.batch_alter_table('rollout_stages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('min_installed', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('in_progress_timeout_s', sa.Float(), nullable=True))
    log = sa.table('audit_log', sa.column('id', sa.Integer()), sa.column('detail', sa.JSON()),
                   sa.column('target', sa.String()), sa.column('outcome', sa.String()))
    conn = op.get_bind()
    for row_id, detail in conn.execute(sa.select(log.c.id, log.c.detail)).all():
        detail = detail or {}
        outcome = detail.get('outcome') if detail.get('outcome') in ('refused', 'failed') else 'ok'  # created: ok
        conn.execute(log.update().where(log.c.id == row_id).values(target=_target(detail), outcome=outcome))


def downgrade() -> None:
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_column('in_progress_timeout_s')
    with op.batch_alter_table('rollout_stages', schema=None) as batch_op:
        batch_op.drop_column('min_installed')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_at'))
        batch_op.drop_index(batch_op.f('ix_audit_log_action'))
        batch_op.drop_index(batch_op.f('ix_audit_log_target'))
        batch_op.drop_column('outcome')
        batch_op.drop_column('target')
