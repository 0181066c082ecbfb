"""Background prediction: tasks a /predict call could not finish within its time budget.

Label Studio sends every task selected in the Data Manager in ONE /predict and gives up after
100 s. The app answers what it finished in time and hands the rest to this job, which predicts
them and writes the predictions through Label Studio's bulk import API. The job runs on an rq
worker (any host that reaches Redis); when Redis is unreachable it runs in a thread of the app
process instead, which is not durable across restarts, and says so in the log.

Writes are idempotent per (task, model_version) and progress is kept in ``job.meta``, so a
retried or restarted job neither loses nor duplicates a prediction.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from labelloop.backend.inference.images import LabelStudioAccess
from labelloop.backend.serving.predict_service import PredictionService
from labelloop.settings import Settings

log = logging.getLogger(__name__)
CHUNK = 200
_services: dict[tuple[str, str], PredictionService] = {}
_services_lock = threading.Lock()


def queue_name(settings: Settings) -> str:
    return f"{settings.queue.prefix}-predict"


def _service(settings: Settings, weights: Path) -> PredictionService:
    """Workers keep the model loaded between jobs (one per weights + settings)."""
    key = (str(weights), settings.predict.fingerprint())
    with _services_lock:
        if key not in _services:
            _services[key] = PredictionService(settings, weights)
        return _services[key]


def predict_and_write(payload: dict[str, Any]) -> dict[str, int]:
    """Predict ``payload['tasks']`` and import the predictions into the Label Studio project."""
    from labelloop.connectors.labelstudio.connector import push_predictions

    settings = Settings.model_validate(payload["settings"])
    service = _service(settings, Path(payload["weights"]))
    ls = LabelStudioAccess(**payload["label_studio"])
    tasks: list[dict[str, Any]] = payload["tasks"]
    job = _current_job()
    start = int(job.meta.get("done", 0)) if job else 0
    written = failed = 0
    for lo in range(start, len(tasks), CHUNK):
        chunk = tasks[lo : lo + CHUNK]
        report = service.predict_tasks(chunk, payload["label_config"], ls)
        preds = [
            {**{k: v for k, v in r.items() if k in ("result", "score", "model_version")}, "task": t["id"]}
            for t, r in zip(chunk, report.results, strict=True)
            if r is not None
        ]
        written += push_predictions(ls.url, ls.token, payload["project"], preds)
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


def _current_job() -> Any:
    try:
        from rq import get_current_job

        return get_current_job()
    except Exception:
        return None


def enqueue(settings: Settings, payload: dict[str, Any]) -> str:
    """Hand tasks to an rq worker; fall back to a thread here when Redis is down. Returns a job id."""
    try:
        from redis import Redis
        from rq import Queue, Retry

        conn = Redis.from_url(settings.queue.redis_url, socket_connect_timeout=2)
        conn.ping()
        job = Queue(queue_name(settings), connection=conn).enqueue(
            predict_and_write,
            payload,
            job_timeout=24 * 3600,
            retry=Retry(max=3, interval=[10, 60, 300]),
            result_ttl=7 * 24 * 3600,
            failure_ttl=30 * 24 * 3600,
            description=f"predict {len(payload['tasks'])} tasks of project {payload['project']}",
        )
        return job.id
    except Exception as e:
        log.error(
            "cannot queue background prediction on %s (%s); running it in this process instead, "
            "which a restart would interrupt: start Redis and `labelloop worker` for durable jobs",
            settings.queue.redis_url,
            e,
        )
        t = threading.Thread(target=_run_logged, args=(payload,), daemon=True, name="background-predict")
        t.start()
        return f"thread-{t.ident}"


def _run_logged(payload: dict[str, Any]) -> None:
    try:
        predict_and_write(payload)
    except Exception:
        log.exception("background prediction for project %s failed", payload.get("project"))
