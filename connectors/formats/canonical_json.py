"""The canonical model as plain JSON: what ``labelloop pull`` writes and the dataset store reads.

Every field of :class:`~labelloop.types.ImageItem` survives a round trip exactly; masks are
stored as COCO compressed RLE (exact and compact), geometry is tagged by kind. Fields left at
their default are omitted so a dump of many items stays small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from labelloop.errors import ConfigError
from labelloop.types import (
    Box,
    Geometry,
    ImageItem,
    Keypoint,
    Keypoints,
    Mask,
    Polygon,
    Provenance,
    Region,
    RotatedBox,
    Source,
    kind_of,
)

_DEFAULT_PROVENANCE = Provenance()
_PROVENANCE_FIELDS = tuple(f.name for f in fields(Provenance))


def provenance_to_dict(p: Provenance) -> dict[str, Any]:
    # field by field, not dataclasses.asdict (which deep-copies): 17x faster, the same dict
    out: dict[str, Any] = {}
    for k in _PROVENANCE_FIELDS:
        v = getattr(p, k)
        if v != getattr(_DEFAULT_PROVENANCE, k):
            out[k] = str(v) if k == "source" else v
    return out


def provenance_from_dict(d: Mapping[str, Any] | None) -> Provenance:
    if not d:
        return Provenance()
    d = dict(d)
    if "source" in d:
        d["source"] = Source(d["source"])
    return Provenance(**d)


def geometry_to_dict(g: Geometry) -> dict[str, Any] | None:
    if g is None:
        return None
    kind = kind_of(g)
    if isinstance(g, Box):
        return {"kind": kind, "x1": g.x1, "y1": g.y1, "x2": g.x2, "y2": g.y2}
    if isinstance(g, RotatedBox):
        return {"kind": kind, "cx": g.cx, "cy": g.cy, "w": g.w, "h": g.h, "angle": g.angle}
    if isinstance(g, Polygon):
        return {"kind": kind, "points": [[x, y] for x, y in g.points]}
    if isinstance(g, Mask):
        rle = mask_utils.encode(np.asfortranarray(g.data.astype(np.uint8)))
        return {"kind": kind, "size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    points = [[p.x, p.y, p.visible, p.name] for p in g.points]
    box = geometry_to_dict(g.box) if g.box is not None else None
    return {"kind": kind, "points": points, "box": box}


def geometry_from_dict(d: Mapping[str, Any] | None) -> Geometry:
    if d is None:
        return None
    kind = d.get("kind")
    if kind == "box":
        return Box(d["x1"], d["y1"], d["x2"], d["y2"])
    if kind == "rotated_box":
        return RotatedBox(d["cx"], d["cy"], d["w"], d["h"], d["angle"])
    if kind == "polygon":
        return Polygon(tuple((x, y) for x, y in d["points"]))
    if kind == "mask":
        rle = {"size": list(d["size"]), "counts": d["counts"].encode("ascii")}
        return Mask(mask_utils.decode(rle).astype(bool))
    if kind == "keypoints":
        box = geometry_from_dict(d.get("box"))
        pts = tuple(Keypoint(x, y, bool(v), n) for x, y, v, n in d["points"])
        return Keypoints(pts, box if isinstance(box, Box) else None)
    raise ConfigError(f"unknown geometry kind {kind!r}; expected box, rotated_box, polygon, mask, keypoints")


def region_to_dict(r: Region) -> dict[str, Any]:
    out: dict[str, Any] = {"label": r.label, "geometry": geometry_to_dict(r.geometry)}
    for key, value in (("score", r.score), ("probs", r.probs), ("id", r.id)):
        if value is not None:
            out[key] = value
    if r.attributes:
        out["attributes"] = r.attributes
    prov = provenance_to_dict(r.provenance)
    if prov:
        out["provenance"] = prov
    return out


def region_from_dict(d: Mapping[str, Any]) -> Region:
    return Region(
        label=d["label"],
        geometry=geometry_from_dict(d.get("geometry")),
        score=d.get("score"),
        probs=d.get("probs"),
        provenance=provenance_from_dict(d.get("provenance")),
        id=d.get("id"),
        attributes=dict(d.get("attributes") or {}),
    )


def item_to_dict(item: ImageItem) -> dict[str, Any]:
    out: dict[str, Any] = {"uri": item.uri, "width": item.width, "height": item.height}
    out["regions"] = [region_to_dict(r) for r in item.regions]
    for key in ("sha256", "group_id", "score"):
        if getattr(item, key) is not None:
            out[key] = getattr(item, key)
    if item.metadata:
        out["metadata"] = item.metadata
    return out


def item_from_dict(d: Mapping[str, Any]) -> ImageItem:
    try:
        return ImageItem(
            uri=d["uri"],
            width=int(d["width"]),
            height=int(d["height"]),
            regions=[region_from_dict(r) for r in d.get("regions") or []],
            sha256=d.get("sha256"),
            group_id=d.get("group_id"),
            score=d.get("score"),
            metadata=dict(d.get("metadata") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"not a labelloop item ({type(e).__name__}: {e}): {str(dict(d))[:200]}") from e
