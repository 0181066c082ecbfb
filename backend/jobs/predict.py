"""Background prediction: tasks a /predict call could not finish within its time budget.

Label Studio sends every task selected in the Data Manager in ONE /predict and gives up after
100 s. The app answers what it finished in time and hands the rest to this job, which predicts
them and writes the predictions through the Label Studio connector's bulk import. The job runs on
an rq worker (any host that reaches Redis), or in a thread of the app when Redis is down (see
``jobs.queues.enqueue_predict``).

Writes are idempotent per (task, model_version) and progress is kept in ``job.meta``, so a
retried or restarted job neither loses nor duplicates a prediction.

A payload carries no secret: job arguments sit in Redis and show in rq-dashboard. The settings go
without tokens and passwords (the worker has its own), and the Label Studio server goes as its URL
and the /setup project string; the worker reads the token kept for that pair (``ProjectAccess``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from rq import get_current_job

from labelloop.backend.inference.images import safe_url
from labelloop.backend.serving.predict_service import PredictionService
from labelloop.backend.serving.project_access import Credentials, ProjectAccess
from labelloop.connectors.labelstudio import LabelStudioClient, push_predictions
from labelloop.connectors.labelstudio.projects import set_model_version
from labelloop.errors import ErrorKind, LabelloopError
from labelloop.settings import Settings, load_settings, public_dump, with_local_secrets

log = logging.getLogger(__name__)
CHUNK = 200
KEEP_MODELS = 2
_services: dict[tuple[str, str], PredictionService] = {}
_services_lock = threading.Lock()


def payload_for(
    settings: Settings,
    weights: Path,
    tasks: list[dict[str, Any]],
    project: int,
    label_config: str,
    credentials: Credentials,
) -> dict[str, Any]:
    """What a job needs, as JSON: the tasks (id and data), where to write, and how to predict."""
    return {
        "tasks": [{"id": t.get("id"), "data": t.get("data")} for t in tasks],
        "project": project,
        "label_config": label_config,
        "weights": str(weights),
        "settings": public_dump(settings),
        "label_studio": {"url": credentials.url, "project": credentials.project},
    }


def _service(settings: Settings, weights: Path) -> PredictionService:
    """Workers keep the model loaded between jobs (one per weights + settings; the last few only, so
    a worker that lives through many champions does not hold them all)."""
    key = (str(weights), settings.predict.fingerprint())
    with _services_lock:
        service = _services.pop(key, None) or PredictionService(settings, weights)
        _services[key] = service  # most recently used last
        while len(_services) > KEEP_MODELS:
            _services.pop(next(iter(_services)))
        return service


def _weights(settings: Settings, payload: dict[str, Any]) -> Path:
    """The payload's weights file, or, when it is a registry version this host has not fetched
    (the job was queued on another host), that version fetched from the registry."""
    weights = Path(payload["weights"])
    ref = payload.get("registry")
    if weights.is_file() or not ref:
        return weights
    from labelloop.backend.registry.lines import fetch_weights, get_version

    return fetch_weights(settings, get_version(settings, ref["line"], ref["version"]))


def credentials_for(settings: Settings, where: dict[str, Any]) -> Credentials:
    """The token for the payload's server: the configured one, else the one /setup left for
    (project, server); gone after its TTL, which is an AUTH failure that names the fix."""
    creds = ProjectAccess(settings).get(str(where.get("project") or ""), str(where["url"]))
    if creds is None:
        raise LabelloopError(
            f"no Label Studio token known for {safe_url(where['url'])} project {where.get('project')}: "
            "it expired (no /setup within the TTL); open the project in Label Studio, or set "
            "LABELLOOP_LABEL_STUDIO_URL and LABELLOOP_LABEL_STUDIO_TOKEN for the worker",
            ErrorKind.AUTH,
        )
    return creds


def predict_and_write(payload: dict[str, Any], credentials: Credentials | None = None) -> dict[str, int]:
    """Predict ``payload['tasks']`` and import the predictions into the Label Studio project;
    ``credentials`` only in this process (the thread fallback), never in a queued payload."""
    settings = with_local_secrets(Settings.model_validate(payload["settings"]), load_settings())
    service = _service(settings, _weights(settings, payload))
    creds = credentials or credentials_for(settings, payload["label_studio"])
    files = creds.files()
    tasks: list[dict[str, Any]] = payload["tasks"]
    job = get_current_job()
    start = int(job.meta.get("done", 0)) if job else 0
    written = failed = 0
    for lo in range(start, len(tasks), CHUNK):
        chunk = tasks[lo : lo + CHUNK]
        report = service.predict_tasks(chunk, payload["label_config"], files)
        preds = [
            {**{k: v for k, v in r.items() if k in ("result", "score", "model_version")}, "task": t["id"]}
            for t, r in zip(chunk, report.results, strict=True)
            if r is not None
        ]
        written += push_predictions(creds.url, creds.token, payload["project"], preds)
        if payload.get("set_model_version") and written and report.model_version:
            _show(creds, payload["project"], report.model_version)
            payload["set_model_version"] = False
        failed += sum(report.failed.values())
        if job:
            job.meta.update(done=lo + len(chunk), total=len(tasks), written=written, failed=failed)
            job.save_meta()
    log.info(
        "background prediction for project %s: %d tasks, %d written, %d without image",
        payload["project"],
        len(tasks),
        written,
        failed,
    )
    return {"tasks": len(tasks), "written": written, "failed": failed}


def _show(creds: Credentials, project: int, model_version: str) -> None:
    """Make the project show ``model_version`` (a hot reload's rollout asks for it once the first
    predictions of that version are written: Label Studio refuses a version nothing carries)."""
    try:
        set_model_version(LabelStudioClient(creds.url, creds.token), project, model_version)
    except Exception as e:
        log.error("project %s: cannot set model_version %s: %s", project, model_version, e)


def run_logged(payload: dict[str, Any], credentials: Credentials | None = None) -> None:
    """``predict_and_write`` in a thread (no rq): failures go to the log."""
    try:
        predict_and_write(payload, credentials)
    except Exception:
        log.exception("background prediction for project %s failed", payload.get("project"))
