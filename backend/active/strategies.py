"""Selection strategies: which unlabeled images a person should label next.

Every strategy implements one :class:`SelectionStrategy` protocol over one :class:`Pool` (columnar:
one row per unlabeled image) and returns the chosen rows in the order to label them, with the
score that chose each. Higher scores mean "more worth a human's time".

Image scores from box scores. The predictor gives every kept box its class-probability vector and
:mod:`labelloop.backend.inference.uncertainty` turns it into least confidence, margin and entropy
per box; an image takes the **maximum over its boxes** (an image is as doubtful as its worst box:
one ambiguous object is enough to need a person). An image with no box takes 1 - the model's
confidence that there is nothing to label (so a candidate that almost passed the threshold counts).

Ensembles without dropout. YOLO detectors have no Dropout layers, so MC-dropout would need dropout
injected into a network never trained with it (its samples then measure the injected noise, not
the model's doubt). The ensemble estimate here is **test-time augmentation**: the same model on a
horizontally flipped and a rescaled copy; boxes that move, vanish or change class between views
mean the model's answer is not stable (``Pool.disagreement``, see :mod:`.tta`). It costs one
forward per view and no second model.

Embedding-space terms use L2-normalised backbone embeddings (:mod:`.embeddings`), so distances
are in [0, 2] and ``distance / 2`` is in [0, 1]:

- novelty   = distance to the nearest labeled image (faiss: exact, or an IVF index above 20k labeled
  images, :mod:`.knn`; 1 with no labeled set);
- diversity = k-center greedy: each pick maximises its distance to the labeled set and to the
  picks before it, so one batch does not spend the budget on near-duplicates;
- density   = mean cosine similarity to the image's nearest pool neighbours: density-weighted
  uncertainty ranks uncertain images in dense regions (representative ones) over lone outliers.

The hybrid score (the seeds' ``a * uncertainty + b * novelty + c * diversity``) is greedy too: its
diversity term is the k-center distance to the labeled set and the picks so far, recomputed after
every pick; weights come from ``settings.select``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from labelloop.backend.active import knn
from labelloop.errors import ConfigError
from labelloop.settings import SelectSettings

DENSITY_NEIGHBOURS = 10
UNCERTAINTY_MEASURES = ("least_confidence", "margin", "entropy")


@dataclass
class Pool:
    """What strategies see of the unlabeled pool: one row per image, in ``ids`` order.

    ``uncertainty`` maps a measure name to an (n,) array; ``embeddings`` is (n, d) and ``labeled``
    (m, d), both L2-normalised float32; ``disagreement`` (n,) comes from TTA."""

    ids: list[str]
    uncertainty: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    labeled: np.ndarray | None = None
    disagreement: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def need(self, what: str) -> np.ndarray:
        """A column a strategy cannot do without; a clear error when the caller did not fill it."""
        value = self.uncertainty.get(what) if what in UNCERTAINTY_MEASURES else getattr(self, what)
        if value is None:
            raise ConfigError(f"this strategy needs the pool's {what}, which was not computed")
        return np.asarray(value)


@dataclass(frozen=True)
class Selection:
    """Chosen pool rows in labeling order, and the score each was chosen by."""

    rows: list[int]
    scores: list[float]


@runtime_checkable
class SelectionStrategy(Protocol):
    name: str
    # what the pool must carry: uncertainty measure names, "embeddings", "disagreement"
    needs: frozenset[str]

    def select(self, pool: Pool, k: int) -> Selection: ...


def _top(scores: np.ndarray, k: int) -> Selection:
    """The ``k`` highest scores, highest first (ties: pool order, so results are reproducible)."""
    order = np.argsort(-scores, kind="stable")[: max(0, k)]
    return Selection([int(i) for i in order], [float(scores[i]) for i in order])


@dataclass(frozen=True)
class ScoreStrategy:
    """Rank by one per-image number (uncertainty measures, TTA disagreement)."""

    name: str
    column: str

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.column})

    def select(self, pool: Pool, k: int) -> Selection:
        return _top(pool.need(self.column), k)


@dataclass(frozen=True)
class RandomStrategy:
    """The baseline every other strategy is measured against."""

    seed: int = 0
    name: str = "random"
    needs: frozenset[str] = frozenset()

    def select(self, pool: Pool, k: int) -> Selection:
        rows = np.random.default_rng(self.seed).permutation(len(pool))[: max(0, k)]
        return Selection([int(i) for i in rows], [0.0] * len(rows))


def nearest_distance(queries: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """Distance / 2 (in [0, 1] for unit vectors) from each query to its nearest ``base`` row; 1.0
    everywhere when there is no base. faiss, exact up to :data:`.knn.EXACT_MAX` base rows, IVF above."""
    if base is None or len(base) == 0:
        return np.ones(len(queries), dtype=np.float32)
    d2, _ = knn.search(queries, base, 1, "l2")
    return (np.sqrt(np.clip(d2[:, 0], 0.0, 4.0)) / 2.0).astype(np.float32)  # not found: 1.0


def density(embeddings: np.ndarray, neighbours: int = DENSITY_NEIGHBOURS) -> np.ndarray:
    """Mean cosine similarity to the ``neighbours`` nearest other pool images, in [0, 1]."""
    n = len(embeddings)
    if n < 2:
        return np.ones(n, dtype=np.float32)
    sims, idx = knn.search(embeddings, embeddings, min(neighbours, n - 1) + 1, "ip")
    others = (idx >= 0) & (idx != np.arange(n)[:, None])  # drop the image itself and misses
    mean = np.where(others, sims, 0.0).sum(axis=1) / np.maximum(others.sum(axis=1), 1)
    return np.clip((mean + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def greedy_batch(pool: Pool, k: int, base: np.ndarray, weight: float) -> Selection:
    """Pick ``k`` rows one at a time by ``base + weight * d``, d = distance / 2 to the labeled set
    and the picks so far, updated after each pick (k-center greedy when ``base`` is zero)."""
    x = pool.need("embeddings").astype(np.float32)
    nearest = nearest_distance(x, pool.labeled)
    rows: list[int] = []
    scores: list[float] = []
    taken = np.zeros(len(x), dtype=bool)
    for _ in range(min(k, len(x))):
        total = np.where(taken, -np.inf, base + weight * nearest)
        i = int(np.argmax(total))
        rows.append(i)
        scores.append(float(total[i]))
        taken[i] = True
        d = np.sqrt(np.clip(((x - x[i]) ** 2).sum(axis=1), 0.0, 4.0)) / 2.0
        nearest = np.minimum(nearest, d)
    return Selection(rows, scores)


@dataclass(frozen=True)
class NoveltyStrategy:
    """Images farthest from everything labeled so far."""

    name: str = "novelty"
    needs: frozenset[str] = frozenset({"embeddings"})

    def select(self, pool: Pool, k: int) -> Selection:
        return _top(nearest_distance(pool.need("embeddings"), pool.labeled), k)


@dataclass(frozen=True)
class CoresetStrategy:
    """k-center greedy (core-set): the batch that best covers the pool, given the labeled set."""

    name: str = "coreset"
    needs: frozenset[str] = frozenset({"embeddings"})

    def select(self, pool: Pool, k: int) -> Selection:
        return greedy_batch(pool, k, np.zeros(len(pool), dtype=np.float32), 1.0)


@dataclass(frozen=True)
class DensityWeightedStrategy:
    """Uncertainty x density: uncertain images that stand for many others."""

    measure: str = "least_confidence"
    name: str = "density"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.measure, "embeddings"})

    def select(self, pool: Pool, k: int) -> Selection:
        return _top(pool.need(self.measure) * density(pool.need("embeddings")), k)


@dataclass(frozen=True)
class HybridStrategy:
    """``a * uncertainty + b * novelty + c * diversity`` (weights from ``settings.select``), greedy
    over the batch so the diversity term sees the picks already made. Novelty is the distance to
    the labeled set only; diversity also counts the batch so far."""

    a: float
    b: float
    c: float
    measure: str = "least_confidence"
    name: str = "hybrid"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.measure, "embeddings"})

    def select(self, pool: Pool, k: int) -> Selection:
        novelty = nearest_distance(pool.need("embeddings"), pool.labeled)
        base = self.a * pool.need(self.measure) + self.b * novelty
        return greedy_batch(pool, k, base.astype(np.float32), self.c)


_FACTORIES: dict[str, Callable[[SelectSettings, int], SelectionStrategy]] = {
    "random": lambda s, seed: RandomStrategy(seed),
    "least_confidence": lambda s, seed: ScoreStrategy("least_confidence", "least_confidence"),
    "margin": lambda s, seed: ScoreStrategy("margin", "margin"),
    "entropy": lambda s, seed: ScoreStrategy("entropy", "entropy"),
    "tta": lambda s, seed: ScoreStrategy("tta", "disagreement"),
    "novelty": lambda s, seed: NoveltyStrategy(),
    "coreset": lambda s, seed: CoresetStrategy(),
    "density": lambda s, seed: DensityWeightedStrategy(),
    "hybrid": lambda s, seed: HybridStrategy(s.weight_uncertainty, s.weight_novelty, s.weight_diversity),
}
STRATEGIES = tuple(_FACTORIES)


def get_strategy(name: str, settings: SelectSettings, seed: int = 0) -> SelectionStrategy:
    """The strategy called ``name``; weights and measure from ``settings``."""
    try:
        return _FACTORIES[name](settings, seed)
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
