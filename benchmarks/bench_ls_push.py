"""Prelabel push into Label Studio: bulk import (``push_predictions``) vs one ``POST /api/predictions``
per task.

Both runs go to the same real Label Studio (started from ``.venv-ls`` on 127.0.0.1), in the same
process, each into its own fresh project of ``--tasks`` JSON-imported tasks, with the same
precomputed predictions (3 rectangles per task, model_version ``bench-v1``). No image is fetched:
task data are plain URLs. After each run the project must hold exactly one prediction per task,
else the benchmark fails rather than report a speed for lost or duplicated writes.

    YOLO_CONFIG_DIR=$(mktemp -d) .venv/bin/python benchmarks/bench_ls_push.py [--tasks 1000] [--chunk 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import environment, write_result  # noqa: E402
from labelloop.connectors.formats.labelstudio import generate_label_config  # noqa: E402
from labelloop.connectors.labelstudio import (  # noqa: E402
    LabelStudioClient,
    LabelStudioConnector,
    auth_header,
    push_predictions,
)
from labelloop.connectors.labelstudio_server import LabelStudioServer  # noqa: E402

LABELS = ["circle", "square", "triangle"]
VERSION = "bench-v1"
SIZE = 640


def make_predictions(task_ids: list[int], regions: int = 3) -> list[dict[str, Any]]:
    """Seeded, so both runs push the same payloads (only the task ids differ)."""
    rng = np.random.default_rng(0)
    out = []
    for t in task_ids:
        result = []
        for k in range(regions):
            x, y = (float(v) for v in rng.uniform(0, 85, 2))
            result.append(
                {
                    "id": f"t{t}r{k}",
                    "type": "rectanglelabels",
                    "from_name": "label",
                    "to_name": "image",
                    "original_width": SIZE,
                    "original_height": SIZE,
                    "image_rotation": 0,
                    "score": float(rng.uniform(0.2, 1.0)),
                    "value": {
                        "x": x,
                        "y": y,
                        "width": 10.0,
                        "height": 10.0,
                        "rotation": 0,
                        "rectanglelabels": [LABELS[k % len(LABELS)]],
                    },
                }
            )
        out.append(
            {"task": t, "result": result, "score": min(r["score"] for r in result), "model_version": VERSION}
        )
    return out


def new_project(conn: LabelStudioConnector, title: str, n: int) -> tuple[int, list[int]]:
    project = conn.create_project(title, generate_label_config("detect", LABELS))
    ids = conn.import_tasks(project, [{"image": f"https://example.com/img/{i}.jpg"} for i in range(n)])
    if len(ids) != n:
        raise SystemExit(f"project {project}: imported {len(ids)} tasks, expected {n}")
    return project, ids


def check_exactly_one_each(conn: LabelStudioConnector, project: int, ids: list[int], mode: str) -> None:
    """Fail loudly unless every task holds one prediction of VERSION and nothing else was written."""
    total = conn.project(project).get("total_predictions_number")
    versions = {
        int(t["id"]): t.get("predictions_model_versions") or ""
        for t in conn.tasks(project, include="id,predictions_model_versions", page_size=1000)
    }
    missing = [t for t in ids if versions.get(t) != VERSION]
    if total != len(ids) or missing:
        raise SystemExit(
            f"{mode}: project {project} holds {total} predictions for {len(ids)} tasks; "
            f"{len(missing)} task(s) without exactly {VERSION!r} (first: {missing[:5]})"
        )


@contextmanager
def timed_calls(timings: dict[str, list[float]]) -> Iterator[None]:
    """Time the bulk path's two calls per chunk (the existence check and the import POST) in place."""
    orig_vp: Callable[..., Any] = LabelStudioClient.versions_present
    orig_req: Callable[..., Any] = LabelStudioClient.request

    def versions_present(self: LabelStudioClient, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig_vp(self, *a, **kw)
        finally:
            timings["versions_present"].append(time.perf_counter() - t)

    def request(self: LabelStudioClient, method: str, path: str, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig_req(self, method, path, *a, **kw)
        finally:
            if path.endswith("/import/predictions"):
                timings["import_predictions"].append(time.perf_counter() - t)

    LabelStudioClient.versions_present = versions_present  # type: ignore[method-assign]
    LabelStudioClient.request = request  # type: ignore[method-assign]
    try:
        yield
    finally:
        LabelStudioClient.versions_present = orig_vp  # type: ignore[method-assign]
        LabelStudioClient.request = orig_req  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=500, help="predictions per bulk import request")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "ls_push.json")
    args = ap.parse_args()
    n = args.tasks

    with tempfile.TemporaryDirectory(prefix="labelloop-bench-ls-") as tmp, LabelStudioServer(Path(tmp)) as ls:
        conn = LabelStudioConnector(ls.url, ls.token)
        ls_version = conn.version()
        p_bulk, ids_bulk = new_project(conn, "bench push: bulk", n)
        p_base, ids_base = new_project(conn, "bench push: one POST per task", n)
        preds_bulk, preds_base = make_predictions(ids_bulk), make_predictions(ids_base)

        timings: dict[str, list[float]] = {"versions_present": [], "import_predictions": []}
        with timed_calls(timings):
            t0 = time.perf_counter()
            written = push_predictions(ls.url, ls.token, p_bulk, preds_bulk, chunk=args.chunk)
            bulk_s = time.perf_counter() - t0
        if written != n:
            raise SystemExit(f"bulk: push_predictions wrote {written} of {n}")
        check_exactly_one_each(conn, p_bulk, ids_bulk, "bulk")

        session = requests.Session()
        session.headers.update(auth_header(ls.token, ls.url))
        t0 = time.perf_counter()
        for p in preds_base:
            session.post(f"{ls.url}/api/predictions", json=p, timeout=60).raise_for_status()
        base_s = time.perf_counter() - t0
        check_exactly_one_each(conn, p_base, ids_base, "baseline")

    runs = {
        "bulk": {
            "seconds": round(bulk_s, 3),
            "tasks_per_s": round(n / bulk_s, 1),
            "chunk": args.chunk,
            "requests": len(timings["versions_present"]) + len(timings["import_predictions"]),
            "seconds_versions_present": round(sum(timings["versions_present"]), 3),
            "seconds_import_predictions": round(sum(timings["import_predictions"]), 3),
        },
        "per_task_post": {"seconds": round(base_s, 3), "tasks_per_s": round(n / base_s, 1), "requests": n},
    }
    ratio = base_s / bulk_s
    for mode, r in runs.items():
        print(
            f"{mode:>13}: {r['seconds']:8.2f} s  {r['requests']:5d} requests  {r['tasks_per_s']:9.1f} tasks/s"
        )
    b = runs["bulk"]
    print(
        f"  bulk split: versions_present {b['seconds_versions_present']:.2f} s, "
        f"import/predictions {b['seconds_import_predictions']:.2f} s"
    )
    print(f"bulk/baseline: {ratio:.1f}x ({n} tasks, 3 regions each; target >= 10x)")
    result = {
        "benchmark": "labelstudio_prelabel_push",
        "n": n,
        "regions_per_task": 3,
        "runs": runs,
        "ratio_bulk_vs_per_task": round(ratio, 2),
        "label_studio": {k: ls_version.get(k) for k in ("release", "edition") if k in ls_version},
        "machine": environment(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
