"""Fine-tune on a dataset version with Ultralytics' own trainer, stage by stage of the recipe.

The version is exported (YOLO format) into a work dir; each stage is one ``YOLO.train`` call, the
second starting from the first's ``last.pt``. labelloop only adds callbacks: one reports each
finished epoch (metrics with plain names, for MLflow and rq's ``job.meta``), one asks ``cancel``
before and after every epoch and stops the run with TrainingCancelled. No loop of ours, no fork.
"""

from __future__ import annotations

import csv
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labelloop.backend.inference.demo_model import build_demo_model
from labelloop.backend.inference.runtime import pick_device
from labelloop.backend.inference.yolo_env import ensure_yolo_env, without_ultralytics_mlflow
from labelloop.backend.training.recipe import Recipe, Stage, make_recipe
from labelloop.backend.training.sample_weights import weight_pseudo
from labelloop.errors import ConfigError, DataError, ModelError, TrainingCancelled
from labelloop.settings import Settings
from labelloop.sync.export import ExportReport, export_version
from labelloop.sync.store import Store


@dataclass(frozen=True)
class TrainProgress:
    """One step of a training job, as the terminal bar and rq's ``job.meta`` show it."""

    stage: str  # export, head, full (recipe stages), eval, register, done
    epoch: int  # epochs finished, over all stages
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # since the job started

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressFn = Callable[[TrainProgress], None]
CancelFn = Callable[[], bool]


@dataclass
class TrainResult:
    version_id: str
    data_yaml: Path
    names: list[str]
    images: dict[str, int]  # split -> images exported
    base_weights: Path
    best: Path
    last: Path
    results_csv: Path
    recipe: Recipe
    stage_args: dict[str, dict[str, Any]]  # the arguments Ultralytics' trainer ran each stage with
    history: list[dict[str, Any]]  # one row per epoch: stage, epoch, metrics
    seconds: dict[str, float]  # export, and each stage by name


def metric_name(key: str) -> str:
    """Ultralytics' ``metrics/mAP50-95(B)`` as ``val/mAP50-95`` (MLflow refuses parentheses)."""
    return key.replace("(B)", "").replace("metrics/", "val/")


def default_base_weights(settings: Settings) -> Path:
    """``settings.train.base_weights``, else the embedded demo detector (built once, cached)."""
    path = settings.train.base_weights
    if path is None:
        return build_demo_model(settings.cache_dir, progress=False)
    if not path.is_file():
        raise ModelError(f"base weights {path} do not exist (--base-weights / LABELLOOP_TRAIN_BASE_WEIGHTS)")
    return path


def export_for_training(store: Store, version_ref: str, out: Path) -> ExportReport:
    """The version as an Ultralytics detect dataset with a non-empty train and val split."""
    rep = export_version(store, version_ref, out, "yolo")
    if rep.task != "detect":
        raise ConfigError(f"version {rep.version[:12]} is a {rep.task} dataset; training supports detect")
    for split in ("train", "val"):
        if not rep.images.get(split):
            raise DataError(
                f"version {rep.version[:12]} has no {split} images; training needs both splits "
                "(val holds the human-verified labels the gate judges on)"
            )
    return rep


class _Hooks:
    """The callbacks one training adds to Ultralytics' trainer."""

    def __init__(
        self, recipe: Recipe, progress: ProgressFn | None, cancel: CancelFn | None, t0: float
    ) -> None:
        self.recipe, self.progress, self.cancel, self.t0 = recipe, progress, cancel, t0
        self.done = 0  # epochs finished, over all stages
        self.stage: Stage | None = None
        self.stage_done = 0  # epochs of the current stage reported
        self.history: list[dict[str, Any]] = []
        self.stage_args: dict[str, dict[str, Any]] = {}

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise TrainingCancelled(f"training cancelled after {self.done} of {self.recipe.epochs} epochs")

    def attach(self, model: Any, stage: Stage) -> None:
        self.stage, self.stage_done = stage, 0
        model.add_callback("on_train_start", self._on_start)
        model.add_callback("on_train_epoch_start", lambda _t: self.check_cancel())
        model.add_callback("on_fit_epoch_end", self._on_epoch)

    def _on_start(self, trainer: Any) -> None:
        assert self.stage is not None
        keys = [*self.recipe.train_args(self.stage), "data", "device"]
        self.stage_args[self.stage.name] = {k: getattr(trainer.args, k, None) for k in keys}

    def _on_epoch(self, trainer: Any) -> None:
        assert self.stage is not None
        if self.stage_done >= self.stage.epochs:
            return  # Ultralytics' final validation of best.pt fires this hook once more
        self.stage_done += 1
        self.done += 1
        raw = {
            **trainer.label_loss_items(trainer.tloss, prefix="train"),
            **(trainer.metrics or {}),
            **(trainer.lr or {}),
        }
        metrics = {metric_name(k): float(v) for k, v in raw.items()}
        epoch = self.done
        self.history.append({"stage": self.stage.name, "epoch": epoch, **metrics})
        if self.progress is not None:
            self.progress(
                TrainProgress(self.stage.name, epoch, self.recipe.epochs, metrics, time.monotonic() - self.t0)
            )
        if epoch < self.recipe.epochs:
            self.check_cancel()


def train_version(
    settings: Settings,
    store: Store,
    version_ref: str,
    *,
    base_weights: Path | None = None,
    epochs: int | None = None,
    imgsz: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    workdir: Path | None = None,
) -> TrainResult:
    """Export ``version_ref`` and fine-tune ``base_weights`` (default: ``default_base_weights``)
    with the recipe; ``cancel()`` true between epochs raises TrainingCancelled. Everything is
    written under ``workdir`` (default: a new dir under ``<data dir>/training``), kept for the
    caller to record."""
    t0 = time.monotonic()
    recipe = make_recipe(settings.train, epochs=epochs, imgsz=imgsz)
    weights = Path(base_weights) if base_weights else default_base_weights(settings)
    if not weights.is_file():
        raise ModelError(f"base weights {weights} do not exist (--base-weights)")
    if workdir is None:
        (settings.data_dir / "training").mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="train-", dir=settings.data_dir / "training"))
    workdir = workdir.resolve()
    hooks = _Hooks(recipe, progress, cancel, t0)
    if progress is not None:
        progress(TrainProgress("export", 0, recipe.epochs, seconds=time.monotonic() - t0))
    rep = export_for_training(store, version_ref, workdir / "data")
    data_yaml = Path(rep.out) / "data.yaml"
    weight_pseudo(store, version_ref, data_yaml, settings.pseudo.w_pseudo)  # pseudo images count less
    seconds = {"export": time.monotonic() - t0}
    hooks.check_cancel()

    ensure_yolo_env(settings.cache_dir)
    save_dir, stage_seconds = fit_recipe(
        recipe, data_yaml, weights, workdir, pick_device(settings.train.device), hooks
    )
    seconds.update(stage_seconds)
    results_csv = _merge_results(workdir, recipe)
    return TrainResult(
        version_id=rep.version,
        data_yaml=data_yaml,
        names=list(rep.names),
        images=dict(rep.images),
        base_weights=weights,
        best=save_dir / "weights" / "best.pt",
        last=save_dir / "weights" / "last.pt",
        results_csv=results_csv,
        recipe=recipe,
        stage_args=hooks.stage_args,
        history=hooks.history,
        seconds=seconds,
    )


def fit_recipe(
    recipe: Recipe,
    data_yaml: Path,
    weights: Path,
    workdir: Path,
    device: str,
    hooks: _Hooks | None = None,
) -> tuple[Path, dict[str, float]]:
    """Run the recipe's stages on an Ultralytics ``data_yaml`` (each stage one ``YOLO.train``, the
    next from its ``last.pt``); returns the last stage's save dir and seconds per stage. Shared by
    :func:`train_version` and the active-learning simulation, which trains on plain YOLO folders."""
    from ultralytics import YOLO  # lazy: importing Ultralytics costs seconds

    without_ultralytics_mlflow()
    start = weights
    save_dir = workdir
    seconds: dict[str, float] = {}
    for stage in recipe.stages:
        t_stage = time.monotonic()
        model = YOLO(str(start))
        if hooks is not None:
            hooks.attach(model, stage)
        model.train(
            data=str(data_yaml),
            device=device,
            workers=0,
            amp=device != "cpu",
            project=str(workdir / "runs"),
            name=stage.name,
            exist_ok=True,
            verbose=False,
            **recipe.train_args(stage),
        )
        save_dir = Path(model.trainer.save_dir)
        start = save_dir / "weights" / "last.pt"
        seconds[stage.name] = time.monotonic() - t_stage
    return save_dir, seconds


def _merge_results(workdir: Path, recipe: Recipe) -> Path:
    """One results.csv over both stages: Ultralytics' columns, led by ``stage`` and the global epoch."""
    out = workdir / "results.csv"
    rows: list[dict[str, str]] = []
    done = 0
    for stage in recipe.stages:
        path = workdir / "runs" / stage.name / "results.csv"
        if path.is_file():
            with path.open(newline="") as f:
                for row in csv.DictReader(f, skipinitialspace=True):
                    row = {k.strip(): v.strip() for k, v in row.items() if k}
                    row["stage_epoch"] = row.pop("epoch", "")
                    rows.append(
                        {"stage": stage.name, "epoch": str(done + int(row["stage_epoch"] or 0)), **row}
                    )
        done += stage.epochs
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out
