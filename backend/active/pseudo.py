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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from labelloop.backend.active.tta import Stability, stability
from labelloop.backend.inference.predictor import Predictor
from labelloop.connectors.platform import Cursor, PulledAnnotation, PullResult, Target
from labelloop.settings import PseudoSettings
from labelloop.sync.ingest import IngestReport, ingest
from labelloop.sync.store.engine import Store
from labelloop.types import ImageItem, Provenance, Source

_DEFAULT = PseudoSettings()  # the settings' defaults, so a bare keep() matches an unconfigured run
PSEUDO_TARGET = Target("labelstudio", "pseudo://labelloop", 0)


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


def store_pseudo(store: Store, images: Sequence[tuple[bytes, ImageItem]]) -> IngestReport:
    """Put the image bytes in the blob store and the labels in the store, label source pseudo."""
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
    present = {a.task_id: [a.annotation_id] for a in anns}
    return ingest(store, PSEUDO_TARGET, PullResult(anns, present, Cursor("labelstudio")), commit_cursor=False)
