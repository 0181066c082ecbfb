"""The simulation's ground-truth oracle: an image's true boxes, and what a prelabel leaves to do.

The prelabel-effort figure is :func:`labelloop.sync.stats.effort` (the same count the store keeps
for real annotations) with the ground truth as the final label: a true box is **matched** when a
prelabel box of the same class overlaps it at IoU >= 0.5 (``kept`` at >= 0.9, else the annotator
still fixes its geometry), **fix class** when only a box of another class overlaps it, **add** when
nothing does; prelabel boxes left over are **delete**. Summed over images, so shares weigh every
box alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labelloop.backend.inference.predictor import Predictor
from labelloop.connectors.formats.yolo import yolo_lines_to_regions
from labelloop.sync.stats import Effort, effort
from labelloop.types import Region

CHUNK = 32


def label_path(image: Path) -> Path:
    """Where Ultralytics reads an image's labels: the last ``/images/`` becomes ``/labels/``."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def ground_truth(image: Path, names: Sequence[str], size: tuple[int, int] | None = None) -> list[Region]:
    """The image's true boxes from its YOLO label file (none when the file is absent)."""
    path = label_path(image)
    if not path.is_file():
        return []
    if size is None:
        with Image.open(image) as im:
            size = im.size
    return yolo_lines_to_regions(
        path.read_text().splitlines(), size[0], size[1], list(names), "detect", source=str(path)
    )


def load_rgb(image: Path) -> np.ndarray:
    with Image.open(image) as im:
        return np.asarray(im.convert("RGB"))


def effort_figures(e: Effort, images: int) -> dict[str, Any]:
    """One effort sum as the simulation reports it (counts, shares of the true boxes)."""
    matched = e.kept + e.moved
    edits = e.moved + e.relabelled + e.deleted + e.added
    return {
        "images": images,
        "gt_boxes": e.final,
        "prelabel_boxes": e.prelabel,
        "matched": matched,
        "matched_share": round(matched / e.final, 4) if e.final else None,
        "kept": e.kept,
        "fix_geometry": e.moved,
        "fix_class": e.relabelled,
        "delete": e.deleted,
        "add": e.added,
        "edits": edits,
        "edits_per_image": round(edits / images, 3) if images else None,
    }


def total_effort(pairs: Sequence[tuple[Sequence[Region], Sequence[Region]]]) -> Effort:
    """Efforts of (prelabel, ground truth) pairs, summed."""
    out = Effort(annotations=0)
    for pre, gt in pairs:
        out = out + effort(pre, gt)
    return out


def prelabel_effort(predictor: Predictor, images: Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    """What annotators would still do to the predictor's prelabels of ``images`` to reach the truth."""
    pairs: list[tuple[list[Region], list[Region]]] = []
    for lo in range(0, len(images), CHUNK):
        part = images[lo : lo + CHUNK]
        arrays = [load_rgb(p) for p in part]
        for p, a, item in zip(part, arrays, predictor.predict_arrays(arrays), strict=True):
            pairs.append((item.regions, ground_truth(p, names, (a.shape[1], a.shape[0]))))
    return effort_figures(total_effort(pairs), len(images))
