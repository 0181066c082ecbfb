"""Where and how the model runs: the device, PyTorch or ONNX Runtime, and the cached ONNX export.

On CPU the default runtime is ONNX Runtime, exported once from the same weights and cached (about
1.6x faster than PyTorch here); several single-threaded sessions beat one session's intra-op
threads on a small model. On a GPU, PyTorch runs ``batch`` images per forward. An exported file
(.onnx, .engine, ...) runs as what it is.
"""

from __future__ import annotations

import os
import queue
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labelloop.backend.inference.weights import weights_sha256
from labelloop.errors import ModelError
from labelloop.fsutil import file_lock
from labelloop.settings import PredictSettings

RUNTIMES = ("torch", "onnx")


def pick_device(device: str) -> str:
    """``auto``: the first GPU when there is one, else the CPU; anything else as given."""
    if device != "auto":
        return device
    import torch  # lazy: only an "auto" device needs to ask torch

    return "0" if torch.cuda.is_available() else "cpu"


def pick_runtime(runtime: str, device: str, weights: Path) -> str:
    if runtime != "auto":
        return runtime
    if device != "cpu" or weights.suffix != ".pt":
        return "torch"  # GPU: PyTorch with batching; an exported file runs as what it is
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


def onnx_export(weights: Path, imgsz: int, cache_dir: Path) -> Path:
    """Export once per (weights, imgsz) into the cache; concurrent processes wait on a lock."""
    sha = weights_sha256(weights)
    out_dir = cache_dir / "onnx" / f"{sha[:16]}-{imgsz}"
    target = out_dir / "model.onnx"
    if target.exists():
        return target
    with file_lock(out_dir / ".lock"):
        if target.exists():
            return target
        work = out_dir / f"work-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(weights, work / "model.pt")
        from ultralytics import YOLO

        try:
            exported = YOLO(str(work / "model.pt")).export(
                format="onnx", imgsz=imgsz, dynamic=True, simplify=True, device="cpu"
            )
        except Exception as e:
            raise ModelError(f"exporting {weights} to ONNX failed ({e}); set LABELLOOP_RUNTIME=torch") from e
        Path(exported).replace(target)
        shutil.rmtree(work, ignore_errors=True)
    return target


class Runtime:
    """The loaded model replicas of one predictor; each runs one forward at a time (Ultralytics
    predictors are not thread-safe), so ``streams`` forwards can run in parallel."""

    def __init__(
        self, name: str, device: str, batch: int, replicas: list[Any], onnx_path: Path | None = None
    ) -> None:
        self.name, self.device, self.batch, self.onnx_path = name, device, batch, onnx_path
        self.streams = len(replicas)
        self.first = replicas[0]
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for m in replicas:
            self._free.put(m)

    @classmethod
    def open(
        cls, weights: Path, torch_model: Any, imgsz: int, settings: PredictSettings, cache_dir: Path
    ) -> Runtime:
        """Choose device and runtime from ``settings`` and load the replicas (``torch_model`` is the
        already loaded Ultralytics model of ``weights``)."""
        device = pick_device(settings.device)
        name = pick_runtime(settings.runtime, device, weights)
        batch = settings.batch or (16 if device != "cpu" else 1)
        if name == "torch":
            return cls(name, device, batch, [torch_model])
        from ultralytics import YOLO

        onnx_path = onnx_export(weights, imgsz, cache_dir)
        streams = settings.streams or max(1, min(4, os.cpu_count() or 1))
        replicas = [YOLO(str(onnx_path), task=torch_model.task) for _ in range(streams)]
        return cls(name, device, batch, replicas, onnx_path)

    @contextmanager
    def replica(self) -> Iterator[Any]:
        model = self._free.get()
        try:
            yield model
        finally:
            self._free.put(model)

    def predict(self, images_bgr: list[Any], predictor_cls: type | None, **kwargs: Any) -> list[Any]:
        """Ultralytics results for decoded BGR images, one forward of up to ``batch`` of them."""
        kwargs.update(device=self.device, verbose=False, batch=self.batch)
        if predictor_cls is not None:
            kwargs["predictor"] = predictor_cls
        with self.replica() as model:
            results = model.predict(images_bgr, **kwargs)
            if self.name == "onnx":
                self._tune_onnx_session(model)
        return results

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
