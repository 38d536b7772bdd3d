"""Events out (issue 21 item 4): webhook subscriptions and their outbox of deliveries.

``webhook_subscriptions``: a receiver's URL, its signing secret (kept as given: the server must compute
HMAC-SHA256 with it for every delivery, so a digest would not do), the events it wants, who added it and
whether it is still active (a removed subscription is deactivated, its delivery log kept).
``webhook_deliveries``: the outbox.  One row per (event, matching subscription), inserted in the
transaction of the change that caused the event, so an event is delivered if and only if its change
committed, even across a restart (the index on (state, next_attempt_at) answers the worker's "anything
due?" without a lock or a scan of delivered rows); the delivery worker updates the row's attempts, next attempt time,
last status code and error, and marks it delivered or failed.

Also an index on ``devices (line, running_version)`` so the /metrics fleet gauges' GROUP BY reads the
index only (the tick aggregates, not the scrape).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-11 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'webhook_subscriptions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('url', sa.String(length=2048), nullable=False),
        sa.Column('secret', sa.String(length=256), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('subscription_id', sa.Integer(), nullable=False),
        sa.Column('event', sa.String(length=50), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['subscription_id'], ['webhook_subscriptions.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_subscription_state', ['subscription_id', 'state', 'id'],
                              unique=False)
        batch_op.create_index('ix_webhook_deliveries_state_next_attempt', ['state', 'next_attempt_at'], unique=False)
    with op.batch_alter_table('device_lines', schema=None) as batch_op:
        batch_op.create_index('ix_device_lines_line_running_version', ['line', 'running_version'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('device_lines', schema=None) as batch_op:
        batch_op.drop_index('ix_device_lines_line_running_version')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_state_next_attempt')
        batch_op.drop_index('ix_webhook_deliveries_subscription_state')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_subscriptions')
