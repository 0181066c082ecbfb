"""One retrain, start to end: train -> gate -> register -> promote or not, recorded as an MLflow run.

``run_training`` is what ``labelloop train`` runs in the foreground and what the rq job
(``labelloop.backend.jobs.train.retrain``) runs on a worker. The champion is moved only as the very
last step, after the model is measured, recorded and registered: a training that is cancelled
(TrainingCancelled, run marked KILLED), fails (run FAILED) or is killed outright promotes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.backend.inference.runtime import onnx_export, pick_device
from labelloop.backend.registry import lines, tracking
from labelloop.backend.training.gate import EvalMetrics, GateDecision, decide, evaluate, model_names
from labelloop.backend.training.model_card import card_markdown, model_card
from labelloop.backend.training.recipe import make_recipe
from labelloop.backend.training.trainer import (
    CancelFn,
    ProgressFn,
    TrainProgress,
    TrainResult,
    default_base_weights,
    train_version,
)
from labelloop.errors import LabelloopError, ModelError, TrainingCancelled
from labelloop.settings import Settings
from labelloop.sync.store import Store
from labelloop.sync.versions import get_version

log = logging.getLogger(__name__)


@dataclass
class RetrainOutcome:
    line: str
    run_id: str
    version: int  # registered model version
    model_version: str  # "<line>-v<N>", what the backend serves once it is champion
    dataset_version: str
    parent: str | None  # the champion it was fine-tuned from (model_version), if any
    promoted: bool
    decision: GateDecision
    timings: dict[str, float] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.decision.reason

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["reason"] = self.reason
        return d


def run_training(
    settings: Settings,
    version_ref: str,
    *,
    line: str | None = None,
    base_weights: Path | None = None,
    epochs: int | None = None,
    imgsz: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    store: Store | None = None,
) -> RetrainOutcome:
    """Fine-tune on dataset version ``version_ref`` from the line's champion (or ``base_weights``,
    ``settings.train.base_weights``, the demo model), judge it against the champion, register it,
    and promote it when the gate says so."""
    t0 = time.monotonic()
    line = lines.line_of(settings, line)
    own_store = store is None
    store = store or Store.open(settings=settings)
    workdir: Path | None = None
    run_id: str | None = None
    try:
        with store.session() as s:
            dataset_version = get_version(s, version_ref).id
        parent = lines.champion(settings, line)
        start = base_weights or (parent.weights if parent else None) or default_base_weights(settings)
        if not Path(start).is_file():
            raise ModelError(f"base weights {start} do not exist (--base-weights)")
        recipe = make_recipe(settings.train, epochs=epochs, imgsz=imgsz)
        code = tracking.code_version()
        params = {
            "dataset_version": dataset_version,
            "parent_model": parent.model_version if parent else "",
            "base_weights": str(start),
            "model_line": line,
            "code_version": code,
            "device": settings.train.device,
            **recipe.params(),
        }
        run_id = tracking.start_run(
            settings,
            line,
            f"{dataset_version[:12]}",
            params,
            {"labelloop.dataset_version": dataset_version, "labelloop.code_version": code},
        )

        def on_progress(p: TrainProgress) -> None:
            if p.metrics and p.stage not in ("eval", "register", "done"):
                tracking.log_metrics(settings, run_id, p.metrics, step=p.epoch)  # type: ignore[arg-type]
            if progress is not None:
                progress(p)

        (settings.data_dir / "training").mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="train-", dir=settings.data_dir / "training"))
        result = train_version(
            settings,
            store,
            dataset_version,
            base_weights=Path(start),
            epochs=epochs,
            imgsz=imgsz,
            progress=on_progress,
            cancel=cancel,
            workdir=workdir,
        )
        timings = dict(result.seconds)
        _check(cancel, "after training")

        def report(stage: str) -> None:
            on_progress(TrainProgress(stage, recipe.epochs, recipe.epochs, seconds=time.monotonic() - t0))

        report("eval")
        decision = judge(settings, result, parent, timings, workdir)
        tracking.log_metrics(settings, run_id, _flat("eval", decision.challenger), step=recipe.epochs)
        if decision.champion is not None:
            tracking.log_metrics(settings, run_id, _flat("champion", decision.champion), step=recipe.epochs)
        _check(cancel, "after evaluation")

        report("register")
        t_art = time.monotonic()
        _log_model_files(settings, run_id, result, workdir / "artifacts")
        timings["artifacts"] = time.monotonic() - t_art
        _check(cancel, "before registering")
        ref = lines.register(
            settings,
            line,
            run_id,
            tracking.run_artifact_uri(settings, run_id),
            {
                lines.TAG_DATASET: dataset_version,
                lines.TAG_PARENT: parent.model_version if parent else "",
                lines.TAG_GATE: "promoted" if decision.promote else "rejected",
                lines.TAG_REASON: decision.reason,
                lines.TAG_MAP: f"{decision.challenger.map50_95:.4f}",
                "labelloop.classes": json.dumps(result.names),
            },
        )
        promoted = decision.promote  # the card says what is about to happen; promotion comes last
        timings["register"] = time.monotonic() - t_art - timings["artifacts"]
        timings["total"] = time.monotonic() - t0
        card = model_card(
            line=line,
            model_version=ref.model_version,
            run_id=run_id,
            parent=parent.model_version if parent else None,
            result=result,
            decision=decision,
            promoted=promoted,
            timings=timings,
            code_version=code,
        )
        (workdir / "artifacts" / "model_card.json").write_text(json.dumps(card, indent=1))
        (workdir / "artifacts" / "model_card.md").write_text(card_markdown(card))
        for name in ("model_card.json", "model_card.md"):
            tracking.log_artifact(settings, run_id, workdir / "artifacts" / name)
        if promoted:
            if cancel is not None and cancel():
                lines.tag_version(settings, line, ref.version, {lines.TAG_GATE: "cancelled"})
                raise TrainingCancelled("training cancelled before promoting; nothing was promoted")
            lines.promote(settings, line, ref.version, reason=decision.reason)
        tracking.set_tags(
            settings,
            run_id,
            {
                "labelloop.model_version": ref.model_version,
                "labelloop.gate": "promoted" if decision.promote else "rejected",
                "labelloop.gate_reason": decision.reason,
                "labelloop.promoted": str(promoted).lower(),
            },
        )
        tracking.end_run(settings, run_id, "FINISHED")
        report("done")
        return RetrainOutcome(
            line=line,
            run_id=run_id,
            version=ref.version,
            model_version=ref.model_version,
            dataset_version=dataset_version,
            parent=parent.model_version if parent else None,
            promoted=promoted,
            decision=decision,
            timings=timings,
            card=card,
        )
    except BaseException as e:
        if run_id is not None:
            status = "KILLED" if isinstance(e, TrainingCancelled | KeyboardInterrupt) else "FAILED"
            try:
                tracking.set_tags(settings, run_id, {"labelloop.error": f"{type(e).__name__}: {e}"})
                tracking.end_run(settings, run_id, status)
            except LabelloopError:
                log.warning("could not mark MLflow run %s %s", run_id, status)
        raise
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        if own_store:
            store.close()


def judge(
    settings: Settings,
    result: TrainResult,
    parent: lines.ModelRef | None,
    timings: dict[str, float],
    workdir: Path,
) -> GateDecision:
    """Measure the new model and the champion on the same val split, and let the gate decide. A
    champion that knows other classes than this version cannot be compared: the floor judges."""
    device = pick_device(settings.train.device)
    imgsz = result.recipe.imgsz
    challenger = evaluate(result.best, result.data_yaml, imgsz=imgsz, device=device, workdir=workdir)
    timings["eval"] = challenger.seconds
    champ: EvalMetrics | None = None
    no_champion = "first model of the line"
    if parent is not None and parent.weights is not None:
        champ_names = model_names(parent.weights)
        if champ_names == result.names:
            champ = evaluate(parent.weights, result.data_yaml, imgsz=imgsz, device=device, workdir=workdir)
            timings["eval_champion"] = champ.seconds
        else:
            no_champion = (
                f"champion {parent.model_version} knows other classes ({', '.join(champ_names)}) than "
                f"this version ({', '.join(result.names)}), so the floor judges"
            )
    return decide(challenger, champ, settings.gate, no_champion=no_champion)


def _log_model_files(settings: Settings, run_id: str, result: TrainResult, out: Path) -> None:
    """best.pt, last.pt and the ONNX export under ``weights/`` (a registered version's source),
    results.csv and the arguments Ultralytics trained with."""
    weights_dir = out / lines.WEIGHTS_DIR
    weights_dir.mkdir(parents=True)
    shutil.copy(result.best, weights_dir / "best.pt")
    shutil.copy(result.last, weights_dir / "last.pt")
    try:
        onnx = onnx_export(result.best, result.recipe.imgsz, settings.cache_dir)
        shutil.copy(onnx, weights_dir / "model.onnx")
    except ModelError as e:  # the PyTorch weights still serve; say so on the run
        log.warning("ONNX export of the new model failed: %s", e)
        tracking.set_tags(settings, run_id, {"labelloop.onnx_error": str(e)})
    for f in sorted(weights_dir.iterdir()):
        tracking.log_artifact(settings, run_id, f, lines.WEIGHTS_DIR)
    tracking.log_artifact(settings, run_id, result.results_csv)
    args_json = out / "trainer_args.json"
    args_json.write_text(json.dumps(result.stage_args, indent=1, default=str))
    tracking.log_artifact(settings, run_id, args_json)


def _check(cancel: CancelFn | None, when: str) -> None:
    if cancel is not None and cancel():
        raise TrainingCancelled(f"training cancelled {when}; nothing was promoted")


def _flat(prefix: str, m: EvalMetrics) -> dict[str, float]:
    out = {
        f"{prefix}/mAP50": m.map50,
        f"{prefix}/mAP50-95": m.map50_95,
        f"{prefix}/precision": m.precision,
        f"{prefix}/recall": m.recall,
        f"{prefix}/latency_ms": m.latency_ms,
    }
    out.update({f"{prefix}/AP50-95/{_key(name)}": ap for name, ap in m.per_class.items()})
    return out


def _key(name: str) -> str:
    """A class name as an MLflow metric key part (letters, digits, _ - . space / only)."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in name)
