"""The lean CPU runtime: ONNX (fp32/INT8) and OpenVINO IR detect models served with neither torch nor
Ultralytics imported (their import alone is ~550 MB of a worker's RSS).

``predict.runtime = "lean"`` (LABELLOOP_RUNTIME=lean) asks for it; ``auto`` picks it for an exported
.onnx file or OpenVINO IR dir of a detect model on the CPU (``wanted``). It does what Ultralytics'
DetectionPredictor does, in numpy: the letterbox (LetterBox: scaleup, centred, pad 114, cv2 bilinear
resize; minimal stride padding when the model takes dynamic shapes, as Ultralytics' ``rect`` predict
does, else padded to the model's fixed size), BGR -> RGB /255 float32, one forward, the YOLOv8 detect
head decode ([1, 4+nc, N]: xywh + per-class sigmoid scores), class-aware NMS (best class per anchor,
``conf`` strict, boxes offset per class by 7680 px as Ultralytics does, greedy IoU > ``iou``
suppressed, ``max_det`` kept), boxes scaled back and clipped. The result objects carry what
``connectors.formats.ultralytics.result_to_regions`` reads (boxes.xyxy/cls/conf, ``feats`` = the
class vector of each kept box, ``max_candidate``), so the predictor builds the same ImageItems.

Class names, task, imgsz and stride come from the ONNX metadata_props Ultralytics writes, or from
an OpenVINO IR dir's ``metadata.yaml``. Detect only for now, with the YOLOv8-style head: any other
task, an end-to-end head (YOLO26/YOLOv10 or an nms=True export: [1, max_det, 6]) and .pt weights
(which need a torch export first) are served by the current runtime, said in one log line.
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

LEAN_TASKS = ("detect",)
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
    return ModelMeta(
        task=str(raw.get("task", "detect")),
        names={int(k): str(v) for k, v in names.items()},
        imgsz=(int(imgsz[0]), int(imgsz[1])),
        stride=int(_literal(raw.get("stride", 32))),
        args=args if isinstance(args, dict) else {},
        end2end=bool(_literal(raw.get("end2end", False))) or bool(isinstance(args, dict) and args.get("nms")),
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
    gain = min(input_hw[0] / orig_hw[0], input_hw[1] / orig_hw[1])
    new_h, new_w = (max(round(x * gain), 1) for x in orig_hw)
    gain_y, gain_x = new_h / orig_hw[0], new_w / orig_hw[1]
    pad_x = round((input_hw[1] - new_w) / 2 - 0.1)
    pad_y = round((input_hw[0] - new_h) / 2 - 0.1)
    b = boxes.copy()
    b[:, [0, 2]] = ((b[:, [0, 2]] - pad_x) / gain_x).clip(0, orig_hw[1])
    b[:, [1, 3]] = ((b[:, [1, 3]] - pad_y) / gain_y).clip(0, orig_hw[0])
    return b


@dataclass
class LeanBoxes:
    xyxy: np.ndarray  # (n, 4) float32, original image pixels
    cls: np.ndarray  # (n,) int
    conf: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.cls)


@dataclass
class LeanResult:
    """Shaped like the parts of an Ultralytics Results that ``result_to_regions`` reads."""

    boxes: LeanBoxes
    feats: np.ndarray  # (n, nc): each kept box's class-probability vector
    max_candidate: float | None


def decode_detect(
    raw: np.ndarray,
    nc: int,
    input_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    conf: float,
    iou: float,
    max_det: int,
) -> LeanResult:
    """One image's YOLOv8 detect head output (4+nc, N) -> kept boxes in original pixels."""
    raw = np.asarray(raw, dtype=np.float32)
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
    xyxy = np.empty_like(xywh)
    half = xywh[:, 2:] / 2
    xyxy[:, :2] = xywh[:, :2] - half
    xyxy[:, 2:] = xywh[:, :2] + half
    offset = (cls.astype(np.float32) * MAX_WH)[:, None]
    keep = nms(xyxy + offset, confs, iou, max_det) if idx.size else np.zeros(0, np.int64)
    return LeanResult(
        boxes=LeanBoxes(
            xyxy=scale_boxes(xyxy[keep], input_hw, orig_hw).astype(np.float32),
            cls=cls[keep].astype(np.int64),
            conf=confs[keep].astype(np.float32),
        ),
        feats=scores[:, idx[keep]].T.astype(np.float32),
        max_candidate=max_candidate,
    )


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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.half:
            x = x.astype(np.float16)
        return np.asarray(self.session.run(None, {self.input_name: x})[0])


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
            yield lambda x: req.infer({0: x})[self._out].copy()
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
                lb = letterbox(im, target, auto=fixed is None, stride=self.meta.stride)
                raw = forward(to_input(lb))
                out.append(
                    decode_detect(raw[0], len(self.names), lb.shape[:2], im.shape[:2], conf, iou, max_det)
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
    if rt.meta.end2end or (channels is not None and channels != 4 + len(rt.names)):
        log.info(
            "runtime lean decodes the YOLOv8-style detect head [1, 4+nc, N]; %s has an end-to-end or "
            "other head: served by the current runtime",
            weights.name,
        )
        return None
    return rt
