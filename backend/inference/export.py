"""``labelloop export``: a faster artifact of the same weights (ONNX, INT8 ONNX, OpenVINO fp32 / bf16
/ INT8) and the evidence that it still predicts what the fp32 model does.

Recipes (measured on a real YOLOv8 checkpoint, issue 14): ONNX INT8 is ONNX Runtime static QDQ
quantization with uint8 activations and int8 per-channel weights, the head's decode (DFL, box
arithmetic, sigmoid) kept float: quantizing it too leaves no detection, and int8 activations run
slower than fp32 here. OpenVINO INT8 is Ultralytics' NNCF export. ``openvino`` and
``openvino-bf16`` are one fp32 IR compiled with a different precision hint (``labelloop.json`` in
the IR dir says which; this CPU defaults to bf16, so fp32 must be asked for).

The report compares the artifact, run through the serving predictor, with the PyTorch fp32 model on
held-out images (share of its detections recovered at IoU >= 0.5 with the same class, extra
detections, mean score difference), and, with a dataset, mAP on its val split for both.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.backend.inference.calibration import (
    CalibrationSet,
    calibration_set,
    letterbox,
    val_seen_in_training,
)
from labelloop.backend.inference.calibration import split_images as _split_images
from labelloop.backend.inference.runtime import OPENVINO_META
from labelloop.backend.inference.weights import model_version_of
from labelloop.backend.inference.yolo_env import ensure_yolo_env, without_ultralytics_mlflow
from labelloop.errors import ConfigError, ModelError
from labelloop.geometry import match_regions
from labelloop.settings import Settings
from labelloop.types import ImageItem

log = logging.getLogger(__name__)

FORMATS = ("onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
NEEDS_CALIBRATION = frozenset({"onnx-int8", "openvino-int8"})
PRECISION = {"onnx": "fp32", "onnx-int8": "int8", "openvino": "fp32", "openvino-bf16": "bf16",
             "openvino-int8": "int8"}  # fmt: skip
MAX_HOLDOUT = 64


@dataclass(frozen=True)
class Agreement:
    """How an artifact's detections compare with the fp32 model's on the same images."""

    images: int
    reference_detections: int
    detections: int
    recovered: float  # share of reference detections matched (IoU >= 0.5, same class); 1.0 if none
    extra: int  # artifact detections matching none of the reference's
    mean_score_diff: float  # mean (artifact - reference) score over matched pairs


@dataclass
class ExportReport:
    format: str
    artifact: str
    imgsz: int
    weights: str
    model_version: str
    seconds: float
    agreement: Agreement
    calibration: dict[str, Any] | None = None
    val: dict[str, float] | None = None  # mAP50 / mAP50-95 of artifact and fp32 on the val split
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(reference: list[ImageItem], candidate: list[ImageItem], iou_min: float = 0.5) -> Agreement:
    """Detections of ``candidate`` against ``reference``, image by image (same order)."""
    n_ref = n_cand = matched = 0
    diffs: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        pairs = match_regions(ref.regions, cand.regions, iou_min=iou_min, same_label=True)
        n_ref, n_cand, matched = n_ref + len(ref.regions), n_cand + len(cand.regions), matched + len(pairs)
        diffs += [(cand.regions[j].score or 0.0) - (ref.regions[i].score or 0.0) for i, j, _ in pairs]
    return Agreement(
        images=len(reference),
        reference_detections=n_ref,
        detections=n_cand,
        recovered=matched / n_ref if n_ref else 1.0,
        extra=n_cand - matched,
        mean_score_diff=float(np.mean(diffs)) if diffs else 0.0,
    )


def artifact_name(weights: Path, fmt: str, imgsz: int) -> str:
    base = f"{weights.stem}-{imgsz}"
    return {
        "onnx": f"{base}.onnx",
        "onnx-int8": f"{base}-int8.onnx",
        "openvino": f"{base}_openvino_model",  # Ultralytics knows an IR dir by this suffix
        "openvino-bf16": f"{base}-bf16_openvino_model",
        "openvino-int8": f"{base}-int8_openvino_model",
    }[fmt]


def export_model(
    settings: Settings,
    weights: Path,
    fmt: str,
    out_dir: Path,
    *,
    imgsz: int | None = None,
    calibration: str | None = None,
    holdout: Path | None = None,
    conf: float | None = None,
    calibration_images: int = 300,
    log_to_registry: bool = True,
    build: Callable[..., Path] | None = None,
) -> ExportReport:
    """Write ``weights`` as ``fmt`` under ``out_dir`` and validate it (see the module doc);
    ``build`` makes the artifact (default ``build_artifact``, same arguments)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt in NEEDS_CALIBRATION and not calibration:
        raise ConfigError(f"--format {fmt} needs --calibration DATASET_OR_VERSION (its train split)")
    if not weights.is_file() or weights.suffix != ".pt":
        raise ModelError(f"--model {weights}: export starts from PyTorch weights (.pt)")
    ensure_yolo_env(settings.cache_dir)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="labelloop-export-") as tmp:
        work = Path(tmp)
        calib = calibration_set(calibration, settings, work, calibration_images) if calibration else None
        held = _holdout_images(calib, holdout)
        from ultralytics import YOLO

        ref_model = YOLO(str(weights))
        names = {int(k): str(v) for k, v in ref_model.names.items()}
        train_args = (getattr(ref_model, "ckpt", None) or {}).get("train_args") or {}
        size = imgsz or int(train_args.get("imgsz") or 640)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / artifact_name(weights, fmt, size)
        built = (build or build_artifact)(weights, fmt, work, size, calib, names)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(built), target)
        version = f"{model_version_of(weights)}-{fmt}"
        Path(f"{target}.version").write_text(version)
        if target.is_dir():
            meta = {"format": fmt, "precision": PRECISION[fmt], "imgsz": size, "source": str(weights)}
            (target / OPENVINO_META).write_text(json.dumps(meta))
        report = ExportReport(
            format=fmt,
            artifact=str(target),
            imgsz=size,
            weights=str(weights),
            model_version=version,
            seconds=0.0,
            agreement=validate(settings, weights, target, held, size, conf),
        )
        if calib is not None:
            report.calibration = {
                "source": calib.source,
                "version": calib.version,
                "images": len(calib.train) if fmt in NEEDS_CALIBRATION else 0,
                "split": "train",
            }
            if calib.version:
                report.calibration.update(_training_overlap(settings, weights, calib.version))
            if calib.val:
                report.val = val_metrics(weights, target, calib.data_yaml, size, work)
                report.notes.append(
                    f"mAP on the val split of {calib.source} ({len(calib.val)} images, never calibrated on)"
                )
    report.seconds = round(time.monotonic() - t0, 2)
    if log_to_registry:
        from labelloop.backend.registry.exports import store_export  # lazy: the registry sits above

        report.mlflow_run_id = store_export(settings, weights, target, report.to_dict())
    return report


def _training_overlap(settings: Settings, weights: Path, val_version: str) -> dict[str, Any]:
    """For the int8 gate: the dataset version registry weights were trained on and how many of
    ``val_version``'s val items they learnt from (``precision.verdict`` refuses when any)."""
    from labelloop.backend.registry.exports import trained_on  # lazy: the registry sits above

    learnt = trained_on(settings, weights)
    if not learnt:
        return {}
    seen = val_seen_in_training(settings, val_version, learnt)
    return {"model_trained_on": learnt, "val_seen_in_training": seen}


def _holdout_images(calib: CalibrationSet | None, holdout: Path | None) -> list[Path]:
    if holdout is not None:
        if not holdout.is_dir():
            raise ConfigError(f"--holdout {holdout} is not a directory of images")
        from labelloop.backend.inference.calibration import IMAGE_EXTS

        images = sorted(p for p in holdout.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    elif calib is not None:
        images = calib.val or _split_images(calib.data_yaml, "test")
    else:
        raise ConfigError("the validation report needs held-out images: give --calibration or --holdout DIR")
    if not images:
        raise ConfigError("no held-out images to validate on (an empty val split or --holdout dir)")
    return images[:MAX_HOLDOUT]


def build_artifact(
    weights: Path, fmt: str, work: Path, imgsz: int, calib: CalibrationSet | None, names: dict[int, str]
) -> Path:
    """The artifact, written under ``work`` (Ultralytics exports beside the weights, so from a copy)."""
    from ultralytics import YOLO

    without_ultralytics_mlflow()
    src = work / "src" / "model.pt"
    src.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, src)
    model = YOLO(str(src))
    try:
        if fmt in ("onnx", "onnx-int8"):
            fp32 = Path(model.export(format="onnx", imgsz=imgsz, dynamic=False, simplify=True, device="cpu"))
            if fmt == "onnx":
                return fp32
            assert calib is not None
            return quantize_onnx(fp32, calib, imgsz, work / "model-int8.onnx")
        int8 = fmt == "openvino-int8"
        data = None
        if int8:
            from labelloop.backend.inference.calibration import write_calibration_yaml

            assert calib is not None
            data = str(write_calibration_yaml(calib, names, work / "calib"))
        args = {"imgsz": imgsz, "int8": int8, "data": data, "split": "train", "fraction": 1.0, "batch": 1}
        return Path(model.export(format="openvino", dynamic=False, half=False, device="cpu", **args))
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"exporting {weights} as {fmt} failed: {type(e).__name__}: {e}") from e


def head_decode_nodes(onnx_path: Path) -> list[str]:
    """Nodes of the last module (the head) outside its conv branches (cv2/cv3/cv4: box, class,
    extra outputs): DFL, anchors arithmetic, sigmoid, concat. They stay float."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    prefixes = {n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")}
    last = max(prefixes, key=lambda p: int(p.split(".")[1]) if p.split(".")[1].isdigit() else -1)
    head = f"/{last}/"
    return [
        n.name
        for n in graph.node
        if n.name.startswith(head) and not n.name[len(head) :].startswith(("cv2", "cv3", "cv4"))
    ]


def quantize_onnx(
    fp32: Path, calib: CalibrationSet, imgsz: int, target: Path, keep_float: list[str] | None = None
) -> Path:
    """ONNX Runtime static quantization: uint8 activations, int8 per-channel weights, MinMax over
    the calibration images, the nodes ``keep_float`` (default: the head's decode) kept float; the
    model's metadata carried over."""
    import cv2
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(fp32)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._paths = iter(calib.train)

        def get_next(self) -> dict[str, np.ndarray] | None:
            for p in self._paths:
                img = cv2.imread(str(p))
                if img is not None:
                    return {input_name: letterbox(img, imgsz)}
            return None

    quantize_static(
        str(fp32),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=head_decode_nodes(fp32) if keep_float is None else keep_float,
    )
    source, quantized = onnx.load(str(fp32)), onnx.load(str(target))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)  # names, stride, task: Ultralytics reads them
    onnx.save(quantized, str(target))
    return target


def predict_items(settings: Settings, weights: Path, images: list[Path], imgsz: int, conf: float | None,
                  runtime: str = "auto") -> list[ImageItem]:  # fmt: skip
    """``weights`` run through the serving predictor (its runtime, streams, precision) on ``images``."""
    from PIL import Image

    from labelloop.backend.inference.predictor import Predictor

    changes: dict[str, Any] = {"runtime": runtime, "device": "cpu", "imgsz": imgsz, "model": weights}
    if conf is not None:
        changes["conf"] = conf
    predictor = Predictor(weights, settings.with_(**changes))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    return predictor.predict_arrays(arrays, [str(p) for p in images])


def validate(
    settings: Settings, weights: Path, artifact: Path, images: list[Path], imgsz: int, conf: float | None
) -> Agreement:
    """The artifact's detections against PyTorch fp32's on ``images``."""
    reference = predict_items(settings, weights, images, imgsz, conf, runtime="torch")
    return agreement(reference, predict_items(settings, artifact, images, imgsz, conf))


def val_metrics(weights: Path, artifact: Path, data_yaml: Path, imgsz: int, work: Path) -> dict[str, float]:
    """mAP50 / mAP50-95 on the val split, the artifact's and fp32's (Ultralytics' validator)."""
    from labelloop.backend.training.gate import evaluate

    new = evaluate(artifact, data_yaml, imgsz=imgsz, workdir=work)
    old = evaluate(weights, data_yaml, imgsz=imgsz, workdir=work)
    return {
        "map50": round(new.map50, 4),
        "map50_95": round(new.map50_95, 4),
        "fp32_map50": round(old.map50, 4),
        "fp32_map50_95": round(old.map50_95, 4),
        "map50_95_drop": round(old.map50_95 - new.map50_95, 4),
    }
