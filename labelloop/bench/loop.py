"""``labelloop bench loop``: the time of each stage of one loop on this machine, and training images/s.

One run of the demo loop (:func:`labelloop.demo.run_demo`, headless): start, prelabel, a simulated
annotator's corrections, sync, the retrain job (export, each recipe stage, eval, artifacts,
register), promote-to-served (from the job's end to the first /health answer with the new
version), re-prelabel. Baseline, measured in the same run on the same exported dataset and weights:
Ultralytics' own ``train`` with its defaults for the same number of epochs, so the ratio says what
the two-stage recipe and the loop's bookkeeping cost over a bare fine-tune.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from labelloop.settings import Settings

console = Console()


def bench_loop(settings: Settings, out: Path, *, images: int = 36, epochs: int = 6) -> dict[str, Any]:
    from labelloop.backend.inference.weights import resolve_weights
    from labelloop.backend.inference.yolo_env import ensure_yolo_env
    from labelloop.demo import demo_settings, run_demo
    from labelloop.sync.export import export_version
    from labelloop.sync.store import Store

    s = settings.with_(train={"epochs": epochs})
    report = run_demo(s, port=8080, backend_port=9090, n_images=images, keep_running=False)
    t = report.training
    train_s = float(t.get("head", 0)) + float(t.get("full", 0))
    n_train = int((t.get("images") or {}).get("train", 0))
    # baseline: a bare Ultralytics fine-tune of the same weights on the same version
    work = Path(report.workdir)
    run_settings = demo_settings(s, work, s.queue.redis_url, 4)
    ensure_yolo_env()
    from ultralytics import YOLO  # lazy: seconds to import

    with Store.open(settings=run_settings) as store, tempfile.TemporaryDirectory(dir=work) as d:
        export_version(store, report.version or "head", Path(d) / "data", "yolo")
        data_yaml = next(Path(d).rglob("data.yaml"))
        t0 = time.monotonic()
        YOLO(str(resolve_weights(s))).train(
            data=str(data_yaml), epochs=epochs, imgsz=s.train.imgsz, batch=s.train.batch, plots=False,
            project=d, name="bare", device=s.train.device if s.train.device != "auto" else None,
            verbose=False, seed=s.train.seed,
        )  # fmt: skip
        bare_s = time.monotonic() - t0
    results = {
        "images": images,
        "epochs": epochs,
        "imgsz": s.train.imgsz,
        "promoted": report.promoted,
        "gate_reason": report.gate_reason,
        "stages_s": report.stages,
        "training_s": {k: round(float(v), 3) for k, v in t.items() if isinstance(v, int | float)},
        "train_images": n_train,
        "train_s_per_epoch": round(train_s / epochs, 3) if epochs else None,
        "train_images_per_s": round(n_train * epochs / train_s, 2) if train_s else None,
        "promote_to_served_s": report.promote_to_served_s,
        "baseline_bare_ultralytics_train_s": round(bare_s, 3),
        "x_bare_train": round(train_s / bare_s, 3) if bare_s else None,
        "map50_95_before": report.map50_95_before,
        "map50_95_after": report.map50_95_after,
    }
    table = Table(title=f"one loop on this machine ({images} images, {epochs} epochs at {s.train.imgsz})")
    table.add_column("stage")
    table.add_column("seconds")
    for k, v in report.stages.items():
        table.add_row(k, f"{v:.2f}")
    for k, v in results["training_s"].items():
        table.add_row(f"  train: {k}", f"{v:.2f}")
    table.add_row("promote -> served", str(report.promote_to_served_s))
    table.add_row("train images/s", str(results["train_images_per_s"]))
    table.add_row("bare Ultralytics train (baseline)", f"{bare_s:.2f}")
    table.add_row("loop training / bare", str(results["x_bare_train"]))
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"results: {out}")
    return results
