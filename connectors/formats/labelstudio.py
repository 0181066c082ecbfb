"""Label Studio JSON <-> canonical regions, and Label Studio label configs.

Label Studio stores geometry in percent of the image size; a rectangle's ``rotation`` turns it
clockwise about its own top-left corner (x, y), not its centre. Keypoints are one region per
point; the points of one predicted instance share an ``id`` prefix (``<instance>:kp<k>``) so they
can be grouped again on the way back. Brush masks use Label Studio's own RLE (RGBA, bit-packed).
"""

from __future__ import annotations

import math
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from labelloop.errors import ConfigError
from labelloop.geometry import keypoints_box
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
)

CONTROL_TAGS = ("RectangleLabels", "PolygonLabels", "BrushLabels", "KeyPointLabels", "Choices")
# What each model task can be drawn with, best first.
SERVES: dict[str, tuple[str, ...]] = {
    "detect": ("RectangleLabels", "PolygonLabels"),
    "obb": ("RectangleLabels", "PolygonLabels"),
    "segment": ("PolygonLabels", "BrushLabels", "RectangleLabels"),
    "pose": ("KeyPointLabels",),
    "classify": ("Choices",),
}


@dataclass(frozen=True)
class LabelDef:
    value: str
    predicted_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Control:
    tag: str  # e.g. "RectangleLabels"
    name: str
    to_name: str
    labels: tuple[LabelDef, ...]
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.tag.lower()

    @property
    def can_rotate(self) -> bool:
        return self.attrs.get("canRotate", "true").lower() != "false"


@dataclass(frozen=True)
class LabelConfig:
    controls: tuple[Control, ...]
    images: Mapping[str, str]  # <Image name> -> task data key (value="$image" -> "image")

    def describe(self) -> str:
        found = [f"<{c.tag} name={c.name!r} toName={c.to_name!r}>" for c in self.controls]
        return ", ".join(found) or "no labeling controls"


def parse_label_config(xml: str) -> LabelConfig:
    """Controls on images that labelloop can fill; anything else in the config is left alone."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ConfigError(f"label config is not valid XML: {e}") from e
    images = {
        el.get("name", ""): el.get("value", "").lstrip("$")
        for el in root.iter()
        if el.tag == "Image" and el.get("name") and el.get("value", "").startswith("$")
    }
    controls = []
    for el in root.iter():
        if el.tag not in CONTROL_TAGS or el.get("toName") not in images:
            continue
        labels = tuple(
            LabelDef(
                value=lab.get("value", ""),
                predicted_values=tuple(
                    v.strip() for v in (lab.get("predicted_values") or "").split(",") if v.strip()
                ),
            )
            for lab in el.iter()
            if lab.tag in ("Label", "Choice") and lab.get("value")
        )
        attrs = {k: v for k, v in el.attrib.items() if k not in ("name", "toName")}
        controls.append(Control(el.tag, el.get("name", ""), el.get("toName", ""), labels, attrs))
    return LabelConfig(tuple(controls), images)


def generate_label_config(
    task: str,
    labels: Sequence[str],
    *,
    image_key: str = "image",
    brush: bool = False,
    keypoint_labels: Sequence[str] = (),
) -> str:
    """A label config for a model task (the tag names follow ``SERVES``)."""
    if not labels:
        raise ConfigError("cannot generate a label config without labels")
    tag = {
        "detect": "RectangleLabels",
        "obb": "RectangleLabels",
        "pose": "RectangleLabels",
        "segment": "BrushLabels" if brush else "PolygonLabels",
        "classify": "Choices",
    }.get(task)
    if tag is None:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(SERVES)}")
    esc = _xml_attr
    child = "Choice" if tag == "Choices" else "Label"
    extra = ' choice="single"' if tag == "Choices" else ""
    lines = [
        f'<View>\n  <Image name="image" value="${esc(image_key)}"/>',
        f'  <{tag} name="label" toName="image"{extra}>',
    ]
    lines += [f'    <{child} value="{esc(lab)}"/>' for lab in labels]
    lines.append(f"  </{tag}>")
    if task == "pose":
        lines.append('  <KeyPointLabels name="keypoints" toName="image">')
        lines += [f'    <Label value="{esc(k)}"/>' for k in keypoint_labels]
        lines.append("  </KeyPointLabels>")
    lines.append("</View>")
    return "\n".join(lines)


def _xml_attr(s: str) -> str:
    return s.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- choosing controls, mapping labels


@dataclass(frozen=True)
class ControlPlan:
    """Which controls a model's output goes to. For pose, ``main`` draws the instance box (the
    keypoint control itself when the config has no rectangles) and ``keypoints`` the points."""

    main: Control
    keypoints: Control | None = None
    image_key: str = "image"


def label_resolver(control: Control, label_map: Mapping[str, str]) -> Callable[[str], str | None]:
    """Model class -> control label: settings mapping first, then ``predicted_values``, then the
    label's own name, compared case-insensitively (the usual cause of "predictions not shown")."""
    values = {lab.value.casefold(): lab.value for lab in control.labels}
    table: dict[str, str] = {}
    for lab in control.labels:
        table.setdefault(lab.value.casefold(), lab.value)
    for lab in control.labels:
        for pv in lab.predicted_values:
            table[pv.casefold()] = lab.value
    for cls, target in label_map.items():
        if target.casefold() in values:
            table[cls.casefold()] = values[target.casefold()]

    def resolve(name: str) -> str | None:
        return table.get(name.casefold())

    return resolve


def select_controls(config: LabelConfig, task: str) -> ControlPlan:
    """Pick the control(s) a ``task`` model fills, or say exactly what the config lacks."""
    wanted = SERVES.get(task)
    if wanted is None:
        raise ConfigError(f"unknown model task {task!r}; expected one of {sorted(SERVES)}")
    usable = [c for tag in wanted for c in config.controls if c.tag == tag and c.labels]
    if not usable:
        need = " or ".join(f"<{t}>" for t in wanted)
        raise ConfigError(
            f"the project's label config cannot take predictions from a {task!r} model: it needs a {need} "
            f"control with at least one <Label>/<Choice> and toName pointing at an <Image>; "
            f"found {config.describe()}"
        )
    first = usable[0]
    if task == "pose":
        rect = next((c for c in config.controls if c.tag == "RectangleLabels" and c.labels), None)
        return ControlPlan(main=rect or first, keypoints=first, image_key=config.images[first.to_name])
    return ControlPlan(main=first, image_key=config.images[first.to_name])


# ---------------------------------------------------------------- canonical -> Label Studio


def _pct(v: float, size: int) -> float:
    return v / size * 100.0


def _region_id() -> str:
    return uuid.uuid4().hex[:10]


def region_to_ls(
    region: Region, width: int, height: int, control: Control, label: str, rid: str | None = None
) -> list[dict]:
    """One canonical region as Label Studio result entries for ``control`` (keypoints give several)."""
    g = region.geometry
    base = {
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.type,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
    }
    if region.score is not None:
        base["score"] = float(region.score)
    rid = rid or region.id or _region_id()
    tag = control.tag
    if tag == "Choices":
        return [{**base, "id": rid, "value": {"choices": [label]}}]
    if tag == "KeyPointLabels":
        if not isinstance(g, Keypoints):
            raise ConfigError(
                f"<KeyPointLabels name={control.name!r}> can only take keypoints, not {region.kind}"
            )
        out = []
        for k, p in enumerate(g.points):
            if not p.visible:
                continue
            kp_label = p.name or label
            value = {
                "x": _pct(p.x, width),
                "y": _pct(p.y, height),
                "width": 0.5,
                "keypointlabels": [kp_label],
            }
            out.append({**base, "id": f"{rid}:kp{k}", "value": value})
        return out
    key = tag.lower()
    if tag == "RectangleLabels":
        value = _rect_value(g, width, height, control.can_rotate)
    elif tag == "PolygonLabels":
        pts = _as_polygon(g)
        value = {"points": [[_pct(x, width), _pct(y, height)] for x, y in pts], "closed": True}
    elif tag == "BrushLabels":
        value = {"format": "rle", "rle": mask_to_ls_rle(_as_mask(g, width, height))}
    else:  # pragma: no cover - parse_label_config only yields CONTROL_TAGS
        raise ConfigError(f"unsupported control <{tag}>")
    value[key] = [label]
    return [{**base, "id": rid, "value": value}]


def _rect_value(g: Geometry, width: int, height: int, can_rotate: bool) -> dict:
    if isinstance(g, Keypoints) and g.box is not None:
        g = g.box
    if isinstance(g, Polygon | Mask):
        g = _bounds(g, width, height)
    if isinstance(g, Box):
        return {
            "x": _pct(g.x1, width),
            "y": _pct(g.y1, height),
            "width": _pct(g.w, width),
            "height": _pct(g.h, height),
            "rotation": 0,
        }
    if isinstance(g, RotatedBox):
        if not can_rotate:
            c = g.corners()
            return _rect_value(Box(*c.min(0), *c.max(0)), width, height, False)
        x, y = g.corners()[0]
        return {
            "x": _pct(x, width),
            "y": _pct(y, height),
            "width": _pct(g.w, width),
            "height": _pct(g.h, height),
            "rotation": g.angle,
        }
    raise ConfigError(f"<RectangleLabels> cannot take a {type(g).__name__.lower()} region")


def _bounds(g: Polygon | Mask, width: int, height: int) -> Box:
    if isinstance(g, Polygon):
        p = np.asarray(g.points, dtype=float)
        return Box(*p.min(0), *p.max(0))
    ys, xs = np.nonzero(g.data)
    if not len(xs):
        return Box(0, 0, 0, 0)
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _as_polygon(g: Geometry) -> Sequence[tuple[float, float]]:
    if isinstance(g, Polygon):
        return g.points
    if isinstance(g, Box):
        return [(g.x1, g.y1), (g.x2, g.y1), (g.x2, g.y2), (g.x1, g.y2)]
    if isinstance(g, RotatedBox):
        return [tuple(p) for p in g.corners()]
    raise ConfigError(f"<PolygonLabels> cannot take a {type(g).__name__.lower()} region")


def _as_mask(g: Geometry, width: int, height: int) -> np.ndarray:
    if isinstance(g, Mask):
        return g.data
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in _as_polygon(g)], fill=1)
    return np.asarray(img, dtype=bool)


def mask_to_ls_rle(mask: np.ndarray) -> list[int]:
    from label_studio_sdk.converter.brush import mask2rle

    return [int(v) for v in mask2rle(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))]


def ls_rle_to_mask(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    flat = decode_rle(list(rle))
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def item_to_ls_prediction(
    item: ImageItem,
    plan: ControlPlan,
    model_version: str,
    label_map: Mapping[str, str] | None = None,
) -> tuple[dict, int]:
    """A Label Studio prediction for one image and how many regions had no matching label."""
    label_map = label_map or {}
    resolve_main = label_resolver(plan.main, label_map)
    result: list[dict] = []
    dropped = 0
    for region in item.regions:
        rid = region.id or _region_id()
        if plan.keypoints is not None and isinstance(region.geometry, Keypoints):
            box_label = None if plan.main is plan.keypoints else resolve_main(region.label)
            if box_label is not None:  # the box carries the instance's label (points carry their names)
                boxed = region.with_(geometry=keypoints_box(region.geometry))
                result += region_to_ls(boxed, item.width, item.height, plan.main, box_label, rid)
            points = _keypoints_for(region.geometry, plan.keypoints, label_map)
            if not points:
                dropped += 1
                continue
            kp_region = region.with_(geometry=Keypoints(points))
            result += region_to_ls(
                kp_region, item.width, item.height, plan.keypoints, points[0].name or "", rid
            )
            continue
        label = resolve_main(region.label)
        if label is None:
            dropped += 1
            continue
        result += region_to_ls(region, item.width, item.height, plan.main, label, rid)
    score = item.score if item.score is not None else 0.0
    return {"result": result, "score": float(score), "model_version": model_version}, dropped


def _keypoints_for(kps: Keypoints, control: Control, label_map: Mapping[str, str]) -> tuple[Keypoint, ...]:
    """Keypoints named by the control's labels: by name, or by position when the model's names
    don't match but the counts do (a config listing the skeleton's points in order)."""
    resolve = label_resolver(control, label_map)
    by_order = len(control.labels) == len(kps.points)
    out = []
    for k, p in enumerate(kps.points):
        name = resolve(p.name) if p.name else None
        if name is None and by_order:
            name = control.labels[k].value
        if name is not None:
            out.append(Keypoint(p.x, p.y, p.visible, name))
    return tuple(out)


# ---------------------------------------------------------------- Label Studio -> canonical

_KP_ID = re.compile(r"^(?P<inst>.+):kp(?P<k>\d+)$")


def ls_to_regions(results: Iterable[Mapping], provenance: Provenance | None = None) -> list[Region]:
    """Label Studio result entries (of an annotation or prediction) as canonical regions."""
    provenance = provenance or Provenance()
    regions: list[Region] = []
    kp_groups: dict[str, list[tuple[int, Keypoint, Mapping]]] = {}
    for r in results:
        value = r.get("value") or {}
        rtype = r.get("type", "")
        w, h = int(r.get("original_width") or 0), int(r.get("original_height") or 0)
        labels = value.get(rtype) or value.get("choices") or value.get("labels") or []
        if not labels:
            continue
        label = str(labels[0])
        score = r.get("score")
        if rtype in (
            "rectanglelabels",
            "rectangle",
            "polygonlabels",
            "polygon",
            "brushlabels",
            "brush",
            "keypointlabels",
            "keypoint",
        ) and not (w and h):
            raise ConfigError(
                f"result {r.get('id')!r} has no original_width/original_height; cannot place it"
            )
        geometry: Geometry
        if rtype in ("rectanglelabels", "rectangle"):
            geometry = _rect_from_ls(value, w, h)
        elif rtype in ("polygonlabels", "polygon"):
            geometry = Polygon(tuple((x / 100 * w, y / 100 * h) for x, y in value["points"]))
        elif rtype in ("brushlabels", "brush"):
            geometry = Mask(ls_rle_to_mask(value["rle"], w, h))
        elif rtype in ("keypointlabels", "keypoint"):
            kp = Keypoint(value["x"] / 100 * w, value["y"] / 100 * h, True, label)
            m = _KP_ID.match(str(r.get("id", "")))
            inst, k = (m["inst"], int(m["k"])) if m else (str(r.get("id") or _region_id()), 0)
            kp_groups.setdefault(inst, []).append((k, kp, r))
            continue
        elif rtype == "choices":
            geometry = None
        else:
            continue
        regions.append(Region(label, geometry, score=score, provenance=provenance, id=r.get("id")))
    boxes = {r.id: r for r in regions if isinstance(r.geometry, Box) and r.id in kp_groups}
    for inst, kps in kp_groups.items():
        kps.sort(key=lambda t: t[0])
        first = kps[0][2]
        points = tuple(kp for _, kp, _ in kps)
        box = boxes.get(inst)  # written with the points' instance id: the instance's label and box
        if box is not None:
            regions.remove(box)
            kp_region = box.with_(geometry=Keypoints(points, box.geometry))  # type: ignore[arg-type]
        else:
            label = str(((first.get("value") or {}).get("keypointlabels") or [""])[0])
            kp_region = Region(
                label, Keypoints(points), score=first.get("score"), provenance=provenance, id=inst
            )
        regions.append(kp_region)
    return regions


def _rect_from_ls(value: Mapping, w: int, h: int) -> Box | RotatedBox:
    x, y = value["x"] / 100 * w, value["y"] / 100 * h
    bw, bh = value["width"] / 100 * w, value["height"] / 100 * h
    rot = float(value.get("rotation") or 0.0)
    if math.isclose(rot % 360.0, 0.0, abs_tol=1e-9) or math.isclose(rot % 360.0, 360.0, abs_tol=1e-9):
        return Box(x, y, x + bw, y + bh)
    a = math.radians(rot)
    cx = x + (bw / 2) * math.cos(a) - (bh / 2) * math.sin(a)
    cy = y + (bw / 2) * math.sin(a) + (bh / 2) * math.cos(a)
    return RotatedBox(cx, cy, bw, bh, rot % 360.0)
