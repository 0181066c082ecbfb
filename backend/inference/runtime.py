"""Where and how the model runs: the device, PyTorch or ONNX Runtime, and the cached ONNX export.

On CPU the default runtime is ONNX Runtime, exported once from the same weights and cached (about
1.6x faster than PyTorch here); several single-threaded sessions beat one session's intra-op
threads on a small model. On a GPU, PyTorch runs ``batch`` images per forward. An exported file
(.onnx, .engine, ...) runs as what it is: an ONNX file (INT8 too) in parallel ONNX Runtime sessions, an
OpenVINO IR dir (``labelloop export``) as one compiled model with ``NUM_STREAMS`` = the predictor's
streams, CPU pinning off (two pinned processes on a small host can land on the same cores) and the
precision its ``labelloop.json`` names (this CPU would otherwise run fp32 IRs in bf16).
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labelloop.backend.inference.weights import weights_sha256
from labelloop.errors import ModelError
from labelloop.fsutil import file_lock
from labelloop.settings import PredictSettings

RUNTIMES = ("torch", "onnx", "openvino")
OPENVINO_META = "labelloop.json"  # in an exported IR dir: {"format", "precision", ...}


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def artifact_runtime(weights: Path) -> str | None:
    """The runtime an exported artifact needs: ``onnx`` for .onnx, ``openvino`` for an IR dir."""
    if weights.is_dir() or weights.suffix == ".xml":
        return "openvino"
    return "onnx" if weights.suffix == ".onnx" else None


def pick_device(device: str) -> str:
    """``auto``: the first GPU when there is one, else the CPU; anything else as given."""
    if device != "auto":
        return device
    import torch  # lazy: only an "auto" device needs to ask torch

    return "0" if torch.cuda.is_available() else "cpu"


def pick_runtime(runtime: str, device: str, weights: Path) -> str:
    if runtime != "auto":
        return runtime
    exported = artifact_runtime(weights)
    if device == "cpu" and exported:
        return exported
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
        self._ov_lock = threading.Lock()
        self._ov_compiled: Any = None
        self._ov_weights: Path | None = None
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

        streams = settings.streams or max(1, min(4, cpu_cores()))
        if name == "openvino":
            if artifact_runtime(weights) != "openvino":
                raise ModelError(
                    f"runtime openvino serves an OpenVINO IR dir, not {weights.name}: "
                    "make one with `labelloop export --format openvino`"
                )
            replicas = [YOLO(str(weights), task=torch_model.task) for _ in range(streams)]
            rt = cls(name, device, batch, replicas)
            rt._ov_weights = weights
            return rt
        onnx_path = weights if weights.suffix == ".onnx" else onnx_export(weights, imgsz, cache_dir)
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
            elif self.name == "openvino":
                self._share_openvino_model(model)
        return results

    def _share_openvino_model(self, model: Any) -> None:
        """Point this replica at one infer request of a compiled model shared by all replicas.

        Ultralytics compiles one LATENCY model per replica, each pinned and sized for the whole
        CPU; one THROUGHPUT model with ``NUM_STREAMS`` = streams runs the streams side by side (the
        hint alone picks one stream on 2 cores). Pinning is off: two processes pinned by default
        may share one core."""
        backend = getattr(getattr(getattr(model, "predictor", None), "model", None), "backend", None)
        tuned = getattr(backend, "_labelloop_tuned", False)
        if backend is None or tuned or not hasattr(backend, "ov_compiled_model"):
            return
        with self._ov_lock:
            if self._ov_compiled is None:
                self._ov_compiled = compile_openvino(self._ov_weights or Path(), self.streams)
        backend.ov_compiled_model = _OpenVinoStream(self._ov_compiled)
        backend._labelloop_tuned = True

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


def compile_openvino(ir: Path, streams: int) -> Any:
    """The IR compiled for ``streams`` parallel requests on the CPU at its recorded precision."""
    import json

    import openvino as ov

    xml = ir if ir.suffix == ".xml" else next(ir.glob("*.xml"))
    meta_file = xml.parent / OPENVINO_META
    precision = json.loads(meta_file.read_text()).get("precision") if meta_file.is_file() else None
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": str(streams),
        "INFERENCE_NUM_THREADS": str(max(streams, cpu_cores())),
        "ENABLE_CPU_PINNING": "NO",
    }
    if precision in ("fp32", "bf16"):  # int8: the plugin's default for the ops left float
        config["INFERENCE_PRECISION_HINT"] = "f32" if precision == "fp32" else "bf16"
    core = ov.Core()
    return core.compile_model(core.read_model(str(xml)), "CPU", config)


class _OpenVinoStream:
    """One infer request of a shared compiled model, called the way Ultralytics' backend calls
    its compiled model (``compiled(im).values()``)."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def __call__(self, im: Any) -> dict[Any, Any]:
        self._request.infer({0: im})
        return {o: self._request.get_tensor(o).data.copy() for o in self._compiled.outputs}

    def input(self, *args: Any) -> Any:
        return self._compiled.input(*args)
