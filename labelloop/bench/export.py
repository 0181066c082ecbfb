"""``labelloop bench export``: images/s of each exported format against ONNX Runtime fp32 measured
in the same run, on the same decoded images, through the serving predictor (its streams), at 320
and 640, beside each artifact's accuracy report (recovered share of PyTorch fp32's detections,
extra detections, mean score difference, val mAP). Each speed is the best of ``repeats`` runs."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from labelloop.settings import Settings

console = Console()


def bench_images(work: Path, n: int) -> tuple[Path, list[Path], list[np.ndarray]]:
    """The export and runtime benchmarks' images: a shapes dataset of ``n`` train (calibration) and
    ``n`` val images of 640 px under ``work``, and its val images, as files and decoded once."""
    from labelloop.backend.inference.demo_model import write_shapes_dataset

    data = work / "shapes"
    write_shapes_dataset(data, n_train=n, n_val=n, size=640, seed=11)
    paths = sorted((data / "images" / "val").iterdir())
    return data, paths, [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def bench_export(
    settings: Settings, out: Path, *, images: int = 32, sizes: tuple[int, ...] = (320, 640), repeats: int = 3
) -> dict[str, Any]:
    from labelloop.backend.inference.export import FORMATS, export_model
    from labelloop.backend.inference.predictor import Predictor
    from labelloop.backend.inference.weights import resolve_weights

    weights = resolve_weights(settings)
    work = Path(tempfile.mkdtemp(prefix="labelloop-bench-export-"))
    data, _, decoded = bench_images(work, images)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        base: float | None = None
        for fmt in FORMATS:  # "onnx" first: the baseline
            rep = export_model(settings, weights, fmt, work / "artifacts", imgsz=size, calibration=str(data),
                               calibration_images=images, log_to_registry=False)  # fmt: skip
            p = Predictor(Path(rep.artifact), settings.with_(device="cpu", imgsz=size, runtime="auto"))
            p.predict_arrays(decoded[:4])  # warm-up: sessions, compiled models
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                p.predict_arrays(decoded)
                best = min(best, time.perf_counter() - t)
            ips = len(decoded) / best
            base = base or ips
            a, v = rep.agreement, rep.val or {}
            rows.append({
                "imgsz": size, "format": fmt, "runtime": p.runtime, "streams": p.streams,
                "images_per_s": round(ips, 2), "x_onnx_fp32": round(ips / base, 2),
                "recovered": round(a.recovered, 3), "extra": a.extra,
                "mean_score_diff": round(a.mean_score_diff, 4), "fp32_detections": a.reference_detections,
                "map50": v.get("map50"), "map50_95": v.get("map50_95"),
                "fp32_map50_95": v.get("fp32_map50_95"),
            })  # fmt: skip
    result = {
        "weights": str(weights),
        "images": len(decoded),
        "image_size": "640x640 JPEG",
        "repeats": repeats,
        "machine": f"{platform.machine()} cpus={os.cpu_count()}",
        "baseline": "ONNX Runtime fp32 (format onnx), same run",
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    import json

    out.write_text(json.dumps(result, indent=2))
    table = Table("imgsz", "format", "img/s", "x fp32 ORT", "recovered", "extra", "score diff", "mAP50-95")
    for r in rows:
        table.add_row(str(r["imgsz"]), r["format"], f"{r['images_per_s']:.1f}", f"{r['x_onnx_fp32']:.2f}",
                      f"{r['recovered']:.3f}", str(r["extra"]), f"{r['mean_score_diff']:+.4f}",
                      f"{r['map50_95']} (fp32 {r['fp32_map50_95']})")  # fmt: skip
    console.print(table)
    console.print(f"written to {out}")
    return result
