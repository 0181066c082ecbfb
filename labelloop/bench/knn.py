"""``labelloop bench knn``: novelty's nearest-neighbour search on a big pool, exact vs approximate.

Same data, same run: ``n`` unit embeddings as the labeled base and ``queries`` as the pool, each
nearest base distance found by exact faiss search (the baseline) and by the IVF index that
:mod:`labelloop.backend.active.knn` uses above its exact limit. Two data sets: uniformly random
unit vectors (no structure: the worst case for an inverted file) and a mixture of clusters (closer
to real backbone embeddings, which group by scene and class). Reported: seconds of each (the IVF
including its k-means training), the speed-up, recall@1 (the same neighbour found), the mean
error of the novelty score (distance / 2), and how many of the exact top-1 % most novel images
the approximate search also ranks top-1 % (what a selection of them would change).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return _unit(rng.standard_normal((n, dim)))
    centres = rng.standard_normal((max(10, n // 100), dim))
    return _unit(centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, dim)))


def _novelty(
    queries: np.ndarray, base: np.ndarray, exact_max: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Novelty scores (distance / 2), nearest ids, seconds to build the index and to search it."""
    from labelloop.backend.active import knn

    t0 = time.perf_counter()
    index = knn.build_index(base, "l2", exact_max=exact_max)
    t1 = time.perf_counter()
    d2, idx = index.search(np.ascontiguousarray(queries), 1)  # type: ignore[attr-defined]
    t2 = time.perf_counter()
    return np.sqrt(np.clip(d2[:, 0], 0.0, 4.0)) / 2.0, idx[:, 0], t1 - t0, t2 - t1


def compare(base: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    exact_d, exact_i, eb, es = _novelty(queries, base, exact_max=len(base))
    approx_d, approx_i, ab, as_ = _novelty(queries, base, exact_max=0)
    top = max(1, len(queries) // 100)
    exact_top = set(np.argsort(-exact_d, kind="stable")[:top].tolist())
    approx_top = set(np.argsort(-approx_d, kind="stable")[:top].tolist())
    return {
        "exact_s": round(eb + es, 2),
        "approx_s": round(ab + as_, 2),
        "approx_build_s": round(ab, 2),  # k-means + adding the base: once per selection
        "approx_search_s": round(as_, 2),  # grows with the pool, like the exact search
        "speedup": round((eb + es) / (ab + as_), 2),
        "search_speedup": round(es / as_, 2),
        "recall_at_1": round(float((exact_i == approx_i).mean()), 4),
        "novelty_abs_error_mean": round(float(np.abs(approx_d - exact_d).mean()), 5),
        "novelty_abs_error_max": round(float(np.abs(approx_d - exact_d).max()), 5),
        "top1pct_overlap": round(len(exact_top & approx_top) / top, 4),
    }


def bench_knn(
    out: Path, *, n: int = 100_000, queries: int = 20_000, dim: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Run both data sets, print the table, write ``out`` (JSON)."""
    import faiss

    from labelloop.backend.active import knn

    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {
        "n_base": n,
        "n_queries": queries,
        "dim": dim,
        "index": f"IndexIVFFlat, 4 sqrt(n) cells, nprobe {knn.NPROBE}, k-means on {knn.TRAIN_PER_CELL}/cell, "
        f"{knn.KMEANS_ITERATIONS} iterations",
        "exact_max": knn.EXACT_MAX,
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "host": platform.node(),
        "data": {},
    }
    for kind in ("random", "clustered"):
        data = make_data(kind, n + queries, dim, rng)
        results["data"][kind] = compare(data[:n], data[n:])
    table = Table(title=f"novelty search: {queries:,} pool images vs {n:,} labeled, d={dim}")
    for col in (
        "data",
        "exact s",
        "IVF s (build + search)",
        "speed-up (search)",
        "recall@1",
        "novelty error",
        "top-1 % kept",
    ):
        table.add_column(col)
    for kind, r in results["data"].items():
        table.add_row(
            kind,
            f"{r['exact_s']:.2f}",
            f"{r['approx_s']:.2f} ({r['approx_build_s']:.1f} + {r['approx_search_s']:.1f})",
            f"{r['speedup']:.1f}x ({r['search_speedup']:.1f}x)",
            f"{r['recall_at_1']:.3f}",
            f"{r['novelty_abs_error_mean']:.4f}",
            f"{100 * r['top1pct_overlap']:.1f} %",
        )
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"json: {out}")
    return results
