"""Ultralytics ``Results`` -> canonical regions, for every task (detect, segment, pose, obb, classify).

It receives result objects (or anything shaped like them: ``boxes``/``obb`` with ``cls``, ``conf``,
``xyxy``/``xywhr``; ``masks.xy``; ``keypoints.data``; ``probs.data``; an optional ``feats`` array of
per-class probability vectors, one row per kept detection) and never imports torch: tensors are
turned into numpy arrays through their own ``.cpu().numpy()``. Coordinates stay in pixels of the
image the model saw, as the canonical model keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from labelloop.geometry import box_corners
from labelloop.types import Box, Keypoint, Keypoints, Polygon, Provenance, Region, RotatedBox

TASKS = ("detect", "segment", "pose", "obb", "classify")
VISIBLE = 0.5
"""A keypoint whose confidence is below this is not visible."""

AttributesOf = Callable[[np.ndarray], dict[str, Any]]
"""Extra region attributes from its class-probability vector (e.g. uncertainty measures)."""


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a float/int numpy array."""
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(x)


def result_to_regions(
    result: Any,
    task: str,
    names: Mapping[int, str],
    *,
    kpt_names: Sequence[str] | None = None,
    provenance: Provenance | None = None,
    attributes_of: AttributesOf | None = None,
) -> list[Region]:
    """The regions of one image's result, in the model's order.

    Each region's ``probs`` is the full class vector where the result carries one (``feats``, or
    ``probs`` for a classifier); ``attributes_of`` is called with that vector (or ``[score]`` when
    there is none) to add per-region attributes.
    """
    prov = provenance or Provenance()
    attrs = attributes_of or (lambda _v: {})
    if task == "classify":
        return _classify(result, names, prov, attrs)
    boxes = result.obb if task == "obb" else result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    cls = to_numpy(boxes.cls).astype(int)
    conf = to_numpy(boxes.conf).astype(np.float32)
    feats = getattr(result, "feats", None)
    vectors = np.asarray(feats) if feats is not None and len(feats) == len(cls) else None
    geoms = _geometries(result, boxes, task, kpt_names)
    out = []
    for i, g in enumerate(geoms):
        vec = vectors[i] if vectors is not None else np.array([conf[i]])
        out.append(
            Region(
                names[int(cls[i])],
                g,
                score=float(conf[i]),
                probs=probs_dict(vec, names) if vectors is not None else None,
                provenance=prov,
                attributes=attrs(vec),
            )
        )
    return out


def max_candidate(result: Any) -> float | None:
    """The highest class probability any candidate reached before the confidence threshold, when the
    predictor recorded it (see ``backend.inference.class_probs``)."""
    value = getattr(result, "max_candidate", None)
    return None if value is None else float(value)


def probs_dict(vec: np.ndarray, names: Mapping[int, str]) -> dict[str, float]:
    return {names[k]: round(float(v), 6) for k, v in enumerate(vec)}


def _classify(result: Any, names: Mapping[int, str], prov: Provenance, attrs: AttributesOf) -> list[Region]:
    p = to_numpy(result.probs.data).astype(np.float32)
    top = int(p.argmax())
    return [
        Region(
            names[top],
            None,
            score=float(p[top]),
            probs=probs_dict(p, names),
            provenance=prov,
            attributes=attrs(p),
        )
    ]


def _geometries(result: Any, boxes: Any, task: str, kpt_names: Sequence[str] | None) -> list:
    if task == "obb":
        return [
            RotatedBox(float(x), float(y), float(bw), float(bh), float(np.degrees(a)) % 360.0)
            for x, y, bw, bh, a in to_numpy(boxes.xywhr).astype(np.float32)
        ]
    geoms: list = [Box(*map(float, b)) for b in to_numpy(boxes.xyxy).astype(np.float32)]
    if task == "segment" and getattr(result, "masks", None) is not None:
        geoms = [
            Polygon(tuple((float(x), float(y)) for x, y in poly)) if len(poly) >= 3 else box_polygon(g)
            for poly, g in zip(result.masks.xy, geoms, strict=True)
        ]
    if task == "pose" and getattr(result, "keypoints", None) is not None:
        kd = to_numpy(result.keypoints.data).astype(np.float32)  # (n, k, 2|3)
        kn = list(kpt_names) if kpt_names else [f"kp{k}" for k in range(kd.shape[1])]
        geoms = [
            Keypoints(
                tuple(
                    Keypoint(float(p[0]), float(p[1]), bool(p[2] >= VISIBLE) if len(p) > 2 else True, kn[k])
                    for k, p in enumerate(inst)
                ),
                box=g,
            )
            for inst, g in zip(kd, geoms, strict=True)
        ]
    return geoms


def box_polygon(b: Box) -> Polygon:
    """A mask too small to trace keeps its box, as a polygon."""
    return Polygon(tuple((float(x), float(y)) for x, y in box_corners(b)))
