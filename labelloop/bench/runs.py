"""``labelloop bench predict``: the backend's /predict path against the Label Studio example's way.

Same weights, same images served by a real Label Studio, same run:
- baseline: a per-task loop that downloads each image and calls ``model.predict`` (PyTorch) on it;
- labelloop: one POST /predict with every task to the gunicorn backend (image cache disabled, so
  every image is downloaded again);
- ceiling: the model alone on already-decoded images, the better of Ultralytics' own ONNX Runtime
  session (one ``predict`` call per image) and labelloop's predictor (parallel single-threaded
  sessions); PyTorch's forward is reported for reference.
Each figure is the best of ``repeats`` runs; ratios are against numbers measured in this run.
"""

from __future__ import annotations

import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from rich.console import Console

from labelloop.settings import Settings

console = Console()


def bench_predict(settings: Settings, n_tasks: int, out: Path, repeats: int = 3) -> dict:
    from labelloop.backend.inference.demo_model import render_shapes
    from labelloop.backend.inference.predictor import Predictor
    from labelloop.backend.inference.weights import resolve_weights
    from labelloop.backend.serving.gunicorn import BackendProcess
    from labelloop.connectors.formats.labelstudio import generate_label_config
    from labelloop.connectors.labelstudio import LabelStudioClient, imports, projects
    from labelloop.connectors.labelstudio.server import LabelStudioServer

    weights = resolve_weights(settings)
    work = Path(tempfile.mkdtemp(prefix="labelloop-bench-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_tasks):
        p = work / "img" / f"{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        render_shapes(rng, 640)[0].save(p, quality=90)
        paths.append(p)

    with LabelStudioServer(work / "ls") as ls:
        client = LabelStudioClient(ls.url, ls.token)
        from ultralytics import YOLO

        torch_model = YOLO(str(weights))
        names = list(torch_model.names.values())
        project = projects.create_project(client, "bench", generate_label_config("detect", names))
        imports.upload_images(client, project, paths)
        tasks = client.request(
            "GET", "/api/tasks", params={"project": project, "page_size": n_tasks, "fields": "all"}
        )["tasks"]
        tasks = [{"id": t["id"], "data": t["data"]} for t in tasks]
        if len(tasks) != n_tasks:
            raise RuntimeError(f"Label Studio holds {len(tasks)} tasks, expected {n_tasks}")
        urls = [f"{ls.url}{t['data']['image']}" for t in tasks]
        headers = ls.headers()

        def per_task_loop() -> float:
            t = time.perf_counter()
            for u in urls:
                img = np.asarray(
                    Image.open(io.BytesIO(requests.get(u, headers=headers, timeout=30).content)).convert(
                        "RGB"
                    )
                )[..., ::-1]
                torch_model.predict(img, conf=settings.predict.conf, verbose=False, device="cpu")
            return time.perf_counter() - t

        decoded = [np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))[..., ::-1]) for p in paths]
        onnx = Predictor(weights, settings.with_(**{"runtime": "onnx", "device": "cpu"}))
        plain_onnx = YOLO(str(onnx.onnx_path), task=onnx.task)  # as Ultralytics runs it: one session

        def timed(fn) -> float:  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        def forward(model) -> float:  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            for img in decoded:
                model.predict(img, imgsz=onnx.imgsz, conf=settings.predict.conf, verbose=False, device="cpu")
            return time.perf_counter() - t

        served = settings.with_(  # no result memo: each repeat must run the model again
            runtime="onnx", memo_entries=0, labelstudio={"url": ls.url, "token": ls.token}
        )
        # cold: every image is downloaded from Label Studio again; warm: re-predicting tasks whose
        # images sit in the backend's disk cache (e.g. after a model promotion)
        redis_url = settings.queue.redis_url
        cold = BackendProcess(work / "cold", weights, redis_url, settings=served.with_(image_cache_bytes=0))
        warm = BackendProcess(
            work / "warm", weights, redis_url, settings=served.with_(cache_dir=work / "warm-cache")
        )
        cfg = generate_label_config("detect", names)

        def predict_via(backend: BackendProcess) -> float:
            t = time.perf_counter()
            r = requests.post(
                f"{backend.url}/predict",
                json={"tasks": tasks, "label_config": cfg, "project": f"{project}.0"},
                timeout=300,
            )
            r.raise_for_status()
            assert len(r.json()["results"]) == len(tasks)
            return time.perf_counter() - t

        try:
            cold.start()
            warm.start()
            per_task_loop()  # warm-ups: first-call setup is not what we measure
            forward(plain_onnx)
            forward(torch_model)
            onnx.predict_arrays(decoded)
            predict_via(cold)
            predict_via(warm)
            times = {
                name: min(fn() for _ in range(repeats))
                for name, fn in (
                    ("per_task_loop", per_task_loop),
                    ("labelloop_predict", lambda: predict_via(cold)),
                    ("labelloop_predict_cached_images", lambda: predict_via(warm)),
                    ("ceiling_onnx_forward", lambda: forward(plain_onnx)),
                    ("predictor_on_decoded_images", lambda: timed(lambda: onnx.predict_arrays(decoded))),
                    ("torch_forward", lambda: forward(torch_model)),
                )
            }
        finally:
            cold.stop()
            warm.stop()

    ips = {k: n_tasks / v for k, v in times.items()}
    ceiling = max(ips["ceiling_onnx_forward"], ips["predictor_on_decoded_images"])
    result = {
        "tasks": n_tasks,
        "image_size": "640x640 JPEG",
        "imgsz": onnx.imgsz,
        "repeats": repeats,
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}",
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "speedup_vs_per_task_loop": round(ips["labelloop_predict"] / ips["per_task_loop"], 2),
        "ceiling_images_per_s": round(ceiling, 2),
        "fraction_of_ceiling": round(ips["labelloop_predict"] / ceiling, 3),
        "fraction_of_ceiling_cached_images": round(ips["labelloop_predict_cached_images"] / ceiling, 3),
        "targets": {"speedup_vs_per_task_loop": 2.0, "fraction_of_ceiling": 0.85},
    }
    return _report(
        result,
        out,
        "images_per_s",
        f"labelloop /predict vs per-task loop: [bold]{result['speedup_vs_per_task_loop']}x[/] (target 2x); "
        f"of the decoded-image ceiling: [bold]{result['fraction_of_ceiling'] * 100:.0f}%[/] (target 85%)",
    )


def bench_push(
    n_tasks: int, out: Path, chunk: int = 500, url: str | None = None, token: str | None = None
) -> dict:
    """Prelabel push into Label Studio, predictions already computed: labelloop's bulk, journaled
    push against one ``POST /api/predictions`` per task (what Label Studio's SDK examples do), each
    into its own fresh project of ``n_tasks`` tasks, in the same run and on the same server."""
    from contextlib import nullcontext

    from labelloop.connectors.formats.labelstudio import generate_label_config
    from labelloop.connectors.journal import PushJournal
    from labelloop.connectors.labelstudio import LabelStudioClient, auth_header, imports, projects
    from labelloop.connectors.labelstudio.push import write_predictions
    from labelloop.connectors.labelstudio.server import LabelStudioServer
    from labelloop.connectors.labelstudio.tasks import iter_tasks

    work = Path(tempfile.mkdtemp(prefix="labelloop-bench-push-"))
    server = nullcontext(None) if url else LabelStudioServer(work / "ls")
    with server as ls:
        conn = LabelStudioClient(url or ls.url, token if url else ls.token)
        config = generate_label_config("detect", ["circle", "square", "triangle"])

        def project(title: str) -> tuple[int, list[int]]:
            p = projects.create_project(conn, title, config)
            ids = imports.import_tasks(
                conn, p, [{"image": f"https://example.com/pool/{i:05d}.jpg"} for i in range(n_tasks)]
            )
            return p, ids

        def predictions(ids: list[int]) -> list[dict]:
            rng = np.random.default_rng(0)
            out = []
            for t in ids:
                result = []
                for k in range(3):
                    x, y = rng.uniform(0, 80, 2)
                    result.append(
                        {
                            "id": f"{t}-{k}",
                            "type": "rectanglelabels",
                            "from_name": "label",
                            "to_name": "image",
                            "original_width": 640,
                            "original_height": 640,
                            "score": float(rng.uniform(0.2, 1)),
                            "value": {"x": x, "y": y, "width": 10, "height": 10, "rotation": 0,
                                      "rectanglelabels": [("circle", "square", "triangle")[k]]},
                        }
                    )  # fmt: skip
                out.append({"task": t, "result": result, "score": min(r["score"] for r in result),
                            "model_version": "bench-v1"})  # fmt: skip
            return out

        p_bulk, ids_bulk = project("bench push: bulk")
        p_loop, ids_loop = project("bench push: per task")
        preds_bulk, preds_loop = predictions(ids_bulk), predictions(ids_loop)

        t = time.perf_counter()
        journal = PushJournal.load(work / "journal.json", {"project": p_bulk})
        write_predictions(conn, p_bulk, preds_bulk, journal=journal, chunk=chunk)
        bulk_s = time.perf_counter() - t

        session = requests.Session()
        t = time.perf_counter()
        for p in preds_loop:
            r = session.post(f"{conn.url}/api/predictions", json=p, headers=auth_header(conn.token, conn.url))
            r.raise_for_status()
        loop_s = time.perf_counter() - t

        for proj in (p_bulk, p_loop):  # both paths must have written exactly one prediction per task
            versions = [
                t.get("predictions_model_versions")
                for t in iter_tasks(conn, proj, include="id,predictions_model_versions")
            ]
            n_preds = projects.get_project(conn, proj).get("total_predictions_number")
            if versions.count("bench-v1") != n_tasks or n_preds != n_tasks:
                raise RuntimeError(f"project {proj}: {n_preds} predictions for {n_tasks} tasks")
        version = conn.version().get("release")
    result = {
        "tasks": n_tasks,
        "regions_per_task": 3,
        "chunk": chunk,
        "label_studio": version,
        "machine": f"{platform.machine()} cpus={__import__('os').cpu_count()}",
        "seconds": {"bulk": round(bulk_s, 2), "per_task_post": round(loop_s, 2)},
        "tasks_per_s": {"bulk": round(n_tasks / bulk_s, 1), "per_task_post": round(n_tasks / loop_s, 1)},
        "speedup_bulk_vs_per_task": round(loop_s / bulk_s, 2),
        "target": 10.0,
    }
    return _report(
        result,
        out,
        "tasks_per_s",
        f"bulk vs one request per task: [bold]{result['speedup_bulk_vs_per_task']}x[/] (target 10x)",
    )


def _report(result: dict, out: Path, rates: str, verdict: str) -> dict:
    """Write the JSON, print each rate and the ratio line."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    unit = rates.split("_per_")[0]
    for k, v in result[rates].items():
        console.print(f"{k:>22}: {v:9.2f} {unit}/s")
    console.print(verdict)
    console.print(f"written to {out}")
    return result
