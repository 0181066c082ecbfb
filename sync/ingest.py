"""A pull (:class:`~labelloop.connectors.platform.PullResult`) into the store, idempotently, data
and cursor in one transaction.

Per annotation pulled:

- the same (source, annotation id, updated_at) as its latest stored revision: nothing is written
  (without an ``updated_at``, the same content counts as the same state);
- otherwise a new revision is appended (revisions are never updated or deleted) and the
  annotation's head moves to it;
- an annotation that cannot be used (no ids, a bad image size, a region that is not a Region, a
  non-finite coordinate, an unreadable date...) goes to the ``quarantine`` table with its reason
  (a :class:`~labelloop.errors.DataError`) and the rest ingest. Boxes outside the image or of zero
  size are kept: the version checks report them by item.

Reconciliation (deletions never show up in an ``updated_at`` poll): for every task the pull read
(``result.present``), a stored live annotation whose id is not listed is tombstoned
(``annotation_absent``); when the pull listed every task of the container (``result.all_tasks``),
a stored task not listed is tombstoned with all its live annotations (``task_absent``). A
tombstoned annotation that comes back gets a new revision and is live again.

Which source a label is (``label_source``): ``extra["label_source"]`` when the connector says;
else the regions' provenance when all regions share one machine source and no person submitted
them (pseudo and synthetic regions stay machine labels even under a user's name: an API import);
else ``human``. A person who submits a prelabel unchanged made a human label: that is what
submitting means on Community Label Studio.

Speed: per batch of :data:`BATCH` annotations one query reads the heads, one the tasks, one the
items; inserts and updates go as executemany lists; no ORM objects are made in this path.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from labelloop.connectors.formats.canonical_json import region_to_dict
from labelloop.connectors.platform import Cursor, PulledAnnotation, PullResult, Target
from labelloop.errors import DataError, ErrorKind, LabelloopError, StoreError
from labelloop.sync.store.bulk import insert_rows, is_postgres, next_ids
from labelloop.sync.store.engine import Store
from labelloop.sync.store.keys import FILLABLE, item_key, uri_sha
from labelloop.sync.store.models import (
    HeadRow,
    ItemRow,
    ItemUriRow,
    QuarantineRow,
    RevisionRow,
    SourceRow,
    TaskRow,
    TombstoneRow,
    utcnow,
)
from labelloop.types import ImageItem, Region, Source

BATCH = 500
META_KEYS = ("source_id", "timestamp", "camera", "scene", "video", "uploader")
"""Seed metadata read from ``item.metadata`` into item columns; all of ``item.metadata`` (the
platform's ids and fields) is kept with the revision, in ``extra["item_metadata"]``."""


@dataclass
class IngestReport:
    source: str
    pulled: int = 0  # annotations in the result
    new_revisions: int = 0
    unchanged: int = 0
    stale: int = 0  # older than the stored state (an out-of-order pull): not kept as the head
    quarantined: int = 0
    tombstoned: int = 0  # annotations found deleted
    tasks_deleted: int = 0
    new_items: int = 0
    rekeyed: int = 0  # tasks moved from a placeholder to the real sha
    cursor_saved: bool = False
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)  # quarantine reasons, first few

    @property
    def changed(self) -> int:
        return self.new_revisions + self.tombstoned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


now = utcnow


def parse_time(value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(f"time {value!r} is not an ISO-8601 string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise DataError(f"time {value!r} is not ISO-8601") from None
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


# ------------------------------------------------------------------------------- public API


def ingest(
    store_or_session: Store | Session,
    target: Target,
    result: PullResult,
    *,
    commit_cursor: bool = True,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Write ``result`` (annotations, tombstones, quarantine and, with ``commit_cursor``, the
    cursor) in ONE transaction.

    Given a :class:`Store`, the transaction is opened and committed here. Given a ``Session``, the
    work runs in the caller's transaction and is flushed, not committed: the caller commits (and
    can add its own rows to the same transaction). A database failure raises StoreError
    (retryable); in the Store form nothing of the pass is kept, so the cursor never runs ahead of
    the data. ``progress`` is called with the number of annotations done after each batch.
    """
    t0 = time.monotonic()
    try:
        if isinstance(store_or_session, Store):
            with store_or_session.transaction() as s:
                report = _ingest(s, target, result, commit_cursor, progress)
        else:
            report = _ingest(store_or_session, target, result, commit_cursor, progress)
            store_or_session.flush()
    except DBAPIError as e:
        orig = getattr(e, "orig", None) or e
        first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        raise StoreError(f"store write for {target.key} failed: {first}") from e
    report.seconds = round(time.monotonic() - t0, 4)
    return report


def load_cursor(store_or_session: Store | Session, target: Target) -> Cursor | None:
    """The cursor stored for ``target`` (None before its first pull)."""
    if isinstance(store_or_session, Store):
        with store_or_session.session() as s:
            return load_cursor(s, target)
    text = store_or_session.execute(select(SourceRow.cursor).where(SourceRow.key == target.key)).scalar()
    return Cursor.from_json(text) if text else None


def quarantined(store_or_session: Store | Session, target: Target | None = None) -> list[dict[str, Any]]:
    """What is in quarantine (for ``target``, or all), newest first: source, task, annotation,
    updated_at, kind, reason, found_at."""
    if isinstance(store_or_session, Store):
        with store_or_session.session() as s:
            return quarantined(s, target)
    q = select(QuarantineRow).order_by(QuarantineRow.id.desc())
    if target is not None:
        q = q.where(QuarantineRow.source_key == target.key)
    return [
        {
            "source": r.source_key,
            "task_id": r.task_id,
            "annotation_id": r.annotation_id,
            "updated_at": r.updated_at,
            "kind": r.kind,
            "reason": r.reason,
            "found_at": r.found_at.isoformat() + "Z",
        }
        for r in store_or_session.execute(q).scalars()
    ]


def save_cursor(session: Session, target: Target, cursor: Cursor) -> None:
    """Store ``cursor`` for ``target`` in the caller's transaction."""
    _ensure_source(session, target)
    session.execute(
        update(SourceRow)
        .where(SourceRow.key == target.key)
        .values(cursor=cursor.to_json(), cursor_at=now(), passes=SourceRow.passes + 1)
    )


# ------------------------------------------------------------------------------- internals


@dataclass(slots=True)
class _Row:
    """One usable annotation, ready for the tables."""

    task_id: str
    annotation_id: str
    state_key: str
    revision: dict[str, Any]
    item: dict[str, Any]
    uri: str | None
    placeholder: bool


def _ingest(
    s: Session,
    target: Target,
    result: PullResult,
    commit_cursor: bool,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    report = IngestReport(target.key, pulled=len(result.annotations))
    _lock_source(s, target)
    _ensure_source(s, target)
    stamp = now()
    quarantined: list[dict[str, Any]] = []
    anns = result.annotations
    for start in range(0, len(anns), BATCH):
        batch = anns[start : start + BATCH]
        _write_batch(s, target, batch, stamp, report, quarantined)
        if progress is not None:
            progress(len(batch))
    if quarantined:
        _write_quarantine(s, target, quarantined, report)
    _reconcile(s, target, result, stamp, report)
    if commit_cursor:
        save_cursor(s, target, result.cursor)
        report.cursor_saved = True
    return report


def _lock_source(s: Session, target: Target) -> None:
    """On PostgreSQL, one ingest per source at a time (held to the end of the transaction), so two
    syncs of one source serialise instead of racing for the same heads. SQLite has one writer."""
    if is_postgres(s):
        key = int.from_bytes(hashlib.sha256(target.key.encode()).digest()[:8], "big", signed=True)
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _ensure_source(s: Session, target: Target) -> None:
    if s.execute(select(SourceRow.key).where(SourceRow.key == target.key)).first() is None:
        s.execute(
            insert(SourceRow).values(
                key=target.key,
                platform=target.platform,
                url=target.url.rstrip("/"),
                container=int(target.container),
                passes=0,
            )
        )


def _text_id(value: Any, what: str) -> str:
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        raise DataError(f"annotation has no {what}")
    text = str(value)
    if len(text) > 255:
        raise DataError(f"{what} {text[:40]!r}... is longer than 255 characters")
    return text


def _regions_json(regions: Any, what: str) -> tuple[str, list[dict[str, Any]]]:
    if regions is None:
        regions = []
    if not isinstance(regions, list | tuple):
        raise DataError(f"{what} is a {type(regions).__name__}, not a list of regions")
    dicts = []
    for k, r in enumerate(regions):
        if not isinstance(r, Region):
            raise DataError(f"{what}[{k}] is a {type(r).__name__}, not a Region")
        if not isinstance(r.label, str) or not r.label:
            raise DataError(f"{what}[{k}] has no label")
        dicts.append(region_to_dict(r))
    try:
        text = json.dumps(dicts, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise DataError(f"{what} has a coordinate or score that is not a finite number") from None
    except TypeError as e:
        raise DataError(f"{what} holds something JSON cannot (attributes?): {e}") from None
    return text, dicts


def _label_source(ann: PulledAnnotation, regions: Sequence[Region]) -> str:
    given = (ann.extra or {}).get("label_source")
    if given is not None:
        try:
            return str(Source(given))
        except ValueError:
            raise DataError(f"label_source {given!r} is not one of {[str(x) for x in Source]}") from None
    sources = {r.provenance.source for r in regions}
    if len(sources) == 1:
        (only,) = sources
        if only in (Source.PSEUDO, Source.SYNTHETIC) or (only == Source.PRELABEL and not ann.annotator):
            return str(only)
    return str(Source.HUMAN)


def _finite(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{what} {value!r} is not finite")
    return v


def _short(value: Any, n: int = 64) -> str | None:
    return None if value is None else str(value)[:n]


def _convert(target: Target, ann: PulledAnnotation, stamp: datetime) -> _Row:
    if getattr(ann, "error", None):
        raise DataError(str(ann.error))
    task_id = _text_id(ann.task_id, "task id")
    annotation_id = _text_id(ann.annotation_id, "annotation id")
    item = ann.item
    if not isinstance(item, ImageItem):
        raise DataError(f"annotation {annotation_id} carries no image item")
    try:
        width, height = int(item.width), int(item.height)
    except (TypeError, ValueError):
        raise DataError(f"image size {item.width!r}x{item.height!r} is not a number") from None
    if width < 0 or height < 0 or ((width == 0 or height == 0) and width + height != 0):
        raise DataError(f"image size {width}x{height} is not positive")
    if width == 0 and any(getattr(r, "geometry", None) is not None for r in item.regions):
        # 0x0 = size unknown: fine for an empty or whole-image label, not for regions in pixels
        raise DataError("image size 0x0 (unknown) but the annotation has regions; their pixels need the size")
    regions_text, _ = _regions_json(item.regions, "regions")
    prelabel_text = None
    extra = dict(ann.extra or {})
    if ann.prelabel is not None:
        try:
            prelabel_text, _ = _regions_json(ann.prelabel, "prelabel")
        except DataError as e:  # the human label is still good; say why its prelabel is not kept
            extra["prelabel_error"] = str(e)
    updated_ts = parse_time(ann.updated_at)
    parse_time(ann.created_at)
    review_state = ann.review_state
    if review_state not in (None, "accepted", "rejected"):
        raise DataError(f"review state {review_state!r} is not accepted, rejected or none")
    label_source = _label_source(ann, item.regions)
    key, placeholder = item_key(target.key, task_id, item.sha256)
    job_id = None if ann.job_id is None else int(ann.job_id)
    content = hashlib.sha256(
        json.dumps(
            [
                regions_text,
                prelabel_text,
                bool(ann.cancelled),
                bool(ann.ground_truth),
                review_state,
                ann.reviewer,
                ann.annotator,
                ann.stage,
                ann.state,
                ann.prelabel_id,
                label_source,
                key,  # the item it shows: a sha learnt later is a new state (it re-keys the task)
                width,
                height,
            ],
            default=str,
        ).encode()
    ).hexdigest()
    state_key = str(ann.updated_at)[:255] if ann.updated_at else f"sha:{content}"
    try:
        extra_json = json.loads(json.dumps(extra, default=str, allow_nan=False)) if extra else None
    except ValueError:
        extra_json = {"unserialisable": True}
    revision = {
        "source_key": target.key,
        "platform": str(ann.platform or target.platform),
        "container": int(ann.container if ann.container is not None else target.container),
        "task_id": task_id,
        "annotation_id": annotation_id,
        "state_key": state_key,
        "job_id": job_id,
        "stage": _short(ann.stage),
        "state": _short(ann.state),
        "annotator": None if ann.annotator is None else str(ann.annotator),
        "reviewer": None if ann.reviewer is None else str(ann.reviewer),
        "review_state": review_state,
        "created_at": _short(ann.created_at),
        "updated_at": _short(ann.updated_at),
        "updated_ts": updated_ts,
        "lead_time": _finite(ann.lead_time, "lead time"),
        "cancelled": bool(ann.cancelled),
        "ground_truth": bool(ann.ground_truth),
        "label_source": label_source,
        "prelabel_id": None if ann.prelabel_id is None else str(ann.prelabel_id)[:255],
        "prelabel_model_version": None
        if ann.prelabel_model_version is None
        else str(ann.prelabel_model_version),
        "prelabel_json": prelabel_text,
        "regions_json": regions_text,
        "n_regions": len(item.regions),
        "width": width,
        "height": height,
        "content_sha": content,
        "extra": extra_json,
        "ingested_at": stamp,
    }
    meta = dict(item.metadata or {})
    if meta:  # what the platform said with this state (its ids, fields): kept with the revision
        extra_json = {**(extra_json or {}), "item_metadata": _plain_meta(meta)}
        revision["extra"] = extra_json
    item_row = {
        "sha256": key,
        "placeholder": placeholder,
        "replaced_by": None,
        "uri": item.uri,
        "width": width or None,  # 0 = unknown: a later sighting fills it in
        "height": height or None,
        "size_bytes": _int_or_none(meta.get("size_bytes")),
        "group_id": None if item.group_id is None else str(item.group_id),
        **{k: (None if meta.get(k) is None else str(meta[k])) for k in META_KEYS},
        "meta": None,  # set by tools that import images with metadata of the image itself
        "first_seen": stamp,
    }
    return _Row(task_id, annotation_id, state_key, revision, item_row, item.uri or None, placeholder)


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any] | None:
    if not meta:
        return None
    try:
        return json.loads(json.dumps(meta, default=str, allow_nan=False))
    except ValueError:
        return {k: str(v) for k, v in meta.items()}


def _older(r: _Row, head_state: str) -> bool:
    """Whether ``r`` is dated before the stored head (both with an updated_at)."""
    new_ts = r.revision["updated_ts"]
    if new_ts is None or head_state.startswith("sha:"):
        return False
    try:
        old_ts = parse_time(head_state)
    except DataError:
        return False
    return old_ts is not None and new_ts < old_ts


def _convert_or_quarantine(
    target: Target, ann: PulledAnnotation, stamp: datetime, quarantined: list[dict[str, Any]]
) -> _Row | None:
    try:
        return _convert(target, ann, stamp)
    except LabelloopError as e:
        quarantined.append(_quarantine_row(target, ann, e.kind, str(e), stamp))
    except Exception as e:  # malformed beyond what the checks in _convert name
        reason = f"unusable annotation ({type(e).__name__}: {e})"
        quarantined.append(_quarantine_row(target, ann, ErrorKind.DATA, reason, stamp))
    return None


def _write_batch(
    s: Session,
    target: Target,
    batch: Sequence[PulledAnnotation],
    stamp: datetime,
    report: IngestReport,
    quarantined: list[dict[str, Any]],
) -> None:
    key = target.key
    # 1. which of these states are stored already (one query), before converting anything: an
    # annotation pulled again with the same updated_at costs a dict lookup, not a conversion
    ids = list({str(a.annotation_id) for a in batch if a.annotation_id is not None})
    heads = {
        a: (seq, state_key, deleted, content)
        for a, seq, state_key, deleted, content in s.execute(
            select(
                HeadRow.annotation_id, HeadRow.seq, HeadRow.state_key, HeadRow.deleted, HeadRow.content_sha
            ).where(HeadRow.source_key == key, HeadRow.annotation_id.in_(ids))
        )
    }
    new: list[_Row] = []
    seqs: dict[str, int] = {}
    fresh_heads: set[str] = set()
    for ann in batch:
        if ann.updated_at and ann.annotation_id is not None:
            head = heads.get(str(ann.annotation_id))
            if head is not None and head[1] == str(ann.updated_at)[:255] and not head[2]:
                report.unchanged += 1
                continue
        r = _convert_or_quarantine(target, ann, stamp, quarantined)
        if r is None:
            continue
        head = heads.get(r.annotation_id)
        content = r.revision["content_sha"]
        if head is not None and not head[2] and (head[1] == r.state_key or head[3] == content):
            report.unchanged += 1  # the same state, or the same content under a newer stamp
            continue
        if head is not None and not head[2] and _older(r, head[1]):
            report.stale += 1
            continue
        seq = (head[0] if head else 0) + 1
        if head is None:
            fresh_heads.add(r.annotation_id)
        heads[r.annotation_id] = (seq, r.state_key, False, content)
        seqs[r.annotation_id] = seq
        r.revision["seq"] = seq
        new.append(r)
    if not new:
        return
    # 2. items and tasks of the new revisions
    _write_items(s, new, report)
    _write_tasks(s, key, new, report)
    # 3. revisions (append), then heads (insert new, move existing)
    rev_ids = next_ids(s, RevisionRow.__table__, len(new))
    for rid, r in zip(rev_ids, new, strict=True):
        r.revision["id"] = rid
    insert_rows(s, RevisionRow.__table__, [r.revision for r in new])
    report.new_revisions += len(new)
    latest: dict[str, tuple[int, _Row]] = {}
    for rid, r in zip(rev_ids, new, strict=True):
        latest[r.annotation_id] = (rid, r)  # the last state of an id in this batch wins
    head_rows = [
        {
            "source_key": key,
            "annotation_id": a,
            "task_id": r.task_id,
            "revision_id": rid,
            "seq": seqs[a],
            "state_key": r.state_key,
            "content_sha": r.revision["content_sha"],
            "deleted": False,
        }
        for a, (rid, r) in latest.items()
    ]
    inserts = [h for h in head_rows if h["annotation_id"] in fresh_heads]
    updates = [h for h in head_rows if h["annotation_id"] not in fresh_heads]
    insert_rows(s, HeadRow.__table__, inserts)
    if updates:
        t = HeadRow.__table__
        s.execute(
            update(t)
            .where(t.c.source_key == bindparam("b_key"), t.c.annotation_id == bindparam("b_id"))
            .values(
                task_id=bindparam("b_task"),
                revision_id=bindparam("b_rev"),
                seq=bindparam("b_seq"),
                state_key=bindparam("b_state"),
                content_sha=bindparam("b_content"),
                deleted=False,
            )
            .execution_options(synchronize_session=False),
            [
                {
                    "b_key": h["source_key"],
                    "b_id": h["annotation_id"],
                    "b_task": h["task_id"],
                    "b_rev": h["revision_id"],
                    "b_seq": h["seq"],
                    "b_state": h["state_key"],
                    "b_content": h["content_sha"],
                }
                for h in updates
            ],
        )


def _write_items(s: Session, new: list[_Row], report: IngestReport) -> None:
    items: dict[str, dict[str, Any]] = {}
    for r in new:
        items.setdefault(r.item["sha256"], r.item)
    cols = [getattr(ItemRow, c) for c in FILLABLE]
    existing = {
        row[0]: row[1:]
        for row in s.execute(select(ItemRow.sha256, *cols).where(ItemRow.sha256.in_(list(items))))
    }
    fresh = [it for sha, it in items.items() if sha not in existing]
    insert_rows(s, ItemRow.__table__, fresh)
    report.new_items += len(fresh)
    fills = []
    for sha, old in existing.items():
        it = items[sha]
        changes = {
            c: it[c] for c, v in zip(FILLABLE, old, strict=True) if v is None and it.get(c) is not None
        }
        if changes:
            fills.append((sha, changes))
    for sha, changes in fills:  # rare: metadata that was unknown arrives
        s.execute(update(ItemRow).where(ItemRow.sha256 == sha).values(**changes))
    uris = {(r.item["sha256"], uri_sha(r.uri)): r.uri for r in new if r.uri}
    if uris:
        known = {
            (sha, us)
            for sha, us in s.execute(
                select(ItemUriRow.sha256, ItemUriRow.uri_sha).where(ItemUriRow.sha256.in_(list(items)))
            )
        }
        insert_rows(
            s,
            ItemUriRow.__table__,
            [
                {"sha256": sha, "uri_sha": us, "uri": u}
                for (sha, us), u in uris.items()
                if (sha, us) not in known
            ],
        )


def _write_tasks(s: Session, key: str, new: list[_Row], report: IngestReport) -> None:
    tasks: dict[str, _Row] = {}
    for r in new:
        tasks[r.task_id] = r  # the latest state of a task names its item
    existing = {
        t: (sha, ph, deleted)
        for t, sha, ph, deleted in s.execute(
            select(TaskRow.task_id, TaskRow.item_sha, TaskRow.placeholder, TaskRow.deleted).where(
                TaskRow.source_key == key, TaskRow.task_id.in_(list(tasks))
            )
        )
    }
    fresh, moved = [], []
    for t, r in tasks.items():
        sha, ph = r.item["sha256"], r.placeholder
        if t not in existing:
            fresh.append(
                {
                    "source_key": key,
                    "task_id": t,
                    "item_sha": sha,
                    "placeholder": ph,
                    "uri": r.uri,
                    "deleted": False,
                }
            )
            continue
        old_sha, old_ph, deleted = existing[t]
        if ph and not old_ph:
            sha, ph = old_sha, old_ph  # never back from a real sha to the placeholder
        if (sha, ph) != (old_sha, old_ph) or deleted:
            moved.append({"b_task": t, "b_sha": sha, "b_ph": ph, "b_uri": r.uri, "b_old": old_sha})
            if old_ph and not ph:
                report.rekeyed += 1
    insert_rows(s, TaskRow.__table__, fresh)
    if moved:
        t = TaskRow.__table__
        s.execute(
            update(t)
            .where(t.c.source_key == key, t.c.task_id == bindparam("b_task"))
            .values(
                item_sha=bindparam("b_sha"),
                placeholder=bindparam("b_ph"),
                uri=bindparam("b_uri"),
                deleted=False,
            )
            .execution_options(synchronize_session=False),
            moved,
        )
        rekeyed = [(m["b_old"], m["b_sha"]) for m in moved if m["b_old"] != m["b_sha"] and not m["b_ph"]]
        for old, new_sha in rekeyed:
            s.execute(
                update(ItemRow)
                .where(ItemRow.sha256 == old, ItemRow.placeholder.is_(True))
                .values(replaced_by=new_sha)
            )


def _quarantine_row(
    target: Target, ann: Any, kind: ErrorKind, reason: str, stamp: datetime
) -> dict[str, Any]:
    def attr(name: str) -> Any:
        v = getattr(ann, name, None)
        return None if v is None else str(v)[:255]

    try:
        payload = json.dumps(
            {k: getattr(ann, k, None) for k in ("task_id", "annotation_id", "updated_at", "annotator")}
            | {"item": repr(getattr(ann, "item", None))[:2000], "extra": getattr(ann, "extra", None)},
            default=str,
        )
    except Exception:
        payload = None
    return {
        "source_key": target.key,
        "task_id": attr("task_id"),
        "annotation_id": attr("annotation_id"),
        "updated_at": None if attr("updated_at") is None else attr("updated_at")[:64],  # type: ignore[index]
        "kind": str(kind),
        "reason": reason[:2000],
        "payload": payload,
        "found_at": stamp,
    }


def _write_quarantine(s: Session, target: Target, rows: list[dict[str, Any]], report: IngestReport) -> None:
    """Once per (source, annotation, updated_at): a state pulled again is not quarantined twice."""
    ids = [r["annotation_id"] for r in rows if r["annotation_id"] is not None]
    seen: set[tuple[str | None, str | None]] = set()
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        seen |= {
            (a, u)
            for a, u in s.execute(
                select(QuarantineRow.annotation_id, QuarantineRow.updated_at).where(
                    QuarantineRow.source_key == target.key, QuarantineRow.annotation_id.in_(chunk)
                )
            )
        }
    fresh = []
    for r in rows:
        k = (r["annotation_id"], r["updated_at"])
        if k in seen and r["annotation_id"] is not None:
            continue
        seen.add(k)
        fresh.append(r)
    if fresh:
        s.execute(insert(QuarantineRow), fresh)
    report.quarantined += len(rows)
    report.reasons += [
        f"{r['annotation_id']}: {r['reason']}" for r in rows[: max(0, 10 - len(report.reasons))]
    ]


def _chunks(values: Iterable[str], n: int = BATCH) -> Iterable[list[str]]:
    values = list(values)
    for start in range(0, len(values), n):
        yield values[start : start + n]


def _reconcile(s: Session, target: Target, result: PullResult, stamp: datetime, report: IngestReport) -> None:
    key = target.key
    present: dict[str, set[str]] = {
        str(t): {str(a) for a in ids} for t, ids in (result.present or {}).items()
    }
    for ann in result.annotations:  # what the pull returned is present, whatever ``present`` says
        if ann.task_id is not None and str(ann.task_id) in present:
            present[str(ann.task_id)].add(str(ann.annotation_id))
    tombs: list[dict[str, Any]] = []
    gone: list[str] = []
    for chunk in _chunks(present):
        for a, t, rid in s.execute(
            select(HeadRow.annotation_id, HeadRow.task_id, HeadRow.revision_id).where(
                HeadRow.source_key == key, HeadRow.task_id.in_(chunk), HeadRow.deleted.is_(False)
            )
        ):
            if a not in present[t]:
                gone.append(a)
                tombs.append(_tomb(key, t, a, rid, "annotation_absent", stamp))
    if result.all_tasks is not None:
        listed = {str(t) for t in result.all_tasks}
        known = s.execute(
            select(TaskRow.task_id).where(TaskRow.source_key == key, TaskRow.deleted.is_(False))
        ).scalars()
        missing = [t for t in known if t not in listed]
        already = set(gone)
        for chunk in _chunks(missing):
            for a, t, rid in s.execute(
                select(HeadRow.annotation_id, HeadRow.task_id, HeadRow.revision_id).where(
                    HeadRow.source_key == key, HeadRow.task_id.in_(chunk), HeadRow.deleted.is_(False)
                )
            ):
                if a not in already:
                    gone.append(a)
                    tombs.append(_tomb(key, t, a, rid, "task_absent", stamp))
        tombs += [_tomb(key, t, None, None, "task_absent", stamp) for t in missing]
        for chunk in _chunks(missing):
            s.execute(
                update(TaskRow)
                .where(TaskRow.source_key == key, TaskRow.task_id.in_(chunk))
                .values(deleted=True)
                .execution_options(synchronize_session=False)
            )
        report.tasks_deleted += len(missing)
    if not tombs:
        return
    ids = next_ids(s, TombstoneRow.__table__, len(tombs))
    insert_rows(s, TombstoneRow.__table__, [{"id": i, **t} for i, t in zip(ids, tombs, strict=True)])
    for chunk in _chunks(gone):
        s.execute(
            update(HeadRow)
            .where(HeadRow.source_key == key, HeadRow.annotation_id.in_(chunk))
            .values(deleted=True)
            .execution_options(synchronize_session=False)
        )
    report.tombstoned += len(gone)


def _tomb(
    key: str, task: str, ann: str | None, rid: int | None, reason: str, stamp: datetime
) -> dict[str, Any]:
    return {
        "source_key": key,
        "task_id": task,
        "annotation_id": ann,
        "revision_id": rid,
        "reason": reason,
        "found_at": stamp,
    }
