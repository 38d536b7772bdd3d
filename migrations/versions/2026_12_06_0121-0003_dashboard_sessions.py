"""Dashboard sessions kept server-side (revoked on logout) and refused logins (throttle), issue 15.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dashboard_sessions',
    sa.Column('id_sha256', sa.String(length=64), nullable=False),
    sa.Column('token_mac', sa.String(length=64), nullable=False),
    sa.Column('client', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id_sha256')
    )
    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_sessions_expires_at'), ['expires_at'], unique=False)

    op.create_table('dashboard_login_failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client', sa.String(length=100), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dashboard_login_failures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_login_failures_client'), ['client'], unique=False)
        batch_op.create_index(batch_op.f('ix_dashboard_login_failures_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dashboard_login_failures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_login_failures_at'))
        batch_op.drop_index(batch_op.f('ix_dashboard_login_failures_client'))
    op.drop_table('dashboard_login_failures')
    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_sessions_expires_at'))
    op.drop_table('dashboard_sessions')
