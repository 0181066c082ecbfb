"""Run the ML backend under gunicorn, and as a child process (``BackendProcess``: demo, tests, bench).

gthread workers keep /health and /setup answering (Label Studio gives them 1 s and 3 s) while
another thread of the same worker is busy in a long /predict. The model is loaded when a worker
starts, never inside a request.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import requests

from labelloop.procs import Child, free_port
from labelloop.settings import Settings, load_settings

log = logging.getLogger(__name__)


def prepare_metrics_dir() -> None:
    """Prometheus multiprocess mode: every gunicorn worker writes to ``PROMETHEUS_MULTIPROC_DIR`` and
    /metrics sums them. It must be set before prometheus_client is first imported."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="labelloop-metrics-")


def run_gunicorn(settings: Settings, weights: Path) -> None:
    prepare_metrics_dir()
    # lazy: the app imports prometheus_client, which reads the metrics directory when imported
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
                # no keep-alive: gunicorn 26's gthread worker waits out graceful_timeout for an idle
                # kept-alive connection at shutdown (stop took 31 s after a /predict and a /health);
                # Label Studio's calls are few and long, a new loopback/LAN connection costs ~0.1 ms
                "keepalive": 0,
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
    """Load the model as the worker starts so the first /predict isn't slow; a worker that follows a
    model line starts on its champion and watches for the next one (threads of this worker: they
    do not survive gunicorn's fork, so each worker starts its own)."""
    service = worker.wsgi.extensions["labelloop"]
    try:
        from labelloop.backend.serving.rollout import roll_out_later

        if service.access is not None:
            service.follow(roll_out_later(service.settings, service.access))
        else:
            service.follow()
    except Exception:  # the registry may be down at start: serve the configured weights meanwhile
        log.exception("following the model line failed")
    try:
        service.predictor  # noqa: B018 - property loads the model
    except Exception:  # a bad model must still leave /health up to report it
        log.exception("loading the model failed")


def _child_exit(server: Any, worker: Any) -> None:
    from labelloop.backend.serving import metrics

    metrics.mark_process_dead(worker.pid)


class BackendProcess(Child):
    """``labelloop serve`` (gunicorn + rq worker) in its own process group on a free port.

    The child reads ``settings`` (default: this process's) with the model, Redis, a queue prefix
    of its own and the port set; ``env`` adds raw variables on top (tests set limits that way).
    It serves ``weights`` as explicit weights: it follows a model line only with
    ``serve.follow_line`` (or LABELLOOP_SERVE_FOLLOW_LINE=true in ``env``)."""

    def __init__(
        self,
        workdir: Path,
        weights: Path,
        redis_url: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.prefix = f"ll-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        child = (settings or load_settings()).with_(
            model=weights, redis_url=redis_url, queue_prefix=self.prefix, host="127.0.0.1", port=self.port
        )
        if child.serve.follow_line is None:  # weights given = explicit: kept unless told to follow
            child = child.with_(serve_follow_line=False)
        super().__init__(
            "the ML backend",
            [sys.executable, "-m", "labelloop.cli", "serve"],
            {**os.environ, **child.environment(), **(env or {})},
            workdir / "backend.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> BackendProcess:  # type: ignore[override]
        super().start(self._ready, timeout)
        return self

    def _ready(self) -> bool:
        return bool(requests.get(f"{self.url}/health", timeout=1).json().get("model_loaded"))
