"""Input contracts per version, calibration images and a fidelity gate per line (issue 17).

``versions.contract`` is the version's input contract (protocol/contract.py), signed into every
offer.  Rows published before this revision were all of the one family the registry knew (the
road-sign zoo: NCHW, 64x64 stretch, RGB, 0..1 then mean 0.5 / std 0.25, logits on ``logits``), so
they are backfilled with that contract, their stored input name, size and labels.

``lines.probe_sha256`` / ``probe_count``: the line's calibration images (a content-addressed blob
of uint8 images) that the accuracy gate measures on; ``lines.min_agreement``: the line's gate for
lossy codecs (0.99 by default once the line has images).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 04:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_LEGACY = {"layout": "NCHW", "resize": "stretch", "channel_order": "RGB", "scale": 1.0,
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "output_name": "logits", "output_kind": "logits"}


def _legacy_contract(input_name: str, input_shape: list, labels: list) -> dict:
    dims = list(input_shape or [])
    height = int(dims[2]) if len(dims) == 4 and int(dims[2] or 0) > 0 else 64
    width = int(dims[3]) if len(dims) == 4 and int(dims[3] or 0) > 0 else 64
    return {"input_name": input_name, "height": height, "width": width, "labels": list(labels or []), **_LEGACY}


def upgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('contract', sa.JSON(), nullable=True))
    versions = sa.table('versions', sa.column('id', sa.Integer), sa.column('input_name', sa.String),
                        sa.column('input_shape', sa.JSON), sa.column('labels', sa.JSON),
                        sa.column('contract', sa.JSON))
    conn = op.get_bind()
    for row in conn.execute(sa.select(versions.c.id, versions.c.input_name, versions.c.input_shape,
                                      versions.c.labels)).all():
        conn.execute(versions.update().where(versions.c.id == row.id)
                     .values(contract=_legacy_contract(row.input_name, row.input_shape, row.labels)))
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.alter_column('contract', existing_type=sa.JSON(), nullable=False)

    with op.batch_alter_table('lines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('probe_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('probe_count', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('min_agreement', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('lines', schema=None) as batch_op:
        batch_op.drop_column('min_agreement')
        batch_op.drop_column('probe_count')
        batch_op.drop_column('probe_sha256')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_column('contract')
