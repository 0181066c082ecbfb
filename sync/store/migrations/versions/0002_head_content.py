"""Heads remember their revision's content hash, so a state pulled again under a newer stamp with
the same content (CVAT re-dates every frame of a changed job) makes no new revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotation_heads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE annotation_heads SET content_sha = (SELECT r.content_sha FROM annotation_revisions r "
        "WHERE r.id = annotation_heads.revision_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("annotation_heads", schema=None) as batch_op:
        batch_op.drop_column("content_sha")
