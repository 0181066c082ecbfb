"""A dataset store holding generated shape images with human box labels, made through the real
ingest and snapshot path, and settings that keep a training's store, MLflow and caches in a tmp dir.

The classes are the demo detector's (circle, square, triangle), so the demo model is a sensible base
and a champion trained here can be compared on the same classes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from labelloop.backend.inference.demo_model import CLASSES, render_shapes
from labelloop.settings import Settings
from labelloop.sync.ingest import ingest
from labelloop.sync.store import Store
from labelloop.sync.versions import snapshot
from tests.store_fixtures import LS, ann, box, item, result


def training_settings(root: Path, base_weights: Path, **train: object) -> Settings:
    """Settings with everything under ``root``: store, blobs, MLflow (data dir), caches."""
    return Settings(
        cache_dir=root / "cache",
        store={"url": f"sqlite:///{root / 'store.db'}", "blob_root": str(root / "blobs")},
        train={
            "epochs": 2,
            "imgsz": 96,
            "batch": 8,
            "base_weights": base_weights,
            "model_line": "shapes",
            "device": "cpu",
            **train,
        },
        gate={"floor_map50_95": 0.01, "max_class_drop": 1.0},
    )


def add_shapes(store: Store, n: int, *, start: int = 0, size: int = 96, seed: int = 0) -> None:
    """``n`` shape images (PNG bytes in the blob store) with their boxes as human annotations."""
    rng = np.random.default_rng(seed + start)
    anns = []
    for i in range(start, start + n):
        img, objects = render_shapes(rng, size, max_shapes=3)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        sha = store.blobs.put(buf.getvalue())
        regions = []
        for cls, poly in objects:
            p = np.array(poly)
            (x1, y1), (x2, y2) = p.min(0), p.max(0)
            regions.append(box(CLASSES[cls], float(x1), float(y1), float(x2), float(y2)))
        anns.append(ann(i, i, item=item(regions, sha=sha, uri=f"s3://shapes/{i}.png", w=size, h=size)))
    ingest(store, LS, result(anns, present={}))


def shapes_version(
    settings: Settings, n: int = 20, *, start: int = 0, message: str = "shapes", val_fraction: float = 0.3
) -> str:
    """Add ``n`` images to the settings' store and snapshot; the new version's id."""
    with Store.open(settings=settings) as store:
        add_shapes(store, n, start=start)
        return snapshot(store, message, val_fraction=val_fraction).version.id
