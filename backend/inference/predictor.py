"""The predictor: an Ultralytics model (any task) turned into canonical ImageItems with scores.

It keeps the model's per-class probability vector for every kept detection (Ultralytics' own
result only has the winning class): the NMS is asked for the indices it kept and the raw head
output is indexed with them, so uncertainty measures see the full vector.

On CPU the default runtime is ONNX Runtime, exported once from the same weights and cached
(about 1.6x faster than PyTorch here); outputs match PyTorch within the tolerance the tests state.
On a GPU, PyTorch runs ``batch`` images per forward.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.backend.inference import uncertainty as unc
from labelloop.backend.inference.images import Fetched
from labelloop.backend.inference.weights import model_version_of, resolve_weights, weights_sha256
from labelloop.backend.inference.yolo_env import ensure_yolo_env
from labelloop.errors import ModelError
from labelloop.settings import Settings
from labelloop.types import (
    Box,
    ImageItem,
    Keypoint,
    Keypoints,
    Polygon,
    Provenance,
    Region,
    RotatedBox,
    Source,
)

log = logging.getLogger(__name__)
TASKS = ("detect", "segment", "pose", "obb", "classify")


def _first_tensor(preds: Any) -> Any:
    while isinstance(preds, list | tuple):
        preds = preds[0]
    return preds


def _probs_predictor(base: type) -> type:
    """A subclass of an Ultralytics predictor that attaches class-probability vectors to results.

    Setting ``_feats`` makes Ultralytics' own postprocess run NMS with ``return_idxs`` and hand the
    kept indices to ``get_obj_feats``, which here indexes the raw (B, 4+nc+extra, N) head output.
    """

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


@dataclass
class Outcome:
    """One input image's prediction, or why there is none."""

    fetched: Fetched
    item: ImageItem | None = None

    @property
    def error(self) -> str | None:
        return self.fetched.error


class Predictor:
    """Loads one model and predicts whole batches; safe to call from several threads."""

    def __init__(self, weights: Path, settings: Settings) -> None:
        ensure_yolo_env(settings.cache_dir)
        self.settings = settings
        self.weights = Path(weights)
        self.model_version = model_version_of(self.weights)
        self.device = self._pick_device(settings.predict.device)
        self.batch = settings.predict.batch or (16 if self.device != "cpu" else 1)
        from ultralytics import YOLO

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
        self.kpt_names = self._keypoint_names(torch_model)
        train_args = (getattr(torch_model, "ckpt", None) or {}).get("train_args") or {}
        self.imgsz: int = settings.predict.imgsz or int(train_args.get("imgsz") or 640)
        self.runtime = self._pick_runtime(settings.predict.runtime)
        self.onnx_path: Path | None = None
        if self.runtime == "torch":
            replicas = [torch_model]
        else:  # several single-threaded sessions beat one session's intra-op threads on a small model
            self.onnx_path = self._onnx_path(torch_model)
            onnx_path = str(self.onnx_path)
            self.streams = settings.predict.streams or max(1, min(4, os.cpu_count() or 1))
            replicas = [YOLO(onnx_path, task=task) for _ in range(self.streams)]
        self.streams = len(replicas)
        self.model = replicas[0]
        self._replicas: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for m in replicas:
            self._replicas.put(m)
        from ultralytics.models import yolo

        base = {
            "detect": yolo.detect.DetectionPredictor,
            "segment": yolo.segment.SegmentationPredictor,
            "pose": yolo.pose.PosePredictor,
            "obb": yolo.obb.OBBPredictor,
        }.get(task)
        self._predictor_cls = _probs_predictor(base) if base else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Predictor:
        return cls(resolve_weights(settings), settings)

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _pick_device(device: str) -> str:
        if device != "auto":
            return device
        import torch

        return "0" if torch.cuda.is_available() else "cpu"

    def _pick_runtime(self, runtime: str) -> str:
        if runtime != "auto":
            return runtime
        if self.device != "cpu" or self.weights.suffix != ".pt":
            return "torch"  # GPU: PyTorch with batching; an exported file runs as what it is
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnx"

    def _onnx_path(self, torch_model: Any) -> Path:
        """Export once per (weights, imgsz) into the cache; concurrent processes wait on a lock."""
        from labelloop.backend.inference.demo_model import _file_lock

        sha = weights_sha256(self.weights)
        out_dir = self.settings.cache_dir / "onnx" / f"{sha[:16]}-{self.imgsz}"
        target = out_dir / "model.onnx"
        if target.exists():
            return target
        with _file_lock(out_dir / ".lock"):
            if target.exists():
                return target
            work = out_dir / f"work-{os.getpid()}"
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.weights, work / "model.pt")
            from ultralytics import YOLO

            try:
                exported = YOLO(str(work / "model.pt")).export(
                    format="onnx", imgsz=self.imgsz, dynamic=True, simplify=True, device="cpu"
                )
            except Exception as e:
                raise ModelError(
                    f"exporting {self.weights} to ONNX failed ({e}); set LABELLOOP_RUNTIME=torch"
                ) from e
            Path(exported).replace(target)
            shutil.rmtree(work, ignore_errors=True)
        return target

    @staticmethod
    def _keypoint_names(model: Any) -> list[str] | None:
        yaml = getattr(getattr(model, "model", None), "yaml", None) or {}
        names = yaml.get("kpt_names")
        if isinstance(names, dict):  # {class_index: [names]} in recent Ultralytics datasets
            names = next(iter(names.values()), None)
        return [str(n) for n in names] if names else None

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
        s = self.settings
        bgr = [np.ascontiguousarray(f.image[..., ::-1]) for f in chunk]  # type: ignore[index]
        kwargs: dict[str, Any] = dict(
            imgsz=self.imgsz,
            conf=s.predict.conf,
            iou=s.predict.iou,
            max_det=s.predict.max_det,
            device=self.device,
            verbose=False,
            batch=self.batch,
        )
        model = (
            self._replicas.get()
        )  # each replica runs one forward at a time (predictors aren't thread-safe)
        try:
            if self._predictor_cls is not None:
                results = model.predict(bgr, predictor=self._predictor_cls, **kwargs)
            else:
                results = model.predict(bgr, **kwargs)
            if self.runtime == "onnx":
                self._tune_onnx_session(model)
        except Exception as e:
            log.exception("model forward failed on %d image(s)", len(chunk))
            return failed + [
                Outcome(Fetched(f.uri, error=f"model failed on this image: {type(e).__name__}: {e}"))
                for f in chunk
            ]
        finally:
            self._replicas.put(model)
        return failed + [Outcome(f, self._to_item(f, r)) for f, r in zip(chunk, results, strict=True)]

    def _tune_onnx_session(self, model: Any) -> None:
        """Stop ONNX Runtime's worker threads from spin-waiting between ops.

        Spinning keeps both cores busy even while waiting, starving the threads that fetch and
        decode the next images; without it fetching overlaps with inference. Ultralytics builds its
        session with default options, so it is rebuilt once, with the same providers.
        """
        backend = getattr(getattr(getattr(model, "predictor", None), "model", None), "backend", None)
        session = getattr(backend, "session", None)
        if session is None or getattr(backend, "_labelloop_tuned", False):
            return
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.intra_op_num_threads = max(1, (os.cpu_count() or 1) // self.streams)
        backend.session = ort.InferenceSession(session._model_path, opts, providers=session.get_providers())
        backend._labelloop_tuned = True

    def _to_item(self, f: Fetched, r: Any) -> ImageItem:
        h, w = f.image.shape[:2]  # type: ignore[union-attr]
        prov = Provenance(source=Source.PRELABEL, model_version=self.model_version)
        regions = list(self._regions(r, prov))
        uncert = [rg.attributes["uncertainty"] for rg in regions]
        score = unc.image_score(
            [rg.score for rg in regions if rg.score is not None], getattr(r, "max_candidate", None)
        )
        if self.task == "classify":
            score = regions[0].score if regions else 0.0
        return ImageItem(
            uri=f.uri,
            width=w,
            height=h,
            regions=regions,
            sha256=f.sha256,
            score=score,
            metadata={
                "uncertainty": unc.image_uncertainty(uncert, score),
                "model_version": self.model_version,
            },
        )

    def _regions(self, r: Any, prov: Provenance) -> Iterator[Region]:
        names = self.names
        if self.task == "classify":
            p = r.probs.data.float().cpu().numpy()
            top = int(p.argmax())
            yield Region(
                names[top],
                None,
                score=float(p[top]),
                probs=self._probs(p),
                provenance=prov,
                attributes={"uncertainty": unc.region_uncertainty(p)},
            )
            return
        boxes = r.obb if self.task == "obb" else r.boxes
        if boxes is None or len(boxes) == 0:
            return
        cls = boxes.cls.int().cpu().numpy()
        conf = boxes.conf.float().cpu().numpy()
        feats = getattr(r, "feats", None)
        vectors = np.asarray(feats) if feats is not None and len(feats) == len(cls) else None
        if self.task == "obb":
            geoms: list = [
                RotatedBox(float(x), float(y), float(bw), float(bh), float(np.degrees(a)) % 360.0)
                for x, y, bw, bh, a in boxes.xywhr.float().cpu().numpy()
            ]
        else:
            geoms = [Box(*map(float, b)) for b in boxes.xyxy.float().cpu().numpy()]
        if self.task == "segment" and r.masks is not None:
            geoms = [
                Polygon(tuple((float(x), float(y)) for x, y in poly)) if len(poly) >= 3 else _box_poly(g)
                for poly, g in zip(r.masks.xy, geoms, strict=True)
            ]
        if self.task == "pose" and r.keypoints is not None:
            kd = r.keypoints.data.float().cpu().numpy()  # (n, k, 2|3)
            kn = self.kpt_names or [f"kp{k}" for k in range(kd.shape[1])]
            geoms = [
                Keypoints(
                    tuple(
                        Keypoint(float(p[0]), float(p[1]), bool(p[2] >= 0.5) if len(p) > 2 else True, kn[k])
                        for k, p in enumerate(inst)
                    ),
                    box=g,
                )
                for inst, g in zip(kd, geoms, strict=True)
            ]
        for i, g in enumerate(geoms):
            vec = vectors[i] if vectors is not None else np.array([conf[i]])
            yield Region(
                names[int(cls[i])],
                g,
                score=float(conf[i]),
                probs=self._probs(vec) if vectors is not None else None,
                provenance=prov,
                attributes={"uncertainty": unc.region_uncertainty(vec)},
            )

    def _probs(self, vec: np.ndarray) -> dict[str, float]:
        return {self.names[k]: round(float(v), 6) for k, v in enumerate(vec)}


def _box_poly(b: Box) -> Polygon:
    return Polygon(((b.x1, b.y1), (b.x2, b.y1), (b.x2, b.y2), (b.x1, b.y2)))
