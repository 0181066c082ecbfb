"""``labelloop serve`` and ``labelloop worker``."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from typing import Annotated

import typer

from labelloop.backend.inference.weights import resolve_weights
from labelloop.backend.serving.gunicorn import run_gunicorn
from labelloop.cli.common import ModelOpt, app, console, setup_logging
from labelloop.settings import Settings, load_settings


def open_to_network(settings: Settings) -> str | None:
    """The one warning line for a backend bound beyond loopback with no auth, else None."""
    s = settings.serve
    if s.bearer_token or s.basic_auth_user:
        return None
    host = s.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"WARNING: serving on {s.host}:{s.port} without auth: anyone who reaches this port may call "
        "/setup, /predict and /webhook; set LABELLOOP_BEARER_TOKEN (or LABELLOOP_BASIC_AUTH_USER/_PASS) "
        "and the same in Label Studio's ML backend form, or --host 127.0.0.1"
    )


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
    setup_logging()
    settings = load_settings(model=model, host=host, port=port, http_workers=workers)
    weights = resolve_weights(settings)
    settings = settings.with_(model=weights)
    child = None
    if rq_worker:  # the worker inherits this terminal, and these settings
        env = {**os.environ, **settings.environment()}
        cmd = [sys.executable, "-m", "labelloop.cli", "worker", "--queues", "predict"]
        child = subprocess.Popen(cmd, env=env)  # predictions only: training belongs on `labelloop worker`
    warning = open_to_network(settings)
    if warning:
        console.print(warning, style="bold yellow", highlight=False, soft_wrap=True)
    try:
        console.print(
            f"labelloop ML backend: http://{settings.serve.host}:{settings.serve.port}  model {weights}"
        )
        run_gunicorn(settings, weights)
    finally:
        if child is not None:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option("--queues", help="comma-separated: train, predict (a GPU host: train)")
    ] = "train,predict",
    burst: Annotated[bool, typer.Option(help="exit when the queues are empty")] = False,
) -> None:
    """Run an rq worker for retraining and background predictions (any host that reaches Redis)."""
    setup_logging()
    settings = load_settings()
    # lazy: the worker's imports bring in prometheus_client, which must not be imported before
    # `serve` has set up its multiprocess directory (and they cost every other command seconds)
    from labelloop.backend.jobs.worker import run_worker

    kinds = [q.strip() for q in queues.split(",") if q.strip()]
    where = f"{settings.queue.redis_url} (prefix {settings.queue.prefix})"
    console.print(f"rq worker on {', '.join(kinds)} at {where}")
    run_worker(settings, burst=burst, kinds=kinds)
