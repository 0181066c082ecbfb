"""The Label Studio ML-backend HTTP app: routes only, over PredictionService.

Protocol-compatible with Label Studio 1.23: ``/health`` (1 s budget), ``/setup`` (3 s, sent before
every predict: answers the model version without loading a model), ``/predict`` (exactly one
result per task, in order), ``/versions``, ``/webhook`` (records the event; never trains in the
request) and ``/metrics`` (Prometheus). Each route parses, calls one service method and
serialises; auth, errors and request metrics are the ``endpoint`` wrapper's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from labelloop.backend.jobs.queues import predict_later
from labelloop.backend.serving import metrics
from labelloop.backend.serving.auth import Authenticator
from labelloop.backend.serving.openapi import openapi_document
from labelloop.backend.serving.predict_service import PredictionService, PredictRequest
from labelloop.backend.serving.project_access import ProjectAccess
from labelloop.backend.serving.webhooks import WebhookLog
from labelloop.errors import ErrorKind, LabelloopError, kind_of
from labelloop.settings import Settings

log = logging.getLogger(__name__)
OPEN = ("health",)  # liveness needs no credentials
MAX_BODY_BYTES = 512 * 1024**2  # a 10,000-task /predict is a few MB; this bounds a hostile one


def _status(kind: ErrorKind) -> int:
    return 422 if kind is ErrorKind.CONFIG else 400


def _endpoint(
    name: str, auth: Authenticator, open_: tuple[str, ...] = OPEN
) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Auth, one JSON error message per failure (counted by kind), request count and latency."""

    def deco(fn: Callable[..., Response]) -> Callable[..., Response]:
        @wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Response:
            t = time.monotonic()
            try:
                if name not in open_ and not auth.allows(request):
                    metrics.error(ErrorKind.AUTH)
                    resp = auth.challenge()
                else:
                    resp = fn(*a, **kw)
            except LabelloopError as e:
                metrics.error(e.kind)
                log.warning("%s: %s", name, e)
                resp = jsonify(error=str(e))
                resp.status_code = _status(e.kind)
            except HTTPException as e:  # e.g. a body over MAX_CONTENT_LENGTH
                resp = jsonify(error=f"{e.name}: {e.description}")
                resp.status_code = e.code or 400
            except Exception as e:
                metrics.error(kind_of(e))
                log.exception("%s failed", name)
                # the text of an unknown exception may hold a URL or a header: it stays in the log
                resp = jsonify(error=f"internal error ({type(e).__name__}); the ML backend's log has more")
                resp.status_code = 500
            metrics.request(name, resp.status_code, time.monotonic() - t)
            return resp

        return wrapper

    return deco


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise LabelloopError("request body must be a JSON object", ErrorKind.REJECTED)
    return data


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise LabelloopError(f"'{key}' must be a string", ErrorKind.REJECTED)


def create_app(settings: Settings, weights: Path, service: PredictionService | None = None) -> Flask:
    app = Flask("labelloop")
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if service is None:
        service = PredictionService(settings, weights, access=ProjectAccess(settings))
        service.hand_off = predict_later(settings, lambda: service.weights)
    app.extensions["labelloop"] = service
    webhooks = WebhookLog(settings)
    auth = Authenticator(settings.serve)
    open_ = (*OPEN, "metrics") if settings.serve.metrics_open else OPEN

    def endpoint(name: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        return _endpoint(name, auth, open_)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:  # 404, 405, ...: JSON like every other error
        resp = jsonify(error=f"{e.name}: {e.description}")
        resp.status_code = e.code or 400
        return resp

    @app.get("/health")
    @app.get("/")
    @endpoint("health")
    def health() -> Response:
        version = service.model_version
        return jsonify(
            status="UP",
            model_class="labelloop.YOLO",
            model_version=version,
            model_loaded=service.loaded,
            served=service.served,  # the artifact, runtime and precision choice (and why)
            reload_error=service.watcher.error if service.watcher else None,  # champion not served
            pid=os.getpid(),  # which worker answered: each swaps on its own
        )

    @app.post("/setup")
    @endpoint("setup")
    def setup() -> Response:
        data = _body()
        project = data.get("project")
        if project is not None and (isinstance(project, bool) or not isinstance(project, str | int)):
            raise LabelloopError("'project' must be a string or an integer", ErrorKind.REJECTED)
        for key in ("schema", "model_version"):  # unused here (/setup loads no model), still typed
            _text(data, key)
        version = service.setup(project, _text(data, "hostname"), _text(data, "access_token"))
        return jsonify(model_version=version)

    @app.get("/versions")
    @endpoint("versions")
    def versions() -> Response:
        return jsonify(versions=[service.model_version], model_version=service.model_version)

    @app.post("/predict")
    @endpoint("predict")
    def predict() -> Response:
        results, version = service.answer(PredictRequest.parse(_body()))
        return jsonify(results=results, model_version=version)

    @app.post("/webhook")
    @endpoint("webhook")
    def webhook() -> Response:
        return jsonify(status="ok", action=webhooks.record(_body()))

    @app.get("/openapi.json")
    @endpoint("openapi")
    def openapi() -> Response:
        return jsonify(openapi_document(service.model_version, auth.schemes))

    @app.get("/metrics")
    @endpoint("metrics")
    def metrics_() -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, mimetype=content_type)

    return app
