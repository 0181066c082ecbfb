"""The ``labelloop`` command. User errors print one line naming what to fix (exit 2), never a traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from labelloop.errors import LabelloopError
from labelloop.prelabel import Summary
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


Target = Annotated[str, typer.Option("--target", "-t", help="labelstudio or cvat")]
UrlOpt = Annotated[str | None, typer.Option(help="platform URL (LABELLOOP_LABEL_STUDIO_URL / CVAT_URL)")]
TokenOpt = Annotated[
    str | None, typer.Option(help="platform token (LABELLOOP_LABEL_STUDIO_TOKEN / CVAT_ACCESS_TOKEN)")
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="also write the summary as JSON")]


def _platform(target: str, url: str | None, token: str | None) -> dict[str, str]:
    """Settings overrides for the chosen platform (CVAT reads CVAT_* from the environment)."""
    if target not in ("labelstudio", "cvat"):
        raise LabelloopError(f"--target must be labelstudio or cvat, not {target!r}")
    if target == "cvat":
        os.environ.update({k: v for k, v in (("CVAT_URL", url), ("CVAT_ACCESS_TOKEN", token)) if v})
        return {}
    return {k: v for k, v in (("label_studio_url", url), ("label_studio_token", token)) if v}


@contextlib.contextmanager
def _bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _print_summary(summary: Summary, json_out: Path | None) -> None:
    from rich.table import Table

    table = Table(title=f"{summary.target}", show_header=False)
    for k, v in {**summary.where, **summary.counts}.items():
        table.add_row(k, str(v))
    Console().print(table)
    for note in summary.notes:
        Console().print(f"- {note}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(summary.to_json())


@app.command()
def prelabel(
    target: Target,
    images: Annotated[
        list[Path] | None, typer.Option("--images", "-i", help="image files or folders (repeatable)")
    ] = None,
    project: Annotated[
        int | None,
        typer.Option(help="Label Studio project (default: create one); CVAT project of a new task"),
    ] = None,
    task: Annotated[int | None, typer.Option(help="CVAT task to prelabel (default: create one)")] = None,
    title: Annotated[
        str | None, typer.Option(help="title of a new project (Label Studio) or task (CVAT)")
    ] = None,
    urls: Annotated[
        Path | None, typer.Option(help="Label Studio: file of image URLs / s3:// gs:// URIs, one per line")
    ] = None,
    local_dir: Annotated[
        Path | None, typer.Option(help="Label Studio: a folder under its LOCAL_FILES_DOCUMENT_ROOT to import")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    journal: Annotated[Path | None, typer.Option(help="resume journal (default: in the cache dir)")] = None,
    chunk: Annotated[int, typer.Option(min=1, help="tasks predicted and pushed per step")] = 200,
    segment_size: Annotated[int | None, typer.Option(help="CVAT: frames per job of a new task")] = None,
    uncertainty_field: Annotated[
        str, typer.Option(help="Label Studio task data field for the image score ('' = none)")
    ] = "uncertainty",
    skip_unmapped: Annotated[
        bool, typer.Option(help="leave out classes the target has no label for instead of stopping")
    ] = False,
    model: ModelOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Prelabel a pool of images in Label Studio or CVAT, with scores, in bulk and resumably."""
    _logging()
    from labelloop.prelabel import prelabel_cvat, prelabel_labelstudio

    settings = load_settings(model=model, **_platform(target, url, token))
    weights = resolve_weights(settings)
    if target == "labelstudio":
        url_list = [u.strip() for u in urls.read_text().splitlines() if u.strip()] if urls else []
        summary = prelabel_labelstudio(
            settings,
            weights,
            project=project,
            title=title,
            images=images or [],
            urls=url_list,
            local_dir=local_dir,
            journal=journal,
            chunk=chunk,
            uncertainty_field=uncertainty_field or None,
            skip_unmapped=skip_unmapped,
            bar=_bar,
        )
    else:
        if not images:
            raise LabelloopError(
                "--target cvat needs --images: the files to predict (and upload for a new task)"
            )
        summary = prelabel_cvat(
            settings,
            weights,
            images,
            task=task,
            name=title,
            project=project,
            segment_size=segment_size,
            journal=journal,
            skip_unmapped=skip_unmapped,
            bar=_bar,
        )
    _print_summary(summary, json_out)


@app.command()
def pull(
    target: Target,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON lines of changed annotations (canonical)")],
    project: Annotated[int | None, typer.Option(help="Label Studio project")] = None,
    task: Annotated[int | None, typer.Option(help="CVAT task")] = None,
    cursor: Annotated[
        Path | None, typer.Option(help="cursor file: read to pull only what changed, updated after")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Dump annotations changed since the cursor, with who, when and QA state, as JSON lines."""
    _logging()
    from labelloop.prelabel import pull_cvat, pull_labelstudio

    settings = load_settings(**_platform(target, url, token))
    if target == "labelstudio":
        if project is None:
            raise LabelloopError("--target labelstudio needs --project")
        summary = pull_labelstudio(settings, project, out, cursor, bar=_bar)
    else:
        if task is None:
            raise LabelloopError("--target cvat needs --task")
        summary = pull_cvat(settings, task, out, cursor, bar=_bar)
    _print_summary(summary, json_out)


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


@bench_app.command("push")
def bench_push(
    tasks: Annotated[int, typer.Option(help="tasks per project")] = 1000,
    chunk: Annotated[int, typer.Option(help="predictions per bulk request")] = 500,
    url: UrlOpt = None,
    token: TokenOpt = None,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/push.json"),
) -> None:
    """Label Studio prelabel push: bulk + journal vs one POST per task (default: a throwaway server)."""
    _logging()
    from labelloop.bench import bench_push as run

    run(tasks, out, chunk=chunk, url=url, token=token)


def main() -> None:
    try:
        app()
    except LabelloopError as e:
        sys.stderr.write(f"error: {e}\n")  # unwrapped: one line a user can grep
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
