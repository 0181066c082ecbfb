"""The predictor: an Ultralytics model (any task) turned into canonical ImageItems with scores.

Orchestration only: the model and its runtime come from ``runtime``, the per-class vectors from
``class_probs``, the conversion of Ultralytics results into regions from
``labelloop.connectors.formats.ultralytics``, and the scores from ``uncertainty``. Outputs of the
ONNX and PyTorch runtimes match within the tolerance the tests state.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.backend.inference import lean as lean_runtime
from labelloop.backend.inference import uncertainty as unc
from labelloop.backend.inference.class_probs import probs_predictor
from labelloop.backend.inference.images import Fetched
from labelloop.backend.inference.precision import Choice
from labelloop.backend.inference.runtime import Runtime
from labelloop.backend.inference.weights import model_version_of, resolve_weights
from labelloop.backend.inference.yolo_env import ensure_yolo_env
from labelloop.connectors.formats import ultralytics as fmt
from labelloop.errors import ErrorKind, ModelError
from labelloop.settings import Settings
from labelloop.types import ImageItem, Provenance, Source

log = logging.getLogger(__name__)
TASKS = fmt.TASKS


@dataclass
class Outcome:
    """One input image's prediction, or why there is none."""

    fetched: Fetched
    item: ImageItem | None = None

    @property
    def error(self) -> str | None:
        return self.fetched.error

    @property
    def kind(self) -> ErrorKind | None:
        return self.fetched.kind


class Predictor:
    """Loads one model and predicts whole batches; safe to call from several threads."""

    def __init__(self, weights: Path, settings: Settings) -> None:
        ensure_yolo_env(settings.cache_dir)
        self.settings = settings
        self.weights = Path(weights)
        self.model_version = model_version_of(self.weights)
        self.choice: Choice | None = None  # set by who chose these weights among exported artifacts
        predict_settings = settings.predict
        if lean_runtime.wanted(predict_settings, self.weights):
            lean = lean_runtime.open_lean(self.weights, predict_settings)
            if lean is not None:
                self._serve_lean(lean)
                return
            predict_settings = predict_settings.model_copy(update={"runtime": "auto"})
        from ultralytics import YOLO  # lazy: importing Ultralytics costs seconds, /setup must stay cheap

        try:
            torch_model = YOLO(str(self.weights))
            task = torch_model.task
            names = dict(torch_model.names)
        except Exception as e:
            raise ModelError(
                f"{self.weights} is not a loadable Ultralytics YOLO model: {type(e).__name__}: {e}"
            ) from e
        if task not in TASKS:
            raise ModelError(f"{self.weights}: unsupported task {task!r}; supported: {', '.join(TASKS)}")
        self.task: str = task
        self.names: dict[int, str] = {int(k): str(v) for k, v in names.items()}
        self.kpt_names = _keypoint_names(torch_model)
        self.kpt_shape = _keypoint_shape(torch_model) if task == "pose" else None
        train_args = (getattr(torch_model, "ckpt", None) or {}).get("train_args") or {}
        self.imgsz: int = settings.predict.imgsz or int(train_args.get("imgsz") or 640)
        self.engine: Any = Runtime.open(
            self.weights, torch_model, self.imgsz, predict_settings, settings.cache_dir
        )
        # what callers and logs read of the runtime
        self.runtime, self.device, self.onnx_path = (
            self.engine.name,
            self.engine.device,
            self.engine.onnx_path,
        )
        self.batch, self.streams, self.model = self.engine.batch, self.engine.streams, self.engine.first
        self._predictor_cls = probs_predictor(task)

    def _serve_lean(self, lean: Any) -> None:
        """Serve through ``lean.LeanRuntime``: no torch, no Ultralytics (detect, pose, obb)."""
        self.task, self.names = lean.task, lean.names
        self.kpt_names, self.kpt_shape = lean.meta.kpt_names, lean.meta.kpt_shape
        self.imgsz = lean.imgsz
        self.engine = lean
        self.runtime, self.device, self.onnx_path = lean.name, lean.device, lean.onnx_path
        self.batch, self.streams, self.model = lean.batch, lean.streams, lean.first
        self._predictor_cls = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Predictor:
        return cls(resolve_weights(settings), settings)

    # ------------------------------------------------------------------ predicting

    def predict_arrays(self, images: list[np.ndarray], uris: list[str] | None = None) -> list[ImageItem]:
        """Predict decoded RGB images; one ImageItem each, in order."""
        uris = uris or [f"array:{i}" for i in range(len(images))]
        fetched = [Fetched(u, im) for u, im in zip(uris, images, strict=True)]
        outcomes = list(self.predict_fetched(fetched))
        failed = [o for o in outcomes if o.item is None]
        if failed:
            raise ModelError(f"prediction failed for {failed[0].fetched.uri}: {failed[0].error}")
        return [o.item for o in outcomes]  # type: ignore[misc]

    def predict_fetched(self, fetched: Iterable[Fetched]) -> Iterator[Outcome]:
        """Predict a stream of fetched images in order, ``batch`` per forward.

        Images that failed to fetch come back with their error and no item. Consuming lazily lets
        fetching and decoding of the next images overlap with this forward pass.
        """
        pending: deque[Future[list[Outcome]]] = deque()
        pool = ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="forward")
        chunk: list[Fetched] = []
        try:
            for f in fetched:
                chunk.append(f)
                if len(chunk) >= self.batch or not f.ok:
                    pending.append(pool.submit(self._run, chunk))
                    chunk = []
                while len(pending) > self.streams or (pending and pending[0].done()):
                    yield from pending.popleft().result()
            if chunk:
                pending.append(pool.submit(self._run, chunk))
            while pending:
                yield from pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=False)

    def _run(self, chunk: list[Fetched]) -> list[Outcome]:
        failed = [Outcome(f) for f in chunk if not f.ok]
        chunk = [f for f in chunk if f.ok]
        if not chunk:
            return failed
        p = self.settings.predict
        bgr = [np.ascontiguousarray(f.image[..., ::-1]) for f in chunk]  # type: ignore[index]
        try:
            results = self.engine.predict(
                bgr, self._predictor_cls, imgsz=self.imgsz, conf=p.conf, iou=p.iou, max_det=p.max_det
            )
        except Exception as e:
            log.exception("model forward failed on %d image(s)", len(chunk))
            error = f"model failed on this image: {type(e).__name__}: {e}"
            return failed + [Outcome(Fetched(f.uri, error=error, kind=ErrorKind.MODEL)) for f in chunk]
        return failed + [Outcome(f, self._to_item(f, r)) for f, r in zip(chunk, results, strict=True)]

    def _to_item(self, f: Fetched, r: Any) -> ImageItem:
        h, w = f.image.shape[:2]  # type: ignore[union-attr]
        regions = fmt.result_to_regions(
            r,
            self.task,
            self.names,
            kpt_names=self.kpt_names,
            provenance=Provenance(source=Source.PRELABEL, model_version=self.model_version),
            attributes_of=lambda vec: {"uncertainty": unc.region_uncertainty(vec)},
        )
        if self.task == "classify":
            score = regions[0].score if regions else 0.0
        else:
            score = unc.image_score(
                [rg.score for rg in regions if rg.score is not None], fmt.max_candidate(r)
            )
        return ImageItem(
            uri=f.uri,
            width=w,
            height=h,
            regions=regions,
            sha256=f.sha256,
            score=score,
            metadata={
                "uncertainty": unc.image_uncertainty([rg.attributes["uncertainty"] for rg in regions], score),
                "model_version": self.model_version,
            },
        )


def _keypoint_names(model: Any) -> list[str] | None:
    yaml = getattr(getattr(model, "model", None), "yaml", None) or {}
    names = yaml.get("kpt_names")
    if isinstance(names, dict):  # {class_index: [names]} in recent Ultralytics datasets
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if names else None


def _keypoint_shape(model: Any) -> tuple[int, int] | None:
    """(keypoints per instance, values per keypoint) of a pose model, from its yaml or its head;
    None for an exported file (its metadata is read only when it first predicts)."""
    inner = getattr(model, "model", None)
    shape = (getattr(inner, "yaml", None) or {}).get("kpt_shape")
    if shape is None and hasattr(inner, "model"):
        shape = getattr(inner.model[-1], "kpt_shape", None)
    return (int(shape[0]), int(shape[1])) if shape else None
