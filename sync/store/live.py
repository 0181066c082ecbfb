"""The annotations that are alive: now, or as of a version's watermark.

An annotation is alive at watermark ``(max_revision_id, max_tombstone_id)`` when its latest
revision with ``id <= max_revision_id`` is not ended by a tombstone with ``id <= max_tombstone_id``
(a tombstone names the revision it ended; a revision after it brings the annotation back). With no
watermark, the heads table answers the same question for now, in one indexed query.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from labelloop.connectors.formats.canonical_json import region_from_dict
from labelloop.sync.store.models import HeadRow, RevisionRow, TaskRow, TombstoneRow
from labelloop.types import Region

BATCH = 500


@dataclass(frozen=True, slots=True)
class LiveRevision:
    """What label choice, agreement and effort need of a revision (its regions load separately)."""

    id: int
    source_key: str
    task_id: str
    annotation_id: str
    item_sha: str
    annotator: str | None
    reviewer: str | None
    review_state: str | None
    cancelled: bool
    ground_truth: bool
    label_source: str
    updated_ts: datetime | None
    prelabel_model_version: str | None
    has_prelabel: bool


_COLS = (
    RevisionRow.id,
    RevisionRow.source_key,
    RevisionRow.task_id,
    RevisionRow.annotation_id,
    TaskRow.item_sha,
    RevisionRow.annotator,
    RevisionRow.reviewer,
    RevisionRow.review_state,
    RevisionRow.cancelled,
    RevisionRow.ground_truth,
    RevisionRow.label_source,
    RevisionRow.updated_ts,
    RevisionRow.prelabel_model_version,
    RevisionRow.prelabel_json.is_not(None),
)


def watermark(session: Session) -> tuple[int, int]:
    """(highest revision id, highest tombstone id) now: what a version made now has seen."""
    r = session.execute(select(func.coalesce(func.max(RevisionRow.id), 0))).scalar_one()
    t = session.execute(select(func.coalesce(func.max(TombstoneRow.id), 0))).scalar_one()
    return int(r), int(t)


def live_revisions(
    session: Session, *, max_revision_id: int | None = None, max_tombstone_id: int | None = None
) -> list[LiveRevision]:
    """Every live annotation's current revision (now, or as of the watermark given), ordered by id."""
    task_join = and_(TaskRow.source_key == RevisionRow.source_key, TaskRow.task_id == RevisionRow.task_id)
    if max_revision_id is None and max_tombstone_id is None:
        q = (
            select(*_COLS)
            .select_from(HeadRow)
            .join(RevisionRow, RevisionRow.id == HeadRow.revision_id)
            .join(TaskRow, task_join)
            .where(HeadRow.deleted.is_(False))
        )
    else:
        wr = max_revision_id if max_revision_id is not None else 2**62
        wt = max_tombstone_id if max_tombstone_id is not None else 2**62
        latest = (
            select(func.max(RevisionRow.id).label("id"))
            .where(RevisionRow.id <= wr)
            .group_by(RevisionRow.source_key, RevisionRow.annotation_id)
            .subquery()
        )
        ended = exists().where(
            TombstoneRow.id <= wt,
            TombstoneRow.source_key == RevisionRow.source_key,
            TombstoneRow.annotation_id == RevisionRow.annotation_id,
            TombstoneRow.revision_id >= RevisionRow.id,
        )
        q = (
            select(*_COLS)
            .select_from(RevisionRow)
            .join(latest, latest.c.id == RevisionRow.id)
            .join(TaskRow, task_join)
            .where(~ended)
        )
    return [LiveRevision(*row) for row in session.execute(q.order_by(RevisionRow.id))]


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    ids = list(ids)
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]


def region_dicts(session: Session, revision_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Revision id -> its regions as canonical dicts (cheap: labels and geometry without objects)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for chunk in _chunks(revision_ids):
        for rid, text in session.execute(
            select(RevisionRow.id, RevisionRow.regions_json).where(RevisionRow.id.in_(chunk))
        ):
            out[rid] = json.loads(text)
    return out


def regions(session: Session, revision_ids: Iterable[int]) -> dict[int, list[Region]]:
    """Revision id -> its regions."""
    return {rid: [region_from_dict(d) for d in ds] for rid, ds in region_dicts(session, revision_ids).items()}


def prelabels(session: Session, revision_ids: Iterable[int]) -> dict[int, list[Region]]:
    """Revision id -> the regions of the prelabel it started from (only revisions that have one)."""
    out: dict[int, list[Region]] = {}
    for chunk in _chunks(revision_ids):
        for rid, text in session.execute(
            select(RevisionRow.id, RevisionRow.prelabel_json).where(
                RevisionRow.id.in_(chunk), RevisionRow.prelabel_json.is_not(None)
            )
        ):
            out[rid] = [region_from_dict(d) for d in json.loads(text)]
    return out
