"""A small detector this machine can build without any hub download.

yolov8n from its yaml, trained briefly on generated images of coloured shapes. The result is
cached under the cache dir by a hash of the recipe, so tests and the demo build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
RECIPE = {"arch": "yolov8n.yaml", "epochs": 30, "imgsz": 320, "n_train": 96, "n_val": 24, "seed": 0, "v": 2}


def render_shapes(rng: np.random.Generator, size: int = 320, max_shapes: int = 4) -> tuple[Image.Image, list]:
    """One image and its objects as (class_index, polygon in pixels)."""
    bg = rng.integers(0, 90, 3)
    arr = np.clip(rng.normal(bg, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    objects: list[tuple[int, list[tuple[float, float]]]] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(0, len(CLASSES)))
        s = float(rng.uniform(0.12, 0.3) * size)
        cx, cy = rng.uniform(s / 2 + 2, size - s / 2 - 2, 2)
        color = tuple(int(c) for c in rng.integers(120, 256, 3))
        if cls == 0:
            draw.ellipse([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], fill=color)
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            poly = [(float(cx + s / 2 * np.cos(a)), float(cy + s / 2 * np.sin(a))) for a in t]
        elif cls == 1:
            poly = [
                (cx - s / 2, cy - s / 2),
                (cx + s / 2, cy - s / 2),
                (cx + s / 2, cy + s / 2),
                (cx - s / 2, cy + s / 2),
            ]
            draw.polygon(poly, fill=color)
        else:
            poly = [(cx, cy - s / 2), (cx + s / 2, cy + s / 2), (cx - s / 2, cy + s / 2)]
            draw.polygon(poly, fill=color)
        objects.append((cls, [(float(x), float(y)) for x, y in poly]))
    return img, objects


def write_shapes_dataset(root: Path, n_train: int, n_val: int, size: int = 320, seed: int = 0) -> Path:
    """A YOLO detect dataset under root; returns its data.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, objects = render_shapes(rng, size)
            img.save(root / "images" / split / f"{i:04d}.jpg", quality=92)
            lines = []
            for cls, poly in objects:
                p = np.array(poly)
                (x1, y1), (x2, y2) = p.min(0), p.max(0)
                lines.append(
                    f"{cls} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                    f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}"
                )
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(CLASSES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def demo_model_path(cache_dir: Path) -> Path:
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / "models" / f"demo-shapes-{digest}.pt"


def build_demo_model(cache_dir: Path, progress: bool = True) -> Path:
    """Train (once) and return the cached demo detector."""
    target = demo_model_path(cache_dir)
    if target.exists():
        return target
    from labelloop.backend.inference.yolo_env import ensure_yolo_env

    ensure_yolo_env(cache_dir)
    with _file_lock(target.with_suffix(".lock")):
        if target.exists():  # another process built it while we waited
            return target
        from ultralytics import YOLO
        from ultralytics.utils import SETTINGS

        # Ultralytics' own MLflow integration would start a store in the working directory (mlflow
        # is installed for the registry); labelloop records its runs explicitly
        SETTINGS.update({"mlflow": False})
        with tempfile.TemporaryDirectory(prefix="labelloop-demo-") as tmp:
            data = write_shapes_dataset(
                Path(tmp) / "data", RECIPE["n_train"], RECIPE["n_val"], seed=RECIPE["seed"]
            )
            model = YOLO(RECIPE["arch"])
            model.train(
                data=str(data),
                epochs=RECIPE["epochs"],
                imgsz=RECIPE["imgsz"],
                batch=16,
                device="cpu",
                workers=0,
                plots=False,
                amp=False,
                project=str(Path(tmp) / "runs"),
                name="demo",
                seed=RECIPE["seed"],
                optimizer="SGD",
                lr0=0.01,
                verbose=progress,
                val=True,
                exist_ok=True,
            )
            best = Path(tmp) / "runs" / "demo" / "weights" / "best.pt"
            tmp_target = target.with_suffix(".part")
            shutil.copy(best, tmp_target)
            tmp_target.replace(target)
    return target
