"""Per-target variants of a version (issue 20 item 3, variants).

A version may have more than one export (for example an opset-11 one for old cars): ``version_variants``
holds every export after the first (its number, source, requirements), ``packages.variant`` says which
export a package encodes (0: the version's own, the primary), and a version has one package per
(variant, codec).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'version_variants',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('variant', sa.Integer(), nullable=False),
        sa.Column('source_sha256', sa.String(length=64), nullable=False),
        sa.Column('source_bytes', sa.BigInteger(), nullable=False),
        sa.Column('requirements', sa.JSON(), nullable=False),
        sa.Column('publisher', sa.String(length=200), nullable=True),
        sa.Column('notes', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['version_id'], ['versions.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('version_id', 'variant', name='uq_version_variants_version_variant'),
    )
    with op.batch_alter_table('packages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('variant', sa.Integer(), nullable=False, server_default='0'))
        batch_op.drop_constraint('uq_packages_version_codec', type_='unique')
        batch_op.create_unique_constraint('uq_packages_version_variant_codec', ['version_id', 'variant', 'codec'])


def downgrade() -> None:
    op.execute("DELETE FROM packages WHERE variant <> 0")
    with op.batch_alter_table('packages', schema=None) as batch_op:
        batch_op.drop_constraint('uq_packages_version_variant_codec', type_='unique')
        batch_op.create_unique_constraint('uq_packages_version_codec', ['version_id', 'codec'])
        batch_op.drop_column('variant')
    op.drop_table('version_variants')
