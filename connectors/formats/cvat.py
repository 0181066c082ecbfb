"""CVAT shapes and tags (as CVAT's REST API models them, v2.73) <-> canonical regions.

The dicts are ``LabeledShapeRequest`` / ``LabeledImageRequest`` bodies (and are read back from
``LabeledShape`` / ``LabeledImage`` ``to_dict()`` output or raw JSON):

- box -> ``rectangle``, ``points [x1, y1, x2, y2]``, ``rotation 0``; a rotated box -> the same
  with the box before rotation and ``rotation`` in degrees clockwise about its centre, 0..360.
  A rectangle read back with ``rotation 0`` is a :class:`Box`;
- polygon -> ``polygon`` with flat ``points``;
- mask -> ``mask``: ``points`` = run lengths over the mask's bounding box (row-major, starting
  with a run of 0s), then that box's ``[left, top, right, bottom]``, inclusive — cvat-sdk's
  ``cvat_sdk.masks`` codec, checked against CVAT's recorded annotations. Decoding needs the image
  size (``width``/``height``), since a canonical mask covers the whole image;
- keypoints -> ``skeleton`` whose ``elements`` are one ``points`` sub-shape per keypoint, when
  ``sublabel_ids`` (keypoint name -> sublabel id) is given; a point not visible is an element
  with ``outside: true`` (CVAT's "not there"; ``occluded`` is read as visible). Points without a
  name take the sublabels by position. Elements are read back in sublabel-id order. Without
  ``sublabel_ids`` keypoints become one ``points`` shape, which has no names and no visibility:
  a point that is not visible then raises ConfigError. CVAT has no instance box for keypoints;
  it is dropped;
- whole-image class -> a tag.

Machine-made labels: ``source`` is CVAT's own marker (``manual``, ``semi-auto``, ``auto``,
``file``, ``consensus``). Writing, a prelabel or pseudo-label gets ``auto``, a human label
``manual``, a synthetic one ``file``; a region read from CVAT keeps its original source (kept in
``attributes["cvat_source"]``) when that still means the same provenance. Reading,
:func:`source_of` decides, by :data:`SOURCE_TO_CANONICAL` (``auto`` -> PRELABEL, the rest -> HUMAN:
``semi-auto`` shapes are drawn by a person with an interactive tool, so a person decided them);
this is the only place that rule lives (the connector's push and pull use it).
``score`` carries the confidence of machine labels; CVAT stores 1.0 on human ones, which is read
as None (no confidence). Tags have no score in CVAT 2.73: a class region's score is not written.

Attributes need a spec on the CVAT label: ``attribute_ids`` (label -> attribute name -> spec id)
says which exist. CVAT answers every attribute of a shape's label, those never set at their
default (``""`` for a text attribute): an empty value is read as absent, so a person's shape does
not come back with ``model_version ""``. The provenance's ``model_version`` is written to the
label's ``model_version`` attribute when it has one; other region attributes with a spec are written as
strings (CVAT's values are strings), the rest are not written. Reading, ``attribute_names``
(spec id -> name) restores the names; unknown spec ids come back as ``cvat_attr_<id>``.
Region ids of the form ``cvat:shape:<n>`` / ``cvat:tag:<n>`` (what reading produces) are written
back as the object's ``id``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from cvat_sdk.masks import decode_mask, encode_mask

from labelloop.connectors.formats.common import kind_error, label_id, label_name
from labelloop.errors import ConfigError
from labelloop.types import (
    Box,
    Geometry,
    Keypoint,
    Keypoints,
    Mask,
    Polygon,
    Provenance,
    Region,
    RotatedBox,
    Source,
    normalize_angle,
)

SOURCE_TO_CANONICAL: dict[str, Source] = {
    "manual": Source.HUMAN,
    "semi-auto": Source.HUMAN,  # a person placed it with an interactor or tracker and kept it
    "auto": Source.PRELABEL,
    "file": Source.HUMAN,
    "consensus": Source.HUMAN,
}
CANONICAL_TO_SOURCE: dict[Source, str] = {
    Source.HUMAN: "manual",
    Source.PRELABEL: "auto",
    Source.PSEUDO: "auto",
    Source.SYNTHETIC: "file",
}
MODEL_VERSION_ATTRIBUTE = "model_version"
SOURCE_ATTRIBUTE = "cvat_source"
MACHINE_SOURCES = frozenset(k for k, v in SOURCE_TO_CANONICAL.items() if v is not Source.HUMAN)
"""CVAT ``source`` values that mean "machine-made, no person has touched it"."""
KINDS = ("box", "rotated_box", "polygon", "mask", "keypoints", "class")
_ID = re.compile(r"^cvat:(shape|tag):(\d+)$")


def source_of(obj: Mapping[str, Any]) -> Source:
    """Who made a CVAT shape or tag, by its ``source``: the one rule (unknown sources are human)."""
    return SOURCE_TO_CANONICAL.get(str(_value(obj.get("source")) or "manual"), Source.HUMAN)


def cvat_source(region: Region) -> str:
    """The ``source`` to write: the one read from CVAT if it still fits the provenance."""
    original = region.attributes.get(SOURCE_ATTRIBUTE)
    if isinstance(original, str) and SOURCE_TO_CANONICAL.get(original) == region.provenance.source:
        return original
    return CANONICAL_TO_SOURCE[region.provenance.source]


def _attributes(region: Region, spec_ids: Mapping[str, int]) -> list[dict[str, Any]]:
    values: dict[str, Any] = {k: v for k, v in region.attributes.items() if k != SOURCE_ATTRIBUTE}
    if region.provenance.model_version is not None:
        values[MODEL_VERSION_ATTRIBUTE] = region.provenance.model_version
    return [
        {"spec_id": int(spec_ids[name]), "value": _attr_str(value)}
        for name, value in values.items()
        if name in spec_ids
    ]


def _attr_str(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _score(region: Region) -> float | None:
    if region.score is None:
        return None
    s = float(region.score)
    if not 0.0 <= s <= 1.0:
        raise ConfigError(
            f"score {s} of the region labelled {region.label!r} is outside 0..1; CVAT refuses it"
        )
    return s


def _rectangle(g: Box | RotatedBox) -> tuple[list[float], float]:
    if isinstance(g, Box):
        return [float(g.x1), float(g.y1), float(g.x2), float(g.y2)], 0.0
    hw, hh = g.w / 2, g.h / 2
    return [g.cx - hw, g.cy - hh, g.cx + hw, g.cy + hh], normalize_angle(g.angle)


def _keypoint_elements(
    region: Region, kps: Keypoints, frame: int, sublabel_ids: Mapping[str, int], common: Mapping[str, Any]
) -> list[dict[str, Any]]:
    ordered = list(sublabel_ids.values())
    out = []
    for k, p in enumerate(kps.points):
        if p.name is not None:
            sub = label_id(p.name, sublabel_ids, f"CVAT skeleton {region.label!r} keypoint")
        elif len(ordered) == len(kps.points):
            sub = ordered[k]
        else:
            raise ConfigError(
                f"point {k} of {region.label!r} has no name and the skeleton has {len(ordered)} "
                f"keypoints, not {len(kps.points)}; name the points"
            )
        out.append(
            {
                **common,
                "type": "points",
                "frame": frame,
                "label_id": int(sub),
                "points": [float(p.x), float(p.y)],
                "outside": not p.visible,
                "attributes": [],
            }
        )
    return out


def region_to_cvat(
    region: Region,
    frame: int,
    label_ids: Mapping[str, int],
    *,
    sublabel_ids: Mapping[str, int] | None = None,
    attribute_ids: Mapping[str, Mapping[str, int]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """One region as ``("shape", dict)`` or ``("tag", dict)``."""
    common: dict[str, Any] = {"source": cvat_source(region), "group": 0}
    obj: dict[str, Any] = {
        **common,
        "frame": int(frame),
        "label_id": int(label_id(region.label, label_ids, "CVAT task")),
        "attributes": _attributes(region, (attribute_ids or {}).get(region.label, {})),
    }
    m = _ID.match(region.id or "")
    g = region.geometry
    if g is None:
        if m and m[1] == "tag":
            obj["id"] = int(m[2])
        return "tag", obj
    if m and m[1] == "shape":
        obj["id"] = int(m[2])
    score = _score(region)
    if score is not None:
        obj["score"] = score
        common["score"] = score
    obj.update(occluded=False, outside=False, z_order=0, rotation=0.0)
    if isinstance(g, Box | RotatedBox):
        obj["points"], obj["rotation"] = _rectangle(g)
        obj["type"] = "rectangle"
    elif isinstance(g, Polygon):
        if len(g.points) < 3:
            raise ConfigError(f"the polygon labelled {region.label!r} has fewer than 3 points")
        obj.update(type="polygon", points=[float(v) for xy in g.points for v in xy])
    elif isinstance(g, Mask):
        obj.update(type="mask", points=[float(v) for v in encode_mask(np.asarray(g.data, dtype=bool))])
    elif isinstance(g, Keypoints):
        if sublabel_ids:
            elements = _keypoint_elements(region, g, frame, sublabel_ids, common)
            obj.update(type="skeleton", points=[], elements=elements)
        else:
            hidden = [k for k, p in enumerate(g.points) if not p.visible]
            if hidden:
                raise ConfigError(
                    f"points {hidden} of {region.label!r} are not visible, which a CVAT points shape "
                    "cannot say; use a skeleton label (pass sublabel_ids)"
                )
            obj.update(type="points", points=[float(v) for p in g.points for v in (p.x, p.y)])
    else:  # pragma: no cover - Geometry is closed
        raise kind_error(region, "CVAT", KINDS)
    return "shape", obj


def regions_to_cvat(
    regions: Iterable[Region],
    frame: int,
    label_ids: Mapping[str, int],
    *,
    sublabel_ids: Mapping[str, int] | None = None,
    attribute_ids: Mapping[str, Mapping[str, int]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shapes and tags of one frame, ready for ``LabeledShapeRequest`` / ``LabeledImageRequest``."""
    shapes: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    for r in regions:
        kind, obj = region_to_cvat(
            r, frame, label_ids, sublabel_ids=sublabel_ids, attribute_ids=attribute_ids
        )
        (tags if kind == "tag" else shapes).append(obj)
    return shapes, tags


# ---------------------------------------------------------------------- CVAT -> canonical


def _value(v: Any) -> Any:
    """Enum-like sdk values (ShapeType) -> their plain value."""
    return getattr(v, "value", v)


def _read_attributes(
    obj: Mapping[str, Any], attribute_names: Mapping[int, str]
) -> tuple[dict[str, Any], str | None]:
    attrs: dict[str, Any] = {}
    for a in obj.get("attributes") or []:
        if a.get("value") in (None, ""):
            continue  # CVAT fills every attribute of the label, unset ones with "": absent, not a value
        spec = int(a["spec_id"])
        attrs[attribute_names.get(spec, f"cvat_attr_{spec}")] = a["value"]
    model_version = attrs.pop(MODEL_VERSION_ATTRIBUTE, None)
    return attrs, model_version


def _shape_geometry(
    shape: Mapping[str, Any],
    label_names: Mapping[int, str],
    width: int | None,
    height: int | None,
) -> Geometry:
    kind = _value(shape.get("type"))
    pts = [float(v) for v in shape.get("points") or []]
    where = f"CVAT shape {shape.get('id')!r} (frame {shape.get('frame')})"
    if kind == "rectangle":
        x1, y1, x2, y2 = pts
        rotation = float(shape.get("rotation") or 0.0)
        if math.isclose(normalize_angle(rotation), 0.0, abs_tol=1e-12):
            return Box(x1, y1, x2, y2)
        return RotatedBox((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, normalize_angle(rotation))
    if kind == "polygon":
        return Polygon(tuple(zip(pts[0::2], pts[1::2], strict=True)))
    if kind == "mask":
        if not width or not height:
            raise ConfigError(f"{where} is a mask; pass the image's width and height to read it")
        try:
            return Mask(decode_mask(pts, image_width=int(width), image_height=int(height)))
        except ValueError as e:
            raise ConfigError(f"{where}: mask does not fit a {width}x{height} image ({e})") from None
    if kind == "points":
        return Keypoints(tuple(Keypoint(x, y) for x, y in zip(pts[0::2], pts[1::2], strict=True)))
    if kind == "skeleton":
        elements = sorted(shape.get("elements") or [], key=lambda e: int(e["label_id"]))
        points = []
        for e in elements:
            x, y = (float(v) for v in e["points"][:2])
            name = label_names.get(int(e["label_id"]))  # None: a sublabel the caller did not list
            points.append(Keypoint(x, y, not bool(e.get("outside", False)), name))
        return Keypoints(tuple(points))
    raise ConfigError(
        f"{where} is a {kind!r}, which labelloop has no region for; "
        "redraw it as a rectangle, polygon, mask, points or skeleton"
    )


def cvat_to_region(
    obj: Mapping[str, Any],
    label_names: Mapping[int, str],
    *,
    is_tag: bool = False,
    width: int | None = None,
    height: int | None = None,
    attribute_names: Mapping[int, str] | None = None,
) -> Region:
    kind = "tag" if is_tag else "shape"
    label = label_name(int(obj["label_id"]), label_names, f"CVAT {kind} {obj.get('id')!r}")
    source_name = str(_value(obj.get("source")) or "manual")
    source = source_of(obj)
    attrs, model_version = _read_attributes(obj, attribute_names or {})
    attrs[SOURCE_ATTRIBUTE] = source_name
    geometry = None if is_tag else _shape_geometry(obj, label_names, width, height)
    score = obj.get("score") if source is not Source.HUMAN and not is_tag else None
    return Region(
        label,
        geometry,
        score=None if score is None else float(score),
        provenance=Provenance(source=source, model_version=model_version),
        id=f"cvat:{kind}:{obj['id']}" if obj.get("id") is not None else None,
        attributes=attrs,
    )


def cvat_to_regions(
    shapes: Iterable[Mapping[str, Any]],
    tags: Iterable[Mapping[str, Any]],
    label_names: Mapping[int, str],
    *,
    width: int | None = None,
    height: int | None = None,
    attribute_names: Mapping[int, str] | None = None,
) -> list[Region]:
    """Regions of one frame's shapes and tags, shapes first. ``label_names`` maps label ids, the
    skeleton sublabels' included, to names; ``width``/``height`` are needed for masks only."""
    kw: dict[str, Any] = {"width": width, "height": height, "attribute_names": attribute_names}
    return [cvat_to_region(s, label_names, **kw) for s in shapes] + [
        cvat_to_region(t, label_names, is_tag=True, **kw) for t in tags
    ]
