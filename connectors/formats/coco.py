"""COCO dicts (``images`` / ``annotations`` / ``categories``) <-> canonical items.

How each region kind is written (and recognised on the way back, in this order):

- keypoints: ``keypoints`` = ``[x, y, v] * n`` and ``num_keypoints``; ``bbox`` is the instance
  box (or the bounds of the visible points when the region has none). A visible point has
  ``v = 2``; a point not visible has ``v = 0`` with its coordinates kept (COCO's "not labelled";
  pycocotools ignores it). Read back, ``v > 0`` is visible (so 1, "occluded", becomes visible).
  Point names are the category's ``keypoints`` list;
- rotated box: ``bbox`` = the box before rotation and ``attributes.rotation`` in degrees clockwise
  about the centre (the convention of CVAT's and Datumaro's COCO), ``segmentation`` = its corners
  so that tools that know no rotation still see the right area;
- mask: ``segmentation`` = compressed RLE (pycocotools, exact); uncompressed RLE and multi-part
  polygons are read as masks too;
- polygon: ``segmentation`` = one polygon ``[[x1, y1, ...]]``;
- box: ``bbox`` ``[x, y, w, h]`` and an empty ``segmentation``;
- whole-image class labels have no place in COCO and raise ConfigError.

``score`` is written when present (COCO results style). What COCO has no field for (region
attributes, provenance, region id, per-class probabilities, and the image's sha256, group,
score, metadata) goes into an ``attributes`` dict (region attributes, as CVAT does) and one
``labelloop`` key per record, which other tools ignore; read back it is restored. Category ids
start at 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from labelloop.connectors.formats.canonical_json import provenance_from_dict, provenance_to_dict
from labelloop.connectors.formats.common import kind_error, label_id, label_name
from labelloop.errors import ConfigError
from labelloop.geometry import keypoints_box, polygon_box
from labelloop.types import (
    Box,
    Geometry,
    ImageItem,
    Keypoint,
    Keypoints,
    Mask,
    Polygon,
    Region,
    RotatedBox,
)

KINDS = ("box", "rotated_box", "polygon", "mask", "keypoints")
_EXTRA = "labelloop"


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE with ``counts`` as str, so it is JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(segmentation: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """Compressed or uncompressed RLE -> bool (height, width)."""
    size = [int(v) for v in segmentation.get("size", (height, width))]
    if size != [height, width]:
        raise ConfigError(f"RLE of size {size} does not match the image's {height}x{width} (h x w)")
    counts = segmentation["counts"]
    rle = mask_utils.frPyObjects(dict(segmentation), height, width) if isinstance(counts, list) else counts
    if isinstance(rle, str):
        rle = {"size": size, "counts": rle.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _xywh(b: Box) -> list[float]:
    return [float(b.x1), float(b.y1), float(b.w), float(b.h)]


def region_to_coco(region: Region, width: int, height: int) -> dict[str, Any]:
    """The geometry, score and extras of one annotation (no ids)."""
    g = region.geometry
    ann: dict[str, Any] = {"iscrowd": 0}
    attributes = dict(region.attributes)
    if isinstance(g, Keypoints):
        box = keypoints_box(g)
        ann["keypoints"] = [v for p in g.points for v in (float(p.x), float(p.y), 2 if p.visible else 0)]
        ann["num_keypoints"] = sum(p.visible for p in g.points)
        ann.update(bbox=_xywh(box), area=box.w * box.h, segmentation=[])
    elif isinstance(g, RotatedBox):
        corners = g.corners()
        attributes["rotation"] = float(g.angle)
        ann["bbox"] = [g.cx - g.w / 2, g.cy - g.h / 2, float(g.w), float(g.h)]
        ann.update(area=float(g.w * g.h), segmentation=[corners.ravel().tolist()])
    elif isinstance(g, Mask):
        if g.data.shape != (height, width):
            raise ConfigError(
                f"the mask labelled {region.label!r} is {g.data.shape[1]}x{g.data.shape[0]} "
                f"but its image is {width}x{height}"
            )
        rle = mask_to_rle(g.data)
        enc = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        ann.update(
            segmentation=rle,
            bbox=[float(v) for v in mask_utils.toBbox(enc)],
            area=float(mask_utils.area(enc)),
        )
    elif isinstance(g, Polygon):
        pts = np.asarray(g.points, dtype=float).reshape(-1, 2)
        if len(pts) < 3:
            raise ConfigError(f"the polygon labelled {region.label!r} has fewer than 3 points")
        ann.update(segmentation=[pts.ravel().tolist()], bbox=_xywh(polygon_box(pts)), area=_polygon_area(pts))
    elif isinstance(g, Box):
        ann.update(bbox=_xywh(g), area=float(g.w * g.h), segmentation=[])
    else:
        raise kind_error(region, "COCO", KINDS)
    ann["iscrowd"] = int(attributes.pop("iscrowd", 0))
    if region.score is not None:
        ann["score"] = float(region.score)
    if attributes:
        ann["attributes"] = attributes
    extra = {
        "provenance": provenance_to_dict(region.provenance),
        "id": region.id,
        "probs": region.probs,
    }
    extra = {k: v for k, v in extra.items() if v}
    if extra:
        ann[_EXTRA] = extra
    return ann


def item_to_coco(
    item: ImageItem,
    image_id: int,
    category_ids: Mapping[str, int],
    *,
    first_annotation_id: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One image record and its annotations (keypoint names live in the categories, see
    :func:`coco_categories`)."""
    image: dict[str, Any] = {
        "id": image_id,
        "file_name": item.uri,
        "width": item.width,
        "height": item.height,
    }
    extra = {"sha256": item.sha256, "group_id": item.group_id, "score": item.score, "metadata": item.metadata}
    extra = {k: v for k, v in extra.items() if v is not None and v != {}}
    if extra:
        image[_EXTRA] = extra
    anns = []
    for k, region in enumerate(item.regions):
        ann = {
            "id": first_annotation_id + k,
            "image_id": image_id,
            "category_id": label_id(region.label, category_ids, "COCO"),
        }
        ann.update(region_to_coco(region, item.width, item.height))
        anns.append(ann)
    return image, anns


def _geometry(ann: Mapping[str, Any], width: int, height: int, kpt_names: Sequence[str] | None) -> Geometry:
    bbox = ann.get("bbox")
    box = Box(bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]) if bbox else None
    seg = ann.get("segmentation")
    attrs = ann.get("attributes") or {}
    if ann.get("keypoints"):
        kp = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
        names = kpt_names if kpt_names is not None and len(kpt_names) == len(kp) else None
        return Keypoints(
            tuple(
                Keypoint(float(x), float(y), bool(v > 0), names[k] if names else None)
                for k, (x, y, v) in enumerate(kp)
            ),
            box,
        )
    if "rotation" in attrs and box is not None:
        return RotatedBox(
            (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2, box.w, box.h, float(attrs["rotation"])
        )
    if isinstance(seg, Mapping):
        return Mask(rle_to_mask(seg, width, height))
    if isinstance(seg, list) and len(seg) == 1:
        return Polygon(tuple((float(x), float(y)) for x, y in np.asarray(seg[0], dtype=float).reshape(-1, 2)))
    if isinstance(seg, list) and len(seg) > 1:
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        return Mask(mask_utils.decode(rle).astype(bool))
    if box is None:
        raise ConfigError(f"COCO annotation {ann.get('id')!r} has neither bbox, segmentation nor keypoints")
    return box


def coco_to_region(
    ann: Mapping[str, Any],
    width: int,
    height: int,
    category_names: Mapping[int, str],
    kpt_names: Mapping[int, Sequence[str]] | None = None,
) -> Region:
    if ann.get("category_id") is None:
        raise ConfigError(f"COCO annotation {ann.get('id')!r} has no category_id")
    cat = int(ann["category_id"])
    label = label_name(cat, category_names, f"COCO annotation {ann.get('id')!r}")
    geometry = _geometry(ann, width, height, (kpt_names or {}).get(cat))
    attributes = {k: v for k, v in (ann.get("attributes") or {}).items() if k != "rotation"}
    if ann.get("iscrowd"):
        attributes["iscrowd"] = int(ann["iscrowd"])
    extra = ann.get(_EXTRA) or {}
    return Region(
        label,
        geometry,
        score=ann.get("score"),
        probs=extra.get("probs"),
        provenance=provenance_from_dict(extra.get("provenance")),
        id=extra.get("id"),
        attributes=attributes,
    )


def _category_maps(categories: Iterable[Mapping[str, Any]]) -> tuple[dict[int, str], dict[int, list[str]]]:
    names = {int(c["id"]): str(c["name"]) for c in categories}
    kpts = {int(c["id"]): list(c["keypoints"]) for c in categories if c.get("keypoints")}
    return names, kpts


def coco_to_item(
    image: Mapping[str, Any],
    annotations: Iterable[Mapping[str, Any]],
    categories: Iterable[Mapping[str, Any]],
) -> ImageItem:
    """One image record and its annotations as an item."""
    names, kpts = _category_maps(categories)
    w, h = int(image["width"]), int(image["height"])
    extra = image.get(_EXTRA) or {}
    return ImageItem(
        uri=str(image.get("file_name", image.get("id"))),
        width=w,
        height=h,
        regions=[coco_to_region(a, w, h, names, kpts) for a in annotations],
        sha256=extra.get("sha256"),
        group_id=extra.get("group_id"),
        score=extra.get("score"),
        metadata=dict(extra.get("metadata") or {}),
    )


def coco_categories(items: Iterable[ImageItem], labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Categories (ids from 1 in ``labels`` order, or sorted labels), with the point names of
    keypoint classes when every instance names its points the same way."""
    items = list(items)
    labels = list(labels) if labels is not None else sorted({r.label for it in items for r in it.regions})
    cats: list[dict[str, Any]] = [
        {"id": i, "name": name, "supercategory": ""} for i, name in enumerate(labels, 1)
    ]
    by_name = {c["name"]: c for c in cats}
    for it in items:
        for r in it.regions:
            if not isinstance(r.geometry, Keypoints) or r.label not in by_name:
                continue
            pts = r.geometry.points
            kp_names = [p.name for p in pts]
            if any(n is None for n in kp_names):
                continue
            cat = by_name[r.label]
            if cat.setdefault("keypoints", kp_names) != kp_names:
                raise ConfigError(
                    f"keypoints of {r.label!r} in {it.uri!r} are named {kp_names}, "
                    f"elsewhere {cat['keypoints']}; COCO keeps one list per category"
                )
            cat.setdefault("skeleton", [])
    return cats


def items_to_coco(items: Iterable[ImageItem], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """A COCO dataset (or results with scores) of whole items; image ids from 1 in item order."""
    items = list(items)
    categories = coco_categories(items, labels)
    ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for i, it in enumerate(items, 1):
        image, anns = item_to_coco(it, i, ids, first_annotation_id=len(annotations) + 1)
        images.append(image)
        annotations += anns
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_to_items(coco: Mapping[str, Any]) -> list[ImageItem]:
    """Items of a COCO dict, in ``images`` order; annotations of unknown images raise."""
    for key in ("images", "categories"):
        if key not in coco:
            raise ConfigError(f"COCO data has no {key!r} list")
    images = list(coco["images"])
    by_image: dict[Any, list[Mapping[str, Any]]] = {img["id"]: [] for img in images}
    for ann in coco.get("annotations", []):
        if ann.get("image_id") not in by_image:
            raise ConfigError(
                f"COCO annotation {ann.get('id')!r} points at unknown image {ann.get('image_id')!r}"
            )
        by_image[ann["image_id"]].append(ann)
    categories = list(coco["categories"])
    return [coco_to_item(img, by_image[img["id"]], categories) for img in images]
