"""``labelloop simulate``: a pool with a ground-truth oracle, rounds of train -> eval -> select."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelloop.backend.active.simulate import labels_to_reach, load_data, savings
from labelloop.backend.inference.demo_model import CLASSES, write_shapes_dataset
from labelloop.cli.common import app
from labelloop.errors import DataError


def test_labels_to_reach_interpolates_and_savings_compare_to_random_per_seed() -> None:
    labels = [10.0, 20.0, 30.0]
    assert labels_to_reach(labels, [0.1, 0.3, 0.5], 0.4) == pytest.approx(25.0)
    assert labels_to_reach(labels, [0.5, 0.6, 0.7], 0.4) == 10.0
    assert labels_to_reach(labels, [0.1, 0.2, 0.3], 0.4) is None
    per_seed = {
        "random": {0: (labels, [0.1, 0.2, 0.4]), 1: (labels, [0.1, 0.3, 0.5])},
        "good": {0: (labels, [0.1, 0.4, 0.5]), 1: (labels, [0.1, 0.5, 0.6])},
        "bad": {0: (labels, [0.0, 0.1, 0.2]), 1: (labels, [0.1, 0.2, 0.3])},
    }
    s = savings(per_seed)
    assert s["random"]["saved_pct_mean"] == pytest.approx(0.0)
    # seed 0 reaches 0.4 at 20 labels, seed 1 reaches 0.5 at 20: a third of random's 30 saved
    assert s["good"]["labels_needed"] == [20.0, 20.0]
    assert s["good"]["saved_pct_mean"] == pytest.approx(100 / 3) and s["good"]["saved_pct_std"] == 0.0
    assert s["bad"]["seeds_reached"] == "0/2" and s["bad"]["saved_pct_mean"] is None
    flat = savings({"random": {0: (labels, [0.3, 0.2, 0.2])}, "good": {0: (labels, [0.3, 0.4, 0.5])}})
    assert flat["good"]["seeds_left_out"] == [0] and flat["good"]["saved_pct_mean"] is None


def _coco(images: list[tuple[str, list[tuple[int, list[float]]]]]) -> dict:
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    imgs, anns = [], []
    for i, (name, boxes) in enumerate(images, 1):
        imgs.append({"id": i, "file_name": name, "width": 64, "height": 64})
        for c, bbox in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": bbox})
    return {"images": imgs, "annotations": anns, "categories": cats}


def test_coco_input_becomes_yolo_folders_and_bad_data_is_one_line(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (64, 64)).save(tmp_path / "img" / n)
    train = tmp_path / "train.json"
    train.write_text(json.dumps(_coco([("a.jpg", [(1, [8, 16, 32, 16])]), ("b.jpg", [])])))
    val = tmp_path / "val.json"
    val.write_text(json.dumps(_coco([("c.jpg", [(2, [0, 0, 64, 32])])])))
    data = load_data(train, tmp_path / "out", val=val, images=tmp_path / "img")
    assert data.names == list(CLASSES) and len(data.train) == 2 and len(data.val) == 1
    label = Path(str(data.train[0]).replace("/images/", "/labels/")).with_suffix(".txt")
    cls, cx, cy, w, h = label.read_text().split()
    assert cls == "1" and [float(v) for v in (cx, cy, w, h)] == pytest.approx([0.375, 0.375, 0.5, 0.25])
    assert Path(str(data.train[1]).replace("/images/", "/labels/")).with_suffix(".txt").read_text() == ""
    with pytest.raises(DataError, match="--val"):
        load_data(train, tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "nope.yaml", tmp_path / "out")
    (tmp_path / "bad.yaml").write_text("names: [a]\ntrain: images/train\n")
    with pytest.raises(DataError, match="no val split"):
        load_data(tmp_path / "bad.yaml", tmp_path / "out")


def test_simulate_smoke_same_start_budget_and_val_never_selected(tmp_path: Path, demo_weights: Path) -> None:
    data_yaml = write_shapes_dataset(tmp_path / "shapes", 24, 8, size=64, seed=3)
    out = tmp_path / "sim"
    args = ["simulate", "--data", str(data_yaml), "--base-weights", str(demo_weights), "--out", str(out)]
    args += ["--strategies", "random,least_confidence", "--seeds", "1", "--rounds", "2", "--budget", "4"]
    args += ["--initial", "6", "--epochs", "1", "--imgsz", "64"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "labels to reach random" in res.output
    summary = json.loads((out / "results.json").read_text())
    assert (out / "learning_curves.png").stat().st_size > 1000 and (out / "rounds.csv").is_file()
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    by = {(r["strategy"], r["round"]): r for r in rounds}
    first = {s: by[(s, 0)] for s in ("random", "least_confidence")}
    assert first["random"]["labeled_images"] == first["least_confidence"]["labeled_images"]
    assert first["random"]["map50_95"] == first["least_confidence"]["map50_95"]  # trained once
    pool = sorted((tmp_path / "shapes" / "images" / "train").iterdir())
    for s in first:
        start, added = set(first[s]["labeled_images"]), first[s]["selected"]
        assert len(added) == 4 and not start & set(added) and all(0 <= i < len(pool) for i in added)
        assert by[(s, 1)]["labeled"] == 10 and by[(s, 1)]["selected"] == []
        listed = (out / "work" / "seed0" / s / "round1" / "train.txt").read_text().split()
        assert len(listed) == 10 and not any("/images/val/" in p for p in listed)
    assert summary["curves"]["random"]["labels"] == [6.0, 10.0]
    assert set(summary["savings"]) == {"random", "least_confidence"}
    # a rerun continues from the state: nothing is trained again
    res = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0 and json.loads(res.stdout)["rounds"] == summary["rounds"]
