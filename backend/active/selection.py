"""Score a platform container's unlabeled pool with a strategy and write the priority back.

The pool is every item without a live human annotation (from a full :meth:`pull_changes`); its
images are read as the sync reads them (:func:`labelloop.sync.fetch.reader_for`: Label Studio
files with the server's auth, URLs under the SSRF rules, CVAT frames through its data API), a
chunk at a time, and only what the strategy needs is computed: the predictor's uncertainty, TTA
disagreement, backbone embeddings of the pool and of the labeled items (cached, so a second run
reads no labeled image again).

Written back through :meth:`LabelingPlatform.write_priority`, so nothing here branches on the
platform:

- ``selection_rank`` (1 = label first .. K; every other item ``NOT_SELECTED``) and the saved view
  "Next to label" ordered by it, showing only the K chosen. A rank, not the score, because views
  sort ascending and a greedy batch's order is not its scores' order.
- ``review_rank`` (1 = most edited) on annotated items that started from a prelabel, by the edits
  :func:`labelloop.sync.stats.effort` counts (moved + relabelled + deleted + added), and the view
  "Review: most edited".

CVAT has no task fields or saved views: its platform reports the jobs ranked by their best
selection rank (the jobs to assign first); a new task's frame order is set when ``prelabel``
creates it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from labelloop.backend.active import strategies as st
from labelloop.backend.active.embeddings import Embedder, matrix
from labelloop.backend.inference.images import decode_image
from labelloop.connectors.platform import LabelingPlatform, PulledAnnotation
from labelloop.errors import ConfigError
from labelloop.fsutil import sha256_bytes
from labelloop.settings import Settings
from labelloop.sync.fetch import reader_for
from labelloop.sync.prelabel import Bar, Summary, no_bar, open_platform
from labelloop.sync.stats import effort
from labelloop.types import ImageItem, Source

NEXT_VIEW = "Next to label"
REVIEW_VIEW = "Review: most edited"
RANK_FIELD = "selection_rank"
REVIEW_FIELD = "review_rank"
NOT_SELECTED = 999_999  # a fixed value, so reruns rewrite only items whose choice changed
CHUNK = 64


@dataclass
class PoolEntry:
    """One pool item: its id for write_priority, its key in pulls, its URI (simulate uses it too,
    with a file's index as id and its path as key)."""

    item_id: int
    key: str
    uri: str
    sha: str | None


def _entries(platform: LabelingPlatform, listing: Sequence[ImageItem]) -> list[PoolEntry]:
    out = []
    for it in listing:
        tid = int(it.metadata["task_id"])
        key = f"frame:{tid}" if platform.name == "cvat" else str(tid)
        out.append(PoolEntry(tid, key, it.uri, it.sha256))
    return out


def is_labeled(a: PulledAnnotation) -> bool:
    """A live annotation by a person: Label Studio's submitted ones, CVAT frames with a human
    shape or in a finished job."""
    if a.cancelled or a.review_state == "rejected":
        return False
    if a.platform == "labelstudio":
        return True
    return (
        a.state == "completed"
        or a.stage in ("validation", "acceptance")
        or any(r.provenance.source == Source.HUMAN for r in a.item.regions)
    )


def review_ranks(annotations: Sequence[PulledAnnotation]) -> dict[str, tuple[int, int]]:
    """Item key -> (rank, edits) for annotated items that started from a prelabel, most edited
    first (an item's latest annotation counts)."""
    edits: dict[str, int] = {}
    for a in annotations:
        if a.prelabel is None or not is_labeled(a):
            continue
        e = effort(a.prelabel, a.item.regions)
        edits[a.task_id] = e.moved + e.relabelled + e.deleted + e.added
    order = sorted(edits, key=lambda k: (-edits[k], k))
    return {k: (i + 1, edits[k]) for i, k in enumerate(order)}


class ImageLoader(Protocol):
    """Decoded images of pool entries, in order, with each one's sha256 (None: unreadable)."""

    def load(self, entries: Sequence[PoolEntry]) -> list[tuple[str, np.ndarray] | None]: ...


class _Images:
    """Read and decode pool images ``fetch.workers`` at a time; failures are counted, not raised."""

    def __init__(self, settings: Settings, platform: LabelingPlatform, container: int) -> None:
        self.read = reader_for(settings, platform, container)
        self.max_pixels = settings.fetch.max_image_pixels
        self.workers = settings.fetch.workers
        self.failures: list[str] = []

    def load(self, entries: Sequence[PoolEntry]) -> list[tuple[str, np.ndarray] | None]:
        def one(e: PoolEntry) -> tuple[str, np.ndarray] | None:
            try:
                data = self.read(e.key, e.uri)
                return sha256_bytes(data), decode_image(data, self.max_pixels)
            except Exception as ex:  # one bad image must not stop the ranking of the rest
                self.failures.append(
                    f"{e.key}: {str(ex).splitlines()[0][:160] if str(ex) else type(ex).__name__}"
                )
                return None

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, entries))


def _uncertainty_columns(items: Sequence[ImageItem]) -> dict[str, list[float]]:
    cols: dict[str, list[float]] = {m: [] for m in st.UNCERTAINTY_MEASURES}
    for it in items:
        for m in st.UNCERTAINTY_MEASURES:
            cols[m].append(float(it.metadata["uncertainty"][m]))
    return cols


def score_pool(
    settings: Settings,
    weights: Path,
    strategy: st.SelectionStrategy,
    pool: Sequence[PoolEntry],
    labeled: Sequence[PoolEntry],
    images: ImageLoader,
    bar: Bar = no_bar,
) -> tuple[st.Pool, list[PoolEntry]]:
    """The strategy's inputs for the pool items whose image could be read (and those items)."""
    needs = strategy.needs
    want_u = bool(needs & set(st.UNCERTAINTY_MEASURES))
    want_tta = "disagreement" in needs
    want_emb = "embeddings" in needs
    predictor = None
    if want_u or want_tta:
        from labelloop.backend.inference.predictor import Predictor

        predictor = Predictor(weights, settings)
    embedder = Embedder(weights, settings) if want_emb else None
    kept: list[PoolEntry] = []
    cols: dict[str, list[float]] = {m: [] for m in st.UNCERTAINTY_MEASURES}
    disagreement: list[float] = []
    vectors: list[np.ndarray] = []
    with bar("score pool", len(pool)) as advance:
        for lo in range(0, len(pool), CHUNK):
            part = pool[lo : lo + CHUNK]
            got = [(e, g) for e, g in zip(part, images.load(part), strict=True) if g is not None]
            arrays = [g[1] for _, g in got]
            if got and predictor is not None:
                if want_tta:
                    from labelloop.backend.active.tta import stability

                    res = stability(predictor, arrays)
                    items = [r.item for r in res]
                    disagreement += [r.disagreement for r in res]
                else:
                    items = predictor.predict_arrays(arrays)
                for m, v in _uncertainty_columns(items).items():
                    cols[m] += v
            if got and embedder is not None:
                by_sha = {g[0]: g[1] for _, g in got}
                found = embedder.embed_shas(list(by_sha), lambda shas, m=by_sha: [m[s] for s in shas])
                vectors += [found[g[0]] for _, g in got]
            kept += [e for e, _ in got]
            advance(len(part))
    labeled_vecs = None
    if embedder is not None and labeled:
        labeled_vecs = _labeled_vectors(embedder, labeled, images, bar)
    p = st.Pool(
        [e.key for e in kept],
        {m: np.asarray(v) for m, v in cols.items()} if want_u else {},
        embeddings=np.stack(vectors).astype(np.float32) if vectors else None,
        labeled=labeled_vecs,
        disagreement=np.asarray(disagreement) if want_tta else None,
    )
    return p, kept


def _labeled_vectors(
    embedder: Embedder, labeled: Sequence[PoolEntry], images: ImageLoader, bar: Bar
) -> np.ndarray | None:
    """Embeddings of the labeled items: by the sha the platform recorded (a cache hit reads no
    image), else read once to learn it."""
    by_sha: dict[str, PoolEntry] = {}
    unknown = [e for e in labeled if not e.sha]
    for e in labeled:
        if e.sha:
            by_sha[e.sha] = e
    decoded: dict[str, np.ndarray] = {}
    for lo in range(0, len(unknown), CHUNK):
        for g in images.load(unknown[lo : lo + CHUNK]):
            if g is not None:
                decoded[g[0]] = g[1]

    def load(shas: Sequence[str]) -> list[np.ndarray | None]:
        need = [s for s in shas if s not in decoded]
        for s, g in zip(need, images.load([by_sha[s] for s in need]), strict=True):
            if g is not None:
                decoded[s] = g[1]  # keyed by the sha asked for: a changed file is still this item
        return [decoded.get(s) for s in shas]

    keys = list(dict.fromkeys([*by_sha, *decoded]))
    with bar("embed labeled", len(keys)) as advance:
        found = embedder.embed_shas(keys, load, progress=advance)
    return matrix(found, keys)


def select(
    settings: Settings,
    weights: Path,
    target: str,
    container: int,
    k: int,
    *,
    strategy: str | None = None,
    seed: int = 0,
    bar: Bar = no_bar,
) -> Summary:
    """Choose ``k`` items of the container's unlabeled pool and write ranks and views back."""
    if k < 1:
        raise ConfigError(f"--k must be at least 1, not {k}")
    t0 = time.monotonic()
    name = strategy or settings.select.strategy
    chosen_strategy = st.get_strategy(name, settings.select, seed)
    platform = open_platform(target, settings)
    try:
        entries = _entries(platform, platform.images(container))
        pulled = platform.pull_changes(container, None)
        labeled_keys = {a.task_id for a in pulled.annotations if is_labeled(a)}
        pool = [e for e in entries if e.key not in labeled_keys]
        labeled = [e for e in entries if e.key in labeled_keys]
        images = _Images(settings, platform, container)
        t_score = time.monotonic()
        scored, kept = score_pool(settings, weights, chosen_strategy, pool, labeled, images, bar)
        seconds_scoring = time.monotonic() - t_score
        picked = chosen_strategy.select(scored, min(k, len(kept)))
        ranks = {str(e.item_id): float(NOT_SELECTED) for e in entries}
        for rank, row in enumerate(picked.rows, start=1):
            ranks[str(kept[row].item_id)] = float(rank)
        summary = Summary(platform.name, {"url": platform.url, platform.container_kind: container})
        with bar("write ranks", len(ranks)) as advance:
            next_report = platform.write_priority(
                container, ranks, field_name=RANK_FIELD, view=NEXT_VIEW, below=NOT_SELECTED, progress=advance
            )
        review = review_ranks(pulled.annotations)
        by_key = {e.key: e.item_id for e in entries}
        review_scores = {str(by_key[key]): float(r) for key, (r, _) in review.items() if key in by_key}
        review_report = (
            platform.write_priority(container, review_scores, field_name=REVIEW_FIELD, view=REVIEW_VIEW)
            if review_scores
            else None
        )
    finally:
        platform.close()
    for rep in (next_report, review_report):
        if rep is not None and rep.view is not None:
            summary.where.setdefault("views", []).append(rep.view)
    summary.where["strategy"] = chosen_strategy.name
    summary.where["top"] = [  # the platform holds the whole ranking; this is a glance
        {"item": kept[row].item_id, "rank": i, "score": round(s, 4)}
        for i, (row, s) in enumerate(zip(picked.rows[:10], picked.scores[:10], strict=True), start=1)
    ]
    summary.counts.update(
        items=len(entries),
        labeled=len(labeled),
        pool=len(pool),
        scored=len(kept),
        image_failures=len(images.failures),
        chosen=len(picked.rows),
        ranks_written=next_report.written,
        review_ranked=len(review_scores),
        seconds_scoring=round(seconds_scoring, 2),
        seconds=round(time.monotonic() - t0, 2),
    )
    summary.notes += [f"image failed: {m}" for m in images.failures[:20]]
    summary.notes += next_report.notes
    if review_report is not None:
        summary.notes += review_report.notes
    return summary
