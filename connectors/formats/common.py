"""Geometry and lookup helpers every format module shares, so that e.g. "the box of a mask" means
the same pixels in YOLO, COCO and CVAT output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from labelloop.errors import ConfigError
from labelloop.types import Polygon, Region


def label_id(label: str, ids: Mapping[str, int], where: str) -> int:
    """The id of ``label`` in a format's class map, or an error naming the label and the map."""
    try:
        return ids[label]
    except KeyError:
        raise ConfigError(
            f"label {label!r} is not in the {where} class map {sorted(ids)}; add it or map it to one"
        ) from None


def label_name(index: int, names: Mapping[int, str] | Sequence[str], where: str) -> str:
    """The name of class ``index``; an id the map lacks means the map does not match the data."""
    try:
        if isinstance(names, Mapping):
            return names[index]
        if index < 0:
            raise IndexError(index)
        return names[index]
    except (KeyError, IndexError):
        known = sorted(names) if isinstance(names, Mapping) else f"0..{len(names) - 1}"
        raise ConfigError(
            f"class id {index} in {where} is not in the class names ({known}); "
            "the names do not match the data"
        ) from None


def mask_to_polygon(mask: np.ndarray) -> Polygon | None:
    """The largest outer contour of a mask, vertices at the centres of its boundary pixels.

    Filling it (cv2.fillPoly, PIL ImageDraw.polygon) gives that component back; holes and the
    other components are lost. A one- or two-pixel contour is padded to three vertices so that
    formats requiring a polygon still get one (of zero area). None when the mask is empty.
    """
    import cv2

    m = np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    best = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    pts = [(float(x), float(y)) for x, y in best.reshape(-1, 2)]
    while len(pts) < 3:
        pts.append(pts[-1])
    return Polygon(tuple(pts))


def kind_error(region: Region, where: str, allowed: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"{where} cannot hold the {region.kind} region labelled {region.label!r} "
        f"(it takes {', '.join(allowed)}); convert or drop such regions first"
    )
