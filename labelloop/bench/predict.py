"""``labelloop bench predict --runtime onnx,onnx-int8,openvino,openvino-bf16,openvino-int8,lean,...``:
every runtime and precision in one run, on the same images, against ONNX Runtime fp32 (``onnx``,
always measured first as the baseline).

For each runtime: images/s through the predictor on decoded images (alternating rounds, so a noisy
host slows all alike; median and range), then a real gunicorn backend (1 worker, no result memo)
serving it: cold start (process start to the first /predict answered); end-to-end /predict images/s
with the images downloaded from a real Label Studio (the second half of the tasks, after a warm-up
on the first), and the CPU Label Studio spent serving them (here it shares the cores with the
backend, which a Label Studio on its own host does not); then
/predict images/s with every image in the backend's image cache (best of ``repeats``: the
backend's own ceiling, e.g. re-prelabelling after a hot reload); the worker's CPU per image, its
RSS after the calls and whether libtorch is mapped; and the accuracy of its artifact from
``labelloop export`` (share of PyTorch fp32's detections recovered, mAP50-95 on the val split
against fp32's), calibrated on the train split of the same generated dataset.

A runtime name is an export format served by the runtime of the same name (``onnx``: ONNX Runtime
through Ultralytics, ``openvino*``: OpenVINO), or ``lean``/``lean-<format>``: that artifact served
by the lean runtime (no torch).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

from labelloop.bench.export import bench_images
from labelloop.bench.lean import _rss_mb
from labelloop.settings import Settings

console = Console()
BASELINE = "onnx"
FORMAT_RUNTIMES = {"onnx": "onnx", "onnx-int8": "onnx", "openvino": "openvino", "openvino-bf16": "openvino",
                   "openvino-int8": "openvino"}  # fmt: skip


def parse_runtime(name: str) -> tuple[str, str]:
    """(export format, serving runtime) of a runtime name (see the module doc)."""
    if name in FORMAT_RUNTIMES:
        return name, FORMAT_RUNTIMES[name]
    if name == "lean":
        return "onnx", "lean"
    fmt = name.removeprefix("lean-")
    if name.startswith("lean-") and fmt in FORMAT_RUNTIMES:
        return fmt, "lean"
    known = ", ".join([*FORMAT_RUNTIMES, "lean", *(f"lean-{f}" for f in FORMAT_RUNTIMES if f != "onnx")])
    from labelloop.errors import ConfigError

    raise ConfigError(f"--runtime {name!r}: expected a comma-separated list of {known}")


def _speeds(models: dict[str, Any], arrays: list[np.ndarray], rounds: int) -> dict[str, dict[str, Any]]:
    for p in models.values():
        p.predict_arrays(arrays[:4])  # warm: sessions, compiled models
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, p in models.items():
            t = time.perf_counter()
            p.predict_arrays(arrays)
            rates[k].append(len(arrays) / (time.perf_counter() - t))
    return {
        k: {"images_per_s": round(float(np.median(r)), 2), "range": [round(min(r), 1), round(max(r), 1)]}
        for k, r in rates.items()
    }


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and its live descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu: dict[int, float] = {}
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[int(d.name)] = (int(f[11]) + int(f[12])) / ticks
        children.setdefault(int(f[1]), []).append(int(d.name))
    total, todo = 0.0, [root]
    while todo:  # a process tree: each pid is reached once, from its parent
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def _served(
    artifact: Path,
    runtime: str,
    settings: Settings,
    tasks: list[dict],
    config: str,
    work: Path,
    repeats: int,
    label_studio_pid: int,
) -> dict[str, Any]:
    """A real backend serving ``artifact`` with ``runtime``: cold start, /predict images/s with the
    images from Label Studio (and the CPU that Label Studio and the worker spent per image), then
    with them in the backend's image cache (no Label Studio), and RSS."""
    from labelloop.backend.serving.gunicorn import BackendProcess

    served = settings.with_(
        cache_dir=work / "cache", image_cache_bytes=1 << 30, memo_entries=0, http_workers=1
    )
    b = BackendProcess(
        work, artifact, settings.queue.redis_url, {"LABELLOOP_RUNTIME": runtime}, settings=served
    )
    t0 = time.monotonic()
    b.start(timeout=300)
    try:
        pid = int(requests.get(f"{b.url}/health", timeout=5).json()["pid"])  # before /predict (bench.lean)

        def predict(batch: list[dict]) -> tuple[float, float]:
            """Wall seconds and the worker's CPU seconds of one /predict."""
            c, t = cpu_seconds(pid), time.perf_counter()
            r = requests.post(f"{b.url}/predict", json={"tasks": batch, "label_config": config}, timeout=600)
            r.raise_for_status()
            if len(r.json()["results"]) != len(batch):
                raise RuntimeError(f"{runtime}: /predict answered {len(r.json()['results'])} of {len(batch)}")
            return time.perf_counter() - t, cpu_seconds(pid) - c

        predict(tasks[:1])
        cold = time.monotonic() - t0
        half = (len(tasks) + 1) // 2
        predict(tasks[1:half])  # warm-up (thread pools, first allocations), from Label Studio
        ls_cpu = cpu_seconds(label_studio_pid)
        wall, worker_cpu = predict(tasks[half:])  # images not fetched yet: all from Label Studio
        ls_cpu = cpu_seconds(label_studio_pid) - ls_cpu
        n = len(tasks) - half
        cached = min(predict(tasks) for _ in range(repeats))  # every image from the image cache
        return {
            "e2e_images_per_s": round(n / wall, 2),
            "label_studio_cpu_ms_per_image": round(ls_cpu / n * 1000, 1),
            "worker_cpu_ms_per_image": round(worker_cpu / n * 1000, 1),
            "e2e_cached_images_per_s": round(len(tasks) / cached[0], 2),
            "worker_cpu_ms_per_image_cached": round(cached[1] / len(tasks) * 1000, 1),
            "cold_start_s": round(cold, 2),
            **_rss_mb(pid),
            "torch_mapped": "libtorch" in Path(f"/proc/{pid}/maps").read_text(),
        }
    finally:
        b.stop()


def plot_runtimes(result: dict[str, Any], out: Path) -> Path:
    """Bars of each runtime's images/s (forward, /predict via Label Studio, /predict from the image
    cache) with the fp32 ceiling and the 2x target drawn across: where people would rather look."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.2))
    for i, (key, label) in enumerate([("images_per_s", "forward (predictor)"),
                                      ("e2e_images_per_s", "/predict, images via Label Studio"),
                                      ("e2e_cached_images_per_s", "/predict, images cached")]):  # fmt: skip
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], 0.27, label=label)
    ceiling = rows[0]["images_per_s"]
    ax.axhline(ceiling, color="black", lw=0.8, ls="--", label="fp32 ONNX Runtime ceiling")
    ax.axhline(2 * ceiling, color="red", lw=0.8, ls=":", label="2x target")
    ax.set_xticks(x, [r["runtime"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("images/s")
    ax.set_title(f"{Path(result['weights']).name} at imgsz {result['imgsz']}, {result['machine']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bench_runtimes(
    settings: Settings,
    names: list[str],
    out: Path,
    *,
    tasks: int = 32,
    imgsz: int = 320,
    rounds: int = 5,
    repeats: int = 2,
) -> dict[str, Any]:
    from labelloop.backend.inference.export import export_model
    from labelloop.backend.inference.predictor import Predictor
    from labelloop.backend.inference.weights import resolve_weights
    from labelloop.connectors.formats.labelstudio import generate_label_config
    from labelloop.connectors.labelstudio import LabelStudioClient, imports, projects
    from labelloop.connectors.labelstudio.server import LabelStudioServer

    names = [BASELINE, *dict.fromkeys(n for n in names if n != BASELINE)]
    plan = {n: parse_runtime(n) for n in names}
    weights = resolve_weights(settings)
    work = Path(tempfile.mkdtemp(prefix="labelloop-bench-runtimes-"))
    data, paths, arrays = bench_images(work, tasks)
    reports = {}
    for fmt in dict.fromkeys(f for f, _ in plan.values()):
        console.print(f"exporting {fmt} at {imgsz} and validating it")
        reports[fmt] = export_model(settings, weights, fmt, work / "artifacts", imgsz=imgsz,
                                    calibration=str(data), calibration_images=tasks,
                                    log_to_registry=False)  # fmt: skip
    cpu = settings.with_(device="cpu", imgsz=imgsz)
    console.print(f"predictor images/s, {rounds} alternating rounds of {len(arrays)} images")
    models = {n: Predictor(Path(reports[f].artifact), cpu.with_(runtime=rt)) for n, (f, rt) in plan.items()}
    speeds = _speeds(models, arrays, rounds)
    streams = {n: m.streams for n, m in models.items()}
    del models
    rows: list[dict[str, Any]] = []
    with LabelStudioServer(work / "ls") as ls:
        client = LabelStudioClient(ls.url, ls.token)
        config = generate_label_config("detect", ["circle", "square", "triangle"])
        project = projects.create_project(client, "bench runtimes", config)
        imports.upload_images(client, project, paths)
        listed = client.request("GET", "/api/tasks", params={"project": project, "page_size": tasks})["tasks"]
        ls_tasks = [{"id": t["id"], "data": t["data"]} for t in listed]
        via_ls = cpu.with_(labelstudio={"url": ls.url, "token": ls.token})
        for n, (fmt, rt) in plan.items():
            console.print(f"{n}: a backend serving {fmt} with runtime {rt}, /predict through Label Studio")
            rep = reports[fmt]
            a, v = rep.agreement, rep.val or {}
            rows.append({
                "runtime": n, "format": fmt, "served_by": rt, "streams": streams[n], **speeds[n],
                **_served(Path(rep.artifact), rt, via_ls, ls_tasks, config, work / f"backend-{n}", repeats,
                          ls.child.proc.pid),  # type: ignore[union-attr]
                "recovered": round(a.recovered, 3), "extra": a.extra, "map50_95": v.get("map50_95"),
                "fp32_map50_95": v.get("fp32_map50_95"), "map50_95_drop": v.get("map50_95_drop"),
            })  # fmt: skip
    base = rows[0]
    for r in rows:
        r["x_fp32_ort"] = round(r["images_per_s"] / base["images_per_s"], 2)
        r["e2e_x_fp32_ort_ceiling"] = round(r["e2e_images_per_s"] / base["images_per_s"], 2)
        r["e2e_cached_x_fp32_ort_ceiling"] = round(r["e2e_cached_images_per_s"] / base["images_per_s"], 2)
    result = {
        "weights": str(weights),
        "images": len(arrays),
        "image_size": "640x640 JPEG",
        "imgsz": imgsz,
        "machine": f"{platform.machine()} cpus={os.cpu_count()}",
        "baseline": "ONNX Runtime fp32 (runtime onnx) on decoded images, same run",
        "targets": {"int8_e2e_x_fp32_ceiling": 2.0, "stretch": 2.5, "max_map50_95_drop": 0.01},
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    table = Table("runtime", "img/s", "x fp32", "e2e via LS", "x fp32", "LS cpu ms/img", "e2e cached",
                  "x fp32", "cold s", "RSS MB", "torch", "recovered", "mAP50-95 (fp32)")  # fmt: skip
    for r in rows:
        m = f"{r['map50_95']:.3f} ({r['fp32_map50_95']:.3f})" if r["map50_95"] is not None else "-"
        table.add_row(r["runtime"], f"{r['images_per_s']:.1f}", f"{r['x_fp32_ort']:.2f}",
                      f"{r['e2e_images_per_s']:.1f}", f"{r['e2e_x_fp32_ort_ceiling']:.2f}",
                      f"{r['label_studio_cpu_ms_per_image']:.1f}", f"{r['e2e_cached_images_per_s']:.1f}",
                      f"{r['e2e_cached_x_fp32_ort_ceiling']:.2f}", f"{r['cold_start_s']:.1f}",
                      f"{r['rss_mb']:.0f}", "yes" if r["torch_mapped"] else "no",
                      f"{r['recovered']:.3f}", m)  # fmt: skip
    (console if console.is_terminal else Console(width=200)).print(table)  # a log file: not cut at 80
    console.print(f"written to {out} and {plot_runtimes(result, out.with_suffix('.png'))}")
    return result
