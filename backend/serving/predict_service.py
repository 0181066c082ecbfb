"""Label Studio tasks in, Label Studio predictions out: the part the HTTP app and the background
job share. It knows task JSON and label configs (through the connectors' format module), never
Label Studio's HTTP API."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.backend.inference.images import ImageFetcher, LabelStudioAccess
from labelloop.backend.inference.predictor import Predictor
from labelloop.backend.inference.weights import model_version_of
from labelloop.connectors.formats.labelstudio import (
    ControlPlan,
    item_to_ls_prediction,
    parse_label_config,
    select_controls,
)
from labelloop.errors import ConfigError
from labelloop.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What happened to one /predict call's tasks, for the response, the logs and the metrics."""

    results: list[dict | None]
    predicted: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # error kind -> count
    unmapped: int = 0
    elapsed: float = 0.0

    @property
    def unfinished(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r is None]


def error_kind(message: str) -> str:
    m = message.lower()
    for kind, needles in (
        ("refused", ("refused", "private", "local_roots")),
        ("too_large", ("larger than", "pixels, over")),
        ("unreadable", ("not a readable image",)),
        ("auth", ("credentials", "401", "403")),
        ("missing", ("404", "does not exist", "no image reference", "cannot read")),
        ("download", ("cannot download", "cannot resolve", "http")),
        ("model", ("model failed",)),
    ):
        if any(n in m for n in needles):
            return kind
    return "other"


class PredictionService:
    """One per process: the model is loaded once, on first use or at worker start, never in /setup."""

    def __init__(self, settings: Settings, weights: Path) -> None:
        self.settings = settings
        self.weights = weights
        self.fetcher = ImageFetcher(settings)
        self._predictor: Predictor | None = None
        self._load_lock = threading.Lock()

    @property
    def model_version(self) -> str:
        return self._predictor.model_version if self._predictor else model_version_of(self.weights)

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            with self._load_lock:
                if self._predictor is None:
                    t = time.monotonic()
                    self._predictor = Predictor(self.weights, self.settings)
                    log.info(
                        "loaded %s (%s, %s runtime) in %.1fs",
                        self.weights,
                        self._predictor.task,
                        self._predictor.runtime,
                        time.monotonic() - t,
                    )
        return self._predictor

    @property
    def loaded(self) -> bool:
        return self._predictor is not None

    def plan(self, label_config: str) -> ControlPlan:
        if not label_config:
            raise ConfigError(
                "the request has no label_config; Label Studio sends the project's config with it"
            )
        return select_controls(parse_label_config(label_config), self.predictor.task)

    def predict_tasks(
        self,
        tasks: list[dict[str, Any]],
        label_config: str,
        label_studio: LabelStudioAccess | None = None,
        deadline: float | None = None,
    ) -> BatchReport:
        """One prediction (or None when the deadline came first) per task, in task order.

        A task whose image cannot be used gets an empty prediction with score 0.0, so it sorts
        first for a human to look at, and a log line naming the task and the cause.
        """
        t0 = time.monotonic()
        plan = self.plan(label_config)
        predictor = self.predictor
        version = predictor.model_version
        report = BatchReport(results=[None] * len(tasks))
        uris = [_image_ref(t, plan.image_key) for t in tasks]
        fetched = self.fetcher.load_many(uris, label_studio)
        outcomes = predictor.predict_fetched(fetched)
        try:
            for i, outcome in enumerate(outcomes):
                if outcome.item is None:
                    kind = error_kind(outcome.error or "")
                    report.failed[kind] = report.failed.get(kind, 0) + 1
                    log.warning("task %s: no prediction: %s", tasks[i].get("id"), outcome.error)
                    report.results[i] = {"result": [], "score": 0.0, "model_version": version}
                else:
                    pred, dropped = item_to_ls_prediction(
                        outcome.item, plan, version, self.settings.predict.label_map
                    )
                    pred["uncertainty"] = outcome.item.metadata.get("uncertainty")
                    report.unmapped += dropped
                    report.predicted += 1
                    report.results[i] = pred
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            outcomes.close()
            fetched.close()  # cancels the fetch window: nothing keeps downloading for tasks handed off
        report.elapsed = time.monotonic() - t0
        if report.unmapped:
            log.info(
                "dropped %d region(s) whose class has no label in the project's config "
                "(map them with LABELLOOP_LABEL_MAP or predicted_values)",
                report.unmapped,
            )
        return report


def _image_ref(task: dict[str, Any], key: str) -> str:
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return ""
    return data.get(key) or ""
