"""Our predictor as a cvat-sdk auto-annotation function (the ``DetectionFunction`` protocol).

CVAT runs it three ways, all with the same module:

- on Community CVAT, from the annotator's machine::

      cvat-cli --server-host URL --auth USER:PASS task auto-annotate TASK_ID \\
          --function-module labelloop.backend.cvat_function -p model=str:/path/best.pt -p conf=float:0.25

- registered as a native function where the server has agent functions (CVAT Online/Enterprise)::

      cvat-cli function create-native "labelloop YOLO" --function-module labelloop.backend.cvat_function ...
      cvat-cli function run-agent FUNCTION_ID --function-module labelloop.backend.cvat_function ...

- from Python: ``cvat_sdk.auto_annotation.annotate_task(client, task_id, create(model=...))``.

``create(**params)`` is the factory ``cvat-cli`` calls with the ``-p`` parameters. Shapes carry the
model's confidence as ``score``; the driver sets ``source="auto"`` on each, which is how the sync
tells them from human labels. Geometry goes through ``labelloop.connectors.formats.cvat`` so it
matches what the connector pushes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from cvat_sdk import models
from cvat_sdk.api_client import Configuration
from cvat_sdk.api_client.model_utils import validate_and_convert_types
from cvat_sdk.auto_annotation import (
    DetectionFunctionContext,
    DetectionFunctionSpec,
    keypoint_spec,
    label_spec,
    skeleton_label_spec,
)

from labelloop.backend.inference.predictor import Predictor
from labelloop.connectors.formats.cvat import regions_to_cvat
from labelloop.settings import Settings
from labelloop.types import ImageItem

_CFG = Configuration()
_LABEL_TYPE = {
    "detect": "rectangle",
    "obb": "rectangle",
    "segment": "polygon",
    "pose": "skeleton",
    "classify": "tag",
}


class YoloDetectionFunction:
    """Wraps a ``Predictor`` (anything with ``names``, ``task`` and ``predict_arrays``)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        names: dict[int, str] = dict(predictor.names)
        kind = _LABEL_TYPE[predictor.task]
        kpts = list(getattr(predictor, "kpt_names", None) or [])
        if kind == "skeleton" and not kpts:  # named as the predictor names unnamed points: kp0, kp1, ...
            kpts = [f"kp{k}" for k in range(_keypoint_count(predictor))]
        labels = []
        for i, name in sorted(names.items()):
            if kind == "skeleton":
                subs = [keypoint_spec(k, j) for j, k in enumerate(kpts)]
                labels.append(skeleton_label_spec(name, i, subs))
            else:
                labels.append(label_spec(name, i, type=kind))
        self._label_ids = {name: i for i, name in names.items()}
        self._sub_ids = {k: j for j, k in enumerate(kpts)}
        self.spec = DetectionFunctionSpec(labels=labels)

    def detect(
        self, context: DetectionFunctionContext, image: PIL.Image.Image
    ) -> Sequence[models.LabeledShapeRequest | models.LabeledImageRequest]:
        item: ImageItem = self.predictor.predict_arrays([np.asarray(image.convert("RGB"))])[0]
        threshold = context.conf_threshold
        regions = [r for r in item.regions if threshold is None or (r.score or 0.0) >= threshold]
        return to_cvat_annotations(regions, self._label_ids, self._sub_ids)


def _keypoint_count(predictor: Any) -> int:
    """Points per instance, from the model's ``kpt_shape``; 17 (COCO's) only for a model that does not
    say (an exported file)."""
    shape = getattr(predictor, "kpt_shape", None)
    return int(shape[0]) if shape else 17


def to_cvat_annotations(
    regions: Sequence[Any], label_ids: dict[str, int], sublabel_ids: dict[str, int] | None = None
) -> list[models.LabeledShapeRequest | models.LabeledImageRequest]:
    """Canonical regions -> the request models a detection function returns (frame 0, no id/source)."""
    extra = {"sublabel_ids": sublabel_ids} if sublabel_ids else {}  # skeletons only
    shapes, tags = regions_to_cvat(list(regions), 0, label_ids, **extra)
    out: list[models.LabeledShapeRequest | models.LabeledImageRequest] = []
    for objs, model in ((shapes, models.LabeledShapeRequest), (tags, models.LabeledImageRequest)):
        for obj in objs:
            d = _strip(obj)
            d["elements"] = [_strip(e) for e in d.get("elements", [])]
            if model is models.LabeledImageRequest or not d["elements"]:
                d.pop("elements")
            out.append(validate_and_convert_types(d, (model,), [model.__name__], True, True, _CFG))
    return out


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The driver rejects preset ids and sources and sets frames itself; attributes need spec ids."""
    d = {k: v for k, v in obj.items() if k not in ("id", "source", "attributes")}
    d["frame"] = 0
    return d


def create(
    model: str = "",
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 0,
    device: str = "auto",
    runtime: str = "auto",
) -> YoloDetectionFunction:
    """The factory ``cvat-cli ... -p model=str:PATH -p conf=float:0.3`` calls (empty model: demo)."""
    settings = Settings(
        model=Path(model) if model else None,
        conf=conf,
        iou=iou,
        imgsz=imgsz or None,
        device=device,
        runtime=runtime,  # type: ignore[arg-type]
    )
    return YoloDetectionFunction(Predictor.from_settings(settings))
