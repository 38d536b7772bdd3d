"""Device identity (issue 15): each device's public key, key-proof replay guard, operator
re-authorisation, revocation and decommissioning; signed reports and installs; scoped
enrolment tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('public_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('proof_ms', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('reauthorized_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('decommissioned_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('device_updates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('install_evidence', sa.String(length=10), nullable=True))
    with op.batch_alter_table('device_reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signed', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table('enrollment_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('max_uses', sa.Integer(), nullable=True),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )


def downgrade() -> None:
    op.drop_table('enrollment_tokens')
    with op.batch_alter_table('device_reports', schema=None) as batch_op:
        batch_op.drop_column('signed')
    with op.batch_alter_table('device_updates', schema=None) as batch_op:
        batch_op.drop_column('install_evidence')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('decommissioned_at')
        batch_op.drop_column('revoked_at')
        batch_op.drop_column('reauthorized_until')
        batch_op.drop_column('proof_ms')
        batch_op.drop_column('public_key')
