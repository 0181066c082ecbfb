"""Checks catch each defect; errors block export; exports read back through formats.yolo / .coco."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from labelloop.connectors.formats import coco as coco_fmt
from labelloop.connectors.formats import yolo as yolo_fmt
from labelloop.errors import ConfigError, DataError
from labelloop.sync.checks import check_version
from labelloop.sync.export import export_version
from labelloop.sync.ingest import ingest
from labelloop.sync.store import Store
from labelloop.sync.versions import entries, snapshot
from labelloop.types import Box, Keypoint, Keypoints, Polygon, Region
from tests.store_fixtures import *  # noqa: F403
from tests.store_fixtures import LS, ann, box, item, result


def png(w: int, h: int, shade: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (shade, shade, shade)).save(buf, format="PNG")
    return buf.getvalue()


def with_image(store: Store, task: int, regions: list[Region], *, w: int = 64, h: int = 48, **kw) -> object:  # type: ignore[no-untyped-def]
    data = png(w, h, task % 250)
    sha = store.blobs.put(data)
    return ann(
        task,
        task,
        item=item(regions, sha=sha, uri=f"s3://b/{task}.png", w=w, h=h, group_id=kw.pop("group", None)),
        **kw,
    )


def clean(store: Store, n: int = 12) -> list:  # type: ignore[type-arg]
    return [
        with_image(store, i, [box("cat", 2, 2, 20, 20), box("dog", 30, 10, 60, 40)], group=f"g{i}")
        for i in range(n)
    ]


def findings(rep) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {f.check: f.severity for f in rep.findings}


def test_clean_version_passes(store: Store) -> None:
    ingest(store, LS, result(clean(store)))
    v = snapshot(store, "clean", val_fraction=0.4).version
    rep = check_version(store, v.id, labels=["cat", "dog"])
    assert rep.ok, [f.line() for f in rep.findings]
    assert rep.checked_blobs == 12


def test_checks_catch_each_defect(store: Store) -> None:
    anns = clean(store)
    anns += [
        with_image(store, 100, [box("cat", 50, 40, 80, 60)]),  # outside 64x48
        with_image(store, 101, [box("cat", 10, 10, 10, 30)]),  # zero width
        with_image(store, 102, [Region("cat", Polygon(((1, 1), (5, 5))))]),  # 2-point polygon
        with_image(store, 103, [box("kat", 1, 1, 5, 5)]),  # unknown label
        with_image(store, 104, [box("cat", 1, 1, 5, 5)], w=100, h=100),  # size mismatch below
        ann(105, 105, [box("cat", 1, 1, 5, 5)], image="no-bytes"),  # blob missing
    ]
    # an annotated size that the image does not have
    anns[-2].item.width, anns[-2].item.height = 90, 90
    ingest(store, LS, result(anns))
    # a corrupt blob: bytes under a sha that is not theirs
    bad_sha = "ab" * 32
    path = Path(store.blobs.path(bad_sha))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG not really")
    ingest(store, LS, result([ann(106, 106, [box("cat", 1, 1, 5, 5)], sha=bad_sha)], present={}))
    v = snapshot(store, "dirty").version
    rep = check_version(store, v.id, labels=["cat", "dog"])
    got = findings(rep)
    assert got["box_outside"] == "error" and got["degenerate"] == "error" and got["unknown_label"] == "error"
    assert got["image_corrupt"] == "error" and got["image_missing"] == "warning"
    by = {f.check: set(f.items) for f in rep.findings}
    shas = {a.task_id: a.item.sha256 for a in anns}
    assert by["box_outside"] == {shas["100"]}
    assert by["degenerate"] == {shas["101"], shas["102"]}
    assert by["unknown_label"] == {shas["103"]}
    assert by["image_corrupt"] == {shas["104"], bad_sha}
    assert by["image_missing"] == {shas["105"]}
    # errors block export, naming the checks and items
    with pytest.raises(DataError, match="fails its checks: box_outside"):
        export_version(store, v.id, store.blobs.root + "-out")


def test_label_set_from_parent_is_a_warning_and_drift_and_balance(store: Store) -> None:
    ingest(store, LS, result(clean(store)))
    snapshot(store, "one")
    more = [with_image(store, 200 + i, [box("bird", 1, 1, 9, 9)] * 3, group="birds") for i in range(20)]
    ingest(store, LS, result(more, present={}))
    v2 = snapshot(store, "two").version
    got = findings(check_version(store, v2.id))
    assert got["unknown_label"] == "warning"
    assert got["class_drift"] == "warning"


def test_class_balance(store: Store) -> None:
    anns = clean(store)
    anns += [with_image(store, 300 + i, [box("cat", 1, 1, 9, 9)] * 10, group=f"c{i}") for i in range(10)]
    anns.append(with_image(store, 400, [box("mouse", 1, 1, 9, 9)], group="m"))
    ingest(store, LS, result(anns))
    v = snapshot(store, "skewed", val_fraction=0.5).version
    msgs = [f.message for f in check_version(store, v.id).findings if f.check == "class_balance"]
    assert any("under 1% of regions: mouse" in m for m in msgs)
    assert any("'cat' has 112 regions, 'mouse' 1" in m for m in msgs)


def test_duplicate_images_across_splits(store: Store) -> None:
    # the same URI under two placeholder keys (two tasks showing one image whose bytes are unknown)
    anns = [ann(i, i, item=item([box("cat", 1, 1, 9, 9)], uri="http://ls/same.jpg")) for i in range(40)]
    ingest(store, LS, result(anns))
    v = snapshot(store, "dups", val_fraction=0.5).version
    rep = check_version(store, v.id)
    dup = [f for f in rep.findings if f.check == "duplicate_image"]
    assert dup and dup[0].severity == "error" and len(dup[0].items) >= 2


def test_export_yolo_reads_back(store: Store, tmp_path: Path) -> None:
    anns = clean(store)
    ingest(store, LS, result(anns))
    v = snapshot(store, "clean", val_fraction=0.4).version
    out = tmp_path / "yolo"
    rep = export_version(store, v.id[:8], out, "yolo")
    assert rep.task == "detect" and rep.names == ["cat", "dog"]
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert (
        data["train"] == "images/train"
        and data["val"] == "images/val"
        and data["names"] == {0: "cat", 1: "dog"}
    )
    with store.session() as s:
        split = {e.item_sha: e.split for e in entries(s, v.id)}
    assert rep.images["train"] + rep.images["val"] == 12 and rep.images["val"] > 0
    originals = {a.item.sha256: a.item for a in anns}
    for sha, it in originals.items():
        img = out / "images" / split[sha] / f"{sha}.png"
        assert img.is_file()
        lines = (out / "labels" / split[sha] / f"{sha}.txt").read_text().splitlines()
        back = yolo_fmt.yolo_lines_to_regions(lines, it.width, it.height, ["cat", "dog"], "detect")
        for r0, r1 in zip(it.regions, back, strict=True):
            assert r1.label == r0.label
            g0, g1 = r0.geometry, r1.geometry
            assert (g1.x1, g1.y1, g1.x2, g1.y2) == pytest.approx((g0.x1, g0.y1, g0.x2, g0.y2), abs=1e-3)  # type: ignore[union-attr]
    marker = json.loads((out / "labelloop.json").read_text())
    assert marker["version"] == v.id and len(marker["items"]) == 12
    # an export over a non-empty directory needs --force, and only over an earlier export
    with pytest.raises(ConfigError, match="not empty"):
        export_version(store, v.id, out, "yolo")
    export_version(store, v.id, out, "yolo", overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="other than a labelloop export"):
        export_version(store, v.id, tmp_path / "mine", "yolo", overwrite=True)


def test_export_coco_reads_back_and_yolo_needs_bytes(store: Store, tmp_path: Path) -> None:
    kp = Region(
        "person", Keypoints((Keypoint(5, 5, True, "nose"), Keypoint(9, 9, False, "eye")), Box(1, 1, 20, 20))
    )
    anns = [*clean(store, 6), with_image(store, 50, [kp], group="g0")]
    anns.append(ann(60, 60, [box("cat", 1, 1, 9, 9)], image="no-bytes"))
    ingest(store, LS, result(anns))
    v = snapshot(store, "mixed", val_fraction=0.5).version
    rep = export_version(store, v.id, tmp_path / "coco", "coco")
    assert rep.missing_images == [anns[-1].item.sha256]
    back = {}
    for split in ("train", "val"):
        doc = json.loads((tmp_path / "coco" / "annotations" / f"instances_{split}.json").read_text())
        for it in coco_fmt.coco_to_items(doc):
            back[it.sha256] = it
            assert it.uri.startswith(f"images/{split}/")
    assert set(back) == {a.item.sha256 for a in anns}
    for a in anns:
        got = back[a.item.sha256]
        assert [r.label for r in got.regions] == [r.label for r in a.item.regions]
        assert [r.geometry for r in got.regions] == [r.geometry for r in a.item.regions]
    assert (tmp_path / "coco" / back[anns[0].item.sha256].uri).is_file()
    with pytest.raises(DataError, match="no image bytes"):
        export_version(store, v.id, tmp_path / "yolo", "yolo", task="detect")
