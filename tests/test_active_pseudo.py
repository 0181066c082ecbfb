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


def test_a_promotion_pseudo_labels_the_store_s_unlabeled_items_when_enabled(
    tmp_path: Path, demo_weights: Path
) -> None:
    """The retrain job on a real rq worker, Redis and MLflow store: after it promotes, the champion
    pseudo-labels the items no person labeled (prelabels nobody submitted), stored as pseudo,
    train-only in the next version; with the setting off (the default) it does nothing."""
    import os
    import subprocess
    import sys
    import uuid

    from redis import Redis
    from rq.job import Job

    from labelloop.backend.active.pseudo import unlabeled_items
    from labelloop.sync.ingest import ingest
    from labelloop.sync.store.live import live_revisions
    from labelloop.sync.trigger import enqueue_retrain
    from tests.helpers import redis_or_fail
    from tests.store_fixtures import LS, ann, box, item, result
    from tests.training_fixtures import shapes_version

    redis_or_fail()
    assert not training_settings(tmp_path, demo_weights).pseudo.after_promotion  # off by default
    settings = training_settings(tmp_path, demo_weights).with_(
        queue={"prefix": f"pa{uuid.uuid4().hex[:8]}"},
        # thresholds at 0: what is tested is the promotion hook and where pseudo-labels go, not how
        # sure a freshly retrained demo model is (that varies with each machine's demo model build)
        pseudo={"after_promotion": True, "t_cls": 0.0, "t_loc": 0.0},
    )
    version = shapes_version(settings, 20)
    rng = np.random.default_rng(9)
    with Store.open(settings=settings) as store:
        anns = []
        for i in range(100, 108):  # unsubmitted prelabels: the store holds the bytes, nobody labeled them
            img, _ = render_shapes(rng, 96, max_shapes=1)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            sha = store.blobs.put(buf.getvalue())
            pre = [box("square", 1, 1, 9, 9, source=Source.PRELABEL)]
            anns.append(
                ann(i, f"p{i}", item=item(pre, sha=sha, w=320, h=320), extra={"label_source": "prelabel"})
            )
        ingest(store, LS, result(anns, present={}))
        pool = set(unlabeled_items(store))
    assert len(pool) == 8
    job_id = enqueue_retrain(settings, version, "test: pseudo after promotion")
    env = {**os.environ, **settings.environment(), "YOLO_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "labelloop.cli", "worker", "--queues", "train", "--burst"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    job = Job.fetch(job_id, connection=Redis.from_url(settings.queue.redis_url))
    out = job.return_value()
    assert out["promoted"], out
    counts = out["pseudo"]
    assert counts["unlabeled"] == 8 and counts["pseudo"] + counts["dropped"] == 8 and counts["pseudo"] > 0, (
        counts
    )
    with Store.open(settings=settings) as store:
        with store.session() as s:
            pseudo = {r.item_sha for r in live_revisions(s) if r.label_source == str(Source.PSEUDO)}
        assert len(pseudo) == counts["pseudo"] and pseudo <= pool
        vid = snapshot(store, "with pseudo", val_fraction=0.5).version.id
        with store.session() as s:
            splits = {e.item_sha: e.split for e in entries(s, vid) if e.label_source == str(Source.PSEUDO)}
    # never in val: a pseudo item whose group hashes to val is excluded (val holds verified labels only)
    assert set(splits) == pseudo and set(splits.values()) <= {"train", "excluded"}, splits
