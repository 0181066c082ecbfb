"""The CVAT auto-annotation function's spec follows the model it wraps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml


@pytest.fixture(scope="module")
def pose5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pose model with 5 unnamed keypoints per instance (not COCO's 17), proposing boxes."""
    from ultralytics import YOLO
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import yaml_model_load

    d = tmp_path_factory.mktemp("pose5")
    cfg = yaml_model_load("yolov8n-pose.yaml")
    cfg.update(kpt_shape=[5, 3], nc=2)
    cfg.pop("kpt_names", None)
    (d / "yolov8n-pose5.yaml").write_text(yaml.safe_dump(cfg))
    m = YOLO(str(d / "yolov8n-pose5.yaml"))
    for mod in m.model.modules():
        if isinstance(mod, Detect):
            for seq in mod.cv3:
                seq[-1].bias.data.fill_(4.0)
    m.save(str(d / "pose5.pt"))
    return d / "pose5.pt"


def test_pose_skeleton_has_the_models_keypoint_count(pose5: Path) -> None:
    from cvat_sdk.auto_annotation import DetectionFunctionSpec
    from PIL import Image

    from labelloop.backend.cvat_function import create

    fn = create(model=str(pose5), device="cpu", runtime="torch", imgsz=64)
    assert fn.predictor.kpt_shape == (5, 3) and not fn.predictor.kpt_names
    assert isinstance(fn.spec, DetectionFunctionSpec)
    for label in fn.spec.labels:
        assert label.type == "skeleton"
        assert [s.name for s in label.sublabels] == [f"kp{k}" for k in range(5)]

    class Ctx:
        frame_name, conf_threshold, conv_mask_to_poly = "x.png", None, False

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    shapes = fn.detect(Ctx(), img)
    assert shapes and all(s.type.value == "skeleton" and len(s.elements) == 5 for s in shapes)
