"""The dataset store's tables (SQLAlchemy 2 declarative). The schema itself is made by the Alembic
migrations in ``migrations/``; a test checks that the migrated schema equals these models.

What each table holds:

- ``sources``: one row per :class:`~labelloop.connectors.platform.Target` (its ``key``), with the
  pull cursor, so the sync commits data and cursor in one transaction.
- ``items``: one row per image, keyed by the sha256 of its bytes, or by a placeholder when the
  bytes were not known at pull time (see :mod:`labelloop.sync.store.keys`); size, group, the
  seed's metadata (source id, timestamp, camera, scene, video, uploader).
- ``item_uris``: every URI an item was seen under.
- ``tasks``: a platform task -> the item it shows. Revisions name the task, not the item, so when a
  placeholder is re-keyed to the real sha only this row changes and revisions stay untouched.
- ``annotation_revisions``: append-only; one row per annotation state pulled.
- ``annotation_heads``: the latest revision of each annotation (and whether it is deleted): the
  one mutable index the hot path reads, one query per batch.
- ``tombstones``: deletions found by reconciliation (an annotation or a whole task gone).
- ``quarantine``: annotations that could not be used, with the reason.
- ``versions`` / ``version_entries``: immutable dataset manifests (item -> revision -> split).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity
BigId = BigInteger().with_variant(Integer(), "sqlite")
SHA = String(64)
KEY = String(512)  # Target.key: platform + url + container
ID = String(255)  # platform ids as text (LS ints, CVAT "job:J:frame:N")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


class SourceRow(Base):
    __tablename__ = "sources"

    key: Mapped[str] = mapped_column(KEY, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    container: Mapped[int] = mapped_column(BigInteger)
    cursor: Mapped[str | None] = mapped_column(Text)  # Cursor.to_json()
    cursor_at: Mapped[datetime | None] = mapped_column(DateTime)
    passes: Mapped[int] = mapped_column(Integer, default=0)


class ItemRow(Base):
    __tablename__ = "items"

    sha256: Mapped[str] = mapped_column(SHA, primary_key=True)
    placeholder: Mapped[bool] = mapped_column(Boolean, default=False)  # key is not the bytes' sha
    replaced_by: Mapped[str | None] = mapped_column(SHA)  # placeholder re-keyed to this sha
    uri: Mapped[str | None] = mapped_column(Text)  # first URI seen
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    group_id: Mapped[str | None] = mapped_column(Text)  # scene / video / source: splits keep it whole
    source_id: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[str | None] = mapped_column(Text)
    camera: Mapped[str | None] = mapped_column(Text)
    scene: Mapped[str | None] = mapped_column(Text)
    video: Mapped[str | None] = mapped_column(Text)
    uploader: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    first_seen: Mapped[datetime] = mapped_column(DateTime)


class ItemUriRow(Base):
    __tablename__ = "item_uris"

    sha256: Mapped[str] = mapped_column(SHA, primary_key=True)
    uri_sha: Mapped[str] = mapped_column(SHA, primary_key=True)  # sha256 of the uri (data: URIs are long)
    uri: Mapped[str] = mapped_column(Text)


class TaskRow(Base):
    __tablename__ = "tasks"

    source_key: Mapped[str] = mapped_column(KEY, ForeignKey("sources.key"), primary_key=True)
    task_id: Mapped[str] = mapped_column(ID, primary_key=True)
    item_sha: Mapped[str] = mapped_column(SHA, index=True)
    placeholder: Mapped[bool] = mapped_column(Boolean, default=False)
    uri: Mapped[str | None] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class RevisionRow(Base):
    """One annotation state as pulled; never updated, never deleted."""

    __tablename__ = "annotation_revisions"
    __table_args__ = (
        UniqueConstraint("source_key", "annotation_id", "seq", name="uq_revision_seq"),
        Index("ix_revision_task", "source_key", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_key: Mapped[str] = mapped_column(KEY, ForeignKey("sources.key"))
    platform: Mapped[str] = mapped_column(String(32))
    container: Mapped[int] = mapped_column(BigInteger)  # LS project / CVAT task
    task_id: Mapped[str] = mapped_column(ID)
    annotation_id: Mapped[str] = mapped_column(ID)
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per annotation
    state_key: Mapped[str] = mapped_column(String(255))  # updated_at, or "sha:<content>" without one
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    stage: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(64))
    annotator: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(Text)
    review_state: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[str | None] = mapped_column(String(64))  # as the platform stamped it
    updated_at: Mapped[str | None] = mapped_column(String(64))
    updated_ts: Mapped[datetime | None] = mapped_column(DateTime)  # parsed, UTC, for ordering
    lead_time: Mapped[float | None] = mapped_column(Float)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    ground_truth: Mapped[bool] = mapped_column(Boolean, default=False)
    label_source: Mapped[str] = mapped_column(String(16))  # human / prelabel / pseudo / synthetic
    prelabel_id: Mapped[str | None] = mapped_column(ID)
    prelabel_model_version: Mapped[str | None] = mapped_column(Text)
    prelabel_json: Mapped[str | None] = mapped_column(Text)  # canonical JSON list of regions
    regions_json: Mapped[str] = mapped_column(Text)  # canonical JSON list of regions
    n_regions: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    content_sha: Mapped[str] = mapped_column(SHA)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ingested_at: Mapped[datetime] = mapped_column(DateTime)


class HeadRow(Base):
    __tablename__ = "annotation_heads"
    __table_args__ = (Index("ix_head_task", "source_key", "task_id"),)

    source_key: Mapped[str] = mapped_column(KEY, ForeignKey("sources.key"), primary_key=True)
    annotation_id: Mapped[str] = mapped_column(ID, primary_key=True)
    task_id: Mapped[str] = mapped_column(ID)
    revision_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(Integer)
    state_key: Mapped[str] = mapped_column(String(255))
    content_sha: Mapped[str | None] = mapped_column(SHA)  # the head revision's (migration 0002)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class TombstoneRow(Base):
    """A deletion found by reconciliation. ``annotation_id`` None: the whole task is gone (each of
    its live annotations gets its own row too). ``revision_id``: the revision it ended."""

    __tablename__ = "tombstones"
    __table_args__ = (Index("ix_tombstone_task", "source_key", "task_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_key: Mapped[str] = mapped_column(KEY, ForeignKey("sources.key"))
    task_id: Mapped[str] = mapped_column(ID)
    annotation_id: Mapped[str | None] = mapped_column(ID)
    revision_id: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32))  # annotation_absent / task_absent
    found_at: Mapped[datetime] = mapped_column(DateTime)


class QuarantineRow(Base):
    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_annotation", "source_key", "annotation_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_key: Mapped[str] = mapped_column(KEY, ForeignKey("sources.key"))
    task_id: Mapped[str | None] = mapped_column(ID)
    annotation_id: Mapped[str | None] = mapped_column(ID)
    updated_at: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # ErrorKind
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str | None] = mapped_column(Text)  # what could be kept of it, for a human
    found_at: Mapped[datetime] = mapped_column(DateTime)


class VersionRow(Base):
    __tablename__ = "versions"

    id: Mapped[str] = mapped_column(SHA, primary_key=True)  # sha256(parent + manifest_sha)
    number: Mapped[int] = mapped_column(Integer, unique=True)  # 1, 2, ... in the order made
    parent_id: Mapped[str | None] = mapped_column(SHA)
    manifest_sha: Mapped[str] = mapped_column(SHA)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # split seed, val fraction, policy
    max_revision_id: Mapped[int] = mapped_column(BigInteger)  # the store as of this version
    max_tombstone_id: Mapped[int] = mapped_column(BigInteger)


class VersionEntryRow(Base):
    __tablename__ = "version_entries"

    version_id: Mapped[str] = mapped_column(SHA, ForeignKey("versions.id"), primary_key=True)
    item_sha: Mapped[str] = mapped_column(SHA, primary_key=True)
    revision_id: Mapped[int] = mapped_column(BigInteger)
    split: Mapped[str] = mapped_column(String(16))  # train / val / excluded
    verified: Mapped[bool] = mapped_column(Boolean)
    label_source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))  # ground_truth / accepted / latest_human / machine


TABLES = [t.name for t in Base.metadata.sorted_tables]


def utcnow() -> datetime:
    """Now in UTC, naive: both databases store it the same way."""
    return datetime.now(UTC).replace(tzinfo=None)
