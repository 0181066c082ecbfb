"""Keep the model's per-class probability vector for every kept detection.

Ultralytics' own result only has the winning class. These predictor subclasses override one hook
each (never the loop): setting ``_feats`` makes Ultralytics' postprocess run NMS with
``return_idxs`` and hand the kept indices to ``get_obj_feats``, which here indexes the raw
(B, 4+nc+extra, N) head output, so uncertainty measures see the full vector (``result.feats``).
``result.max_candidate`` is the best class probability any candidate reached, kept or not.
"""

from __future__ import annotations

from typing import Any


def _first_tensor(preds: Any) -> Any:
    while isinstance(preds, list | tuple):
        preds = preds[0]
    return preds


def _probs_predictor(base: type) -> type:
    class ProbsPredictor(base):  # type: ignore[misc, valid-type]
        def postprocess(self, preds, img, orig_imgs, **kwargs):  # type: ignore[no-untyped-def]
            raw = _first_tensor(preds)
            nc = len(self.model.names)
            usable = not getattr(self.model, "end2end", False) and raw.ndim == 3 and raw.shape[1] >= 4 + nc
            self._feats = raw if usable else None
            try:
                results = super().postprocess(preds, img, orig_imgs, **kwargs)
            finally:
                self._feats = None
            for i, r in enumerate(results):
                r.max_candidate = float(raw[i, 4 : 4 + nc].max()) if usable else None
                if not usable:
                    r.feats = None
            return results

        def get_obj_feats(self, raw, idxs):  # type: ignore[no-untyped-def]
            nc = len(self.model.names)
            return [
                raw[i, 4 : 4 + nc, idx.view(-1).long()].T.float().cpu().numpy() for i, idx in enumerate(idxs)
            ]

    return ProbsPredictor


def probs_predictor(task: str) -> type | None:
    """The predictor class to run ``task`` with, or None where Ultralytics' own is right (classify:
    its result already holds the whole softmax)."""
    from ultralytics.models import yolo  # lazy: importing Ultralytics costs seconds

    base = {
        "detect": yolo.detect.DetectionPredictor,
        "segment": yolo.segment.SegmentationPredictor,
        "pose": yolo.pose.PosePredictor,
        "obb": yolo.obb.OBBPredictor,
    }.get(task)
    return _probs_predictor(base) if base else None
