"""Queue names, the Redis connection, and handing work to rq workers.

Queues are named ``<prefix>-<kind>`` (``labelloop-predict``, ``labelloop-train``), so several
deployments can share one Redis. Jobs are enqueued by their import path, and a worker on any host
that reaches Redis runs them (``labelloop worker``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue, Retry

from labelloop.backend.jobs import predict as predict_job
from labelloop.backend.serving.predict_service import HandOff
from labelloop.backend.serving.project_access import Credentials
from labelloop.settings import Settings

log = logging.getLogger(__name__)
PREDICT = "predict"
TRAIN = "train"


def queue_name(settings: Settings, kind: str = PREDICT) -> str:
    return f"{settings.queue.prefix}-{kind}"


def redis(settings: Settings, connect_timeout: float = 2, timeout: float | None = None) -> Redis:
    """A client for the configured Redis (nothing is sent until it is used)."""
    return Redis.from_url(
        settings.queue.redis_url, socket_connect_timeout=connect_timeout, socket_timeout=timeout
    )


def enqueue_predict(
    settings: Settings, payload: dict[str, Any], credentials: Credentials | None = None
) -> str:
    """Hand tasks to an rq worker (``jobs.predict.predict_and_write``); when Redis is down, run them in
    a thread of this process instead (with ``credentials``: Redis cannot lend the token then), which
    a restart would interrupt, and say so. Returns a job id."""
    try:
        conn = redis(settings)
        conn.ping()
        job = Queue(queue_name(settings), connection=conn).enqueue(
            predict_job.predict_and_write,
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
        t = threading.Thread(
            target=predict_job.run_logged,
            args=(payload, credentials),
            daemon=True,
            name="background-predict",
        )
        t.start()
        return f"thread-{t.ident}"


def predict_later(settings: Settings, weights: Callable[[], Path]) -> HandOff:
    """The ``hand_off`` the HTTP app gives its PredictionService: enqueue a background predict job
    with the weights served at that moment (``weights()``: a hot reload changes them)."""

    def hand_off(tasks: list[dict[str, Any]], label_config: str, project: int, creds: Credentials) -> str:
        payload = predict_job.payload_for(settings, weights(), tasks, project, label_config, creds)
        return enqueue_predict(settings, payload, creds)

    return hand_off
