"""Selection strategies on crafted inputs where the right ranking is known, and embeddings / TTA on
the real demo model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.backend.active import strategies as st
from labelloop.backend.inference import uncertainty as unc
from labelloop.errors import ConfigError
from labelloop.settings import SelectSettings, Settings


def _pool_from_probs(per_image: list[list[list[float]]]) -> st.Pool:
    """Each image's boxes' class-probability vectors -> the pool's per-image measures, through the
    predictor's own aggregation (max over boxes)."""
    cols: dict[str, list[float]] = {m: [] for m in st.UNCERTAINTY_MEASURES}
    for boxes in per_image:
        regs = [unc.region_uncertainty(np.array(p)) for p in boxes]
        score = unc.image_score([max(p) for p in boxes], None)
        for m, v in unc.image_uncertainty(regs, score).items():
            cols[m].append(v)
    return st.Pool([str(i) for i in range(len(per_image))], {m: np.array(v) for m, v in cols.items()})


def test_margin_ranks_a_two_class_ambiguity_first() -> None:
    pool = _pool_from_probs(
        [
            [[0.95, 0.02, 0.01]],  # sure
            [[0.55, 0.52, 0.01]],  # torn between two classes, though its top score is not the lowest
            [[0.45, 0.05, 0.05]],  # weak but unambiguous
        ]
    )
    margin = st.get_strategy("margin", SelectSettings()).select(pool, 3)
    assert margin.rows == [1, 2, 0]
    assert st.get_strategy("least_confidence", SelectSettings()).select(pool, 1).rows == [2]


def test_one_doubtful_box_makes_a_doubtful_image() -> None:
    pool = _pool_from_probs([[[0.9, 0.0], [0.9, 0.0]], [[0.95, 0.0], [0.5, 0.49]]])
    assert st.get_strategy("entropy", SelectSettings()).select(pool, 1).rows == [1]


def _clusters(rng: np.random.Generator, centres: np.ndarray, per: int, spread: float = 0.02) -> np.ndarray:
    pts = np.concatenate([c + rng.normal(0, spread, (per, centres.shape[1])) for c in centres])
    return (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)


def test_kcenter_picks_one_point_per_cluster_and_skips_the_labeled_one() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:5]
    x = _clusters(rng, centres, 20)
    labeled = x[:3]  # cluster 0 is covered already
    pool = st.Pool([str(i) for i in range(len(x))], embeddings=x, labeled=labeled)
    sel = st.get_strategy("coreset", SelectSettings()).select(pool, 4)
    assert sorted(r // 20 for r in sel.rows) == [1, 2, 3, 4]
    assert sel.scores == sorted(sel.scores, reverse=True)  # each pick covers less than the one before


def test_novelty_prefers_far_from_labeled() -> None:
    rng = np.random.default_rng(1)
    x = _clusters(rng, np.eye(4)[:2], 10)
    pool = st.Pool([str(i) for i in range(20)], embeddings=x, labeled=x[:2])
    assert all(r >= 10 for r in st.NoveltyStrategy().select(pool, 10).rows)
    assert np.allclose(st.nearest_distance(x, None), 1.0)


def test_density_weighting_prefers_the_uncertain_image_that_stands_for_many() -> None:
    rng = np.random.default_rng(2)
    dense = _clusters(rng, np.eye(6)[:1], 30)
    outlier = np.eye(6)[5:6].astype(np.float32)
    x = np.concatenate([dense, outlier])
    u = np.full(len(x), 0.5)
    u[-1] = 0.6  # the outlier is a little more uncertain
    pool = st.Pool([str(i) for i in range(len(x))], {"least_confidence": u}, embeddings=x)
    assert st.get_strategy("least_confidence", SelectSettings()).select(pool, 1).rows == [30]
    assert st.get_strategy("density", SelectSettings()).select(pool, 1).rows != [30]


def test_hybrid_weights_trade_uncertainty_for_diversity() -> None:
    rng = np.random.default_rng(3)
    x = _clusters(rng, np.eye(4)[:2], 10)
    u = np.zeros(20)
    u[:10] = 0.9  # cluster 0 is uncertain throughout; cluster 1 is sure
    pool = st.Pool([str(i) for i in range(20)], {"least_confidence": u}, embeddings=x)
    only_u = st.get_strategy(
        "hybrid", SelectSettings(weight_uncertainty=1, weight_novelty=0, weight_diversity=0)
    )
    spread = st.get_strategy(
        "hybrid", SelectSettings(weight_uncertainty=0.1, weight_novelty=0, weight_diversity=1)
    )
    assert all(r < 10 for r in only_u.select(pool, 2).rows)
    assert sorted(r // 10 for r in spread.select(pool, 2).rows) == [0, 1]


def test_random_is_seeded_and_unknown_names_are_one_line() -> None:
    pool = st.Pool([str(i) for i in range(50)])
    a = st.get_strategy("random", SelectSettings(), seed=4).select(pool, 5).rows
    assert a == st.get_strategy("random", SelectSettings(), seed=4).select(pool, 5).rows and len(set(a)) == 5
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        st.get_strategy("nope", SelectSettings())
    with pytest.raises(ConfigError, match="needs the pool's embeddings"):
        st.CoresetStrategy().select(pool, 2)


def test_strategies_implement_the_protocol() -> None:
    for name in st.STRATEGIES:
        assert isinstance(st.get_strategy(name, SelectSettings()), st.SelectionStrategy)


# ------------------------------------------------------------------ on the real demo model


@pytest.fixture(scope="module")
def shapes() -> list[np.ndarray]:
    from labelloop.backend.inference.demo_model import render_shapes

    rng = np.random.default_rng(7)
    return [np.asarray(render_shapes(rng, 160, max_shapes=3)[0]) for _ in range(6)]


def test_embeddings_are_unit_vectors_cached_per_sha_and_version(
    demo_weights: Path, tmp_path: Path, shapes: list[np.ndarray]
) -> None:
    from labelloop.backend.active.embeddings import Embedder

    settings = Settings(cache_dir=tmp_path, predict={"device": "cpu", "imgsz": 160})
    emb = Embedder(demo_weights, settings)
    shas = [f"{i:064x}" for i in range(len(shapes))]
    loaded: list[str] = []

    def load(keys):  # type: ignore[no-untyped-def]
        loaded.extend(keys)
        return [shapes[shas.index(k)] for k in keys]

    first = emb.embed_shas(shas, load)
    assert len(first) == 6 and loaded == shas
    v = np.stack([first[s] for s in shas])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v[0], v[1])  # different images, different vectors
    again = emb.embed_shas(shas, load)
    assert loaded == shas  # second call: all from the cache, nothing loaded
    assert np.allclose(np.stack([again[s] for s in shas]), v)
    assert (tmp_path / "data" / "embeddings" / emb.model_version).is_dir()


def test_tta_stability_is_high_for_clear_shapes(
    demo_weights: Path, tmp_path: Path, shapes: list[np.ndarray]
) -> None:
    from labelloop.backend.active.tta import stability
    from labelloop.backend.inference.predictor import Predictor

    predictor = Predictor(
        demo_weights, Settings(cache_dir=tmp_path, predict={"device": "cpu", "runtime": "torch"})
    )
    res = stability(predictor, shapes[:3])
    boxes = [s for r in res for s in r.box_stability]
    assert boxes and np.median(boxes) > 0.7  # the demo model is sure of clean shapes
    assert all(0.0 <= r.disagreement <= 1.0 for r in res)
    assert all(len(r.box_stability) == len(r.item.regions) for r in res)
