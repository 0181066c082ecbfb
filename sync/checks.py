"""Dataset checks on a version (the seeds' dataset CI). Errors block the version's export; warnings
are reported. Each finding names its items (sha256).

Errors:

- ``box_outside``: a region whose bounds leave the image by more than ``OUTSIDE_TOL_PX`` (1 px);
- ``degenerate``: a box of zero width or height, a polygon of < 3 points or no area, an empty
  mask or one of the wrong size, keypoints without points;
- ``image_corrupt``: a stored blob whose bytes no longer hash to its name, that does not decode,
  or whose size is not the annotated one (checked when the blob is present);
- ``unknown_label`` against a label set given (against the parent's labels it is a warning: a
  new class or a typo);
- ``duplicate_image`` across splits: one image (same URI) under two keys, in train and in val;
- ``group_straddle``: a group with items in train and in val (snapshot never makes one; guards
  manifests from anything else).

Warnings:

- ``image_missing``: no bytes in the blob store (the sync may fetch them later; YOLO export needs
  them and refuses, naming the items);
- ``duplicate_image`` within a split; ``empty_split``: no train or no val items;
- ``class_balance``: a class under ``MIN_CLASS_SHARE`` (1%) of the regions, the largest class over
  ``MAX_IMBALANCE`` (20x) the smallest, a class with train regions and none in val;
- ``class_drift``: the class shares moved from the parent's by a total-variation distance over
  ``MAX_DRIFT_TV`` (0.2).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.errors import DataError
from labelloop.geometry import bounding_box
from labelloop.sync import splits as sp
from labelloop.sync.blobs import BlobStore
from labelloop.sync.store.engine import Store
from labelloop.sync.store.live import regions as load_regions
from labelloop.sync.store.models import ItemRow, ItemUriRow, RevisionRow
from labelloop.sync.versions import Entry, VersionInfo, entries, get_version
from labelloop.types import Box, Keypoints, Mask, Polygon, Region, RotatedBox

ERROR, WARNING = "error", "warning"
OUTSIDE_TOL_PX = 1.0
MIN_CLASS_SHARE = 0.01
MAX_IMBALANCE = 20.0
MAX_DRIFT_TV = 0.2
MAX_NAMED = 20  # items named per finding in messages (all are in ``items``)


@dataclass
class Finding:
    check: str
    severity: str
    message: str
    items: list[str] = field(default_factory=list)  # item sha256s

    def line(self) -> str:
        named = ", ".join(i[:12] for i in self.items[:5])
        more = f" (+{len(self.items) - 5} more)" if len(self.items) > 5 else ""
        return f"{self.severity} {self.check}: {self.message}" + (f" [{named}{more}]" if named else "")


@dataclass
class CheckReport:
    version_id: str
    findings: list[Finding]
    checked_items: int = 0
    checked_blobs: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version_id,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checked_items": self.checked_items,
            "checked_blobs": self.checked_blobs,
            "findings": [asdict(f) for f in self.findings],
        }

    def raise_for_errors(self) -> None:
        if self.errors:
            parts = "; ".join(
                f"{f.check} ({len(f.items)} items: {', '.join(i[:12] for i in f.items[:3])})"
                for f in self.errors
            )
            raise DataError(
                f"version {self.version_id[:12]} fails its checks: {parts}; "
                f"`labelloop dataset check {self.version_id[:12]}` names every item"
            )


# ------------------------------------------------------------------------------ geometry checks


def region_problems(r: Region, width: int, height: int) -> tuple[str | None, str | None]:
    """(outside, degenerate) descriptions for one region (None: fine)."""
    g = r.geometry
    if g is None:
        return None, None
    if isinstance(g, Mask):
        if g.data.shape != (height, width):
            return None, f"mask of {r.label!r} is {g.data.shape[1]}x{g.data.shape[0]}, image {width}x{height}"
        if not np.asarray(g.data).any():
            return None, f"empty mask of {r.label!r}"
        return None, None
    degenerate = None
    if isinstance(g, Polygon):
        pts = np.asarray(g.points, dtype=float).reshape(-1, 2)
        area = (
            0.0
            if len(pts) < 3
            else float(
                abs(np.dot(pts[:, 0], np.roll(pts[:, 1], -1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], -1))) / 2
            )
        )
        if len(pts) < 3 or area <= 0:
            degenerate = f"polygon of {r.label!r} with {len(pts)} points and area {area:g}"
    elif isinstance(g, Keypoints) and not g.points:
        degenerate = f"keypoints of {r.label!r} without points"
    elif isinstance(g, Box | RotatedBox) and (g.w <= 0 or g.h <= 0):
        degenerate = f"box of {r.label!r} is {g.w:g}x{g.h:g}"
    b = bounding_box(g)
    coords = (b.x1, b.y1, b.x2, b.y2)
    if not all(np.isfinite(coords)):
        return None, f"{r.kind} of {r.label!r} has a coordinate that is not finite"
    t = OUTSIDE_TOL_PX
    outside = None
    if b.x1 < -t or b.y1 < -t or b.x2 > width + t or b.y2 > height + t:
        outside = (
            f"{r.kind} of {r.label!r} at ({b.x1:g}, {b.y1:g}, {b.x2:g}, {b.y2:g}) outside {width}x{height}"
        )
    return outside, degenerate


# ------------------------------------------------------------------------------ the checks


def check_version(
    store_or_session: Store | Session,
    ref: str,
    *,
    labels: Sequence[str] | None = None,
    blobs: BlobStore | None = None,
    verify_images: bool = True,
) -> CheckReport:
    """Run every check on version ``ref`` (id, prefix, head). ``labels``: the label set allowed
    (default: the parent version's labels, as a warning). ``blobs``: where image bytes are (the
    store's own when given a Store)."""
    if isinstance(store_or_session, Store):
        with store_or_session.session() as s:
            return check_version(
                s, ref, labels=labels, blobs=blobs or store_or_session.blobs, verify_images=verify_images
            )
    s = store_or_session
    v = get_version(s, ref)
    ents = entries(s, v.id)
    regs = load_regions(s, [e.revision_id for e in ents])
    sizes = revision_sizes(s, [e.revision_id for e in ents])
    findings: list[Finding] = []
    findings += _geometry(ents, regs, sizes)
    items = item_rows(s, [e.item_sha for e in ents])
    checked_blobs = 0
    if blobs is not None:
        f, checked_blobs = _images(ents, items, sizes, blobs, verify_images)
        findings += f
    parent = get_version(s, v.parent_id) if v.parent_id else None
    findings += _labels(v, parent, ents, regs, labels)
    findings += _duplicates(s, ents)
    findings += _groups(ents, items)
    findings += _balance(ents, regs)
    if parent is not None:
        findings += _drift(v, parent)
    return CheckReport(v.id, findings, checked_items=len(ents), checked_blobs=checked_blobs)


def revision_sizes(s: Session, ids: list[int]) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for rid, w, h in s.execute(
            select(RevisionRow.id, RevisionRow.width, RevisionRow.height).where(RevisionRow.id.in_(chunk))
        ):
            out[rid] = (w, h)
    return out


def item_rows(s: Session, shas: list[str]) -> dict[str, ItemRow]:
    out: dict[str, ItemRow] = {}
    for start in range(0, len(shas), 500):
        for row in s.execute(select(ItemRow).where(ItemRow.sha256.in_(shas[start : start + 500]))).scalars():
            out[row.sha256] = row
    return out


def _geometry(
    ents: list[Entry], regs: dict[int, list[Region]], sizes: dict[int, tuple[int, int]]
) -> list[Finding]:
    outside: dict[str, str] = {}
    degenerate: dict[str, str] = {}
    for e in ents:
        w, h = sizes[e.revision_id]
        for r in regs.get(e.revision_id, []):
            o, d = region_problems(r, w, h)
            if o and e.item_sha not in outside:
                outside[e.item_sha] = o
            if d and e.item_sha not in degenerate:
                degenerate[e.item_sha] = d
    return [
        *_per_item("box_outside", outside, "items have regions outside the image"),
        *_per_item("degenerate", degenerate, "items have degenerate regions"),
    ]


def _per_item(name: str, problems: dict[str, str], what: str) -> list[Finding]:
    """One error naming every item with this problem, and the first item's detail as an example."""
    if not problems:
        return []
    first = next(iter(problems.values()))
    return [Finding(name, ERROR, f"{len(problems)} {what} (e.g. {first})", sorted(problems))]


def _resolve(sha: str, items: dict[str, ItemRow]) -> str:
    row = items.get(sha)
    return row.replaced_by if row is not None and row.replaced_by else sha


def _images(
    ents: list[Entry],
    items: dict[str, ItemRow],
    sizes: dict[int, tuple[int, int]],
    blobs: BlobStore,
    verify: bool,
) -> tuple[list[Finding], int]:
    from PIL import Image, UnidentifiedImageError

    missing, corrupt = [], {}
    checked = 0
    for e in ents:
        sha = _resolve(e.item_sha, items)
        row = items.get(e.item_sha)
        if (row is not None and row.placeholder and not row.replaced_by) or not blobs.exists(sha):
            missing.append(e.item_sha)
            continue
        if not verify:
            continue
        checked += 1
        data = blobs.get(sha)
        if hashlib.sha256(data).hexdigest() != sha:
            corrupt[e.item_sha] = "bytes do not hash to the item's sha256"
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            corrupt[e.item_sha] = f"does not decode ({type(exc).__name__})"
            continue
        if sizes[e.revision_id][0] and tuple(size) != sizes[e.revision_id]:
            w, h = sizes[e.revision_id]
            corrupt[e.item_sha] = f"image is {size[0]}x{size[1]}, annotated as {w}x{h}"
    out = _per_item("image_corrupt", corrupt, "image files are corrupt")
    if missing:
        out.append(
            Finding(
                "image_missing",
                WARNING,
                f"{len(missing)} items have no image bytes in the blob store",
                sorted(missing),
            )
        )
    return out, checked


def _version_labels(v: VersionInfo) -> set[str]:
    return {label for per in (v.counts.get("classes") or {}).values() for label in per}


def _labels(
    v: VersionInfo,
    parent: VersionInfo | None,
    ents: list[Entry],
    regs: dict[int, list[Region]],
    labels: Sequence[str] | None,
) -> list[Finding]:
    if labels is not None:
        allowed, severity, against = set(labels), ERROR, "the label set given"
    elif parent is not None:
        allowed, severity, against = _version_labels(parent), WARNING, f"parent version {parent.short}"
    else:
        return []
    bad: dict[str, set[str]] = defaultdict(set)
    for e in ents:
        for r in regs.get(e.revision_id, []):
            if r.label not in allowed:
                bad[r.label].add(e.item_sha)
    if not bad:
        return []
    items = sorted({i for v_ in bad.values() for i in v_})
    names = ", ".join(f"{k!r} ({len(v_)})" for k, v_ in sorted(bad.items()))
    return [Finding("unknown_label", severity, f"labels not in {against}: {names}", items)]


def _duplicates(s: Session, ents: list[Entry]) -> list[Finding]:
    split = {e.item_sha: e.split for e in ents}
    by_uri: dict[str, set[str]] = defaultdict(set)
    shas = list(split)
    for start in range(0, len(shas), 500):
        for sha, u in s.execute(
            select(ItemUriRow.sha256, ItemUriRow.uri_sha).where(
                ItemUriRow.sha256.in_(shas[start : start + 500])
            )
        ):
            by_uri[u].add(sha)
    groups = [g for g in by_uri.values() if len(g) > 1]
    if not groups:
        return []
    leaking = [g for g in groups if {split[x] for x in g} >= {sp.TRAIN, sp.VAL}]
    out = []
    if leaking:
        items = sorted({x for g in leaking for x in g})
        out.append(
            Finding(
                "duplicate_image",
                ERROR,
                f"{len(leaking)} images appear in train and in val under different keys",
                items,
            )
        )
    rest = [g for g in groups if g not in leaking]
    if rest:
        items = sorted({x for g in rest for x in g})
        out.append(
            Finding(
                "duplicate_image",
                WARNING,
                f"{len(rest)} images are in the version under more than one key (same URI)",
                items,
            )
        )
    return out


def _groups(ents: list[Entry], items: dict[str, ItemRow]) -> list[Finding]:
    keys = {
        e.item_sha: sp.group_key(
            sp.GroupFields(
                e.item_sha,
                *(
                    getattr(items.get(e.item_sha), c, None)
                    for c in ("group_id", "video", "scene", "source_id")
                ),
            )
        )
        for e in ents
    }
    bad = sp.straddling_groups(keys, {e.item_sha: e.split for e in ents})
    if not bad:
        return []
    shas = sorted(sha for sha, k in keys.items() if k in bad)
    return [Finding("group_straddle", ERROR, f"{len(bad)} groups have items in train and in val", shas)]


def class_counts(ents: Iterable[Entry], regs: dict[int, list[Region]]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {k: Counter() for k in sp.SPLITS}
    for e in ents:
        out[e.split].update(r.label for r in regs.get(e.revision_id, []))
    return out


def _balance(ents: list[Entry], regs: dict[int, list[Region]]) -> list[Finding]:
    counts = class_counts(ents, regs)
    total = counts[sp.TRAIN] + counts[sp.VAL]
    out = []
    n_train = sum(e.split == sp.TRAIN for e in ents)
    n_val = sum(e.split == sp.VAL for e in ents)
    empty = [name for name, n in ((sp.TRAIN, n_train), (sp.VAL, n_val)) if n == 0]
    if empty:
        out.append(Finding("empty_split", WARNING, f"no items in {' and '.join(empty)}"))
    if not total:
        return out
    n = sum(total.values())
    rare = sorted(c for c, k in total.items() if k / n < MIN_CLASS_SHARE)
    if rare:
        out.append(
            Finding(
                "class_balance", WARNING, f"classes under {MIN_CLASS_SHARE:.0%} of regions: {', '.join(rare)}"
            )
        )
    if len(total) > 1:
        (big, kb), (small, ks) = total.most_common(1)[0], total.most_common()[-1]
        if kb / ks > MAX_IMBALANCE:
            out.append(
                Finding(
                    "class_balance", WARNING, f"{big!r} has {kb} regions, {small!r} {ks} ({kb / ks:.0f}x)"
                )
            )
    if n_val:
        no_val = sorted(c for c in counts[sp.TRAIN] if counts[sp.VAL][c] == 0)
        if no_val:
            out.append(Finding("class_balance", WARNING, f"classes with no val regions: {', '.join(no_val)}"))
    return out


def _distribution(v: VersionInfo) -> Counter[str]:
    classes = v.counts.get("classes") or {}
    c: Counter[str] = Counter()
    for split in (sp.TRAIN, sp.VAL):
        c.update(classes.get(split) or {})
    return c


def drift(a: Counter[str], b: Counter[str]) -> float:
    """Total-variation distance between two class distributions (0 same shares, 1 disjoint)."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def _drift(v: VersionInfo, parent: VersionInfo) -> list[Finding]:
    d = drift(_distribution(parent), _distribution(v))
    if d <= MAX_DRIFT_TV:
        return []
    return [
        Finding(
            "class_drift",
            WARNING,
            f"class distribution moved {d:.2f} (total variation) from parent {parent.short}",
        )
    ]
