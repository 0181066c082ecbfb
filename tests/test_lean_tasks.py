"""The lean runtime's pose and obb decode against the Ultralytics path.

Real-shaped outputs from real exports: YOLOv8n-pose (17 keypoints x 3) and YOLOv8n-obb (80 classes,
the angle channel) built from Ultralytics' own yaml with fixed seeds (untrained: no hub download;
their head weights get seeded noise), exported to static ONNX at 320, on images of 4 aspect ratios.
Pose runs end to end through the predictor, with the onnx runtime (ONNX Runtime through
Ultralytics' predictor, torchvision NMS) and the lean one (numpy). The untrained OBB head still
ties whole anchor grids on one score, where fast NMS depends on how ties sort, so obb is compared
on the export's raw output with seeded jitter: Ultralytics' non_max_suppression(rotated=True) and
scale_boxes against lean's decode. Stated tolerance: the same detections in the same order, class
equal, score within 1e-4, box / keypoint / rotated-box coordinates within 0.05 px, angle within
1e-3 deg, keypoint visibility equal; probiou within 2e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.settings import load_settings
from labelloop.types import ImageItem, Keypoints, RotatedBox

IMGSZ = 320
SHAPES = [(320, 320), (240, 320), (320, 200), (123, 301)]
CONF = {"pose": 0.02, "obb": 0.02}
TOL_PX, TOL_SCORE, TOL_DEG = 0.05, 1e-4, 1e-3


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    from PIL import Image

    from tests.helpers import shape_images

    paths = shape_images(tmp_path_factory.mktemp("img"), len(SHAPES), size=IMGSZ, seed=4)
    return [
        np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR))
        for p, (h, w) in zip(paths, SHAPES, strict=True)
    ]


def _exported(task: str, work: Path) -> Path:
    import torch
    from ultralytics import YOLO

    from labelloop.backend.inference.export import build_artifact
    from labelloop.backend.inference.yolo_env import ensure_yolo_env

    ensure_yolo_env(load_settings().cache_dir)
    torch.manual_seed(0)
    weights = work / f"yolov8n-{task}.pt"
    model = YOLO(f"yolov8n-{task}.yaml")
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():  # an untrained head gives every anchor the same box and score: spread them
        for p in model.model.model[-1].parameters():
            p.add_(torch.randn(p.shape, generator=noise) * 0.3)
    model.save(str(weights))
    model = YOLO(str(weights))
    return build_artifact(weights, "onnx", work / task, IMGSZ, None, dict(model.names))


def _predict(onnx: Path, runtime: str, task: str, images: list[np.ndarray]) -> list[ImageItem]:
    from labelloop.backend.inference.predictor import Predictor

    s = load_settings(model=onnx, runtime=runtime, device="cpu", conf=CONF[task], imgsz=IMGSZ, streams=1)
    p = Predictor(onnx, s)
    assert p.runtime == runtime and p.task == task  # lean did not fall back
    return p.predict_arrays(images)


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


@pytest.mark.parametrize("task", ["pose"])
def test_lean_decode_equals_ultralytics(task: str, images: list[np.ndarray], tmp_path: Path) -> None:
    onnx = _exported(task, tmp_path)
    ref, lean = _predict(onnx, "onnx", task, images), _predict(onnx, "lean", task, images)
    total = 0
    for r_item, l_item in zip(ref, lean, strict=True):
        assert len(r_item.regions) == len(l_item.regions)
        total += len(r_item.regions)
        for r, c in zip(r_item.regions, l_item.regions, strict=True):
            assert r.label == c.label and _close(r.score, c.score, TOL_SCORE), (r, c)
            assert r.probs is not None and c.probs is not None
            assert all(_close(r.probs[k], c.probs[k], TOL_SCORE) for k in r.probs)
            g, h = r.geometry, c.geometry
            if task == "obb":
                assert isinstance(g, RotatedBox) and isinstance(h, RotatedBox)
                for f in ("cx", "cy", "w", "h"):
                    assert _close(getattr(g, f), getattr(h, f), TOL_PX), (g, h)
                assert _close((g.angle - h.angle + 180) % 360 - 180, 0.0, TOL_DEG), (g, h)
            else:
                assert isinstance(g, Keypoints) and isinstance(h, Keypoints)
                for f in ("x1", "y1", "x2", "y2"):
                    assert _close(getattr(g.box, f), getattr(h.box, f), TOL_PX), (g.box, h.box)
                assert len(g.points) == len(h.points) == 17
                for p, q in zip(g.points, h.points, strict=True):
                    assert _close(p.x, q.x, TOL_PX) and _close(p.y, q.y, TOL_PX) and p.visible == q.visible
        assert r_item.score == pytest.approx(l_item.score, abs=TOL_SCORE)
    assert total >= 20, f"only {total} detections: the comparison would prove little"


def test_lean_obb_decode_equals_ultralytics_nms(images: list[np.ndarray], tmp_path: Path) -> None:
    """OBB on the raw head output of the real export, scores and boxes given seeded jitter (the
    untrained head ties whole anchor grids, and fast NMS then depends on how ties sort): Ultralytics'
    non_max_suppression(rotated=True) + scale_boxes(xywh=True) vs lean's decode, same order."""
    import torch
    from ultralytics.utils import nms, ops

    from labelloop.backend.inference.lean import LeanRuntime, decode, letterbox, to_input

    onnx = _exported("obb", tmp_path)
    rt = LeanRuntime(onnx, load_settings(device="cpu", imgsz=IMGSZ, streams=1).predict)
    assert rt.task == "obb" and rt.meta.extra == 1
    nc, rng, total = len(rt.names), np.random.default_rng(2), 0
    for im in images:
        lb = letterbox(im[..., ::-1], (IMGSZ, IMGSZ))
        with rt.model.stream() as forward:
            raw = forward(to_input(lb)).astype(np.float32)
        n = raw.shape[2]  # class scores in 0..1, each anchor's best one spread (no ties)
        raw[0, 4 : 4 + nc] = rng.uniform(0, 1, (nc, n)) * rng.uniform(0, 1, (1, n)) ** 3
        raw[0, :2] += rng.normal(0, 30, raw[0, :2].shape)
        raw[0, 2:4] *= rng.uniform(0.05, 0.4, raw[0, 2:4].shape)
        ref = nms.non_max_suppression(torch.from_numpy(raw), 0.5, 0.7, nc=nc, max_det=300, rotated=True)[0]
        ref_boxes = torch.cat([ref[:, :4], ref[:, -1:]], -1)
        ref_boxes[:, :4] = ops.scale_boxes(lb.shape[:2], ref_boxes[:, :4], im.shape, xywh=True)
        ours = decode(raw[0], rt.meta, lb.shape[:2], im.shape[:2], 0.5, 0.7, 300)
        assert ours.obb is not None and len(ours.obb) == len(ref) > 0
        assert np.array_equal(ours.obb.cls, ref[:, 5].numpy().astype(int))
        assert np.allclose(ours.obb.conf, ref[:, 4].numpy(), atol=TOL_SCORE)
        assert np.allclose(ours.obb.xywhr[:, :4], ref_boxes[:, :4].numpy(), atol=TOL_PX)
        assert np.allclose(ours.obb.xywhr[:, 4], ref_boxes[:, 4].numpy(), atol=np.radians(TOL_DEG))
        total += len(ref)
    assert total >= 20, total


def test_numpy_rotated_nms_and_probiou_match_ultralytics() -> None:
    import torch
    from ultralytics.utils.metrics import batch_probiou
    from ultralytics.utils.nms import TorchNMS

    from labelloop.backend.inference.lean import nms_rotated, probiou

    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 300
        boxes = np.concatenate(
            [rng.uniform(0, 200, (n, 2)), rng.uniform(4, 60, (n, 2)), rng.uniform(-np.pi / 2, np.pi, (n, 1))],
            1,
        ).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        ours = probiou(boxes, boxes)
        theirs = batch_probiou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
        assert np.allclose(ours, theirs, atol=2e-4)  # float32 sqrt(1 - exp(-d)) near d = 0
        keep = nms_rotated(boxes, scores, 0.5, 300)
        ref = TorchNMS.fast_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), 0.5, iou_func=batch_probiou
        )
        assert keep.tolist() == ref.tolist()
