"""The lean runtime's segment, pose, obb and classify against the Ultralytics path.

Real-shaped outputs from real exports: YOLOv8n-pose (17 keypoints x 3), YOLOv8n-obb (80 classes,
the angle channel), YOLOv8n-cls (1000 classes) built from Ultralytics' own yaml with fixed seeds
(untrained: no hub download; their head weights get seeded noise), exported to static ONNX (320;
classify 224), on images of 4 aspect ratios. Pose and classify run end to end through the
predictor, with the onnx runtime (ONNX Runtime through Ultralytics' predictor, torchvision NMS and
transforms) and the lean one (numpy, PIL). The untrained OBB head still ties whole anchor grids on
one score, where fast NMS depends on how ties sort, so obb and segment (YOLOv8n-seg, 80 classes,
32 prototypes) are compared on the export's raw outputs with seeded jitter: Ultralytics'
non_max_suppression (rotated=True for obb), scale_boxes, process_mask(upsample) and Masks.xy
against lean's decode; segment is then served lean by the predictor, as polygons. Stated
tolerance: the same detections in the same order, class equal, score within 1e-4, box / keypoint
/ rotated-box coordinates within 0.05 px, angle within 1e-3 deg, keypoint visibility equal, mask
outlines of the same length within 0.05 px; probiou within 2e-4; classify: same top class,
softmax within 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.settings import load_settings
from labelloop.types import ImageItem, Keypoints, RotatedBox

IMGSZ = 320
SHAPES = [(320, 320), (240, 320), (320, 200), (123, 301)]
CONF = {"pose": 0.02, "obb": 0.02, "classify": 0.25, "segment": 0.02}
TOL_PX, TOL_SCORE, TOL_DEG = 0.05, 1e-4, 1e-3
YAML = {"pose": "yolov8n-pose.yaml", "obb": "yolov8n-obb.yaml", "classify": "yolov8n-cls.yaml",
        "segment": "yolov8n-seg.yaml"}  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    from PIL import Image

    from tests.helpers import shape_images

    paths = shape_images(tmp_path_factory.mktemp("img"), len(SHAPES), size=IMGSZ, seed=4)
    return [
        np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR))
        for p, (h, w) in zip(paths, SHAPES, strict=True)
    ]


def _exported(task: str, work: Path, imgsz: int = IMGSZ) -> Path:
    import torch
    from ultralytics import YOLO

    from labelloop.backend.inference.export import build_artifact
    from labelloop.backend.inference.yolo_env import ensure_yolo_env

    ensure_yolo_env(load_settings().cache_dir)
    torch.manual_seed(0)
    weights = work / f"yolov8n-{task}.pt"
    model = YOLO(YAML[task])
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():  # an untrained head gives every anchor the same box and score: spread them
        for p in model.model.model[-1].parameters():
            p.add_(torch.randn(p.shape, generator=noise) * 0.3)
    model.save(str(weights))
    model = YOLO(str(weights))
    return build_artifact(weights, "onnx", work / task, imgsz, None, dict(model.names))


def _predict(
    onnx: Path, runtime: str, task: str, images: list[np.ndarray], imgsz: int = IMGSZ
) -> list[ImageItem]:
    from labelloop.backend.inference.predictor import Predictor

    s = load_settings(model=onnx, runtime=runtime, device="cpu", conf=CONF[task], imgsz=imgsz, streams=1)
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


def test_lean_classify_equals_ultralytics(images: list[np.ndarray], tmp_path: Path) -> None:
    """YOLOv8n-cls (1000 classes) at 224: the same top class and softmax within 1e-5 on every image
    (the crop is PIL's, as torchvision's Resize/CenterCrop on a PIL image)."""
    onnx = _exported("classify", tmp_path, imgsz=224)
    ref = _predict(onnx, "onnx", "classify", images, imgsz=224)
    lean = _predict(onnx, "lean", "classify", images, imgsz=224)
    for r, c in zip(ref, lean, strict=True):
        assert len(r.regions) == len(c.regions) == 1
        a, b = r.regions[0], c.regions[0]
        assert a.label == b.label and _close(a.score, b.score, 1e-5), (a.label, b.label, a.score, b.score)
        assert a.probs is not None and b.probs is not None and len(a.probs) == 1000
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) <= 1e-5


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
            raw = forward(to_input(lb))[0].astype(np.float32)
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


def test_lean_segment_decode_equals_ultralytics(images: list[np.ndarray], tmp_path: Path) -> None:
    """Segment on the raw outputs of the real export (head + 32 prototypes), scores, boxes and mask
    coefficients given seeded jitter: Ultralytics' non_max_suppression + process_mask(upsample) +
    Masks.xy vs lean's decode; and the predictor serves it lean, as polygons."""
    import torch
    from ultralytics.engine.results import Masks
    from ultralytics.utils import nms, ops

    from labelloop.backend.inference.lean import LeanRuntime, decode, letterbox, to_input
    from labelloop.types import Polygon

    onnx = _exported("segment", tmp_path)
    rt = LeanRuntime(onnx, load_settings(device="cpu", imgsz=IMGSZ, streams=1).predict)
    assert rt.task == "segment" and rt.meta.extra == 32
    nc, rng, total, points = len(rt.names), np.random.default_rng(3), 0, 0
    for im in images:
        lb = letterbox(im[..., ::-1], (IMGSZ, IMGSZ))
        with rt.model.stream() as forward:
            raw, protos = (o.astype(np.float32) for o in forward(to_input(lb)))
        n = raw.shape[2]
        raw[0, 4 : 4 + nc] = rng.uniform(0, 1, (nc, n)) * rng.uniform(0, 1, (1, n)) ** 3
        raw[0, :2] = rng.uniform(0, IMGSZ, (2, n))
        raw[0, 2:4] = rng.uniform(10, 120, (2, n))
        raw[0, 4 + nc :] = rng.normal(0, 1, raw[0, 4 + nc :].shape)
        ref = nms.non_max_suppression(torch.from_numpy(raw), 0.5, 0.7, nc=nc, max_det=300)[0]
        masks = ops.process_mask(
            torch.from_numpy(protos[0]), ref[:, 6:], ref[:, :4], lb.shape[:2], upsample=True
        )
        ref_xy = Masks(masks, im.shape[:2]).xy
        ref_boxes = ops.scale_boxes(lb.shape[:2], ref[:, :4].clone(), im.shape).numpy()
        ours = decode(raw[0], rt.meta, lb.shape[:2], im.shape[:2], 0.5, 0.7, 300, protos[0])
        assert ours.boxes is not None and ours.masks is not None and len(ours.boxes) == len(ref) > 0
        assert np.array_equal(ours.boxes.cls, ref[:, 5].numpy().astype(int))
        assert np.allclose(ours.boxes.xyxy, ref_boxes, atol=TOL_PX)
        for a, b in zip(ours.masks.xy, ref_xy, strict=True):
            assert a.shape == b.shape and np.allclose(a, b, atol=TOL_PX), (a.shape, b.shape)
            points += len(a)
        total += len(ref)
    assert total >= 20 and points >= 200, (total, points)
    items = _predict(onnx, "lean", "segment", images)  # served lean: the predictor's polygons
    assert all(isinstance(r.geometry, Polygon) for it in items for r in it.regions)


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
