"""A small detector this machine can build without any hub download.

yolov8n from its yaml, trained briefly on generated images of coloured shapes. The result is
cached under the cache dir by a hash of the recipe, so tests and the demo build it once; the
build (minutes on a CPU) shows a bar over its epochs with the time left.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console

from labelloop.backend.inference.epoch_progress import EpochProgress
from labelloop.backend.inference.yolo_env import ensure_yolo_env, without_ultralytics_mlflow
from labelloop.fsutil import atomic_write, file_lock

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


def demo_model_path(cache_dir: Path, recipe: Mapping[str, Any] = RECIPE) -> Path:
    digest = hashlib.sha256(json.dumps(dict(recipe), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / "models" / f"demo-shapes-{digest}.pt"


def build_demo_model(
    cache_dir: Path,
    progress: bool = True,
    *,
    recipe: Mapping[str, Any] = RECIPE,
    console: Console | None = None,
) -> Path:
    """Train (once) and return the cached demo detector; ``progress`` shows a bar over the epochs,
    with the time left, on ``console`` (default: the terminal's stderr)."""
    target = demo_model_path(cache_dir, recipe)
    if target.exists():
        return target
    ensure_yolo_env(cache_dir)
    with file_lock(target.with_suffix(".lock")):
        if target.exists():  # another process built it while we waited
            return target
        from ultralytics import YOLO  # lazy: importing Ultralytics costs seconds

        without_ultralytics_mlflow()
        with tempfile.TemporaryDirectory(prefix="labelloop-demo-") as tmp:
            data = write_shapes_dataset(
                Path(tmp) / "data",
                recipe["n_train"],
                recipe["n_val"],
                size=recipe["imgsz"],
                seed=recipe["seed"],
            )
            model = YOLO(recipe["arch"])
            if progress:
                EpochProgress("building the demo model", console).attach(model)
            model.train(
                data=str(data),
                epochs=recipe["epochs"],
                imgsz=recipe["imgsz"],
                batch=16,
                device="cpu",
                workers=0,
                plots=False,
                amp=False,
                project=str(Path(tmp) / "runs"),
                name="demo",
                seed=recipe["seed"],
                optimizer="SGD",
                lr0=0.01,
                verbose=progress,
                val=True,
                exist_ok=True,
            )
            best = Path(tmp) / "runs" / "demo" / "weights" / "best.pt"
            atomic_write(target, best.read_bytes())
    return target
