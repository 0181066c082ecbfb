"""Backbone embeddings of images, computed in batches and cached per (image sha256, model_version).

The vector is Ultralytics' own ``embed``: the penultimate layer's feature map (for a detector the
last neck stage before the Detect head), global-average-pooled, then L2-normalised here so cosine
similarity is a dot product and distances fall in [0, 2]. The same letterbox preprocessing as
prediction applies, so it sees the image as the detector does.

The cache is on disk under ``<data dir>/embeddings/<model_version>/<sha[:2]>/<sha>.npy`` (float32,
one file per image, written atomically), not in the store: vectors are large, per model and
rebuildable, and a file per key needs no migration nor coordination with the store's schema. A
new model_version starts an empty cache; an old one can be deleted as a folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from labelloop.backend.inference.runtime import pick_device
from labelloop.backend.inference.weights import model_version_of
from labelloop.backend.inference.yolo_env import ensure_yolo_env
from labelloop.errors import ModelError
from labelloop.fsutil import atomic_write
from labelloop.settings import Settings

BATCH = 16
Loader = Callable[[Sequence[str]], Sequence[np.ndarray | None]]  # shas -> RGB images (None: failed)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


class EmbeddingCache:
    """Vectors of one model_version on disk, keyed by image sha256."""

    def __init__(self, root: Path, model_version: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_version)
        self.root = Path(root) / safe

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.npy"

    def get(self, sha: str) -> np.ndarray | None:
        try:
            return np.load(self._path(sha), allow_pickle=False)
        except (OSError, ValueError):  # absent, or a torn file from another writer: recompute
            return None

    def put(self, sha: str, vector: np.ndarray) -> None:
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        atomic_write(self._path(sha), buf.getvalue())


class Embedder:
    """One Ultralytics PyTorch model, embedding RGB images ``batch`` per forward."""

    def __init__(self, weights: Path, settings: Settings, *, imgsz: int | None = None) -> None:
        ensure_yolo_env(settings.cache_dir)
        from ultralytics import YOLO  # lazy: importing Ultralytics costs seconds

        self.weights = Path(weights)
        self.model_version = model_version_of(self.weights)
        try:
            self.model = YOLO(str(self.weights))
        except Exception as e:
            raise ModelError(f"{self.weights} is not a loadable Ultralytics model: {type(e).__name__}") from e
        train_args = (getattr(self.model, "ckpt", None) or {}).get("train_args") or {}
        self.imgsz = imgsz or settings.predict.imgsz or int(train_args.get("imgsz") or 640)
        self.device = pick_device(settings.predict.device)
        self.cache = EmbeddingCache(settings.data_dir / "embeddings", self.model_version)

    def embed_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, d) unit vectors for RGB images, in order."""
        out: list[np.ndarray] = []
        for lo in range(0, len(images), BATCH):
            bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images[lo : lo + BATCH]]
            vecs = self.model.embed(bgr, imgsz=self.imgsz, device=self.device, verbose=False)
            out += [v.detach().float().cpu().numpy().ravel() for v in vecs]
        return normalise(np.stack(out)) if out else np.zeros((0, 0), dtype=np.float32)

    def embed_shas(
        self, shas: Sequence[str], load: Loader, progress: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Vectors of ``shas`` (cached ones read, the others loaded ``BATCH`` at a time, embedded and
        cached); an image ``load`` could not give is left out."""
        found: dict[str, np.ndarray] = {}
        todo: list[str] = []
        for sha in dict.fromkeys(shas):
            v = self.cache.get(sha)
            if v is None:
                todo.append(sha)
            else:
                found[sha] = v
        if progress is not None and found:
            progress(len(found))
        for lo in range(0, len(todo), BATCH):
            part = todo[lo : lo + BATCH]
            images = load(part)
            ok = [(sha, im) for sha, im in zip(part, images, strict=True) if im is not None]
            if ok:
                vecs = self.embed_arrays([im for _, im in ok])
                for (sha, _), v in zip(ok, vecs, strict=True):
                    self.cache.put(sha, v)
                    found[sha] = v
            if progress is not None:
                progress(len(part))
        return found


def matrix(vectors: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray | None:
    """The rows of ``keys`` that have a vector, stacked; None when none has."""
    rows = [vectors[k] for k in keys if k in vectors]
    return np.stack(rows).astype(np.float32) if rows else None
