"""Geometry every part shares, decided once: bounds and corners of any region geometry, IoU, and
matching regions between two annotations of one image (agreement, effort against the prelabel,
the simulator's prelabel figure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelloop.types import Box, Geometry, Keypoints, Mask, Polygon, Region, RotatedBox


def polygon_box(points: Sequence[tuple[float, float]] | np.ndarray) -> Box:
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    x1, y1 = p.min(axis=0)
    x2, y2 = p.max(axis=0)
    return Box(float(x1), float(y1), float(x2), float(y2))


def mask_box(mask: np.ndarray) -> Box:
    """Box around the set pixels, on pixel edges (a 1-pixel mask gives a 1x1 box), like COCO's
    ``toBbox``; an empty mask gives an empty box at the origin."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return Box(0.0, 0.0, 0.0, 0.0)
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def keypoints_box(kps: Keypoints) -> Box:
    """The instance box a format needs: the one given, else the bounds of the visible points
    (all points when none is visible)."""
    if kps.box is not None:
        return kps.box
    pts = [(p.x, p.y) for p in kps.points if p.visible] or [(p.x, p.y) for p in kps.points]
    if not pts:
        return Box(0.0, 0.0, 0.0, 0.0)
    return polygon_box(pts)


def box_corners(g: Box | RotatedBox) -> np.ndarray:
    """Corners (4, 2), the box's own top-left first, clockwise on screen."""
    if isinstance(g, RotatedBox):
        return g.corners()
    return np.array([[g.x1, g.y1], [g.x2, g.y1], [g.x2, g.y2], [g.x1, g.y2]], dtype=float)


def bounding_box(g: Geometry) -> Box:
    """Axis-aligned hull of any geometry (what a format that only holds boxes can keep)."""
    if isinstance(g, Box):
        return g
    if isinstance(g, RotatedBox):
        return polygon_box(g.corners())
    if isinstance(g, Polygon):
        return polygon_box(g.points)
    if isinstance(g, Mask):
        return mask_box(g.data)
    if isinstance(g, Keypoints):
        return keypoints_box(g)
    raise TypeError(f"no box for {type(g).__name__}")


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b`` (len(a), len(b)), vectorised."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    pa = np.array([(x.x1, x.y1, x.x2, x.y2) for x in a], dtype=float)
    pb = np.array([(x.x1, x.y1, x.x2, x.y2) for x in b], dtype=float)
    ix1 = np.maximum(pa[:, None, 0], pb[None, :, 0])
    iy1 = np.maximum(pa[:, None, 1], pb[None, :, 1])
    ix2 = np.minimum(pa[:, None, 2], pb[None, :, 2])
    iy2 = np.minimum(pa[:, None, 3], pb[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (pa[:, 2] - pa[:, 0]) * (pa[:, 3] - pa[:, 1])
    area_b = (pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou(a: Box, b: Box) -> float:
    return float(iou_matrix([a], [b])[0, 0])


def match_regions(
    a: Sequence[Region], b: Sequence[Region], iou_min: float = 0.5, same_label: bool = True
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU (highest first) of the regions' bounding boxes: (index in
    a, index in b, IoU) for pairs with IoU >= ``iou_min`` (and the same label when asked).
    Whole-image labels (no geometry) match by label alone."""
    ga = [i for i, r in enumerate(a) if r.geometry is not None]
    gb = [j for j, r in enumerate(b) if r.geometry is not None]
    m = iou_matrix([bounding_box(a[i].geometry) for i in ga], [bounding_box(b[j].geometry) for j in gb])
    if same_label and m.size:
        la = np.array([a[i].label for i in ga], dtype=object)
        lb = np.array([b[j].label for j in gb], dtype=object)
        m = np.where(la[:, None] == lb[None, :], m, 0.0)
    pairs: list[tuple[int, int, float]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for flat in np.argsort(-m, axis=None, kind="stable"):
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < iou_min or m[i, j] <= 0:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((ga[i], gb[j], float(m[i, j])))
    wa = [i for i, r in enumerate(a) if r.geometry is None]
    wb = [j for j, r in enumerate(b) if r.geometry is None]
    for i in wa:
        for j in wb:
            if j not in used_b and (not same_label or a[i].label == b[j].label):
                used_b.add(j)
                pairs.append((i, j, 1.0))
                break
    return pairs
