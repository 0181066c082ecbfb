"""Pseudo-labels: dual thresholds, stored as pseudo, never in val, weighted in training."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from labelloop.backend.active.pseudo import keep, pseudo_label, store_pseudo
from labelloop.backend.active.tta import Stability
from labelloop.backend.inference.demo_model import render_shapes
from labelloop.backend.inference.predictor import Predictor
from labelloop.backend.training.sample_weights import repeats, weight_pseudo
from labelloop.backend.training.trainer import export_for_training
from labelloop.sync.store import Store
from labelloop.sync.versions import entries, snapshot
from labelloop.types import Box, ImageItem, Region, Source
from tests.training_fixtures import add_shapes, training_settings


def _stab(scores: list[float], locs: list[float]) -> Stability:
    regions = [Region("square", Box(0, 0, 10, 10), score=s) for s in scores]
    return Stability(ImageItem("x", 20, 20, regions, metadata={"model_version": "m"}), locs, 0.0)


def test_dual_thresholds_keep_only_images_sure_of_class_and_place() -> None:
    kept = keep(_stab([0.95, 0.92], [0.9, 0.85]))
    assert kept is not None and {r.provenance.source for r in kept.regions} == {Source.PSEUDO}
    assert kept.regions[0].provenance.model_version == "m" and kept.regions[0].attributes["loc"] == 0.9
    assert keep(_stab([0.95, 0.6], [0.9, 0.9])) is None  # one unsure class
    assert keep(_stab([0.95, 0.95], [0.9, 0.5])) is None  # one box that moves under TTA
    assert keep(_stab([], [])) is None
    assert keep(_stab([0.95], [0.5]), t_loc=0.4) is not None


def test_pseudo_labels_stored_as_pseudo_never_in_val_and_weighted(tmp_path: Path, demo_weights: Path) -> None:
    settings = training_settings(tmp_path, demo_weights)
    predictor = Predictor(demo_weights, settings.with_(predict={"device": "cpu", "runtime": "torch"}))
    rng = np.random.default_rng(5)
    pngs, arrays = [], []
    for _ in range(16):
        img = render_shapes(rng, 96, max_shapes=2)[0]
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        pngs.append(buf.getvalue())
        arrays.append(np.asarray(img))
    labels = pseudo_label(predictor, arrays, t_cls=0.5, t_loc=0.5)
    chosen = [(b, it) for b, it in zip(pngs, labels, strict=True) if it is not None]
    assert chosen, "the demo model should be sure of some clean shapes"
    strict = pseudo_label(predictor, arrays, t_cls=0.999, t_loc=0.999)
    assert sum(x is not None for x in strict) < len(chosen)

    with Store.open(settings=settings) as store:
        add_shapes(store, 12)
        store_pseudo(store, chosen)
        vid = snapshot(store, "with pseudo", val_fraction=0.5).version.id
        with store.session() as s:
            ents = entries(s, vid)
        pseudo = [e for e in ents if e.label_source == str(Source.PSEUDO)]
        assert len(pseudo) == len(chosen) and all(e.split != "val" for e in pseudo)
        assert any(e.split == "val" for e in ents) and all(
            e.label_source == str(Source.HUMAN) for e in ents if e.split == "val"
        )
        rep = export_for_training(store, vid, tmp_path / "export")
        data_yaml = Path(rep.out) / "data.yaml"
        counts = weight_pseudo(store, vid, data_yaml, w=0.25)
    assert counts["repeats"] == repeats(0.25) == 4
    listing = Path(rep.out, "train_weighted.txt").read_text().split()
    train_pseudo = {e.item_sha for e in pseudo if e.split == "train"}
    assert counts["pseudo"] == len(train_pseudo) > 0
    per_file = {Path(p).stem: listing.count(p) for p in listing}
    assert {per_file[sha] for sha in train_pseudo} == {1}
    assert {n for sha, n in per_file.items() if sha not in train_pseudo} == {4}
    with pytest.raises(ValueError):
        repeats(0.0)
    from ultralytics.data.dataset import YOLODataset

    ds = YOLODataset(
        img_path=str(Path(rep.out, "train_weighted.txt")), data={"names": rep.names, "channels": 3}
    )
    assert len(ds) == len(listing)  # Ultralytics keeps the repeats: the sampling weight holds
