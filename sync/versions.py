"""Dataset versions: immutable manifests (item sha -> chosen revision -> split).

**Which label counts** for an item (over every live annotation of every task that shows it):

1. a ground-truth annotation, else
2. an annotation whose review was accepted, else
3. the latest submitted human annotation (``label_source == "human"``), else
4. the latest machine label (pseudo, synthetic, or a prelabel nobody submitted): train only.

Never: a cancelled (skipped) annotation, an annotation rejected in review, a tombstoned one. Ties
within a rank go to the latest ``updated_at``, then the latest revision. Whether a label is
verified (may be in val) is defined in :mod:`labelloop.sync.splits`.

**A version** is the manifest plus its parent (the latest version when it was made), message,
counts, time, split parameters and the store's watermark (the highest revision and tombstone
ids it saw, so agreement and effort can be recomputed as of that version). Its id is
``sha256(parent id + "\\n" + manifest sha)``: a content hash that also names its history, like a
git commit. :func:`snapshot` returns the latest version unchanged when the manifest is the same
(nothing changed, no new row). Versions are never updated or deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal_column, select, union
from sqlalchemy.orm import Session

from labelloop.errors import ConfigError, DataError, ErrorKind, LabelloopError
from labelloop.sync import splits as sp
from labelloop.sync.store.bulk import insert_rows
from labelloop.sync.store.engine import Store
from labelloop.sync.store.live import LiveRevision, live_revisions, region_dicts, watermark
from labelloop.sync.store.models import (
    ItemRow,
    RevisionRow,
    TombstoneRow,
    VersionEntryRow,
    VersionRow,
    utcnow,
)
from labelloop.types import Source

GROUND_TRUTH, ACCEPTED, LATEST_HUMAN, MACHINE = "ground_truth", "accepted", "latest_human", "machine"
_RANK = {GROUND_TRUTH: 3, ACCEPTED: 2, LATEST_HUMAN: 1, MACHINE: 0}


class VersionNotFound(LabelloopError):
    default_kind = ErrorKind.MISSING


@dataclass(frozen=True, slots=True)
class Choice:
    item_sha: str
    revision_id: int
    reason: str  # ground_truth / accepted / latest_human / machine
    label_source: str
    verified: bool


@dataclass(frozen=True, slots=True)
class Entry:
    item_sha: str
    revision_id: int
    split: str
    verified: bool
    label_source: str
    reason: str


@dataclass(frozen=True)
class VersionInfo:
    id: str
    number: int
    parent_id: str | None
    message: str
    created_at: datetime
    counts: dict[str, Any]
    params: dict[str, Any]
    max_revision_id: int
    max_tombstone_id: int

    @property
    def short(self) -> str:
        return self.id[:12]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() + "Z"
        return d


@dataclass
class Manifest:
    entries: list[Entry]
    params: dict[str, Any]
    watermark: tuple[int, int]
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        h = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode())
        for e in sorted(self.entries, key=lambda e: e.item_sha):
            h.update(f"\n{e.item_sha} {e.revision_id} {e.split}".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class SnapshotResult:
    version: VersionInfo
    created: bool  # False: nothing changed since the latest version, which is returned


@dataclass
class VersionDiff:
    a: str
    b: str
    added: list[str]  # items in b, not in a
    removed: list[str]  # items in a, not in b
    relabelled: list[str]  # items whose chosen revision changed
    moved: list[str]  # items whose split changed (train <-> val <-> excluded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ label choice


def rank(r: LiveRevision, *, require_review: bool = False) -> tuple[str, bool] | None:
    """(reason, verified) of a revision as a candidate label, or None when it may not count."""
    if r.cancelled or r.review_state == "rejected":
        return None
    human = r.label_source == str(Source.HUMAN)
    if r.ground_truth:
        return GROUND_TRUTH, human
    if r.review_state == "accepted":
        return ACCEPTED, human
    if human:
        return LATEST_HUMAN, not require_review
    return MACHINE, False


def choose_labels(revisions: Iterable[LiveRevision], *, require_review: bool = False) -> dict[str, Choice]:
    """Item sha -> the label that counts (see the module doc)."""
    best: dict[str, tuple[tuple[int, datetime, int], Choice]] = {}
    for r in revisions:
        ranked = rank(r, require_review=require_review)
        if ranked is None:
            continue
        reason, verified = ranked
        key = (_RANK[reason], r.updated_ts or datetime.min, r.id)
        cur = best.get(r.item_sha)
        if cur is None or key > cur[0]:
            best[r.item_sha] = (key, Choice(r.item_sha, r.id, reason, r.label_source, verified))
    return {sha: c for sha, (_, c) in best.items()}


# ------------------------------------------------------------------------------ manifests


def _params(
    s: Session, val_fraction: float | None, seed: str | None, require_review: bool | None
) -> dict[str, Any]:
    """Split parameters: the ones given, else the latest version's, else the defaults."""
    head = latest(s)
    base = dict(head.params) if head else {}
    params = {
        "val_fraction": float(
            val_fraction if val_fraction is not None else base.get("val_fraction", sp.DEFAULT_VAL_FRACTION)
        ),
        "seed": str(seed if seed is not None else base.get("seed", sp.DEFAULT_SEED)),
        "require_review": bool(
            require_review if require_review is not None else base.get("require_review", False)
        ),
    }
    if not 0.0 <= params["val_fraction"] < 1.0:
        raise ConfigError(f"val fraction {params['val_fraction']} must be in [0, 1)")
    return params


def compute_manifest(
    s: Session,
    *,
    val_fraction: float | None = None,
    seed: str | None = None,
    require_review: bool | None = None,
    with_counts: bool = True,
) -> Manifest:
    """The manifest a snapshot made now would hold (nothing is written)."""
    params = _params(s, val_fraction, seed, require_review)
    mark = watermark(s)
    live = [r for r in live_revisions(s) if r.id <= mark[0]]
    chosen = choose_labels(live, require_review=params["require_review"])
    groups = _group_keys(s, list(chosen))
    split = sp.assign_splits(
        groups,
        {sha: c.verified for sha, c in chosen.items()},
        val_fraction=params["val_fraction"],
        seed=params["seed"],
    )
    entries = [
        Entry(sha, c.revision_id, split[sha], c.verified, c.label_source, c.reason)
        for sha, c in sorted(chosen.items())
    ]
    m = Manifest(entries, params, mark)
    if with_counts:
        m.counts = manifest_counts(s, entries)
    return m


def _group_keys(s: Session, shas: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for start in range(0, len(shas), 500):
        chunk = shas[start : start + 500]
        for row in s.execute(
            select(ItemRow.sha256, ItemRow.group_id, ItemRow.video, ItemRow.scene, ItemRow.source_id).where(
                ItemRow.sha256.in_(chunk)
            )
        ):
            out[row[0]] = sp.group_key(sp.GroupFields(*row))
    for sha in shas:
        out.setdefault(sha, f"item:{sha}")
    return out


def manifest_counts(s: Session, entries: list[Entry]) -> dict[str, Any]:
    dicts = region_dicts(s, [e.revision_id for e in entries])
    classes: dict[str, Counter[str]] = {k: Counter() for k in sp.SPLITS}
    images: dict[str, Counter[str]] = {k: Counter() for k in sp.SPLITS}
    for e in entries:
        labels = [d["label"] for d in dicts.get(e.revision_id, [])]
        classes[e.split].update(labels)
        images[e.split].update(set(labels))
    return {
        "items": len(entries),
        "splits": sp.split_counts(e.split for e in entries),
        "verified": sum(e.verified for e in entries),
        "label_sources": dict(Counter(e.label_source for e in entries)),
        "reasons": dict(Counter(e.reason for e in entries)),
        "regions": {k: sum(v.values()) for k, v in classes.items()},
        "classes": {k: dict(sorted(v.items())) for k, v in classes.items()},
        "images_per_class": {k: dict(sorted(v.items())) for k, v in images.items()},
    }


def version_id(parent_id: str | None, manifest_sha: str) -> str:
    return hashlib.sha256(f"{parent_id or ''}\n{manifest_sha}".encode()).hexdigest()


def snapshot(
    store_or_session: Store | Session,
    message: str,
    *,
    val_fraction: float | None = None,
    seed: str | None = None,
    require_review: bool | None = None,
    allow_empty: bool = False,
) -> SnapshotResult:
    """Make a version of what the store holds now; the latest version when nothing changed.

    Given a Store this commits; given a Session it runs in the caller's transaction (the sync
    can snapshot in the same transaction as its ingest)."""
    if isinstance(store_or_session, Store):
        with store_or_session.transaction() as s:
            return snapshot(
                s,
                message,
                val_fraction=val_fraction,
                seed=seed,
                require_review=require_review,
                allow_empty=allow_empty,
            )
    s = store_or_session
    m = compute_manifest(
        s, val_fraction=val_fraction, seed=seed, require_review=require_review, with_counts=False
    )
    head = latest(s)
    msha = m.sha
    if head is not None and _manifest_sha(s, head.id) == msha:
        return SnapshotResult(head, created=False)
    m.counts = manifest_counts(s, m.entries)
    if not m.entries and not allow_empty:
        raise DataError("the store holds no usable labels yet; nothing to snapshot")
    parent = head.id if head else None
    vid = version_id(parent, msha)
    number = int(s.execute(select(func.coalesce(func.max(VersionRow.number), 0))).scalar_one()) + 1
    row = {
        "id": vid,
        "number": number,
        "parent_id": parent,
        "manifest_sha": msha,
        "message": message,
        "created_at": utcnow(),
        "counts": m.counts,
        "params": m.params,
        "max_revision_id": m.watermark[0],
        "max_tombstone_id": m.watermark[1],
    }
    s.execute(VersionRow.__table__.insert().values(**row))
    insert_rows(
        s,
        VersionEntryRow.__table__,
        [
            {
                "version_id": vid,
                "item_sha": e.item_sha,
                "revision_id": e.revision_id,
                "split": e.split,
                "verified": e.verified,
                "label_source": e.label_source,
                "reason": e.reason,
            }
            for e in m.entries
        ],
    )
    s.flush()
    return SnapshotResult(_info(s.get(VersionRow, vid)), created=True)  # type: ignore[arg-type]


def _manifest_sha(s: Session, vid: str) -> str:
    return s.execute(select(VersionRow.manifest_sha).where(VersionRow.id == vid)).scalar_one()


# ------------------------------------------------------------------------------ reading


def _info(row: VersionRow) -> VersionInfo:
    return VersionInfo(
        row.id,
        row.number,
        row.parent_id,
        row.message,
        row.created_at,
        dict(row.counts or {}),
        dict(row.params or {}),
        int(row.max_revision_id),
        int(row.max_tombstone_id),
    )


def list_versions(s: Session, limit: int | None = None) -> list[VersionInfo]:
    """Newest first."""
    q = select(VersionRow).order_by(VersionRow.number.desc())
    if limit:
        q = q.limit(limit)
    return [_info(r) for r in s.execute(q).scalars()]


def latest(s: Session) -> VersionInfo | None:
    row = s.execute(select(VersionRow).order_by(VersionRow.number.desc()).limit(1)).scalar()
    return _info(row) if row else None


def get_version(s: Session, ref: str) -> VersionInfo:
    """A version by id, unique id prefix, ``head`` (the latest) or ``head~N`` (N before it)."""
    ref = ref.strip()
    low = ref.lower()
    if low in ("head", "latest") or low.startswith("head~"):
        back = 0
        if "~" in low:
            try:
                back = int(low.split("~", 1)[1] or 1)
            except ValueError:
                raise ConfigError(f"version {ref!r}: expected head~N with a number N") from None
        rows = list_versions(s, limit=back + 1)
        if len(rows) <= back:
            raise VersionNotFound(f"version {ref!r}: there are only {len(rows)} versions")
        return rows[back]
    if not ref or any(c not in "0123456789abcdef" for c in low):
        raise ConfigError(f"version {ref!r} is not a version id, an id prefix, head or head~N")
    rows = list(s.execute(select(VersionRow).where(VersionRow.id.like(f"{low}%")).limit(6)).scalars())
    if not rows:
        raise VersionNotFound(f"no version {ref!r}; `labelloop dataset log` lists them")
    if len(rows) > 1:
        ids = ", ".join(r.id[:12] for r in rows[:5])
        raise ConfigError(f"version prefix {ref!r} is ambiguous ({ids}...); give more characters")
    return _info(rows[0])


def entries(s: Session, vid: str) -> list[Entry]:
    q = (
        select(
            VersionEntryRow.item_sha,
            VersionEntryRow.revision_id,
            VersionEntryRow.split,
            VersionEntryRow.verified,
            VersionEntryRow.label_source,
            VersionEntryRow.reason,
        )
        .where(VersionEntryRow.version_id == vid)
        .order_by(VersionEntryRow.item_sha)
    )
    return [Entry(*row) for row in s.execute(q)]


def diff_versions(s: Session, a: str, b: str) -> VersionDiff:
    """What changed from version ``a`` to ``b`` (ids, prefixes or head refs)."""
    va, vb = get_version(s, a), get_version(s, b)
    ea = {e.item_sha: e for e in entries(s, va.id)}
    eb = {e.item_sha: e for e in entries(s, vb.id)}
    both = sorted(ea.keys() & eb.keys())
    return VersionDiff(
        va.id,
        vb.id,
        added=sorted(eb.keys() - ea.keys()),
        removed=sorted(ea.keys() - eb.keys()),
        relabelled=[k for k in both if ea[k].revision_id != eb[k].revision_id],
        moved=[k for k in both if ea[k].split != eb[k].split],
    )


def changes_since(s: Session, vid: str | None = None) -> int:
    """Tasks with a new revision or a tombstone since version ``vid`` (since the beginning when
    None): what the sync compares with ``settings.sync.snapshot_min_changes``. One query."""
    wr, wt = (0, 0)
    if vid is not None:
        v = get_version(s, vid)
        wr, wt = v.max_revision_id, v.max_tombstone_id
    q = union(
        select(RevisionRow.source_key, RevisionRow.task_id).where(RevisionRow.id > wr),
        select(TombstoneRow.source_key, TombstoneRow.task_id).where(TombstoneRow.id > wt),
    ).subquery()
    return int(s.execute(select(func.count(literal_column("*"))).select_from(q)).scalar_one())


def new_verified(s: Session, since: str | None, until: str | None = None) -> list[str]:
    """Items with a verified label in ``until`` (a version; None = the store now) that had none in
    ``since`` (a version; None = before any): what the retrain trigger counts."""
    if until is None:
        now_verified = {e.item_sha for e in compute_manifest(s, with_counts=False).entries if e.verified}
    else:
        now_verified = {e.item_sha for e in entries(s, get_version(s, until).id) if e.verified}
    before: set[str] = set()
    if since is not None:
        before = {e.item_sha for e in entries(s, get_version(s, since).id) if e.verified}
    return sorted(now_verified - before)


@dataclass(frozen=True)
class PendingLabels:
    """Human-verified items the champion has not been trained on, and when the oldest was labelled."""

    items: list[str]
    oldest_at: datetime | None  # naive UTC

    def age_h(self, now: datetime | None = None) -> float | None:
        if self.oldest_at is None:
            return None
        return ((now or utcnow()) - self.oldest_at).total_seconds() / 3600


def pending_labels(s: Session, since: str | None) -> PendingLabels:
    """What the retrain trigger weighs: :func:`new_verified` of the store now against ``since`` (the
    version the current model was trained on), with the label time of the oldest (the platform's
    updated time, else when it was pulled)."""
    manifest = compute_manifest(s, with_counts=False)
    now_verified = {e.item_sha: e.revision_id for e in manifest.entries if e.verified}
    if since is not None:
        for e in entries(s, get_version(s, since).id):
            if e.verified:
                now_verified.pop(e.item_sha, None)
    if not now_verified:
        return PendingLabels([], None)
    oldest: datetime | None = None
    ids = sorted(now_verified.values())
    for lo in range(0, len(ids), 500):
        q = select(func.min(func.coalesce(RevisionRow.updated_ts, RevisionRow.ingested_at))).where(
            RevisionRow.id.in_(ids[lo : lo + 500])
        )
        t = s.execute(q).scalar()
        if t is not None and (oldest is None or t < oldest):
            oldest = t
    return PendingLabels(sorted(now_verified), oldest)
