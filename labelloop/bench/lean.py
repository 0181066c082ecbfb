"""The lean runtime against the current ONNX Runtime path, in one run on the same images: a real
gunicorn worker's RSS after two /predict calls of ``n`` images, and images/s through the predictor.

    python -m labelloop.bench.lean MODEL.onnx [--images 16] [--imgsz 320] [--json OUT]

Needs Redis (the backend's rq side). Each backend is stopped before the next starts."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="circle"/><Label value="square"/>
<Label value="triangle"/></RectangleLabels></View>"""


def _rss_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {
        ln.split(":")[0]: ln.split(":")[1].split()[0] for ln in status if ln.startswith(("VmRSS", "VmHWM"))
    }
    return {"rss_mb": round(int(fields["VmRSS"]) / 1024, 1), "peak_mb": round(int(fields["VmHWM"]) / 1024, 1)}


def worker_rss(weights: Path, runtime: str, images: list[Path], work: Path) -> dict[str, Any]:
    """RSS of the one gunicorn worker of a backend serving ``weights`` with ``runtime``, after two
    /predict calls of every image, and whether it imported torch / ultralytics."""
    from labelloop.backend.serving.gunicorn import BackendProcess
    from labelloop.settings import load_settings

    settings = load_settings(local_roots=[images[0].parent], image_cache_bytes=0, http_workers=1)
    b = BackendProcess(
        work / runtime, weights, settings.queue.redis_url, {"LABELLOOP_RUNTIME": runtime}, settings=settings
    )
    t0 = time.monotonic()
    b.start(timeout=180)
    try:
        ready_s = time.monotonic() - t0
        pid = int(requests.get(f"{b.url}/health", timeout=5).json()["pid"])  # before /predict: see the test
        body = {
            "tasks": [{"id": i, "data": {"image": str(p)}} for i, p in enumerate(images)],
            "label_config": CONFIG,
        }
        answers = []
        for _ in range(2):
            r = requests.post(f"{b.url}/predict", json=body, timeout=300)
            r.raise_for_status()
            answers.append(r.json())
        boxes = sum(len(res.get("result", [])) for res in answers[-1]["results"])
        maps = Path(f"/proc/{pid}/maps").read_text()
        return {
            "runtime": runtime,
            "worker_pid": pid,
            **_rss_mb(pid),
            "start_to_model_loaded_s": round(ready_s, 1),
            "boxes_second_call": boxes,
            "torch_mapped": "libtorch" in maps,
        }
    finally:
        b.stop()


def predictor_speed(
    weights: Path, runtimes: tuple[str, ...], arrays: list[np.ndarray], imgsz: int, rounds: int
) -> list[dict[str, Any]]:
    """images/s of each runtime through the predictor, timed in alternating rounds (each a pass
    over ``arrays``) so a noisy host slows both alike; the median round and the range."""
    from labelloop.backend.inference.predictor import Predictor
    from labelloop.settings import load_settings

    preds = [
        Predictor(weights, load_settings(model=weights, runtime=rt, device="cpu", imgsz=imgsz))
        for rt in runtimes
    ]
    for p in preds:
        p.predict_arrays(arrays[:4])  # warm
    rates: list[list[float]] = [[] for _ in preds]
    for _ in range(rounds):
        for p, r in zip(preds, rates, strict=True):
            t = time.perf_counter()
            p.predict_arrays(arrays)
            r.append(len(arrays) / (time.perf_counter() - t))
    return [
        {
            "runtime": p.runtime,
            "streams": p.streams,
            "images_per_s": round(float(np.median(r)), 1),
            "range": [round(min(r), 1), round(max(r), 1)],
        }
        for p, r in zip(preds, rates, strict=True)
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", type=Path)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from PIL import Image

    from labelloop.backend.inference.demo_model import render_shapes

    work = Path(tempfile.mkdtemp(prefix="bench-lean-"))
    (work / "img").mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(a.images):
        p = work / "img" / f"{i:03d}.jpg"
        render_shapes(rng, a.imgsz)[0].save(p, quality=90)
        paths.append(p)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    report: dict[str, Any] = {"model": str(a.model), "images": a.images, "imgsz": a.imgsz}
    report["worker"] = [worker_rss(a.model, rt, paths, work) for rt in ("onnx", "lean")]
    report["predictor"] = predictor_speed(a.model, ("onnx", "lean"), arrays, a.imgsz, a.rounds)
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)
    return report


if __name__ == "__main__":
    main()
