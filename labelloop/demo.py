"""``labelloop demo``: Label Studio + the ML backend + a project of sample images with prelabels."""

from __future__ import annotations

import time

import numpy as np
from rich.console import Console

from labelloop.backend.inference.demo_model import render_shapes
from labelloop.backend.inference.weights import model_version_of, resolve_weights
from labelloop.backend.serving.gunicorn import BackendProcess
from labelloop.connectors.formats.labelstudio import generate_label_config
from labelloop.connectors.labelstudio import LabelStudioClient, imports, projects
from labelloop.connectors.labelstudio.server import LabelStudioServer
from labelloop.procs import free_port
from labelloop.settings import Settings

console = Console()


def run_demo(settings: Settings, port: int, backend_port: int, n_images: int, keep_running: bool) -> None:
    weights = resolve_weights(settings)
    work = settings.cache_dir / "demo"
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    paths = []
    for i in range(n_images):
        p = images / f"shapes_{i:03d}.jpg"
        render_shapes(rng, 320)[0].save(p, quality=90)
        paths.append(p)

    with console.status("starting Label Studio (first run: ~40 s)..."):
        ls = LabelStudioServer(work / "label-studio", port=free_port(port))
        ls.start()
    backend = None
    try:
        with console.status("starting the ML backend (gunicorn + rq worker)..."):
            backend = BackendProcess(
                work / "backend",
                weights,
                settings.queue.redis_url,
                port=free_port(backend_port),
                settings=settings,
            ).start()
        client = LabelStudioClient(ls.url, ls.token)
        from ultralytics import YOLO  # lazy (seconds to import), only for the class names

        names = list(YOLO(str(weights)).names.values())
        project = projects.create_project(
            client,
            f"labelloop demo {time.strftime('%H:%M:%S')}",
            generate_label_config("detect", names),
            "Shapes prelabelled by the labelloop demo detector",
        )
        imports.upload_images(client, project, paths)
        projects.connect_ml_backend(client, project, backend.url)
        with console.status(f"prelabelling {len(paths)} images..."):
            projects.retrieve_predictions(client, project)
        version = model_version_of(weights)
        projects.set_model_version(client, project, version)
        view = projects.create_uncertainty_view(client, project)
        console.print(
            f"\n[bold green]labelloop demo is up[/]\n"
            f"  Label Studio  {ls.url}/projects/{project}/data?tab={view}\n"
            f"  login         {ls.username} / {ls.password}\n"
            f"  ML backend    {backend.url}  (model {version})\n"
            f"  metrics       {backend.url}/metrics\n"
            "Open a task: the boxes are editable prelabels, each with its score; the "
            "'Most uncertain first' tab lists the least confident images first."
        )
        while keep_running:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if backend:
            backend.stop()
        ls.stop()
