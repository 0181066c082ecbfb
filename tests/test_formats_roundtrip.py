"""Round trips between the canonical model and every format, and through every pair of formats.

Tolerances (pixels, for an image of W x H; masks are always compared exactly):

- YOLO txt: 6 decimals of normalised coordinates -> 1e-6 * max(W, H) for boxes, polygons and
  keypoints; 2e-5 * max(W, H) for obb corners (the angle is rebuilt from the first edge, so the
  error grows with the aspect ratio, kept <= 8 here); scores to 1e-6;
- COCO: float pixels -> 1e-6 px; RLE masks exact;
- CVAT: float pixels -> 1e-6 px; mask RLE exact;
- Label Studio: float percent -> 1e-6 px; brush RLE exact.

Each format keeps only some of a region (``Fmt.project`` says which: YOLO has no provenance,
CVAT has no score on human labels or tags, ...). The per-format property is
``roundtrip(r) == project(r)``; the pair property is ``B(A(r)) == B(r)`` compared on what both
keep, within the sum of both tolerances.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from cvat_sdk.api_client import models as cvat_models
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from labelloop.connectors.formats import coco, cvat, yolo
from labelloop.errors import ConfigError
from labelloop.geometry import keypoints_box
from labelloop.types import (
    Box,
    ImageItem,
    Keypoint,
    Keypoints,
    Mask,
    Polygon,
    Provenance,
    Region,
    RotatedBox,
    Source,
)

try:
    from labelloop.connectors.formats import labelstudio as ls
except ImportError:  # the lead's module; the LS round trips join in when it exists
    ls = None  # type: ignore[assignment]

LABELS = ["cat", "dog", "traffic light"]
KP_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "neck"]
CLASS_INDEX = {name: i for i, name in enumerate(LABELS)}
LABEL_IDS = {name: 10 + i for i, name in enumerate(LABELS)}
SUBLABEL_IDS = {name: 100 + k for k, name in enumerate(KP_NAMES)}
SPEC_IDS = {name: {"model_version": 200 + i, "note": 300 + i} for i, name in enumerate(LABELS)}
CVAT_NAMES = {v: k for k, v in (LABEL_IDS | SUBLABEL_IDS).items()}
CVAT_ATTR_NAMES = {i: n for specs in SPEC_IDS.values() for n, i in specs.items()}
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REFERENCE = Path("/work/shared/reference/cvat-2.73/annotations.json")

# ---------------------------------------------------------------------- comparing regions


def _corners(g: Box | RotatedBox) -> np.ndarray:
    if isinstance(g, RotatedBox):
        return g.corners()
    return np.array([[g.x1, g.y1], [g.x2, g.y1], [g.x2, g.y2], [g.x1, g.y2]], dtype=float)


def assert_geometry_close(a: object, b: object, tol: float) -> None:
    """Box and RotatedBox compare by corners (an unrotated rotated box *is* a box)."""
    if isinstance(a, Box | RotatedBox) and isinstance(b, Box | RotatedBox):
        np.testing.assert_allclose(_corners(a), _corners(b), rtol=0, atol=tol)
    elif isinstance(a, Polygon) and isinstance(b, Polygon):
        np.testing.assert_allclose(np.array(a.points), np.array(b.points), rtol=0, atol=tol)
    elif isinstance(a, Mask) and isinstance(b, Mask):
        assert a.data.shape == b.data.shape and np.array_equal(a.data, b.data)
    elif isinstance(a, Keypoints) and isinstance(b, Keypoints):
        assert [(p.visible, p.name) for p in a.points] == [(p.visible, p.name) for p in b.points]
        np.testing.assert_allclose(
            [(p.x, p.y) for p in a.points], [(p.x, p.y) for p in b.points], rtol=0, atol=tol
        )
        assert (a.box is None) == (b.box is None)
        if a.box is not None:
            assert_geometry_close(a.box, b.box, tol)
    else:
        assert a is None and b is None, f"{a!r} != {b!r}"


def assert_region_close(a: Region, b: Region, tol: float, score_tol: float = 1e-9) -> None:
    assert a.label == b.label
    assert_geometry_close(a.geometry, b.geometry, tol)
    assert (a.score is None) == (b.score is None), (a.score, b.score)
    if a.score is not None:
        assert abs(a.score - b.score) <= score_tol  # type: ignore[operator]
    assert a.provenance == b.provenance
    assert a.id == b.id
    assert a.attributes == b.attributes
    assert a.probs == b.probs


# ---------------------------------------------------------------------- the formats under test


@dataclass(frozen=True)
class Fmt:
    name: str
    kinds: frozenset[str]
    roundtrip: Callable[[Region, int, int], Region]  # canonical -> format -> canonical
    project: Callable[[Region], Region]  # what of a region the format keeps
    tol: Callable[[str, int, int], float]  # geometry tolerance by kind and image size
    score_tol: float = 1e-9


def _bare(r: Region) -> Region:
    return r.with_(provenance=Provenance(), id=None, attributes={}, probs=None)


def _with_box(r: Region) -> Region:
    g = r.geometry
    return r.with_(geometry=replace(g, box=keypoints_box(g))) if isinstance(g, Keypoints) else r


def _yolo_rt(r: Region, w: int, h: int) -> Region:
    if r.geometry is None:
        path = yolo.classify_relpath([r], "img.jpg", split="train")
        [back] = yolo.classify_regions(path, names=LABELS)
        return back
    task = {"box": "detect", "rotated_box": "obb", "polygon": "segment", "keypoints": "pose"}[r.kind]
    kpt_shape = kpt_names = None
    if isinstance(r.geometry, Keypoints):
        kpt_shape = (len(r.geometry.points), 3)
        kpt_names = [p.name or "" for p in r.geometry.points]
    lines = yolo.regions_to_yolo_lines([r], w, h, CLASS_INDEX, task, kpt_shape=kpt_shape, with_score=True)
    [back] = yolo.yolo_lines_to_regions(lines, w, h, LABELS, task, kpt_shape=kpt_shape, kpt_names=kpt_names)
    return back


def _yolo_tol(kind: str, w: int, h: int) -> float:
    return (2e-5 if kind == "rotated_box" else 1e-6) * max(w, h)


def _yolo_project(r: Region) -> Region:
    r = _with_box(_bare(r))
    return r.with_(score=None) if r.geometry is None else r


def _coco_rt(r: Region, w: int, h: int) -> Region:
    data = coco.items_to_coco([ImageItem("img.jpg", w, h, [r])], labels=LABELS)
    data = json.loads(json.dumps(data))  # what a file holds
    [item] = coco.coco_to_items(data)
    [back] = item.regions
    return back


def _cvat_rt(r: Region, w: int, h: int) -> Region:
    shapes, tags = cvat.regions_to_cvat([r], 7, LABEL_IDS, sublabel_ids=SUBLABEL_IDS, attribute_ids=SPEC_IDS)
    for s in shapes:  # what the API accepts, and what it answers with
        cvat_models.LabeledShapeRequest(**s)
    shapes = [cvat_models.LabeledShape(**s).to_dict() for s in shapes]
    tags = [cvat_models.LabeledImage(**t).to_dict() for t in tags]
    [back] = cvat.cvat_to_regions(
        shapes, tags, CVAT_NAMES, width=w, height=h, attribute_names=CVAT_ATTR_NAMES
    )
    assert back.attributes.pop(cvat.SOURCE_ATTRIBUTE) == cvat.cvat_source(r)
    return back


def _cvat_project(r: Region) -> Region:
    source = cvat.SOURCE_TO_CANONICAL[cvat.CANONICAL_TO_SOURCE[r.provenance.source]]
    machine = source is not Source.HUMAN
    attrs = {k: str(v) for k, v in r.attributes.items() if k == "note"}
    g = r.geometry
    return r.with_(
        geometry=replace(g, box=None) if isinstance(g, Keypoints) else g,
        score=r.score if machine and g is not None else None,
        provenance=Provenance(source=source, model_version=r.provenance.model_version),
        id=None,
        attributes=attrs,
        probs=None,
    )


FORMATS: list[Fmt] = [
    Fmt(
        "yolo",
        frozenset({"box", "rotated_box", "polygon", "keypoints", "class"}),
        _yolo_rt,
        _yolo_project,
        _yolo_tol,
        score_tol=1e-6,
    ),
    Fmt(
        "coco",
        frozenset({"box", "rotated_box", "polygon", "mask", "keypoints"}),
        _coco_rt,
        _with_box,
        lambda kind, w, h: 1e-6,
    ),
    Fmt(
        "cvat",
        frozenset({"box", "rotated_box", "polygon", "mask", "keypoints", "class"}),
        _cvat_rt,
        _cvat_project,
        lambda kind, w, h: 1e-6,
    ),
]

if ls is not None:
    _LS_TAG = {
        "box": "RectangleLabels",
        "rotated_box": "RectangleLabels",
        "polygon": "PolygonLabels",
        "mask": "BrushLabels",
        "class": "Choices",
    }

    _LS_POSE = ls.ControlPlan(
        ls.Control("RectangleLabels", "label", "image", tuple(ls.LabelDef(x) for x in LABELS)),
        ls.Control("KeyPointLabels", "kp", "image", tuple(ls.LabelDef(x) for x in KP_NAMES)),
    )

    def _ls_rt(r: Region, w: int, h: int) -> Region:
        if isinstance(r.geometry, Keypoints):
            # KeyPointLabels have no visibility: hidden points are not written (see _ls_project)
            assume(any(p.visible for p in r.geometry.points))
            pred, dropped = ls.item_to_ls_prediction(ImageItem("x", w, h, [r]), _LS_POSE, "v1")
            assert dropped == 0
            results = pred["result"]
        else:
            control = ls.Control(_LS_TAG[r.kind], "label", "image", tuple(ls.LabelDef(x) for x in LABELS))
            results = ls.region_to_ls(r, w, h, control, r.label)
        [back] = ls.ls_to_regions(json.loads(json.dumps(results)))
        return back.with_(id=None) if r.id is None else back  # LS makes up an id when none is given

    def _ls_project(r: Region) -> Region:
        """The instance box (the points' bounds when there is none) carries the instance's label;
        points that are not visible are not kept."""
        g = r.geometry
        if isinstance(g, Keypoints):
            g = Keypoints(tuple(p for p in g.points if p.visible), keypoints_box(g))
        return r.with_(geometry=g, provenance=Provenance(), attributes={}, probs=None)

    FORMATS.append(
        Fmt(
            "labelstudio",
            frozenset({*_LS_TAG, "keypoints"}),
            _ls_rt,
            _ls_project,
            lambda kind, w, h: 1e-6,
        )
    )

BY_NAME = {f.name: f for f in FORMATS}
ALL_KINDS = ("box", "rotated_box", "polygon", "mask", "keypoints", "class")

# ---------------------------------------------------------------------- strategies


@st.composite
def image_sizes(draw: st.DrawFn, kind: str) -> tuple[int, int]:
    hi = 48 if kind == "mask" else 2000
    return draw(st.integers(8, hi)), draw(st.integers(8, hi))


def coords(limit: int) -> st.SearchStrategy[float]:
    return st.floats(0, limit, allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw: st.DrawFn, w: int, h: int) -> Box:
    x1, x2 = sorted((draw(coords(w)), draw(coords(w))))
    y1, y2 = sorted((draw(coords(h)), draw(coords(h))))
    return Box(x1, y1, x2, y2)


@st.composite
def rotated_boxes(draw: st.DrawFn, w: int, h: int) -> RotatedBox:
    """Any angle; the whole box stays inside the image whatever the angle."""
    cx = draw(st.floats(0.2 * w, 0.8 * w))
    cy = draw(st.floats(0.2 * h, 0.8 * h))
    radius = min(cx, w - cx, cy, h - cy)
    size = draw(st.floats(0.1, 1.0)) * 2 * radius
    aspect = draw(st.floats(1.0, 8.0))
    bw, bh = size * math.cos(math.atan(1 / aspect)), size * math.sin(math.atan(1 / aspect))
    if draw(st.booleans()):
        bw, bh = bh, bw
    angle = draw(st.floats(0, 360, exclude_max=True))
    return RotatedBox(cx, cy, bw, bh, angle)


@st.composite
def polygons(draw: st.DrawFn, w: int, h: int) -> Polygon:
    n = draw(st.integers(3, 10))
    return Polygon(tuple((draw(coords(w)), draw(coords(h))) for _ in range(n)))


@st.composite
def masks(draw: st.DrawFn, w: int, h: int) -> Mask:
    data = draw(hnp.arrays(np.bool_, (h, w)))
    if not data.any():
        data[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return Mask(data)


@st.composite
def keypoint_sets(draw: st.DrawFn, w: int, h: int) -> Keypoints:
    n = draw(st.integers(1, len(KP_NAMES)))
    points = tuple(
        Keypoint(draw(coords(w)), draw(coords(h)), draw(st.booleans()), KP_NAMES[k]) for k in range(n)
    )
    box = draw(st.none() | boxes(w, h))
    return Keypoints(points, box)


def geometries(kind: str, w: int, h: int) -> st.SearchStrategy:
    return {
        "box": boxes(w, h),
        "rotated_box": rotated_boxes(w, h),
        "polygon": polygons(w, h),
        "mask": masks(w, h),
        "keypoints": keypoint_sets(w, h),
        "class": st.none(),
    }[kind]


@st.composite
def provenances(draw: st.DrawFn) -> Provenance:
    return Provenance(
        source=draw(st.sampled_from(list(Source))),
        model_version=draw(st.none() | st.sampled_from(["yolov8n-3", "v12"])),
    )


@st.composite
def regions(draw: st.DrawFn, kind: str, w: int, h: int) -> Region:
    return Region(
        draw(st.sampled_from(LABELS)),
        draw(geometries(kind, w, h)),
        score=draw(st.none() | st.floats(0, 1)),
        provenance=draw(provenances()),
        id=draw(st.none() | st.sampled_from(["r1", "abc"])),
        attributes=draw(st.sampled_from([{}, {"note": "blurry"}])),
    )


# ---------------------------------------------------------------------- properties

SINGLE = [(f.name, k) for f in FORMATS for k in ALL_KINDS if k in f.kinds]
PAIRS = [
    (a.name, b.name, k)
    for a, b in itertools.permutations(FORMATS, 2)
    for k in ALL_KINDS
    if k in a.kinds and k in b.kinds
]


@pytest.mark.parametrize(("fmt_name", "kind"), SINGLE)
@SETTINGS
@given(data=st.data())
def test_roundtrip_keeps_what_the_format_holds(fmt_name: str, kind: str, data: st.DataObject) -> None:
    fmt = BY_NAME[fmt_name]
    w, h = data.draw(image_sizes(kind))
    r = data.draw(regions(kind, w, h))
    back = fmt.roundtrip(r, w, h)
    assert_region_close(back, fmt.project(r), fmt.tol(kind, w, h), fmt.score_tol)


@pytest.mark.parametrize(("a_name", "b_name", "kind"), PAIRS)
@SETTINGS
@given(data=st.data())
def test_through_a_then_b_equals_b(a_name: str, b_name: str, kind: str, data: st.DataObject) -> None:
    a, b = BY_NAME[a_name], BY_NAME[b_name]
    w, h = data.draw(image_sizes(kind))
    r = data.draw(regions(kind, w, h))
    via_a = b.roundtrip(a.roundtrip(r, w, h), w, h)
    direct = b.roundtrip(r, w, h)

    def both(x: Region) -> Region:
        return b.project(a.project(x))

    tol = a.tol(kind, w, h) + b.tol(kind, w, h)
    assert_region_close(both(via_a), both(direct), tol, a.score_tol + b.score_tol)


def test_every_kind_has_a_pair() -> None:
    """Each region kind goes through at least two formats (so the pair tests cover it)."""
    assert {k for _, _, k in PAIRS} == set(ALL_KINDS)


# ---------------------------------------------------------------------- whole items


def mixed_item() -> ImageItem:
    m = np.zeros((40, 60), dtype=bool)
    m[5:20, 10:30] = True
    prelabel = Provenance(Source.PRELABEL, model_version="yolov8n-7")
    return ImageItem(
        "images/a.jpg",
        60,
        40,
        [
            Region("cat", Box(1.5, 2.25, 30.0, 20.0), score=0.9, provenance=prelabel),
            Region("dog", RotatedBox(30, 20, 10, 6, 33.3), score=0.4, provenance=prelabel),
            Region("cat", Polygon(((1, 1), (20, 3), (9.5, 17.25)))),
            Region("dog", Mask(m), score=0.75, provenance=prelabel),
            Region(
                "traffic light",
                Keypoints((Keypoint(3, 4, True, "nose"), Keypoint(5, 6, False, "left_eye")), Box(2, 3, 6, 7)),
            ),
        ],
        sha256="ab" * 32,
        group_id="scene-1",
        score=0.4,
        metadata={"camera": "front"},
    )


def test_coco_dataset_roundtrip_is_exact() -> None:
    items = [mixed_item(), ImageItem("images/empty.jpg", 10, 10)]
    data = json.loads(json.dumps(coco.items_to_coco(items)))
    assert [c["name"] for c in data["categories"]] == sorted(LABELS)
    kp_cat = next(c for c in data["categories"] if c["name"] == "traffic light")
    assert kp_cat["keypoints"] == ["nose", "left_eye"]
    back = coco.coco_to_items(data)
    assert len(back) == 2 and back[1].regions == [] and back[1].uri == "images/empty.jpg"
    assert back[0] == items[0]


def test_coco_output_is_readable_by_pycocotools() -> None:
    from pycocotools.coco import COCO

    item = mixed_item()
    data = coco.items_to_coco([item])
    api = COCO()
    api.dataset = json.loads(json.dumps(data))
    api.createIndex()
    anns = api.loadAnns(api.getAnnIds(imgIds=[1]))
    assert len(anns) == 5
    mask_ann = anns[3]
    assert np.array_equal(api.annToMask(mask_ann).astype(bool), item.regions[3].geometry.data)  # type: ignore[union-attr]
    assert mask_ann["area"] == item.regions[3].geometry.data.sum()  # type: ignore[union-attr]
    assert mask_ann["bbox"] == [10.0, 5.0, 20.0, 15.0]
    assert anns[1]["attributes"] == {"rotation": 33.3}
    assert anns[4]["keypoints"] == [3.0, 4.0, 2, 5.0, 6.0, 0] and anns[4]["num_keypoints"] == 1
    assert anns[0]["score"] == 0.9 and "score" not in anns[2]


def test_coco_reads_multipart_polygons_and_uncompressed_rle_as_masks() -> None:
    from pycocotools import mask as mask_utils

    cats = [{"id": 1, "name": "cat"}]
    image = {"id": 1, "file_name": "x.png", "width": 20, "height": 10}
    parts = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "segmentation": [[1, 1, 5, 1, 5, 5], [10, 1, 15, 1, 15, 6]],
    }
    m = np.zeros((10, 20), dtype=bool)
    m[2:4, 3:9] = True
    flat = m.ravel(order="F")  # uncompressed RLE: column-major runs, starting with zeros
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat.astype(int))) + 1, [flat.size]])
    runs = ([0] if flat[0] else []) + np.diff(edges).tolist()
    rle = {"id": 2, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 20], "counts": runs}}
    item = coco.coco_to_item(image, [parts, rle], cats)
    g0, g1 = item.regions[0].geometry, item.regions[1].geometry
    assert isinstance(g0, Mask) and isinstance(g1, Mask)
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts["segmentation"], 10, 20)))
    assert np.array_equal(g0.data, expected.astype(bool))
    assert np.array_equal(g1.data, m)


def test_cvat_item_regions_validate_against_the_sdk_models() -> None:
    item = mixed_item()
    regions = [*item.regions, Region("cat", None, provenance=Provenance(Source.PRELABEL, "v3"))]
    shapes, tags = cvat.regions_to_cvat(
        regions, 3, LABEL_IDS, sublabel_ids=SUBLABEL_IDS, attribute_ids=SPEC_IDS
    )
    assert [s["type"] for s in shapes] == ["rectangle", "rectangle", "polygon", "mask", "skeleton"]
    for s in shapes:
        assert set(s) <= set(cvat_models.LabeledShapeRequest.attribute_map)  # nothing the API ignores
        for e in s.get("elements", []):
            assert set(e) <= set(cvat_models.SubLabeledShapeRequest.attribute_map)
        cvat_models.LabeledShapeRequest(**s)
    for t in tags:
        assert set(t) <= set(cvat_models.LabeledImageRequest.attribute_map)
        cvat_models.LabeledImageRequest(**t)
    cvat_models.PatchedLabeledDataRequest(shapes=shapes, tags=tags)
    assert shapes[0]["source"] == "auto" and shapes[0]["score"] == 0.9
    assert shapes[0]["attributes"] == [{"spec_id": SPEC_IDS["cat"]["model_version"], "value": "yolov8n-7"}]
    assert shapes[2]["source"] == "manual" and "score" not in shapes[2]
    assert shapes[1]["rotation"] == pytest.approx(33.3) and shapes[1]["points"] == [25, 17, 35, 23]
    assert shapes[3]["points"][-4:] == [10, 5, 29, 19]  # mask box, inclusive
    assert [e["outside"] for e in shapes[4]["elements"]] == [False, True]
    assert tags == [
        {
            "source": "auto",
            "group": 0,
            "frame": 3,
            "label_id": LABEL_IDS["cat"],
            "attributes": [{"spec_id": SPEC_IDS["cat"]["model_version"], "value": "v3"}],
        }
    ]
    back = cvat.cvat_to_regions(
        shapes, tags, CVAT_NAMES, width=60, height=40, attribute_names=CVAT_ATTR_NAMES
    )
    assert [r.provenance.model_version for r in back] == ["yolov8n-7"] * 2 + [None] + [
        "yolov8n-7",
        None,
        "v3",
    ]


def _recorded_objects() -> list[tuple[str, dict]]:
    data = json.loads(REFERENCE.read_text())
    out = []
    for section in data.values():
        for ann in section.values():
            out += [("shape", s) for s in ann["shapes"]] + [("tag", t) for t in ann["tags"]]
    return out


@pytest.mark.skipif(not REFERENCE.exists(), reason="CVAT reference recordings not present")
def test_cvat_recorded_annotations_read_and_write_back() -> None:
    """Every recorded shape of a kind labelloop has comes back from canonical as CVAT wrote it."""
    seen = set()
    for kind, obj in _recorded_objects():
        if kind == "shape" and obj["type"] not in ("rectangle", "polygon", "mask", "points", "skeleton"):
            with pytest.raises(ConfigError, match=obj["type"]):
                cvat.cvat_to_regions([obj], [], {obj["label_id"]: "x"}, width=800, height=600)
            continue
        names = {obj["label_id"]: "x"} | {e["label_id"]: f"k{e['label_id']}" for e in obj.get("elements", [])}
        shapes, tags = ([obj], []) if kind == "shape" else ([], [obj])
        [r] = cvat.cvat_to_regions(shapes, tags, names, width=800, height=600)
        seen.add(r.kind)
        assert r.provenance.source is cvat.SOURCE_TO_CANONICAL[obj["source"]]
        assert r.id == f"cvat:{kind}:{obj['id']}"
        ids = {"x": obj["label_id"]}
        subs = {f"k{e['label_id']}": e["label_id"] for e in obj.get("elements", [])}
        s2, t2 = cvat.regions_to_cvat([r], obj["frame"], ids, sublabel_ids=subs or None)
        [again] = s2 or t2
        assert again["id"] == obj["id"] and again["source"] == obj["source"]
        if kind == "tag":
            continue
        if obj["type"] == "mask":  # re-encoded over the tight box: same pixels
            from cvat_sdk.masks import decode_mask

            assert np.array_equal(
                decode_mask(again["points"], image_width=800, image_height=600),
                decode_mask(obj["points"], image_width=800, image_height=600),
            )
        else:
            assert again["type"] == obj["type"]
            np.testing.assert_allclose(again["points"], obj["points"], atol=1e-9)
            assert again["rotation"] == pytest.approx(obj["rotation"])
        for e_again, e in zip(
            again.get("elements", []), sorted(obj["elements"], key=lambda e: e["label_id"]), strict=True
        ):
            assert e_again["outside"] == e["outside"] and e_again["label_id"] == e["label_id"]
    assert seen == {"box", "rotated_box", "polygon", "mask", "keypoints", "class"}


@pytest.mark.parametrize(
    ("source", "canonical"),
    [
        ("manual", Source.HUMAN),
        ("auto", Source.PRELABEL),
        ("semi-auto", Source.HUMAN),  # drawn by a person with an interactive tool
        ("file", Source.HUMAN),
        ("consensus", Source.HUMAN),
    ],
)
def test_cvat_source_maps_to_provenance_and_back(source: str, canonical: Source) -> None:
    shape = {
        "type": "rectangle",
        "frame": 0,
        "label_id": 10,
        "points": [1, 2, 3, 4],
        "source": source,
        "score": 0.25,
    }
    [r] = cvat.cvat_to_regions([shape], [], CVAT_NAMES)
    assert r.provenance.source is canonical
    assert r.score == (
        None if canonical is Source.HUMAN else 0.25
    )  # CVAT's 1.0 on human shapes is no confidence
    [s], _ = cvat.regions_to_cvat([r], 0, LABEL_IDS)
    assert s["source"] == source  # the original source survives a pull and a push back
    [fresh], _ = cvat.regions_to_cvat([r.with_(attributes={})], 0, LABEL_IDS)
    assert fresh["source"] == cvat.CANONICAL_TO_SOURCE[canonical]


def test_cvat_unnamed_points_take_sublabels_by_position_and_points_shape_refuses_hidden() -> None:
    kps = Keypoints((Keypoint(1, 2), Keypoint(3, 4, False)))
    [s], _ = cvat.regions_to_cvat([Region("cat", kps)], 0, LABEL_IDS, sublabel_ids={"a": 5, "b": 6})
    assert [e["label_id"] for e in s["elements"]] == [5, 6]
    with pytest.raises(ConfigError, match="not visible"):
        cvat.regions_to_cvat([Region("cat", kps)], 0, LABEL_IDS)
    [p], _ = cvat.regions_to_cvat([Region("cat", Keypoints((Keypoint(1, 2), Keypoint(3, 4))))], 0, LABEL_IDS)
    assert p["type"] == "points" and p["points"] == [1, 2, 3, 4]


def test_cvat_mask_needs_image_size_and_score_must_be_a_probability() -> None:
    m = np.zeros((5, 5), dtype=bool)
    m[1, 1] = True
    [s], _ = cvat.regions_to_cvat([Region("cat", Mask(m))], 0, LABEL_IDS)
    with pytest.raises(ConfigError, match="width and height"):
        cvat.cvat_to_regions([s], [], CVAT_NAMES)
    with pytest.raises(ConfigError, match=r"outside 0\.\.1"):
        cvat.regions_to_cvat([Region("cat", Box(0, 0, 1, 1), score=1.5)], 0, LABEL_IDS)


# ---------------------------------------------------------------------- YOLO specifics


def test_yolo_lines_look_like_ultralytics() -> None:
    r = Region("dog", Box(10, 20, 50, 60), score=0.8765432)
    assert yolo.regions_to_yolo_lines([r], 100, 200, CLASS_INDEX, "detect") == [
        "1 0.300000 0.200000 0.400000 0.200000"
    ]
    [line] = yolo.regions_to_yolo_lines([r], 100, 200, CLASS_INDEX, "detect", with_score=True)
    assert line.endswith(" 0.876543")
    [back] = yolo.yolo_lines_to_regions([line, "", "  "], 100, 200, LABELS, "detect")
    assert back.score == pytest.approx(0.876543)
    obb = yolo.regions_to_yolo_lines([r], 100, 200, CLASS_INDEX, "obb")
    assert obb == ["1 0.100000 0.100000 0.500000 0.100000 0.500000 0.300000 0.100000 0.300000"]


def test_yolo_pose_visibility_and_two_dims() -> None:
    kps = Keypoints((Keypoint(10, 10, True), Keypoint(20, 30, False)), None)
    r = Region("cat", kps)
    [line] = yolo.regions_to_yolo_lines([r], 100, 100, CLASS_INDEX, "pose")
    # no box given: the visible points' bounds (a single point here)
    assert (
        line == "0 0.100000 0.100000 0.000000 0.000000 0.100000 0.100000 2.000000 0.200000 0.300000 0.000000"
    )
    with pytest.raises(ConfigError, match=r"kpt_shape \[2, 3\]"):
        yolo.regions_to_yolo_lines([r], 100, 100, CLASS_INDEX, "pose", kpt_shape=(2, 2))
    with pytest.raises(ConfigError, match="kpt_shape says 3"):
        yolo.regions_to_yolo_lines([r], 100, 100, CLASS_INDEX, "pose", kpt_shape=(3, 3))
    visible = Region("cat", Keypoints((Keypoint(10, 10), Keypoint(20, 30)), Box(5, 5, 25, 35)))
    lines = yolo.regions_to_yolo_lines([visible], 100, 100, CLASS_INDEX, "pose", kpt_shape=(2, 2))
    [back] = yolo.yolo_lines_to_regions(lines, 100, 100, LABELS, "pose", kpt_shape=(2, 2))
    assert_region_close(back, visible, 1e-4)
    with pytest.raises(ConfigError, match="needs kpt_shape"):
        yolo.yolo_lines_to_regions(lines, 100, 100, LABELS, "pose")


def test_yolo_mask_becomes_its_largest_outer_contour() -> None:
    import cv2

    m = np.zeros((40, 50), dtype=bool)
    cv2.circle(m.view(np.uint8), (20, 18), 12, 1, -1)
    m[14:22, 16:24] = False  # a hole: lost
    m[35:38, 45:48] = True  # a smaller part: lost
    [line] = yolo.regions_to_yolo_lines([Region("cat", Mask(m))], 50, 40, CLASS_INDEX, "segment")
    [back] = yolo.yolo_lines_to_regions([line], 50, 40, LABELS, "segment")
    assert isinstance(back.geometry, Polygon)
    filled = np.zeros((40, 50), dtype=np.uint8)
    cv2.fillPoly(filled, [np.round(np.array(back.geometry.points)).astype(np.int32)], 1)
    disk = np.zeros((40, 50), dtype=np.uint8)
    cv2.circle(disk, (20, 18), 12, 1, -1)
    assert np.array_equal(filled.astype(bool), disk.astype(bool))
    single = np.zeros((5, 5), dtype=bool)
    single[2, 3] = True
    [line] = yolo.regions_to_yolo_lines([Region("cat", Mask(single))], 5, 5, CLASS_INDEX, "segment")
    assert len(line.split()) == 7  # padded to 3 points
    with pytest.raises(ConfigError, match="empty"):
        yolo.regions_to_yolo_lines(
            [Region("cat", Mask(np.zeros((5, 5), bool)))], 5, 5, CLASS_INDEX, "segment"
        )


def test_yolo_refuses_what_a_task_cannot_hold_and_bad_lines() -> None:
    with pytest.raises(ConfigError, match="class region labelled 'cat'"):
        yolo.regions_to_yolo_lines([Region("cat", None)], 10, 10, CLASS_INDEX, "detect")
    with pytest.raises(ConfigError, match="polygon region"):
        yolo.regions_to_yolo_lines(
            [Region("cat", Polygon(((0, 0), (1, 0), (1, 1))))], 10, 10, CLASS_INDEX, "obb"
        )
    with pytest.raises(ConfigError, match="unknown YOLO task 'detection'"):
        yolo.regions_to_yolo_lines([], 10, 10, CLASS_INDEX, "detection")
    with pytest.raises(ConfigError, match=r"labels/a\.txt line 2: 3 numbers"):
        yolo.yolo_lines_to_regions(
            ["0 .5 .5 .1 .1", "0 .5 .5 .1"], 10, 10, LABELS, "detect", source="labels/a.txt"
        )
    with pytest.raises(ConfigError, match="class id 7"):
        yolo.yolo_lines_to_regions(["7 .5 .5 .1 .1"], 10, 10, LABELS, "detect")
    with pytest.raises(ConfigError, match="not a YOLO label line"):
        yolo.yolo_lines_to_regions(["cat .5 .5 .1 .1"], 10, 10, LABELS, "detect")


def test_yolo_classify_folders() -> None:
    regions = [Region("traffic light", None)]
    assert (
        str(yolo.classify_relpath(regions, "/data/x/img1.jpg", split="val")) == "val/traffic light/img1.jpg"
    )
    [r] = yolo.classify_regions("val/traffic light/img1.jpg", names=LABELS)
    assert r.label == "traffic light" and r.geometry is None
    with pytest.raises(ConfigError, match="exactly one"):
        yolo.classify_relpath([*regions, Region("cat", None)], "img1.jpg")
    with pytest.raises(ConfigError, match="'bird'"):
        yolo.classify_regions("train/bird/a.jpg", names=LABELS)


# ---------------------------------------------------------------------- edge cases, all formats


def test_empty_image_goes_through_every_format() -> None:
    assert yolo.regions_to_yolo_lines([], 10, 10, CLASS_INDEX, "detect") == []
    assert yolo.yolo_lines_to_regions([], 10, 10, LABELS, "detect") == []
    assert coco.coco_to_items(coco.items_to_coco([ImageItem("e.jpg", 10, 10)]))[0].regions == []
    assert cvat.regions_to_cvat([], 0, LABEL_IDS) == ([], [])
    assert cvat.cvat_to_regions([], [], CVAT_NAMES) == []


def test_zero_area_box_is_kept() -> None:
    """Kept, not refused: every format can hold it, and refusing would fail a whole sync over one
    stray click; the dataset checks flag degenerate boxes."""
    r = Region("cat", Box(5, 5, 5, 5))
    for fmt in FORMATS:
        back = fmt.roundtrip(r, 10, 10)
        assert_geometry_close(back.geometry, r.geometry, 1e-5)


@pytest.mark.parametrize("writer", ["yolo", "coco", "cvat"])
def test_label_missing_from_the_class_map_names_the_label(writer: str) -> None:
    r = [Region("zebra", Box(0, 0, 1, 1))]
    with pytest.raises(ConfigError, match="'zebra'"):
        if writer == "yolo":
            yolo.regions_to_yolo_lines(r, 10, 10, CLASS_INDEX, "detect")
        elif writer == "coco":
            coco.item_to_coco(ImageItem("x", 10, 10, r), 1, {"cat": 1})
        else:
            cvat.regions_to_cvat(r, 0, LABEL_IDS)


def test_unknown_ids_on_read_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="class id 99"):
        cvat.cvat_to_regions(
            [{"type": "rectangle", "frame": 0, "label_id": 99, "points": [0, 0, 1, 1]}], [], CVAT_NAMES
        )
    with pytest.raises(ConfigError, match="class id 5"):
        coco.coco_to_items(
            {
                "images": [{"id": 1, "width": 4, "height": 4}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}],
                "categories": [{"id": 1, "name": "cat"}],
            }
        )
    with pytest.raises(ConfigError, match="class region"):
        coco.item_to_coco(ImageItem("x", 4, 4, [Region("cat", None)]), 1, {"cat": 1})


def test_one_rule_for_machine_made_cvat_sources() -> None:
    from labelloop.connectors import cvat as connector

    assert connector.MACHINE_SOURCES is cvat.MACHINE_SOURCES == frozenset({"auto"})
