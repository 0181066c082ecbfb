"""Every task type through the real predictor, and every Label Studio control tag it can fill.

Tiny models are built from Ultralytics' yaml files. A randomly initialised detection head predicts
nothing, so its class-logit biases are raised: the model then proposes real (random) boxes through
the real forward, NMS and postprocess, which is what these tests exercise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.backend.inference.predictor import Predictor
from labelloop.connectors.formats.labelstudio import (
    item_to_ls_prediction,
    ls_rle_to_mask,
    ls_to_regions,
    parse_label_config,
    select_controls,
)
from labelloop.errors import ConfigError, ModelError
from labelloop.settings import load_settings
from labelloop.types import Box, Keypoints, Polygon, RotatedBox

YAMLS = {
    "detect": "yolov8n.yaml",
    "segment": "yolov8n-seg.yaml",
    "pose": "yolov8n-pose.yaml",
    "obb": "yolov8n-obb.yaml",
    "classify": "yolov8n-cls.yaml",
}


def _cfg(tag: str, extra: str = "") -> str:
    child = "Choice" if tag == "Choices" else "Label"
    labels = "".join(f'<{child} value="{i}"/>' for i in range(1000 if tag == "Choices" else 80))
    return f'<View><Image name="img" value="$image"/><{tag} name="ctl" toName="img">{labels}</{tag}>{extra}</View>'


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ultralytics import YOLO
    from ultralytics.nn.modules.head import Detect

    out = {}
    d = tmp_path_factory.mktemp("tiny-models")
    for task, yaml in YAMLS.items():
        m = YOLO(yaml)
        for mod in m.model.modules():
            if isinstance(mod, Detect):
                for seq in mod.cv3:
                    seq[-1].bias.data.fill_(4.0)
        out[task] = d / f"{task}.pt"
        m.save(str(out[task]))
    return out


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(2)]


def _predict(path: Path, images: list[np.ndarray], **kw):  # type: ignore[no-untyped-def]
    settings = load_settings(runtime="torch", imgsz=64, max_det=5, device="cpu", **kw)
    predictor = Predictor(path, settings)
    return predictor, predictor.predict_arrays(images)


@pytest.mark.parametrize("task", list(YAMLS))
def test_each_task_gives_regions_with_probabilities(task: str, tiny_models, images) -> None:  # type: ignore[no-untyped-def]
    predictor, items = _predict(tiny_models[task], images)
    assert predictor.task == task
    expected = {
        "detect": Box,
        "segment": Polygon,
        "pose": Keypoints,
        "obb": RotatedBox,
        "classify": type(None),
    }
    for item in items:
        assert (item.width, item.height) == (128, 96)
        assert item.regions, f"{task}: no regions"
        assert 0.0 <= item.score <= 1.0
        assert set(item.metadata["uncertainty"]) == {"least_confidence", "margin", "entropy"}
        for r in item.regions:
            assert isinstance(r.geometry, expected[task])
            assert r.provenance.source == "prelabel" and r.provenance.model_version == predictor.model_version
            assert r.probs is not None and len(r.probs) == len(predictor.names)
            # the winning class's probability is the region's score: the vector is the real head output
            assert max(r.probs.values()) == pytest.approx(r.score, abs=1e-5)
            u = r.attributes["uncertainty"]
            assert u["least_confidence"] == pytest.approx(1 - r.score, abs=1e-5)
            assert all(0.0 <= v <= 1.0 + 1e-9 for v in u.values())
        if task != "classify":
            assert item.score == pytest.approx(min(r.score for r in item.regions))


@pytest.mark.parametrize(
    ("task", "tag", "ls_type"),
    [
        ("detect", "RectangleLabels", "rectanglelabels"),
        ("detect", "PolygonLabels", "polygonlabels"),
        ("obb", "RectangleLabels", "rectanglelabels"),
        ("segment", "PolygonLabels", "polygonlabels"),
        ("segment", "BrushLabels", "brushlabels"),
        ("classify", "Choices", "choices"),
    ],
)
def test_label_studio_controls(task: str, tag: str, ls_type: str, tiny_models, images) -> None:  # type: ignore[no-untyped-def]
    predictor, items = _predict(tiny_models[task], images)
    plan = select_controls(parse_label_config(_cfg(tag)), task)
    assert plan.main.tag == tag and plan.image_key == "image"
    pred, dropped = item_to_ls_prediction(items[0], plan, predictor.model_version)
    assert dropped == 0 and pred["model_version"] == predictor.model_version
    assert len(pred["result"]) == len(items[0].regions)
    for entry, region in zip(pred["result"], items[0].regions, strict=True):
        assert entry["type"] == ls_type and entry["from_name"] == "ctl" and entry["to_name"] == "img"
        assert entry["score"] == pytest.approx(region.score)
        assert entry["value"][ls_type] == [region.label]
    back = ls_to_regions(pred["result"])
    for r0, r1 in zip(items[0].regions, back, strict=True):
        if tag == "BrushLabels":
            mask = ls_rle_to_mask(pred["result"][0]["value"]["rle"], 128, 96)
            assert mask.shape == (96, 128) and mask.any()
        elif isinstance(r0.geometry, RotatedBox):
            assert np.allclose(r0.geometry.corners(), r1.geometry.corners(), atol=1e-6)
        elif isinstance(r0.geometry, Box) and tag == "RectangleLabels":
            assert np.allclose(
                [r0.geometry.x1, r0.geometry.y1, r0.geometry.x2, r0.geometry.y2],
                [r1.geometry.x1, r1.geometry.y1, r1.geometry.x2, r1.geometry.y2],
                atol=1e-6,
            )
        elif isinstance(r0.geometry, Polygon):
            assert np.allclose(r0.geometry.points, r1.geometry.points, atol=1e-6)


def test_pose_fills_keypoints_and_boxes(tiny_models, images) -> None:  # type: ignore[no-untyped-def]
    _predictor, items = _predict(tiny_models["pose"], images)
    kp_labels = "".join(f'<Label value="point{k}"/>' for k in range(17))
    cfg = (
        '<View><Image name="img" value="$image"/><RectangleLabels name="box" toName="img">'
        '<Label value="person" predicted_values="0"/></RectangleLabels>'
        f'<KeyPointLabels name="kp" toName="img">{kp_labels}</KeyPointLabels></View>'
    )
    plan = select_controls(parse_label_config(cfg), "pose")
    assert plan.main.tag == "RectangleLabels" and plan.keypoints is not None
    pred, dropped = item_to_ls_prediction(items[0], plan, "v1")
    assert dropped == 0
    boxes = [e for e in pred["result"] if e["type"] == "rectanglelabels"]
    points = [e for e in pred["result"] if e["type"] == "keypointlabels"]
    assert len(boxes) == len(items[0].regions) and boxes[0]["value"]["rectanglelabels"] == ["person"]
    visible = sum(p.visible for r in items[0].regions for p in r.geometry.points)
    assert len(points) == visible
    assert {e["value"]["keypointlabels"][0] for e in points} <= {f"point{k}" for k in range(17)}
    regrouped = [r for r in ls_to_regions(pred["result"]) if isinstance(r.geometry, Keypoints)]
    assert sum(len(r.geometry.points) for r in regrouped) == visible


def test_unmapped_classes_dropped_and_label_map(tiny_models, images) -> None:  # type: ignore[no-untyped-def]
    _predictor, items = _predict(tiny_models["detect"], images)
    cfg = '<View><Image name="img" value="$image"/><RectangleLabels name="l" toName="img"><Label value="Cat"/></RectangleLabels></View>'
    plan = select_controls(parse_label_config(cfg), "detect")
    pred, dropped = item_to_ls_prediction(items[0], plan, "v")
    assert pred["result"] == [] and dropped == len(items[0].regions)
    mapping = {r.label: "cat" for r in items[0].regions}  # settings mapping, matched case-insensitively
    pred, dropped = item_to_ls_prediction(items[0], plan, "v", mapping)
    assert dropped == 0 and {e["value"]["rectanglelabels"][0] for e in pred["result"]} == {"Cat"}


def test_config_the_model_cannot_serve_names_the_tag() -> None:
    cfg = '<View><Image name="photo" value="$img"/><Choices name="quality" toName="photo"><Choice value="ok"/></Choices></View>'
    with pytest.raises(ConfigError, match=r"<RectangleLabels> or <PolygonLabels>.*Choices name='quality'"):
        select_controls(parse_label_config(cfg), "detect")
    with pytest.raises(ConfigError, match="not valid XML"):
        parse_label_config("<View><Image")


def test_onnx_matches_pytorch(demo_weights: Path) -> None:
    """Tolerance: same boxes, classes and order; coordinates within 1 px, scores within 0.01."""
    from labelloop.backend.inference.demo_model import render_shapes

    rng = np.random.default_rng(11)
    imgs = [np.asarray(render_shapes(rng, 320)[0]) for _ in range(6)]
    torch_items = Predictor(demo_weights, load_settings(runtime="torch", device="cpu")).predict_arrays(imgs)
    onnx_p = Predictor(demo_weights, load_settings(runtime="onnx", device="cpu"))
    assert onnx_p.runtime == "onnx"
    onnx_items = onnx_p.predict_arrays(imgs)
    assert sum(len(i.regions) for i in torch_items) > 0
    for a, b in zip(torch_items, onnx_items, strict=True):
        assert [r.label for r in a.regions] == [r.label for r in b.regions]
        for ra, rb in zip(a.regions, b.regions, strict=True):
            ga, gb = ra.geometry, rb.geometry
            assert np.allclose([ga.x1, ga.y1, ga.x2, ga.y2], [gb.x1, gb.y1, gb.x2, gb.y2], atol=1.0)
            assert ra.score == pytest.approx(rb.score, abs=0.01)
        assert a.score == pytest.approx(b.score, abs=0.01)


def test_empty_image_score_is_confidence_in_nothing(demo_weights: Path) -> None:
    img = np.full((320, 320, 3), 40, dtype=np.uint8)
    p = Predictor(demo_weights, load_settings(runtime="torch", conf=0.99, device="cpu"))
    item = p.predict_arrays([img])[0]
    assert item.regions == []
    assert 0.0 < item.score < 1.0  # 1 - the best candidate's class probability, below the threshold
    assert item.metadata["uncertainty"]["least_confidence"] == pytest.approx(1 - item.score)


def test_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Predictor(tmp_path / "missing.pt", load_settings())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="not a loadable Ultralytics YOLO model"):
        Predictor(junk, load_settings())
