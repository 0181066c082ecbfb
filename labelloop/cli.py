"""The ``labelloop`` command. User errors print one line naming what to fix (exit 2), never a traceback."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from labelloop.errors import LabelloopError
from labelloop.settings import Settings, load_settings

app = typer.Typer(
    help="Close the loop between a YOLO model and the people who label for it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Models: build the demo detector.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (print ratios, write JSON).", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="YOLO weights; default: the demo model")]


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def resolve_weights(settings: Settings) -> Path:
    """The configured weights, or the demo model (built and cached on first use)."""
    if settings.model is not None:
        if not settings.model.is_file():
            raise LabelloopError(f"model file {settings.model} does not exist (--model / LABELLOOP_MODEL)")
        return settings.model
    from labelloop.backend.demo_model import build_demo_model, demo_model_path

    if not demo_model_path(settings.cache_dir).exists():
        console.print(
            "[bold]No --model given: building the demo detector (one time, a few minutes on CPU)..."
        )
    return build_demo_model(settings.cache_dir)


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address (LABELLOOP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (LABELLOOP_PORT)")] = None,
    workers: Annotated[
        int | None, typer.Option(help="gunicorn worker processes (LABELLOOP_HTTP_WORKERS)")
    ] = None,
    rq_worker: Annotated[bool, typer.Option(help="also run an rq worker for background predictions")] = True,
) -> None:
    """Serve the Label Studio ML backend under gunicorn."""
    _logging()
    settings = load_settings(model=model, host=host, port=port, http_workers=workers)
    weights = resolve_weights(settings)
    settings = settings.model_copy(update={"model": weights})
    from labelloop.backend.serve import run_gunicorn

    child = None
    if rq_worker:
        env = {**os.environ, **_settings_env(settings)}
        child = subprocess.Popen([sys.executable, "-m", "labelloop.cli", "worker"], env=env)
    try:
        console.print(f"labelloop ML backend: http://{settings.host}:{settings.port}  model {weights}")
        run_gunicorn(settings, weights)
    finally:
        if child is not None:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)


def _settings_env(settings: Settings) -> dict[str, str]:
    """Settings as LABELLOOP_* variables, so a child process sees exactly what this one resolved."""
    import json

    out = {}
    for k, v in settings.model_dump(mode="json").items():
        if v is None:
            continue
        out[f"LABELLOOP_{k.upper()}"] = json.dumps(v) if isinstance(v, dict | list) else str(v)
    return out


@app.command()
def worker(burst: Annotated[bool, typer.Option(help="exit when the queue is empty")] = False) -> None:
    """Run an rq worker for background predictions (any host that reaches Redis)."""
    _logging()
    from labelloop.backend.serve import run_worker

    run_worker(load_settings(), burst=burst)


@model_app.command("demo")
def model_demo() -> None:
    """Build (once) the small demo detector trained on generated shapes; print its path."""
    _logging()
    typer.echo(resolve_weights(load_settings()))


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Label Studio port")] = 8080,
    backend_port: Annotated[int, typer.Option(help="ML backend port")] = 9090,
    images: Annotated[int, typer.Option(help="sample images to create")] = 24,
    keep_running: Annotated[bool, typer.Option(help="keep the servers up until Ctrl-C")] = True,
) -> None:
    """Start Label Studio and the ML backend, create a project of sample images with prelabels."""
    _logging()
    from labelloop.demo import run_demo

    run_demo(
        load_settings(), port=port, backend_port=backend_port, n_images=images, keep_running=keep_running
    )


@bench_app.command("predict")
def bench_predict(
    tasks: Annotated[int, typer.Option(help="tasks whose images Label Studio serves")] = 64,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/predict.json"),
    model: ModelOpt = None,
) -> None:
    """Images/s of /predict vs a per-task loop, and the raw forward as the ceiling."""
    _logging()
    from labelloop.bench import bench_predict as run

    run(load_settings(model=model), n_tasks=tasks, out=out)


def main() -> None:
    try:
        app()
    except LabelloopError as e:
        sys.stderr.write(f"error: {e}\n")  # unwrapped: one line a user can grep
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
