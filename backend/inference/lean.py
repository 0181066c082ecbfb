"""The lean CPU runtime: ONNX (fp32/INT8) and OpenVINO IR detect, pose, obb and classify models
served with neither torch nor Ultralytics imported (their import alone is ~550 MB of a worker's RSS).

``predict.runtime = "lean"`` (LABELLOOP_RUNTIME=lean) asks for it; ``auto`` picks it for an exported
.onnx file or OpenVINO IR dir of such a model on the CPU (``wanted``). It does what Ultralytics'
DetectionPredictor does, in numpy: the letterbox (LetterBox: scaleup, centred, pad 114, cv2 bilinear
resize; minimal stride padding when the model takes dynamic shapes, as Ultralytics' ``rect`` predict
does, else padded to the model's fixed size), BGR -> RGB /255 float32, one forward, the YOLOv8 detect
head decode ([1, 4+nc, N]: xywh + per-class sigmoid scores), class-aware NMS (best class per anchor,
``conf`` strict, boxes offset per class by 7680 px as Ultralytics does, greedy IoU > ``iou``
suppressed, ``max_det`` kept), boxes scaled back and clipped. The result objects carry what
``connectors.formats.ultralytics.result_to_regions`` reads (boxes.xyxy/cls/conf, ``feats`` = the
class vector of each kept box, ``max_candidate``), so the predictor builds the same ImageItems.

Pose: the head's keypoint channels of each kept box, scaled like Ultralytics' scale_coords (clipped).
OBB: boxes stay xywh + the angle channel, NMS is Ultralytics' rotated fast NMS (probiou, a box is
dropped when any higher-scored one overlaps it), boxes scaled without clipping. Classify: the
host half of Ultralytics' classify_transforms (``classify_crop``), the softmax the export outputs.
Segment: each kept box's 32 mask coefficients times the prototypes (the second output), upsampled,
cropped to the box and traced as Ultralytics does (``instance_masks``, ``mask_outlines``).

Class names, task, imgsz, stride and the keypoint shape come from the ONNX metadata_props Ultralytics
writes, or from an OpenVINO IR dir's ``metadata.yaml``. YOLOv8-style heads only: an end-to-end
head (YOLO26/YOLOv10 or an nms=True export: [1, max_det, 6]) and .pt weights (which need a torch
export first) are served by the current runtime, said in one log line.
"""

from __future__ import annotations

import ast
import logging
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.backend.inference.runtime import artifact_runtime, compile_openvino, cpu_cores
from labelloop.errors import ModelError
from labelloop.settings import PredictSettings

log = logging.getLogger(__name__)

LEAN_TASKS = ("detect", "segment", "pose", "obb", "classify")
MASK_COEFFS = 32  # YOLOv8 segment heads: mask coefficients per box, prototypes per image
PAD = 114
MAX_WH = 7680  # Ultralytics' per-class box offset for class-aware NMS
MAX_NMS = 30000


@dataclass
class ModelMeta:
    """What the exported model says about itself."""

    task: str
    names: dict[int, str]
    imgsz: tuple[int, int]
    stride: int = 32
    args: dict[str, Any] = field(default_factory=dict)
    end2end: bool = False  # NMS-free head or NMS in the graph: [1, max_det, 6] out, not [1, 4+nc, N]
    kpt_shape: tuple[int, int] | None = None  # pose: (keypoints, 2 or 3 values each)
    kpt_names: list[str] | None = None

    @property
    def extra(self) -> int:
        """Head channels after the class scores: keypoints (pose), the angle (obb), mask coefficients
        (segment), none (detect)."""
        if self.task == "pose" and self.kpt_shape:
            return self.kpt_shape[0] * self.kpt_shape[1]
        if self.task == "segment":
            return MASK_COEFFS
        return 1 if self.task == "obb" else 0


def _literal(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def parse_meta(raw: dict[str, Any]) -> ModelMeta:
    """Ultralytics' export metadata (ONNX strings or metadata.yaml values) as a ModelMeta."""
    names = _literal(raw.get("names"))
    if not isinstance(names, dict) or not names:
        raise ModelError("the exported model has no class names in its metadata (not an Ultralytics export?)")
    imgsz = _literal(raw.get("imgsz", 640))
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    args = _literal(raw.get("args", {}))
    kpt_shape = _literal(raw.get("kpt_shape"))
    kpt_names = _literal(raw.get("kpt_names"))
    if isinstance(kpt_names, dict):  # {class: [names]}, as the predictor reads them
        kpt_names = next(iter(kpt_names.values()), None)
    return ModelMeta(
        task=str(raw.get("task", "detect")),
        names={int(k): str(v) for k, v in names.items()},
        imgsz=(int(imgsz[0]), int(imgsz[1])),
        stride=int(_literal(raw.get("stride", 32))),
        args=args if isinstance(args, dict) else {},
        end2end=bool(_literal(raw.get("end2end", False))) or bool(isinstance(args, dict) and args.get("nms")),
        kpt_shape=(int(kpt_shape[0]), int(kpt_shape[1])) if kpt_shape else None,
        kpt_names=[str(n) for n in kpt_names] if isinstance(kpt_names, list | tuple) else None,
    )


def openvino_meta(ir: Path) -> ModelMeta:
    import yaml

    xml = ir if ir.suffix == ".xml" else next(ir.glob("*.xml"))
    meta = xml.parent / "metadata.yaml"
    if not meta.is_file():
        raise ModelError(f"{ir}: no metadata.yaml beside the IR (names, task, imgsz)")
    return parse_meta(yaml.safe_load(meta.read_text()) or {})


# ---------------------------------------------------------------------------- numpy pre/post


def letterbox(
    image: np.ndarray, new_shape: tuple[int, int], auto: bool = False, stride: int = 32
) -> np.ndarray:
    """Ultralytics' LetterBox(new_shape, auto, scaleup=True, center=True, padding_value=114)."""
    import cv2

    h0, w0 = image.shape[:2]
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    new_unpad = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw, dh = dw / 2, dh / 2
    if (w0, h0) != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD,) * 3)


def classify_crop(image_bgr: np.ndarray, size: int) -> np.ndarray:
    """Ultralytics' classify_transforms on the host, with PIL as torchvision uses it: the shortest
    edge resized to ``size`` (bilinear, the long edge truncated), then the centre ``size`` crop."""
    from PIL import Image

    im = Image.fromarray(image_bgr)  # channel order does not matter to a resize
    w, h = im.size
    if min(w, h) != size:
        short, long = min(w, h), max(w, h)
        new = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
        im = im.resize(new, Image.BILINEAR)
        w, h = new
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return np.asarray(im.crop((left, top, left + size, top + size)))


def to_input(letterboxed_bgr: np.ndarray) -> np.ndarray:
    """HWC BGR uint8 -> 1x3xHxW RGB float32 in [0, 1], as Ultralytics' preprocess."""
    chw = np.ascontiguousarray(letterboxed_bgr[..., ::-1].transpose(2, 0, 1))
    return (chw.astype(np.float32) / np.float32(255.0))[None]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Greedy NMS (torchvision's: a box is dropped when its IoU with a kept one is > ``iou``), the
    kept indices by descending score, at most ``max_det``."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(overlap > iou)]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes(boxes: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """xyxy boxes on the letterboxed input -> pixels of the original image, clipped to it."""
    gain_x, gain_y, pad_x, pad_y = _gain_pad(input_hw, orig_hw)
    b = boxes.copy()
    b[:, [0, 2]] = ((b[:, [0, 2]] - pad_x) / gain_x).clip(0, orig_hw[1])
    b[:, [1, 3]] = ((b[:, [1, 3]] - pad_y) / gain_y).clip(0, orig_hw[0])
    return b


def _gain_pad(input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> tuple[float, float, int, int]:
    """Ultralytics' scale_boxes/scale_coords arithmetic: (gain_x, gain_y, pad_x, pad_y)."""
    gain = min(input_hw[0] / orig_hw[0], input_hw[1] / orig_hw[1])
    new_h, new_w = (max(round(x * gain), 1) for x in orig_hw)
    pad_x = round((input_hw[1] - new_w) / 2 - 0.1)
    pad_y = round((input_hw[0] - new_h) / 2 - 0.1)
    return new_w / orig_hw[1], new_h / orig_hw[0], pad_x, pad_y


def scale_points(pts: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """(..., 2+) points (keypoints: x, y[, conf]) on the input -> original pixels, clipped (scale_coords)."""
    gx, gy, px, py = _gain_pad(input_hw, orig_hw)
    p = pts.copy()
    p[..., 0] = ((p[..., 0] - px) / gx).clip(0, orig_hw[1])
    p[..., 1] = ((p[..., 1] - py) / gy).clip(0, orig_hw[0])
    return p


def scale_rboxes(xywhr: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """Rotated boxes on the input -> original pixels, not clipped (scale_boxes with xywh=True)."""
    gx, gy, px, py = _gain_pad(input_hw, orig_hw)
    b = xywhr.copy()
    b[:, 0] = (b[:, 0] - px) / gx
    b[:, 1] = (b[:, 1] - py) / gy
    b[:, 2] /= gx
    b[:, 3] /= gy
    return b


def probiou(a: np.ndarray, b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Ultralytics' batch_probiou (Gaussian Bhattacharyya overlap) of xywhr boxes: (N, M)."""

    def cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w2, h2, r = x[:, 2:3] ** 2 / 12, x[:, 3:4] ** 2 / 12, x[:, 4:5]
        cos, sin = np.cos(r), np.sin(r)
        return w2 * cos**2 + h2 * sin**2, w2 * sin**2 + h2 * cos**2, (w2 - h2) * cos * sin

    x1, y1 = a[:, 0:1], a[:, 1:2]
    x2, y2 = b[:, 0][None], b[:, 1][None]
    a1, b1, c1 = cov(a)
    a2, b2, c2 = (v[:, 0][None] for v in cov(b))
    denom = (a1 + a2) * (b1 + b2) - (c1 + c2) ** 2 + eps
    t1 = ((a1 + a2) * (y1 - y2) ** 2 + (b1 + b2) * (x1 - x2) ** 2) / denom * 0.25
    t2 = ((c1 + c2) * (x2 - x1) * (y1 - y2)) / denom * 0.5
    det = np.clip(a1 * b1 - c1**2, 0, None) * np.clip(a2 * b2 - c2**2, 0, None)
    t3 = np.log(((a1 + a2) * (b1 + b2) - (c1 + c2) ** 2) / (4 * np.sqrt(det) + eps) + eps) * 0.5
    bd = np.clip(t1 + t2 + t3, eps, 100.0)
    return 1 - np.sqrt(1.0 - np.exp(-bd) + eps)


def nms_rotated(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Ultralytics' rotated NMS (fast NMS: a box is dropped when any higher-scored box, kept or not,
    overlaps it by probiou > ``iou``); kept indices by descending score."""
    order = np.argsort(-scores, kind="stable")
    ious = np.triu(probiou(boxes[order], boxes[order]), k=1)
    return order[(ious > iou).sum(0) <= 0][:max_det]


def instance_masks(
    protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int]
) -> np.ndarray:
    """Ultralytics' process_mask(upsample=True): coefficients x prototypes, bilinear upsample to the
    input (align_corners False, as cv2's), > 0, zeroed outside each box: (n, h, w) uint8."""
    import cv2

    c, mh, mw = protos.shape
    h, w = input_hw
    if not len(coeffs):
        return np.zeros((0, h, w), np.uint8)
    low = (coeffs.astype(np.float32) @ protos.reshape(c, -1).astype(np.float32)).reshape(-1, mh, mw)
    masks = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in low]) > 0
    cols, rows = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    for m, (x1, y1, x2, y2) in zip(masks, boxes, strict=True):
        m &= ((cols >= x1) & (cols < x2))[None, :] & ((rows >= y1) & (rows < y2))[:, None]
    return masks.astype(np.uint8)


def mask_outlines(masks: np.ndarray) -> list[np.ndarray]:
    """Ultralytics' masks2segments(strategy="all"): each mask's external contours, several merged
    into one outline at their closest points (its merge_multi_segment), float32 (k, 2)."""
    import cv2

    out = []
    for m in np.ascontiguousarray(masks):
        found = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        if not found:
            out.append(np.zeros((0, 2), np.float32))
        elif len(found) == 1:
            out.append(found[0].reshape(-1, 2).astype(np.float32))
        else:
            merged = _merge_segments([c.reshape(-1, 2) for c in found])
            out.append(np.concatenate(merged).astype(np.float32))
    return out


def _merge_segments(segments: list[np.ndarray]) -> list[np.ndarray]:
    """Ultralytics' data.converter.merge_multi_segment, in its order (segments joined by a thin
    line between their closest points, walked forward then back)."""
    segs = [np.asarray(s).reshape(-1, 2) for s in segments]
    idx_list: list[list[int]] = [[] for _ in segs]
    for i in range(1, len(segs)):
        d = ((segs[i - 1][:, None, :] - segs[i][None, :, :]) ** 2).sum(-1)
        i1, i2 = np.unravel_index(np.argmin(d, axis=None), d.shape)
        idx_list[i - 1].append(int(i1))
        idx_list[i].append(int(i2))
    out: list[np.ndarray] = []
    last = len(idx_list) - 1
    for i, idx in enumerate(idx_list):
        if len(idx) == 2 and idx[0] > idx[1]:
            idx = [len(segs[i]) - 1 - x for x in idx]
            segs[i] = segs[i][::-1, :]
        segs[i] = np.roll(segs[i], -idx[0], axis=0)
        segs[i] = np.concatenate([segs[i], segs[i][:1]])
        if i in {0, last}:
            out.append(segs[i])
        else:
            out.append(segs[i][0 : idx[1] - idx[0] + 1])
    for i in range(last, -1, -1):
        if i not in {0, last}:
            idx = idx_list[i]
            out.append(segs[i][abs(idx[1] - idx[0]) :])
    return out


@dataclass
class LeanBoxes:
    xyxy: np.ndarray  # (n, 4) float32, original image pixels
    cls: np.ndarray  # (n,) int
    conf: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.cls)


@dataclass
class LeanRotated:
    xywhr: np.ndarray  # (n, 5) float32: centre, size (original pixels), rotation in radians
    cls: np.ndarray
    conf: np.ndarray

    def __len__(self) -> int:
        return len(self.cls)


@dataclass
class LeanKeypoints:
    data: np.ndarray  # (n, k, 2|3) float32: x, y in original pixels[, visibility confidence]


@dataclass
class LeanMasks:
    xy: list[np.ndarray]  # per kept box: its mask outline (k, 2) in original pixels


@dataclass
class LeanProbs:
    data: np.ndarray  # (nc,) the classifier's softmax


@dataclass
class LeanResult:
    """Shaped like the parts of an Ultralytics Results that ``result_to_regions`` reads."""

    boxes: LeanBoxes | None
    feats: np.ndarray  # (n, nc): each kept box's class-probability vector
    max_candidate: float | None
    obb: LeanRotated | None = None
    keypoints: LeanKeypoints | None = None
    probs: LeanProbs | None = None
    masks: LeanMasks | None = None


def decode(
    raw: np.ndarray,
    meta: ModelMeta,
    input_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    conf: float,
    iou: float,
    max_det: int,
    protos: np.ndarray | None = None,
) -> LeanResult:
    """One image's YOLOv8-style head output (4+nc+extra, N) -> kept detections in original pixels:
    boxes (detect), boxes and keypoints (pose), rotated boxes (obb), boxes and mask outlines
    (segment, with its ``protos`` (32, h/4, w/4))."""
    raw = np.asarray(raw, dtype=np.float32)
    nc = len(meta.names)
    scores = raw[4 : 4 + nc]  # (nc, N)
    best = scores.max(0) if scores.size else np.zeros(0, np.float32)
    max_candidate = float(best.max()) if best.size else None
    idx = np.nonzero(best > conf)[0]
    cls = scores[:, idx].argmax(0) if idx.size else np.zeros(0, np.int64)
    confs = best[idx]
    if idx.size > MAX_NMS:
        top = np.argsort(-confs, kind="stable")[:MAX_NMS]
        idx, cls, confs = idx[top], cls[top], confs[top]
    xywh = raw[:4, idx].T
    offset = (cls.astype(np.float32) * MAX_WH)[:, None]
    if meta.task == "obb":
        rboxes = np.concatenate([xywh, raw[4 + nc : 5 + nc, idx].T], 1)
        shifted = np.concatenate([rboxes[:, :2] + offset, rboxes[:, 2:]], 1)
        keep = nms_rotated(shifted, confs, iou, max_det) if idx.size else np.zeros(0, np.int64)
        rotated = LeanRotated(
            scale_rboxes(rboxes[keep], input_hw, orig_hw).astype(np.float32),
            cls[keep].astype(np.int64),
            confs[keep].astype(np.float32),
        )
        return LeanResult(None, scores[:, idx[keep]].T.astype(np.float32), max_candidate, obb=rotated)
    xyxy = np.empty_like(xywh)
    half = xywh[:, 2:] / 2
    xyxy[:, :2] = xywh[:, :2] - half
    xyxy[:, 2:] = xywh[:, :2] + half
    keep = nms(xyxy + offset, confs, iou, max_det) if idx.size else np.zeros(0, np.int64)
    result = LeanResult(
        boxes=LeanBoxes(
            xyxy=scale_boxes(xyxy[keep], input_hw, orig_hw).astype(np.float32),
            cls=cls[keep].astype(np.int64),
            conf=confs[keep].astype(np.float32),
        ),
        feats=scores[:, idx[keep]].T.astype(np.float32),
        max_candidate=max_candidate,
    )
    if meta.task == "segment" and protos is not None:
        coeffs = raw[4 + nc : 4 + nc + MASK_COEFFS, idx[keep]].T
        masks = instance_masks(protos, coeffs, xyxy[keep], input_hw)
        result.masks = LeanMasks([scale_points(seg, input_hw, orig_hw) for seg in mask_outlines(masks)])
    if meta.task == "pose" and meta.kpt_shape:
        kpts = raw[4 + nc : 4 + nc + meta.extra, idx[keep]].T.reshape(len(keep), *meta.kpt_shape)
        result.keypoints = LeanKeypoints(scale_points(kpts, input_hw, orig_hw).astype(np.float32))
    return result


# ---------------------------------------------------------------------------- the runtime


class _OnnxModel:
    """One ONNX Runtime session shared by every stream (Run is thread-safe), intra-op threads =
    cores // streams and no spin-waiting, as the current ONNX path tunes its sessions."""

    def __init__(self, path: Path, streams: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.intra_op_num_threads = max(1, cpu_cores() // streams)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{path} is not a loadable ONNX model: {type(e).__name__}: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.half = "float16" in inp.type
        self.dynamic = any(not isinstance(d, int) for d in inp.shape[2:])
        self.input_hw = None if self.dynamic else (int(inp.shape[2]), int(inp.shape[3]))
        self.meta = parse_meta(dict(self.session.get_modelmeta().custom_metadata_map))
        out = self.session.get_outputs()[0].shape
        self.channels = out[1] if len(out) == 3 and isinstance(out[1], int) else None
        self.streams = streams

    @contextmanager
    def stream(self) -> Iterator[Any]:
        yield self

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output: the head's, and the mask prototypes of a segment model."""
        if self.half:
            x = x.astype(np.float16)
        return [np.asarray(o) for o in self.session.run(None, {self.input_name: x})]


class _OpenVinoModel:
    """The IR compiled once (THROUGHPUT, NUM_STREAMS = streams, pinning off, the precision its
    labelloop.json names: ``runtime.compile_openvino``), one infer request per stream."""

    def __init__(self, ir: Path, streams: int) -> None:
        self.meta = openvino_meta(ir)
        self.compiled = compile_openvino(ir, streams)
        shape = self.compiled.input(0).get_partial_shape()
        self.dynamic = shape.is_dynamic
        self.input_hw = None if self.dynamic else (int(shape[2].get_length()), int(shape[3].get_length()))
        self.streams = streams
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(streams):
            self._requests.put(self.compiled.create_infer_request())
        self._out = self.compiled.output(0)
        out = self._out.get_partial_shape()
        static = len(out) == 3 and out[1].is_static
        self.channels = int(out[1].get_length()) if static else None

    @contextmanager
    def stream(self) -> Iterator[Any]:
        req = self._requests.get()
        try:
            yield lambda x: [v.copy() for v in req.infer({0: x}).values()]
        finally:
            self._requests.put(req)


class LeanRuntime:
    """Plays the part of ``runtime.Runtime`` for the predictor: ``name``, ``device``, ``batch``,
    ``streams``, ``first``, ``onnx_path`` and ``predict``."""

    name = "lean"
    device = "cpu"

    def __init__(self, weights: Path, settings: PredictSettings) -> None:
        streams = settings.streams or max(1, min(4, cpu_cores()))
        kind = artifact_runtime(weights)
        if kind == "onnx":
            self.model: Any = _OnnxModel(weights, streams)
            self.onnx_path: Path | None = weights
        elif kind == "openvino":
            self.model = _OpenVinoModel(weights, streams)
            self.onnx_path = None
        else:
            raise ModelError(f"the lean runtime serves .onnx files and OpenVINO IR dirs, not {weights.name}")
        self.meta: ModelMeta = self.model.meta
        self.streams, self.batch, self.first = streams, 1, self.model
        self.task, self.names = self.meta.task, self.meta.names
        self.imgsz: int = settings.imgsz or self.meta.imgsz[0]

    def predict(
        self, images_bgr: list[np.ndarray], predictor_cls: Any = None, **kwargs: Any
    ) -> list[LeanResult]:
        """One result per decoded BGR image, each its own forward (batch 1 on CPU)."""
        imgsz = kwargs.get("imgsz") or self.imgsz
        conf, iou, max_det = kwargs.get("conf", 0.25), kwargs.get("iou", 0.7), kwargs.get("max_det", 300)
        fixed = self.model.input_hw
        target = fixed or (imgsz, imgsz)
        out = []
        with self.model.stream() as forward:
            for im in images_bgr:
                if self.task == "classify":
                    p = np.asarray(forward(to_input(classify_crop(im, target[0])))[0], np.float32)[0]
                    out.append(LeanResult(None, p[None], float(p.max()), probs=LeanProbs(p)))
                    continue
                lb = letterbox(im, target, auto=fixed is None, stride=self.meta.stride)
                outs = forward(to_input(lb))
                protos = outs[1][0] if self.task == "segment" and len(outs) > 1 else None
                out.append(
                    decode(outs[0][0], self.meta, lb.shape[:2], im.shape[:2], conf, iou, max_det, protos)
                )
        return out


def gpu_present() -> bool:
    """Whether this host has a GPU driver loaded, asked without torch (NVIDIA or ROCm device nodes)."""
    return any(Path(d).exists() for d in ("/dev/nvidiactl", "/dev/kfd"))


def wanted(settings: PredictSettings, weights: Path) -> bool:
    """``lean`` asks for it; ``auto`` picks it for an exported .onnx / OpenVINO IR on the CPU
    (device ``cpu``, or ``auto`` on a host without a GPU; with one, the current runtime decides)."""
    if settings.runtime == "lean":
        return True
    if settings.runtime != "auto" or artifact_runtime(weights) is None:
        return False
    return settings.device == "cpu" or (settings.device == "auto" and not gpu_present())


def open_lean(weights: Path, settings: PredictSettings) -> LeanRuntime | None:
    """The lean runtime for ``weights`` when it can serve them, else None (one log line says why
    and the caller serves them with the current runtime)."""
    if artifact_runtime(weights) is None:
        log.info(
            "runtime lean serves exported .onnx / OpenVINO models; %s is served by the torch runtime "
            "(make one with `labelloop export --format onnx`)",
            weights.name,
        )
        return None
    rt = LeanRuntime(weights, settings)
    if rt.task not in LEAN_TASKS:
        log.info(
            "runtime lean serves %s models only; %s is a %s model: served by the current runtime",
            "/".join(LEAN_TASKS),
            weights.name,
            rt.task,
        )
        return None
    channels = getattr(rt.model, "channels", None)
    if rt.meta.end2end or (channels is not None and channels != 4 + len(rt.names) + rt.meta.extra):
        log.info(
            "runtime lean decodes the YOLOv8-style head [1, 4+nc+extra, N]; %s has an end-to-end or "
            "other head: served by the current runtime",
            weights.name,
        )
        return None
    return rt
