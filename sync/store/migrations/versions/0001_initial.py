"""Initial schema: sources (cursors), items, item_uris, tasks, append-only annotation revisions and
their heads, tombstones, quarantine, versions and their entries.

Revision ID: 0001
Revises:
Create Date: 2026-12-01 13:20:18.836062
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_uris",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uri_sha", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", "uri_sha"),
    )
    op.create_table(
        "items",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("placeholder", sa.Boolean(), nullable=False),
        sa.Column("replaced_by", sa.String(length=64), nullable=True),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("group_id", sa.Text(), nullable=True),
        sa.Column("source_id", sa.Text(), nullable=True),
        sa.Column("timestamp", sa.Text(), nullable=True),
        sa.Column("camera", sa.Text(), nullable=True),
        sa.Column("scene", sa.Text(), nullable=True),
        sa.Column("video", sa.Text(), nullable=True),
        sa.Column("uploader", sa.Text(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "sources",
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("container", sa.BigInteger(), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("cursor_at", sa.DateTime(), nullable=True),
        sa.Column("passes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("manifest_sha", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("max_revision_id", sa.BigInteger(), nullable=False),
        sa.Column("max_tombstone_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("number"),
    )
    op.create_table(
        "annotation_heads",
        sa.Column("source_key", sa.String(length=512), nullable=False),
        sa.Column("annotation_id", sa.String(length=255), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("revision_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state_key", sa.String(length=255), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_key"],
            ["sources.key"],
        ),
        sa.PrimaryKeyConstraint("source_key", "annotation_id"),
    )
    with op.batch_alter_table("annotation_heads", schema=None) as batch_op:
        batch_op.create_index("ix_head_task", ["source_key", "task_id"], unique=False)

    op.create_table(
        "annotation_revisions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("source_key", sa.String(length=512), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("container", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("annotation_id", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state_key", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=64), nullable=True),
        sa.Column("annotator", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.Text(), nullable=True),
        sa.Column("review_state", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.String(length=64), nullable=True),
        sa.Column("updated_ts", sa.DateTime(), nullable=True),
        sa.Column("lead_time", sa.Float(), nullable=True),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("ground_truth", sa.Boolean(), nullable=False),
        sa.Column("label_source", sa.String(length=16), nullable=False),
        sa.Column("prelabel_id", sa.String(length=255), nullable=True),
        sa.Column("prelabel_model_version", sa.Text(), nullable=True),
        sa.Column("prelabel_json", sa.Text(), nullable=True),
        sa.Column("regions_json", sa.Text(), nullable=False),
        sa.Column("n_regions", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("content_sha", sa.String(length=64), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.Column("ingested_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_key"],
            ["sources.key"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_key", "annotation_id", "seq", name="uq_revision_seq"),
    )
    with op.batch_alter_table("annotation_revisions", schema=None) as batch_op:
        batch_op.create_index("ix_revision_task", ["source_key", "task_id"], unique=False)

    op.create_table(
        "quarantine",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("source_key", sa.String(length=512), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("annotation_id", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("found_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_key"],
            ["sources.key"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index("ix_quarantine_annotation", ["source_key", "annotation_id"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("source_key", sa.String(length=512), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("item_sha", sa.String(length=64), nullable=False),
        sa.Column("placeholder", sa.Boolean(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_key"],
            ["sources.key"],
        ),
        sa.PrimaryKeyConstraint("source_key", "task_id"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_item_sha"), ["item_sha"], unique=False)

    op.create_table(
        "tombstones",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("source_key", sa.String(length=512), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("annotation_id", sa.String(length=255), nullable=True),
        sa.Column("revision_id", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("found_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_key"],
            ["sources.key"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.create_index("ix_tombstone_task", ["source_key", "task_id"], unique=False)

    op.create_table(
        "version_entries",
        sa.Column("version_id", sa.String(length=64), nullable=False),
        sa.Column("item_sha", sa.String(length=64), nullable=False),
        sa.Column("revision_id", sa.BigInteger(), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("label_source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
        ),
        sa.PrimaryKeyConstraint("version_id", "item_sha"),
    )


def downgrade() -> None:
    op.drop_table("version_entries")
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.drop_index("ix_tombstone_task")

    op.drop_table("tombstones")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_item_sha"))

    op.drop_table("tasks")
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index("ix_quarantine_annotation")

    op.drop_table("quarantine")
    with op.batch_alter_table("annotation_revisions", schema=None) as batch_op:
        batch_op.drop_index("ix_revision_task")

    op.drop_table("annotation_revisions")
    with op.batch_alter_table("annotation_heads", schema=None) as batch_op:
        batch_op.drop_index("ix_head_task")

    op.drop_table("annotation_heads")
    op.drop_table("versions")
    op.drop_table("sources")
    op.drop_table("items")
    op.drop_table("item_uris")
