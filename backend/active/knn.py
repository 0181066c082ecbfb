"""Nearest neighbours of embeddings through faiss: exact for small sets, an IVF index for big ones.

Novelty (distance to the nearest labeled image) and density (similarity to the nearest pool
images) search every pool image against a base set. Exact search costs ``queries x base x d``:
100k x 100k x 256 is ~2.6e12 multiply-adds, a minute or more on two cores. Above ``EXACT_MAX``
base rows the base goes into an inverted-file index (``IndexIVFFlat``: ``4 sqrt(n)`` k-means cells,
trained on a sample, each query scanning the ``NPROBE`` nearest cells), which is approximate: the
neighbour found may not be the true nearest, but its distance is close to the true one, which is
what the scores use. ``labelloop bench knn`` measures both (recall, distance error, time).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

EXACT_MAX = 20_000  # base rows up to which search is exact
NPROBE = 8
TRAIN_PER_CELL = 40  # k-means sample: this many points per cell (faiss wants >= 39)
KMEANS_ITERATIONS = 10
Metric = Literal["l2", "ip"]


def build_index(
    base: np.ndarray,
    metric: Metric = "l2",
    *,
    exact_max: int = EXACT_MAX,
    nprobe: int = NPROBE,
    seed: int = 0,
) -> object:
    """A faiss index over ``base`` rows: flat (exact) up to ``exact_max`` rows, IVF above."""
    import faiss

    x = np.ascontiguousarray(base, dtype=np.float32)
    n, d = x.shape
    flat = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    if n <= exact_max:
        flat.add(x)
        return flat
    cells = max(16, int(4 * math.sqrt(n)))
    kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexIVFFlat(flat, d, cells, kind)
    index.cp.niter = KMEANS_ITERATIONS
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, min(n, cells * TRAIN_PER_CELL), replace=False)]
    index.train(sample)
    index.add(x)
    index.nprobe = min(nprobe, cells)
    return index


def search(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    metric: Metric = "l2",
    *,
    exact_max: int = EXACT_MAX,
    nprobe: int = NPROBE,
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (len(queries), k): squared L2 distances or inner products. An
    approximate search can find fewer than ``k`` (index -1, distance inf or -inf): callers get the
    ones it found first."""
    index = build_index(base, metric, exact_max=exact_max, nprobe=nprobe)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[attr-defined]
