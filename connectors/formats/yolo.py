"""YOLO txt labels (Ultralytics layouts) <-> canonical regions.

One line per region, coordinates normalised to 0..1 by the image size:

- ``detect``: ``cls cx cy w h``;
- ``segment``: ``cls x1 y1 x2 y2 ...`` (a polygon of >= 3 points);
- ``pose``: ``cls cx cy w h px py [v] ...`` with ``kpt_shape = (n, 2 or 3)``;
- ``obb``: ``cls x1 y1 x2 y2 x3 y3 x4 y4`` (corners, the box's own top-left first, clockwise);
- ``classify``: no txt; the class is the image's folder (``<split>/<class>/<file>``).

Coordinates are written with ``decimals`` (6) places, so a round trip is exact to
``0.5e-6 * size`` pixels per written number. ``with_score=True`` appends the region's score as
the last number, as Ultralytics' ``save_conf`` does; the reader tells by the count of numbers.

What YOLO cannot hold, and what happens to it:

- a task takes only the region kinds in :data:`TASK_KINDS`; anything else raises ConfigError
  (never dropped silently). Kinds a task holds only approximately: ``detect`` keeps the
  axis-aligned hull of rotated boxes, polygons, masks and keypoint instances; ``segment`` turns
  boxes into 4-point polygons and a mask into its largest outer contour (holes and the other
  components are lost, see :func:`labelloop.connectors.formats.common.mask_to_polygon`);
- pose: a visible point gets ``v = 2``, a point not visible (not labelled) ``v = 0`` with its
  coordinates kept (Ultralytics ignores points with ``v == 0``); read back, any ``v > 0`` is
  visible, so COCO's "labelled but occluded" (1) becomes visible. With ``kpt_shape (n, 2)`` there
  is no visibility: a point that is not visible raises ConfigError. A pose region without a box
  gets the bounds of its visible points. Keypoint names are not in the file: pass ``kpt_names``;
- provenance, ids, attributes and per-class probabilities are not in the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import TypedDict, Unpack

import numpy as np

from labelloop.connectors.formats.common import kind_error, label_id, label_name, mask_to_polygon
from labelloop.errors import ConfigError
from labelloop.geometry import bounding_box, box_corners, keypoints_box
from labelloop.types import (
    Box,
    Keypoint,
    Keypoints,
    Mask,
    Polygon,
    Provenance,
    Region,
    RotatedBox,
)

TASKS = ("detect", "segment", "pose", "obb", "classify")
Names = Sequence[str] | Mapping[int, str]  # class names by id: a list, or data.yaml's {id: name}
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "detect": ("box", "rotated_box", "polygon", "mask", "keypoints"),
    "segment": ("polygon", "mask", "box", "rotated_box"),
    "pose": ("keypoints",),
    "obb": ("rotated_box", "box"),
    "classify": ("class",),
}
"""Region kinds each task's files can hold (exactly or approximately, see the module doc)."""
DECIMALS = 6


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown YOLO task {task!r}; expected one of {list(TASKS)}")


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ConfigError(f"image size {width}x{height} is not positive; YOLO coordinates need it")


def _norm(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels -> 0..1; ``xy`` is (..., 2)."""
    return np.asarray(xy, dtype=float) / (width, height)


def _denorm(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(xy, dtype=float).reshape(-1, 2) * (width, height)


def _box_numbers(box: Box, width: int, height: int) -> list[float]:
    cx, cy = _norm(((box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2), width, height)
    w, h = _norm((box.w, box.h), width, height)
    return [cx, cy, w, h]


def _box_from_numbers(v: Sequence[float], width: int, height: int) -> Box:
    (cx, cy), (w, h) = _denorm(v[:2], width, height)[0], _denorm(v[2:4], width, height)[0]
    return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _kpt_shape(kpt_shape: Sequence[int] | None, kps: Keypoints | None = None) -> tuple[int, int]:
    if kpt_shape is None:
        if kps is None:
            raise ConfigError("reading YOLO pose labels needs kpt_shape (from the dataset's data.yaml)")
        return len(kps.points), 3
    n, ndim = (int(v) for v in kpt_shape)
    if ndim not in (2, 3) or n <= 0:
        raise ConfigError(f"kpt_shape {list(kpt_shape)} is invalid; expected [number of keypoints, 2 or 3]")
    return n, ndim


def region_to_yolo_numbers(
    region: Region, width: int, height: int, task: str, kpt_shape: Sequence[int] | None = None
) -> list[float]:
    """The normalised numbers of one region's line (without class and score)."""
    g = region.geometry
    if region.kind not in TASK_KINDS[task] or task == "classify":
        raise kind_error(region, f"a YOLO {task} label file", TASK_KINDS[task])
    if task == "detect":
        return _box_numbers(bounding_box(g), width, height)
    if task == "obb":
        assert isinstance(g, Box | RotatedBox)
        return _norm(box_corners(g), width, height).ravel().tolist()
    if task == "segment":
        if isinstance(g, Mask):
            poly = mask_to_polygon(g.data)
            if poly is None:
                raise ConfigError(
                    f"the mask labelled {region.label!r} is empty; YOLO segment needs a polygon"
                )
            g = poly
        pts = g.points if isinstance(g, Polygon) else box_corners(g)  # type: ignore[arg-type]
        if len(pts) < 3:
            raise ConfigError(f"the polygon labelled {region.label!r} has fewer than 3 points")
        return _norm(np.asarray(pts, dtype=float), width, height).ravel().tolist()
    # pose
    assert isinstance(g, Keypoints)
    n, ndim = _kpt_shape(kpt_shape, g)
    if len(g.points) != n:
        raise ConfigError(
            f"the keypoints labelled {region.label!r} have {len(g.points)} points but kpt_shape says {n}"
        )
    out = _box_numbers(keypoints_box(g), width, height)
    for k, p in enumerate(g.points):
        out += _norm((p.x, p.y), width, height).tolist()
        if ndim == 3:
            out.append(2.0 if p.visible else 0.0)
        elif not p.visible:
            raise ConfigError(
                f"kpt_shape [{n}, 2] cannot mark point {k} of {region.label!r} as not visible; "
                f"use kpt_shape [{n}, 3]"
            )
    return out


def _fmt(v: float, decimals: int) -> str:
    s = f"{v:.{decimals}f}"
    return "0." + "0" * decimals if s == "-0." + "0" * decimals else s


def regions_to_yolo_lines(
    regions: Iterable[Region],
    width: int,
    height: int,
    class_index: Mapping[str, int],
    task: str,
    *,
    kpt_shape: Sequence[int] | None = None,
    with_score: bool = False,
    decimals: int = DECIMALS,
) -> list[str]:
    """The label file's lines for one image (for ``classify`` use :func:`classify_relpath`)."""
    _check_task(task)
    if task == "classify":
        raise ConfigError("YOLO classify has no label files; use classify_relpath() for the image's folder")
    _check_size(width, height)
    lines = []
    for r in regions:
        nums = region_to_yolo_numbers(r, width, height, task, kpt_shape)
        if with_score and r.score is not None:
            nums.append(float(r.score))
        cls = label_id(r.label, class_index, "YOLO")
        lines.append(" ".join([str(cls), *(_fmt(v, decimals) for v in nums)]))
    return lines


def _parse(line: str, where: str) -> tuple[int, list[float]]:
    parts = line.split()
    try:
        cls_f = float(parts[0])
        nums = [float(v) for v in parts[1:]]
    except (ValueError, IndexError):
        raise ConfigError(f"{where}: {line.strip()!r} is not a YOLO label line (numbers only)") from None
    if not cls_f.is_integer():
        raise ConfigError(f"{where}: class id {parts[0]!r} is not an integer")
    return int(cls_f), nums


def _split_score(
    nums: list[float], sizes: Sequence[int], task: str, where: str
) -> tuple[list[float], float | None]:
    """Separate Ultralytics' optional trailing confidence by the count of numbers."""
    for size in sizes:
        if len(nums) == size:
            return nums, None
        if len(nums) == size + 1:
            return nums[:-1], nums[-1]
    raise ConfigError(
        f"{where}: {len(nums)} numbers after the class id do not fit a YOLO {task} line "
        f"(expected {' or '.join(str(s) for s in sizes)}, +1 with a score)"
    )


def yolo_line_to_region(
    line: str,
    width: int,
    height: int,
    names: Names,
    task: str,
    *,
    kpt_shape: Sequence[int] | None = None,
    kpt_names: Sequence[str] | None = None,
    provenance: Provenance | None = None,
    where: str = "YOLO label",
) -> Region:
    _check_task(task)
    cls, nums = _parse(line, where)
    label = label_name(cls, names, where)
    if task == "detect":
        nums, score = _split_score(nums, (4,), task, where)
        geometry: Box | RotatedBox | Polygon | Keypoints = _box_from_numbers(nums, width, height)
    elif task == "obb":
        nums, score = _split_score(nums, (8,), task, where)
        geometry = RotatedBox.from_corners(_denorm(nums, width, height))
    elif task == "segment":
        if len(nums) % 2:
            nums, score = nums[:-1], nums[-1]
        else:
            score = None
        if len(nums) < 6:
            raise ConfigError(f"{where}: a YOLO segment line needs at least 3 points, got {len(nums) // 2}")
        geometry = Polygon(tuple((float(x), float(y)) for x, y in _denorm(nums, width, height)))
    elif task == "pose":
        n, ndim = _kpt_shape(kpt_shape)
        nums, score = _split_score(nums, (4 + n * ndim,), task, where)
        if kpt_names is not None and len(kpt_names) != n:
            raise ConfigError(f"kpt_names has {len(kpt_names)} names but kpt_shape says {n} points")
        raw = np.asarray(nums[4:], dtype=float).reshape(n, ndim)
        xy = _denorm(raw[:, :2], width, height)
        points = tuple(
            Keypoint(
                float(xy[k, 0]),
                float(xy[k, 1]),
                bool(raw[k, 2] > 0) if ndim == 3 else True,
                kpt_names[k] if kpt_names is not None else None,
            )
            for k in range(n)
        )
        geometry = Keypoints(points, _box_from_numbers(nums, width, height))
    else:
        raise ConfigError("YOLO classify has no label lines; use classify_regions() on the image path")
    return Region(label, geometry, score=score, provenance=provenance or Provenance())


class LineOptions(TypedDict, total=False):
    """The keyword options of :func:`yolo_line_to_region`, passed through unchanged by the file reader."""

    kpt_shape: Sequence[int] | None
    kpt_names: Sequence[str] | None
    provenance: Provenance | None


def yolo_lines_to_regions(
    lines: Iterable[str],
    width: int,
    height: int,
    names: Names,
    task: str,
    *,
    source: str = "YOLO label",
    **options: Unpack[LineOptions],
) -> list[Region]:
    """Regions of one label file; ``source`` (e.g. the file's path) names it in errors."""
    _check_task(task)
    _check_size(width, height)
    return [
        yolo_line_to_region(line, width, height, names, task, where=f"{source} line {i}", **options)
        for i, line in enumerate(lines, 1)
        if line.strip()
    ]


# ------------------------------------------------------------------ classify (folder per class)


def classify_label(regions: Sequence[Region], image: str = "image") -> str:
    """The one class label of an image; a classify dataset has exactly one per image."""
    labels = [r.label for r in regions if r.geometry is None]
    if len(labels) != 1:
        raise ConfigError(
            f"{image} has {len(labels)} class labels {labels}; a YOLO classify dataset needs exactly one"
        )
    return labels[0]


def classify_relpath(
    regions: Sequence[Region], filename: str, split: str | None = None, image: str | None = None
) -> PurePosixPath:
    """Where the image goes in a classify dataset: ``[split/]class/filename``."""
    label = classify_label(regions, image or filename)
    if not label or "/" in label or "\\" in label or label in (".", ".."):
        raise ConfigError(f"class label {label!r} cannot be a folder name; rename the class")
    parts = [split] if split else []
    return PurePosixPath(*parts, label, PurePath(filename).name)


def classify_regions(
    path: str | Path,
    names: Sequence[str] | None = None,
    provenance: Provenance | None = None,
) -> list[Region]:
    """The class of an image in a classify dataset: the name of its folder."""
    label = PurePath(path).parent.name
    if names is not None and label not in names:
        raise ConfigError(f"folder {label!r} of {str(path)!r} is not one of the class names {list(names)}")
    return [Region(label, None, provenance=provenance or Provenance())]
