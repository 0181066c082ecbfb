"""Simulate's per-round prelabel effort and pseudo-label ablations, the approximate neighbour search
for big pools, and pseudo-labelling the store after a promotion."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelloop.backend.active import knn
from labelloop.backend.active import strategies as st
from labelloop.backend.active.oracle import effort_figures, total_effort
from labelloop.backend.active.simulate import HUMAN, SimConfig, Variant, ablations
from labelloop.backend.inference.demo_model import write_shapes_dataset
from labelloop.cli.common import app
from labelloop.errors import ConfigError
from labelloop.settings import PseudoSettings
from labelloop.types import Box, Region


def _r(label: str, x1: float, y1: float, x2: float, y2: float) -> Region:
    return Region(label, Box(x1, y1, x2, y2))


def test_prelabel_effort_counts_matches_and_each_kind_of_edit() -> None:
    truth = [_r("a", 0, 0, 10, 10), _r("b", 20, 20, 30, 30), _r("a", 40, 40, 50, 50), _r("b", 60, 0, 70, 10)]
    pre = [
        _r("a", 0, 0, 10, 10),  # kept (IoU 1)
        _r("b", 20, 20, 30, 33),  # matched, geometry to fix (IoU 0.77)
        _r("b", 40, 40, 50, 50),  # right place, wrong class
        _r("a", 80, 80, 90, 90),  # nothing there: delete
    ]  # the 4th true box has no prelabel: add
    f = effort_figures(total_effort([(pre, truth), ([], [_r("a", 0, 0, 5, 5)])]), 2)
    assert f["gt_boxes"] == 5 and f["prelabel_boxes"] == 4
    assert (f["matched"], f["kept"], f["fix_geometry"], f["fix_class"], f["delete"], f["add"]) == (
        2,
        1,
        1,
        1,
        1,
        2,
    )
    assert f["matched_share"] == pytest.approx(2 / 5) and f["edits"] == 5 and f["edits_per_image"] == 2.5


def test_ablations_vary_one_factor_at_a_time_around_the_settings() -> None:
    center = PseudoSettings(t_cls=0.9, t_loc=0.8, w_pseudo=0.3)
    assert ablations(False, [], [], center) == [Variant()]
    assert [v.name for v in ablations(True, [], [], center)] == [HUMAN, "pseudo-t0.9-w0.3"]
    names = [v.name for v in ablations(False, [0.8, 0.9, 0.95], [0.1, 0.3, 0.5], center)]
    assert names == [
        HUMAN,
        "pseudo-t0.9-w0.3",
        "pseudo-t0.8-w0.3",
        "pseudo-t0.95-w0.3",
        "pseudo-t0.9-w0.1",
        "pseudo-t0.9-w0.5",
    ]
    res = CliRunner().invoke(
        app, ["simulate", "--data", "x", "--base-weights", "y", "--out", "z", "--t-cls", "0.8,x"]
    )
    assert isinstance(res.exception, ConfigError) and "--t-cls" in str(res.exception)
    with pytest.raises(ConfigError, match="--lr-scale"):
        SimConfig(["random"], lr_scale=0.0).check(100)


def test_approximate_search_above_the_exact_limit_finds_near_neighbours() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((60, 64))
    x = centres[rng.integers(0, 60, 6000)] + 0.3 * rng.standard_normal((6000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    base, queries = x[:5000], x[5000:]
    exact = knn.build_index(base, exact_max=10_000)
    approx = knn.build_index(base, exact_max=1000)
    assert type(exact).__name__ == "IndexFlatL2" and type(approx).__name__ == "IndexIVFFlat"
    d_e, i_e = exact.search(queries, 1)
    d_a, i_a = approx.search(queries, 1)
    assert (i_e[:, 0] == i_a[:, 0]).mean() > 0.9
    assert np.abs(np.sqrt(d_a[:, 0]) - np.sqrt(d_e[:, 0])).mean() < 0.01
    # the strategies' scores through the same path: exact below the limit, equal to brute force
    brute = np.sqrt(((queries[:, None, :] - base[None, :200, :]) ** 2).sum(-1).min(1)) / 2
    assert st.nearest_distance(queries, base[:200]) == pytest.approx(brute, abs=1e-4)
    dens = st.density(x[:300])
    assert dens.shape == (300,) and 0.0 <= dens.min() <= dens.max() <= 1.0


def test_simulate_effort_per_round_and_pseudo_ablation_never_in_val(
    tmp_path: Path, demo_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABELLOOP_PSEUDO_T_CLS", "0.3")  # the center of the sweep: sure enough on shapes
    monkeypatch.setenv("LABELLOOP_PSEUDO_T_LOC", "0.5")
    monkeypatch.setenv("COLUMNS", "250")  # the table's rows unwrapped
    data_yaml = write_shapes_dataset(tmp_path / "shapes", 24, 8, size=96, seed=4)
    out = tmp_path / "sim"
    args = ["simulate", "--data", str(data_yaml), "--base-weights", str(demo_weights), "--out", str(out)]
    args += ["--strategies", "random", "--seeds", "1", "--rounds", "2", "--budget", "4", "--initial", "6"]
    args += ["--epochs", "1", "--imgsz", "96", "--w-pseudo", "0.5"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["curves"]) == {"random", "random+pseudo-t0.3-w0.3", "random+pseudo-t0.3-w0.5"}
    assert "random+pseudo-t0.3-w0.5" in res.output
    rounds = {(r["arm"], r["round"]): r for r in summary["rounds"]}
    val_images = sorted((tmp_path / "shapes" / "images" / "val").iterdir())
    val_boxes = sum(
        len((tmp_path / "shapes" / "labels" / "val" / f"{p.stem}.txt").read_text().split("\n")) - 1
        for p in val_images
    )
    for r in rounds.values():  # every round's model is measured against the truth of val
        e = r["effort_val"]
        assert e["images"] == len(val_images) and e["gt_boxes"] == val_boxes
        assert e["matched"] + e["fix_class"] + e["add"] == e["gt_boxes"]
        assert e["matched"] + e["fix_class"] + e["delete"] == e["prelabel_boxes"]
    first = rounds[("random", 0)]
    assert first["effort_selected"]["images"] == 4 and rounds[("random", 1)]["effort_selected"] is None
    # a variant's round 0 is its strategy's: same model, same picks
    assert rounds[("random+pseudo-t0.3-w0.5", 0)]["map50_95"] == first["map50_95"]

    pool = {p.resolve() for p in (tmp_path / "shapes" / "images" / "train").iterdir()}
    for name, repeats in (("random+pseudo-t0.3-w0.3", 3), ("random+pseudo-t0.3-w0.5", 2)):
        rec = rounds[(name, 1)]
        assert rec["pseudo"]["images"] > 0, rec["pseudo"]
        work = out / "work" / "seed0" / name / "round1"
        listed = (work / "train.txt").read_text().split()
        pseudo = [Path(p) for p in listed if "/pseudo/images/" in p]
        human = [Path(p) for p in listed if "/pseudo/images/" not in p]
        assert len(pseudo) == rec["pseudo"]["images"] == len(set(pseudo))  # each pseudo image once
        assert {human.count(p) for p in human} == {repeats} and len(set(human)) == rec["labeled"]
        assert {p.resolve() for p in pseudo} <= pool - {p.resolve() for p in human}  # unlabeled pool only
        assert len(listed) == rec["pseudo"]["train_listed"]
        # val is the fixed human split: its list names val images only, none has a pseudo label
        assert sorted(Path(p) for p in (work / "val.txt").read_text().split()) == [
            p.resolve() for p in val_images
        ]
        assert not any(p.resolve() in {v.resolve() for v in val_images} for p in pseudo)
        assert len(list((work / "pseudo" / "labels").iterdir())) == len(pseudo)
    with (out / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"sel_matched_share", "val_add", "pseudo_images", "train_listed"} <= set(
        rows[0]
    )
