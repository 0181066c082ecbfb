"""The Label Studio ML-backend HTTP app: a thin Flask adapter over PredictionService.

Protocol-compatible with Label Studio 1.23: ``/health`` (1 s budget), ``/setup`` (3 s, sent before
every predict: answers the model version without loading a model), ``/predict`` (exactly one
result per task, in order), ``/versions``, ``/webhook`` (records the event; never trains in the
request) and ``/metrics`` (Prometheus). Label Studio's credentials from ``/setup`` are kept in
Redis per project so whichever worker or host serves the next ``/predict`` can read its images.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from functools import wraps
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from labelloop.backend.inference.images import LabelStudioAccess
from labelloop.backend.jobs import predict as jobs
from labelloop.backend.serving.predict_service import PredictionService
from labelloop.errors import ConfigError, LabelloopError
from labelloop.settings import Settings

log = logging.getLogger(__name__)

REQUESTS = Counter("labelloop_requests_total", "HTTP requests", ["endpoint", "status"])
LATENCY = Histogram(
    "labelloop_request_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100),
)
IMAGES = Counter("labelloop_images_total", "Images predicted (rate() gives images/s)")
IMAGES_PER_S = Gauge(
    "labelloop_images_per_second", "Throughput of the last /predict", multiprocess_mode="max"
)
ERRORS = Counter("labelloop_errors_total", "Errors by kind", ["kind"])
UNMAPPED = Counter("labelloop_unmapped_regions_total", "Regions dropped: class without a label in the config")
BACKGROUND = Counter("labelloop_background_tasks_total", "Tasks handed to background prediction")
WEBHOOKS = Counter("labelloop_webhook_events_total", "Webhook events received", ["action"])


def _redis(settings: Settings) -> Any:
    from redis import Redis

    return Redis.from_url(settings.queue.redis_url, socket_connect_timeout=1, socket_timeout=2)


class _ProjectAccess:
    """Label Studio URL + token per project, as /setup reported them; Redis-backed, memory fallback."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._mem: dict[str, dict] = {}

    def _key(self, project: str) -> str:
        return f"{self.settings.queue.prefix}:ls-access:{project}"

    def put(self, project: str, hostname: str | None, token: str | None) -> None:
        if not hostname:
            return
        value = {"url": hostname.rstrip("/"), "token": token}
        self._mem[project] = value
        try:
            _redis(self.settings).set(self._key(project), json.dumps(value), ex=7 * 24 * 3600)
        except Exception as e:
            log.debug("cannot store Label Studio access in Redis: %s", e)

    def get(self, project: str) -> LabelStudioAccess | None:
        s = self.settings
        if s.labelstudio.url:  # configured settings win over what a request said
            return LabelStudioAccess(s.labelstudio.url, s.labelstudio.token)
        value = self._mem.get(project)
        if value is None:
            try:
                raw = _redis(s).get(self._key(project))
                value = json.loads(raw) if raw else None
            except Exception:
                value = None
        return LabelStudioAccess(**value) if value else None


def project_id(project: Any) -> str:
    """Label Studio sends ``"<id>.<created timestamp>"``; the id is what the API needs."""
    return str(project).split(".")[0] if project is not None else ""


def create_app(settings: Settings, weights: Path, service: PredictionService | None = None) -> Flask:
    app = Flask("labelloop")
    app.json.sort_keys = False
    service = service or PredictionService(settings, weights)
    access = _ProjectAccess(settings)
    app.extensions["labelloop"] = service

    def authorized() -> bool:
        if settings.serve.bearer_token:
            got = request.headers.get("Authorization", "")
            if hmac.compare_digest(got, f"Bearer {settings.serve.bearer_token}"):
                return True
        if settings.serve.basic_auth_user:
            a = request.authorization
            if (
                a
                and hmac.compare_digest(a.username or "", settings.serve.basic_auth_user)
                and hmac.compare_digest(a.password or "", settings.serve.basic_auth_pass or "")
            ):
                return True
        return not (settings.serve.bearer_token or settings.serve.basic_auth_user)

    def endpoint(name: str):  # type: ignore[no-untyped-def]
        def deco(fn):  # type: ignore[no-untyped-def]
            @wraps(fn)
            def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
                t = time.monotonic()
                try:
                    if name not in ("health",) and not authorized():
                        ERRORS.labels("auth").inc()
                        resp = jsonify(
                            error="authentication required: configure the ML backend's basic auth "
                            "or bearer token in Label Studio to match this server"
                        )
                        resp.status_code = 401
                        resp.headers["WWW-Authenticate"] = 'Basic realm="labelloop"'
                    else:
                        resp = fn(*a, **kw)
                except LabelloopError as e:
                    ERRORS.labels("config" if isinstance(e, ConfigError) else "request").inc()
                    log.warning("%s: %s", name, e)
                    resp = jsonify(error=str(e))
                    resp.status_code = 422 if isinstance(e, ConfigError) else 400
                except Exception as e:
                    ERRORS.labels("internal").inc()
                    log.exception("%s failed", name)
                    resp = jsonify(error=f"internal error: {type(e).__name__}: {e}")
                    resp.status_code = 500
                REQUESTS.labels(name, str(resp.status_code)).inc()
                LATENCY.labels(name).observe(time.monotonic() - t)
                return resp

            return wrapper

        return deco

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise LabelloopError("request body must be a JSON object")
        return data

    @app.get("/health")
    @app.get("/")
    @endpoint("health")
    def health() -> Response:
        return jsonify(
            status="UP",
            model_class="labelloop.YOLO",
            model_version=service.model_version,
            model_loaded=service.loaded,
        )

    @app.post("/setup")
    @endpoint("setup")
    def setup() -> Response:
        data = body()
        access.put(project_id(data.get("project")), data.get("hostname"), data.get("access_token"))
        return jsonify(model_version=service.model_version)

    @app.get("/versions")
    @endpoint("versions")
    def versions() -> Response:
        return jsonify(versions=[service.model_version], model_version=service.model_version)

    @app.post("/predict")
    @endpoint("predict")
    def predict() -> Response:
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise LabelloopError("'tasks' must be a list of task objects")
        label_config = data.get("label_config") or (data.get("params") or {}).get("label_config") or ""
        project = project_id(data.get("project"))
        ls = access.get(project)
        deadline = time.monotonic() + settings.predict.budget_s
        report = service.predict_tasks(tasks, label_config, ls, deadline)
        for kind, n in report.failed.items():
            ERRORS.labels(f"image_{kind}").inc(n)
        UNMAPPED.inc(report.unmapped)
        done = report.predicted + sum(report.failed.values())
        IMAGES.inc(report.predicted)
        if report.elapsed > 0:
            IMAGES_PER_S.set(report.predicted / report.elapsed)
        rest = report.unfinished
        results: list[Any] = [r if r is not None else [] for r in report.results]  # [] = "no prediction yet"
        if rest:
            if ls is None or not project:
                log.error(
                    "%d task(s) not predicted within %.0fs and no Label Studio URL to write them later; "
                    "set LABELLOOP_LABEL_STUDIO_URL/TOKEN",
                    len(rest),
                    settings.predict.budget_s,
                )
            else:
                job = jobs.enqueue(
                    settings,
                    {
                        "tasks": [{"id": tasks[i].get("id"), "data": tasks[i].get("data")} for i in rest],
                        "project": int(project),
                        "label_config": label_config,
                        "weights": str(service.weights),
                        "settings": settings.model_dump(mode="json"),
                        "label_studio": {"url": ls.url, "token": ls.token},
                    },
                )
                BACKGROUND.inc(len(rest))
                log.info(
                    "predicted %d of %d task(s) in %.1fs; %d more go to background job %s",
                    done,
                    len(tasks),
                    report.elapsed,
                    len(rest),
                    job,
                )
        return jsonify(results=results, model_version=service.model_version)

    @app.post("/webhook")
    @endpoint("webhook")
    def webhook() -> Response:
        data = body()
        action = str(data.get("action", "unknown"))
        WEBHOOKS.labels(action).inc()
        event = {
            "action": action,
            "project": (data.get("project") or {}).get("id")
            if isinstance(data.get("project"), dict)
            else data.get("project"),
            "received": time.time(),
        }
        try:
            r = _redis(settings)
            key = f"{settings.queue.prefix}:events"
            r.lpush(key, json.dumps(event))
            r.ltrim(key, 0, 9999)
        except Exception as e:
            log.warning("webhook %s not recorded (Redis: %s); the sync poll will still see it", action, e)
        return jsonify(status="ok", action=action)

    @app.get("/metrics")
    @endpoint("metrics")
    def metrics() -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            payload = generate_latest(registry)
        else:
            payload = generate_latest()
        return Response(payload, mimetype=CONTENT_TYPE_LATEST)

    return app
