"""The backend's Prometheus metrics. Errors are counted by ``ErrorKind`` (a field of every error),
never by reading message text: ``labelloop_errors_total{kind=...}`` has the request errors under the
kind itself (``config``, ``auth``, ``internal``, ...) and the images that could not be predicted
under ``image_<kind>`` (``image_unreadable``, ``image_missing``, ``image_refused``, ...).

Under gunicorn every worker writes to ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them; the
variable must be set before this module is first imported (``serving.gunicorn`` does)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from labelloop.errors import ErrorKind

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
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
FORWARDS = Counter("labelloop_forwards_total", "Images run through the model (not from the result memo)")
MEMO_HITS = Counter("labelloop_memo_hits_total", "Images answered from the result memo, no forward")
WEBHOOKS = Counter("labelloop_webhook_events_total", "Webhook events received", ["action"])


def image_label(kind: ErrorKind) -> str:
    """``image_unreadable`` for ``fetch_unreadable``, ``image_auth`` for ``auth``, ..."""
    return f"image_{kind.value.removeprefix('fetch_')}"


def request(endpoint: str, status: int, seconds: float) -> None:
    REQUESTS.labels(endpoint, str(status)).inc()
    LATENCY.labels(endpoint).observe(seconds)


def error(kind: ErrorKind) -> None:
    ERRORS.labels(kind.value).inc()


def predicted(images: int, seconds: float, failed: Mapping[ErrorKind, int], unmapped: int) -> None:
    """One /predict's images: predicted, failed by kind, regions dropped for want of a label."""
    IMAGES.inc(images)
    if seconds > 0:
        IMAGES_PER_S.set(images / seconds)
    for kind, n in failed.items():
        ERRORS.labels(image_label(kind)).inc(n)
    UNMAPPED.inc(unmapped)


def memo(forwards: int, hits: int) -> None:
    FORWARDS.inc(forwards)
    MEMO_HITS.inc(hits)


def handed_off(tasks: int) -> None:
    BACKGROUND.inc(tasks)


def webhook(action: str) -> None:
    WEBHOOKS.labels(action).inc()


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_VAR):
        multiprocess.mark_process_dead(pid)


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type (all workers' under gunicorn)."""
    if os.environ.get(MULTIPROC_VAR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
