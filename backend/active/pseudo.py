"""Pseudo-labels: the model's own boxes, kept only where it is sure of the class and of the place.

Dual thresholds (the seeds' recipe): a box is kept when its class confidence >= ``t_cls`` and its
localization quality >= ``t_loc``, the quality being its TTA stability (mean best same-class IoU
under a flipped and a rescaled view, :mod:`.tta`): a confident box that jumps between views is a
box the model guesses. An image whose every box passes keeps them all; an image with a box that
fails is dropped whole, because its remaining boxes would teach "background" where an object is.

Stored through the ordinary ingest with label source ``pseudo`` under their own source
(``PSEUDO_TARGET``), never a platform's, so a platform pull never tombstones them and a human
annotation of the same image always wins in a version (:mod:`labelloop.sync.versions`). Versions
put machine labels in train only; val stays human (:mod:`labelloop.sync.splits`). Training weighs
them ``settings.pseudo.w_pseudo`` of a human label (:mod:`labelloop.backend.training.sample_weights`).
Thresholds come from ``settings.pseudo`` (``LABELLOOP_PSEUDO_T_CLS`` / ``_T_LOC``).

In the loop: with ``LABELLOOP_PSEUDO_AFTER_PROMOTION=1`` the retrain job, after it promotes a
champion, pseudo-labels the store's unlabeled items with it (:func:`refresh_pseudo`), so the next
version trains on them. Off by default: machine labels nobody has seen should enter training
only when a team asks for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select

from labelloop.backend.active.tta import Stability, stability
from labelloop.backend.inference.images import decode_image
from labelloop.backend.inference.predictor import Predictor
from labelloop.connectors.platform import Cursor, PulledAnnotation, PullResult, Target
from labelloop.settings import PseudoSettings, Settings
from labelloop.sync.ingest import IngestReport, ingest
from labelloop.sync.store.engine import Store
from labelloop.sync.store.live import live_revisions
from labelloop.sync.store.models import ItemRow
from labelloop.types import ImageItem, Provenance, Source

_DEFAULT = PseudoSettings()  # the settings' defaults, so a bare keep() matches an unconfigured run
PSEUDO_TARGET = Target("labelstudio", "pseudo://labelloop", 0)
CHUNK = 64
log = logging.getLogger(__name__)


def keep(s: Stability, t_cls: float = _DEFAULT.t_cls, t_loc: float = _DEFAULT.t_loc) -> ImageItem | None:
    """The image's pseudo-label, or None when a box fails a threshold or there is none."""
    regions = s.item.regions
    if not regions:
        return None
    for r, loc in zip(regions, s.box_stability, strict=True):
        if (r.score or 0.0) < t_cls or loc < t_loc:
            return None
    version = s.item.metadata.get("model_version")
    pseudo = [
        r.with_(provenance=Provenance(source=Source.PSEUDO, model_version=version), attributes={"loc": loc})
        for r, loc in zip(regions, s.box_stability, strict=True)
    ]
    return replace(s.item, regions=pseudo)


def pseudo_label(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    *,
    t_cls: float | None = None,
    t_loc: float | None = None,
) -> list[ImageItem | None]:
    """Each RGB image's pseudo-label (None: not sure enough), in order; thresholds not given come
    from the predictor's ``settings.pseudo``."""
    cfg = predictor.settings.pseudo
    t_cls = cfg.t_cls if t_cls is None else t_cls
    t_loc = cfg.t_loc if t_loc is None else t_loc
    return [keep(s, t_cls, t_loc) for s in stability(predictor, images)]


def store_pseudo(
    store: Store, images: Sequence[tuple[bytes, ImageItem]], *, dropped: Sequence[str] = ()
) -> IngestReport:
    """Put the image bytes in the blob store and the labels in the store, label source pseudo; the
    items of ``dropped`` (shas the current model is no longer sure of) lose their older pseudo-labels."""
    now = datetime.now(UTC).isoformat()
    anns = []
    for data, it in images:
        sha = store.blobs.put(data)
        version = next((r.provenance.model_version for r in it.regions), None) or "unknown"
        anns.append(
            PulledAnnotation(
                platform=PSEUDO_TARGET.platform,
                container=PSEUDO_TARGET.container,
                task_id=f"pseudo:{sha}",
                annotation_id=f"pseudo:{version}:{sha}",
                item=replace(it, sha256=sha),
                updated_at=now,
                created_at=now,
                extra={"label_source": str(Source.PSEUDO)},
            )
        )
    present: dict[str, list[str]] = {f"pseudo:{sha}": [] for sha in dropped}
    present.update({a.task_id: [a.annotation_id] for a in anns})  # older pseudo-labels are tombstoned
    return ingest(store, PSEUDO_TARGET, PullResult(anns, present, Cursor("labelstudio")), commit_cursor=False)


def unlabeled_items(store: Store) -> list[str]:
    """Shas of the store's items whose bytes it holds and that no live human annotation labels
    (prelabels nobody submitted and older pseudo-labels do not count as labels)."""
    with store.session() as s:
        labeled = {
            r.item_sha
            for r in live_revisions(s)
            if r.label_source == str(Source.HUMAN) and not r.cancelled and r.review_state != "rejected"
        }
        shas = s.execute(
            select(ItemRow.sha256).where(ItemRow.placeholder.is_(False), ItemRow.replaced_by.is_(None))
        ).scalars()
        return sorted(sha for sha in shas if sha not in labeled and store.blobs.exists(sha))


def refresh_pseudo(settings: Settings, store: Store, weights: Path) -> dict[str, int | float]:
    """Pseudo-label every unlabeled item of the store with ``weights`` (the new champion): what
    passes ``settings.pseudo``'s thresholds is stored as pseudo, older pseudo-labels of the rest
    are dropped. Run after a promotion when ``settings.pseudo.after_promotion`` is on."""
    t0 = time.monotonic()
    shas = unlabeled_items(store)
    counts: dict[str, int | float] = {"unlabeled": len(shas), "pseudo": 0, "dropped": 0, "unreadable": 0}
    predictor = Predictor(weights, settings)
    for lo in range(0, len(shas), CHUNK):
        readable: list[tuple[str, bytes, np.ndarray]] = []
        for sha in shas[lo : lo + CHUNK]:
            try:
                data = store.blobs.get(sha)
                readable.append((sha, data, decode_image(data, settings.fetch.max_image_pixels)))
            except Exception as e:  # one bad blob must not stop the rest
                log.warning("pseudo-labels: item %s unreadable: %s", sha[:12], e)
                counts["unreadable"] += 1
        labels = pseudo_label(predictor, [im for _, _, im in readable])
        kept = [(data, it) for (_, data, _), it in zip(readable, labels, strict=True) if it is not None]
        dropped = [sha for (sha, _, _), it in zip(readable, labels, strict=True) if it is None]
        store_pseudo(store, kept, dropped=dropped)
        counts["pseudo"] += len(kept)
        counts["dropped"] += len(dropped)
    counts["seconds"] = round(time.monotonic() - t0, 2)
    return counts
