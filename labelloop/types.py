"""The one canonical annotation model every format converts to and from.

Geometry is kept in absolute pixel coordinates of the original image (origin top-left, y down):
each platform uses a different convention (Label Studio percent + rotation about the top-left
corner, CVAT pixels + rotation about the centre, YOLO normalised centres) and converting through
one unambiguous form keeps every pair of conversions lossless. All conversions live in
``labelloop.connectors.formats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np


class Source(StrEnum):
    """Who made a label; the dataset never mixes these up (machine labels must not pass as human ones)."""

    HUMAN = "human"
    PRELABEL = "prelabel"
    PSEUDO = "pseudo"
    SYNTHETIC = "synthetic"


@dataclass(frozen=True, slots=True)
class Provenance:
    source: Source = Source.HUMAN
    model_version: str | None = None
    annotator: str | None = None
    reviewer: str | None = None
    created_at: str | None = None  # ISO-8601, as the platform reported it
    updated_at: str | None = None


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box, corners in pixels."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def w(self) -> float:
        return self.x2 - self.x1

    @property
    def h(self) -> float:
        return self.y2 - self.y1


@dataclass(frozen=True, slots=True)
class RotatedBox:
    """Box of size w x h centred at (cx, cy), turned clockwise (on screen) by ``angle`` degrees."""

    cx: float
    cy: float
    w: float
    h: float
    angle: float = 0.0

    def corners(self) -> np.ndarray:
        """The four corners (4, 2) starting at the box's own top-left, clockwise on screen."""
        a = math.radians(self.angle)
        c, s = math.cos(a), math.sin(a)
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * (self.w / 2, self.h / 2)
        rot = np.array([[c, -s], [s, c]])
        return half @ rot.T + (self.cx, self.cy)

    @classmethod
    def from_corners(cls, pts: np.ndarray | list) -> RotatedBox:
        """Inverse of :meth:`corners` (first point = the box's top-left, then clockwise)."""
        p = np.asarray(pts, dtype=float).reshape(4, 2)
        cx, cy = p.mean(axis=0)
        w = float(np.hypot(*(p[1] - p[0])))
        h = float(np.hypot(*(p[2] - p[1])))
        angle = math.degrees(math.atan2(p[1][1] - p[0][1], p[1][0] - p[0][0]))
        return cls(float(cx), float(cy), w, h, normalize_angle(angle))


def normalize_angle(deg: float) -> float:
    """Angle in [0, 360)."""
    a = math.fmod(deg, 360.0)
    a = a + 360.0 if a < 0 else a
    return 0.0 if math.isclose(a, 360.0) else a


@dataclass(frozen=True, slots=True)
class Polygon:
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True, eq=False)
class Mask:
    """Binary mask over the whole image, shape (height, width)."""

    data: np.ndarray

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mask) and np.array_equal(self.data.astype(bool), other.data.astype(bool))

    def __hash__(self) -> int:
        return hash(self.data.tobytes())


@dataclass(frozen=True, slots=True)
class Keypoint:
    x: float
    y: float
    visible: bool = True
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Keypoints:
    points: tuple[Keypoint, ...]
    box: Box | None = None  # the instance's box when the format carries one (YOLO pose, COCO)


Geometry = Box | RotatedBox | Polygon | Mask | Keypoints | None
"""``None`` is a whole-image class label (classification / Choices / CVAT tag)."""


@dataclass(frozen=True, slots=True)
class Region:
    """One labelled thing in an image.

    ``score`` is a confidence (higher = surer), None for human labels. ``probs`` holds the
    model's per-class probabilities when it exposes them (class name -> probability), which is
    what the uncertainty measures are computed from.
    """

    label: str
    geometry: Geometry
    score: float | None = None
    probs: dict[str, float] | None = None
    provenance: Provenance = field(default_factory=Provenance)
    id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return kind_of(self.geometry)

    def with_(self, **changes: Any) -> Region:
        return replace(self, **changes)


def kind_of(geometry: Geometry) -> str:
    return {
        Box: "box",
        RotatedBox: "rotated_box",
        Polygon: "polygon",
        Mask: "mask",
        Keypoints: "keypoints",
        type(None): "class",
    }[type(geometry)]


@dataclass(slots=True)
class ImageItem:
    """An image and everything labelled on it.

    ``group_id`` ties frames of one scene/video together so splits never leak across it.
    ``score`` is the image-level confidence a platform sorts by (see ``backend.inference.uncertainty``).
    """

    uri: str
    width: int
    height: int
    regions: list[Region] = field(default_factory=list)
    sha256: str | None = None
    group_id: str | None = None
    score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
