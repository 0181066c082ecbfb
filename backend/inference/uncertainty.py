"""Uncertainty of one region and of one image, from the model's class-probability vectors.

Per region, from its class-probability vector p (YOLO detection heads give independent sigmoids
per class; classifiers a softmax):

- least confidence = 1 - max(p)
- margin           = 1 - (p1 - p2), the gap between the two best classes (p2 = 0 for one class)
- entropy          = H(p / sum p) / log(K), normalised to [0, 1] (binary entropy of p when K = 1)

Per image, Label Studio's prediction ``score`` is a confidence (higher = surer), so sorting it
ascending puts the images most worth a human look first:

- with detections: the lowest region confidence (an image is as doubtful as its worst box);
- with none: 1 - the highest class probability any candidate reached before the confidence
  threshold, i.e. the model's confidence that there is nothing to label. An image where a
  candidate almost passed scores lower than one where nothing came close.
- when the model exposes no candidates (end-to-end heads), an empty image scores 1.0.
"""

from __future__ import annotations

import numpy as np

MEASURES = ("least_confidence", "margin", "entropy")


def region_uncertainty(probs: np.ndarray) -> dict[str, float]:
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 0.0, 1.0)
    if p.size == 0:
        return dict.fromkeys(MEASURES, 1.0)
    top = np.sort(p)[::-1]
    p1, p2 = top[0], (top[1] if top.size > 1 else 0.0)
    if p.size == 1:
        q = np.array([p1, 1.0 - p1])
        k = 2
    else:
        total = p.sum()
        q = p / total if total > 0 else np.full(p.size, 1.0 / p.size)
        k = p.size
    nz = q[q > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(k))
    return {"least_confidence": float(1.0 - p1), "margin": float(1.0 - (p1 - p2)), "entropy": entropy}


def image_score(region_scores: list[float], max_candidate: float | None) -> float:
    """Image confidence as defined in the module docstring."""
    if region_scores:
        return float(min(region_scores))
    if max_candidate is None:
        return 1.0
    return float(1.0 - max_candidate)


def image_uncertainty(region_uncertainties: list[dict[str, float]], score: float) -> dict[str, float]:
    """Per-measure maximum over regions; ``least_confidence`` of an empty image is 1 - its score."""
    if not region_uncertainties:
        return {"least_confidence": 1.0 - score, "margin": 1.0 - score, "entropy": 0.0}
    return {m: max(u[m] for u in region_uncertainties) for m in MEASURES}
