"""``labelloop bench ...``: benchmarks that print ratios against a baseline measured in the same run
and write JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.common import ModelOpt, TokenOpt, UrlOpt, app, setup_logging
from labelloop.settings import load_settings

bench_app = typer.Typer(help="Benchmarks (print ratios, write JSON).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("predict")
def bench_predict(
    tasks: Annotated[int, typer.Option(help="tasks whose images Label Studio serves")] = 64,
    out: Annotated[Path | None, typer.Option(help="JSON results")] = None,
    model: ModelOpt = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="compare runtimes instead, e.g. onnx,onnx-int8,openvino,openvino-bf16,openvino-int8,lean,"
            "lean-onnx-int8 (onnx, the baseline, always runs)"
        ),
    ] = None,
    imgsz: Annotated[int, typer.Option(min=32, help="with --runtime: the export size")] = 320,
    rounds: Annotated[int, typer.Option(min=1, help="with --runtime: predictor rounds per runtime")] = 5,
) -> None:
    """Images/s of /predict vs a per-task loop, and the raw forward as the ceiling; with --runtime,
    each runtime and precision vs fp32 ONNX Runtime (speed, end to end, RSS, cold start, accuracy)."""
    setup_logging()
    settings = load_settings(model=model)
    if runtime is not None:
        from labelloop.bench.predict import bench_runtimes, parse_runtime

        names = [n.strip() for n in runtime.split(",") if n.strip()]
        for n in names:
            parse_runtime(n)  # a bad name fails before minutes of exports
        out = out or Path("bench-results/predict-runtimes.json")
        bench_runtimes(settings, names, out, tasks=tasks, imgsz=imgsz, rounds=rounds)
        return
    from labelloop.bench.runs import bench_predict as run

    run(settings, n_tasks=tasks, out=out or Path("bench-results/predict.json"))


@bench_app.command("export")
def bench_export(
    images: Annotated[int, typer.Option(help="images timed (and calibrated on, from another split)")] = 32,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/export.json"),
    model: ModelOpt = None,
) -> None:
    """Images/s of each export format vs ONNX Runtime fp32 at 320 and 640, with their accuracy."""
    setup_logging()
    from labelloop.bench.export import bench_export as run

    run(load_settings(model=model), out, images=images)


@bench_app.command("push")
def bench_push(
    tasks: Annotated[int, typer.Option(help="tasks per project")] = 1000,
    chunk: Annotated[int, typer.Option(help="predictions per bulk request")] = 500,
    url: UrlOpt = None,
    token: TokenOpt = None,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/push.json"),
) -> None:
    """Label Studio prelabel push: bulk + journal vs one POST per task (default: a throwaway server)."""
    setup_logging()
    from labelloop.bench.runs import bench_push as run

    run(tasks, out, chunk=chunk, url=url, token=token)


@bench_app.command("sync")
def bench_sync(
    tasks: Annotated[int, typer.Option(help="annotated tasks in the project")] = 10_000,
    url: UrlOpt = None,
    token: TokenOpt = None,
    project: Annotated[int | None, typer.Option(help="an existing annotated project (with --url)")] = None,
    pg_url: Annotated[
        str | None, typer.Option(help="PostgreSQL server URL; a throwaway database is made there ('' skips)")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432",
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/sync.json"),
) -> None:
    """Sync of N annotated tasks from Label Studio into SQLite and PostgreSQL vs the pull alone."""
    setup_logging()
    from labelloop.bench.sync import bench_sync as run

    run(tasks, out, url=url, token=token, pg_url=pg_url or None, project=project)


@bench_app.command("loop")
def bench_loop(
    images: Annotated[int, typer.Option(help="sample images in the loop")] = 36,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 6,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/loop.json"),
) -> None:
    """Time of each stage of one loop (sync, export, train per epoch, eval, promote-to-served)."""
    setup_logging()
    from labelloop.bench.loop import bench_loop as run

    run(load_settings(), out, images=images, epochs=epochs)


@bench_app.command("fuzz")
def bench_fuzz(
    requests_: Annotated[int, typer.Option("--requests", help="hypothesis payloads to send")] = 8000,
    schema_cases: Annotated[
        int, typer.Option(help="schemathesis cases from /openapi.json (each with its auth probes)")
    ] = 2000,
    workers: Annotated[int, typer.Option(help="gunicorn workers of the fuzzed backend")] = 2,
    seed: Annotated[int, typer.Option(help="hypothesis seed (a run is repeatable)")] = 0,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/fuzz.json"),
) -> None:
    """Hostile payloads and schemathesis cases at a backend under gunicorn (>= 10,000 requests by
    default): 0 5xx, every 4xx a JSON message matching /openapi.json, no worker lost (exit 1 otherwise)."""
    setup_logging()
    from labelloop.bench.fuzz import bench_fuzz as run
    from labelloop.cli.common import progress_bar

    with progress_bar("fuzz", requests_ + schema_cases) as advance:
        result = run(requests_, out, schema_cases=schema_cases, workers=workers, seed=seed, progress=advance)
    if not result["ok"]:
        raise typer.Exit(1)


@bench_app.command("load")
def bench_load(
    duration: Annotated[float, typer.Option(help="seconds of load per concurrency level")] = 20.0,
    clients: Annotated[
        str, typer.Option(help="concurrency levels, comma-separated (first = baseline)")
    ] = "1,8,32",
    big_tasks: Annotated[
        int, typer.Option(help="tasks in the large /predict during which /health is probed")
    ] = 10_000,
    workers: Annotated[int, typer.Option(help="gunicorn workers of the backend")] = 2,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/load.json"),
) -> None:
    """/predict p50/p99 and images/s at 1, 8, 32 clients (locust, loopback, CPU) vs 1 client, and
    /health + /setup p99 while a large /predict runs (exit 1 when over Label Studio's 1 s / 3 s)."""
    setup_logging()
    from labelloop.bench.load import bench_load as run

    levels = tuple(int(c) for c in clients.split(",") if c.strip())
    if not run(out, levels=levels, duration_s=duration, big_tasks=big_tasks, workers=workers)["ok"]:
        raise typer.Exit(1)


@bench_app.command("reliability")
def bench_reliability(
    results: Annotated[Path, typer.Option(help="folder of fuzz.json, load.json, faults.json")] = Path(
        "bench-results"
    ),
    out: Annotated[Path, typer.Option(help="the report")] = Path("docs/RELIABILITY.md"),
) -> None:
    """docs/RELIABILITY.md: one table of the fuzz, load and fault figures (requests, 5xx, faults
    injected, items lost or duplicated, latency) from their JSON, with date and commit."""
    from labelloop.bench.reliability import write_report

    print(write_report(results, out))


@bench_app.command("knn")
def bench_knn(
    n: Annotated[int, typer.Option(help="labeled embeddings (the index)")] = 100_000,
    queries: Annotated[int, typer.Option(help="pool embeddings searched")] = 20_000,
    dim: Annotated[int, typer.Option(help="embedding size (yolov8n's neck: 256)")] = 256,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench-results/knn.json"),
) -> None:
    """Novelty's nearest-neighbour search on a big pool: exact faiss vs the IVF index active
    learning uses above 20k labeled images (seconds, speed-up, recall@1, novelty score error)."""
    from labelloop.bench.knn import bench_knn as run

    run(out, n=n, queries=queries, dim=dim)
