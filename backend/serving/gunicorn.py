"""Run the ML backend under gunicorn, and the rq worker that finishes big /predict batches.

gthread workers keep /health and /setup answering (Label Studio gives them 1 s and 3 s) while
another thread of the same worker is busy in a long /predict. The model is loaded when a worker
starts, never inside a request.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from labelloop.connectors.labelstudio.server import free_port
from labelloop.errors import RemoteError
from labelloop.procs import spawn, stop_group, tail
from labelloop.settings import Settings

log = logging.getLogger(__name__)


def prepare_metrics_dir() -> None:
    """Prometheus multiprocess mode: every gunicorn worker writes here, /metrics sums them."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="labelloop-metrics-")


def run_gunicorn(settings: Settings, weights: Path) -> None:
    prepare_metrics_dir()
    from gunicorn.app.base import BaseApplication

    from labelloop.backend.serving.app import create_app

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            cfg = {
                "bind": f"{settings.serve.host}:{settings.serve.port}",
                "workers": settings.serve.http_workers,
                "worker_class": "gthread",
                "threads": 4,
                "timeout": int(settings.predict.budget_s + 120),
                "graceful_timeout": 30,
                "accesslog": "-",
                "post_worker_init": _warm,
                "child_exit": _child_exit,
            }
            for k, v in cfg.items():
                self.cfg.set(k, v)

        def load(self) -> Any:
            return create_app(settings, weights)

    _App().run()


def _warm(worker: Any) -> None:
    """Load the model as the worker starts so the first /predict isn't slow."""
    try:
        worker.wsgi.extensions["labelloop"].predictor  # noqa: B018 - property loads the model
    except Exception:  # a bad model must still leave /health up to report it
        log.exception("loading the model failed")


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def run_worker(settings: Settings, burst: bool = False) -> None:
    """An rq worker for background prediction; it keeps the model loaded between jobs."""
    from redis import Redis
    from rq import Queue, SimpleWorker

    from labelloop.backend.jobs.predict import queue_name

    conn = Redis.from_url(settings.queue.redis_url)
    worker = SimpleWorker([Queue(queue_name(settings), connection=conn)], connection=conn)
    worker.work(burst=burst, with_scheduler=True)


class BackendProcess:
    """``labelloop serve`` (gunicorn + rq worker) in a subprocess on a free port (demo, tests, bench)."""

    def __init__(
        self,
        workdir: Path,
        weights: Path,
        redis_url: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.prefix = f"ll-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "LABELLOOP_MODEL": str(weights),
            "LABELLOOP_REDIS_URL": redis_url,
            "LABELLOOP_QUEUE_PREFIX": self.prefix,
            "LABELLOOP_HOST": "127.0.0.1",
            "LABELLOOP_PORT": str(self.port),
            **(env or {}),
        }
        self.log_path = workdir / "backend.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> BackendProcess:
        self.proc = spawn([sys.executable, "-m", "labelloop.cli", "serve"], self.env, self.log_path)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RemoteError(f"the ML backend exited:\n{self.log()}")
            try:
                h = requests.get(f"{self.url}/health", timeout=1).json()
                if h.get("model_loaded"):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RemoteError(f"the ML backend was not ready in {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        return tail(self.log_path)

    def stop(self) -> None:
        stop_group(self.proc)
        self.proc = None
