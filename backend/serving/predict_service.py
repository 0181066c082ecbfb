"""Label Studio tasks in, Label Studio predictions out: what the HTTP app and the background job
share. It knows task JSON and label configs (through the connectors' format module), never Label
Studio's HTTP API: images are read with the credentials ``project_access`` holds, and tasks left
over when the time budget ends are handed to a callable (the app gives it the rq queue). The model
sits in a hot-reload slot; ``follow`` keeps it on the model line's champion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.backend.inference.images import ImageFetcher, LabelStudioFiles
from labelloop.backend.inference.predictor import Predictor
from labelloop.backend.inference.weights import model_version_of
from labelloop.backend.registry.exports import serving_artifact
from labelloop.backend.registry.lines import ModelRef
from labelloop.backend.registry.slot import ChampionWatcher, ModelSlot, followed_line
from labelloop.backend.serving import metrics
from labelloop.backend.serving.memo import MemoStats, ResultMemo, scope_of
from labelloop.backend.serving.project_access import Credentials, ProjectAccess, configured, project_id
from labelloop.connectors.formats.labelstudio import (
    ControlPlan,
    item_to_ls_prediction,
    parse_label_config,
    select_controls,
)
from labelloop.errors import ConfigError, ErrorKind, LabelloopError
from labelloop.settings import Settings

log = logging.getLogger(__name__)

HandOff = Callable[[list[dict[str, Any]], str, int, Credentials], str]
"""(tasks, label_config, project id, credentials) -> a job id: predict these later, elsewhere."""


@dataclass
class BatchReport:
    """What happened to one batch of tasks, for the response, the logs and the metrics."""

    results: list[dict | None]
    predicted: int = 0
    failed: dict[ErrorKind, int] = field(default_factory=dict)  # why images could not be predicted
    unmapped: int = 0
    elapsed: float = 0.0
    model_version: str = ""
    memo: MemoStats = field(default_factory=MemoStats)  # images from the result memo vs forwarded

    @property
    def unfinished(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r is None]


@dataclass(frozen=True)
class PredictRequest:
    """A ``/predict`` body: ``{tasks, project, label_config, params}``."""

    tasks: list[dict[str, Any]]
    label_config: str
    project: str  # "<id>.<created timestamp>", as Label Studio sends it

    @classmethod
    def parse(cls, body: dict[str, Any]) -> PredictRequest:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise LabelloopError("'tasks' must be a list of task objects", ErrorKind.REJECTED)
        params = body.get("params")
        if params is not None and not isinstance(params, dict):
            raise LabelloopError("'params' must be an object", ErrorKind.REJECTED)
        label_config = body.get("label_config") or (params or {}).get("label_config") or ""
        if not isinstance(label_config, str):
            raise LabelloopError("'label_config' must be a string (the project's XML)", ErrorKind.REJECTED)
        project = body.get("project")
        if project is not None and (isinstance(project, bool) or not isinstance(project, str | int)):
            raise LabelloopError("'project' must be a string or a number", ErrorKind.REJECTED)
        return cls(tasks, label_config, "" if project is None else str(project))


class PredictionService:
    """One per process: the model is loaded once, on first use or at worker start, never in /setup.

    ``access`` and ``hand_off`` are what the HTTP app adds (``setup`` and ``answer``); the background
    job and the prelabel workflow only call ``predict_tasks``."""

    def __init__(
        self,
        settings: Settings,
        weights: Path,
        *,
        label_studio: LabelStudioFiles | None = None,
        access: ProjectAccess | None = None,
        hand_off: HandOff | None = None,
    ) -> None:
        self.settings = settings
        default = configured(settings)
        self.fetcher = ImageFetcher(settings, label_studio or (default.files() if default else None))
        self.access = access
        self.hand_off = hand_off
        self.slot: ModelSlot[Predictor] = ModelSlot(weights, self._load)
        self.watcher: ChampionWatcher | None = None
        self.memo = ResultMemo(settings)

    def _load(self, weights: Path) -> Predictor:
        """The predictor of ``weights``, or of the fastest exported artifact of theirs that passed
        validation (``registry.exports.serving_artifact``; the choice is logged and kept for /health)."""
        t = time.monotonic()
        artifact, choice = serving_artifact(self.settings, weights)
        if choice is not None:
            log.info("%s: %s", weights, choice.summary())
        predictor = Predictor(artifact, self.settings)
        predictor.choice = choice
        log.info(
            "loaded %s (%s, %s runtime) in %.1fs",
            artifact,
            predictor.task,
            predictor.runtime,
            time.monotonic() - t,
        )
        return predictor

    @property
    def served(self) -> dict[str, Any] | None:
        """What is served and why, for /health: the artifact, its runtime and the precision choice."""
        predictor = self.slot.current.model
        if predictor is None:
            return None
        choice = predictor.choice
        return {
            "artifact": predictor.weights.name,
            "runtime": predictor.runtime,
            "precision": choice.to_dict() if choice else None,
        }

    @property
    def weights(self) -> Path:
        """The weights served now (a hot reload changes them)."""
        return self.slot.current.weights

    @property
    def model_version(self) -> str:
        served = self.slot.current
        return served.model.model_version if served.model else model_version_of(served.weights)

    @property
    def predictor(self) -> Predictor:
        return self.slot.model()

    @property
    def loaded(self) -> bool:
        return self.slot.current.model is not None

    def follow(self, on_swap: Callable[[ModelRef], None] | None = None) -> ChampionWatcher | None:
        """Serve the configured model line's champion from now on, when this process follows one
        (``followed_line``): swap to it at once if there is one, then keep watching."""
        line = followed_line(self.settings, self.weights)
        if line is None or self.watcher is not None:
            return self.watcher
        self.watcher = ChampionWatcher(self.settings, line, self.slot, on_swap)
        self.watcher.check()
        return self.watcher.start()

    def plan(self, label_config: str, predictor: Predictor | None = None) -> ControlPlan:
        if not label_config:
            raise ConfigError(
                "the request has no label_config; Label Studio sends the project's config with it"
            )
        return select_controls(parse_label_config(label_config), (predictor or self.predictor).task)

    # ------------------------------------------------------------------ the HTTP app's calls

    def setup(self, project: Any, hostname: str | None, token: str | None) -> str:
        """``/setup``: remember where this project's images are; answer the version (no model load)."""
        if self.access is not None:
            self.access.remember(str(project or ""), hostname, token)
        return self.model_version

    def answer(self, request: PredictRequest) -> tuple[list[Any], str]:
        """``/predict``: one result per task, in order, within the time budget, and the model
        version that made them; tasks not reached get ``[]`` ("no prediction yet") and are handed
        off to be written to Label Studio later."""
        creds = self.access.lookup(request.project) if self.access else configured(self.settings)
        deadline = time.monotonic() + self.settings.predict.budget_s
        report = self.predict_tasks(
            request.tasks, request.label_config, creds.files() if creds else None, deadline
        )
        metrics.predicted(report.predicted, report.elapsed, report.failed, report.unmapped)
        metrics.memo(report.memo.forwards, report.memo.hits)
        rest = report.unfinished
        if rest:
            self._hand_off([request.tasks[i] for i in rest], request, creds, report)
        return [r if r is not None else [] for r in report.results], report.model_version

    def _hand_off(
        self,
        tasks: list[dict[str, Any]],
        request: PredictRequest,
        creds: Credentials | None,
        report: BatchReport,
    ) -> None:
        project = project_id(request.project)
        if creds is None or not project.isdigit() or self.hand_off is None:
            log.error(
                "%d task(s) not predicted within %.0fs and no Label Studio URL to write them later; "
                "set LABELLOOP_LABEL_STUDIO_URL/TOKEN",
                len(tasks),
                self.settings.predict.budget_s,
            )
            return
        job = self.hand_off(tasks, request.label_config, int(project), creds)
        metrics.handed_off(len(tasks))
        log.info(
            "predicted %d of %d task(s) in %.1fs; %d more go to background job %s",
            report.predicted + sum(report.failed.values()),
            len(request.tasks),
            report.elapsed,
            len(tasks),
            job,
        )

    # ------------------------------------------------------------------ shared

    def predict_tasks(
        self,
        tasks: list[dict[str, Any]],
        label_config: str,
        label_studio: LabelStudioFiles | None = None,
        deadline: float | None = None,
    ) -> BatchReport:
        """One prediction (or None when the deadline came first) per task, in task order.

        A task whose image cannot be used gets an empty prediction with score 0.0, so it sorts
        first for a human to look at, and a log line naming the task and the cause.
        """
        t0 = time.monotonic()
        predictor = self.predictor  # held for the whole batch: a hot reload never splits one
        plan = self.plan(label_config, predictor)
        version = predictor.model_version
        report = BatchReport(results=[None] * len(tasks), model_version=version)
        uris = [_image_ref(t, plan.image_key) for t in tasks]
        fetched = self.fetcher.load_many(uris, label_studio)
        scope = scope_of(version, f"{predictor.runtime}:{predictor.weights.name}", predictor.task,
                         self.settings.predict.fingerprint())  # fmt: skip
        outcomes = self.memo.predict(scope, fetched, predictor.predict_fetched, report.memo)
        try:
            for i, outcome in enumerate(outcomes):
                if outcome.item is None:
                    kind = outcome.kind or ErrorKind.INTERNAL
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
