"""Test-time augmentation: how stable the model's boxes are when the image is flipped or rescaled.

The ensemble estimate of :mod:`.strategies` (YOLO has no dropout to sample) and the localization
quality of :mod:`.pseudo`. Each view is predicted by the same model and its boxes mapped back to
the original image; then

- a box's **stability** is the mean over views of its best IoU with a same-class box of the view
  (0 where the view lost it): 1.0 means every view put the same class at the same place;
- an image's **disagreement** is 1 - the symmetric soft agreement: over every view, the best IoUs
  of the original's boxes and of the view's boxes, summed and divided by their count (two empty
  answers agree). Boxes a view adds count as much as boxes it loses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from labelloop.backend.inference.predictor import Predictor
from labelloop.geometry import iou_matrix
from labelloop.types import Box, ImageItem, Region

SCALE = 0.8  # the rescaled view's size; small enough to move boxes by a few pixels


@dataclass(frozen=True)
class Stability:
    item: ImageItem  # the prediction on the original image
    box_stability: list[float]  # per region of ``item``
    disagreement: float


def _boxes(regions: Sequence[Region]) -> list[Box]:
    return [r.geometry for r in regions if isinstance(r.geometry, Box)]


def _best_same_class(a: Sequence[Region], b: Sequence[Region]) -> np.ndarray:
    """For each box of ``a``, its best IoU with a same-class box of ``b``."""
    ra = [r for r in a if isinstance(r.geometry, Box)]
    rb = [r for r in b if isinstance(r.geometry, Box)]
    if not ra:
        return np.zeros(0)
    if not rb:
        return np.zeros(len(ra))
    m = iou_matrix(_boxes(ra), _boxes(rb))
    same = np.array([x.label for x in ra], dtype=object)[:, None] == np.array(
        [y.label for y in rb], dtype=object
    )
    return np.where(same, m, 0.0).max(axis=1)


def _flip_back(regions: Sequence[Region], width: int) -> list[Region]:
    return [
        r.with_(geometry=Box(width - r.geometry.x2, r.geometry.y1, width - r.geometry.x1, r.geometry.y2))
        for r in regions
        if isinstance(r.geometry, Box)
    ]


def _scale_back(regions: Sequence[Region], sx: float, sy: float) -> list[Region]:
    return [
        r.with_(geometry=Box(r.geometry.x1 / sx, r.geometry.y1 / sy, r.geometry.x2 / sx, r.geometry.y2 / sy))
        for r in regions
        if isinstance(r.geometry, Box)
    ]


def _rescaled(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    h, w = image.shape[:2]
    nw, nh = max(1, round(w * SCALE)), max(1, round(h * SCALE))
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)), nw / w, nh / h


def stability(predictor: Predictor, images: Sequence[np.ndarray]) -> list[Stability]:
    """Predict each RGB image as it is, flipped and rescaled (three forwards each), in order."""
    if not images:
        return []
    base = predictor.predict_arrays(list(images))
    flipped = predictor.predict_arrays([np.ascontiguousarray(im[:, ::-1]) for im in images])
    scaled = [_rescaled(im) for im in images]
    small = predictor.predict_arrays([s[0] for s in scaled])
    out = []
    for im, b, f, s, (_, sx, sy) in zip(images, base, flipped, small, scaled, strict=True):
        views = [_flip_back(f.regions, im.shape[1]), _scale_back(s.regions, sx, sy)]
        per_box = np.mean([_best_same_class(b.regions, v) for v in views], axis=0) if b.regions else []
        total, count = 0.0, 0
        for v in views:
            total += float(_best_same_class(b.regions, v).sum() + _best_same_class(v, b.regions).sum())
            count += len(_boxes(b.regions)) + len(v)
        agreement = total / count if count else 1.0
        out.append(Stability(b, [float(x) for x in per_box], 1.0 - agreement))
    return out
